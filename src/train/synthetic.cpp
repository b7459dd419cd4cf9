#include "train/synthetic.h"

#include <algorithm>
#include <random>

#include "core/check.h"

namespace lasp {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, n) by rejection (the same on every platform; see data.cpp).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t u = rng();
    if (u >= threshold) return u % n;
  }
}

}  // namespace

SyntheticRecall::SyntheticRecall(int64_t tokens, int window, int pairs, uint64_t seed, int vocab)
    : tokens_(tokens), window_(window), pairs_(pairs), vocab_(vocab), keys_((vocab - 2) / 2), seed_(seed) {
  LASP_CHECK(tokens >= 1, "synthetic recall: expected at least 1 token, got {}", tokens);
  LASP_CHECK(vocab >= 4, "synthetic recall: expected a vocabulary of at least 4 tokens, got {}", vocab);
  LASP_CHECK(pairs >= 1 && pairs <= keys_,
             "synthetic recall: expected 1 <= pairs <= {} (the distinct keys of vocabulary {}), got {}", keys_,
             vocab, pairs);
  LASP_CHECK(int64_t(window) >= 4 * int64_t(pairs) + 1,
             "synthetic recall: a window of {} tokens cannot hold {} pairs, a separator and {} queries (needs "
             "at least 4 * pairs + 1 = {})",
             window, pairs, pairs, 4 * int64_t(pairs) + 1);
}

bool SyntheticRecall::is_answer_offset(int offset) const {
  const int q = window_ - 2 * pairs_;
  return offset >= q && offset < window_ && (offset - q) % 2 == 1;
}

void SyntheticRecall::episode(int64_t e, int* out) const {
  LASP_CHECK(e >= 0, "synthetic recall: expected an episode index >= 0, got {}", e);
  std::mt19937_64 rng(splitmix64(seed_ ^ splitmix64(uint64_t(e))));
  const int P = pairs_;
  // Distinct keys by rejection against those drawn so far (P is small next to the key range in practice; when it
  // is not, the expected number of draws is still at most K * H(K)).
  std::vector<int> keys(P), values(P), order(P);
  for (int i = 0; i < P; ++i) {
    int k;
    do k = key_begin() + int(uniform_below(rng, uint64_t(keys_)));
    while (std::find(keys.begin(), keys.begin() + i, k) != keys.begin() + i);
    keys[i] = k;
  }
  for (int i = 0; i < P; ++i) values[i] = value_begin() + int(uniform_below(rng, uint64_t(value_count())));
  for (int i = 0; i < P; ++i) order[i] = i;
  for (int i = P - 1; i > 0; --i) std::swap(order[i], order[size_t(uniform_below(rng, uint64_t(i) + 1))]);

  for (int i = 0; i < P; ++i) {
    out[2 * i] = keys[i];
    out[2 * i + 1] = values[i];
  }
  const int sep = separator_offset();
  for (int i = 2 * P; i < sep; ++i) out[i] = kRecallFiller;
  out[sep] = kRecallSeparator;
  for (int j = 0; j < P; ++j) {
    out[sep + 1 + 2 * j] = keys[order[j]];
    out[sep + 2 + 2 * j] = values[order[j]];
  }
}

void SyntheticRecall::read(int64_t begin, int64_t count, int* out) const {
  LASP_CHECK(begin >= 0 && count >= 0 && begin <= tokens_ && count <= tokens_ - begin,
             "read of tokens [{}, {}) from the synthetic recall data: expected a range within [0, {})", begin,
             begin + count, tokens_);
  std::vector<int> ep(static_cast<size_t>(window_));
  while (count > 0) {
    const int64_t e = begin / window_, off = begin % window_;
    episode(e, ep.data());
    const int64_t take = std::min<int64_t>(count, window_ - off);
    std::copy(ep.begin() + off, ep.begin() + off + take, out);
    out += take;
    begin += take;
    count -= take;
  }
}

std::unique_ptr<TokenSource> make_synthetic_recall(int64_t tokens, int window, int pairs, uint64_t seed,
                                                   int vocab) {
  return std::make_unique<SyntheticRecall>(tokens, window, pairs, seed, vocab);
}

std::vector<int> recall_answer_positions(const TokenSource& src, int64_t window_start, int window) {
  const auto* s = dynamic_cast<const SyntheticRecall*>(&src);
  LASP_CHECK(s != nullptr, "recall_answer_positions: expected a synthetic recall token source");
  LASP_CHECK(window > 0 && window_start >= 0 && window_start + window + 1 <= src.size(),
             "recall_answer_positions: window of seq-len {} at token {} must lie within the data's {} tokens "
             "(needs {} from its start)",
             window, window_start, src.size(), int64_t(window) + 1);
  const int64_t E = s->episode_length();
  std::vector<int> out;
  for (int i = 0; i < window; ++i) {
    const int64_t t = window_start + i + 1;  // the target's token
    if (s->is_answer_offset(int(t % E)) && t / E * E >= window_start) out.push_back(i);
  }
  return out;
}

RecallScore score_predictions(const int* predictions, const int* targets, const std::vector<int>& answer_positions) {
  RecallScore r;
  for (int p : answer_positions) {
    LASP_CHECK(p >= 0, "score_recall: expected answer positions >= 0, got {}", p);
    r.correct += predictions[p] == targets[p];
    ++r.total;
  }
  return r;
}

RecallScore score_recall(const float* logits, const int* targets, const std::vector<int>& answer_positions, int V) {
  LASP_CHECK(V > 0, "score_recall: expected a vocabulary V > 0, got {}", V);
  std::vector<int> best(answer_positions.empty() ? 0 : *std::max_element(answer_positions.begin(), answer_positions.end()) + 1);
  for (int p : answer_positions) {
    LASP_CHECK(p >= 0, "score_recall: expected answer positions >= 0, got {}", p);
    const float* row = logits + size_t(p) * size_t(V);
    best[p] = int(std::max_element(row, row + V) - row);  // the first maximum
  }
  return score_predictions(best.data(), targets, answer_positions);
}

}  // namespace lasp
