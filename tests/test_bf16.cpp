// bf16 (kernels/bf16.h): round-to-nearest-even conversions against the IEEE rule written out bit by bit,
// the vector path against the scalar one, and gemm_bf16 against a double-precision product of the same
// rounded operands (so that only fp32 accumulation separates them), every transpose and alpha/beta.
#include <gtest/gtest.h>

#include <cmath>
#include <array>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/bf16.h"
#include "kernels/bf16_tile.h"
#include "testing.h"

using namespace lasp;

namespace {

float bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(to_bf16(bits(0x3f808000)), 0x3f80);  // exactly halfway, even below: stays
  EXPECT_EQ(to_bf16(bits(0x3f818000)), 0x3f82);  // exactly halfway, odd below: rounds up to even
  EXPECT_EQ(to_bf16(bits(0x3f808001)), 0x3f81);  // just above halfway: up
  EXPECT_EQ(to_bf16(bits(0x3f807fff)), 0x3f80);  // just below: down
  EXPECT_EQ(to_bf16(-2.5f), 0xc020);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past the largest bf16: infinity
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(bits(0x7f800001)))));  // a NaN whose payload would round to inf
  EXPECT_EQ(from_bf16(to_bf16(bits(0x00000001))), 0.f);           // the smallest denormal rounds to zero
  EXPECT_EQ(from_bf16(0x3f80), 1.0f);
}

TEST(Bf16, VectorConversionEqualsTheScalarOne) {
  std::vector<float> x = lasp::testing::random_vector(100003, 7, -1e3f, 1e3f);
  for (uint32_t u : {0x3f808000u, 0x3f818000u, 0x7f800001u, 0xff800000u, 0x7f7fffffu, 0x00000001u})
    x.push_back(bits(u));
  std::vector<bf16> got(x.size());
  to_bf16(got.data(), x.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], to_bf16(x[i])) << i;
  std::vector<float> back(x.size());
  from_bf16(back.data(), got.data(), got.size());
  for (size_t i = 0; i < 100003; ++i) ASSERT_LE(std::abs(back[i] - x[i]), std::abs(x[i]) * (1.0 / 256)) << i;
}

TEST(Bf16, ProductsEqualTheDoubleProductOfTheRoundedOperands) {
  if (std::string(bf16_path()) == "none") {  // then what must hold is the refusal
    EXPECT_THROW(gemm_bf16(false, false, 1, 1, 1, 1.f, nullptr, 1, nullptr, 1, 0.f, nullptr, 1), Error);
    return;
  }
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto [M, N, K] : {std::array<int, 3>{1, 1, 1}, {37, 29, 61}, {300, 96, 256}}) {
        const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
        const auto a32 = lasp::testing::random_vector(size_t(ta ? K : M) * lda, 1);  // stored rows x ld
        const auto b32 = lasp::testing::random_vector(size_t(tb ? N : K) * ldb, 2);
        std::vector<bf16> a(a32.size()), b(b32.size());
        to_bf16(a.data(), a32.data(), a.size());
        to_bf16(b.data(), b32.data(), b.size());
        std::vector<float> c = lasp::testing::random_vector(size_t(M) * ldc, 3), c0 = c;
        const float alpha = 0.5f, beta = 1.5f;
        gemm_bf16(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        std::vector<double> want(size_t(M) * N), got(want.size());
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            double s = 0;
            for (int k = 0; k < K; ++k)
              s += double(from_bf16(ta ? a[size_t(k) * lda + i] : a[size_t(i) * lda + k])) *
                   double(from_bf16(tb ? b[size_t(j) * ldb + k] : b[size_t(k) * ldb + j]));
            want[size_t(i) * N + j] = alpha * s + beta * double(c0[size_t(i) * ldc + j]);
            got[size_t(i) * N + j] = c[size_t(i) * ldc + j];
          }
        EXPECT_LE(lasp::testing::normalized_error(want, got), 1e-6)
            << "ta=" << ta << " tb=" << tb << " M=" << M << " N=" << N << " K=" << K;
      }
}

// The bf16-output form writes the fp32 product rounded to nearest even: at most one bf16 step from the rounded
// double product (the fp32 sums may fall on the other side of a rounding boundary), mostly exactly it.
TEST(Bf16, RoundedOutputsAreTheProductsRounded) {
  if (std::string(bf16_path()) == "none") {
    EXPECT_THROW(gemm_bf16(false, false, 1, 1, 1, 1.f, nullptr, 1, nullptr, 1, (bf16*)nullptr, 1), Error);
    return;
  }
  for (bool tb : {false, true})
    for (auto [M, N, K] : {std::array<int, 3>{1, 1, 1}, {37, 29, 61}, {300, 96, 256}}) {
      const int lda = K + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
      const auto a32 = lasp::testing::random_vector(size_t(M) * lda, 4);
      const auto b32 = lasp::testing::random_vector(size_t(tb ? N : K) * ldb, 5);
      std::vector<bf16> a(a32.size()), b(b32.size()), c(size_t(M) * ldc, 0x7fc0);  // NaN where nothing is written
      to_bf16(a.data(), a32.data(), a.size());
      to_bf16(b.data(), b32.data(), b.size());
      gemm_bf16(false, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, c.data(), ldc);
      long exact = 0, off = 0;
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
          double s = 0;
          for (int k = 0; k < K; ++k)
            s += double(from_bf16(a[size_t(i) * lda + k])) * double(from_bf16(tb ? b[size_t(j) * ldb + k] : b[size_t(k) * ldb + j]));
          const bf16 want = to_bf16(float(0.5 * s)), got = c[size_t(i) * ldc + j];
          exact += got == want;
          off += std::abs(int(int16_t(got)) - int(int16_t(want))) > 1 || (got ^ want) >> 15;  // a step or a sign
        }
      const std::string label = "tb=" + std::to_string(tb) + " M=" + std::to_string(M) + " N=" + std::to_string(N);
      EXPECT_EQ(off, 0) << label;
      EXPECT_GE(exact, long(0.95 * M * N)) << label;
      for (int i = 0; i < M; ++i)
        for (int j = N; j < ldc; ++j) EXPECT_EQ(c[size_t(i) * ldc + j], 0x7fc0) << label << ": wrote past the row";
    }
}

TEST(Bf16, PathIsNamed) {
  const std::string path = bf16_path();
  EXPECT_TRUE(path == "AMX" || path == "AVX-512-BF16" || path == "none") << path;
}

}  // namespace

// ---- bf16 tiles (kernels/bf16_tile.h): the attention kernel's products on AVX-512-BF16 ----

// C = alpha A B + beta C0 in double from the same rounded operands as the packers give (A's rows; B from X in
// pairs along its rows, or from X^T in pairs along X's columns).
TEST(Bf16Tile, ProductsEqualDoubleOfTheRoundedOperands) {
  if (!bf16_tiles_available()) {  // then the products refuse, naming why
    std::vector<float> C(1);
    EXPECT_THROW(bf16_tile_product(1, 1, 1, 1.f, nullptr, 2, nullptr, 1, 0.f, C.data(), 1), Error);
    return;
  }
  uint32_t seed = 7;
  for (int M : {1, 7, 8, 13})
    for (int N : {1, 17, 33, 64, 70})
      for (int K : {1, 2, 7, 64, 129})
        for (bool transposed : {false, true}) {
          const std::vector<float> a = lasp::testing::random_vector(size_t(M) * K, seed++);
          // B (K x N) as the packer sees it: X = B (K x N), or X = B^T (N x K).
          const std::vector<float> x = lasp::testing::random_vector(size_t(K) * N, seed++);
          const std::vector<float> c0 = lasp::testing::random_vector(size_t(M) * N, seed++);
          const int K2 = (K + 1) / 2;
          std::vector<bf16> A(size_t(M) * 2 * K2), scratch(size_t(N) * 2 * K2);
          std::vector<uint32_t> B(size_t(K2) * N);
          pack_bf16_rows(A.data(), a.data(), K, M, K);
          if (transposed) pack_bf16_pairs_transposed(B.data(), scratch.data(), x.data(), K, N, K);
          else pack_bf16_pairs(B.data(), x.data(), N, K, N);
          std::vector<float> C = c0;
          const float alpha = 0.75f, beta = M % 2 ? 0.f : -0.5f;
          bf16_tile_product(M, N, K2, alpha, A.data(), 2 * K2, B.data(), N, beta, C.data(), N);
          std::vector<double> ref(size_t(M) * N);
          for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) {
              double sum = 0;
              for (int k = 0; k < K; ++k)
                sum += double(from_bf16(to_bf16(a[size_t(i) * K + k]))) *
                       from_bf16(to_bf16(transposed ? x[size_t(j) * K + k] : x[size_t(k) * N + j]));
              ref[size_t(i) * N + j] = alpha * sum + beta * c0[size_t(i) * N + j];
            }
          EXPECT_LE(lasp::testing::normalized_error(ref, C), 1e-12)
              << "M=" << M << " N=" << N << " K=" << K << " transposed=" << transposed;
        }
}
