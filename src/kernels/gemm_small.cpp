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

template <int MR, bool TransA>
void tile_cols(int nv, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta, float* C,
               int ldc, __mmask16 last, PrefetchStream* pf) {
  switch (nv) {
    case 4: if constexpr (MR <= 6) micro_tile<MR, 4, TransA>(K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf); break;
    case 3: if constexpr (MR <= 6) micro_tile<MR, 3, TransA>(K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf); break;
    case 2: micro_tile<MR, 2, TransA>(K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf); break;
    default: micro_tile<MR, 1, TransA>(K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf); break;
  }
}

// One tile of `rows` (<= MR) rows from row i of C, nv vectors of columns.
template <int MR, bool TransA>
void tile(int rows, int nv, int K, float alpha, const float* A, int lda, const float* B, int ldb, float beta,
          float* C, int ldc, __mmask16 last, PrefetchStream* pf) {
  if constexpr (MR > 0) {
    if (rows == MR) tile_cols<MR, TransA>(nv, K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf);
    else tile<MR - 1, TransA>(rows, nv, K, alpha, A, lda, B, ldb, beta, C, ldc, last, pf);
  }
}

// Columns j0..j0+cols-1 (at most 64) of C, all rows, in tiles of main_rows(nv) rows. The Skip hints shrink
// each tile: c_upper drops the column vectors right of the tile's last row, a_upper ends k at the tile's
// last row, a_lower starts k at its first row.
template <bool TransA>
void column_panel(int M, int K, int j0, int cols, float alpha, const float* A, int lda, const float* B, int ldb,
                  float beta, float* C, int ldc, PrefetchStream* pf, Skip skip) {
  const int nv = (cols + 15) / 16;
  // Rows per tile: 16 to 24 accumulators hide the FMA latency, and 8 rows make the narrow panels (the
  // L x L scores of 16- and 32-token blocks) tile exactly. (tile_cols relies on 8-row tiles having nv <= 2.)
  const int mr = nv >= 3 ? 6 : 8;
  for (int i = 0; i < M; i += mr) {
    const int rows = M - i < mr ? M - i : mr;
    int tile_nv = nv, k0 = 0, k1 = K;
    if (skip == Skip::c_upper) {
      const int needed = i + rows - j0;  // columns of this panel up to the tile's last row
      if (needed <= 0) continue;
      if (needed < cols) tile_nv = (needed + 15) / 16;
    } else if (skip == Skip::a_upper) {
      k1 = i + rows < K ? i + rows : K;
    } else if (skip == Skip::a_lower) {
      k0 = i < K ? i : K;
    }
    const __mmask16 last = tile_nv < nv ? __mmask16(0xffff) : __mmask16((1u << (cols - 16 * (nv - 1))) - 1);
    const float* Ai = TransA ? A + long(k0) * lda + i : A + long(i) * lda + k0;
    float* Ci = C + long(i) * ldc + j0;
    const float* Bk = B + long(k0) * ldb + j0;
    if (mr == 6) tile<6, TransA>(rows, tile_nv, k1 - k0, alpha, Ai, lda, Bk, ldb, beta, Ci, ldc, last, pf);
    else tile<8, TransA>(rows, tile_nv, k1 - k0, alpha, Ai, lda, Bk, ldb, beta, Ci, ldc, last, pf);
  }
}

template <bool TransA>
void gemm_small_impl(int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                     float beta, float* C, int ldc, PrefetchStream* pf, Skip skip) {
  for (int j = 0; j < N; j += 64)
    column_panel<TransA>(M, K, j, N - j < 64 ? N - j : 64, alpha, A, lda, B, ldb, beta, C, ldc, pf, skip);
}

}  // namespace

void gemm_small(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc, PrefetchStream* pf, Skip skip) {
  if (trans_a) gemm_small_impl<true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pf, skip);
  else gemm_small_impl<false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, pf, skip);
}

#else

bool gemm_small_available() { return false; }
void gemm_small(bool, int, int, int, float, const float*, int, const float*, int, float, float*, int,
                PrefetchStream*, Skip) {}

#endif

}  // namespace lasp
