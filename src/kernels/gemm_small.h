// Register-blocked AVX-512 product for the small, cache-resident blocks of the attention kernels, where
// a BLAS library's per-call overhead and head-strided operands cost half its speed.
// C (M x N) = alpha * op(A) * B + beta * C, op(A) = A (M x K) or A^T (A stored K x M); B row-major K x N.
// Fast when B is dense (ldb close to N): it is re-read for every 6 rows of C.
#pragma once
#include "kernels/gemm.h"

namespace lasp {

// False when this build has no AVX-512 (the caller then uses the BLAS).
bool gemm_small_available();
void gemm_small(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc, PrefetchStream* prefetch = nullptr, Skip skip = Skip::none);

// gemm_sum for dense B operands (ldb close to N).
void gemm_small_sum(int M, int N, const Product& t1, const Product& t2, float alpha, float beta, float* C, int ldc,
                    PrefetchStream* prefetch = nullptr);

}  // namespace lasp
