// vec_exp / vec_exp2 / vec_sigmoid / vec_log1p_unit / vec_log_sigmoid against the C library in double precision.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/vec_math.h"

// The largest error of f against ref (double) in ulp of the float result, over [from, to) in steps of step.
template <class F, class Ref>
double worst_ulp(F f, Ref ref, double from, double to, double step) {
  double worst = 0;
  for (double x = from; x < to; x += step) {
    const float in = float(x), got = f(in);
    const double want = ref(double(in));
    const double ulp = std::nextafter(float(want), INFINITY) - float(want);
    worst = std::max(worst, std::fabs(got - want) / ulp);
  }
  return worst;
}

TEST(VecMath, ExpWithinThreeUlpOverTheNormalRange) {
  EXPECT_LE(worst_ulp(lasp::vec_exp, [](double x) { return std::exp(x); }, -87.3, 88.7, 3.7e-4), 3.0);
  EXPECT_EQ(lasp::vec_exp(0.f), 1.f);
  EXPECT_EQ(lasp::vec_exp(-100.f), 0.f);
  EXPECT_EQ(lasp::vec_exp(-INFINITY), 0.f);
  EXPECT_TRUE(std::isinf(lasp::vec_exp(100.f)));
}

TEST(VecMath, Exp2WithinTwoUlpAndZeroForMaskedScores) {
  EXPECT_LE(worst_ulp(lasp::vec_exp2, [](double x) { return std::exp2(x); }, -126.0, 127.0, 1.3e-4), 2.0);
  EXPECT_EQ(lasp::vec_exp2(0.f), 1.f);
  EXPECT_EQ(lasp::vec_exp2(-3.f), 0.125f);
  EXPECT_EQ(lasp::vec_exp2(-126.5f), 0.f);
  EXPECT_EQ(lasp::vec_exp2(-INFINITY), 0.f);
  EXPECT_TRUE(std::isinf(lasp::vec_exp2(200.f)));
  volatile float nan = NAN;
  EXPECT_EQ(lasp::vec_exp2(nan), 0.f);
  float in[64], out[64];
  for (int i = 0; i < 64; ++i) in[i] = i % 5 == 0 ? -INFINITY : -0.37f * float(i);
  for (int i = 0; i < 64; ++i) out[i] = lasp::vec_exp2(in[i]);  // the vectorized form
  for (int i = 0; i < 64; ++i) {
    const double ref = std::exp2(double(in[i]));
    EXPECT_NEAR(out[i], ref, 2.5e-7 * ref) << i;
  }
}

TEST(VecMath, SigmoidMatchesAndSaturates) {
  for (double x = -120; x < 120; x += 0.01) {
    const float f = float(x);
    const double ref = 1 / (1 + std::exp(-double(f)));
    EXPECT_NEAR(lasp::vec_sigmoid(f), ref, 4e-7 * ref + 1e-30) << f;
  }
  EXPECT_EQ(lasp::vec_sigmoid(1e30f), 1.f);
  EXPECT_EQ(lasp::vec_sigmoid(-1e30f), 0.f);
}

TEST(VecMath, Log1pAndLogSigmoidMatchTheLibrary) {
  EXPECT_LE(worst_ulp(lasp::vec_log1p_unit, [](double u) { return std::log1p(u); }, 1e-30, 1.0, 1.1e-5), 3.0);
  EXPECT_EQ(lasp::vec_log1p_unit(0.f), 0.f);
  for (double x = -100; x < 100; x += 1.3e-3) {
    const float f = float(x);
    const double ref = std::min(double(f), 0.0) - std::log1p(std::exp(-std::fabs(double(f))));
    EXPECT_NEAR(lasp::vec_log_sigmoid(f), ref, 4e-7 * std::fabs(ref) + 1e-37) << f;
  }
  EXPECT_EQ(lasp::vec_log_sigmoid(-1e30f), -1e30f);
  EXPECT_EQ(lasp::vec_log_sigmoid(1e30f), 0.f);
  volatile float nan = NAN;
  EXPECT_TRUE(std::isnan(lasp::vec_log_sigmoid(nan)));
}

// NaN in, NaN out, without undefined behaviour on the way (the float -> int conversion of a NaN was UB:
// scripts/sanitize.sh's UBSan build reported it at vec_math.h before the fix).
TEST(VecMath, NanStaysNan) {
  volatile float nan = NAN;  // volatile: evaluated at run time, where UBSan watches
  EXPECT_TRUE(std::isnan(lasp::vec_exp(nan)));
  EXPECT_TRUE(std::isnan(lasp::vec_exp(-nan)));
  EXPECT_TRUE(std::isnan(lasp::vec_sigmoid(nan)));
  float xs[64];
  for (int i = 0; i < 64; ++i) xs[i] = i % 3 == 0 ? float(nan) : float(i) - 32.f;
  for (int i = 0; i < 64; ++i) xs[i] = lasp::vec_exp(xs[i]);  // the vectorized form
  for (int i = 0; i < 64; ++i)
    EXPECT_EQ(std::isnan(xs[i]), i % 3 == 0) << i;
}
