// Token data: a read-only token source (byte-level text for now), evaluation windows, deterministic random
// training windows with a resumable sampler, a held-out split, and the per-rank slice of sequence parallelism.
// A window of sequence length N is N+1 consecutive tokens: inputs = the first N, targets = the last N.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
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
};

// Byte-level text: token = byte, vocab 256. Memory-maps the file (read-only, for the source's lifetime).
// An empty, missing or unreadable file throws lasp::Error naming the path.
std::unique_ptr<TokenSource> open_text_tokens(const std::string& path);

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
// state()/restore() carry the full RNG state and the step count as text: a restored sampler continues
// bit-identically. The source must outlive the sampler.
class WindowSampler {
 public:
  // Throws if the range holds fewer than N + 1 tokens ("data file has X tokens, a window of seq-len N needs
  // N+1"), or if N, B or the range are invalid.
  WindowSampler(const TokenSource& src, int N, int B, uint64_t seed, int64_t begin = 0, int64_t end = -1);
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
