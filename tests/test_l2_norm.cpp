// Tests of the per-head L2 norm (kernels/l2_norm.h): the forward and rstd against a double reference written here,
// the backward against central differences of that reference under L = sum(y * p), into zeroed, pre-filled
// (accumulation) and overwritten gradients; rows of zeros stay finite (eps); bad arguments are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/l2_norm.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

namespace {

constexpr double kFdTolerance = 1e-8;  // fp32 backward against finite differences of the double reference

// One row: y = scale x / sqrt(sum x^2 + eps); returns 1 / sqrt(sum x^2 + eps).
double ref_l2_row(double* y, const double* x, int n, double eps, double scale) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const double r = 1 / std::sqrt(ss + eps);
  for (int i = 0; i < n; ++i) y[i] = scale * x[i] * r;
  return r;
}

// Forward vs the reference; backward vs finite differences (h: their step) under GradStore add (zeroed and
// pre-filled gradients) and overwrite (pre-filled with garbage).
void check_l2(const std::vector<float>& x, long rows, int n, float eps, float scale, int threads, double h,
              const std::string& label) {
  const auto xd = to_double(x);
  const auto p = random_vector(x.size(), 7 + (uint32_t)rows + n);
  const auto pd = to_double(p);
  std::vector<double> ref(x.size()), ref_rstd(rows);
  for (long t = 0; t < rows; ++t) ref_rstd[t] = ref_l2_row(&ref[t * n], &xd[t * n], n, eps, scale);
  std::vector<float> y(x.size(), NAN), rstd(rows, NAN);
  l2_norm_forward(y.data(), rstd.data(), x.data(), rows, n, eps, scale, threads);
  EXPECT_LE(normalized_error(ref, y), kFp32Tolerance) << label << " y";
  EXPECT_LE(normalized_error(ref_rstd, rstd), kFp32Tolerance) << label << " rstd";

  std::vector<double> tmp(n);
  const auto fd = rowwise_fd(
      [&](long t, const double* row) {
        ref_l2_row(tmp.data(), row, n, eps, scale);
        double L = 0;
        for (int i = 0; i < n; ++i) L += tmp[i] * pd[t * n + i];
        return L;
      },
      xd, rows, n, h);
  std::vector<float> zero(x.size(), 0.f), filled = random_vector(x.size(), 99), over = random_vector(x.size(), 98);
  const auto prefill = filled;
  l2_norm_backward(zero.data(), p.data(), x.data(), rstd.data(), rows, n, scale, threads);
  l2_norm_backward(filled.data(), p.data(), x.data(), rstd.data(), rows, n, scale, threads, GradStore::add);
  l2_norm_backward(over.data(), p.data(), x.data(), rstd.data(), rows, n, scale, threads, GradStore::overwrite);
  EXPECT_LE(normalized_error(fd, zero), kFdTolerance) << label << " dx vs FD";
  std::vector<double> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) expected[i] = (double)prefill[i] + zero[i];
  EXPECT_LE(normalized_error(expected, filled), kFp32Tolerance) << label << " dx accumulates";
  EXPECT_EQ(over, zero) << label << " dx overwritten";
}

TEST(L2Norm, ForwardBackwardMatchReference) {
  for (long rows : {1L, 7L, 300L})
    for (int n : {1, 3, 64, 128})
      for (bool scaled : {false, true}) {
        if (rows == 300 && n < 64) continue;  // the large cases exercise the OpenMP paths
        // n = 1: dx = scale eps r^3 dy, the difference of two O(1) terms unless eps is large.
        const float eps = n == 1 ? 0.5f : kL2NormEps, scale = scaled ? 1.f / std::sqrt((float)n) : 1.f;
        const std::string label =
            "rows=" + std::to_string(rows) + " n=" + std::to_string(n) + (scaled ? " scaled" : "");
        check_l2(random_vector((size_t)rows * n, 1 + (uint32_t)rows * 131 + n), rows, n, eps, scale, 3, 1e-5, label);
      }
}

// Rows of zeros (y = 0, r = 1 / sqrt(eps), dx = r scale dy) and rows so small that eps dominates; the reference
// curves on the scale sqrt(eps) = 1e-3, so the differences take a step far below it.
TEST(L2Norm, ZeroAndTinyRowsStayFinite) {
  const int n = 16;
  auto x = random_vector(4 * n, 5, -1e-3f, 1e-3f);
  for (int i = 0; i < n; ++i) x[i] = 0.f;
  for (int i = 2 * n; i < 3 * n; ++i) x[i] = 0.f;
  std::vector<float> y(x.size()), rstd(4);
  l2_norm_forward(y.data(), rstd.data(), x.data(), 4, n, kL2NormEps, 0.25f, 1);
  EXPECT_EQ(rstd[0], 1000.f);
  for (int i = 0; i < n; ++i) EXPECT_EQ(y[i], 0.f);
  check_l2(x, 4, n, kL2NormEps, 0.25f, 1, 1e-7, "zero and tiny rows");
}

// y' = x r formed first, then scaled: in place gives the same bits.
TEST(L2Norm, InPlaceForward) {
  const int rows = 5, n = 64;
  auto x = random_vector(rows * n, 11);
  std::vector<float> y(x.size()), rstd(rows), rstd2(rows);
  l2_norm_forward(y.data(), rstd.data(), x.data(), rows, n, kL2NormEps, 0.125f, 1);
  l2_norm_forward(x.data(), rstd2.data(), x.data(), rows, n, kL2NormEps, 0.125f, 1);
  EXPECT_EQ(x, y);
  EXPECT_EQ(rstd, rstd2);
}

TEST(L2Norm, RefusesBadArguments) {
  std::vector<float> a(8), b(8), c(8), d(8);
  expect_error([&] { l2_norm_forward(a.data(), b.data(), c.data(), 2, 0, kL2NormEps, 1.f, 1); },
               "l2_norm_forward: row length n must be >= 1, got 0");
  expect_error([&] { l2_norm_forward(a.data(), b.data(), c.data(), -1, 4, kL2NormEps, 1.f, 1); },
               "l2_norm_forward: rows must be >= 0, got -1");
  expect_error([&] { l2_norm_forward(a.data(), b.data(), c.data(), 2, 4, 0.f, 1.f, 1); },
               "l2_norm_forward: eps must be finite and > 0, got 0");
  expect_error([&] { l2_norm_forward(a.data(), b.data(), c.data(), 2, 4, kL2NormEps, NAN, 1); },
               "l2_norm_forward: scale must be finite");
  expect_error([&] { l2_norm_forward(a.data(), b.data(), c.data(), 2, 4, kL2NormEps, 1.f, 0); },
               "l2_norm_forward: threads must be >= 1, got 0");
  expect_error([&] { l2_norm_forward(a.data(), nullptr, c.data(), 2, 4, kL2NormEps, 1.f, 1); },
               "l2_norm_forward: null pointer");
  expect_error([&] { l2_norm_backward(a.data(), b.data(), c.data(), d.data(), 2, 0, 1.f, 1); },
               "l2_norm_backward: row length n must be >= 1, got 0");
  expect_error([&] { l2_norm_backward(a.data(), a.data(), c.data(), d.data(), 2, 4, 1.f, 1); },
               "l2_norm_backward: dx must not alias dy or x");
}

}  // namespace
