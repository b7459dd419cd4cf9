// softmax_attention: the tiled fp32 kernel against a naive double-precision reference (full score matrix),
// the reference backward against finite differences, GQA, offset and zigzag positions, queries that see no
// key, accumulation, the merge of partial results, and argument errors.
#include "kernels/softmax_attention.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/bf16.h"
#include "kernels/bf16_tile.h"
#include "testing.h"

namespace lasp {
namespace {

using testing::kFp32Tolerance;
using testing::normalized_error;
using testing::random_vector;
using testing::to_double;

struct Problem {
  SoftmaxAttentionShape s;
  std::vector<int> qpos, kpos;
  std::vector<int> qdoc;  // (B, Nq) where each query's document starts; empty: no documents
  std::vector<float> q, k, v, dout;
  const int* doc() const { return qdoc.empty() ? nullptr : qdoc.data(); }
};

std::vector<int> iota(int n, int start = 0) {
  std::vector<int> p(n);
  std::iota(p.begin(), p.end(), start);
  return p;
}

Problem make_problem(int B, int H, int H_kv, int d, std::vector<int> qpos, std::vector<int> kpos,
                     uint32_t seed) {
  Problem p;
  const int Nq = int(qpos.size()), Nk = int(kpos.size());
  // The scale is written out here (not softmax_scale) so that the test states it independently.
  p.s = {B, Nq, Nk, H, H_kv, d, 1.f / std::sqrt(float(d)), omp_get_max_threads()};
  p.qpos = std::move(qpos);
  p.kpos = std::move(kpos);
  p.q = random_vector(size_t(B) * Nq * H * d, seed + 1);
  p.k = random_vector(size_t(B) * Nk * H_kv * d, seed + 2);
  p.v = random_vector(size_t(B) * Nk * H_kv * d, seed + 3);
  p.dout = random_vector(size_t(B) * Nq * H * d, seed + 4);
  return p;
}

// ---- double-precision reference (full score matrix) ----
struct RefOut {
  std::vector<double> o, lse;
};
struct RefGrad {
  std::vector<double> dq, dk, dv;
};

size_t qi(const SoftmaxAttentionShape& s, int b, int n, int h) { return ((size_t(b) * s.Nq + n) * s.H + h) * s.d; }
size_t ki(const SoftmaxAttentionShape& s, int b, int n, int h) {
  return ((size_t(b) * s.Nk + n) * s.H_kv + h) * s.d;
}

// Scaled scores of query (b, i, h) against every key; -inf where not visible.
std::vector<double> ref_scores(const Problem& p, const std::vector<double>& q, const std::vector<double>& k, int b,
                               int i, int h) {
  const auto& s = p.s;
  const int hk = h / (s.H / s.H_kv);
  std::vector<double> sc(s.Nk, -INFINITY);
  for (int j = 0; j < s.Nk; ++j) {
    if (p.kpos[j] > p.qpos[i]) continue;
    if (!p.qdoc.empty() && p.kpos[j] < p.qdoc[size_t(b) * s.Nq + i]) continue;  // another document's key
    double acc = 0;
    for (int x = 0; x < s.d; ++x) acc += q[qi(s, b, i, h) + x] * k[ki(s, b, j, hk) + x];
    sc[j] = acc * double(s.scale);
  }
  return sc;
}

RefOut ref_forward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                   const std::vector<double>& v) {
  const auto& s = p.s;
  RefOut r{std::vector<double>(q.size(), 0.0), std::vector<double>(size_t(s.B) * s.H * s.Nq)};
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.Nq; ++i) {
        const int hk = h / (s.H / s.H_kv);
        auto sc = ref_scores(p, q, k, b, i, h);
        const double m = *std::max_element(sc.begin(), sc.end());
        double& lse = r.lse[(size_t(b) * s.H + h) * s.Nq + i];
        if (m == -INFINITY) {
          lse = -INFINITY;
          continue;
        }
        double sum = 0;
        for (int j = 0; j < s.Nk; ++j) sum += std::exp(sc[j] - m);
        lse = m + std::log(sum);
        for (int j = 0; j < s.Nk; ++j) {
          const double pj = std::exp(sc[j] - lse);
          for (int x = 0; x < s.d; ++x) r.o[qi(s, b, i, h) + x] += pj * v[ki(s, b, j, hk) + x];
        }
      }
  return r;
}

// Analytic backward: P = softmax, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K, ...
RefGrad ref_backward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, const std::vector<double>& dout) {
  const auto& s = p.s;
  RefGrad g{std::vector<double>(q.size(), 0.0), std::vector<double>(k.size(), 0.0),
            std::vector<double>(v.size(), 0.0)};
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.Nq; ++i) {
        const int hk = h / (s.H / s.H_kv);
        auto sc = ref_scores(p, q, k, b, i, h);
        const double m = *std::max_element(sc.begin(), sc.end());
        if (m == -INFINITY) continue;
        double sum = 0;
        for (int j = 0; j < s.Nk; ++j) sum += std::exp(sc[j] - m);
        std::vector<double> P(s.Nk), dP(s.Nk, 0.0);
        double D = 0;
        for (int j = 0; j < s.Nk; ++j) {
          P[j] = std::exp(sc[j] - m) / sum;
          for (int x = 0; x < s.d; ++x) dP[j] += dout[qi(s, b, i, h) + x] * v[ki(s, b, j, hk) + x];
          D += P[j] * dP[j];
        }
        for (int j = 0; j < s.Nk; ++j) {
          if (P[j] == 0) continue;
          const double dS = P[j] * (dP[j] - D) * double(s.scale);
          for (int x = 0; x < s.d; ++x) {
            g.dq[qi(s, b, i, h) + x] += dS * k[ki(s, b, j, hk) + x];
            g.dk[ki(s, b, j, hk) + x] += dS * q[qi(s, b, i, h) + x];
            g.dv[ki(s, b, j, hk) + x] += P[j] * dout[qi(s, b, i, h) + x];
          }
        }
      }
  return g;
}

// ---- kernel runners ----
// Filled with NaN: a kernel that read scratch it had not written (the upper triangles the diagonal blocks
// skip) would spread it into the results.
WorkspaceBuffer workspace_for(const SoftmaxAttentionShape& s) {
  WorkspaceBuffer ws(softmax_attention_workspace_floats(s.Nq, s.Nk, s.d, s.threads));
  std::fill(ws.storage.begin(), ws.storage.end(), NAN);
  return ws;
}

struct KernelOut {
  std::vector<float> o, lse, dq, dk, dv;
};

KernelOut run_kernel(const Problem& p, float grad_fill = 0.f) {
  const auto& s = p.s;
  KernelOut r{std::vector<float>(p.q.size(), NAN), std::vector<float>(size_t(s.B) * s.H * s.Nq, NAN),
              std::vector<float>(p.q.size(), grad_fill), std::vector<float>(p.k.size(), grad_fill),
              std::vector<float>(p.v.size(), grad_fill)};
  auto ws = workspace_for(s);
  softmax_attention_forward(r.o.data(), r.lse.data(), p.q.data(), p.k.data(), p.v.data(), p.qpos.data(),
                            p.kpos.data(), p.doc(), s, ws.view());
  softmax_attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), p.dout.data(), r.o.data(), r.lse.data(),
                             p.q.data(), p.k.data(), p.v.data(), p.qpos.data(), p.kpos.data(), p.doc(), s, ws.view());
  return r;
}

bool all_finite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float f) { return std::isfinite(f); });
}

// lse: -inf entries must match exactly; the finite ones are compared with the normalized error.
void expect_lse(const std::vector<double>& ref, const std::vector<float>& got, const std::string& what) {
  std::vector<double> rf, gf;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(ref[i] == -INFINITY, got[i] == -INFINITY) << what << " lse[" << i << "]";
    ASSERT_FALSE(std::isnan(got[i])) << what << " lse[" << i << "]";
    if (ref[i] != -INFINITY) {
      rf.push_back(ref[i]);
      gf.push_back(got[i]);
    }
  }
  EXPECT_LE(normalized_error(rf, gf), kFp32Tolerance) << what << " lse";
}

// Normalized error of a gradient; where the reference is exactly zero (one visible key: dq = dk = 0) it is
// measured against the size of dv instead.
double grad_error(const std::vector<double>& ref, const std::vector<float>& got, const std::vector<double>& dv) {
  double num = 0, den = 0, den_dv = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (ref[i] - got[i]) * (ref[i] - got[i]);
    den += ref[i] * ref[i];
  }
  for (double x : dv) den_dv += x * x;
  return num == 0 ? 0 : num / std::max(den / ref.size(), den_dv / dv.size()) / ref.size();
}

void check_problem(const Problem& p, const std::string& what) {
  const auto ref = ref_forward(p, to_double(p.q), to_double(p.k), to_double(p.v));
  const auto grad = ref_backward(p, to_double(p.q), to_double(p.k), to_double(p.v), to_double(p.dout));
  const auto got = run_kernel(p);
  EXPECT_TRUE(all_finite(got.o)) << what;
  EXPECT_LE(normalized_error(ref.o, got.o), kFp32Tolerance) << what << " o";
  expect_lse(ref.lse, got.lse, what);
  EXPECT_TRUE(all_finite(got.dq) && all_finite(got.dk) && all_finite(got.dv)) << what;
  EXPECT_LE(grad_error(grad.dq, got.dq, grad.dv), kFp32Tolerance) << what << " dq";
  EXPECT_LE(grad_error(grad.dk, got.dk, grad.dv), kFp32Tolerance) << what << " dk";
  EXPECT_LE(normalized_error(grad.dv, got.dv), kFp32Tolerance) << what << " dv";
}

std::string name(const Problem& p) {
  const auto& s = p.s;
  return "B=" + std::to_string(s.B) + " Nq=" + std::to_string(s.Nq) + " Nk=" + std::to_string(s.Nk) +
         " H=" + std::to_string(s.H) + " H_kv=" + std::to_string(s.H_kv) + " d=" + std::to_string(s.d);
}

// ---- the reference itself: analytic backward vs central finite differences of L = sum(o * w) ----
TEST(SoftmaxAttention, ReferenceBackwardMatchesFiniteDifferences) {
  // GQA, a query that sees no key (position 0 with keys from 1), a non-monotone key order.
  Problem p = make_problem(2, 4, 2, 3, {0, 3, 2, 5}, {4, 1, 3, 2, 5}, 11);
  const auto q = to_double(p.q), k = to_double(p.k), v = to_double(p.v), w = to_double(p.dout);
  auto loss = [&](const std::vector<double>& qq, const std::vector<double>& kk, const std::vector<double>& vv) {
    const auto r = ref_forward(p, qq, kk, vv);
    double L = 0;
    for (size_t i = 0; i < r.o.size(); ++i) L += r.o[i] * w[i];
    return L;
  };
  const auto g = ref_backward(p, q, k, v, w);
  const auto fq = testing::finite_difference([&](const std::vector<double>& x) { return loss(x, k, v); }, q);
  const auto fk = testing::finite_difference([&](const std::vector<double>& x) { return loss(q, x, v); }, k);
  const auto fv = testing::finite_difference([&](const std::vector<double>& x) { return loss(q, k, x); }, v);
  EXPECT_LE(normalized_error(fq, g.dq), 1e-12);
  EXPECT_LE(normalized_error(fk, g.dk), 1e-12);
  EXPECT_LE(normalized_error(fv, g.dv), 1e-12);
}

// Documents: each query sees only the keys of its own document. Every batch row has its own starts; on
// contiguous positions (diagonal tiles, starts inside and on tile edges) and on zigzag-ordered keys, with
// queries against a suffix of the keys (the first query's document began before them).
TEST(SoftmaxAttention, DocumentsMaskOtherDocuments) {
  auto documents = [](const std::vector<int>& qpos, int B, int N, int every, uint32_t seed) {
    std::vector<int> starts_at(size_t(B) * N, 0), qdoc;  // the document start of each global position
    uint32_t x = seed;
    for (int b = 0; b < B; ++b)
      for (int t = 1; t < N; ++t) {
        const bool start = (x = x * 1664525u + 1013904223u) >> 8 < (1u << 24) / every || t == 256 || t == N - 1;
        starts_at[size_t(b) * N + t] = start ? t : starts_at[size_t(b) * N + t - 1];
      }
    for (int b = 0; b < B; ++b)
      for (int p : qpos) qdoc.push_back(starts_at[size_t(b) * N + p]);
    return qdoc;
  };
  for (int every : {5, 70, 400})
    for (int N : {7, 300, 600}) {
      Problem p = make_problem(2, 4, 2, 16, iota(N), iota(N), 3 + N + every);
      p.qdoc = documents(p.qpos, 2, N, every, N + every);
      check_problem(p, name(p) + " every=" + std::to_string(every));
      // later queries against every key, and zigzag-ordered keys
      std::vector<int> zig = iota(N);
      std::reverse(zig.begin() + N / 2, zig.end());
      Problem z = make_problem(2, 4, 1, 8, iota(N - N / 3, N / 3), zig, 9 + N + every);
      z.qdoc = documents(z.qpos, 2, N, every, 2 * N + every);
      check_problem(z, name(z) + " zigzag every=" + std::to_string(every));
    }
}

// ---- kernel vs reference ----
TEST(SoftmaxAttention, SweepSizesHeadDimsGqa) {
  uint32_t seed = 100;
  for (int N : {1, 7, 64, 65})
    for (int d : {1, 3, 64, 128})
      for (int H_kv : {1, 2}) {
        const int B = 1 + (N + d) % 2;
        const Problem p = make_problem(B, 2, H_kv, d, iota(N), iota(N), seed++);
        check_problem(p, name(p));
      }
}

TEST(SoftmaxAttention, LongerSequencesAndMiddleGqa) {
  // Several tiles, tile sizes not dividing N: skipped, unmasked and masked tiles.
  for (auto [B, N, H, H_kv, d] : {std::array<int, 5>{1, 1000, 2, 1, 3}, {2, 1000, 4, 2, 8}, {2, 300, 4, 2, 64},
                                   {1, 257, 3, 3, 128}}) {
    const Problem p = make_problem(B, H, H_kv, d, iota(N), iota(N), 7 + N + d);
    check_problem(p, name(p));
  }
}

TEST(SoftmaxAttention, EveryThreadCountGivesTheSameResults) {
  // 1 thread and B * H_kv >= threads: one pass per KV head; more threads than (b, KV head) items: the split
  // passes over key tiles and query tiles. Zigzag-like offsets make some tile pairs empty.
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3, 8})
    for (auto [B, N, H, H_kv, d] : {std::array<int, 5>{1, 1000, 4, 1, 16}, {2, 600, 4, 2, 64}, {1, 513, 2, 2, 8}}) {
      omp_set_num_threads(threads);
      const Problem p = make_problem(B, H, H_kv, d, iota(N), iota(N), 5 + N + threads);
      check_problem(p, name(p) + " threads=" + std::to_string(threads));
    }
  omp_set_num_threads(saved);
}

TEST(SoftmaxAttention, QueriesAgainstMoreKeysWithOffsetPositions) {
  // A later chunk's queries against all keys gathered so far (and some beyond, which nothing sees).
  for (auto [Nq, Nk, d] : {std::array<int, 3>{50, 300, 16}, {150, 400, 64}, {1, 129, 5}}) {
    const Problem p = make_problem(2, 4, 2, d, iota(Nq, 100), iota(Nk), 31 + Nq);
    check_problem(p, name(p) + " offset");
  }
}

TEST(SoftmaxAttention, ZigzagPositions) {
  // W = 4 ranks, 2W pieces of 37 tokens gathered in the order 0,7,1,6,2,5,3,4.
  const int piece = 37, W = 4;
  std::vector<int> all;
  for (int r = 0; r < W; ++r)
    for (int pc : {r, 2 * W - 1 - r})
      for (int x = 0; x < piece; ++x) all.push_back(pc * piece + x);
  for (int rank : {0, 1, 3}) {
    std::vector<int> qpos(all.begin() + 2 * piece * rank, all.begin() + 2 * piece * (rank + 1));
    const Problem p = make_problem(1, 4, 1, 32, qpos, all, 50 + rank);
    check_problem(p, name(p) + " zigzag rank " + std::to_string(rank));
  }
  const Problem p = make_problem(2, 2, 2, 16, all, all, 77);  // every query, permuted
  check_problem(p, name(p) + " zigzag all");
}

// With s.bf16 every product multiplies bf16 operands (where the CPU has AVX-512-BF16): against the double reference
// of the same rounded q, k, v, dout, only the rounding of P and dS and fp32 accumulation remain (lse, from the
// fp32 scores of the rounded operands, as close as fp32). One thread item per (b, KV head) and the split passes
// (B H_kv < threads) both run. Without the instructions the flag changes nothing.
TEST(SoftmaxAttention, Bf16ProductsWithinTheRoundingOfP) {
  const auto rounded = [](const std::vector<float>& x) {
    std::vector<double> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) r[i] = from_bf16(to_bf16(x[i]));
    return r;
  };
  for (auto [B, Nq, Nk, H, H_kv, d, offset] :
       {std::array<int, 7>{1, 7, 7, 2, 1, 3, 0}, {2, 65, 65, 2, 2, 64, 0}, {2, 300, 300, 4, 2, 64, 0},
        {1, 1000, 1000, 2, 1, 8, 0}, {2, 150, 401, 4, 2, 64, 100}, {1, 257, 257, 3, 3, 128, 0}}) {
    Problem p = make_problem(B, H, H_kv, d, iota(Nq, offset), iota(Nk), 300 + Nq + d);
    const auto fp32 = run_kernel(p);
    p.s.bf16 = true;
    const auto got = run_kernel(p);
    const std::string what = name(p) + " bf16";
    if (!bf16_tiles_available()) {
      EXPECT_EQ(got.o, fp32.o) << what;
      EXPECT_EQ(got.dq, fp32.dq) << what;
      continue;
    }
    const auto ref = ref_forward(p, rounded(p.q), rounded(p.k), rounded(p.v));
    EXPECT_TRUE(all_finite(got.o)) << what;
    EXPECT_LE(normalized_error(ref.o, got.o), 1e-5) << what << " o";
    EXPECT_NE(got.o, fp32.o) << what << " (the products ran in fp32)";
    expect_lse(ref.lse, got.lse, what);
    const auto grad = ref_backward(p, rounded(p.q), rounded(p.k), rounded(p.v), rounded(p.dout));
    EXPECT_TRUE(all_finite(got.dq) && all_finite(got.dk) && all_finite(got.dv)) << what;
    // measured at most 2.9e-6 (dv: P rounded), dq and dk 4.3e-7
    EXPECT_LE(grad_error(grad.dq, got.dq, grad.dv), 2e-5) << what << " dq";
    EXPECT_LE(grad_error(grad.dk, got.dk, grad.dv), 2e-5) << what << " dk";
    EXPECT_LE(normalized_error(grad.dv, got.dv), 2e-5) << what << " dv";
    EXPECT_NE(got.dk, fp32.dk) << what << " (the backward's products ran in fp32)";
  }
}

TEST(SoftmaxAttention, QueryThatSeesNoKey) {
  // Queries at positions 0..4 see nothing (keys start at 5); in every tile of a longer case too.
  for (auto [Nq, Nk] : {std::array<int, 2>{9, 6}, {200, 300}}) {
    const Problem p = make_problem(2, 2, 1, 8, iota(Nq), iota(Nk, 5), 91 + Nq);
    const auto got = run_kernel(p);
    for (int b = 0; b < 2; ++b)
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 5; ++i) {
          EXPECT_EQ(got.lse[(size_t(b) * 2 + h) * Nq + i], -INFINITY);
          for (int x = 0; x < 8; ++x) EXPECT_EQ(got.o[qi(p.s, b, i, h) + x], 0.f);
        }
    check_problem(p, name(p) + " no key");
  }
}

TEST(SoftmaxAttention, BackwardAccumulates) {
  const Problem p = make_problem(2, 4, 2, 16, iota(300), iota(300), 5);
  const auto zero = run_kernel(p, 0.f);
  const auto filled = run_kernel(p, 0.5f);
  for (auto [a, b] : {std::pair{&zero.dq, &filled.dq}, {&zero.dk, &filled.dk}, {&zero.dv, &filled.dv}})
    for (size_t i = 0; i < a->size(); ++i) ASSERT_NEAR((*a)[i] + 0.5f, (*b)[i], 1e-6f) << i;
}

TEST(SoftmaxAttention, MergeOfDisjointKeySetsEqualsAllKeys) {
  // Keys split into the even and the odd ones (each a separate call, as Ring Attention does), merged.
  const int B = 2, H = 4, H_kv = 2, d = 16, Nq = 70, Nk = 300;
  const Problem p = make_problem(B, H, H_kv, d, iota(Nq, 0), iota(Nk, 0), 3);
  Problem part[2];
  for (int side = 0; side < 2; ++side) {
    part[side] = p;
    part[side].kpos.clear();
    part[side].k.clear();
    part[side].v.clear();
    for (int j = side; j < Nk; j += 2) part[side].kpos.push_back(p.kpos[j]);
    part[side].s.Nk = int(part[side].kpos.size());
    for (int b = 0; b < B; ++b)
      for (int j = side; j < Nk; j += 2)
        for (int x = 0; x < H_kv * d; ++x) {
          part[side].k.push_back(p.k[ki(p.s, b, j, 0) + x]);
          part[side].v.push_back(p.v[ki(p.s, b, j, 0) + x]);
        }
  }
  // Query 0 sees only key 0 (even part): the odd part gives lse = -inf for it.
  std::vector<float> o[2], lse[2];
  for (int side = 0; side < 2; ++side) {
    const auto& s = part[side].s;
    o[side].assign(p.q.size(), NAN);
    lse[side].assign(size_t(B) * H * Nq, NAN);
    auto ws = workspace_for(s);
    softmax_attention_forward(o[side].data(), lse[side].data(), p.q.data(), part[side].k.data(),
                              part[side].v.data(), p.qpos.data(), part[side].kpos.data(), nullptr, s, ws.view());
  }
  // odd into even, and a third part that saw nothing (all -inf) changes nothing.
  softmax_attention_merge(o[0].data(), lse[0].data(), o[1].data(), lse[1].data(), B, Nq, H, d);
  std::vector<float> o_none(p.q.size(), 0.f), lse_none(size_t(B) * H * Nq, -INFINITY);
  softmax_attention_merge(o[0].data(), lse[0].data(), o_none.data(), lse_none.data(), B, Nq, H, d);
  const auto ref = ref_forward(p, to_double(p.q), to_double(p.k), to_double(p.v));
  EXPECT_LE(normalized_error(ref.o, o[0]), kFp32Tolerance);
  expect_lse(ref.lse, lse[0], "merged");
  // merging into an accumulator that saw nothing copies the part
  std::vector<float> o_acc(p.q.size(), 0.f), lse_acc(size_t(B) * H * Nq, -INFINITY);
  softmax_attention_merge(o_acc.data(), lse_acc.data(), o[0].data(), lse[0].data(), B, Nq, H, d);
  EXPECT_EQ(o_acc, o[0]);
  EXPECT_EQ(lse_acc, lse[0]);
}

// ---- argument errors ----
void expect_error(const std::function<void()>& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no error for " << what;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax_attention"), std::string::npos) << e.what();
  }
}

TEST(SoftmaxAttention, BadArgumentsThrow) {
  Problem p = make_problem(1, 4, 2, 8, iota(10), iota(10), 1);
  std::vector<float> o(p.q.size()), lse(4 * 10), dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
  auto ws = workspace_for(p.s);
  auto fwd = [&](SoftmaxAttentionShape s, Workspace w, const float* q) {
    softmax_attention_forward(o.data(), lse.data(), q, p.k.data(), p.v.data(), p.qpos.data(), p.kpos.data(), nullptr,
                              s, w);
  };
  auto bwd = [&](SoftmaxAttentionShape s, Workspace w, const float* lse_in) {
    softmax_attention_backward(dq.data(), dk.data(), dv.data(), p.dout.data(), o.data(), lse_in, p.q.data(),
                               p.k.data(), p.v.data(), p.qpos.data(), p.kpos.data(), nullptr, s, w);
  };
  SoftmaxAttentionShape s = p.s;
  s.H_kv = 3;
  expect_error([&] { fwd(s, ws.view(), p.q.data()); }, "H_kv not dividing H");
  expect_error([&] { bwd(s, ws.view(), lse.data()); }, "H_kv not dividing H (backward)");
  s = p.s;
  s.d = 0;
  expect_error([&] { fwd(s, ws.view(), p.q.data()); }, "d = 0");
  s = p.s;
  s.Nq = -1;
  expect_error([&] { bwd(s, ws.view(), lse.data()); }, "Nq < 0");
  s = p.s;
  s.threads = 0;
  expect_error([&] { fwd(s, ws.view(), p.q.data()); }, "threads = 0");
  s.threads = p.s.threads + 1;  // more threads than the workspace holds
  expect_error([&] { fwd(s, ws.view(), p.q.data()); }, "a workspace for fewer threads");
  expect_error([&] { fwd(p.s, ws.view(), nullptr); }, "null q");
  expect_error([&] { bwd(p.s, ws.view(), nullptr); }, "null lse");
  Workspace small = ws.view();
  small.floats = softmax_attention_workspace_floats(10, 10, 8, 1) / 2;
  expect_error([&] { fwd(p.s, small, p.q.data()); }, "small workspace");
  expect_error([&] { bwd(p.s, Workspace{}, lse.data()); }, "empty workspace");
  expect_error([&] { softmax_attention_workspace_floats(10, 0, 8, 1); }, "workspace Nk = 0");
  expect_error([&] { softmax_attention_merge(o.data(), lse.data(), nullptr, lse.data(), 1, 10, 4, 8); },
               "merge null");
  expect_error([&] { softmax_attention_merge(o.data(), lse.data(), o.data(), lse.data(), 1, 0, 4, 8); },
               "merge Nq = 0");
}

TEST(SoftmaxAttention, OneThreadWithAOneThreadWorkspace) {
  // The shape's thread count, not OMP_NUM_THREADS, decides: one thread runs in a workspace for one.
  const Problem p = make_problem(1, 2, 1, 8, iota(300), iota(300), 9);
  std::vector<float> o1(p.q.size()), lse1(2 * 300), o2(p.q.size()), lse2(2 * 300);
  WorkspaceBuffer one(softmax_attention_workspace_floats(300, 300, 8, 1));
  auto all = workspace_for(p.s);
  SoftmaxAttentionShape single = p.s;
  single.threads = 1;
  softmax_attention_forward(o1.data(), lse1.data(), p.q.data(), p.k.data(), p.v.data(), p.qpos.data(),
                            p.kpos.data(), nullptr, single, one.view());
  softmax_attention_forward(o2.data(), lse2.data(), p.q.data(), p.k.data(), p.v.data(), p.qpos.data(),
                            p.kpos.data(), nullptr, p.s, all.view());
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(lse1, lse2);
}

}  // namespace
}  // namespace lasp
