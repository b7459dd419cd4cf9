// Linear attention kernels against a naive O(N^2) double-precision reference (forward and an analytic
// backward), the reference's backward against finite differences, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/linear_attention.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

namespace {

struct Case {
  int B, N, H, dk, block;  // dk: key width
  Decay decay;
  bool with_state;  // incoming state P and a gradient on the outgoing state
  int docs = 0;     // documents: a start every ~docs tokens (and at both ends of row 1); 0: none
  int value_width = 0;  // dv; 0: dk
  int dv() const { return value_width ? value_width : dk; }
};

std::string name(const Case& c) {
  return "B" + std::to_string(c.B) + "_N" + std::to_string(c.N) + "_H" + std::to_string(c.H) + "_dk" +
         std::to_string(c.dk) + (c.value_width ? "_dv" + std::to_string(c.dv()) : "") + "_blk" + std::to_string(c.block) + "_" + to_string(c.decay) +
         (c.with_state ? "_state" : "") + (c.docs ? "_docs" + std::to_string(c.docs) : "");
}

// The inputs of one case, in double; lambda as the kernel sees it (fp32 values).
struct Inputs {
  std::vector<double> q, k, v, P, g, gs;  // g = dL/do, gs = dL/dstate_out
  std::vector<float> lambda;
  std::vector<uint8_t> starts;            // (B, N) document starts, empty for none
  // The document of token t of row b: its last start at or before t, -1 for the one entering the row.
  int doc(const Case& c, int b, int t) const {
    if (starts.empty()) return -1;
    while (t >= 0 && !starts[size_t(b) * c.N + t]) --t;
    return t;
  }
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  const size_t keys = size_t(c.B) * c.N * c.H * c.dk, values = size_t(c.B) * c.N * c.H * c.dv();
  const size_t st = size_t(c.B) * c.H * c.dk * c.dv();
  Inputs in;
  in.q = to_double(random_vector(keys, seed + 1));
  in.k = to_double(random_vector(keys, seed + 2));
  in.v = to_double(random_vector(values, seed + 3));
  in.g = to_double(random_vector(values, seed + 4));
  in.P = c.with_state ? to_double(random_vector(st, seed + 5)) : std::vector<double>(st, 0.0);
  in.gs = c.with_state ? to_double(random_vector(st, seed + 6)) : std::vector<double>(st, 0.0);
  in.lambda.resize(c.H);
  linear_attention_decays(in.lambda.data(), c.H, c.decay);
  if (c.docs) {
    in.starts.resize(size_t(c.B) * c.N);
    uint32_t x = seed * 2654435761u + 1;
    for (auto& st : in.starts) st = (x = x * 1664525u + 1013904223u) >> 8 < (1u << 24) / c.docs;
    if (c.B > 1) in.starts[c.N] = in.starts[2 * size_t(c.N) - 1] = 1;  // row 1: starts at its first and last token
  }
  return in;
}

// Element i of token n, head h, row b of a key tensor (q, k) and of a value tensor (v, o); state element (r, col).
size_t kat(const Case& c, int b, int n, int h, int i) { return ((size_t(b) * c.N + n) * c.H + h) * c.dk + i; }
size_t vat(const Case& c, int b, int n, int h, int i) { return ((size_t(b) * c.N + n) * c.H + h) * c.dv() + i; }
size_t st_at(const Case& c, int b, int h, int r, int col) { return ((size_t(b) * c.H + h) * c.dk + r) * c.dv() + col; }

// Forward: o_i = sum_{j<=i} l^(i-j) (q_i.k_j) v_j + l^i q_i P;  S = l^N P + sum_j l^(N-j) k_j^T v_j.
void reference_forward(const Case& c, const Inputs& in, std::vector<double>& o, std::vector<double>& S) {
  o.assign(in.v.size(), 0.0);
  S.assign(in.P.size(), 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const double l = in.lambda[h];
      const int last = in.doc(c, b, c.N - 1);  // the document the outgoing state belongs to
      for (int i = 0; i < c.N; ++i) {
        for (int j = 0; j <= i; ++j) {
          if (in.doc(c, b, j) != in.doc(c, b, i)) continue;
          double qk = 0;
          for (int x = 0; x < c.dk; ++x) qk += in.q[kat(c, b, i, h, x)] * in.k[kat(c, b, j, h, x)];
          const double w = std::pow(l, i - j) * qk;
          for (int x = 0; x < c.dv(); ++x) o[vat(c, b, i, h, x)] += w * in.v[vat(c, b, j, h, x)];
        }
        for (int col = 0; col < c.dv(); ++col) {
          double acc = 0;
          for (int r = 0; r < c.dk; ++r) acc += in.q[kat(c, b, i, h, r)] * in.P[st_at(c, b, h, r, col)];
          if (in.doc(c, b, i) == -1) o[vat(c, b, i, h, col)] += std::pow(l, i) * acc;
        }
      }
      for (int r = 0; r < c.dk; ++r)
        for (int col = 0; col < c.dv(); ++col) {
          double acc = last == -1 ? std::pow(l, c.N) * in.P[st_at(c, b, h, r, col)] : 0.0;
          for (int j = 0; j < c.N; ++j)
            if (in.doc(c, b, j) == last)
              acc += std::pow(l, c.N - j) * in.k[kat(c, b, j, h, r)] * in.v[vat(c, b, j, h, col)];
          S[st_at(c, b, h, r, col)] = acc;
        }
    }
}

// L = sum(o * g) + sum(S * gs): the scalar whose gradients the backward computes.
double reference_loss(const Case& c, const Inputs& in) {
  std::vector<double> o, S;
  reference_forward(c, in, o, S);
  double L = 0;
  for (size_t i = 0; i < o.size(); ++i) L += o[i] * in.g[i];
  for (size_t i = 0; i < S.size(); ++i) L += S[i] * in.gs[i];
  return L;
}

struct Grads {
  std::vector<double> dq, dk, dv, dP;
};

// Analytic gradients of reference_loss, written independently of the chunkwise algorithm.
Grads reference_backward(const Case& c, const Inputs& in) {
  Grads gr{std::vector<double>(in.q.size()), std::vector<double>(in.k.size()), std::vector<double>(in.v.size()),
           std::vector<double>(in.P.size())};
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const double l = in.lambda[h];
      const int last = in.doc(c, b, c.N - 1);
      for (int i = 0; i < c.N; ++i)
        for (int j = 0; j <= i; ++j) {
          if (in.doc(c, b, j) != in.doc(c, b, i)) continue;
          const double w = std::pow(l, i - j);
          double gv = 0, qk = 0;
          for (int x = 0; x < c.dv(); ++x) gv += in.g[vat(c, b, i, h, x)] * in.v[vat(c, b, j, h, x)];
          for (int x = 0; x < c.dk; ++x) qk += in.q[kat(c, b, i, h, x)] * in.k[kat(c, b, j, h, x)];
          for (int x = 0; x < c.dk; ++x) {
            gr.dq[kat(c, b, i, h, x)] += w * gv * in.k[kat(c, b, j, h, x)];
            gr.dk[kat(c, b, j, h, x)] += w * gv * in.q[kat(c, b, i, h, x)];
          }
          for (int x = 0; x < c.dv(); ++x) gr.dv[vat(c, b, j, h, x)] += w * qk * in.g[vat(c, b, i, h, x)];
        }
      for (int i = 0; i < c.N; ++i)
        for (int r = 0; r < c.dk; ++r)
          for (int col = 0; col < c.dv(); ++col) {
            const double P = in.P[st_at(c, b, h, r, col)], gs = in.gs[st_at(c, b, h, r, col)];
            const double li = in.doc(c, b, i) == -1 ? std::pow(l, i) : 0.0;
            const double lt = in.doc(c, b, i) == last ? std::pow(l, c.N - i) : 0.0;
            gr.dq[kat(c, b, i, h, r)] += li * P * in.g[vat(c, b, i, h, col)];
            gr.dP[st_at(c, b, h, r, col)] += li * in.q[kat(c, b, i, h, r)] * in.g[vat(c, b, i, h, col)];
            gr.dk[kat(c, b, i, h, r)] += lt * gs * in.v[vat(c, b, i, h, col)];
            gr.dv[vat(c, b, i, h, col)] += lt * gs * in.k[kat(c, b, i, h, r)];
          }
      for (int r = 0; r < c.dk; ++r)
        for (int col = 0; col < c.dv(); ++col)
          if (last == -1) gr.dP[st_at(c, b, h, r, col)] += std::pow(l, c.N) * in.gs[st_at(c, b, h, r, col)];
    }
  return gr;
}

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

struct KernelResult {
  std::vector<float> o, S, dq, dk, dv, dP;
};

// Runs the fp32 kernels; gradients start from `prefill` to check that the backward accumulates.
KernelResult run_kernel(const Case& c, const Inputs& in, float prefill = 0.f, int threads = 2) {
  const LinearAttentionShape s{c.B, c.N, c.H, c.dk, c.dv(), c.block, threads};
  auto q = to_float(in.q), k = to_float(in.k), v = to_float(in.v), P = to_float(in.P), g = to_float(in.g),
       gs = to_float(in.gs);
  const uint8_t* starts = in.starts.empty() ? nullptr : in.starts.data();
  KernelResult r;
  r.o.assign(v.size(), 0.f);
  r.S.assign(P.size(), 0.f);
  WorkspaceBuffer wf(linear_attention_forward_workspace_floats(s));
  linear_attention_forward(r.o.data(), r.S.data(), q.data(), k.data(), v.data(),
                           c.with_state ? P.data() : nullptr, in.lambda.data(), starts, s, wf.view());
  r.dq.assign(q.size(), prefill);
  r.dk.assign(k.size(), prefill);
  r.dv.assign(v.size(), prefill);
  r.dP.assign(P.size(), prefill);
  WorkspaceBuffer wb(linear_attention_backward_workspace_floats(s));
  linear_attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), r.dP.data(), g.data(),
                            c.with_state ? gs.data() : nullptr, q.data(), k.data(), v.data(),
                            c.with_state ? P.data() : nullptr, in.lambda.data(), starts, s, wb.view());
  return r;
}

std::vector<double> minus(const std::vector<float>& a, float x) {
  std::vector<double> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = double(a[i]) - x;
  return r;
}

class LinearAttentionSweep : public ::testing::TestWithParam<Case> {};

TEST_P(LinearAttentionSweep, MatchesDoubleReference) {
  const Case c = GetParam();
  const Inputs in = make_inputs(c, 17u * c.N + c.dk);
  std::vector<double> o, S;
  reference_forward(c, in, o, S);
  const Grads ref = reference_backward(c, in);
  const KernelResult got = run_kernel(c, in);
  EXPECT_LE(normalized_error(o, got.o), kFp32Tolerance) << "o";
  EXPECT_LE(normalized_error(S, got.S), kFp32Tolerance) << "state_out";
  EXPECT_LE(normalized_error(ref.dq, got.dq), kFp32Tolerance) << "dq";
  EXPECT_LE(normalized_error(ref.dk, got.dk), kFp32Tolerance) << "dk";
  EXPECT_LE(normalized_error(ref.dv, got.dv), kFp32Tolerance) << "dv";
  if (c.with_state) {
    EXPECT_LE(normalized_error(ref.dP, got.dP), kFp32Tolerance) << "dstate_in";
  }
}

std::vector<Case> sweep() {
  std::vector<Case> cases;
  for (Decay decay : {Decay::none, Decay::lightning, Decay::retention})
    for (bool st : {false, true}) {
      for (int N : {1, 7, 64, 65})
        for (int d : {1, 3, 64, 128})
          for (int block : {16, 64}) cases.push_back({2, N, 2, d, block, decay, st});
      cases.push_back({1, 1000, 2, 1, 48, decay, st});
      cases.push_back({1, 1000, 2, 3, 64, decay, st});
      cases.push_back({1, 1000, 2, 64, 48, decay, st});
    }
  // Documents: starts inside blocks, on block boundaries (block 16, ~every 5 or 40 tokens), at both ends.
  for (Decay decay : {Decay::none, Decay::lightning, Decay::retention})
    for (bool st : {false, true})
      for (int docs : {3, 40})
        for (int N : {7, 64, 65, 300}) cases.push_back({2, N, 2, 8, 16, decay, st, docs});
  // Keys and values of different widths (Based's D' x (d+1) state, the delta rule's d_k x d_v).
  for (Decay decay : {Decay::none, Decay::lightning})
    for (auto [dk, dv] : {std::pair{3, 5}, {16, 1}, {1, 16}, {17, 65}, {64, 33}})
      for (int docs : {0, 40}) cases.push_back({2, 130, 2, dk, 32, decay, true, docs, dv});
  cases.push_back({1, 1000, 1, 128, 64, Decay::lightning, true});
  cases.push_back({1, 1000, 8, 64, 128, Decay::lightning, true});  // lightning decays to 0 across a block
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Sizes, LinearAttentionSweep, ::testing::ValuesIn(sweep()),
                         [](const auto& info) { return name(info.param); });

// More threads than (batch row, head group) items: the sequence is also cut into pieces chained by their
// states (and state gradients); results must not change with the thread count (the shape's, whatever
// OMP_NUM_THREADS says).
TEST(LinearAttention, PiecesAcrossThreadsMatchDoubleReference) {
  for (int threads : {1, 3, 5, 8})
    for (Decay decay : {Decay::none, Decay::lightning, Decay::retention})
      for (bool st : {false, true})
        for (Case c : {Case{1, 1000, 2, 16, 32, decay, st}, Case{2, 300, 1, 8, 16, decay, st}, Case{1, 65, 1, 3, 16, decay, st},
                       Case{2, 300, 1, 8, 16, decay, st, 30}, Case{2, 400, 2, 4, 16, decay, st, 150},
                       Case{2, 300, 2, 8, 16, decay, st, 30, 5}}) {
          const Inputs in = make_inputs(c, 31u * c.N + threads);
          std::vector<double> o, S;
          reference_forward(c, in, o, S);
          const Grads ref = reference_backward(c, in);
          const KernelResult got = run_kernel(c, in, 0.5f, threads);  // the backward accumulates onto 0.5
          const std::string what = name(c) + " threads=" + std::to_string(threads);
          EXPECT_LE(normalized_error(o, got.o), kFp32Tolerance) << what << " o";
          EXPECT_LE(normalized_error(S, got.S), kFp32Tolerance) << what << " state_out";
          EXPECT_LE(normalized_error(ref.dq, minus(got.dq, 0.5f)), kFp32Tolerance) << what << " dq";
          EXPECT_LE(normalized_error(ref.dk, minus(got.dk, 0.5f)), kFp32Tolerance) << what << " dk";
          EXPECT_LE(normalized_error(ref.dv, minus(got.dv, 0.5f)), kFp32Tolerance) << what << " dv";
          if (st) {
            EXPECT_LE(normalized_error(ref.dP, minus(got.dP, 0.5f)), kFp32Tolerance) << what << " dstate_in";
          }
        }
}

// The double reference's analytic backward equals finite differences of its forward.
TEST(LinearAttentionReference, BackwardMatchesFiniteDifferences) {
  for (Decay decay : {Decay::none, Decay::retention, Decay::lightning})
  for (int docs : {0, 3})
  for (int dv : {0, 4}) {
    const Case c{2, 7, 2, 3, 3, decay, true, docs, dv};
    Inputs in = make_inputs(c, 5);
    const Grads gr = reference_backward(c, in);
    auto fd = [&](std::vector<double> Inputs::*field) {
      return finite_difference(
          [&](const std::vector<double>& x) {
            Inputs t = in;
            t.*field = x;
            return reference_loss(c, t);
          },
          in.*field);
    };
    EXPECT_LE(normalized_error(fd(&Inputs::q), gr.dq), 1e-12) << to_string(decay);
    EXPECT_LE(normalized_error(fd(&Inputs::k), gr.dk), 1e-12) << to_string(decay);
    EXPECT_LE(normalized_error(fd(&Inputs::v), gr.dv), 1e-12) << to_string(decay);
    EXPECT_LE(normalized_error(fd(&Inputs::P), gr.dP), 1e-12) << to_string(decay);
    // and the fp32 kernel directly against finite differences
    const KernelResult got = run_kernel(c, in);
    EXPECT_LE(normalized_error(fd(&Inputs::q), got.dq), kFp32Tolerance);
    EXPECT_LE(normalized_error(fd(&Inputs::P), got.dP), kFp32Tolerance);
  }
}

TEST(LinearAttention, BackwardAccumulates) {
  const Case c{1, 33, 2, 8, 16, Decay::retention, true};
  const Inputs in = make_inputs(c, 9);
  const KernelResult fresh = run_kernel(c, in, 0.f), added = run_kernel(c, in, 0.5f);
  EXPECT_LE(normalized_error(to_double(fresh.dq), minus(added.dq, 0.5f)), 1e-12);
  EXPECT_LE(normalized_error(to_double(fresh.dk), minus(added.dk, 0.5f)), 1e-12);
  EXPECT_LE(normalized_error(to_double(fresh.dv), minus(added.dv, 0.5f)), 1e-12);
  EXPECT_LE(normalized_error(to_double(fresh.dP), minus(added.dP, 0.5f)), 1e-12);
}

// Splitting a sequence in two and handing the state over gives the unsplit result, for any block size.
TEST(LinearAttention, StateHandOverEqualsOneCall) {
  const int B = 1, N = 150, H = 3, d = 16, split = 67;
  std::vector<float> lambda(H);
  linear_attention_decays(lambda.data(), H, Decay::lightning);
  auto q = random_vector(size_t(B) * N * H * d, 1), k = random_vector(q.size(), 2), v = random_vector(q.size(), 3);
  const int T = 2;
  LinearAttentionShape whole{B, N, H, d, d, 32, T}, first{B, split, H, d, d, 64, T}, second{B, N - split, H, d, d, 16, T};
  std::vector<float> o(q.size()), o2(q.size()), S(size_t(H) * d * d), S1(S.size()), S2(S.size());
  WorkspaceBuffer w(linear_attention_forward_workspace_floats(whole) + linear_attention_forward_workspace_floats(first) +
                    linear_attention_forward_workspace_floats(second));
  linear_attention_forward(o.data(), S.data(), q.data(), k.data(), v.data(), nullptr, lambda.data(), nullptr, whole, w.view());
  linear_attention_forward(o2.data(), S1.data(), q.data(), k.data(), v.data(), nullptr, lambda.data(), nullptr, first, w.view());
  const size_t off = size_t(split) * H * d;
  linear_attention_forward(o2.data() + off, S2.data(), q.data() + off, k.data() + off, v.data() + off, S1.data(),
                           lambda.data(), nullptr, second, w.view());
  EXPECT_LE(normalized_error(o, o2), 1e-12);
  EXPECT_LE(normalized_error(S, S2), 1e-12);
}

// ---- bidirectional: o = Q (K^T V + P), state_out = K^T V ----
TEST(LinearAttentionBidirectional, MatchesDoubleReferenceAndFiniteDifferences) {
  for (int N : {1, 7, 65, 1000})
    for (auto [dk, dv] : {std::pair{1, 1}, {3, 3}, {64, 64}, {3, 5}, {17, 2}}) {
      const int B = 2, H = 2;
      const size_t nk = size_t(B) * N * H * dk, nv = size_t(B) * N * H * dv, st = size_t(B) * H * dk * dv;
      auto q = random_vector(nk, 1), k = random_vector(nk, 2), v = random_vector(nv, 3), g = random_vector(nv, 4);
      auto P = random_vector(st, 5), gs = random_vector(st, 6);
      // double reference of o, state_out and the gradients of L = sum(o g) + sum(state_out gs)
      auto kidx = [&](int b, int t, int h, int x) { return ((size_t(b) * N + t) * H + h) * dk + x; };
      auto vidx = [&](int b, int t, int h, int x) { return ((size_t(b) * N + t) * H + h) * dv + x; };
      auto sidx = [&](int b, int h, int r, int c) { return ((size_t(b) * H + h) * dk + r) * dv + c; };
      std::vector<double> o(nv), M(st), dq(nk), dk_ref(nk), dv_ref(nv), dP(st);
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h) {
          std::vector<double> QtG(size_t(dk) * dv);
          for (int r = 0; r < dk; ++r)
            for (int c = 0; c < dv; ++c) {
              double m = 0, qg = 0;
              for (int t = 0; t < N; ++t) {
                m += double(k[kidx(b, t, h, r)]) * v[vidx(b, t, h, c)];
                qg += double(q[kidx(b, t, h, r)]) * g[vidx(b, t, h, c)];
              }
              M[sidx(b, h, r, c)] = m;
              QtG[size_t(r) * dv + c] = qg;
              dP[sidx(b, h, r, c)] = qg;
            }
          for (int t = 0; t < N; ++t)
            for (int r = 0; r < dk; ++r)
              for (int c = 0; c < dv; ++c) {
                const double tot = M[sidx(b, h, r, c)] + P[sidx(b, h, r, c)];
                const double dm = QtG[size_t(r) * dv + c] + gs[sidx(b, h, r, c)];
                o[vidx(b, t, h, c)] += q[kidx(b, t, h, r)] * tot;
                dq[kidx(b, t, h, r)] += g[vidx(b, t, h, c)] * tot;
                dk_ref[kidx(b, t, h, r)] += v[vidx(b, t, h, c)] * dm;
                dv_ref[vidx(b, t, h, c)] += k[kidx(b, t, h, r)] * dm;
              }
        }
      LinearAttentionShape s{B, N, H, dk, dv, 64, 2};
      WorkspaceBuffer w(linear_attention_bidirectional_workspace_floats(s));
      std::vector<float> go(nv), gM(st), gdq(nk), gdk(nk), gdv(nv), gdP(st);
      linear_attention_bidirectional_forward(go.data(), gM.data(), q.data(), k.data(), v.data(), P.data(), s, w.view());
      linear_attention_bidirectional_backward(gdq.data(), gdk.data(), gdv.data(), gdP.data(), g.data(), gs.data(),
                                              q.data(), k.data(), v.data(), P.data(), s, w.view());
      const std::string what = "N=" + std::to_string(N) + " dk=" + std::to_string(dk) + " dv=" + std::to_string(dv);
      EXPECT_LE(normalized_error(o, go), kFp32Tolerance) << what;
      EXPECT_LE(normalized_error(M, gM), kFp32Tolerance) << what;
      EXPECT_LE(normalized_error(dq, gdq), kFp32Tolerance) << what;
      EXPECT_LE(normalized_error(dk_ref, gdk), kFp32Tolerance) << what;
      EXPECT_LE(normalized_error(dv_ref, gdv), kFp32Tolerance) << what;
      EXPECT_LE(normalized_error(dP, gdP), kFp32Tolerance) << what;
      if (N == 7 && dk == 3) {  // the reference's gradient of q against finite differences
        auto fd = finite_difference(
            [&](const std::vector<double>& qx) {
              double L = 0;
              for (int b = 0; b < B; ++b)
                for (int h = 0; h < H; ++h)
                  for (int t = 0; t < N; ++t)
                    for (int r = 0; r < dk; ++r)
                      for (int c = 0; c < dv; ++c)
                        L += qx[kidx(b, t, h, r)] * (M[sidx(b, h, r, c)] + P[sidx(b, h, r, c)]) * g[vidx(b, t, h, c)];
              return L;
            },
            to_double(q));
        EXPECT_LE(normalized_error(fd, dq), 1e-12) << what;
      }
    }
}

// Million-token pieces must not need memory per block: the workspace depends on the block, not on N.
TEST(LinearAttention, WorkspaceIsIndependentOfSequenceLength) {
  for (int threads : {1, 2, 8}) {
    const LinearAttentionShape short_piece{1, 64, 8, 64, 64, 32, threads}, long_piece{1, 1 << 20, 8, 64, 64, 32, threads};
    EXPECT_EQ(linear_attention_forward_workspace_floats(short_piece),
              linear_attention_forward_workspace_floats(long_piece));
    EXPECT_EQ(linear_attention_backward_workspace_floats(short_piece),
              linear_attention_backward_workspace_floats(long_piece));
  }
}

TEST(LinearAttention, BadArgumentsNameTheKernelAndShapes) {
  LinearAttentionShape s{1, 8, 2, 4, 4, 0, 1};
  std::vector<float> x(64), big(100000);
  Workspace ws{big.data(), big.size()};
  try {
    linear_attention_forward(x.data(), nullptr, x.data(), x.data(), x.data(), nullptr, nullptr, nullptr, s, ws);
    FAIL() << "no error for block 0";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_attention_forward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("block=0"), std::string::npos) << e.what();
  }
  s.block = 4;
  Workspace tiny{big.data(), 3};
  try {
    linear_attention_backward(x.data(), x.data(), x.data(), nullptr, x.data(), nullptr, x.data(), x.data(),
                              x.data(), nullptr, nullptr, nullptr, s, tiny);
    FAIL() << "no error for a small workspace";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_attention_backward: workspace"), std::string::npos) << e.what();
  }
  EXPECT_THROW(linear_attention_forward(nullptr, nullptr, x.data(), x.data(), x.data(), nullptr, nullptr, nullptr, s, ws), Error);
  LinearAttentionShape no_threads{1, 8, 2, 4, 4, 4};  // a shape that does not say its threads is refused
  try {
    linear_attention_forward(x.data(), nullptr, x.data(), x.data(), x.data(), nullptr, nullptr, nullptr, no_threads, ws);
    FAIL() << "no error for threads 0";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("threads=0"), std::string::npos) << e.what();
  }
  s.threads = 4;  // a workspace sized for fewer threads than the shape asks for
  Workspace for_one{big.data(), linear_attention_backward_workspace_floats({1, 8, 2, 4, 4, 4, 1})};
  EXPECT_THROW(linear_attention_backward(x.data(), x.data(), x.data(), nullptr, x.data(), nullptr, x.data(), x.data(),
                                         x.data(), nullptr, nullptr, nullptr, s, for_one),
               Error);
  EXPECT_THROW(decay_from_string("exponential"), Error);
}

}  // namespace

// Lightning's rates are the ALiBi slopes of the paper's code (MODEL.md), also for head counts that are not a
// power of two (issue 27: lasp took 2^(-8(h+1)/H), ~93% off at H = 6). Exponents of 2 written out by hand.
TEST(LinearAttention, LightningDecaysAreTheAlibiSlopes) {
  const std::vector<std::vector<double>> exponents = {
      {8},
      {4, 8},
      {4, 8, 2},
      {2, 4, 6, 8},
      {2, 4, 6, 8, 1, 3},
      {1, 2, 3, 4, 5, 6, 7, 8},
      {1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5},
  };
  for (const std::vector<double>& e : exponents) {
    const int H = int(e.size());
    std::vector<float> lambda(size_t(H), 0.f);
    lasp::linear_attention_decays(lambda.data(), H, lasp::Decay::lightning);
    for (int h = 0; h < H; ++h)
      EXPECT_FLOAT_EQ(lambda[size_t(h)], float(std::exp(-std::exp2(-e[size_t(h)])))) << "H = " << H << ", head " << h;
  }
}

// The spans the sequence-parallel methods use, each against its definition in double: rows of a wider tensor
// (a row stride), dk != dv, runs longer than one pass of rows, documents cutting either side, a decay after the span.
TEST(LinearAttention, SpansMatchTheirDefinitions) {
  const int H = 3, dk = 5, dv = 7, threads = 2;
  for (long n : {1L, 7L, 300L, 600L})
    for (Decay decay : {Decay::none, Decay::lightning})
      for (bool docs : {false, true}) {
        const long ldk = 2L * H * dk, ldv = 2L * H * dv;  // rows twice as wide as the span's heads
        auto q = random_vector(size_t(n) * ldk, 1), k = random_vector(q.size(), 2), dq = random_vector(q.size(), 3);
        auto v = random_vector(size_t(n) * ldv, 4), o = random_vector(v.size(), 5), dout = random_vector(v.size(), 6);
        auto dk_ = random_vector(q.size(), 7), dv_ = random_vector(v.size(), 8);
        const auto P = random_vector(size_t(H) * dk * dv, 9), G = random_vector(P.size(), 10);
        std::vector<float> lambda(H);
        linear_attention_decays(lambda.data(), H, decay);
        std::vector<uint8_t> starts(size_t(n), 0);
        if (docs) starts[size_t(n / 3)] = starts[size_t(n / 2)] = 1;
        long first = n, last = 0;
        for (long t = 0; t < n; ++t)
          if (starts[size_t(t)]) last = t, first = std::min(first, t);
        const std::vector<float> scale = {0.75f, 1.f, 0.5f};  // per head
        const LinearAttentionShape s{1, int(n), H, dk, dv, 32, threads};
        WorkspaceBuffer w(linear_attention_span_workspace_floats(s));
        std::vector<float> M(P.size()), dP(P.size());
        auto o2 = o, dq2 = dq, dk2 = dk_, dv2 = dv_;
        const SpanRows rows{ldk, ldv};
        const uint8_t* flags = docs ? starts.data() : nullptr;
        linear_attention_span_state(M.data(), k.data(), v.data(), lambda.data(), flags, rows, s, w.view());
        linear_attention_span_apply(o2.data(), q.data(), P.data(), lambda.data(), flags, rows, s, w.view());
        linear_attention_span_apply_backward(dq2.data(), dP.data(), dout.data(), q.data(), P.data(), lambda.data(), flags,
                                             rows, s, w.view());
        linear_attention_span_state_backward(dk2.data(), dv2.data(), G.data(), k.data(), v.data(), lambda.data(), flags,
                                             scale.data(), rows, s, w.view());
        std::vector<double> rM(M.size(), 0.0), rdP(M.size(), 0.0), ro(o.begin(), o.end()), rdq(dq.begin(), dq.end()),
            rdk(dk_.begin(), dk_.end()), rdv(dv_.begin(), dv_.end());
        for (int h = 0; h < H; ++h)
          for (long t = 0; t < n; ++t) {
            const double head = std::pow(double(lambda[h]), double(t)), tail = std::pow(double(lambda[h]), double(n - t));
            const long kq = t * ldk + h * dk, vo = t * ldv + h * dv;
            for (int r = 0; r < dk; ++r)
              for (int c = 0; c < dv; ++c) {
                const size_t x = (size_t(h) * dk + r) * dv + c;
                if (t >= last) {
                  rM[x] += tail * k[kq + r] * v[vo + c];
                  rdk[kq + r] += scale[h] * tail * v[vo + c] * G[x];
                  rdv[vo + c] += scale[h] * tail * k[kq + r] * G[x];
                }
                if (t < first) {
                  ro[vo + c] += head * q[kq + r] * P[x];
                  rdq[kq + r] += head * dout[vo + c] * P[x];
                  rdP[x] += head * q[kq + r] * dout[vo + c];
                }
              }
          }
        const std::string what = "n=" + std::to_string(n) + " " + to_string(decay) + (docs ? " docs" : "");
        EXPECT_LE(normalized_error(rM, M), kFp32Tolerance) << what << " span_state";
        EXPECT_LE(normalized_error(ro, o2), kFp32Tolerance) << what << " span_apply";
        EXPECT_LE(normalized_error(rdq, dq2), kFp32Tolerance) << what << " span_apply_backward dq";
        EXPECT_LE(normalized_error(rdP, dP), kFp32Tolerance) << what << " span_apply_backward dP";
        EXPECT_LE(normalized_error(rdk, dk2), kFp32Tolerance) << what << " span_state_backward dk";
        EXPECT_LE(normalized_error(rdv, dv2), kFp32Tolerance) << what << " span_state_backward dv";
      }
}
