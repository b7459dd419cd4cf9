// Tests of the synthetic long-range recall task (train/synthetic.h): determinism, the episode layout, answer
// positions for aligned and unaligned windows, scoring, and its use with the aligned window sampler.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/check.h"
#include "train/data.h"
#include "train/synthetic.h"

using namespace lasp;

namespace {

std::string synthetic_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a lasp::Error";
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<int> tokens_of(const TokenSource& src, int64_t begin, int64_t count) {
  std::vector<int> v(static_cast<size_t>(count));
  src.read(begin, count, v.data());
  return v;
}

}  // namespace

TEST(SyntheticRecall, DeterministicFromTheSeed) {
  auto a = make_synthetic_recall(10000, 128, 8, 42), b = make_synthetic_recall(10000, 128, 8, 42),
       c = make_synthetic_recall(10000, 128, 8, 43);
  const auto ta = tokens_of(*a, 0, 10000);
  EXPECT_EQ(ta, tokens_of(*b, 0, 10000));
  EXPECT_NE(ta, tokens_of(*c, 0, 10000));
  // Random access: pieces read anywhere equal the whole read.
  for (int64_t begin : {0, 1, 127, 128, 129, 5000, 9871})
    for (int64_t count : {0, 1, 5, 128, 300})
      if (begin + count <= 10000) {
        const auto piece = tokens_of(*a, begin, count);
        ASSERT_EQ(piece, std::vector<int>(ta.begin() + begin, ta.begin() + begin + count)) << begin << "+" << count;
      }
  // Pinned output: the generator depends only on mt19937_64 (fixed by the standard) and our own mappings, so
  // these values are the same on every platform and standard library.
  auto g = make_synthetic_recall(32, 16, 2, 7, 16);  // keys [2, 9), values [9, 16)
  const std::vector<int> golden = tokens_of(*g, 0, 32);
  // Layout of each 16-token episode: k v k v 0 0 0 0 0 0 0 1 k v k v
  const std::vector<int> expected = {7, 12, 8, 12, 0, 0, 0, 0, 0, 0, 0, 1, 7, 12, 8, 12,
                                     3, 10, 7, 13, 0, 0, 0, 0, 0, 0, 0, 1, 3, 10, 7, 13};
  EXPECT_EQ(golden, expected);
  EXPECT_EQ(a->vocab_size(), 256);
  EXPECT_EQ(a->size(), 10000);
  std::vector<int> out(2);
  synthetic_error_of([&] { a->read(9999, 2, out.data()); });
  synthetic_error_of([&] { a->read(-1, 1, out.data()); });
}

TEST(SyntheticRecall, EpisodeLayout) {
  struct Case { int window, pairs, vocab; };
  for (Case cs : {Case{64, 8, 256}, Case{9, 2, 256}, Case{5, 1, 4}, Case{1000, 127, 256}, Case{40, 2, 7}}) {
    SyntheticRecall s(int64_t(cs.window) * 30, cs.window, cs.pairs, 11, cs.vocab);
    const int K = (cs.vocab - 2) / 2, P = cs.pairs, E = cs.window;
    ASSERT_EQ(s.key_begin(), 2);
    ASSERT_EQ(s.key_count(), K);
    ASSERT_EQ(s.value_begin(), 2 + K);
    ASSERT_EQ(s.value_count(), cs.vocab - 2 - K);
    ASSERT_EQ(s.episode_length(), E);
    const int sep = E - 2 * P - 1;
    ASSERT_EQ(s.separator_offset(), sep);
    std::set<int> values_seen;
    for (int64_t e = 0; e < 30; ++e) {
      const auto ep = tokens_of(s, e * E, E);
      std::map<int, int> value_of;
      for (int i = 0; i < P; ++i) {
        const int k = ep[size_t(2 * i)], v = ep[size_t(2 * i + 1)];
        ASSERT_GE(k, 2);
        ASSERT_LT(k, 2 + K);
        ASSERT_GE(v, 2 + K);
        ASSERT_LT(v, cs.vocab);
        ASSERT_TRUE(value_of.emplace(k, v).second) << "keys are distinct";
        values_seen.insert(v);
      }
      for (int i = 2 * P; i < sep; ++i) ASSERT_EQ(ep[size_t(i)], kRecallFiller);
      ASSERT_EQ(ep[size_t(sep)], kRecallSeparator);
      std::set<int> queried;
      for (int j = 0; j < P; ++j) {
        const int k = ep[size_t(sep + 1 + 2 * j)], v = ep[size_t(sep + 2 + 2 * j)];
        ASSERT_EQ(value_of.count(k), 1u) << "a query asks a key of the pairs";
        ASSERT_EQ(v, value_of[k]) << "the answer is the pair's value";
        ASSERT_TRUE(queried.insert(k).second) << "each pair is queried once";
        ASSERT_TRUE(s.is_answer_offset(sep + 2 + 2 * j));
        ASSERT_FALSE(s.is_answer_offset(sep + 1 + 2 * j));
      }
      std::vector<int> whole(static_cast<size_t>(E));
      s.episode(e, whole.data());
      ASSERT_EQ(whole, ep);
    }
    if (cs.vocab == 256 && P >= 8) {
      EXPECT_GT(values_seen.size(), 60u) << "values are spread over their range";
    }
  }
}

TEST(SyntheticRecall, QueriesAreShuffledAndTheLastEpisodeIsCut) {
  SyntheticRecall s(1000, 100, 10, 3);  // 10 whole episodes
  int in_order = 0;
  for (int64_t e = 0; e < 10; ++e) {
    const auto ep = tokens_of(s, e * 100, 100);
    bool same = true;
    for (int j = 0; j < 10; ++j) same &= ep[size_t(2 * j)] == ep[size_t(80 + 2 * j)];
    in_order += same;
  }
  EXPECT_LE(in_order, 1) << "queries come in a random order, not the pairs' order";
  SyntheticRecall cut(1050, 100, 10, 3);
  std::vector<int> ep(100);
  cut.episode(10, ep.data());
  EXPECT_EQ(tokens_of(cut, 1000, 50), std::vector<int>(ep.begin(), ep.begin() + 50));
  EXPECT_EQ(tokens_of(cut, 0, 1000), tokens_of(s, 0, 1000));  // the size does not change the stream
}

TEST(SyntheticRecall, BadArguments) {
  EXPECT_TRUE(has(synthetic_error_of([] { make_synthetic_recall(100, 16, 4, 1); }), "at least 4 * pairs + 1 = 17"));
  make_synthetic_recall(100, 17, 4, 1);
  EXPECT_TRUE(has(synthetic_error_of([] { make_synthetic_recall(100, 1000, 128, 1); }), "1 <= pairs <= 127"));
  make_synthetic_recall(100, 1000, 127, 1);
  synthetic_error_of([] { make_synthetic_recall(100, 16, 0, 1); });
  synthetic_error_of([] { make_synthetic_recall(0, 16, 1, 1); });
  synthetic_error_of([] { make_synthetic_recall(100, 16, 1, 1, 3); });
  synthetic_error_of([] { make_synthetic_recall(100, 16, 2, 1, 4); });  // vocab 4 has 1 key
}

TEST(SyntheticRecall, AnswerPositionsAlignedAndNot) {
  const int E = 32, P = 3;
  SyntheticRecall s(E * 20, E, P, 5);
  // Aligned: the window at e*E holds episode e as inputs; answers are the targets at E - 2P + 2j.
  for (int64_t e = 0; e < 19; ++e) {
    const auto pos = recall_answer_positions(s, e * E, E);
    ASSERT_EQ(pos, (std::vector<int>{E - 6, E - 4, E - 2}));
    const auto w = tokens_of(s, e * E, E + 1);
    for (int p : pos) {
      // inputs[p] is a query key; targets[p] = w[p+1] is its value from the pairs at the start.
      int want = -1;
      for (int i = 0; i < P; ++i)
        if (w[size_t(2 * i)] == w[size_t(p)]) want = w[size_t(2 * i + 1)];
      ASSERT_EQ(w[size_t(p + 1)], want);
    }
  }
  // The last whole window of the source: window_start + N + 1 must fit.
  // One token before episode 19: its inputs hold the whole episode but its last token, which is the last target.
  EXPECT_EQ(recall_answer_positions(s, E * 19 - 1, E), (std::vector<int>{E - 5, E - 3, E - 1}));
  synthetic_error_of([&] { recall_answer_positions(s, E * 19, E); });  // needs E+1 tokens, has E
  // Unaligned windows, against the definition: a target is an answer iff it is a query value of an episode
  // that starts inside the window.
  for (int64_t start : {1, 5, 31, 33, 40, 100}) {
    for (int N : {8, 32, 64, 100}) {
      if (start + N + 1 > s.size()) continue;
      std::vector<int> want;
      for (int i = 0; i < N; ++i) {
        const int64_t t = start + i + 1, ep_start = t / E * E;
        const int off = int(t % E);
        if (ep_start >= start && off >= E - 2 * P && (off - (E - 2 * P)) % 2 == 1) want.push_back(i);
      }
      EXPECT_EQ(recall_answer_positions(s, start, N), want) << start << " " << N;
    }
  }
  // A window of two episodes at an aligned start gets both episodes' answers.
  EXPECT_EQ(recall_answer_positions(s, 0, 2 * E),
            (std::vector<int>{E - 6, E - 4, E - 2, 2 * E - 6, 2 * E - 4, 2 * E - 2}));
  // Another source is not a recall task.
  struct Plain : TokenSource {
    int64_t size() const override { return 100; }
    int vocab_size() const override { return 256; }
    void read(int64_t, int64_t, int*) const override {}
  } plain;
  EXPECT_TRUE(has(synthetic_error_of([&] { recall_answer_positions(plain, 0, 10); }), "synthetic recall"));
}

TEST(SyntheticRecall, ScoreRecallOnHandMadeLogits) {
  const int V = 5, N = 4;
  // Row argmaxes: 0 -> 3, 1 -> 1 (tie of 1 and 4: the first), 2 -> 0, 3 -> 4.
  const std::vector<float> logits = {0, 1, 2, 9, -1,   //
                                     0, 7, 2, 3, 7,    //
                                     5, -1, -2, 4, 4,  //
                                     -3, -2, -5, -9, -1};
  const std::vector<int> targets = {3, 4, 0, 2};
  RecallScore r = score_recall(logits.data(), targets.data(), {0, 1, 2, 3}, V);
  EXPECT_EQ(r.correct, 2);  // rows 0 and 2
  EXPECT_EQ(r.total, 4);
  EXPECT_DOUBLE_EQ(r.accuracy(), 0.5);
  r = score_recall(logits.data(), targets.data(), {1, 3}, V);
  EXPECT_EQ(r.correct, 0);
  EXPECT_EQ(r.total, 2);
  r = score_recall(logits.data(), targets.data(), {}, V);
  EXPECT_EQ(r.total, 0);
  EXPECT_DOUBLE_EQ(r.accuracy(), 0.0);
  RecallScore sum;
  sum += score_recall(logits.data(), targets.data(), {0}, V);
  sum += score_recall(logits.data(), targets.data(), {1, 2}, V);
  EXPECT_EQ(sum.correct, 2);
  EXPECT_EQ(sum.total, 3);
  (void)N;
}

TEST(SyntheticRecall, AnOracleThatReadsThePairsScoresPerfectly) {
  const int E = 64, P = 6, V = 256;
  SyntheticRecall s(E * 10 + 1, E, P, 9, V);
  Batch b = eval_batch(s, E, 0, 10);  // eval windows at stride N = E: aligned to episodes
  RecallScore total;
  for (int r = 0; r < b.B; ++r) {
    const int* in = b.inputs.data() + size_t(r) * E;
    const int* tg = b.targets.data() + size_t(r) * E;
    std::map<int, int> pairs;
    for (int i = 0; i < P; ++i) pairs[in[2 * i]] = in[2 * i + 1];
    std::vector<float> logits(size_t(E) * V, 0.0f);
    for (int i = 0; i < E; ++i) {
      auto it = pairs.find(in[i]);
      logits[size_t(i) * V + size_t(it != pairs.end() ? it->second : 0)] = 1.0f;
    }
    const auto pos = recall_answer_positions(s, int64_t(r) * E, E);
    ASSERT_EQ(pos.size(), size_t(P));
    total += score_recall(logits.data(), tg, pos, V);
  }
  EXPECT_EQ(total.total, 10 * P);
  EXPECT_EQ(total.correct, 10 * P);
  EXPECT_DOUBLE_EQ(total.accuracy(), 1.0);
}

TEST(SyntheticRecall, AlignedSamplerWindowsHoldWholeEpisodes) {
  const int E = 48, P = 4;
  SyntheticRecall s(E * 50 + 7, E, P, 21);
  WindowSampler sampler(s, E, 8, 77, 0, -1, E);
  for (int step = 0; step < 30; ++step) {
    const auto starts = sampler.next_starts();
    for (int64_t st : starts) {
      ASSERT_EQ(st % E, 0);
      const auto w = tokens_of(s, st, E + 1);
      ASSERT_EQ(w[size_t(s.separator_offset())], kRecallSeparator);
      ASSERT_EQ(recall_answer_positions(s, st, E).size(), size_t(P));
    }
  }
  // Sequence-parallel slices of such a window: the pairs land on rank 0, the answers on the last rank.
  Batch full = eval_batch(s, E, 3, 1);
  const auto pos = recall_answer_positions(s, 3 * E, E);
  Batch first = slice_for_rank(full, 0, 4), last = slice_for_rank(full, 3, 4);
  for (int i = 0; i < 2 * P; ++i) EXPECT_EQ(first.inputs[size_t(i)], full.inputs[size_t(i)]);
  for (int p : pos) EXPECT_GE(p, 3 * (E / 4));
}
