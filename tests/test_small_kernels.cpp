// Tests of the small fp32 kernels: rmsnorm, rope, swiglu, feature_map, embedding, cross_entropy, adamw.
// Each forward is compared with a naive double reference written here; each backward with central finite
// differences of that reference under a random projection loss L = sum(out * w), once into zeroed gradients
// and once into pre-filled ones (backward must accumulate). AdamW is also compared with torch.optim.AdamW.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/check.h"
#include "kernels/adamw.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/feature_map.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

namespace {

// check_backward (testing.h) for a kernel with a GradStore argument, then GradStore::overwrite into pre-filled buffers:
// the first `overwritten` gradients must equal the zero-run result whatever they held, the rest accumulate.
void check_backward_stores(const std::vector<std::vector<double>>& fd,
                           const std::function<void(std::vector<std::vector<float>>&, GradStore)>& backward,
                           size_t overwritten, const std::string& label) {
  check_backward(fd, [&](std::vector<std::vector<float>>& g) { backward(g, GradStore::add); }, label);
  std::vector<std::vector<float>> zero, filled;
  for (size_t k = 0; k < fd.size(); ++k) {
    zero.emplace_back(fd[k].size(), 0.f);
    filled.push_back(random_vector(fd[k].size(), 2000 + (uint32_t)k));
  }
  const auto prefill = filled;
  backward(zero, GradStore::add);
  backward(filled, GradStore::overwrite);
  for (size_t k = 0; k < fd.size(); ++k) {
    std::vector<double> expected(fd[k].size());
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = (k < overwritten ? 0.0 : prefill[k][i]) + zero[k][i];
    EXPECT_LE(normalized_error(expected, filled[k]), kFp32Tolerance)
        << label << ", gradient " << k << (k < overwritten ? " overwritten" : " accumulates under overwrite");
  }
}

double dot(const double* a, const std::vector<double>& w, long offset, long n) {
  double s = 0;
  for (long i = 0; i < n; ++i) s += a[i] * w[offset + i];
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm

void ref_rmsnorm_row(double* out, const double* x, const double* w, int D, double eps) {
  double ss = 0;
  for (int i = 0; i < D; ++i) ss += x[i] * x[i];
  const double r = 1 / std::sqrt(ss / D + eps);
  for (int i = 0; i < D; ++i) out[i] = x[i] * r * w[i];
}

TEST(RmsNormKernel, ForwardBackwardMatchReference) {
  for (int T : {1, 7, 65, 300}) {
    for (int D : {1, 3, 64, 128}) {
      if (T == 300 && D != 128) continue;  // the large case exercises the OpenMP paths
      const std::string label = "T=" + std::to_string(T) + " D=" + std::to_string(D);
      // eps large for D = 1, where dx = w eps / (x^2 + eps)^1.5 is a difference of two O(1) terms.
      const float eps = D == 1 ? 0.5f : 1e-5f;
      auto x = random_vector((size_t)T * D, 1 + T * 131 + D);
      auto w = random_vector(D, 2 + D, 0.5f, 1.5f);
      auto wp = random_vector((size_t)T * D, 3 + T + D);
      const auto xd = to_double(x), wd = to_double(w), wpd = to_double(wp);

      std::vector<double> ref((size_t)T * D), ref_rstd(T);
      for (int t = 0; t < T; ++t) {
        ref_rmsnorm_row(&ref[(size_t)t * D], &xd[(size_t)t * D], wd.data(), D, eps);
        double ss = 0;
        for (int i = 0; i < D; ++i) ss += xd[(size_t)t * D + i] * xd[(size_t)t * D + i];
        ref_rstd[t] = 1 / std::sqrt(ss / D + eps);
      }
      std::vector<float> out((size_t)T * D), rstd(T);
      rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, D, eps);
      EXPECT_LE(normalized_error(ref, out), kFp32Tolerance) << label;
      EXPECT_LE(normalized_error(ref_rstd, rstd), kFp32Tolerance) << label;

      std::vector<double> tmp(D);
      auto row_loss = [&](const double* xrow, const double* wrow, long t) {
        ref_rmsnorm_row(tmp.data(), xrow, wrow, D, eps);
        return dot(tmp.data(), wpd, t * D, D);
      };
      auto fd_x = rowwise_fd([&](long t, const double* row) { return row_loss(row, wd.data(), t); }, xd, T, D);
      auto fd_w = finite_difference(
          [&](const std::vector<double>& wv) {
            double L = 0;
            for (long t = 0; t < T; ++t) L += row_loss(&xd[t * D], wv.data(), t);
            return L;
          },
          wd);
      check_backward_stores(
          {fd_x, fd_w},
          [&](std::vector<std::vector<float>>& g, GradStore store) {
            rmsnorm_backward(g[0].data(), g[1].data(), wp.data(), x.data(), w.data(), rstd.data(), T, D, store);
          },
          1, label);
    }
  }
}

// residual_rmsnorm_forward == (h += residual; rmsnorm_forward), exactly (the same float operations).
TEST(RmsNormKernel, ResidualForwardEqualsAddThenNorm) {
  for (int T : {1, 7, 300}) {
    const int D = T == 300 ? 128 : 3;
    auto h = random_vector((size_t)T * D, 21 + T), residual = random_vector((size_t)T * D, 22 + T);
    auto w = random_vector(D, 23, 0.5f, 1.5f);
    std::vector<float> sum(h.size()), out(h.size()), rstd(T), out2(h.size()), rstd2(T);
    for (size_t i = 0; i < h.size(); ++i) sum[i] = h[i] + residual[i];
    rmsnorm_forward(out.data(), rstd.data(), sum.data(), w.data(), T, D, 1e-5f);
    residual_rmsnorm_forward(h.data(), out2.data(), rstd2.data(), residual.data(), w.data(), T, D, 1e-5f);
    EXPECT_EQ(h, sum) << "T=" << T;
    EXPECT_EQ(out, out2) << "T=" << T;
    EXPECT_EQ(rstd, rstd2) << "T=" << T;
  }
  std::vector<float> a(8), b(8), c(8), d(8);
  expect_error([&] { residual_rmsnorm_forward(a.data(), a.data(), b.data(), c.data(), d.data(), 2, 4, 1e-5f); },
               "residual_rmsnorm_forward: out must differ");
  expect_error([&] { residual_rmsnorm_forward(a.data(), b.data(), c.data(), nullptr, d.data(), 2, 4, 1e-5f); },
               "residual_rmsnorm_forward: residual is null");
}

TEST(RmsNormKernel, InPlaceForward) {
  const int T = 7, D = 64;
  auto x = random_vector(T * D, 11);
  auto w = random_vector(D, 12);
  std::vector<float> out(T * D), rstd(T), rstd2(T);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, D, 1e-5f);
  rmsnorm_forward(x.data(), rstd2.data(), x.data(), w.data(), T, D, 1e-5f);
  EXPECT_EQ(out, x);
  EXPECT_EQ(rstd, rstd2);
}

TEST(RmsNormKernel, BadArguments) {
  std::vector<float> a(8), b(8), c(8), d(8);
  expect_error([&] { rmsnorm_forward(a.data(), b.data(), c.data(), d.data(), 2, 0, 1e-5f); },
               "rmsnorm_forward: D must be > 0, got 0");
  expect_error([&] { rmsnorm_forward(a.data(), b.data(), c.data(), d.data(), -1, 4, 1e-5f); }, "rmsnorm_forward");
  expect_error([&] { rmsnorm_forward(a.data(), b.data(), c.data(), d.data(), 2, 4, -1.f); }, "rmsnorm_forward: eps");
  expect_error([&] { rmsnorm_forward(a.data(), nullptr, c.data(), d.data(), 2, 4, 1e-5f); }, "rmsnorm_forward: null");
  expect_error([&] { rmsnorm_backward(a.data(), b.data(), c.data(), d.data(), d.data(), d.data(), 2, 0); },
               "rmsnorm_backward: D must be > 0");
  expect_error([&] { rmsnorm_backward(a.data(), b.data(), a.data(), d.data(), d.data(), d.data(), 2, 4); },
               "rmsnorm_backward: dx must not alias");
}

// ---------------------------------------------------------------------------------------------------------
// RoPE

// cos/sin table (N, d/2) of the reference, in double.
void ref_rope_table(std::vector<double>& c, std::vector<double>& s, const std::vector<int>& pos, int d, double theta) {
  const int half = d / 2, N = (int)pos.size();
  c.resize((size_t)N * half);
  s.resize((size_t)N * half);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < half; ++i) {
      const double a = pos[n] * std::pow(theta, -2.0 * i / d);
      c[(size_t)n * half + i] = std::cos(a);
      s[(size_t)n * half + i] = std::sin(a);
    }
}

void ref_rope_row(double* out, const double* x, const double* c, const double* s, int d) {
  const int half = d / 2;
  for (int i = 0; i < half; ++i) {
    out[i] = x[i] * c[i] - x[i + half] * s[i];
    out[i + half] = x[i + half] * c[i] + x[i] * s[i];
  }
}

TEST(RopeKernel, ForwardBackwardMatchReference) {
  std::vector<int> contiguous65(65);
  for (int i = 0; i < 65; ++i) contiguous65[i] = i;
  const std::vector<std::vector<int>> pos_sets = {
      {7}, {0, 5, 6, 1000, 123456}, {0, 1, 2, 3, 4, 5, 6}, {3, 2000000, 1, 0, 99999, 42, 17}, contiguous65};
  const float theta = 500000.f;
  for (const auto& pos : pos_sets) {
    const int N = (int)pos.size();
    for (int B : {1, 2}) {
      for (int H : {1, 3}) {
        for (int d : {2, 64, 128}) {
          if (N == 65 && !(B == 2 && H == 3 && d == 64)) continue;  // one large case for the OpenMP path
          const std::string label = "N=" + std::to_string(N) + " B=" + std::to_string(B) +
                                    " H=" + std::to_string(H) + " d=" + std::to_string(d);
          const long n = (long)B * N * H * d, rows = (long)B * N * H;
          auto x = random_vector(n, 21 + N + B * 7 + H * 13 + d);
          auto wp = random_vector(n, 22 + d);
          const auto xd = to_double(x), wpd = to_double(wp);
          std::vector<double> c, s;
          ref_rope_table(c, s, pos, d, theta);
          auto n_of_row = [&](long r) { return (r / H) % N; };

          std::vector<double> ref(n);
          for (long r = 0; r < rows; ++r)
            ref_rope_row(&ref[r * d], &xd[r * d], &c[n_of_row(r) * d / 2], &s[n_of_row(r) * d / 2], d);
          std::vector<float> out(n);
          rope_forward(out.data(), x.data(), pos.data(), B, N, H, d, theta);
          EXPECT_LE(normalized_error(ref, out), kFp32Tolerance) << label;
          auto inplace = x;
          rope_forward(inplace.data(), inplace.data(), pos.data(), B, N, H, d, theta);
          EXPECT_EQ(inplace, out) << label << " in place";

          std::vector<double> tmp(d);
          auto fd = rowwise_fd(
              [&](long r, const double* row) {
                ref_rope_row(tmp.data(), row, &c[n_of_row(r) * d / 2], &s[n_of_row(r) * d / 2], d);
                return dot(tmp.data(), wpd, r * d, d);
              },
              xd, rows, d);
          check_backward_stores(
              {fd},
              [&](std::vector<std::vector<float>>& g, GradStore store) {
                rope_backward(g[0].data(), wp.data(), pos.data(), B, N, H, d, theta, store);
              },
              1, label);
        }
      }
    }
  }
}

// The table-driven calls give exactly what the position-driven ones compute (same float angles).
TEST(RopeKernel, TableEqualsPositions) {
  for (auto [B, N, H, d] : {std::array<int, 4>{1, 1, 1, 2}, {2, 70, 3, 6}, {1, 300, 4, 130}}) {
    std::vector<int> pos(N);
    for (int n = 0; n < N; ++n) pos[n] = 3 * n + (n % 5);  // increasing, with gaps
    const float theta = 500000.f;
    const RopeTable table = rope_table(pos.data(), N, d, theta);
    const auto x = random_vector(size_t(B) * N * H * d, 40 + N);
    std::vector<float> a(x.size()), b(x.size());
    rope_forward(a.data(), x.data(), pos.data(), B, N, H, d, theta);
    rope_forward(b.data(), x.data(), table, B, H);
    EXPECT_EQ(a, b) << "forward N=" << N;
    for (GradStore store : {GradStore::add, GradStore::overwrite}) {
      auto da = random_vector(x.size(), 41), db = da;
      rope_backward(da.data(), x.data(), pos.data(), B, N, H, d, theta, store);
      rope_backward(db.data(), x.data(), table, B, H, store);
      EXPECT_EQ(da, db) << "backward N=" << N;
    }
  }
}

TEST(RopeKernel, PositionZeroIsIdentity) {
  const int d = 64;
  auto x = random_vector(d, 31);
  std::vector<float> out(d);
  const int pos = 0;
  rope_forward(out.data(), x.data(), &pos, 1, 1, 1, d, 10000.f);
  EXPECT_EQ(out, x);
}

TEST(RopeKernel, BadArguments) {
  std::vector<float> a(64), b(64);
  const int pos[2] = {0, 1}, neg[2] = {0, -3};
  expect_error([&] { rope_forward(a.data(), b.data(), pos, 1, 2, 1, 3, 1e4f); }, "rope_forward: head dim d must be even");
  expect_error([&] { rope_forward(a.data(), b.data(), pos, 1, 2, 1, 0, 1e4f); }, "rope_forward: head dim d");
  expect_error([&] { rope_forward(a.data(), b.data(), neg, 1, 2, 1, 4, 1e4f); }, "rope_forward: pos[1] must be >= 0, got -3");
  expect_error([&] { rope_forward(a.data(), b.data(), pos, 1, 2, 1, 4, 0.f); }, "rope_forward: theta");
  expect_error([&] { rope_backward(a.data(), b.data(), pos, 1, 2, 1, 5, 1e4f); }, "rope_backward: head dim d must be even");
  expect_error([&] { rope_backward(a.data(), a.data(), pos, 1, 2, 1, 4, 1e4f); }, "rope_backward: dx must not alias dout");
  expect_error([&] { rope_table(pos, 2, 5, 1e4f); }, "rope_table: head dim d must be even");
  expect_error([&] { rope_table(neg, 2, 4, 1e4f); }, "rope_table: pos[1] must be >= 0, got -3");
  expect_error([&] { rope_table(pos, 2, 4, -1.f); }, "rope_table: theta");
  const RopeTable t = rope_table(pos, 2, 4, 1e4f);
  expect_error([&] { rope_backward(a.data(), a.data(), t, 1, 1); }, "rope_backward: dx must not alias dout");
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise: SwiGLU and the feature maps

double ref_silu(double x) { return x / (1 + std::exp(-x)); }

double ref_phi(double x, FeatureMap f) {
  switch (f) {
    case FeatureMap::silu: return ref_silu(x);
    case FeatureMap::elu1: return x > 0 ? x + 1 : std::exp(x);
    case FeatureMap::relu: return x > 0 ? x : 0;
    case FeatureMap::identity: return x;
  }
  return NAN;
}

TEST(SwigluKernel, ForwardBackwardMatchReference) {
  for (long n : {1L, 7L, 65L * 64, 40000L}) {
    const std::string label = "n=" + std::to_string(n);
    auto gate = random_vector(n, 41 + n, -6.f, 6.f);
    auto up = random_vector(n, 42 + n, -2.f, 2.f);
    auto wp = random_vector(n, 43 + n);
    const auto gd = to_double(gate), ud = to_double(up), wpd = to_double(wp);
    std::vector<double> ref(n);
    for (long i = 0; i < n; ++i) ref[i] = ref_silu(gd[i]) * ud[i];
    std::vector<float> out(n);
    swiglu_forward(out.data(), gate.data(), up.data(), n);
    EXPECT_LE(normalized_error(ref, out), kFp32Tolerance) << label;

    auto fd_gate = rowwise_fd([&](long i, const double* g) { return ref_silu(*g) * ud[i] * wpd[i]; }, gd, n, 1);
    auto fd_up = rowwise_fd([&](long i, const double* u) { return ref_silu(gd[i]) * *u * wpd[i]; }, ud, n, 1);
    check_backward_stores(
        {fd_gate, fd_up},
        [&](std::vector<std::vector<float>>& g, GradStore store) {
          swiglu_backward(g[0].data(), g[1].data(), wp.data(), gate.data(), up.data(), n, store);
        },
        2, label);
  }
}

// The bf16 forms (precision bf16's MLP) write what the fp32 forms' results round to, over block edges and threads.
TEST(SwigluKernel, Bf16FormsRoundTheFp32Results) {
  for (long n : {1L, 7L, 2048L + 5, 40000L}) {
    const std::string label = "n=" + std::to_string(n);
    auto gate = random_vector(n, 51 + n, -6.f, 6.f), up = random_vector(n, 52 + n, -2.f, 2.f);
    auto dout = random_vector(n, 53 + n);
    std::vector<float> out(n), dgate(n), dup(n);
    swiglu_forward(out.data(), gate.data(), up.data(), n);
    swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), n, GradStore::overwrite);
    std::vector<bf16> out16(n), dgate16(n), dup16(n);
    swiglu_forward_bf16(out16.data(), gate.data(), up.data(), n);
    swiglu_backward_bf16(dgate16.data(), dup16.data(), n, dout.data(), gate.data(), up.data(), 1, n);
    long differ = 0;
    for (long i = 0; i < n; ++i)
      differ += out16[i] != to_bf16(out[i]) || dgate16[i] != to_bf16(dgate[i]) || dup16[i] != to_bf16(dup[i]);
    EXPECT_EQ(differ, 0) << label;
    // Rows of `width` side by side in one operand (the MLP's joint gate and up gradient): each row's dgate, then dup.
    for (long width : {1L, 5L, 2048L + 3}) {
      if (n % width) continue;
      const long rows = n / width;
      std::vector<bf16> joint(size_t(2 * n));
      swiglu_backward_bf16(joint.data(), joint.data() + width, 2 * width, dout.data(), gate.data(), up.data(), rows,
                           width);
      differ = 0;
      for (long i = 0; i < n; ++i) {
        const long r = i / width, c = i % width;
        differ += joint[2 * width * r + c] != dgate16[i] || joint[2 * width * r + width + c] != dup16[i];
      }
      EXPECT_EQ(differ, 0) << label << " width=" << width;
    }
  }
  std::vector<float> a(4);
  std::vector<bf16> h(4);
  expect_error([&] { swiglu_forward_bf16(h.data(), a.data(), a.data(), -1); }, "swiglu_forward_bf16: n must be >= 0");
  expect_error([&] { swiglu_forward_bf16(h.data(), (const bf16*)nullptr, h.data(), 4); }, "swiglu_forward_bf16: null");
  expect_error([&] { swiglu_backward_bf16(h.data(), h.data(), 4, a.data(), a.data(), a.data(), 1, 4); },
               "swiglu_backward_bf16");
  expect_error([&] { swiglu_backward_bf16(h.data(), h.data() + 2, 2, a.data(), a.data(), a.data(), 2, 2); },
               "swiglu_backward_bf16: dgate's and dup's rows overlap");
  expect_error([&] { swiglu_backward_bf16(h.data(), h.data() + 2, 1, a.data(), a.data(), a.data(), 2, 2); },
               "ld >= width");
}

// gate and up as bf16 (as the bf16 MLP's products write them): exactly the fp32-input forms on the same values.
TEST(SwigluKernel, Bf16InputsEqualTheFp32FormsOnTheirValues) {
  for (long n : {1L, 7L, 2048L + 5, 40000L}) {
    const std::string label = "n=" + std::to_string(n);
    auto gate = random_vector(n, 61 + n, -6.f, 6.f), up = random_vector(n, 62 + n, -2.f, 2.f);
    const auto dout = random_vector(n, 63 + n);
    std::vector<bf16> gate16(n), up16(n);
    to_bf16(gate16.data(), gate.data(), n);
    to_bf16(up16.data(), up.data(), n);
    from_bf16(gate.data(), gate16.data(), n);  // the same values in fp32
    from_bf16(up.data(), up16.data(), n);
    std::vector<bf16> want(n), got(n), dwant(2 * n), dgot(2 * n);
    swiglu_forward_bf16(want.data(), gate.data(), up.data(), n);
    swiglu_forward_bf16(got.data(), gate16.data(), up16.data(), n);
    EXPECT_EQ(want, got) << label;
    const long width = n % 5 == 0 ? 5 : 1, rows = n / width;  // rows side by side, as the MLP's joint gradient
    swiglu_backward_bf16(dwant.data(), dwant.data() + width, 2 * width, dout.data(), gate.data(), up.data(), rows, width);
    swiglu_backward_bf16(dgot.data(), dgot.data() + width, 2 * width, dout.data(), gate16.data(), up16.data(), rows,
                         width);
    EXPECT_EQ(dwant, dgot) << label;
  }
}

TEST(SwigluKernel, ExtremeInputsStayFinite) {
  const std::vector<float> gate = {-1e30f, -1000.f, -100.f, -20.f, 0.f, 20.f, 100.f, 1000.f, 1e30f};
  const long n = (long)gate.size();
  std::vector<float> up(n, 1.f), out(n), dout(n, 1.f), dgate(n, 0.f), dup(n, 0.f);
  swiglu_forward(out.data(), gate.data(), up.data(), n);
  swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), n);
  for (long i = 0; i < n; ++i) {
    EXPECT_TRUE(std::isfinite(out[i]) && std::isfinite(dgate[i]) && std::isfinite(dup[i])) << "gate " << gate[i];
    EXPECT_NEAR(out[i], gate[i] > 0 ? gate[i] : 0.f, 1e-6f * std::fabs(gate[i]) + 1e-6f) << "gate " << gate[i];
  }
  EXPECT_FLOAT_EQ(dgate[n - 2], 1.f);
  EXPECT_FLOAT_EQ(dgate[1], 0.f);
}

TEST(SwigluKernel, BadArguments) {
  std::vector<float> a(4), b(4), c(4), d(4), e(4);
  expect_error([&] { swiglu_forward(a.data(), b.data(), c.data(), -1); }, "swiglu_forward: n must be >= 0, got -1");
  expect_error([&] { swiglu_forward(nullptr, b.data(), c.data(), 4); }, "swiglu_forward: null");
  expect_error([&] { swiglu_backward(a.data(), b.data(), c.data(), d.data(), e.data(), -2); }, "swiglu_backward: n");
  expect_error([&] { swiglu_backward(a.data(), a.data(), c.data(), d.data(), e.data(), 4); }, "swiglu_backward");
}

TEST(FeatureMapKernel, ForwardBackwardMatchReference) {
  for (FeatureMap f : {FeatureMap::silu, FeatureMap::elu1, FeatureMap::relu, FeatureMap::identity}) {
    for (long n : {1L, 7L, 65L * 64, 40000L}) {
      const std::string label = std::string(to_string(f)) + " n=" + std::to_string(n);
      auto x = random_vector(n, 51 + n + (int)f, -4.f, 4.f);
      auto wp = random_vector(n, 52 + n);
      const auto xd = to_double(x), wpd = to_double(wp);
      std::vector<double> ref(n);
      for (long i = 0; i < n; ++i) ref[i] = ref_phi(xd[i], f);
      std::vector<float> out(n);
      feature_map_forward(out.data(), x.data(), n, f);
      EXPECT_LE(normalized_error(ref, out), kFp32Tolerance) << label;

      auto fd = rowwise_fd([&](long i, const double* v) { return ref_phi(*v, f) * wpd[i]; }, xd, n, 1);
      check_backward_stores(
          {fd},
          [&](std::vector<std::vector<float>>& g, GradStore store) {
            feature_map_backward(g[0].data(), wp.data(), x.data(), n, f, store);
          },
          1, label);
    }
  }
}

TEST(FeatureMapKernel, ReluDerivativeAtZeroAndExtremes) {
  const std::vector<float> x = {-1e30f, -1000.f, -100.f, 0.f, 100.f, 1000.f};
  const long n = (long)x.size();
  std::vector<float> out(n), dout(n, 1.f);
  for (FeatureMap f : {FeatureMap::silu, FeatureMap::elu1, FeatureMap::relu, FeatureMap::identity}) {
    std::vector<float> dx(n, 0.f);
    feature_map_forward(out.data(), x.data(), n, f);
    feature_map_backward(dx.data(), dout.data(), x.data(), n, f);
    for (long i = 0; i < n; ++i)
      EXPECT_TRUE(std::isfinite(out[i]) && std::isfinite(dx[i])) << to_string(f) << " x=" << x[i];
    if (f == FeatureMap::relu) {
      EXPECT_EQ(dx[3], 0.f);
    }
    if (f == FeatureMap::elu1) {
      EXPECT_EQ(out[3], 1.f);
      EXPECT_EQ(dx[3], 1.f);
    }
  }
}

TEST(FeatureMapKernel, NamesAndBadArguments) {
  for (FeatureMap f : {FeatureMap::silu, FeatureMap::elu1, FeatureMap::relu, FeatureMap::identity})
    EXPECT_EQ(feature_map_from_string(to_string(f)), f);
  expect_error([] { feature_map_from_string("gelu"); }, "feature_map_from_string: unknown feature map 'gelu'");
  expect_error([] { feature_map_from_string("SILU"); }, "silu, elu1, relu, identity");
  std::vector<float> a = {1.f, -2.f, 3.f}, b(3);
  expect_error([&] { feature_map_forward(a.data(), a.data(), 3, FeatureMap::silu); },
               "feature_map_forward: out must differ from x");
  expect_error([&] { feature_map_forward(b.data(), a.data(), -1, FeatureMap::relu); }, "feature_map_forward: n");
  expect_error([&] { feature_map_backward(a.data(), a.data(), b.data(), 3, FeatureMap::relu); },
               "feature_map_backward: dx must not alias");
  expect_error([&] { feature_map_forward(b.data(), a.data(), 3, (FeatureMap)17); }, "feature_map_forward: invalid");
  auto keep = a;
  feature_map_forward(a.data(), a.data(), 3, FeatureMap::identity);  // in place is fine for identity
  EXPECT_EQ(a, keep);
}

// ---------------------------------------------------------------------------------------------------------
// Embedding

TEST(EmbeddingKernel, ForwardBackwardMatchReference) {
  for (int T : {1, 7, 65, 512}) {
    for (int D : {1, 3, 64, 128}) {
      for (int V : {1, 11}) {
        if (T == 512 && !(D == 128 && V == 11)) continue;  // one large case for the OpenMP path
        const std::string label = "T=" + std::to_string(T) + " D=" + std::to_string(D) + " V=" + std::to_string(V);
        auto table = random_vector((size_t)V * D, 61 + V + D);
        auto wp = random_vector((size_t)T * D, 62 + T + D);
        std::vector<int> tokens(T);
        for (int t = 0; t < T; ++t) tokens[t] = (t * 7 + 3) % V;
        const auto td = to_double(table), wpd = to_double(wp);
        std::vector<double> ref((size_t)T * D);
        for (int t = 0; t < T; ++t)
          for (int i = 0; i < D; ++i) ref[(size_t)t * D + i] = td[(size_t)tokens[t] * D + i];
        std::vector<float> out((size_t)T * D);
        embedding_forward(out.data(), tokens.data(), table.data(), T, D, V);
        EXPECT_EQ(normalized_error(ref, out), 0.0) << label;

        std::vector<double> fd;
        if (T <= 65) {
          fd = finite_difference(
              [&](const std::vector<double>& tab) {
                double L = 0;
                for (int t = 0; t < T; ++t)
                  for (int i = 0; i < D; ++i) L += tab[(size_t)tokens[t] * D + i] * wpd[(size_t)t * D + i];
                return L;
              },
              td);
        } else {  // the gradient is linear: sum the projection rows per token directly
          fd.assign((size_t)V * D, 0.0);
          for (int t = 0; t < T; ++t)
            for (int i = 0; i < D; ++i) fd[(size_t)tokens[t] * D + i] += wpd[(size_t)t * D + i];
        }
        check_backward(
            {fd},
            [&](std::vector<std::vector<float>>& g) {
              embedding_backward(g[0].data(), wp.data(), tokens.data(), T, D, V);
            },
            label);
      }
    }
  }
}

TEST(EmbeddingKernel, BadArguments) {
  std::vector<float> out(8), table(8);
  const int bad_neg[3] = {0, 1, -1}, bad_big[3] = {0, 4, 1};
  expect_error([&] { embedding_forward(out.data(), bad_neg, table.data(), 3, 2, 4); },
               "embedding_forward: token at position 2 must be in [0, 4), got -1");
  expect_error([&] { embedding_forward(out.data(), bad_big, table.data(), 3, 2, 4); },
               "embedding_forward: token at position 1 must be in [0, 4), got 4");
  expect_error([&] { embedding_backward(table.data(), out.data(), bad_big, 3, 2, 4); },
               "embedding_backward: token at position 1");
  expect_error([&] { embedding_forward(out.data(), bad_neg, table.data(), 3, 0, 4); }, "embedding_forward: D must be > 0");
  expect_error([&] { embedding_forward(out.data(), bad_neg, table.data(), 3, 2, 0); }, "embedding_forward: V must be > 0");
}

// ---------------------------------------------------------------------------------------------------------
// Cross-entropy

double ref_ce_row(const double* l, int V, int target) {
  double mx = l[0];
  for (int i = 1; i < V; ++i) mx = std::max(mx, l[i]);
  double s = 0;
  for (int i = 0; i < V; ++i) s += std::exp(l[i] - mx);
  return std::log(s) + mx - l[target];
}

TEST(CrossEntropyKernel, ForwardBackwardMatchReference) {
  for (int T : {1, 7, 65, 300}) {
    for (int V : {1, 3, 64, 128}) {
      if (T == 300 && V != 128) continue;  // one large case for the OpenMP path
      const std::string label = "T=" + std::to_string(T) + " V=" + std::to_string(V);
      auto logits = random_vector((size_t)T * V, 71 + T + V, -8.f, 8.f);
      logits[0] += 60.f;  // a large logit: max subtraction must keep exp finite
      std::vector<int> targets(T);
      int count = 0;
      for (int t = 0; t < T; ++t) {
        targets[t] = (t % 5 == 2) ? -1 : (t * 13 + 1) % V;
        count += targets[t] >= 0;
      }
      const float dloss = count > 0 ? 1.f / count : 1.f;
      const auto ld = to_double(logits);
      std::vector<double> ref_losses(T, 0.0);
      double ref_total = 0;
      for (int t = 0; t < T; ++t)
        if (targets[t] >= 0) ref_total += ref_losses[t] = ref_ce_row(&ld[(size_t)t * V], V, targets[t]);
      std::vector<float> losses(T, 123.f);
      const double total = cross_entropy_forward(losses.data(), logits.data(), targets.data(), T, V);
      EXPECT_LE(normalized_error(ref_losses, losses), kFp32Tolerance) << label;
      EXPECT_NEAR(total, ref_total, 1e-9 * std::max(1.0, std::fabs(ref_total))) << label;
      EXPECT_EQ(cross_entropy_forward(nullptr, logits.data(), targets.data(), T, V), total) << label;

      auto fd = rowwise_fd(
          [&](long t, const double* row) { return targets[t] >= 0 ? dloss * ref_ce_row(row, V, targets[t]) : 0.0; },
          ld, T, V);
      check_backward(
          {fd},
          [&](std::vector<std::vector<float>>& g) {
            cross_entropy_backward(g[0].data(), logits.data(), targets.data(), T, V, dloss);
          },
          label);
    }
  }
}

TEST(CrossEntropyKernel, AllIgnoredAndBadTargets) {
  std::vector<float> logits = random_vector(12, 81), losses(3), dl(12, 0.5f);
  const int ignored[3] = {-1, -1, -1};
  EXPECT_EQ(cross_entropy_forward(losses.data(), logits.data(), ignored, 3, 4), 0.0);
  EXPECT_EQ(losses, std::vector<float>(3, 0.f));
  cross_entropy_backward(dl.data(), logits.data(), ignored, 3, 4, 1.f);
  EXPECT_EQ(dl, std::vector<float>(12, 0.5f));
  const int big[3] = {0, 4, 1}, neg[3] = {-2, 0, 1};
  expect_error([&] { cross_entropy_forward(losses.data(), logits.data(), big, 3, 4); },
               "cross_entropy_forward: target at position 1 must be -1 (ignore) or in [0, 4), got 4");
  expect_error([&] { cross_entropy_forward(losses.data(), logits.data(), neg, 3, 4); },
               "cross_entropy_forward: target at position 0");
  expect_error([&] { cross_entropy_backward(dl.data(), logits.data(), big, 3, 4, 1.f); },
               "cross_entropy_backward: target at position 1");
  expect_error([&] { cross_entropy_forward(losses.data(), logits.data(), ignored, 3, 0); },
               "cross_entropy_forward: V must be > 0");
}

// ---------------------------------------------------------------------------------------------------------
// AdamW

struct AdamHyper {
  float lr = 3e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, scale = 0.7f;
};

// PyTorch's AdamW formula in double.
void ref_adamw(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v, const std::vector<float>& grad,
               const AdamHyper& h, int step) {
  const double b1 = h.beta1, b2 = h.beta2, lr = h.lr;
  for (size_t i = 0; i < p.size(); ++i) {
    const double g = (double)grad[i] * h.scale;
    p[i] *= 1 - lr * h.wd;
    m[i] = b1 * m[i] + (1 - b1) * g;
    v[i] = b2 * v[i] + (1 - b2) * g * g;
    const double mhat = m[i] / (1 - std::pow(b1, step)), vhat = v[i] / (1 - std::pow(b2, step));
    p[i] -= lr * mhat / (std::sqrt(vhat) + h.eps);
  }
}

std::vector<double> diff(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = (double)a[i] - b[i];
  return d;
}

TEST(AdamWKernel, ThreeStepsMatchDoubleReference) {
  const AdamHyper h;
  for (long n : {1L, 7L, 65L, 70000L}) {
    auto p0 = random_vector(n, 91 + n);
    std::vector<float> p = p0, m(n, 0.f), v(n, 0.f);
    std::vector<double> pd = to_double(p0), md(n, 0.0), vd(n, 0.0);
    for (int step = 1; step <= 3; ++step) {
      auto g = random_vector(n, 92 + step + n, -2.f, 2.f);
      if (n > 1) g[0] = 0.f;  // zero gradient: only weight decay moves it
      adamw_update(p.data(), m.data(), v.data(), g.data(), n, h.lr, h.beta1, h.beta2, h.eps, h.wd, step, h.scale);
      ref_adamw(pd, md, vd, g, h, step);
    }
    std::vector<double> dref(n);
    for (long i = 0; i < n; ++i) dref[i] = pd[i] - p0[i];
    EXPECT_LE(normalized_error(dref, diff(p, p0)), kFp32Tolerance) << "n=" << n << " param update";
    EXPECT_LE(normalized_error(md, m), kFp32Tolerance) << "n=" << n << " m";
    EXPECT_LE(normalized_error(vd, v), kFp32Tolerance) << "n=" << n << " v";
  }
}

// torch.optim.AdamW (foreach=False) run by /usr/bin/python3 on the same inputs; fails if python fails.
TEST(AdamWKernel, MatchesPyTorch) {
  const AdamHyper h;
  const long n = 257;
  const int steps = 3;
  auto p0 = random_vector(n, 101);
  std::vector<std::vector<float>> grads;
  for (int s = 0; s < steps; ++s) grads.push_back(random_vector(n, 102 + s, -2.f, 2.f));
  grads[1][5] = 0.f;

  const TempDir tmp("lasp_adamw");
  const std::string path = tmp.file("adamw.txt");
  {
    std::ofstream f(path);
    f.precision(17);
    f << n << ' ' << steps << ' ' << (double)h.lr << ' ' << (double)h.beta1 << ' ' << (double)h.beta2 << ' '
      << (double)h.eps << ' ' << (double)h.wd << ' ' << (double)h.scale << '\n';
    auto write = [&](const std::vector<float>& a) {
      for (float x : a) f << (double)x << ' ';
      f << '\n';
    };
    write(p0);
    for (auto& g : grads) write(g);
  }
  const std::string script = R"(
import sys, torch
lines = open(sys.argv[1]).read().split('\n')
h = lines[0].split()
n, steps = int(h[0]), int(h[1])
lr, b1, b2, eps, wd, scale = (float(x) for x in h[2:8])
vals = lambda i: torch.tensor([float(x) for x in lines[i].split()], dtype=torch.float32)
p = torch.nn.Parameter(vals(1))
opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, foreach=False)
for s in range(steps):
    p.grad = vals(2 + s) * scale
    opt.step()
st = opt.state[p]
for t in (p.detach(), st['exp_avg'], st['exp_avg_sq']):
    print(' '.join(repr(x) for x in t.tolist()))
)";
  const std::string script_path = tmp.file("adamw.py");
  std::ofstream(script_path) << script;
  const std::string cmd = "/usr/bin/python3 " + script_path + " " + path;
  const lasp::testing::CommandResult python = lasp::testing::run_command(cmd);
  ASSERT_EQ(python.status, 0) << "python failed: " << cmd << "\n" << python.output;
  const std::string& output = python.output;

  std::istringstream in(output);
  std::vector<std::vector<float>> torch_out(3, std::vector<float>(n));
  for (auto& row : torch_out)
    for (auto& x : row) {
      double d;
      ASSERT_TRUE(in >> d) << "could not parse python output:\n" << output;
      x = (float)d;
    }

  std::vector<float> p = p0, m(n, 0.f), v(n, 0.f);
  for (int s = 0; s < steps; ++s)
    adamw_update(p.data(), m.data(), v.data(), grads[s].data(), n, h.lr, h.beta1, h.beta2, h.eps, h.wd, s + 1, h.scale);
  auto dtorch = diff(torch_out[0], p0);
  EXPECT_LE(normalized_error(dtorch, diff(p, p0)), 1e-12) << "param update vs torch";
  EXPECT_LE(normalized_error(to_double(torch_out[1]), m), 1e-12) << "m vs torch";
  EXPECT_LE(normalized_error(to_double(torch_out[2]), v), 1e-12) << "v vs torch";
}

TEST(AdamWKernel, GradNormAndClipScale) {
  for (long n : {0L, 1L, 7L, 100001L}) {
    auto g = random_vector(n, 111 + n);
    double ref = 0;
    for (float x : g) ref += (double)x * x;
    const double got = grad_norm_squared(g.data(), n);
    EXPECT_NEAR(got, ref, 1e-12 * std::max(1.0, ref)) << "n=" << n;
    EXPECT_EQ(grad_norm_squared(g.data(), n), got) << "n=" << n << " deterministic";
  }
  EXPECT_FLOAT_EQ(grad_clip_scale(10.0, 1.f), (float)(1.0 / (10.0 + 1e-6)));
  EXPECT_EQ(grad_clip_scale(0.5, 1.f), 1.f);
  EXPECT_EQ(grad_clip_scale(0.0, 1.f), 1.f);
}

TEST(AdamWKernel, BadArguments) {
  std::vector<float> a(4), b(4), c(4), d(4);
  expect_error([&] { adamw_update(a.data(), b.data(), c.data(), d.data(), 4, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.f, 0, 1.f); },
               "adamw_update: step is 1-based, must be >= 1, got 0");
  expect_error([&] { adamw_update(a.data(), b.data(), c.data(), d.data(), 4, 1e-3f, 1.f, 0.95f, 1e-8f, 0.f, 1, 1.f); },
               "adamw_update: beta1");
  expect_error([&] { adamw_update(a.data(), b.data(), c.data(), d.data(), -4, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.f, 1, 1.f); },
               "adamw_update: n");
  expect_error([&] { grad_norm_squared(a.data(), -1); }, "grad_norm_squared: n");
  expect_error([&] { grad_clip_scale(1.0, 0.f); }, "grad_clip_scale: max_norm must be > 0");
}

}  // namespace
