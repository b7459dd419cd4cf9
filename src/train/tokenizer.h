// Subword text: a SentencePiece tokenizer (Debian's libsentencepiece) and `lasp tokenize`, which turns text
// files into llm.c token shards (train/data.h) beside the tokenizer's model. A document is the tokenizer's
// BOS id followed by SentencePiece's encoding of the document's whole text as one string; documents follow
// one another in the shards. Models that lasp trains keep every byte: identity normalization, no extra
// whitespace removed, no dummy prefix, byte fallback (a newline or any rare character is a byte piece), so
// that decode(encode(text)) == text and generated text keeps its lines.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace lasp {

class Tokenizer {
 public:
  // A SentencePiece .model file; throws naming the file when it is not one.
  static Tokenizer load(const std::string& path);
  // The same from the file's bytes (path: its name, for messages).
  static Tokenizer from_bytes(const std::string& bytes, const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  int vocab_size() const;
  int bos() const;  // -1 when the model has none
  std::vector<int> encode(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;
  // The bytes that token id stands for in decoded text (0 for BOS, EOS and other control pieces; 1 for a byte
  // piece); sums of them count the bytes of any stretch of tokens (bits per byte).
  int bytes_of(int id) const { return piece_bytes_.at(size_t(id)); }
  int byte_value(int id) const { return byte_value_.at(size_t(id)); }  // a byte piece's byte, else -1
  const std::string& path() const { return path_; }

 private:
  friend class DecodeStream;
  Tokenizer() = default;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  std::vector<int> piece_bytes_, byte_value_;
  int context_ = -1;           // a piece whose text is not empty and ends the start of a text (see DecodeStream)
  std::string context_text_;   // its text
};

// The decoded text of a growing token sequence, handed out as it becomes final, at a bounded cost per token:
// only the tokens since the last point where the text was final are decoded again (at most the 3 byte pieces
// of a character not yet whole, and the new one), behind a context piece, so that SentencePiece's rule for
// the start of a text (a dummy prefix's space dropped) applies only where the whole text starts. A character
// whose byte pieces have not all come yet (decoded meanwhile as U+FFFD) is held back. The text handed out
// equals decode(all ids).
class DecodeStream {
 public:
  explicit DecodeStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int id);  // the text that became final with this token
  std::string finish();      // whatever is left, incomplete characters included
  int64_t decoded_ids() const { return decoded_ids_; }  // the work so far: ids given to SentencePiece's decode

 private:
  std::string decode_tail();  // the text of tail_ as it reads within the whole text
  const Tokenizer& tokenizer_;
  std::vector<int> tail_;  // the tokens since the last cut (all of them until the text has begun)
  bool begun_ = false;     // the text before tail_ is not empty: the start-of-text rule is behind us
  size_t given_ = 0;       // bytes of decode_tail() handed out
  int64_t decoded_ids_ = 0;
};

// UTF-8 as SentencePiece reads it (strict: no overlong forms, no surrogates, nothing above U+10FFFF): the
// length (1 to 4) of the character that s starts with, or 0 when s does not start with a whole valid
// character (SentencePiece then reads its first byte alone as U+FFFD).
int utf8_char_length(std::string_view s);
// The bytes of s that are not part of a valid character: how many, and the offset of the first (-1: none).
struct InvalidUtf8 {
  int64_t count = 0, first = -1;
};
InvalidUtf8 find_invalid_utf8(std::string_view s);
// s with each such byte replaced by U+FFFD, as SentencePiece would read it.
std::string replace_invalid_utf8(std::string_view s);

// The tokenizer.model beside token shards written by `lasp tokenize` (data_path: a .bin shard or a glob of
// them), or "" when there is none.
std::string tokenizer_beside(const std::string& data_path);

struct TokenizeOptions {
  std::vector<std::string> inputs;  // files and glob patterns: plain, .gz or .zst text, or JSON Lines (train/corpus.h)
  std::string out_dir;              // gets tokenizer.model, tokens_NNNNNN.bin and tokens.json (train/token_manifest.h)
  std::string model;                // a .model to use; empty: train one on the inputs
  int vocab_size = 0;               // training: the vocabulary (at most 65,536, what uint16 shards hold)
  std::string model_type = "bpe";   // training: bpe | unigram
  std::string separator;            // plain text: empty, each input file is one document; else the string between them
  std::string text_field = "text";  // JSON Lines: the field that holds each line's document
  // Training reads the whole corpus but learns from a sample of about this many bytes of its lines, spread over
  // it (SentencePiece's memory and time grow with what it learns from); 0: all of it.
  int64_t sample_bytes = 100'000'000;
  int64_t shard_tokens = 100'000'000;
  int threads = 1;                  // SentencePiece's training threads, and the threads that encode
  // Bytes that are not valid UTF-8 would silently become U+FFFD (and never round-trip): refused, naming the
  // file and the offset, unless replace_invalid_utf8 (--invalid-utf8 replace) accepts that knowingly.
  bool replace_invalid_utf8 = false;
  bool skip_bad_lines = false;      // a bad JSON line or an empty document is skipped and counted, not an error
};

struct TokenizeReport {
  int vocab_size = 0;
  int64_t documents = 0, tokens = 0, bytes = 0;
  int64_t replaced = 0;  // bytes that were not valid UTF-8, replaced by U+FFFD (--invalid-utf8 replace)
  int64_t skipped = 0;   // bad lines and empty documents skipped (--skip-bad-lines)
  std::string first_skipped;  // why the first of them was
  int64_t sample_bytes = 0;   // training: the bytes of the lines the tokenizer learned from
  bool sampled = false;       // ... a sample, not all of the text
  double training_seconds = 0, encoding_seconds = 0;  // the two passes (reading the sample and training; encoding)
  std::vector<std::string> shards;
};

// Where tokenize stands: `phase` ("reading" the corpus for the tokenizer's sample, or "encoding" it) has read
// `done` of the files' `total` bytes (as stored: compressed bytes of .gz and .zst) in `seconds`.
struct TokenizeProgress {
  const char* phase;
  int64_t done, total;
  double seconds;
};

// Trains (or loads) the tokenizer, then encodes every document into shards, streaming: memory is bounded by
// the largest document, the training sample and a few batches of documents, whatever the size of the corpus.
// Documents are encoded on options.threads threads; the shards do not depend on their number. progress is
// called after each document. Throws lasp::Error on bad input (train/corpus.h: text that is not UTF-8, a bad
// JSON line, an empty document, a damaged compressed file), a vocabulary beyond uint16 or too small or too
// large for the text (the message gives the bound), a model without BOS, an output folder holding anything but
// an earlier tokenize's output. The output is written whole (core/folder.h): beside out_dir, swapped in only
// when complete.
TokenizeReport tokenize(const TokenizeOptions& options, const std::function<void(const TokenizeProgress&)>& progress = {});

}  // namespace lasp
