// The gemm seam against a naive double product: every transpose combination, beta 0 and 1, shapes that go to
// the register-blocked kernel (small, dense B) and to OpenBLAS, and every Skip hint with the triangular
// operands it promises.
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
                               {33, 70, 40}, {64, 64, 64}, {65, 17, 129}, {300, 257, 300}})
          for (float beta : {0.f, 1.f}) check({ta, tb, M, N, K, skip}, beta);
}

TEST(Gemm, ZeroDepthScalesC) {
  std::vector<float> C = {1.f, 2.f, 3.f, 4.f};
  gemm(false, false, 2, 2, 0, 1.f, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1.f, 1.5f, 2.f}));
}

}  // namespace
}  // namespace lasp
