// Text corpora as a stream of documents (`lasp tokenize --input`), read a piece at a time: memory is bounded
// by the largest document, whatever the size of the corpus. A file is plain text, or gzip (.gz) or zstd (.zst)
// compressed text; its name without that suffix says how its text holds documents:
//   *.jsonl  JSON Lines: each line is a JSON object whose string field text_field is one document (lines holding
//            only whitespace hold none and are passed over);
//   other    the whole file is one document, or with a separator the text between separators (one at the very
//            end of the file ends the last document).
// Each document is checked on the way. Text that is not UTF-8 is refused, naming the file, offset and line, or
// with replace_invalid_utf8 each such byte becomes U+FFFD, as SentencePiece would read it (counted). A line
// that is not JSON, a missing or non-string text field and an empty document are errors naming the file and
// the line, or with skip_bad_lines counted skips. A compressed stream that is corrupt or ends early (a
// truncated file) is always an error naming the file and the line it reached: its lost text is no line to skip.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lasp {

struct CorpusOptions {
  std::string separator;            // plain text: empty, each file is one document; else the string between them
  std::string text_field = "text";  // JSON Lines: the field that holds each line's document
  bool replace_invalid_utf8 = false;
  bool skip_bad_lines = false;
};

struct CorpusDocument {
  std::string text;
  std::string file;
  int64_t line = 0;  // the line of the file's text where the document starts, from 1
};

// The files that --input arguments name: each a path or a glob(3) pattern (its matches sorted by name). Throws
// lasp::Error naming the argument when a pattern matches nothing, or a path is not a readable regular file.
std::vector<std::string> corpus_files(const std::vector<std::string>& inputs);

class CorpusReader {
 public:
  CorpusReader(std::vector<std::string> files, CorpusOptions options);
  ~CorpusReader();
  CorpusReader(const CorpusReader&) = delete;
  CorpusReader& operator=(const CorpusReader&) = delete;

  // The next document (false after the last); throws lasp::Error on bad input (above).
  bool next(CorpusDocument& doc);
  int64_t bytes_read() const;   // bytes of the files read so far, as stored (compressed bytes of .gz and .zst)
  int64_t bytes_total() const;  // the files' sizes
  int64_t replaced() const { return replaced_; }  // bytes that were not UTF-8, replaced by U+FFFD
  int64_t skipped() const { return skipped_; }    // bad lines and empty documents passed over (skip_bad_lines)
  const std::string& first_skipped() const { return first_skipped_; }  // why the first was skipped; "" if none

 private:
  class Text;
  bool open_next_file();
  bool next_in_file(CorpusDocument& doc);
  bool bad(const std::string& why);  // throws why, or counts the skip (skip_bad_lines) and returns false
  std::string checked_utf8(std::string text, int64_t offset, int64_t line);

  std::vector<std::string> files_;
  CorpusOptions o_;
  size_t next_file_ = 0;
  int64_t done_bytes_ = 0, total_bytes_ = 0;
  std::unique_ptr<Text> text_;  // the file being read
  bool jsonl_ = false, file_done_ = true, separated_ = false;
  int64_t replaced_ = 0, skipped_ = 0;
  std::string first_skipped_, line_;
};

}  // namespace lasp
