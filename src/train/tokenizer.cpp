#include "train/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

#include "core/check.h"
#include "core/file.h"
#include "core/folder.h"
#include "train/corpus.h"
#include "train/token_manifest.h"
#include "train/data.h"

namespace lasp {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxUint16Vocab = 65536;

// SentencePiece's trainer drops every sentence over max_sentence_length bytes without a word (a file of one
// long line then trains on nothing and fails as "empty"): lines are handed to it in pieces no longer than this.
constexpr size_t kSentenceBytes = 4192;

// Where to cut a line of more than kSentenceBytes bytes: before the last space of its first kSentenceBytes
// (a piece then starts with the space, as words do), else at the last character boundary there.
size_t sentence_cut(std::string_view line) {
  const std::string_view head = line.substr(0, kSentenceBytes);
  const size_t space = head.find_last_of(' ');
  if (space != std::string_view::npos && space >= kSentenceBytes / 2) return space;
  size_t cut = kSentenceBytes;
  while (cut > kSentenceBytes - 3 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

// SentencePiece's training reads sentences: here the lines of the corpus's documents (corpus.h), each cut
// into pieces of at most kSentenceBytes. With sample_bytes > 0 only a sample of them: a line is taken while
// the bytes taken stay below sample_bytes times the share of the files read so far, so that the sample spreads
// over the whole corpus, and a corpus of at most sample_bytes (uncompressed) is taken whole. Every document is
// read, and so checked (corpus.h), before training starts. An error is kept and thrown again after training
// (rethrow): it does not pass through SentencePiece.
class SampleLines : public sentencepiece::SentenceIterator {
 public:
  SampleLines(CorpusReader& reader, int64_t sample_bytes, std::function<void(int64_t)> progress)
      : reader_(reader), sample_bytes_(sample_bytes), progress_(std::move(progress)) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return piece_; }
  sentencepiece::util::Status status() const override {
    if (!error_) return {};
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kDataLoss, "lasp: the corpus failed to read");
  }
  void Next() override {
    try {
      while (rest_ >= line_.size()) {
        if (!next_line()) {
          done_ = true;
          return;
        }
      }
    } catch (...) {
      error_ = std::current_exception();
      done_ = true;
      return;
    }
    const std::string_view left = line_.substr(rest_);
    const size_t n = left.size() <= kSentenceBytes ? left.size() : sentence_cut(left);
    piece_.assign(left.substr(0, n));
    rest_ += n;
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }
  int64_t taken() const { return taken_; }    // bytes of the lines in the sample
  int64_t left_out() const { return left_; }  // bytes of the lines that are not

 private:
  bool next_line() {
    while (true) {
      if (at_ >= doc_.text.size()) {
        if (!reader_.next(doc_)) return false;
        at_ = 0;
        if (progress_) progress_(reader_.bytes_read());
      }
      const size_t end = std::min(doc_.text.find('\n', at_), doc_.text.size());
      line_ = std::string_view(doc_.text).substr(at_, end - at_);
      rest_ = 0;
      at_ = end + 1;
      const double share = double(reader_.bytes_read()) / double(std::max<int64_t>(1, reader_.bytes_total()));
      if (line_.empty()) continue;
      if (sample_bytes_ > 0 && double(taken_) >= double(sample_bytes_) * share) {
        left_ += int64_t(line_.size());
        continue;
      }
      taken_ += int64_t(line_.size());
      return true;
    }
  }
  CorpusReader& reader_;
  const int64_t sample_bytes_;
  const std::function<void(int64_t)> progress_;
  CorpusDocument doc_;
  size_t at_ = 0, rest_ = 0;
  std::string_view line_;
  std::string piece_;
  bool done_ = false;
  std::exception_ptr error_;
  int64_t taken_ = 0, left_ = 0;
};

// SentencePiece's status without its source location and check ("./src/trainer_interface.cc(580) [...] "):
// the message alone, or "" when it has none.
std::string sentencepiece_message(const sentencepiece::util::Status& status) {
  std::string m = status.message();
  if (m.rfind("./", 0) == 0 || m.rfind("src/", 0) == 0) {
    const size_t close = m.find(") ");
    if (close != std::string::npos) m = m.substr(close + 2);
    if (!m.empty() && m[0] == '[') {  // the failed condition, brackets nested
      int depth = 0;
      size_t i = 0;
      for (; i < m.size(); ++i) {
        depth += m[i] == '[' ? 1 : m[i] == ']' ? -1 : 0;
        if (depth == 0) break;
      }
      m = i < m.size() ? m.substr(i + 1) : "";
    }
  }
  while (!m.empty() && (m.front() == ' ' || m.back() == ' ' || m.back() == '\n'))
    m = m.front() == ' ' ? m.substr(1) : m.substr(0, m.size() - 1);
  return m;
}

// The two numbers of SentencePiece's "... X vs Y." or "... (X). Please set it to a value <= Y.".
bool two_numbers(const std::string& m, const char* before_first, const char* before_second, long* a, long* b) {
  const size_t i = m.find(before_first), j = i == std::string::npos ? i : m.find(before_second, i);
  if (j == std::string::npos) return false;
  *a = std::strtol(m.c_str() + i + std::strlen(before_first), nullptr, 10);
  *b = std::strtol(m.c_str() + j + std::strlen(before_second), nullptr, 10);
  return *b > 0;
}

// A failed training as a lasp message that names lasp's options, not SentencePiece's.
[[noreturn]] void training_failed(const TokenizeOptions& o, const sentencepiece::util::Status& status) {
  const std::string m = sentencepiece_message(status);
  long given = 0, bound = 0;
  if (two_numbers(m, "smaller than required_chars. ", " vs ", &given, &bound))
    throw Error(fmt::format("tokenize: --vocab-size {} is too small for this text: a tokenizer of it needs at least {} "
                            "pieces (3 special pieces, 256 byte pieces and one for each of the {} distinct characters "
                            "of the text)", o.vocab_size, bound, bound - 259));
  if (two_numbers(m, "Vocabulary size too high (", "set it to a value <= ", &given, &bound))
    throw Error(fmt::format("tokenize: --vocab-size {} is more than a {} tokenizer can learn from this text: at most {} "
                            "pieces (more text allows more)", o.vocab_size, o.model_type, bound));
  if (m.empty() && std::string(status.message()).find("sentences_.empty()") != std::string::npos)
    throw Error("tokenize: the --input files hold no text to train a tokenizer on");
  throw Error(fmt::format("tokenize: training a {} tokenizer of {} pieces failed: {}", o.model_type, o.vocab_size,
                          m.empty() ? "SentencePiece gave no reason" : m));
}

// The options of training, checked before any work.
void check_training(const TokenizeOptions& o) {
  LASP_CHECK(o.vocab_size > 0 && o.vocab_size <= kMaxUint16Vocab,
             "tokenize: --vocab-size must be 1 to {} (token shards hold uint16 ids), got {}", kMaxUint16Vocab,
             o.vocab_size);
  LASP_CHECK(o.model_type == "bpe" || o.model_type == "unigram", "tokenize: --model-type must be bpe or unigram, got '{}'",
             o.model_type);
}

std::string train_model(const TokenizeOptions& o, SampleLines& lines) {
  const std::unordered_map<std::string, std::string> args = {
      {"vocab_size", std::to_string(o.vocab_size)},
      {"model_type", o.model_type},
      // every byte kept: decode(encode(text)) == text, newlines and indentation included
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"split_digits", "true"},
      {"unk_id", "0"}, {"bos_id", "1"}, {"eos_id", "2"}, {"pad_id", "-1"},
      // every line SampleLines hands over (its sample bounds them), in order: the same corpus gives the same model
      {"input_sentence_size", "0"},
      {"max_sentence_length", std::to_string(kSentenceBytes)},
      {"num_threads", std::to_string(std::max(1, o.threads))},
      {"minloglevel", "2"},
  };
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  lines.rethrow();
  if (!status.ok()) training_failed(o, status);
  return model;
}

}  // namespace

namespace {

// Protocol buffers' wire format, as far as a model's pieces: a varint at `at` (false when the bytes end first).
bool read_varint(std::string_view b, size_t& at, uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64 && at < b.size(); shift += 7) {
    const unsigned char c = static_cast<unsigned char>(b[at++]);
    value |= uint64_t(c & 0x7F) << shift;
    if (!(c & 0x80)) return true;
  }
  return false;
}

// Calls f(field, wire type, payload) for each field of a message; false when the bytes are not one (SentencePiece
// then refuses them itself).
template <class F>
bool for_each_field(std::string_view b, F f) {
  for (size_t at = 0; at < b.size();) {
    uint64_t key = 0, n = 0;
    if (!read_varint(b, at, key)) return false;
    const int wire = int(key & 7);
    std::string_view payload;
    if (wire == 0) {
      if (!read_varint(b, at, n)) return false;
    } else if (wire == 1 || wire == 5) {
      n = wire == 1 ? 8 : 4;
      if (b.size() - at < n) return false;
      at += n;
    } else if (wire == 2) {
      if (!read_varint(b, at, n) || n > b.size() - at) return false;
      payload = b.substr(at, n);
      at += n;
    } else {
      return false;
    }
    f(key >> 3, wire, payload);
  }
  return true;
}

// SentencePiece's loader throws an exception of its trie library, not a status, when a piece is empty or
// holds a NUL byte ("./third_party/darts_clone/darts.h:1143: exception: failed to insert key: zero-length
// key" reached the user). Found by tests/fuzz (fuzz_tokenizer_model): such a model (ModelProto field 1, each
// SentencePiece's field 1 its text) is refused here first, naming the piece.
void check_pieces(std::string_view model, const std::string& path) {
  int index = 0;
  for_each_field(model, [&](uint64_t field, int wire, std::string_view piece_message) {
    if (field != 1 || wire != 2) return;
    std::string_view text;
    for_each_field(piece_message, [&](uint64_t f, int w, std::string_view payload) {
      if (f == 1 && w == 2) text = payload;
    });
    LASP_CHECK(!text.empty() && text.find('\0') == std::string_view::npos, "{}: not a SentencePiece model: its piece "
               "{} is {}", path, index, text.empty() ? "empty" : "text with a NUL byte");
    ++index;
  });
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) { return from_bytes(read_file(path), path); }

Tokenizer Tokenizer::from_bytes(const std::string& bytes, const std::string& path) {
  check_pieces(bytes, path);
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  t.path_ = path;
  sentencepiece::util::Status status;
  try {
    status = t.sp_->LoadFromSerializedProto(bytes);
  } catch (const std::exception&) {  // any other exception of its libraries: no source paths for the user
    throw Error(fmt::format("{}: not a SentencePiece model (SentencePiece cannot index its pieces)", path));
  }
  const std::string why = sentencepiece_message(status);
  LASP_CHECK(status.ok(), "{}: not a SentencePiece model{}", path,
             why.empty() ? " (its bytes do not parse as one)" : ": " + why);
  const std::string space = "\xe2\x96\x81";  // U+2581, SentencePiece's escaped space: one byte when decoded
  for (int id = 0; id < t.vocab_size(); ++id) {
    int bytes = 0;
    if (t.sp_->IsByte(id)) {
      bytes = 1;
    } else if (!t.sp_->IsControl(id) && !t.sp_->IsUnknown(id)) {
      const std::string piece = t.sp_->IdToPiece(id);
      bytes = int(piece.size());
      for (size_t at = piece.find(space); at != std::string::npos; at = piece.find(space, at + 3)) bytes -= 2;
    }
    t.piece_bytes_.push_back(bytes);
    int byte = -1;
    if (t.sp_->IsByte(id)) {  // "<0xAB>"
      const std::string piece = t.sp_->IdToPiece(id);
      if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>')
        byte = int(std::strtol(piece.substr(3, 2).c_str(), nullptr, 16));
      LASP_CHECK(byte >= 0, "{}: byte piece {} is not of the form <0xAB>", path, id);
    }
    t.byte_value_.push_back(byte);
    // The context DecodeStream decodes behind: an ordinary piece that reads as text even at the start
    if (t.context_ < 0 && !t.sp_->IsByte(id) && !t.sp_->IsControl(id) && !t.sp_->IsUnknown(id) &&
        !t.sp_->IsUnused(id)) {
      const std::string text = t.decode({id});
      if (!text.empty()) t.context_ = id, t.context_text_ = text;
    }
  }
  return t;
}

namespace {

// s is the start of a valid character still missing bytes (a byte piece may complete it).
bool utf8_incomplete(std::string_view s) {
  if (s.empty() || s.size() > 3) return false;
  std::string probe(s);
  for (int second = 0x80; second <= 0xBF; ++second) {  // the lead byte bounds only the second byte
    std::string whole = probe.size() >= 2 ? probe : probe + char(second);
    while (whole.size() < 4) whole += char(0x80);
    const int n = utf8_char_length(whole);
    if (n > int(s.size())) return true;
    if (probe.size() >= 2) break;
  }
  return false;
}

}  // namespace

std::string DecodeStream::decode_tail() {
  decoded_ids_ += int64_t(tail_.size()) + (begun_ ? 1 : 0);
  if (!begun_) return tokenizer_.decode(tail_);  // the start of the text: SentencePiece's own rule applies
  std::vector<int> ids;
  ids.reserve(tail_.size() + 1);
  ids.push_back(tokenizer_.context_);
  ids.insert(ids.end(), tail_.begin(), tail_.end());
  const std::string text = tokenizer_.decode(ids);
  return text.substr(tokenizer_.context_text_.size());
}

// SentencePiece decodes (1) each ordinary piece by itself, except at the start of the text, where a dummy
// prefix's space is dropped, and (2) each run of byte pieces as UTF-8, each byte that does not complete a
// character as U+FFFD. So the text before a cut never changes when a cut follows an ordinary piece or falls
// on a character boundary inside a run of bytes, once the text has begun; the tail after it reads the same
// decoded behind any ordinary piece whose text is not empty (the context).
std::string DecodeStream::push(int id) {
  LASP_CHECK(id >= 0 && id < tokenizer_.vocab_size(), "{}: token id {} is outside the vocabulary of {}",
             tokenizer_.path(), id, tokenizer_.vocab_size());
  tail_.push_back(id);
  // The bytes at the end of the tail that begin a character still incomplete: its bytes are U+FFFD for now.
  size_t pending = 0;
  if (tokenizer_.byte_value(id) >= 0) {
    size_t run = tail_.size();  // the run of byte pieces at the end starts at a character boundary
    while (run > 0 && tokenizer_.byte_value(tail_[run - 1]) >= 0) --run;
    std::string bytes;
    for (size_t i = run; i < tail_.size(); ++i) bytes += char(tokenizer_.byte_value(tail_[i]));
    for (size_t at = 0; at < bytes.size();) {
      const int n = utf8_char_length(std::string_view(bytes).substr(at));
      if (n == 0 && utf8_incomplete(std::string_view(bytes).substr(at))) {
        pending = bytes.size() - at;
        break;
      }
      at += n ? size_t(n) : 1;
    }
  }
  const std::string text = decode_tail();
  size_t end = text.size();
  for (size_t i = 0; i < pending && end >= given_ + 3 && text.compare(end - 3, 3, "\xEF\xBF\xBD") == 0; ++i) end -= 3;
  std::string out = end > given_ ? text.substr(given_, end - given_) : std::string();
  given_ = std::max(given_, end);
  // Cut before the pending bytes: what precedes them is final.
  if (given_ == text.size() - 3 * pending && (begun_ || given_ > 0) && tokenizer_.context_ >= 0) {
    tail_.erase(tail_.begin(), tail_.end() - std::ptrdiff_t(pending));
    begun_ = true;
    given_ = 0;
  }
  return out;
}

std::string DecodeStream::finish() {
  const std::string text = decode_tail();
  const std::string out = text.size() > given_ ? text.substr(given_) : "";
  given_ = text.size();
  return out;
}

int utf8_char_length(std::string_view s) {
  if (s.empty()) return 0;
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto trail = [&](size_t i) { return i < s.size() && (b(i) & 0xC0) == 0x80; };
  const unsigned c = b(0);
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return trail(1) && c >= 0xC2 ? 2 : 0;  // C0, C1: overlong
  if ((c & 0xF0) == 0xE0) {
    if (!trail(1) || !trail(2)) return 0;
    const unsigned cp = (c & 0x0F) << 12 | (b(1) & 0x3F) << 6 | (b(2) & 0x3F);
    return cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF) ? 3 : 0;  // no overlong forms, no surrogates
  }
  if ((c & 0xF8) == 0xF0) {
    if (!trail(1) || !trail(2) || !trail(3)) return 0;
    const unsigned cp = (c & 0x07) << 18 | (b(1) & 0x3F) << 12 | (b(2) & 0x3F) << 6 | (b(3) & 0x3F);
    return cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
  }
  return 0;
}

InvalidUtf8 find_invalid_utf8(std::string_view s) {
  InvalidUtf8 r;
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const int n = utf8_char_length(s.substr(i, 4));
    if (n == 0 && r.count++ == 0) r.first = int64_t(i);
    i += n ? size_t(n) : 1;
  }
  return r;
}

std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_char_length(s.substr(i, 4));
    if (n == 0) out += "\xEF\xBF\xBD";
    else out.append(s.substr(i, size_t(n)));
    i += n ? size_t(n) : 1;
  }
  return out;
}

std::string tokenizer_beside(const std::string& data_path) {
  if (fs::path(data_path).extension() != ".bin") return "";  // text, synthetic data
  const fs::path path = fs::path(data_path).parent_path() / "tokenizer.model";
  return fs::exists(path) ? path.string() : std::string();
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int Tokenizer::bos() const { return sp_->bos_id(); }

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  LASP_CHECK(status.ok(), "{}: encoding failed: {}", path_, sentencepiece_message(status));
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids)
    LASP_CHECK(id >= 0 && id < vocab_size(), "{}: token id {} is outside the vocabulary of {}", path_, id, vocab_size());
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  LASP_CHECK(status.ok(), "{}: decoding failed: {}", path_, sentencepiece_message(status));
  return text;
}

namespace {

// Encodes documents on `threads` threads, the caller's among them, in batches of about kBatchBytes, and hands
// the tokens (BOS + the encoding of each document) to the sink in the documents' order: the output does not
// depend on the thread count. The caller reads the documents; when threads - 1 helpers cannot keep up (at most
// 2 x threads batches wait), it encodes batches too. Memory: those batches, whatever the size of the corpus.
class BatchEncoder {
 public:
  static constexpr size_t kBatchBytes = size_t(1) << 18;
  using Sink = std::function<void(const std::vector<uint16_t>&)>;
  BatchEncoder(const Tokenizer& tok, int threads, Sink sink)
      : tok_(tok), sink_(std::move(sink)), waiting_(2 * size_t(std::max(threads, 1)) - 2) {
    for (int t = 1; t < threads; ++t) helpers_.emplace_back([this] { help(); });
  }
  ~BatchEncoder() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    work_.notify_all();
    for (std::thread& t : helpers_) t.join();
  }
  void add(std::string text) {
    next_.texts.push_back(std::move(text));
    next_.bytes += next_.texts.back().size();
    if (next_.bytes >= kBatchBytes) submit();
  }
  void finish() {
    if (!next_.texts.empty()) submit();
    drain(0);
  }

 private:
  struct Batch {
    std::vector<std::string> texts;
    size_t bytes = 0;
    std::vector<uint16_t> tokens;
    bool claimed = false, done = false;
    std::exception_ptr error;
  };
  void submit() {
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back(std::make_unique<Batch>(std::move(next_)));
    }
    next_ = Batch();
    work_.notify_one();
    drain(waiting_);
  }
  // Writes the finished batches at the front, encoding or waiting until at most `keep` batches are left.
  void drain(size_t keep) {
    std::unique_lock<std::mutex> lock(m_);
    while (true) {
      while (!queue_.empty() && queue_.front()->done) {
        std::unique_ptr<Batch> b = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        if (b->error) std::rethrow_exception(b->error);
        sink_(b->tokens);
        lock.lock();
      }
      if (queue_.size() <= keep) return;
      if (!encode_one(lock)) done_.wait(lock);
    }
  }
  void help() {
    std::unique_lock<std::mutex> lock(m_);
    while (!stop_)
      if (!encode_one(lock)) work_.wait(lock);
  }
  // Claims the oldest batch nobody encodes and encodes it (unlocked meanwhile); false when there is none.
  bool encode_one(std::unique_lock<std::mutex>& lock) {
    auto it = std::find_if(queue_.begin(), queue_.end(), [](const auto& b) { return !b->claimed; });
    if (it == queue_.end()) return false;
    Batch& b = **it;
    b.claimed = true;
    lock.unlock();
    try {
      for (const std::string& text : b.texts) {
        const std::vector<int> ids = tok_.encode(text);
        b.tokens.push_back(uint16_t(tok_.bos()));
        for (int id : ids) b.tokens.push_back(uint16_t(id));
      }
    } catch (...) {
      b.error = std::current_exception();
    }
    b.texts = {};
    lock.lock();
    b.done = true;
    done_.notify_all();
    return true;
  }
  const Tokenizer& tok_;
  Sink sink_;
  const size_t waiting_;
  Batch next_;
  std::mutex m_;
  std::condition_variable work_, done_;
  std::deque<std::unique_ptr<Batch>> queue_;
  bool stop_ = false;
  std::vector<std::thread> helpers_;
};

}  // namespace

TokenizeReport tokenize(const TokenizeOptions& o, const std::function<void(const TokenizeProgress&)>& progress) {
  LASP_CHECK(!o.inputs.empty(), "tokenize: no --input files");
  LASP_CHECK(o.shard_tokens > 0 && o.shard_tokens <= INT32_MAX, "tokenize: --shard-tokens must be 1 to {}, got {}",
             INT32_MAX, o.shard_tokens);
  LASP_CHECK(o.sample_bytes >= 0, "tokenize: --sample-bytes must be >= 0, got {}", o.sample_bytes);
  const std::vector<std::string> files = corpus_files(o.inputs);
  const std::string out = without_trailing_slashes(o.out_dir);
  LASP_CHECK(!out.empty(), "tokenize: --out is required");
  // Before any work: a folder of the user's is never touched, and one run at a time writes it (the lock is held
  // until the new output is swapped in).
  const FolderLock lock = check_folder_target(tokens_folder(), out);
  if (!o.model.empty()) Tokenizer::load(o.model);  // a bad --model is named as given, before any work
  else check_training(o);
  const std::string given = o.model.empty() ? "" : read_file(o.model);
  CorpusOptions corpus;
  corpus.separator = o.separator;
  corpus.text_field = o.text_field;
  corpus.replace_invalid_utf8 = o.replace_invalid_utf8;
  corpus.skip_bad_lines = o.skip_bad_lines;
  // The progress of one pass over the files: bytes read of all, since the pass began.
  const auto pass = [&](const char* phase, const CorpusReader& reader) {
    const auto start = std::chrono::steady_clock::now();
    return [&progress, &reader, phase, start](int64_t done) {
      if (progress)
        progress({phase, done, reader.bytes_total(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
    };
  };
  TokenizeReport r;
  const auto seconds_since = [](std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  write_folder(tokens_folder(), out, [&](const std::string& tmp) {
    const std::string model_path = tmp + "/tokenizer.model";
    const auto training = std::chrono::steady_clock::now();
    if (o.model.empty()) {  // one pass over the corpus for the sample, which checks every document before training
      CorpusReader reader(files, corpus);
      const std::function<void(int64_t)> shown = pass("reading", reader);
      SampleLines lines(reader, o.sample_bytes, shown);
      write_file_atomic(model_path, train_model(o, lines));
      r.sample_bytes = lines.taken();
      r.sampled = lines.left_out() > 0;
      r.training_seconds = seconds_since(training);
    } else {
      write_file_atomic(model_path, given);
    }
    const Tokenizer tok = Tokenizer::load(model_path);
    r.vocab_size = tok.vocab_size();
    LASP_CHECK(r.vocab_size <= kMaxUint16Vocab, "tokenize: {} has {} pieces; token shards hold uint16 ids, at most {}",
               o.model.empty() ? "the trained tokenizer" : o.model, r.vocab_size, kMaxUint16Vocab);
    LASP_CHECK(o.vocab_size == 0 || o.model.empty() || o.vocab_size == r.vocab_size,
               "tokenize: --vocab-size {} contradicts --model {}, which has {} pieces", o.vocab_size, o.model,
               r.vocab_size);
    LASP_CHECK(tok.bos() >= 0, "tokenize: {} has no BOS piece, which starts every document", o.model);

    // The encoding pass: shards written as the tokens come, in the documents' order.
    nlohmann::json shards = nlohmann::json::array();
    std::unique_ptr<TokenShardWriter> shard;
    const auto close_shard = [&] {
      shard->finish();
      shards.back()["tokens"] = shard->tokens();
      shard.reset();
    };
    BatchEncoder encoder(tok, o.threads, [&](const std::vector<uint16_t>& tokens) {
      for (size_t at = 0; at < tokens.size();) {
        if (!shard) {
          const std::string name = fmt::format("tokens_{:06d}.bin", shards.size());
          shard = std::make_unique<TokenShardWriter>(tmp + "/" + name);
          shards.push_back({{"file", name}, {"tokens", 0}});
          r.shards.push_back(out + "/" + name);
        }
        const size_t n = std::min(tokens.size() - at, size_t(o.shard_tokens - shard->tokens()));
        shard->append(tokens.data() + at, n);
        at += n;
        if (shard->tokens() == o.shard_tokens) close_shard();
      }
      r.tokens += int64_t(tokens.size());
    });
    const auto encoding = std::chrono::steady_clock::now();
    CorpusReader reader(files, corpus);
    const std::function<void(int64_t)> shown = pass("encoding", reader);
    for (CorpusDocument doc; reader.next(doc);) {
      r.documents += 1, r.bytes += int64_t(doc.text.size());
      encoder.add(std::move(doc.text));
      shown(reader.bytes_read());
    }
    encoder.finish();
    if (shard) close_shard();
    r.encoding_seconds = seconds_since(encoding);
    r.replaced = reader.replaced(), r.skipped = reader.skipped(), r.first_skipped = reader.first_skipped();
    LASP_CHECK(r.documents > 0, "tokenize: the --input files hold no document{}",
               r.skipped ? fmt::format(" ({} bad lines or empty documents skipped; the first: {})", r.skipped,
                                       r.first_skipped) : "");
    return nlohmann::json{{"tokenizer", "tokenizer.model"}, {"vocab_size", r.vocab_size}, {"bos", tok.bos()},
                          {"documents", r.documents}, {"bytes", r.bytes}, {"tokens", r.tokens},
                          {"invalid_utf8_replaced", r.replaced}, {"skipped", r.skipped}, {"shards", shards}};
  });
  return r;
}

}  // namespace lasp
