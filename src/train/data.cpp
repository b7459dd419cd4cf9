#include "train/data.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/check.h"
#include "core/file.h"
#include "train/token_manifest.h"

namespace lasp {

namespace {

// Byte-level text over a read-only memory map of the whole file.
class TextTokens final : public TokenSource {
 public:
  bool is_bytes() const override { return true; }
  explicit TextTokens(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    LASP_CHECK(fd >= 0, "cannot open data file {}: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      LASP_CHECK(false, "cannot stat data file {}: {}", path, std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      LASP_CHECK(false, "data file {} is not a regular file", path);
    }
    if (st.st_size == 0) {
      ::close(fd);
      LASP_CHECK(false, "data file {} is empty (expected at least one token)", path);
    }
    size_ = int64_t(st.st_size);
    void* p = ::mmap(nullptr, size_t(size_), PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);  // the mapping stays valid after close
    LASP_CHECK(p != MAP_FAILED, "cannot map data file {} ({} bytes): {}", path, size_, std::strerror(e));
    data_ = static_cast<const uint8_t*>(p);
  }
  ~TextTokens() override { ::munmap(const_cast<uint8_t*>(data_), size_t(size_)); }
  TextTokens(const TextTokens&) = delete;
  TextTokens& operator=(const TextTokens&) = delete;

  int64_t size() const override { return size_; }
  int vocab_size() const override { return 256; }
  std::string describe() const override { return "byte-level text (" + fmt_tokens(size_) + ", vocabulary 256)"; }
  void read(int64_t begin, int64_t count, int* out) const override {
    LASP_CHECK(begin >= 0 && count >= 0 && begin <= size_ && count <= size_ - begin,
               "read of tokens [{}, {}) from {}: expected a range within [0, {})", begin, begin + count, path_,
               size_);
    const uint8_t* s = data_ + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = int(s[i]);
  }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  int64_t size_ = 0;
};

// Resolves end = -1 to src.size() and checks 0 <= begin <= end <= size.
int64_t resolve_end(const TokenSource& src, int64_t begin, int64_t end, const char* who) {
  if (end < 0) end = src.size();
  LASP_CHECK(begin >= 0 && begin <= end && end <= src.size(),
             "{}: token range [{}, {}) must lie within the data's [0, {})", who, begin, end, src.size());
  return end;
}

// Copies the window of N+1 tokens starting at `start` into row b of the batch.
void fill_row(const TokenSource& src, int64_t start, int N, int b, std::vector<int>& window, Batch& out) {
  src.read(start, N + 1, window.data());
  std::memcpy(out.inputs.data() + size_t(b) * N, window.data(), sizeof(int) * size_t(N));
  std::memcpy(out.targets.data() + size_t(b) * N, window.data() + 1, sizeof(int) * size_t(N));
}

Batch make_batch(int B, int N) {
  Batch out;
  out.B = B;
  out.N = N;
  out.inputs.resize(size_t(B) * N);
  out.targets.resize(size_t(B) * N);
  return out;
}

// Uniform in [0, n) from a 64-bit generator, by rejection: the same on every platform (unlike
// std::uniform_int_distribution, whose algorithm the standard leaves to the library).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;  // 2^64 mod n: values below it would bias the remainder
  for (;;) {
    uint64_t u = rng();
    if (u >= threshold) return u % n;
  }
}

constexpr const char* kSamplerTag = "lasp-window-sampler-v1";

// A whole file, memory-mapped read-only (move-only; unmapped on destruction). Empty files are not mapped.
class MappedFile {
 public:
  // `what` names the kind of file in errors ("shard file").
  MappedFile(const std::string& path, const char* what) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    LASP_CHECK(fd >= 0, "cannot open {} {}: {}", what, path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      LASP_CHECK(false, "cannot stat {} {}: {}", what, path, std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      LASP_CHECK(false, "{} {} is not a regular file", what, path);
    }
    size_ = size_t(st.st_size);
    if (size_ == 0) {
      ::close(fd);
      return;
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);
    LASP_CHECK(p != MAP_FAILED, "cannot map {} {} ({} bytes): {}", what, path, size_, std::strerror(e));
    data_ = static_cast<const uint8_t*>(p);
  }
  MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_) {
    o.data_ = nullptr;
    o.size_ = 0;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

int32_t load_le32(const uint8_t* p) {
  return int32_t(uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24);
}

void store_le32(uint8_t* p, int32_t v) {
  const uint32_t u = uint32_t(v);
  p[0] = uint8_t(u), p[1] = uint8_t(u >> 8), p[2] = uint8_t(u >> 16), p[3] = uint8_t(u >> 24);
}

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// One shard: its mapping and where its tokens lie in the concatenated sequence.
struct Shard {
  std::string path;
  MappedFile file;
  int64_t count = 0;   // tokens in this shard
  int64_t offset = 0;  // index of its first token in the whole sequence
  const uint8_t* tokens() const { return file.data() + kShardHeaderBytes; }
};

// Maps one shard file and validates its header against its size.
Shard open_shard(const std::string& path) {
  Shard s{path, MappedFile(path, "shard file"), 0, 0};
  const int64_t bytes = int64_t(s.file.size());
  LASP_CHECK(bytes > 0,
             "shard file {} is empty: expected a {}-byte header (magic {}, version {}, token count) and tokens",
             path, kShardHeaderBytes, kShardMagic, kShardVersion);
  LASP_CHECK(bytes >= kShardHeaderBytes,
             "shard file {} holds {} bytes, shorter than the {}-byte header (256 int32: magic {}, version {}, "
             "token count)",
             path, bytes, kShardHeaderBytes, kShardMagic, kShardVersion);
  const uint8_t* h = s.file.data();
  const int32_t magic = load_le32(h), version = load_le32(h + 4), n = load_le32(h + 8);
  LASP_CHECK(magic == kShardMagic, "shard file {}: expected magic {}, found {} (not an llm.c token shard?)", path,
             kShardMagic, magic);
  LASP_CHECK(version == kShardVersion, "shard file {}: unsupported version {} (expected {}: uint16 tokens)", path,
             version, kShardVersion);
  LASP_CHECK(n >= 0, "shard file {}: header token count {} is negative", path, n);
  const int64_t want = int64_t(n) * 2, have = bytes - kShardHeaderBytes;
  LASP_CHECK(want <= have,
             "shard file {}: header says {} tokens (= {} bytes) but the file holds only {} bytes of tokens "
             "(truncated shard?)",
             path, n, want, have);
  LASP_CHECK(want == have,
             "shard file {}: header says {} tokens (= {} bytes) but the file holds {} bytes of tokens ({} bytes "
             "more than the header accounts for)",
             path, n, want, have, have - want);
  s.count = n;
  return s;
}

// The shards' tokens, concatenated in the order given.
class ShardTokens final : public TokenSource {
 public:
  ShardTokens(const std::string& pattern, const std::vector<std::string>& paths) {
    shards_.reserve(paths.size());
    for (const auto& p : paths) {
      shards_.push_back(open_shard(p));
      shards_.back().offset = size_;
      size_ += shards_.back().count;
    }
    LASP_CHECK(size_ > 0, "the {} shard file(s) matching {} hold 0 tokens (expected at least one)", paths.size(),
               pattern);
    std::vector<ShardFile> files;
    for (const Shard& s : shards_) files.push_back({s.path, s.count});
    check_shard_set(pattern, files);
  }

  int64_t size() const override { return size_; }
  std::string describe() const override {
    return fmt::format("llm.c token shards ({} file{}, {})", shards_.size(), shards_.size() == 1 ? "" : "s",
                       fmt_tokens(size_));
  }

  int vocab_size() const override {
    std::call_once(vocab_once_, [this] {
      int max_token = 0;
      for (const Shard& s : shards_) {
        const uint8_t* t = s.tokens();
        for (int64_t i = 0; i < s.count; ++i) max_token = std::max(max_token, int(t[2 * i]) | int(t[2 * i + 1]) << 8);
      }
      vocab_ = max_token + 1;
    });
    return vocab_;
  }

  void read(int64_t begin, int64_t count, int* out) const override {
    LASP_CHECK(begin >= 0 && count >= 0 && begin <= size_ && count <= size_ - begin,
               "read of tokens [{}, {}) from the shards of {}: expected a range within [0, {})", begin,
               begin + count, shards_.front().path, size_);
    if (count == 0) return;
    // The last shard whose offset <= begin (skipping empty shards, which share their successor's offset).
    auto it = std::upper_bound(shards_.begin(), shards_.end(), begin,
                               [](int64_t pos, const Shard& s) { return pos < s.offset; });
    size_t k = size_t(it - shards_.begin()) - 1;
    int64_t pos = begin - shards_[k].offset;
    while (count > 0) {
      const Shard& s = shards_[k];
      const int64_t take = std::min(count, s.count - pos);
      const uint8_t* t = s.tokens() + 2 * pos;
      for (int64_t i = 0; i < take; ++i) out[i] = int(t[2 * i]) | int(t[2 * i + 1]) << 8;
      out += take;
      count -= take;
      ++k;
      pos = 0;
    }
  }

 private:
  std::vector<Shard> shards_;
  int64_t size_ = 0;
  mutable std::once_flag vocab_once_;
  mutable int vocab_ = 0;
};

// The files a shard pattern names, sorted by name (byte order).
std::vector<std::string> shard_paths(const std::string& pattern) {
  LASP_CHECK(!pattern.empty(), "open_token_shards: expected a shard path or glob pattern, got an empty string");
  return matching_files(pattern, "the shard pattern");
}

}  // namespace

std::vector<std::string> matching_files(const std::string& pattern, const std::string& what) {
  if (!has_glob_chars(pattern)) return {pattern};
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> paths;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  if (rc == GLOB_NOMATCH && is_regular_file(pattern)) return {pattern};  // a literal name holding [ or ?
  LASP_CHECK(rc != GLOB_NOMATCH, "no file matches {} {}", what, pattern);
  LASP_CHECK(rc == 0, "cannot expand {} {}: glob(3) failed ({})", what, pattern,
             rc == GLOB_NOSPACE ? "out of memory" : rc == GLOB_ABORTED ? "read error" : "error");
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::unique_ptr<TokenSource> open_text_tokens(const std::string& path) {
  return std::make_unique<TextTokens>(path);
}

std::unique_ptr<TokenSource> open_token_shards(const std::string& pattern) {
  return std::make_unique<ShardTokens>(pattern, shard_paths(pattern));
}

std::unique_ptr<TokenSource> open_tokens(const std::string& path, const std::string& format) {
  if (format == "text") return open_text_tokens(path);
  if (format == "shards") return open_token_shards(path);
  LASP_CHECK(format == "auto", "unknown token data format '{}' for {}: expected auto, text or shards", format,
             path);
  if (is_regular_file(path)) {
    uint8_t head[4] = {0, 0, 0, 0};
    ssize_t got = 0;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      do got = ::pread(fd, head, sizeof head, 0);
      while (got < 0 && errno == EINTR);
      ::close(fd);
    }
    // An unreadable file falls through to text, whose open reports the error.
    if (got == ssize_t(sizeof head) && load_le32(head) == kShardMagic) return open_token_shards(path);
    const bool named_like_shard = path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0;
    LASP_CHECK(!named_like_shard || fd < 0,
               "{} is named like an llm.c token shard (.bin) but does not begin with the shard magic {} (its first "
               "4 bytes read {}): a damaged shard? To train on its raw bytes as text, pass --data-format text",
               path, kShardMagic, got == ssize_t(sizeof head) ? std::to_string(load_le32(head)) : "short file");
    return open_text_tokens(path);
  }
  if (has_glob_chars(path)) return open_token_shards(path);
  return open_text_tokens(path);
}

void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  LASP_CHECK(tokens.size() <= size_t(std::numeric_limits<int32_t>::max()),
             "write_token_shard {}: {} tokens do not fit the header's int32 token count", path, tokens.size());
  std::string bytes(size_t(kShardHeaderBytes) + 2 * tokens.size(), '\0');
  uint8_t* p = reinterpret_cast<uint8_t*>(&bytes[0]);
  store_le32(p, kShardMagic);
  store_le32(p + 4, kShardVersion);
  store_le32(p + 8, int32_t(tokens.size()));
  p += kShardHeaderBytes;
  for (uint16_t t : tokens) {
    *p++ = uint8_t(t);
    *p++ = uint8_t(t >> 8);
  }
  write_file_atomic(path, bytes);
}

TokenShardWriter::TokenShardWriter(const std::string& path)
    : path_(path), fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) {
  LASP_CHECK(fd_ >= 0, "cannot create the token shard {}: {}", path, std::strerror(errno));
  buf_.assign(size_t(kShardHeaderBytes), '\0');  // the header, written again by finish()
}

TokenShardWriter::~TokenShardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void TokenShardWriter::write_all(const char* p, size_t n, off_t at) {
  while (n > 0) {
    const ssize_t done = ::pwrite(fd_, p, n, at);
    if (done < 0 && errno == EINTR) continue;
    LASP_CHECK(done > 0, "cannot write the token shard {}: {}", path_, done < 0 ? std::strerror(errno) : "no progress");
    p += done, n -= size_t(done), at += done;
  }
}

void TokenShardWriter::append(const uint16_t* tokens, size_t n) {
  LASP_CHECK(count_ + int64_t(n) <= std::numeric_limits<int32_t>::max(),
             "token shard {}: {} tokens do not fit the header's int32 token count", path_, count_ + int64_t(n));
  for (size_t i = 0; i < n; ++i) {
    buf_ += char(tokens[i] & 0xFF);
    buf_ += char(tokens[i] >> 8);
  }
  count_ += int64_t(n);
  if (buf_.size() >= (size_t(1) << 20)) flush();
}

void TokenShardWriter::flush() {
  write_all(buf_.data(), buf_.size(), off_t(written_));
  written_ += buf_.size();
  buf_.clear();
}

void TokenShardWriter::finish() {
  flush();
  uint8_t header[12];
  store_le32(header, kShardMagic);
  store_le32(header + 4, kShardVersion);
  store_le32(header + 8, int32_t(count_));
  write_all(reinterpret_cast<const char*>(header), sizeof header, 0);
  LASP_CHECK(::fsync(fd_) == 0, "cannot write the token shard {}: {}", path_, std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  LASP_CHECK(::close(fd) == 0, "cannot write the token shard {}: {}", path_, std::strerror(errno));
}

int64_t eval_window_count(int64_t tokens, int N) {
  LASP_CHECK(N > 0, "eval_window_count: seq-len N must be positive, got {}", N);
  return tokens < int64_t(N) + 1 ? 0 : (tokens - 1) / N;
}

Batch eval_batch(const TokenSource& src, int N, int first_window, int B, int64_t begin, int64_t end) {
  LASP_CHECK(N > 0 && B > 0 && first_window >= 0,
             "eval_batch: expected seq-len N > 0, batch B > 0 and first window >= 0, got N={} B={} first={}", N,
             B, first_window);
  end = resolve_end(src, begin, end, "eval_batch");
  const int64_t need = (int64_t(first_window) + B) * N + 1;  // tokens the last window reaches, from begin
  LASP_CHECK(need <= end - begin,
             "data has {} tokens, eval windows {}..{} of seq-len {} need {} (at least (first+B)*N+1)",
             end - begin, first_window, int64_t(first_window) + B - 1, N, need);
  Batch out = make_batch(B, N);
  std::vector<int> window(size_t(N) + 1);
  for (int b = 0; b < B; ++b) fill_row(src, begin + (int64_t(first_window) + b) * N, N, b, window, out);
  return out;
}

WindowSampler::WindowSampler(const TokenSource& src, int N, int B, uint64_t seed, int64_t begin, int64_t end,
                             int64_t align)
    : src_(src), N_(N), B_(B), begin_(begin), end_(0), align_(align), rng_(seed) {
  LASP_CHECK(N > 0 && B > 0, "WindowSampler: expected seq-len N > 0 and batch B > 0, got N={} B={}", N, B);
  LASP_CHECK(align >= 1, "WindowSampler: expected window-start alignment >= 1, got {}", align);
  end_ = resolve_end(src, begin, end, "WindowSampler");
  LASP_CHECK(end_ - begin_ >= int64_t(N) + 1, "data file has {} tokens, a window of seq-len {} needs {}",
             end_ - begin_, N, int64_t(N) + 1);
  const int64_t last = end_ - N - 1;  // the last valid start
  first_start_ = (begin_ + align - 1) / align * align;
  LASP_CHECK(first_start_ <= last,
             "WindowSampler: no window start in [{}, {}] (seq-len {} in tokens [{}, {})) is a multiple of the "
             "alignment {}",
             begin_, last, N, begin_, end_, align);
  start_count_ = (last - first_start_) / align + 1;
}

std::vector<int64_t> WindowSampler::next_starts() {
  // Window starts first_start_ + k * align_ for k < start_count_; for align 1, every start in [begin, end-N-1].
  std::vector<int64_t> out(B_);
  for (int b = 0; b < B_; ++b) out[b] = first_start_ + int64_t(uniform_below(rng_, uint64_t(start_count_))) * align_;
  ++steps_;
  return out;
}

Batch WindowSampler::next() {
  Batch out = make_batch(B_, N_);
  std::vector<int> window(size_t(N_) + 1);
  const std::vector<int64_t> starts = next_starts();
  for (int b = 0; b < B_; ++b) fill_row(src_, starts[b], N_, b, window, out);
  return out;
}

void read_window_slice(const TokenSource& src, int64_t start, const std::vector<int>& positions, int* inputs,
                       int* targets) {
  // Positions come in runs of consecutive tokens (the pieces of a layout): read each run once.
  std::vector<int> run;
  for (size_t i = 0; i < positions.size();) {
    size_t j = i + 1;
    while (j < positions.size() && positions[j] == positions[j - 1] + 1) ++j;
    const int64_t len = int64_t(j - i);
    run.resize(size_t(len) + 1);
    src.read(start + positions[i], len + 1, run.data());
    for (int64_t x = 0; x < len; ++x) {
      inputs[i + x] = run[x];
      targets[i + x] = run[x + 1];
    }
    i = j;
  }
}

std::string WindowSampler::state() const {
  std::ostringstream s;
  s << kSamplerTag << " steps " << steps_ << " rng " << rng_;
  return s.str();
}

void WindowSampler::restore(const std::string& state) {
  std::istringstream s(state);
  std::string tag, steps_word, rng_word;
  int64_t steps = -1;
  std::mt19937_64 rng;
  s >> tag >> steps_word >> steps >> rng_word >> rng;
  bool ok = bool(s) && tag == kSamplerTag && steps_word == "steps" && steps >= 0 && rng_word == "rng";
  if (ok) {
    s >> std::ws;
    ok = s.eof();
  }
  LASP_CHECK(ok, "WindowSampler::restore: expected a state string '{} steps <n> rng <mt19937_64 state>', got '{}'",
             kSamplerTag, state.size() > 80 ? state.substr(0, 80) + "..." : state);
  rng_ = rng;
  steps_ = steps;
}

Batch slice_for_rank(const Batch& full, int rank, int world) {
  LASP_CHECK(world >= 1 && rank >= 0 && rank < world,
             "slice_for_rank: expected 0 <= rank < W and W >= 1, got rank={} W={}", rank, world);
  LASP_CHECK(full.N % world == 0, "slice_for_rank: seq-len N={} is not divisible by the sp size W={}", full.N,
             world);
  LASP_CHECK(full.inputs.size() == size_t(full.B) * full.N && full.targets.size() == size_t(full.B) * full.N,
             "slice_for_rank: batch of B={} N={} should hold {} inputs and targets, holds {} and {}", full.B,
             full.N, size_t(full.B) * full.N, full.inputs.size(), full.targets.size());
  const int C = full.N / world;
  Batch out = make_batch(full.B, C);
  for (int b = 0; b < full.B; ++b) {
    const size_t from = size_t(b) * full.N + size_t(rank) * C, to = size_t(b) * C;
    std::memcpy(out.inputs.data() + to, full.inputs.data() + from, sizeof(int) * size_t(C));
    std::memcpy(out.targets.data() + to, full.targets.data() + from, sizeof(int) * size_t(C));
  }
  return out;
}

Split split_tokens(int64_t size, double val_fraction) {
  LASP_CHECK(size >= 0, "split_tokens: expected a token count >= 0, got {}", size);
  LASP_CHECK(val_fraction >= 0.0 && val_fraction < 1.0,
             "split_tokens: expected a validation fraction in [0, 1), got {}", val_fraction);
  int64_t val = int64_t(double(size) * val_fraction + 0.5);
  if (val > size) val = size;
  const int64_t cut = size - val;
  return Split{0, cut, cut, size};
}

}  // namespace lasp
