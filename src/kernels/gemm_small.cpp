#include "kernels/gemm_small.h"

#include <immintrin.h>

namespace lasp {

#if defined(__AVX512F__)

bool gemm_small_available() { return true; }

namespace {

// One micro-tile: rows i0..i0+MR-1 of C, NV vectors of 16 columns from j0; the last vector is masked.
template <int MR, int NV, bool TransA>
void micro_tile(int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta, float* C,
                int ldc, __mmask16 last, PrefetchStream* pf) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    if (pf && (k & 1)) pf->next();
    const float* brow = B + long(k) * ldb;
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, brow + 16 * v) : _mm512_loadu_ps(brow + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(TransA ? A[long(k) * lda + r] : A[long(r) * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* crow = C + long(r) * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? last : __mmask16(0xffff);
      __m512 x = _mm512_mul_ps(va, acc[r][v]);
      if (beta != 0.f) x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, crow + 16 * v), x);
      _mm512_mask_storeu_ps(crow + 16 * v, m, x);
    }
  }
}

// Rows of C per micro-tile for NV vectors of columns: 16 to 24 accumulators hide the FMA latency, and
// 8 rows make the narrow panels (the L x L scores of 16- and 32-token blocks) tile exactly.
template <int NV>
constexpr int main_rows() { return NV >= 3 ? 6 : 8; }

template <int NV, bool TransA, int MR>
void tail_rows(int rows, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
               float* C, int ldc, __mmask16 last, PrefetchStream* pf) {
  if constexpr (MR > 0) {
    if (rows == MR) micro_tile<MR, NV, TransA>(K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf);
    else tail_rows<NV, TransA, MR - 1>(rows, K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf);
  }
}

template <int NV, bool TransA>
void column_panel(int M, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
                  float* C, int ldc, __mmask16 last, PrefetchStream* pf) {
  constexpr int MR = main_rows<NV>();
  auto a_at = [&](int row) { return TransA ? A + row : A + long(row) * lda; };
  int i = 0;
  for (; i + MR <= M; i += MR)
    micro_tile<MR, NV, TransA>(K, alpha, a_at(i), lda, B, ldb, beta, C + long(i) * ldc, ldc, last, pf);
  if (i < M)
    tail_rows<NV, TransA, MR - 1>(M - i, K, alpha, a_at(i), lda, B, ldb, beta, C + long(i) * ldc, ldc, last, pf);
}

template <bool TransA>
void gemm_small_impl(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                     float beta, float* C, int ldc, PrefetchStream* pf) {
  for (int j = 0; j < N; j += 64) {
    const int cols = N - j < 64 ? N - j : 64;
    const int nv = (cols + 15) / 16;
    const int tail = cols - 16 * (nv - 1);
    const __mmask16 last = __mmask16((1u << tail) - 1);
    const float* Bj = B + j;
    float* Cj = C + j;
    switch (nv) {
      case 4: column_panel<4, TransA>(M, K, alpha, A, lda, Bj, ldb, beta, Cj, ldc, last, pf); break;
      case 3: column_panel<3, TransA>(M, K, alpha, A, lda, Bj, ldb, beta, Cj, ldc, last, pf); break;
      case 2: column_panel<2, TransA>(M, K, alpha, A, lda, Bj, ldb, beta, Cj, ldc, last, pf); break;
      default: column_panel<1, TransA>(M, K, alpha, A, lda, Bj, ldb, beta, Cj, ldc, last, pf); break;
    }
  }
}

}  // namespace

void gemm_small(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc, PrefetchStream* pf) {
  if (trans_a) gemm_small_impl<true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pf);
  else gemm_small_impl<false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pf);
}

#else

bool gemm_small_available() { return false; }
void gemm_small(bool, int, int, int, float, const float*, int, const float*, int, float, float*, int,
                PrefetchStream*) {}

#endif

}  // namespace lasp
