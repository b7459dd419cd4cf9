#include "kernels/bf16_tile.h"

#include <immintrin.h>

#include <cstring>

#include "core/check.h"
#include "kernels/tile_store.h"
#include "kernels/transpose.h"

namespace lasp {

#if defined(__AVX512BF16__) && defined(__AVX512BW__)

bool bf16_tiles_available() { return true; }

namespace {

// 16 floats (the first n of them, the rest zero) to 16 bf16, round to nearest even (vcvtneps2bf16, which also
// flushes denormals to zero).
inline __m256i to_bf16x16(const float* src, int n) {
  const __m512 x = n >= 16 ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), src);
  return (__m256i)_mm512_cvtneps_pbh(x);
}

// acc (MR rows x NV vectors of 16 columns) = sum over the K2 pairs of A's pair times B's; the last vector masked.
template <int MR, int NV>
void micro_tile(int K2, float alpha, const uint32_t* A, int lda2, const uint32_t* B, int ldb, float beta, float* C,
                int ldc, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int p = 0; p < K2; ++p) {
    const uint32_t* brow = B + long(p) * ldb;
    __m512i b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = v == NV - 1 ? _mm512_maskz_loadu_epi32(last, brow + 16 * v) : _mm512_loadu_si512(brow + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i a = _mm512_set1_epi32(int(A[long(r) * lda2 + p]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)a, (__m512bh)b[v]);
    }
  }
  store_tile<MR, NV>(acc, alpha, beta, C, ldc, last);
}

template <int MR>
void tile(int rows, int nv, int K2, float alpha, const uint32_t* A, int lda2, const uint32_t* B, int ldb, float beta,
          float* C, int ldc, __mmask16 last) {
  if constexpr (MR > 0) {
    if (rows != MR) return tile<MR - 1>(rows, nv, K2, alpha, A, lda2, B, ldb, beta, C, ldc, last);
    switch (nv) {  // 3 and 4 vectors come with at most 6 rows (24 accumulators)
      case 4: if constexpr (MR <= 6) micro_tile<MR, 4>(K2, alpha, A, lda2, B, ldb, beta, C, ldc, last); break;
      case 3: if constexpr (MR <= 6) micro_tile<MR, 3>(K2, alpha, A, lda2, B, ldb, beta, C, ldc, last); break;
      case 2: micro_tile<MR, 2>(K2, alpha, A, lda2, B, ldb, beta, C, ldc, last); break;
      default: micro_tile<MR, 1>(K2, alpha, A, lda2, B, ldb, beta, C, ldc, last); break;
    }
  }
}

}  // namespace

void bf16_tile_product(int M, int N, int K2, float alpha, const bf16* A, int lda, const uint32_t* B, int ldb,
                       float beta, float* C, int ldc) {
  LASP_CHECK(lda % 2 == 0 && K2 >= 0, "bf16_tile_product: expected an even lda and K2 >= 0, got lda={} K2={}", lda, K2);
  const uint32_t* Aw = reinterpret_cast<const uint32_t*>(A);
  const int lda2 = lda / 2;
  for (int j = 0; j < N; j += 64) {  // column panels of at most 4 vectors
    const int cols = N - j < 64 ? N - j : 64, nv = (cols + 15) / 16, mr = nv >= 3 ? 6 : 8;
    const __mmask16 last = __mmask16((1u << (cols - 16 * (nv - 1))) - 1);
    for (int i = 0; i < M; i += mr) {
      const int rows = M - i < mr ? M - i : mr;
      if (mr == 6)
        tile<6>(rows, nv, K2, alpha, Aw + long(i) * lda2, lda2, B + j, ldb, beta, C + long(i) * ldc + j, ldc, last);
      else
        tile<8>(rows, nv, K2, alpha, Aw + long(i) * lda2, lda2, B + j, ldb, beta, C + long(i) * ldc + j, ldc, last);
    }
  }
}

void pack_bf16_rows(bf16* dst, const float* src, size_t ld, int rows, int cols) {
  const int padded = (cols + 1) / 2 * 2;
  for (int r = 0; r < rows; ++r) {
    bf16* out = dst + size_t(r) * padded;
    const float* in = src + size_t(r) * ld;
    for (int c = 0; c < cols; c += 16) {
      const int n = cols - c < 16 ? cols - c : 16;
      _mm256_mask_storeu_epi16(out + c, __mmask16((1u << n) - 1), to_bf16x16(in + c, n));
    }
    if (padded > cols) out[cols] = 0;
  }
}

void pack_bf16_pairs(uint32_t* dst, const float* src, size_t ld, int rows, int cols) {
  for (int p = 0; p < (rows + 1) / 2; ++p) {
    const float *even = src + size_t(2 * p) * ld, *odd = 2 * p + 1 < rows ? even + ld : nullptr;
    uint32_t* out = dst + size_t(p) * cols;
    for (int c = 0; c < cols; c += 16) {
      const int n = cols - c < 16 ? cols - c : 16;
      const __m512i lo = _mm512_cvtepu16_epi32(to_bf16x16(even + c, n));
      const __m512i hi = odd ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16x16(odd + c, n)), 16) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(out + c, __mmask16((1u << n) - 1), _mm512_or_si512(lo, hi));
    }
  }
}

void pack_bf16_pairs_transposed(uint32_t* dst, bf16* scratch, const float* src, size_t ld, int rows, int cols) {
  // Rows in bf16 are rows of words (pairs along the columns); their transpose is B. 32-bit words move through
  // the float transpose unchanged (no arithmetic touches them).
  pack_bf16_rows(scratch, src, ld, rows, cols);
  const int words = (cols + 1) / 2;
  transpose(reinterpret_cast<float*>(dst), rows, reinterpret_cast<const float*>(scratch), words, rows, words);
}

#else

bool bf16_tiles_available() { return false; }

void bf16_tile_product(int, int, int, float, const bf16*, int, const uint32_t*, int, float, float*, int) {
  throw Error("bf16_tile_product: this build has no AVX-512-BF16 (bf16_tiles_available() is false)");
}
void pack_bf16_rows(bf16*, const float*, size_t, int, int) {
  throw Error("pack_bf16_rows: this build has no AVX-512-BF16");
}
void pack_bf16_pairs(uint32_t*, const float*, size_t, int, int) {
  throw Error("pack_bf16_pairs: this build has no AVX-512-BF16");
}
void pack_bf16_pairs_transposed(uint32_t*, bf16*, const float*, size_t, int, int) {
  throw Error("pack_bf16_pairs_transposed: this build has no AVX-512-BF16");
}

#endif

}  // namespace lasp
