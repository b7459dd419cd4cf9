#include "kernels/gemm.h"

#include <cblas.h>

#include "core/check.h"

#include "kernels/gemm_small.h"

namespace lasp {

constexpr int kSmall = 256;

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc, PrefetchStream* prefetch, Skip skip) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS implementations differ on K == 0; define it: C = beta * C
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) C[(long)i * ldc + j] = beta == 0.f ? 0.f : beta * C[(long)i * ldc + j];
    return;
  }
  // Small cache-resident products with a dense B (the linear attention's packed blocks): our
  // register-blocked kernel, which skips OpenBLAS's per-call packing. Everything else: OpenBLAS.
  if (!trans_b && ldb == N && M <= kSmall && N <= kSmall && K <= kSmall && gemm_small_available()) {
    gemm_small(trans_a, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, prefetch, skip);
    return;
  }
  // The BLAS computes everything: correct for every Skip (skipped entries of A are zero, C's upper part is free).
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_sum(int M, int N, const Product& t1, const Product& t2, float alpha, float beta, float* C, int ldc,
              PrefetchStream* prefetch) {
  LASP_CHECK(t1.skip != Skip::c_upper && t2.skip != Skip::c_upper, "gemm_sum: c_upper applies to single products only");
  const auto small = [&](const Product& t) { return t.ldb == N && M <= kSmall && N <= kSmall && t.K <= kSmall; };
  if (gemm_small_available() && small(t1) && small(t2)) {
    gemm_small_sum(M, N, t1, t2, alpha, beta, C, ldc, prefetch);
    return;
  }
  gemm(t1.trans_a, false, M, N, t1.K, alpha, t1.A, t1.lda, t1.B, t1.ldb, beta, C, ldc, prefetch, t1.skip);
  gemm(t2.trans_a, false, M, N, t2.K, alpha, t2.A, t2.lda, t2.B, t2.ldb, 1.f, C, ldc, prefetch, t2.skip);
}

void blas_set_threads(int threads) { openblas_set_num_threads(threads); }

const char* blas_config() { return openblas_get_config(); }

}  // namespace lasp
