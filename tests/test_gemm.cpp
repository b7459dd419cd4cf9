// The gemm seam against a naive double product: every transpose combination, beta 0 and 1, shapes that go to
// the register-blocked kernel (small, dense B) and to oneDNN, every Skip hint with the triangular
// operands it promises, and sums of two products.
#include <gtest/gtest.h>

#include "kernels/gemm.h"
#include "testing.h"

namespace lasp {
namespace {

using testing::normalized_error;
using testing::random_vector;

struct Case {
  bool ta, tb;
  int M, N, K;
  Skip skip;
};

void check(const Case& c, float beta) {
  const int lda = c.ta ? c.M + 3 : c.K + 5, ldb = c.tb ? c.K : c.N, ldc = c.N + 2;  // dense B, padded A and C
  auto A = random_vector(size_t(c.ta ? c.K : c.M) * lda, 1), B = random_vector(size_t(c.tb ? c.N : c.K) * ldb, 2);
  auto C = random_vector(size_t(c.M) * ldc, 3);
  auto a = [&](int i, int k) -> float& { return c.ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]; };
  auto b = [&](int k, int j) { return c.tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]; };
  for (int i = 0; i < c.M; ++i)  // the zeros the hint promises
    for (int k = 0; k < c.K; ++k)
      if ((c.skip == Skip::a_upper && k > i) || (c.skip == Skip::a_lower && k < i)) a(i, k) = 0.f;
  std::vector<double> want(C.size());
  std::vector<float> got_kept;
  for (int i = 0; i < c.M; ++i)
    for (int j = 0; j < ldc; ++j) {
      double s = 0;
      if (j < c.N)
        for (int k = 0; k < c.K; ++k) s += double(a(i, k)) * b(k, j);
      const double before = C[size_t(i) * ldc + j];
      want[size_t(i) * ldc + j] = j < c.N ? 0.75 * s + beta * before : before;  // padding untouched
    }
  gemm(c.ta, c.tb, c.M, c.N, c.K, 0.75f, A.data(), lda, B.data(), ldb, beta, C.data(), ldc, nullptr, c.skip);
  if (c.skip == Skip::c_upper)  // entries above the diagonal are free: compare the rest
    for (int i = 0; i < c.M; ++i)
      for (int j = i + 1; j < c.N; ++j) C[size_t(i) * ldc + j] = float(want[size_t(i) * ldc + j]);
  EXPECT_LE(normalized_error(want, C), testing::kFp32Tolerance)
      << "ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K
      << " skip=" << int(c.skip) << " beta=" << beta;
}

TEST(Gemm, MatchesNaiveProductForEveryFormAndHint) {
  for (Skip skip : {Skip::none, Skip::c_upper, Skip::a_upper, Skip::a_lower})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [M, N, K] : {std::tuple{1, 1, 1}, {7, 5, 3}, {32, 32, 64}, {32, 64, 32}, {31, 64, 31},
                               {33, 70, 40}, {64, 64, 64}, {65, 17, 129}, {300, 257, 300},
                               {70, 64, 200}, {37, 130, 256}})  // the last two: K in blocks (panels past L1)
          for (float beta : {0.f, 1.f}) check({ta, tb, M, N, K, skip}, beta);
}

// gemm_sum: two products into one C, each with its own transpose flag, depth and triangle hint.
TEST(Gemm, SumOfTwoProductsMatchesNaive) {
  for (bool ta1 : {false, true})
    for (bool ta2 : {false, true})
      for (auto [M, N, K1, K2] : {std::tuple{32, 64, 32, 64}, {7, 5, 7, 3}, {31, 64, 31, 64}, {300, 70, 300, 20}})
        for (Skip skip1 : {Skip::none, Skip::a_upper, Skip::a_lower})
          for (float beta : {0.f, 1.f}) {
            const int lda1 = ta1 ? M : K1, lda2 = ta2 ? M : K2, ldc = N + 1;
            auto A1 = random_vector(size_t(ta1 ? K1 : M) * lda1, 1), A2 = random_vector(size_t(ta2 ? K2 : M) * lda2, 2);
            auto B1 = random_vector(size_t(K1) * N, 3), B2 = random_vector(size_t(K2) * N, 4);
            auto C = random_vector(size_t(M) * ldc, 5);
            auto a1 = [&](int i, int k) -> float& { return ta1 ? A1[size_t(k) * lda1 + i] : A1[size_t(i) * lda1 + k]; };
            auto a2 = [&](int i, int k) { return ta2 ? A2[size_t(k) * lda2 + i] : A2[size_t(i) * lda2 + k]; };
            for (int i = 0; i < M; ++i)
              for (int k = 0; k < K1; ++k)
                if ((skip1 == Skip::a_upper && k > i) || (skip1 == Skip::a_lower && k < i)) a1(i, k) = 0.f;
            std::vector<double> want(C.size());
            for (int i = 0; i < M; ++i)
              for (int j = 0; j < ldc; ++j) {
                double s = 0;
                if (j < N) {
                  for (int k = 0; k < K1; ++k) s += double(a1(i, k)) * B1[size_t(k) * N + j];
                  for (int k = 0; k < K2; ++k) s += double(a2(i, k)) * B2[size_t(k) * N + j];
                }
                const double before = C[size_t(i) * ldc + j];
                want[size_t(i) * ldc + j] = j < N ? 0.5 * s + beta * before : before;
              }
            gemm_sum(M, N, {ta1, K1, A1.data(), lda1, B1.data(), N, skip1}, {ta2, K2, A2.data(), lda2, B2.data(), N},
                     0.5f, beta, C.data(), ldc);
            EXPECT_LE(normalized_error(want, C), testing::kFp32Tolerance)
                << "ta1=" << ta1 << " ta2=" << ta2 << " M=" << M << " N=" << N << " K1=" << K1 << " K2=" << K2
                << " skip1=" << int(skip1) << " beta=" << beta;
          }
}

TEST(Gemm, ZeroDepthScalesC) {
  std::vector<float> C = {1.f, 2.f, 3.f, 4.f};
  gemm(false, false, 2, 2, 0, 1.f, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1.f, 1.5f, 2.f}));
}

}  // namespace
}  // namespace lasp
