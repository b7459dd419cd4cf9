#include "train/corpus.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/check.h"
#include "train/data.h"
#include "train/tokenizer.h"

namespace lasp {

namespace {

constexpr size_t kChunk = size_t(1) << 20;  // bytes read from a file at a time

bool ends_with(std::string_view s, std::string_view end) {
  return s.size() >= end.size() && s.compare(s.size() - end.size(), end.size(), end) == 0;
}

// A file's text, decompressed, a piece at a time: read() gives up to n bytes, 0 at the end, or -1 when the
// data is corrupt or ends early (error() says how). An I/O error throws, naming the file.
class Source {
 public:
  explicit Source(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    LASP_CHECK(fd_ >= 0, "cannot read --input {}: {}", path, std::strerror(errno));
  }
  virtual ~Source() { ::close(fd_); }
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;
  virtual ptrdiff_t read(char* out, size_t n) = 0;
  virtual const char* compression() const { return nullptr; }  // "gzip", "zstd", or none
  int64_t consumed() const { return consumed_; }  // bytes of the file read so far
  const std::string& error() const { return error_; }

 protected:
  ptrdiff_t read_file(void* out, size_t n) {
    while (true) {
      const ssize_t got = ::read(fd_, out, n);
      if (got >= 0) {
        consumed_ += got;
        return got;
      }
      LASP_CHECK(errno == EINTR, "cannot read --input {}: {}", path_, std::strerror(errno));
    }
  }
  ptrdiff_t fail(std::string why) {
    error_ = std::move(why);
    return -1;
  }
  std::string path_;
  int fd_;
  int64_t consumed_ = 0;
  std::string error_;
};

class PlainSource : public Source {
 public:
  using Source::Source;
  ptrdiff_t read(char* out, size_t n) override { return read_file(out, n); }
};

// gzip (RFC 1952), any number of members one after another, as gunzip reads them.
class GzipSource : public Source {
 public:
  explicit GzipSource(const std::string& path) : Source(path), in_(kChunk) {
    LASP_CHECK(inflateInit2(&z_, 16 + MAX_WBITS) == Z_OK, "zlib cannot start a gzip stream for {}", path);
  }
  ~GzipSource() override { inflateEnd(&z_); }
  const char* compression() const override { return "gzip"; }
  ptrdiff_t read(char* out, size_t n) override {
    n = std::min<size_t>(n, UINT32_MAX);
    z_.next_out = reinterpret_cast<Bytef*>(out);
    z_.avail_out = uInt(n);
    while (z_.avail_out == n) {
      if (z_.avail_in == 0 && !pending_) {
        const ptrdiff_t got = read_file(in_.data(), in_.size());
        if (got == 0) {
          if (consumed_ == 0) return fail("the file is empty: no gzip data");
          return member_ ? fail("the gzip data is cut short (a truncated file?)") : 0;
        }
        z_.next_in = in_.data();
        z_.avail_in = uInt(got);
      }
      if (z_.avail_in > 0) member_ = true;
      const int rc = inflate(&z_, Z_NO_FLUSH);
      pending_ = z_.avail_out == 0;  // output may be waiting inside zlib even when no input is left
      if (rc == Z_STREAM_END) {
        member_ = pending_ = false;
        inflateReset(&z_);  // another member may follow
      } else if (rc == Z_BUF_ERROR && z_.avail_in == 0) {
        pending_ = false;  // no progress without more input
      } else if (rc != Z_OK) {
        return fail(fmt::format("corrupt gzip data at byte {} of the file ({})", consumed_ - int64_t(z_.avail_in),
                                z_.msg ? z_.msg : "zlib gave no reason"));
      }
    }
    return ptrdiff_t(n - z_.avail_out);
  }

 private:
  z_stream z_{};
  std::vector<Bytef> in_;
  bool member_ = false, pending_ = false;
};

// zstd (RFC 8878), any number of frames one after another.
class ZstdSource : public Source {
 public:
  explicit ZstdSource(const std::string& path) : Source(path), z_(ZSTD_createDStream()), in_(kChunk) {
    LASP_CHECK(z_ != nullptr && !ZSTD_isError(ZSTD_initDStream(z_)), "libzstd cannot start a stream for {}", path);
  }
  ~ZstdSource() override { ZSTD_freeDStream(z_); }
  const char* compression() const override { return "zstd"; }
  ptrdiff_t read(char* out, size_t n) override {
    ZSTD_outBuffer o{out, n, 0};
    while (o.pos == 0) {
      if (ib_.pos == ib_.size && !pending_) {
        const ptrdiff_t got = read_file(in_.data(), in_.size());
        if (got == 0) {
          if (consumed_ == 0) return fail("the file is empty: no zstd data");
          return left_ != 0 ? fail("the zstd data is cut short (a truncated file?)") : 0;
        }
        ib_ = ZSTD_inBuffer{in_.data(), size_t(got), 0};
      }
      const size_t rc = ZSTD_decompressStream(z_, &o, &ib_);
      if (ZSTD_isError(rc))
        return fail(fmt::format("corrupt zstd data near byte {} of the file ({})",
                                consumed_ - int64_t(ib_.size - ib_.pos), ZSTD_getErrorName(rc)));
      left_ = rc;                    // 0: a frame ended here
      pending_ = o.pos == o.size;    // output may be waiting inside zstd even when no input is left
    }
    return ptrdiff_t(o.pos);
  }

 private:
  ZSTD_DStream* z_;
  std::vector<char> in_;
  ZSTD_inBuffer ib_{nullptr, 0, 0};
  size_t left_ = 0;
  bool pending_ = false;
};

// The reason of nlohmann's error, without its exception name ("[json.exception.parse_error.101] ") and
// position (a parse error gives the byte of the line instead), and at most ~160 bytes ('last read' can quote a
// whole long string).
std::string json_reason(const nlohmann::json::exception& e) {
  std::string m = e.what();
  const size_t name = m.rfind("] ", m.find(' '));
  if (m.rfind("[json.exception.", 0) == 0 && name != std::string::npos) m = m.substr(name + 2);
  const auto* parse = dynamic_cast<const nlohmann::json::parse_error*>(&e);
  const size_t column = parse ? m.find("column ") : std::string::npos;
  const size_t colon = column == std::string::npos ? column : m.find(": ", column);
  if (colon != std::string::npos) m = m.substr(colon + 2);
  if (m.size() > 160) {
    size_t cut = 160;
    while (cut > 0 && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;
    m = m.substr(0, cut) + "...";
  }
  return parse ? fmt::format("at byte {} of the line: {}", parse->byte, m) : m;
}

const char* json_type(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::string: return "a string";
    default: return "a number";
  }
}

}  // namespace

// A file's text read up to separators, a buffer at a time, counting offsets and lines as it goes.
class CorpusReader::Text {
 public:
  Text(std::unique_ptr<Source> source, std::string path) : source_(std::move(source)), path_(std::move(path)) {}
  int64_t offset() const { return offset_; }
  int64_t line() const { return line_; }
  int64_t consumed() const { return source_->consumed(); }
  const char* compression() const { return source_->compression(); }

  // Moves the text up to the next sep into out (sep consumed, not kept): true, or false when the text ends
  // first (out then holds the rest).
  bool read_until(std::string_view sep, std::string& out) {
    out.clear();
    while (true) {
      const std::string_view rest = std::string_view(buf_).substr(pos_);
      const size_t at = rest.find(sep);
      if (at != std::string_view::npos) {
        take(at, &out);
        take(sep.size(), nullptr);
        return true;
      }
      take(rest.size() - std::min(rest.size(), sep.size() - 1), &out);  // what cannot begin a separator
      if (!fill()) {
        take(buf_.size() - pos_, &out);
        return false;
      }
    }
  }
  void read_all(std::string& out) {
    out.clear();
    do take(buf_.size() - pos_, &out);
    while (fill());
  }

 private:
  void take(size_t n, std::string* out) {
    if (out) out->append(buf_, pos_, n);
    line_ += std::count(buf_.begin() + std::ptrdiff_t(pos_), buf_.begin() + std::ptrdiff_t(pos_ + n), '\n');
    offset_ += int64_t(n);
    pos_ += n;
  }
  bool fill() {
    buf_.erase(0, pos_);
    pos_ = 0;
    const size_t had = buf_.size();
    buf_.resize(had + kChunk);
    const ptrdiff_t got = source_->read(&buf_[had], kChunk);
    buf_.resize(had + size_t(std::max<ptrdiff_t>(got, 0)));
    if (got < 0)
      throw Error(fmt::format("{}: {}: its text stops in line {}{}", path_, source_->error(), line_ + std::count(
                              buf_.begin(), buf_.end(), '\n'), ". Fetch or write the file again, or leave it out"));
    return got > 0;
  }
  std::unique_ptr<Source> source_;
  std::string path_, buf_;
  size_t pos_ = 0;
  int64_t offset_ = 0, line_ = 1;
};

std::vector<std::string> corpus_files(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    struct stat st {};
    const bool exists = ::stat(input.c_str(), &st) == 0;
    const std::vector<std::string> named = !exists && input.find_first_of("*?[") != std::string::npos
                                               ? matching_files(input, "--input")
                                               : std::vector<std::string>{input};
    for (const std::string& path : named) {
      const bool ok = ::stat(path.c_str(), &st) == 0;
      LASP_CHECK(ok && S_ISREG(st.st_mode), "tokenize: cannot read --input {}: {}", path,
                 ok ? "not a regular file" : std::strerror(errno));
      files.push_back(path);
    }
  }
  return files;
}

CorpusReader::CorpusReader(std::vector<std::string> files, CorpusOptions options)
    : files_(std::move(files)), o_(std::move(options)) {
  LASP_CHECK(!o_.text_field.empty(), "tokenize: --text-field must name a field");
  for (const std::string& path : files_) {
    struct stat st {};
    LASP_CHECK(::stat(path.c_str(), &st) == 0, "cannot read --input {}: {}", path, std::strerror(errno));
    total_bytes_ += int64_t(st.st_size);
  }
}

CorpusReader::~CorpusReader() = default;

int64_t CorpusReader::bytes_read() const { return done_bytes_ + (text_ ? text_->consumed() : 0); }
int64_t CorpusReader::bytes_total() const { return total_bytes_; }

bool CorpusReader::open_next_file() {
  if (text_) done_bytes_ += text_->consumed();
  text_.reset();
  if (next_file_ == files_.size()) return false;
  const std::string& path = files_[next_file_++];
  std::string_view name = path;
  std::unique_ptr<Source> source;
  if (ends_with(name, ".gz")) {
    source = std::make_unique<GzipSource>(path);
    name.remove_suffix(3);
  } else if (ends_with(name, ".zst")) {
    source = std::make_unique<ZstdSource>(path);
    name.remove_suffix(4);
  } else {
    source = std::make_unique<PlainSource>(path);
  }
  jsonl_ = ends_with(name, ".jsonl");
  text_ = std::make_unique<Text>(std::move(source), path);
  file_done_ = separated_ = false;
  return true;
}

bool CorpusReader::next(CorpusDocument& doc) {
  while (true) {
    if (file_done_ && !open_next_file()) return false;
    if (next_in_file(doc)) return true;
  }
}

bool CorpusReader::bad(const std::string& why) {
  if (!o_.skip_bad_lines) throw Error(why);
  if (skipped_++ == 0) first_skipped_ = why;
  return false;
}

std::string CorpusReader::checked_utf8(std::string text, int64_t offset, int64_t line) {
  const InvalidUtf8 bad = find_invalid_utf8(text);
  if (bad.count == 0) return text;
  if (o_.replace_invalid_utf8) {
    replaced_ += bad.count;
    return replace_invalid_utf8(text);
  }
  const int64_t at = offset + bad.first;
  const std::string_view head = std::string_view(text).substr(0, 4);
  const std::string looks = at >= 4 || text_->compression() ? ""
                            : head.rfind("\x1f\x8b", 0) == 0 ? " (its bytes look like gzip data: name it *.gz)"
                            : head.rfind("\x28\xb5\x2f\xfd", 0) == 0 ? " (its bytes look like zstd data: name it *.zst)"
                                                                    : "";
  throw Error(fmt::format("{} is not UTF-8 text{}: the byte at offset {} (line {}){}, 0x{:02x}, is not part of a valid "
                          "character ({} such byte{} in this {}). The tokenizer would read each as U+FFFD, and the "
                          "text would not come back from its tokens: convert the file to UTF-8 (e.g. iconv -f LATIN1 "
                          "-t UTF-8), or pass --invalid-utf8 replace to have them replaced by U+FFFD",
                          files_[next_file_ - 1], looks, at,
                          line + std::count(text.begin(), text.begin() + bad.first, '\n'),
                          text_->compression() ? " of its decompressed text" : "",
                          static_cast<unsigned char>(text[size_t(bad.first)]), bad.count, bad.count == 1 ? "" : "s",
                          jsonl_ ? "line" : "document"));
}

bool CorpusReader::next_in_file(CorpusDocument& doc) {
  const std::string& path = files_[next_file_ - 1];
  const int64_t offset = text_->offset(), line = text_->line();
  doc.file = path;
  doc.line = line;
  if (jsonl_) {
    if (!text_->read_until("\n", line_) && line_.empty()) {
      file_done_ = true;
      return false;
    }
    if (line_.find_first_not_of(" \t\r") == std::string::npos) return false;  // holds no document
    line_ = checked_utf8(std::move(line_), offset, line);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line_);
    } catch (const nlohmann::json::exception& e) {  // a parse error, or a number beyond a double (found by fuzz_jsonl)
      return bad(fmt::format("{} line {} is not JSON ({})", path, line, json_reason(e)));
    }
    const std::string& field = o_.text_field;
    if (!j.is_object())
      return bad(fmt::format("{} line {} is {} in JSON, not an object with a \"{}\" field", path, line, json_type(j),
                             field));
    const auto it = j.find(field);
    if (it == j.end()) {
      std::string fields;
      for (auto f = j.begin(); f != j.end(); ++f) fields += (fields.empty() ? "" : ", ") + f.key();
      return bad(fmt::format("{} line {} has no \"{}\" field ({}; --text-field names the field that holds the text)",
                             path, line, field, fields.empty() ? "it is an empty object" : "its fields: " + fields));
    }
    if (!it->is_string())
      return bad(fmt::format("{} line {}: its \"{}\" field is {}, not a string", path, line, field, json_type(*it)));
    doc.text = std::move(it->get_ref<std::string&>());
    if (doc.text.empty())
      return bad(fmt::format("empty document in {} line {}: its \"{}\" is the empty string", path, line, field));
    return true;
  }
  std::string text;
  if (o_.separator.empty()) {
    text_->read_all(text);
    file_done_ = true;
    if (text.empty()) return bad(fmt::format("empty document in {}: the file holds no text", path));
  } else {
    const bool found = text_->read_until(o_.separator, text);
    if (!found) {
      file_done_ = true;
      if (text.empty() && separated_) return false;  // a separator ended the last document
    }
    const bool first = !separated_;
    separated_ = true;
    if (text.empty())
      return bad(fmt::format("empty document in {} line {}: {}", path, line,
                             !found ? "the file holds no text" : first ? "the file begins with the separator"
                                                                       : "two separators follow each other"));
  }
  doc.text = checked_utf8(std::move(text), offset, line);
  return true;
}

}  // namespace lasp
