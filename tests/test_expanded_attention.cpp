// The chunkwise linear attention kernel with expanded features (Based, Rebased: LinearAttentionShape::f > 0):
// q and k hold f raw values per head (the map's kernel input u), the kernel expands them block by block into
// D' features and computes plain causal linear attention of phi(q), phi(k), v (decay, documents, incoming
// state), without normalization. The reference is written here in double, independently of the kernels: the
// compact map of ../shared/design/FEATURE_MAPS.md and its vector-Jacobian product, then the naive O(N^2)
// causal attention of the expanded rows with documents cutting as the kernels' do; its backward is checked
// against finite differences of its forward. Then the kernel (forward o and state_out, backward dq, dk of the
// raw rows, dv, dstate_in) against it over f = 1, 3, 4, 16, dv = 5 and 65, sequences of several blocks that
// are not a multiple of the block, threads 1, 2, 5 (the pieces across threads), with and without incoming
// state and documents, both kinds; the span functions of the sequence-parallel methods against their
// definitions; and the refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/gla.h"
#include "kernels/linear_attention.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

namespace {

// ---- the compact map in double (FEATURE_MAPS.md, "Forward") and its vector-Jacobian product ("Backward") ----

// D': based 1 + f + f(f+1)/2, rebased f(f+1)/2.
int features(int f, ExpandedKind kind) { return (kind == ExpandedKind::based ? 1 + f : 0) + f * (f + 1) / 2; }

// based:   [ 1 | x / f^(1/4) | x_i^2 / sqrt(2f) | x_i x_j / sqrt(f) (i < j, row-major) ]
// rebased: [ y_i^2 / sqrt(f) | sqrt(2/f) y_i y_j (i < j) ]       (x = y: the caller has normalized)
std::vector<double> phi(const double* x, int f, ExpandedKind kind) {
  std::vector<double> p;
  const double F = f;
  if (kind == ExpandedKind::based) {
    p.push_back(1.0);
    for (int i = 0; i < f; ++i) p.push_back(x[i] / std::pow(F, 0.25));
    for (int i = 0; i < f; ++i) p.push_back(x[i] * x[i] / std::sqrt(2 * F));
    for (int i = 0; i < f; ++i)
      for (int j = i + 1; j < f; ++j) p.push_back(x[i] * x[j] / std::sqrt(F));
  } else {
    for (int i = 0; i < f; ++i) p.push_back(x[i] * x[i] / std::sqrt(F));
    for (int i = 0; i < f; ++i)
      for (int j = i + 1; j < f; ++j) p.push_back(std::sqrt(2 / F) * x[i] * x[j]);
  }
  return p;
}

// dx += g . dphi/dx, g cut like phi: based dx = g1 / f^(1/4) + A x with A_ii = sqrt(2/f) gd_i,
// A_ij = A_ji = go_ij / sqrt(f); rebased dx = A x with A_ii = 2 gd_i / sqrt(f), A_ij = A_ji = sqrt(2/f) go_ij.
void phi_vjp(double* dx, const double* g, const double* x, int f, ExpandedKind kind) {
  const double F = f;
  const bool based = kind == ExpandedKind::based;
  const double* gd = g + (based ? 1 + f : 0);
  const double* go = gd + f;
  if (based)
    for (int i = 0; i < f; ++i) dx[i] += g[1 + i] / std::pow(F, 0.25);
  const double diag = based ? std::sqrt(2 / F) : 2 / std::sqrt(F), pair = based ? 1 / std::sqrt(F) : std::sqrt(2 / F);
  for (int i = 0; i < f; ++i) dx[i] += diag * gd[i] * x[i];
  for (int i = 0, at = 0; i < f; ++i)
    for (int j = i + 1; j < f; ++j, ++at) {
      dx[i] += pair * go[at] * x[j];
      dx[j] += pair * go[at] * x[i];
    }
}

// ---- the naive causal attention of the expanded rows ----

struct Case {
  ExpandedKind kind;
  int f, dv;
  int B, N, H, block, threads;
  Decay decay = Decay::none;
  bool with_state = false;  // an incoming state P and a gradient on the outgoing state
  int docs = 0;             // a document start every ~docs tokens (and at both ends of row 1); 0: none
  int D() const { return features(f, kind); }
};

std::string name(const Case& c) {
  return std::string(to_string(c.kind)) + "_f" + std::to_string(c.f) + "_dv" + std::to_string(c.dv) + "_B" +
         std::to_string(c.B) + "_N" + std::to_string(c.N) + "_H" + std::to_string(c.H) + "_blk" +
         std::to_string(c.block) + "_t" + std::to_string(c.threads) + "_" + to_string(c.decay) +
         (c.with_state ? "_state" : "") + (c.docs ? "_docs" + std::to_string(c.docs) : "");
}

struct Inputs {
  std::vector<double> q, k, v, P, g, gs;  // q, k (B, N, H, f) raw; v, g (B, N, H, dv); P, gs (B, H, D', dv)
  std::vector<float> lambda;
  std::vector<uint8_t> starts;  // (B, N), empty for none
  // The document of token t of row b: its last start at or before t, -1 for the one entering the row.
  int doc(const Case& c, int b, int t) const {
    if (starts.empty()) return -1;
    while (t >= 0 && !starts[size_t(b) * c.N + t]) --t;
    return t;
  }
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  const size_t keys = size_t(c.B) * c.N * c.H * c.f, values = size_t(c.B) * c.N * c.H * c.dv;
  const size_t st = size_t(c.B) * c.H * c.D() * c.dv;
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
    for (auto& s : in.starts) s = (x = x * 1664525u + 1013904223u) >> 8 < (1u << 24) / c.docs;
    if (c.B > 1) in.starts[c.N] = in.starts[2 * size_t(c.N) - 1] = 1;  // row 1: starts at its first and last token
  }
  return in;
}

size_t kat(const Case& c, int b, int n, int h) { return ((size_t(b) * c.N + n) * c.H + h) * c.f; }
size_t vat(const Case& c, int b, int n, int h) { return ((size_t(b) * c.N + n) * c.H + h) * c.dv; }
size_t sat(const Case& c, int b, int h, int r) { return ((size_t(b) * c.H + h) * c.D() + r) * c.dv; }

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// phi of every q (or k) row of row b, head h.
std::vector<std::vector<double>> expand(const Case& c, const std::vector<double>& x, int b, int h) {
  std::vector<std::vector<double>> r(c.N);
  for (int t = 0; t < c.N; ++t) r[t] = phi(&x[kat(c, b, t, h)], c.f, c.kind);
  return r;
}

// o_i = sum_{j<=i, same document} l^(i-j) (phi(q_i).phi(k_j)) v_j + [no start in [0, i]] l^i phi(q_i) P;
// S = [no start] l^N P + sum_{j in the last document} l^(N-j) phi(k_j)^T v_j.
void reference_forward(const Case& c, const Inputs& in, std::vector<double>& o, std::vector<double>& S) {
  const int D = c.D(), dv = c.dv;
  o.assign(in.v.size(), 0.0);
  S.assign(in.P.size(), 0.0);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const auto pq = expand(c, in.q, b, h), pk = expand(c, in.k, b, h);
      const double l = in.lambda[h];
      const int last = in.doc(c, b, c.N - 1);
      for (int i = 0; i < c.N; ++i) {
        double* oi = &o[vat(c, b, i, h)];
        for (int j = 0; j <= i; ++j) {
          if (in.doc(c, b, j) != in.doc(c, b, i)) continue;
          const double w = std::pow(l, i - j) * dot(pq[i], pk[j]);
          for (int x = 0; x < dv; ++x) oi[x] += w * in.v[vat(c, b, j, h) + x];
        }
        if (in.doc(c, b, i) == -1)
          for (int r = 0; r < D; ++r)
            for (int x = 0; x < dv; ++x) oi[x] += std::pow(l, i) * pq[i][r] * in.P[sat(c, b, h, r) + x];
      }
      for (int r = 0; r < D; ++r)
        for (int x = 0; x < dv; ++x) {
          double acc = last == -1 ? std::pow(l, c.N) * in.P[sat(c, b, h, r) + x] : 0.0;
          for (int j = 0; j < c.N; ++j)
            if (in.doc(c, b, j) == last) acc += std::pow(l, c.N - j) * pk[j][r] * in.v[vat(c, b, j, h) + x];
          S[sat(c, b, h, r) + x] = acc;
        }
    }
}

// L = sum(o g) + sum(S gs).
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

// Analytic gradients of reference_loss: those of phi(q), phi(k) as for plain linear attention, then through
// phi_vjp to the raw rows.
Grads reference_backward(const Case& c, const Inputs& in) {
  const int D = c.D(), dv = c.dv;
  Grads gr{std::vector<double>(in.q.size()), std::vector<double>(in.k.size()), std::vector<double>(in.v.size()),
           std::vector<double>(in.P.size())};
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const auto pq = expand(c, in.q, b, h), pk = expand(c, in.k, b, h);
      std::vector<std::vector<double>> dpq(c.N, std::vector<double>(D)), dpk = dpq;
      const double l = in.lambda[h];
      const int last = in.doc(c, b, c.N - 1);
      for (int i = 0; i < c.N; ++i)
        for (int j = 0; j <= i; ++j) {
          if (in.doc(c, b, j) != in.doc(c, b, i)) continue;
          const double w = std::pow(l, i - j), kern = dot(pq[i], pk[j]);
          double gv = 0;
          for (int x = 0; x < dv; ++x) gv += in.g[vat(c, b, i, h) + x] * in.v[vat(c, b, j, h) + x];
          for (int r = 0; r < D; ++r) {
            dpq[i][r] += w * gv * pk[j][r];
            dpk[j][r] += w * gv * pq[i][r];
          }
          for (int x = 0; x < dv; ++x) gr.dv[vat(c, b, j, h) + x] += w * kern * in.g[vat(c, b, i, h) + x];
        }
      for (int i = 0; i < c.N; ++i) {
        const double li = in.doc(c, b, i) == -1 ? std::pow(l, i) : 0.0;
        const double lt = in.doc(c, b, i) == last ? std::pow(l, c.N - i) : 0.0;
        for (int r = 0; r < D; ++r)
          for (int x = 0; x < dv; ++x) {
            const double P = in.P[sat(c, b, h, r) + x], gs = in.gs[sat(c, b, h, r) + x];
            const double gi = in.g[vat(c, b, i, h) + x], vi = in.v[vat(c, b, i, h) + x];
            dpq[i][r] += li * P * gi;
            gr.dP[sat(c, b, h, r) + x] += li * pq[i][r] * gi;
            dpk[i][r] += lt * gs * vi;
            gr.dv[vat(c, b, i, h) + x] += lt * gs * pk[i][r];
          }
      }
      if (last == -1)
        for (int r = 0; r < D; ++r)
          for (int x = 0; x < dv; ++x) gr.dP[sat(c, b, h, r) + x] += std::pow(l, c.N) * in.gs[sat(c, b, h, r) + x];
      for (int t = 0; t < c.N; ++t) {
        phi_vjp(&gr.dq[kat(c, b, t, h)], dpq[t].data(), &in.q[kat(c, b, t, h)], c.f, c.kind);
        phi_vjp(&gr.dk[kat(c, b, t, h)], dpk[t].data(), &in.k[kat(c, b, t, h)], c.f, c.kind);
      }
    }
  return gr;
}

// ---- the kernel ----

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

LinearAttentionShape shape(const Case& c) {
  return {c.B, c.N, c.H, c.D(), c.dv, c.block, c.threads, c.f, c.kind};
}

struct KernelResult {
  std::vector<float> o, S, dq, dk, dv, dP;
};

// Forward and backward in fp32; the gradients start from `prefill` (the backward accumulates).
KernelResult run_kernel(const Case& c, const Inputs& in, float prefill) {
  const LinearAttentionShape s = shape(c);
  auto q = to_float(in.q), k = to_float(in.k), v = to_float(in.v), P = to_float(in.P), g = to_float(in.g),
       gs = to_float(in.gs);
  const uint8_t* starts = in.starts.empty() ? nullptr : in.starts.data();
  const float* lambda = c.decay == Decay::none ? nullptr : in.lambda.data();
  KernelResult r;
  r.o.assign(v.size(), 0.f);
  r.S.assign(P.size(), 0.f);
  WorkspaceBuffer wf(linear_attention_forward_workspace_floats(s));
  linear_attention_forward(r.o.data(), r.S.data(), q.data(), k.data(), v.data(), c.with_state ? P.data() : nullptr,
                           lambda, starts, s, wf.view());
  r.dq.assign(q.size(), prefill);
  r.dk.assign(k.size(), prefill);
  r.dv.assign(v.size(), prefill);
  r.dP.assign(P.size(), prefill);
  WorkspaceBuffer wb(linear_attention_backward_workspace_floats(s));
  linear_attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), r.dP.data(), g.data(),
                            c.with_state ? gs.data() : nullptr, q.data(), k.data(), v.data(),
                            c.with_state ? P.data() : nullptr, lambda, starts, s, wb.view());
  return r;
}

std::vector<double> minus(const std::vector<float>& a, float x) {
  std::vector<double> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = double(a[i]) - x;
  return r;
}

void expect_matches_reference(const Case& c, uint32_t seed) {
  const Inputs in = make_inputs(c, seed);
  std::vector<double> o, S;
  reference_forward(c, in, o, S);
  const Grads ref = reference_backward(c, in);
  const float prefill = 0.5f;
  const KernelResult got = run_kernel(c, in, prefill);
  const std::string what = name(c);
  EXPECT_LE(normalized_error(o, got.o), kFp32Tolerance) << what << " o";
  EXPECT_LE(normalized_error(S, got.S), kFp32Tolerance) << what << " state_out";
  EXPECT_LE(normalized_error(ref.dq, minus(got.dq, prefill)), kFp32Tolerance) << what << " dq";
  EXPECT_LE(normalized_error(ref.dk, minus(got.dk, prefill)), kFp32Tolerance) << what << " dk";
  EXPECT_LE(normalized_error(ref.dv, minus(got.dv, prefill)), kFp32Tolerance) << what << " dv";
  // (without an incoming state: the gradient of a zero one, which the kernel gives all the same)
  EXPECT_LE(normalized_error(ref.dP, minus(got.dP, prefill)), kFp32Tolerance) << what << " dstate_in";
}

constexpr ExpandedKind kKinds[] = {ExpandedKind::based, ExpandedKind::rebased};

// The reference's analytic backward (gradients of the raw rows through the map) equals finite differences of
// its forward.
TEST(ExpandedAttentionReference, BackwardMatchesFiniteDifferences) {
  for (ExpandedKind kind : kKinds)
    for (int f : {1, 3})
      for (Decay decay : {Decay::none, Decay::retention})
        for (int docs : {0, 3}) {
          const Case c{kind, f, 2, 2, 7, 2, 3, 1, decay, true, docs};
          const Inputs in = make_inputs(c, 5);
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
          const std::string what = name(c);
          EXPECT_LE(normalized_error(fd(&Inputs::q), gr.dq), 1e-12) << what;
          EXPECT_LE(normalized_error(fd(&Inputs::k), gr.dk), 1e-12) << what;
          EXPECT_LE(normalized_error(fd(&Inputs::v), gr.dv), 1e-12) << what;
          EXPECT_LE(normalized_error(fd(&Inputs::P), gr.dP), 1e-12) << what;
        }
}

// The map written here gives the kernels of FEATURE_MAPS.md: 1 + s + s^2/2 (s = q.k / sqrt f), (y.y')^2 / f.
TEST(ExpandedAttentionReference, MapGivesTheKernel) {
  for (ExpandedKind kind : kKinds)
    for (int f : {1, 3, 4, 16}) {
      const auto a = to_double(random_vector(size_t(f), 1)), b = to_double(random_vector(size_t(f), 2));
      double t = 0;
      for (int i = 0; i < f; ++i) t += a[i] * b[i];
      const double s = t / std::sqrt(double(f));
      const double want = kind == ExpandedKind::based ? 1 + s + s * s / 2 : t * t / f;
      const auto pa = phi(a.data(), f, kind), pb = phi(b.data(), f, kind);
      ASSERT_EQ(int(pa.size()), features(f, kind));
      ASSERT_EQ(long(pa.size()), expanded_features(f, kind));
      EXPECT_NEAR(dot(pa, pb), want, 1e-13) << to_string(kind) << " f=" << f;
    }
}

class ExpandedAttentionSweep : public ::testing::TestWithParam<Case> {};

TEST_P(ExpandedAttentionSweep, MatchesDoubleReference) {
  const Case c = GetParam();
  expect_matches_reference(c, 13u * c.N + 7u * c.f + c.dv);
}

// Both kinds, f = 1, 3, 4, 16, dv = 5 and 65, 71 tokens in blocks of 16 (five blocks, the last of 7), no decay
// and lightning's, with and without incoming state and documents.
std::vector<Case> sweep() {
  std::vector<Case> cases;
  for (ExpandedKind kind : kKinds)
    for (int f : {1, 3, 4, 16})
      for (int dv : {5, 65})
        for (Decay decay : {Decay::none, Decay::lightning})
          for (bool st : {false, true})
            for (int docs : {0, 9}) cases.push_back({kind, f, dv, 2, 71, 2, 16, 2, decay, st, docs});
  // f = 24: 325 / 300 features, past the small-product kernel's 256 (the products go to the BLAS).
  for (ExpandedKind kind : kKinds)
    for (int docs : {0, 9}) cases.push_back({kind, 24, 5, 1, 40, 2, 16, 2, Decay::lightning, true, docs});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Sizes, ExpandedAttentionSweep, ::testing::ValuesIn(sweep()),
                         [](const auto& info) { return name(info.param); });

// The column forms the kernel runs on (expanded_feature_map.h) against the row forms tested in
// test_expanded_feature_map.cpp: phi^T, its backward, and the kernel of dot products with its derivative.
TEST(ExpandedAttention, ColumnFormsMatchTheRowForms) {
  for (ExpandedKind kind : kKinds)
    for (int f : {1, 3, 4, 16, 17})
      for (long n : {1L, 5L, 32L, 33L}) {
        const int D = features(f, kind);
        const long ldu = n + 3, ldp = n + 2;  // rows of the column forms wider than n
        const auto u = random_vector(size_t(n) * f, 1), g = random_vector(size_t(n) * D, 2);
        std::vector<float> ut(size_t(f) * ldu, NAN), gt(size_t(D) * ldp, NAN), phi_rows(size_t(n) * D), phit(gt.size());
        for (long r = 0; r < n; ++r) {
          for (int i = 0; i < f; ++i) ut[size_t(i) * ldu + r] = u[size_t(r) * f + i];
          for (int p = 0; p < D; ++p) gt[size_t(p) * ldp + r] = g[size_t(r) * D + p];
        }
        expanded_phi_forward(phi_rows.data(), u.data(), n, f, f, kind);
        expanded_phi_forward_columns(phit.data(), ldp, ut.data(), ldu, n, f, kind);
        std::vector<float> du(u.size(), 0.25f), dut(ut.size(), 0.25f);
        expanded_phi_backward(du.data(), g.data(), u.data(), n, f, f, kind);
        expanded_phi_backward_columns(dut.data(), gt.data(), ldp, ut.data(), ldu, n, f, kind);
        const std::string what = std::string(to_string(kind)) + " f=" + std::to_string(f) + " n=" + std::to_string(n);
        for (long r = 0; r < n; ++r) {
          for (int p = 0; p < D; ++p)
            EXPECT_NEAR(phit[size_t(p) * ldp + r], phi_rows[size_t(r) * D + p], 1e-6 * (1 + std::abs(phi_rows[size_t(r) * D + p])))
                << what;
          for (int i = 0; i < f; ++i)
            EXPECT_NEAR(dut[size_t(i) * ldu + r], du[size_t(r) * f + i], 1e-5 * (1 + std::abs(du[size_t(r) * f + i]))) << what;
        }
        // the kernel of dot products == expanded_kernel_forward; its derivative == expanded_kernel_backward's
        const auto a = random_vector(size_t(n) * f, 3), b = random_vector(size_t(n) * f, 4), ds = random_vector(size_t(n * n), 5);
        std::vector<float> scores(size_t(n * n)), dots(scores.size()), w(scores.size());
        expanded_kernel_forward(scores.data(), a.data(), b.data(), n, n, f, f, f, kind);
        for (long i = 0; i < n; ++i)
          for (long j = 0; j < n; ++j) {
            double t = 0;
            for (int c = 0; c < f; ++c) t += double(a[size_t(i * f + c)]) * b[size_t(j * f + c)];
            dots[size_t(i * n + j)] = float(t);
          }
        std::vector<float> of_dots = dots;
        expanded_kernel_of_dots(of_dots.data(), n * n, f, kind);
        expanded_kernel_of_dots_backward(w.data(), ds.data(), dots.data(), n * n, f, kind);
        std::vector<float> da(a.size(), 0.f), db(b.size(), 0.f), da2(a.size(), 0.f), db2(b.size(), 0.f);
        expanded_kernel_backward(da.data(), db.data(), ds.data(), a.data(), b.data(), n, n, f, f, f, kind);
        for (long i = 0; i < n; ++i)  // da = W b, db = W^T a
          for (long j = 0; j < n; ++j)
            for (int c = 0; c < f; ++c) {
              da2[size_t(i * f + c)] += w[size_t(i * n + j)] * b[size_t(j * f + c)];
              db2[size_t(j * f + c)] += w[size_t(i * n + j)] * a[size_t(i * f + c)];
            }
        EXPECT_LE(normalized_error(to_double(scores), of_dots), 1e-12) << what;
        EXPECT_LE(normalized_error(to_double(da), da2), 1e-11) << what;
        EXPECT_LE(normalized_error(to_double(db), db2), 1e-11) << what;
      }
}

// More threads than (batch row, head group) items: the sequence is also cut into pieces chained by their
// states (piece_state, the local state gradients, the carry); threads 1, 2, 5.
TEST(ExpandedAttention, PiecesAcrossThreadsMatchDoubleReference) {
  for (int threads : {1, 2, 5})
    for (ExpandedKind kind : kKinds)
      for (bool st : {false, true})
        for (Case c : {Case{kind, 4, 5, 1, 150, 1, 16, threads, Decay::none, st, 0},
                       Case{kind, 3, 5, 1, 150, 2, 16, threads, Decay::retention, st, 40},
                       Case{kind, 16, 65, 1, 101, 1, 16, threads, Decay::none, st, 0},
                       Case{kind, 16, 65, 1, 101, 1, 32, threads, Decay::lightning, st, 30},
                       Case{kind, 1, 65, 2, 67, 1, 8, threads, Decay::none, st, 20}})
          expect_matches_reference(c, 31u * c.N + threads);
}

// One call equals two with the state handed over, at different block sizes.
TEST(ExpandedAttention, StateHandOverEqualsOneCall) {
  for (ExpandedKind kind : kKinds) {
    const int B = 1, N = 150, H = 3, f = 4, dv = 9, split = 67, D = features(f, kind);
    auto q = random_vector(size_t(B) * N * H * f, 1), k = random_vector(q.size(), 2),
         v = random_vector(size_t(B) * N * H * dv, 3);
    const LinearAttentionShape whole{B, N, H, D, dv, 32, 2, f, kind}, first{B, split, H, D, dv, 64, 2, f, kind},
        second{B, N - split, H, D, dv, 16, 2, f, kind};
    std::vector<float> o(v.size()), o2(v.size()), S(size_t(H) * D * dv), S1(S.size()), S2(S.size());
    WorkspaceBuffer w(std::max({linear_attention_forward_workspace_floats(whole),
                                linear_attention_forward_workspace_floats(first),
                                linear_attention_forward_workspace_floats(second)}));
    linear_attention_forward(o.data(), S.data(), q.data(), k.data(), v.data(), nullptr, nullptr, nullptr, whole, w.view());
    linear_attention_forward(o2.data(), S1.data(), q.data(), k.data(), v.data(), nullptr, nullptr, nullptr, first, w.view());
    linear_attention_forward(o2.data() + size_t(split) * H * dv, S2.data(), q.data() + size_t(split) * H * f,
                             k.data() + size_t(split) * H * f, v.data() + size_t(split) * H * dv, S1.data(), nullptr,
                             nullptr, second, w.view());
    EXPECT_LE(normalized_error(o, o2), 1e-12) << to_string(kind);
    EXPECT_LE(normalized_error(S, S2), 1e-12) << to_string(kind);
  }
}

// The expansion's buffers depend on the block and f, not on N.
TEST(ExpandedAttention, WorkspaceIsIndependentOfSequenceLength) {
  for (ExpandedKind kind : kKinds)
    for (int threads : {1, 2, 8}) {
      const int D = features(16, kind);
      const LinearAttentionShape short_piece{1, 64, 8, D, 65, 32, threads, 16, kind},
          long_piece{1, 1 << 20, 8, D, 65, 32, threads, 16, kind};
      EXPECT_EQ(linear_attention_forward_workspace_floats(short_piece),
                linear_attention_forward_workspace_floats(long_piece));
      EXPECT_EQ(linear_attention_backward_workspace_floats(short_piece),
                linear_attention_backward_workspace_floats(long_piece));
    }
}

// The spans of the sequence-parallel methods with f > 0, against their definitions in double (phi of the raw
// rows; gradients of the raw rows through the map): rows of a wider tensor, runs longer than one pass of rows,
// documents on both sides, a per-head decay after the span.
TEST(ExpandedAttention, SpansMatchTheirDefinitions) {
  const int H = 3, dv = 7, threads = 2;
  for (ExpandedKind kind : kKinds)
    for (int f : {1, 4})
      for (long n : {1L, 7L, 300L, 600L})
        for (Decay decay : {Decay::none, Decay::lightning})
          for (bool docs : {false, true}) {
            const int D = features(f, kind);
            const long ldk = 2L * H * f, ldv = 2L * H * dv;  // rows twice as wide as the span's heads
            auto q = random_vector(size_t(n) * ldk, 1), k = random_vector(q.size(), 2), dq = random_vector(q.size(), 3);
            auto v = random_vector(size_t(n) * ldv, 4), o = random_vector(v.size(), 5), dout = random_vector(v.size(), 6);
            auto dk_ = random_vector(q.size(), 7), dv_ = random_vector(v.size(), 8);
            const auto P = random_vector(size_t(H) * D * dv, 9), G = random_vector(P.size(), 10);
            std::vector<float> lambda(H);
            linear_attention_decays(lambda.data(), H, decay);
            std::vector<uint8_t> starts(size_t(n), 0);
            if (docs) starts[size_t(n / 3)] = starts[size_t(n / 2)] = 1;
            long first = n, last = 0;
            for (long t = 0; t < n; ++t)
              if (starts[size_t(t)]) last = t, first = std::min(first, t);
            const std::vector<float> scale = {0.75f, 1.f, 0.5f};  // per head
            const LinearAttentionShape s{1, int(n), H, D, dv, 32, threads, f, kind};
            WorkspaceBuffer w(linear_attention_span_workspace_floats(s));
            std::vector<float> M(P.size()), dP(P.size());
            auto o2 = o, dq2 = dq, dk2 = dk_, dv2 = dv_;
            const SpanRows rows{ldk, ldv};
            const uint8_t* flags = docs ? starts.data() : nullptr;
            linear_attention_span_state(M.data(), k.data(), v.data(), lambda.data(), flags, rows, s, w.view());
            linear_attention_span_apply(o2.data(), q.data(), P.data(), lambda.data(), flags, rows, s, w.view());
            linear_attention_span_apply_backward(dq2.data(), dP.data(), dout.data(), q.data(), P.data(), lambda.data(),
                                                 flags, rows, s, w.view());
            linear_attention_span_state_backward(dk2.data(), dv2.data(), G.data(), k.data(), v.data(), lambda.data(),
                                                 flags, scale.data(), rows, s, w.view());
            std::vector<double> rM(M.size(), 0.0), rdP(M.size(), 0.0), ro(o.begin(), o.end()), rdq(dq.begin(), dq.end()),
                rdk(dk_.begin(), dk_.end()), rdv(dv_.begin(), dv_.end());
            for (int h = 0; h < H; ++h)
              for (long t = 0; t < n; ++t) {
                const double head = std::pow(double(lambda[h]), double(t)), tail = std::pow(double(lambda[h]), double(n - t));
                const long kq = t * ldk + h * f, vo = t * ldv + h * dv;
                const std::vector<double> xq(q.begin() + kq, q.begin() + kq + f), xk(k.begin() + kq, k.begin() + kq + f);
                const auto pq = phi(xq.data(), f, kind), pk = phi(xk.data(), f, kind);
                std::vector<double> dpq(D, 0.0), dpk(D, 0.0);
                for (int r = 0; r < D; ++r)
                  for (int c = 0; c < dv; ++c) {
                    const size_t x = (size_t(h) * D + r) * dv + c;
                    if (t >= last) {
                      rM[x] += tail * pk[r] * v[vo + c];
                      dpk[r] += scale[h] * tail * v[vo + c] * G[x];
                      rdv[vo + c] += scale[h] * tail * pk[r] * G[x];
                    }
                    if (t < first) {
                      ro[vo + c] += head * pq[r] * P[x];
                      dpq[r] += head * dout[vo + c] * P[x];
                      rdP[x] += head * pq[r] * dout[vo + c];
                    }
                  }
                phi_vjp(&rdq[kq], dpq.data(), xq.data(), f, kind);
                phi_vjp(&rdk[kq], dpk.data(), xk.data(), f, kind);
              }
            const std::string what = std::string(to_string(kind)) + " f=" + std::to_string(f) + " n=" + std::to_string(n) +
                                     " " + to_string(decay) + (docs ? " docs" : "");
            EXPECT_LE(normalized_error(rM, M), kFp32Tolerance) << what << " span_state";
            EXPECT_LE(normalized_error(ro, o2), kFp32Tolerance) << what << " span_apply";
            EXPECT_LE(normalized_error(rdq, dq2), kFp32Tolerance) << what << " span_apply_backward dq";
            EXPECT_LE(normalized_error(rdP, dP), kFp32Tolerance) << what << " span_apply_backward dP";
            EXPECT_LE(normalized_error(rdk, dk2), kFp32Tolerance) << what << " span_state_backward dk";
            EXPECT_LE(normalized_error(rdv, dv2), kFp32Tolerance) << what << " span_state_backward dv";
          }
}

template <class F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected lasp::Error, nothing was thrown";
  } catch (const Error& e) {
    for (const std::string& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message '" << e.what() << "' lacks '" << needle << "'";
  }
}

// A dk that is not the expansion's, a negative f, and the kernels that take q, k as they are.
TEST(ExpandedAttention, RefusalsNameTheKernelAndWhatWasExpected) {
  std::vector<float> x(100000);
  Workspace ws{x.data(), x.size()};
  float* p = x.data();
  LinearAttentionShape s{1, 8, 2, 14, 5, 4, 1, 4, ExpandedKind::based};  // based f = 4 has 15 features
  expect_error([&] { linear_attention_forward(p, nullptr, p, p, p, nullptr, nullptr, nullptr, s, ws); },
               {"linear_attention_forward", "f=4", "15", "dk=14"});
  expect_error([&] { linear_attention_backward(p, p, p, nullptr, p, nullptr, p, p, p, nullptr, nullptr, nullptr, s, ws); },
               {"linear_attention_backward", "f=4", "15", "dk=14"});
  expect_error([&] { linear_attention_span_state(p, p, p, nullptr, nullptr, {8, 10}, s, ws); },
               {"linear_attention_span_state", "f=4", "dk=14"});
  s.f = -1;
  expect_error([&] { linear_attention_forward(p, nullptr, p, p, p, nullptr, nullptr, nullptr, s, ws); },
               {"linear_attention_forward", "f=-1"});
  const LinearAttentionShape e{1, 8, 2, 10, 5, 4, 1, 4, ExpandedKind::rebased};  // a valid expanded shape
  expect_error([&] { linear_attention_bidirectional_forward(p, nullptr, p, p, p, nullptr, e, ws); },
               {"linear_attention_bidirectional_forward", "f = 0", "f=4"});
  expect_error([&] { linear_attention_bidirectional_backward(p, p, p, nullptr, p, nullptr, p, p, p, nullptr, e, ws); },
               {"linear_attention_bidirectional_backward", "f = 0", "f=4"});
  expect_error([&] { gla_forward(p, nullptr, p, p, p, p, nullptr, nullptr, e, ws); }, {"gla_forward", "f = 0", "f=4"});
  expect_error([&] { gla_backward(p, p, p, p, nullptr, p, nullptr, p, p, p, p, nullptr, nullptr, e, ws); },
               {"gla_backward", "f = 0", "f=4"});
}

}  // namespace
