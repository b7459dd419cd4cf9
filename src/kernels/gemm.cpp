#include "kernels/gemm.h"

#include <cblas.h>

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

void blas_set_threads(int threads) { openblas_set_num_threads(threads); }

const char* blas_config() { return openblas_get_config(); }

}  // namespace lasp
