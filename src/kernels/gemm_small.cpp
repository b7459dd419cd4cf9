#include "kernels/gemm_small.h"

#include <immintrin.h>

#include "kernels/tile_store.h"

namespace lasp {

#if defined(__AVX512F__)

bool gemm_small_available() { return true; }

namespace {

// One term op(A) B of a product, seen from one tile: A at the tile's first row and first k, B at the
// tile's first column and first k.
struct Term {
  const float* A;
  int lda;
  const float* B;
  int ldb, K;
};

// acc (MR rows x NV vectors) += op(A) B over the term's K; the last vector of B is masked.
template <int MR, int NV, bool TransA>
__attribute__((always_inline)) inline void accumulate(__m512 (&acc)[MR][NV], Term t, __mmask16 last,
                                                      PrefetchStream* pf) {
  // Locals, not t's fields: pf->next() writes memory, which would make the compiler reload them every step.
  const float *const A = t.A, *const B = t.B;
  const long lda = t.lda, ldb = t.ldb;
  const int K = t.K;
  for (int k = 0; k < K; ++k) {
    if (pf && (k & 1)) pf->next();
    const float* brow = B + k * ldb;
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, brow + 16 * v) : _mm512_loadu_ps(brow + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(TransA ? A[k * lda + r] : A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
}

// One micro-tile: MR rows of C, NV vectors of 16 columns, = alpha (term 1 + term 2) + beta C, with a
// single pass over C (term 2 may be empty: K = 0).
template <int MR, int NV, bool TransA1, bool TransA2>
void micro_tile(const Term& t1, const Term& t2, float alpha, float beta, float* C, int ldc, __mmask16 last,
                PrefetchStream* pf) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  accumulate<MR, NV, TransA1>(acc, t1, last, pf);
  if (t2.K) accumulate<MR, NV, TransA2>(acc, t2, last, pf);
  store_tile<MR, NV>(acc, alpha, beta, C, ldc, last);
}

template <int MR, bool TA1, bool TA2>
void tile_cols(int nv, const Term& t1, const Term& t2, float alpha, float beta, float* C, int ldc, __mmask16 last,
               PrefetchStream* pf) {
  switch (nv) {  // 8-row tiles only come with nv <= 2 (column_panel), so 3 and 4 vectors stop at 6 rows
    case 4: if constexpr (MR <= 6) micro_tile<MR, 4, TA1, TA2>(t1, t2, alpha, beta, C, ldc, last, pf); break;
    case 3: if constexpr (MR <= 6) micro_tile<MR, 3, TA1, TA2>(t1, t2, alpha, beta, C, ldc, last, pf); break;
    case 2: micro_tile<MR, 2, TA1, TA2>(t1, t2, alpha, beta, C, ldc, last, pf); break;
    default: micro_tile<MR, 1, TA1, TA2>(t1, t2, alpha, beta, C, ldc, last, pf); break;
  }
}

template <int MR, bool TA1, bool TA2>
void tile(int rows, int nv, const Term& t1, const Term& t2, float alpha, float beta, float* C, int ldc,
          __mmask16 last, PrefetchStream* pf) {
  if constexpr (MR > 0) {
    if (rows == MR) tile_cols<MR, TA1, TA2>(nv, t1, t2, alpha, beta, C, ldc, last, pf);
    else tile<MR - 1, TA1, TA2>(rows, nv, t1, t2, alpha, beta, C, ldc, last, pf);
  }
}

// The term op(A) B for the tile of rows i.. (rows of them) and columns j0..: a_upper ends k at the
// tile's last row, a_lower starts it at the tile's first row.
Term term_at(const Product& f, int i, int rows, int j0) {
  int k0 = 0, k1 = f.K;
  if (f.skip == Skip::a_upper) k1 = i + rows < f.K ? i + rows : f.K;
  if (f.skip == Skip::a_lower) k0 = i < f.K ? i : f.K;
  return {f.trans_a ? f.A + long(k0) * f.lda + i : f.A + long(i) * f.lda + k0, f.lda, f.B + long(k0) * f.ldb + j0,
          f.ldb, k1 - k0};
}

// Columns j0..j0+cols-1 (at most 64) of C, all rows. c_upper (single products only) drops each tile's column
// vectors right of its last row.
template <bool TA1, bool TA2>
void column_panel(int M, int j0, int cols, const Product& f1, const Product& f2, float alpha, float beta,
                  float* C, int ldc, PrefetchStream* pf) {
  const int nv = (cols + 15) / 16;
  // Rows per tile: 16 to 24 accumulators hide the FMA latency, and 8 rows make the narrow panels (the
  // L x L scores of 16- and 32-token blocks) tile exactly.
  const int mr = nv >= 3 ? 6 : 8;
  for (int i = 0; i < M; i += mr) {
    const int rows = M - i < mr ? M - i : mr;
    int tile_nv = nv;
    if (f1.skip == Skip::c_upper) {
      const int needed = i + rows - j0;  // columns of this panel up to the tile's last row
      if (needed <= 0) continue;
      if (needed < cols) tile_nv = (needed + 15) / 16;
    }
    const __mmask16 last = tile_nv < nv ? __mmask16(0xffff) : __mmask16((1u << (cols - 16 * (nv - 1))) - 1);
    const Term t1 = term_at(f1, i, rows, j0), t2 = term_at(f2, i, rows, j0);
    float* Ci = C + long(i) * ldc + j0;
    if (mr == 6) tile<6, TA1, TA2>(rows, tile_nv, t1, t2, alpha, beta, Ci, ldc, last, pf);
    else tile<8, TA1, TA2>(rows, tile_nv, t1, t2, alpha, beta, Ci, ldc, last, pf);
  }
}

// B's panel (K x 64 columns) is re-read for every row tile: when it outgrows this much of L1 (48 KiB here),
// a single product runs K in blocks that fit, C accumulating between blocks (measured: +8-11% for the
// attention's K = 256, 64-column products; softmax attention 3-5% faster).
constexpr int kPanelFloats = 8192;  // 32 KiB

template <bool TA1, bool TA2>
void panels(int M, int N, const Product& f1, const Product& f2, float alpha, float beta, float* C, int ldc,
            PrefetchStream* pf) {
  for (int j = 0; j < N; j += 64) {
    const int cols = N - j < 64 ? N - j : 64;
    const int kc = kPanelFloats / ((cols + 15) / 16 * 16);
    if (f2.K > 0 || f1.skip != Skip::none || f1.K <= kc) {
      column_panel<TA1, TA2>(M, j, cols, f1, f2, alpha, beta, C, ldc, pf);
      continue;
    }
    for (int k0 = 0; k0 < f1.K; k0 += kc) {
      Product part = f1;
      part.K = f1.K - k0 < kc ? f1.K - k0 : kc;
      part.A = TA1 ? f1.A + long(k0) * f1.lda : f1.A + k0;
      part.B = f1.B + long(k0) * f1.ldb;
      column_panel<TA1, TA2>(M, j, cols, part, f2, alpha, k0 ? 1.f : beta, C, ldc, pf);
    }
  }
}

}  // namespace

void gemm_small(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc, PrefetchStream* pf, Skip skip) {
  const Product f{trans_a, K, A, lda, B, ldb, skip}, none{false, 0, A, lda, B, ldb};
  if (trans_a) panels<true, false>(M, N, f, none, alpha, beta, C, ldc, pf);
  else panels<false, false>(M, N, f, none, alpha, beta, C, ldc, pf);
}

void gemm_small_sum(int M, int N, const Product& p1, const Product& p2, float alpha, float beta, float* C, int ldc,
                    PrefetchStream* pf) {
  if (p1.trans_a && p2.trans_a) panels<true, true>(M, N, p1, p2, alpha, beta, C, ldc, pf);
  else if (p1.trans_a) panels<true, false>(M, N, p1, p2, alpha, beta, C, ldc, pf);
  else if (p2.trans_a) panels<false, true>(M, N, p1, p2, alpha, beta, C, ldc, pf);
  else panels<false, false>(M, N, p1, p2, alpha, beta, C, ldc, pf);
}

#else

bool gemm_small_available() { return false; }
void gemm_small(bool, int, int, int, float, const float*, int, const float*, int, float, float*, int,
                PrefetchStream*, Skip) {}
void gemm_small_sum(int, int, const Product&, const Product&, float, float, float*, int, PrefetchStream*) {}

#endif

}  // namespace lasp
