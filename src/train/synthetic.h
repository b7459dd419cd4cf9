// Synthetic long-range recall: the multi-query associative recall (MQAR) task that linear-attention papers use
// to show that information crosses the whole context (and so, under sequence parallelism, crosses ranks).
//
// Vocabulary of V tokens (default 256, at least 4):
//   0                      filler (the gap between the pairs and the queries)
//   1                      separator, just before the query section
//   [2, 2 + K)             keys,   K = (V - 2) / 2
//   [2 + K, 2 + K + Vals)  values, Vals = V - 2 - K
//
// The stream is a sequence of episodes of E = `window` tokens each; episode e covers tokens [e*E, (e+1)*E):
//   offsets [0, 2P)            P pairs  k_0 v_0 k_1 v_1 ... (distinct keys, values uniform, may repeat)
//   offsets [2P, E - 2P - 1)   filler 0
//   offset  E - 2P - 1         separator 1
//   offsets [E - 2P, E)        P queries  k_q v_q  : every pair once, in a random order, key then its value
// So a model that has seen the pairs predicts each query's value (a target) from the pairs at the start of the
// episode, E - 4P tokens and more away. Requires 1 <= P <= K and E >= 4P + 1. The last episode is cut at the
// source's size.
//
// Why E = window (N) and not N + 1: a window of seq-len N reads N + 1 tokens starting at s; at s = e*E it holds the
// whole episode e as inputs and every answer as a target (the last target is the next episode's first key). And
// eval_batch's windows, at stride N from `begin`, are then aligned to episodes whenever begin is a multiple of N.
// For training, use WindowSampler(..., align = window) (train/data.h) so every window holds one whole episode;
// unaligned windows still work (recall_answer_positions handles any start) but carry fewer answers.
//
// Deterministic from the seed on every platform: episode e is generated from its own std::mt19937_64 (whose
// output the standard fixes) seeded by a hash of (seed, e), mapped to ranges by rejection sampling (no
// std:: distributions). Tokens are generated on demand, so the source holds no token array and reads of any
// range are random-access.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "train/data.h"

namespace lasp {

constexpr int kRecallFiller = 0;
constexpr int kRecallSeparator = 1;

class SyntheticRecall final : public TokenSource {
 public:
  // Throws lasp::Error naming the argument if tokens < 1, vocab < 4, pairs < 1, pairs > the key count, or
  // window < 4 * pairs + 1.
  SyntheticRecall(int64_t tokens, int window, int pairs, uint64_t seed, int vocab = 256);

  int64_t size() const override { return tokens_; }
  int vocab_size() const override { return vocab_; }
  void read(int64_t begin, int64_t count, int* out) const override;

  int episode_length() const { return window_; }  // E = window
  int pairs() const { return pairs_; }
  uint64_t seed() const { return seed_; }
  int key_begin() const { return 2; }
  int key_count() const { return keys_; }
  int value_begin() const { return 2 + keys_; }
  int value_count() const { return vocab_ - 2 - keys_; }
  int separator_offset() const { return window_ - 2 * pairs_ - 1; }  // within an episode
  // True if the token at episode offset `offset` is a query's value (an answer the model should recall).
  bool is_answer_offset(int offset) const;
  // Episode e's E tokens (whole, even where the source's size cuts the last episode).
  void episode(int64_t e, int* out) const;

 private:
  int64_t tokens_;
  int window_, pairs_, vocab_, keys_;
  uint64_t seed_;
};

// A SyntheticRecall of `tokens` tokens (see above).
std::unique_ptr<TokenSource> make_synthetic_recall(int64_t tokens, int window, int pairs, uint64_t seed,
                                                   int vocab = 256);

struct RecallScore {
  int64_t correct = 0, total = 0;
  double accuracy() const { return total > 0 ? double(correct) / double(total) : 0.0; }
  RecallScore& operator+=(const RecallScore& o) {
    correct += o.correct;
    total += o.total;
    return *this;
  }
};

// For the window of seq-len `window` (N) starting at token window_start of src (a SyntheticRecall; anything
// else throws): the positions i in [0, N), ascending, whose target (token window_start + i + 1) is a query's
// value and whose episode starts at or after window_start (so the pairs it recalls are in the window's inputs).
// Throws unless 0 <= window_start and window_start + N + 1 <= src.size().
std::vector<int> recall_answer_positions(const TokenSource& src, int64_t window_start, int window);

// Counts, over answer_positions, how often the argmax of logits row p (the first maximum on ties) equals
// targets[p]. logits is (N, V) row-major with N > every position; targets holds N ids.
RecallScore score_recall(const float* logits, const int* targets, const std::vector<int>& answer_positions, int V);
// The same from the argmax tokens (predictions, N ids, as Model::forward gives them).
RecallScore score_predictions(const int* predictions, const int* targets, const std::vector<int>& answer_positions);

}  // namespace lasp
