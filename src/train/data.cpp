#include "train/data.h"

#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/check.h"

namespace lasp {

namespace {

// Byte-level text over a read-only memory map of the whole file.
class TextTokens final : public TokenSource {
 public:
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

}  // namespace

std::unique_ptr<TokenSource> open_text_tokens(const std::string& path) {
  return std::make_unique<TextTokens>(path);
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

WindowSampler::WindowSampler(const TokenSource& src, int N, int B, uint64_t seed, int64_t begin, int64_t end)
    : src_(src), N_(N), B_(B), begin_(begin), end_(0), rng_(seed) {
  LASP_CHECK(N > 0 && B > 0, "WindowSampler: expected seq-len N > 0 and batch B > 0, got N={} B={}", N, B);
  end_ = resolve_end(src, begin, end, "WindowSampler");
  LASP_CHECK(end_ - begin_ >= int64_t(N) + 1, "data file has {} tokens, a window of seq-len {} needs {}",
             end_ - begin_, N, int64_t(N) + 1);
}

std::vector<int64_t> WindowSampler::next_starts() {
  const uint64_t starts = uint64_t(end_ - begin_ - N_);  // window starts in [begin, end - N - 1]
  std::vector<int64_t> out(B_);
  for (int b = 0; b < B_; ++b) out[b] = begin_ + int64_t(uniform_below(rng_, starts));
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
