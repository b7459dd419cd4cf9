// The BLAS seam: every matrix product in lasp goes through gemm(). Row-major, like the tensors.
// C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, op = transpose when trans_* is true.
// Called inside an OpenMP parallel region it runs on one thread (the OpenMP build of OpenBLAS detects
// the region); called outside, it uses the BLAS threads (blas_set_threads).
#pragma once

namespace lasp {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);

// Threads the BLAS may use for a product called outside a parallel region.
void blas_set_threads(int threads);
const char* blas_config();

}  // namespace lasp
