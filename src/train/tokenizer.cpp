#include "train/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/check.h"
#include "core/file.h"
#include "core/folder.h"
#include "train/token_manifest.h"
#include "train/data.h"

namespace lasp {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxUint16Vocab = 65536;

// SentencePiece's training reads sentences: here, the lines of the input files, one file after another.
class FileLines : public sentencepiece::SentenceIterator {
 public:
  explicit FileLines(const std::vector<std::string>& paths) : paths_(paths) { Next(); }
  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }
  void Next() override {
    while (true) {
      if (in_.is_open() && std::getline(in_, line_)) return;
      if (next_ == paths_.size()) {
        done_ = true;
        return;
      }
      in_ = std::ifstream(paths_[next_++], std::ios::binary);
    }
  }

 private:
  std::vector<std::string> paths_;
  size_t next_ = 0;
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
};

std::string train_model(const TokenizeOptions& o) {
  LASP_CHECK(o.vocab_size > 0 && o.vocab_size <= kMaxUint16Vocab,
             "tokenize: --vocab-size must be 1 to {} (token shards hold uint16 ids), got {}", kMaxUint16Vocab,
             o.vocab_size);
  LASP_CHECK(o.model_type == "bpe" || o.model_type == "unigram", "tokenize: --model-type must be bpe or unigram, got '{}'",
             o.model_type);
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
      // a sample of the lines of a large corpus, as SentencePiece recommends
      {"input_sentence_size", "2000000"},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(std::max(1, o.threads))},
      {"minloglevel", "2"},
  };
  FileLines lines(o.inputs);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  LASP_CHECK(status.ok(), "tokenize: training a {} tokenizer of {} pieces failed: {}", o.model_type, o.vocab_size,
             status.ToString());
  return model;
}

// The documents of the inputs, one at a time: each file whole, or the pieces between separators.
template <class F>
void for_each_document(const TokenizeOptions& o, F f) {
  for (const std::string& path : o.inputs) {
    const std::string text = read_file(path);
    if (o.separator.empty()) {
      f(text, path);
      continue;
    }
    size_t begin = 0, index = 0;
    while (true) {
      const size_t end = text.find(o.separator, begin);
      const std::string where = fmt::format("{} (document {} between separators)", path, index++);
      if (end == std::string::npos) {
        if (begin < text.size() || begin == 0) f(text.substr(begin), where);  // a trailing separator ends the last
        break;
      }
      f(text.substr(begin, end - begin), where);
      begin = end + o.separator.size();
    }
  }
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  t.path_ = path;
  const auto status = t.sp_->LoadFromSerializedProto(read_file(path));
  LASP_CHECK(status.ok(), "{}: not a SentencePiece model: {}", path, status.ToString());
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
  }
  return t;
}

std::string DecodeStream::push(int id) {
  ids_.push_back(id);
  const std::string text = tokenizer_.decode(ids_);
  size_t end = text.size();
  while (end >= given_ + 3 && text.compare(end - 3, 3, "\xEF\xBF\xBD") == 0) end -= 3;
  if (end <= given_) return "";
  const std::string out = text.substr(given_, end - given_);
  given_ = end;
  return out;
}

std::string DecodeStream::finish() {
  const std::string text = tokenizer_.decode(ids_);
  const std::string out = text.size() > given_ ? text.substr(given_) : "";
  given_ = text.size();
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
  LASP_CHECK(status.ok(), "{}: encoding failed: {}", path_, status.ToString());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids)
    LASP_CHECK(id >= 0 && id < vocab_size(), "{}: token id {} is outside the vocabulary of {}", path_, id, vocab_size());
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  LASP_CHECK(status.ok(), "{}: decoding failed: {}", path_, status.ToString());
  return text;
}

TokenizeReport tokenize(const TokenizeOptions& o, const std::function<void(int64_t, int64_t)>& progress) {
  LASP_CHECK(!o.inputs.empty(), "tokenize: no --input files");
  LASP_CHECK(o.shard_tokens > 0 && o.shard_tokens <= INT32_MAX, "tokenize: --shard-tokens must be 1 to {}, got {}",
             INT32_MAX, o.shard_tokens);
  int64_t total_bytes = 0;
  for (const std::string& path : o.inputs) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    LASP_CHECK(!ec && fs::is_regular_file(path), "tokenize: cannot read --input {}: {}", path,
               ec ? ec.message() : "not a regular file");
    total_bytes += int64_t(size);
  }
  const std::string out = without_trailing_slashes(o.out_dir);
  LASP_CHECK(!out.empty(), "tokenize: --out is required");
  check_folder_target(tokens_folder(), out);  // before any work: a folder of the user's is never touched
  if (!o.model.empty()) Tokenizer::load(o.model);  // a bad --model is named as given, before any work
  const std::string given = o.model.empty() ? "" : read_file(o.model);
  TokenizeReport r;
  write_folder(tokens_folder(), out, [&](const std::string& tmp) {
    const std::string model_path = tmp + "/tokenizer.model";
    write_file_atomic(model_path, o.model.empty() ? train_model(o) : given);
    const Tokenizer tok = Tokenizer::load(model_path);
    r.vocab_size = tok.vocab_size();
    LASP_CHECK(r.vocab_size <= kMaxUint16Vocab, "tokenize: {} has {} pieces; token shards hold uint16 ids, at most {}",
               o.model.empty() ? "the trained tokenizer" : o.model, r.vocab_size, kMaxUint16Vocab);
    LASP_CHECK(o.vocab_size == 0 || o.model.empty() || o.vocab_size == r.vocab_size,
               "tokenize: --vocab-size {} contradicts --model {}, which has {} pieces", o.vocab_size, o.model,
               r.vocab_size);
    LASP_CHECK(tok.bos() >= 0, "tokenize: {} has no BOS piece, which starts every document", o.model);

    nlohmann::json shards = nlohmann::json::array();
    std::vector<uint16_t> shard;
    auto flush = [&] {
      if (shard.empty()) return;
      const std::string name = fmt::format("tokens_{:06d}.bin", shards.size());
      write_token_shard(tmp + "/" + name, shard);
      shards.push_back({{"file", name}, {"tokens", shard.size()}});
      r.shards.push_back(out + "/" + name);
      shard.clear();
    };
    for_each_document(o, [&](const std::string& text, const std::string& where) {
      LASP_CHECK(!text.empty(), "tokenize: empty document in {}", where);
      std::vector<int> ids = tok.encode(text);
      ids.insert(ids.begin(), tok.bos());
      for (int id : ids) {
        shard.push_back(uint16_t(id));
        if (int64_t(shard.size()) == o.shard_tokens) flush();
      }
      r.documents += 1, r.tokens += int64_t(ids.size()), r.bytes += int64_t(text.size());
      if (progress) progress(r.bytes, total_bytes);
    });
    flush();
    return nlohmann::json{{"tokenizer", "tokenizer.model"}, {"vocab_size", r.vocab_size}, {"bos", tok.bos()},
                          {"documents", r.documents}, {"bytes", r.bytes}, {"tokens", r.tokens}, {"shards", shards}};
  });
  return r;
}

}  // namespace lasp
