// The state algebra (kernels/state_algebra.h) against the naive per-token recurrence S_t = A_t S_{t-1} + k_t v_t^T
// in double precision, for every transition form, d_k != d_v both ways, document starts (A_t = 0) at span
// edges and inside spans; the adjoints against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/state_algebra.h"
#include "testing.h"

namespace lasp {
namespace {

using Vec = std::vector<double>;
const Transition kForms[] = {Transition::identity, Transition::scalar, Transition::diagonal, Transition::full};

// A's dense d_k x d_k matrix in double.
Vec dense(const StateForm& f, const Vec& A) {
  const int n = f.dk;
  Vec M(size_t(n) * n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const size_t x = size_t(i) * n + j;
      switch (f.transition) {
        case Transition::identity: M[x] = i == j; break;
        case Transition::scalar: M[x] = i == j ? A[0] : 0.0; break;
        case Transition::diagonal: M[x] = i == j ? A[i] : 0.0; break;
        case Transition::full: M[x] = A[x]; break;
      }
    }
  return M;
}

// out = M S (d_k x d_v) in double.
Vec times(const Vec& M, const Vec& S, int dk, int dv) {
  Vec out(size_t(dk) * dv, 0.0);
  for (int i = 0; i < dk; ++i)
    for (int k = 0; k < dk; ++k)
      for (int j = 0; j < dv; ++j) out[size_t(i) * dv + j] += M[size_t(i) * dk + k] * S[size_t(k) * dv + j];
  return out;
}

// A token's transition in the form f: near-contractive random values (a full one: 0.9 I + small noise).
std::vector<float> random_transition(const StateForm& f, uint32_t seed) {
  std::vector<float> A = testing::random_vector(std::max<size_t>(f.transition_floats(), 1), seed, 0.5f, 1.f);
  A.resize(f.transition_floats());
  if (f.transition == Transition::full) {
    const std::vector<float> noise = testing::random_vector(A.size(), seed + 1, -0.15f, 0.15f);
    for (int i = 0; i < f.dk; ++i)
      for (int j = 0; j < f.dk; ++j) A[size_t(i) * f.dk + j] = (i == j ? 0.9f : 0.f) + noise[size_t(i) * f.dk + j];
  }
  return A;
}

struct Tokens {
  std::vector<std::vector<float>> A, k, v;
  std::vector<bool> start;  // A_t = 0: a document opens at t
};

Tokens random_tokens(const StateForm& f, int L, uint32_t seed, const std::vector<int>& starts) {
  Tokens t;
  for (int i = 0; i < L; ++i) {
    t.A.push_back(random_transition(f, seed + 7 * i));
    t.k.push_back(testing::random_vector(size_t(f.dk), seed + 7 * i + 3));
    t.v.push_back(testing::random_vector(size_t(f.dv), seed + 7 * i + 4));
    t.start.push_back(false);
  }
  for (int s : starts) t.start[size_t(s)] = true;
  return t;
}

// The token's pair (A_t, k_t v_t^T) (A_t = 0 at a start).
std::vector<float> token_pair(const StateForm& f, const Tokens& t, int i) {
  std::vector<float> p(f.pair_floats());
  std::copy(t.A[i].begin(), t.A[i].end(), p.begin());
  if (t.start[i]) pair_cut(f, p.data());
  for (int r = 0; r < f.dk; ++r)
    for (int c = 0; c < f.dv; ++c) p[f.transition_floats() + size_t(r) * f.dv + c] = t.k[i][r] * t.v[i][c];
  return p;
}

// The naive recurrence in double from S_in.
Vec naive(const StateForm& f, const Tokens& t, const Vec& S_in) {
  Vec S = S_in;
  for (size_t i = 0; i < t.A.size(); ++i) {
    S = t.start[i] ? Vec(S.size(), 0.0) : times(dense(f, testing::to_double(t.A[i])), S, f.dk, f.dv);
    for (int r = 0; r < f.dk; ++r)
      for (int c = 0; c < f.dv; ++c) S[size_t(r) * f.dv + c] += double(t.k[i][r]) * t.v[i][c];
  }
  return S;
}

double max_rel_err(const std::vector<float>& got, const Vec& want) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

struct Case {
  int dk, dv, L;
  std::vector<int> spans;   // span lengths, summing to L
  std::vector<int> starts;  // document starts
};

// Spans summarized token by token (compose), then folded with advance_state from an incoming state, equal the
// naive recurrence; so does composing the span pairs first (associativity) and applying the total.
TEST(StateAlgebra, SpansFoldToTheNaiveRecurrence) {
  const std::vector<Case> cases = {
      {3, 5, 12, {4, 4, 4}, {}},
      {5, 3, 13, {1, 5, 7}, {5}},          // a start at a span's first token
      {4, 4, 11, {6, 5}, {2, 9}},          // starts inside spans
      {2, 7, 9, {3, 3, 3}, {0, 8}},        // at the very first and last token
      {6, 2, 10, {10}, {}},
  };
  for (const Case& c : cases)
    for (Transition form : kForms) {
      if (form == Transition::identity && !c.starts.empty()) continue;  // a cut needs a transition (pair_cut)
      const StateForm f{form, c.dk, c.dv};
      const std::string what = std::string(to_string(form)) + " dk " + std::to_string(c.dk) + " dv " +
                               std::to_string(c.dv) + " L " + std::to_string(c.L);
      const Tokens t = random_tokens(f, c.L, 11, c.starts);
      const std::vector<float> S_in = testing::random_vector(f.state_floats(), 5);
      std::vector<float> scratch(f.scratch_floats() + 1);
      // Each span's pair from its tokens.
      std::vector<std::vector<float>> pairs;
      int at = 0;
      for (int len : c.spans) {
        std::vector<float> p(f.pair_floats());
        pair_identity(f, p.data());
        for (int i = at; i < at + len; ++i) {
          std::vector<float> tp = token_pair(f, t, i);
          compose_pairs(f, p.data(), tp.data(), scratch.data());
          p = tp;
        }
        pairs.push_back(p);
        at += len;
      }
      const Vec want = naive(f, t, testing::to_double(S_in));
      // Fold: the state through each span in turn.
      std::vector<float> S = S_in;
      for (const auto& p : pairs) advance_state(f, S.data(), p.data(), scratch.data());
      EXPECT_LT(max_rel_err(S, want), 1e-5) << what << ": advance_state";
      // Compose every pair first, right to left and left to right (associativity), then apply the total.
      for (bool left_first : {true, false}) {
        std::vector<float> total(f.pair_floats());
        if (left_first) {
          pair_identity(f, total.data());
          for (const auto& p : pairs) {
            std::vector<float> next = p;
            compose_pairs(f, total.data(), next.data(), scratch.data());
            total = next;
          }
        } else {
          total = pairs.back();
          for (int i = int(pairs.size()) - 2; i >= 0; --i) {
            std::vector<float> rest = total;
            total = pairs[size_t(i)];
            std::vector<float> combined = rest;
            compose_pairs(f, total.data(), combined.data(), scratch.data());
            total = combined;
          }
        }
        std::vector<float> S2 = S_in;
        advance_state(f, S2.data(), total.data(), scratch.data());
        EXPECT_LT(max_rel_err(S2, want), 1e-5) << what << (left_first ? ": composed left first" : ": right first");
        // A start anywhere makes the whole transition 0.
        if (!c.starts.empty()) {
          for (size_t x = 0; x < f.transition_floats(); ++x) EXPECT_EQ(total[x], 0.f) << what;
        }
      }
    }
}

// The adjoint: for loss = <G, A S + B>, dS = A^T G (apply_transition on the transposed transition) and dA =
// add_transition_gradient, both against central finite differences in double.
TEST(StateAlgebra, AdjointsMatchFiniteDifferences) {
  for (const auto& [dk, dv] : std::vector<std::pair<int, int>>{{3, 5}, {5, 2}, {4, 4}})
    for (Transition form : kForms) {
      const StateForm f{form, dk, dv};
      const std::string what = std::string(to_string(form)) + " dk " + std::to_string(dk) + " dv " + std::to_string(dv);
      const std::vector<float> A = random_transition(f, 21), S = testing::random_vector(f.state_floats(), 22),
                               G = testing::random_vector(f.state_floats(), 23);
      auto loss = [&](const Vec& a, const Vec& s) {
        const Vec out = times(dense(f, a), s, dk, dv);
        double l = 0;
        for (size_t x = 0; x < out.size(); ++x) l += G[x] * out[x];
        return l;
      };
      std::vector<float> scratch(f.scratch_floats() + 1), At = A, dS(f.state_floats(), 0.f);
      transpose_transition(f, At.data());
      apply_transition(f, dS.data(), At.data(), G.data(), false, scratch.data());
      const Vec fd_S = testing::finite_difference([&](const Vec& s) { return loss(testing::to_double(A), s); },
                                                  testing::to_double(S), 1e-3);
      EXPECT_LT(max_rel_err(dS, fd_S), 1e-4) << what << ": dS";
      if (form == Transition::identity) continue;
      std::vector<float> dA(f.transition_floats(), 0.f);
      add_transition_gradient(f, dA.data(), G.data(), S.data());
      const Vec fd_A = testing::finite_difference([&](const Vec& a) { return loss(a, testing::to_double(S)); },
                                                  testing::to_double(A), 1e-3);
      EXPECT_LT(max_rel_err(dA, fd_A), 1e-4) << what << ": dA";
    }
}

// The backward through a chain of spans: the gradient entering the first span is the fold of the adjoint pairs
// (A^T, 0) from the last span down, and each span's dA is G_out S_in^T projected; checked against finite
// differences of <G, S_out> through the whole chain.
TEST(StateAlgebra, BackwardThroughAChainOfSpans) {
  for (Transition form : kForms) {
    const StateForm f{form, 3, 4};
    const int spans = 3;
    std::vector<std::vector<float>> pairs;
    for (int s = 0; s < spans; ++s) {
      std::vector<float> p = random_transition(f, 40 + s);
      const std::vector<float> B = testing::random_vector(f.state_floats(), 50 + s);
      p.insert(p.end(), B.begin(), B.end());
      pairs.push_back(p);
    }
    const std::vector<float> S0 = testing::random_vector(f.state_floats(), 60), G = testing::random_vector(f.state_floats(), 61);
    std::vector<float> scratch(f.scratch_floats() + 1);
    // Forward, keeping each span's incoming state.
    std::vector<std::vector<float>> S_in;
    std::vector<float> S = S0;
    for (const auto& p : pairs) {
      S_in.push_back(S);
      advance_state(f, S.data(), p.data(), scratch.data());
    }
    // Backward: G_in = A^T G_out (an adjoint pair with dM = 0), dA_s = proj(G_out S_in^T).
    std::vector<float> grad = G;
    std::vector<std::vector<float>> dA(spans, std::vector<float>(f.transition_floats(), 0.f));
    for (int s = spans - 1; s >= 0; --s) {
      add_transition_gradient(f, dA[size_t(s)].data(), grad.data(), S_in[size_t(s)].data());
      std::vector<float> adjoint(f.pair_floats(), 0.f);
      std::copy(pairs[size_t(s)].begin(), pairs[size_t(s)].begin() + long(f.transition_floats()), adjoint.begin());
      transpose_transition(f, adjoint.data());
      advance_state(f, grad.data(), adjoint.data(), scratch.data());
    }
    auto loss = [&](const Vec& s0, int span, const Vec& a) {
      Vec S1 = s0;
      for (int s = 0; s < spans; ++s) {
        const std::vector<float>& p = pairs[size_t(s)];
        const Vec own(p.begin(), p.begin() + long(f.transition_floats()));
        const Vec M = dense(f, s == span ? a : own);
        S1 = times(M, S1, f.dk, f.dv);
        for (size_t x = 0; x < S1.size(); ++x) S1[x] += p[f.transition_floats() + x];
      }
      double l = 0;
      for (size_t x = 0; x < S1.size(); ++x) l += double(G[x]) * S1[x];
      return l;
    };
    const std::string what = to_string(form);
    const Vec fd0 = testing::finite_difference([&](const Vec& s) { return loss(s, -1, {}); }, testing::to_double(S0), 1e-2);
    EXPECT_LT(max_rel_err(grad, fd0), 1e-3) << what << ": gradient entering the chain";
    for (int s = 0; s < spans && form != Transition::identity; ++s) {
      const Vec a(pairs[size_t(s)].begin(), pairs[size_t(s)].begin() + long(f.transition_floats()));
      const Vec fd = testing::finite_difference([&](const Vec& x) { return loss(testing::to_double(S0), s, x); }, a, 1e-2);
      EXPECT_LT(max_rel_err(dA[size_t(s)], fd), 1e-3) << what << ": dA of span " << s;
    }
  }
}

}  // namespace
}  // namespace lasp
