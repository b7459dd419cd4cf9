// Token data: a read-only token source (byte-level text, llm.c / nanoGPT token shards; the synthetic recall task
// is in train/synthetic.h), evaluation windows, deterministic random training windows with a resumable sampler,
// a held-out split, and the per-rank slice of sequence parallelism.
// A window of sequence length N is N+1 consecutive tokens: inputs = the first N, targets = the last N.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <sys/types.h>
#include <string>
#include <vector>

namespace lasp {

// A read-only sequence of tokens.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t size() const = 0;
  virtual int vocab_size() const = 0;
  // Copies tokens [begin, begin + count) into out (as int32); throws lasp::Error if out of range.
  virtual void read(int64_t begin, int64_t count, int* out) const = 0;
  // What the data is, for the line that says which format was detected ("byte-level text ...").
  virtual std::string describe() const { return fmt_tokens(size()); }
  virtual bool is_bytes() const { return false; }  // every token one byte of text (bits per byte = nats / ln 2)
  static std::string fmt_tokens(int64_t n) { return std::to_string(n) + " tokens"; }
};

// Byte-level text: token = byte, vocab 256. Memory-maps the file (read-only, for the source's lifetime).
// An empty, missing or unreadable file throws lasp::Error naming the path.
std::unique_ptr<TokenSource> open_text_tokens(const std::string& path);

// llm.c / nanoGPT token shards. A shard is a header of 256 little-endian int32 (1024 bytes): [0] = magic
// 20240520, [1] = version 1, [2] = token count n, the rest 0; then n little-endian uint16 tokens.
constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int64_t kShardHeaderBytes = 256 * 4;

// Opens the shards that `pattern` names: a path, or a glob(3) pattern (any of * ? [). The matching files are
// sorted by name (byte order) and concatenated into one token sequence; each is memory-mapped (read-only, for the
// source's lifetime). vocab_size() = the largest token + 1 over all shards (scanned once, on first call).
// Throws lasp::Error naming the file and what was expected / found: no file matches the pattern; an empty file;
// a file shorter than the header; a bad magic; an unsupported version; a header token count that does not match
// the file size (truncated or over-long shard). A shard of 0 tokens is allowed, but the set must hold >= 1 token.
std::unique_ptr<TokenSource> open_token_shards(const std::string& pattern);

// Opens token data in `format`: "text" (open_text_tokens), "shards" (open_token_shards), or "auto": an existing
// regular file whose first 4 bytes are the shard magic (little-endian) -> shards; a file named *.bin without
// the magic -> an error (it looks like a shard: a damaged one must not be trained on as bytes; "text" forces
// that); another existing file -> text; a path that is not an existing file but holds a glob character
// (* ? [) -> shards, else text (which reports the missing file). Any other format throws lasp::Error listing
// the formats.
std::unique_ptr<TokenSource> open_tokens(const std::string& path, const std::string& format = "auto");

// Writes one shard in the format above, atomically (a temporary file renamed over path: core/file.h).
// Throws lasp::Error if the tokens do not fit the header's int32 count, or on an I/O error (naming the path).
void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens);

// The same shard written as its tokens come, in bounded memory (tokenize): finish() fills in the header's
// count and syncs the file. Throws lasp::Error naming the path on an I/O error, or when the tokens outgrow the
// header's int32 count. A writer destroyed without finish() leaves an incomplete file (its folder is discarded).
class TokenShardWriter {
 public:
  explicit TokenShardWriter(const std::string& path);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;
  void append(const uint16_t* tokens, size_t n);
  int64_t tokens() const { return count_; }
  void finish();

 private:
  void flush();
  void write_all(const char* p, size_t n, off_t at);
  std::string path_;
  int fd_;
  int64_t count_ = 0;
  size_t written_ = 0;
  std::string buf_;  // bytes not yet written (the header's place first)
};

// The files a path or glob(3) pattern (any of * ? [) names, matches sorted by name (byte order); a pattern that
// matches nothing is an error naming `what` ("the shard pattern", "--input") and the pattern.
std::vector<std::string> matching_files(const std::string& pattern, const std::string& what);

struct Batch {
  int B = 0, N = 0;            // after slice_for_rank, N is the slice length C
  std::vector<int> inputs;     // (B, N) row-major
  std::vector<int> targets;    // (B, N) row-major
};

// Number of whole evaluation windows of seq-len N in `tokens` tokens: (tokens - 1) / N (0 if tokens < N+1).
int64_t eval_window_count(int64_t tokens, int N);

// Evaluation: window k = tokens [begin + k*N, begin + k*N + N] for k = first_window .. first_window+B-1,
// within the range [begin, end) of src (end = -1: src.size()). Throws, naming the range size in tokens and
// what the last window needs, if the range is too short.
Batch eval_batch(const TokenSource& src, int N, int first_window, int B, int64_t begin = 0, int64_t end = -1);

// Training: deterministic random windows in the range [begin, end) of src (end = -1: src.size()).
// next() draws B window starts uniformly in [begin, end - N - 1] (a std::mt19937_64 seeded by seed, mapped to
// the range by rejection sampling, so the sequence is the same on every platform) and returns the batch.
// With align > 1 the starts are drawn uniformly among the multiples of align (absolute token positions) in that
// range, e.g. align = the episode length of a synthetic recall source (train/synthetic.h), so every window
// holds whole episodes. align = 1 (the default) draws exactly the same starts as without the argument.
// state()/restore() carry the full RNG state and the step count as text: a restored sampler continues
// bit-identically. The source must outlive the sampler.
class WindowSampler {
 public:
  // Throws if the range holds fewer than N + 1 tokens ("data file has X tokens, a window of seq-len N needs
  // N+1"), if N, B, align or the range are invalid, or if no multiple of align is a valid start.
  WindowSampler(const TokenSource& src, int N, int B, uint64_t seed, int64_t begin = 0, int64_t end = -1,
                int64_t align = 1);
  Batch next();
  // The window starts of the next batch (advances exactly as next() does), for readers of slices.
  std::vector<int64_t> next_starts();
  std::string state() const;
  void restore(const std::string& state);  // throws lasp::Error on a malformed state string
  int64_t steps() const { return steps_; }

 private:
  const TokenSource& src_;
  int N_, B_;
  int64_t begin_, end_;
  int64_t align_ = 1;
  int64_t first_start_ = 0, start_count_ = 0;  // the valid starts: first_start_ + k * align_, k < start_count_
  std::mt19937_64 rng_;
  int64_t steps_ = 0;
};

// Sequence-parallel slicing: rank t of W owns inputs [t*C, t*C+C) and targets [t*C+1, t*C+C+1) of each
// window (i.e. full.targets[t*C .. t*C+C)), C = N / W. The result has N = C. Throws if N % W != 0.
// Reads only the tokens of one window that a rank owns: inputs[i] = token[start + positions[i]] and
// targets[i] = token[start + positions[i] + 1].
void read_window_slice(const TokenSource& src, int64_t start, const std::vector<int>& positions, int* inputs,
                       int* targets);

Batch slice_for_rank(const Batch& full, int rank, int world);

// Held-out split: validation = the last val_fraction of the tokens (rounded to whole tokens), training =
// everything before it; the two do not overlap. val_fraction in [0, 1); 0 gives an empty validation range.
// Each part must hold at least one window (N+1 tokens); the sampler / eval_batch report it when not.
struct Split {
  int64_t train_begin, train_end, val_begin, val_end;
};
Split split_tokens(int64_t size, double val_fraction);

}  // namespace lasp
