// The epilogue of the register-blocked AVX-512 products (gemm_small.cpp, bf16_tile.cpp): an MR x NV-vector tile
// of fp32 accumulators stored as C = alpha acc + beta C, the last vector of each row masked.
#pragma once
#if defined(__AVX512F__)
#include <immintrin.h>

namespace lasp {

template <int MR, int NV>
__attribute__((always_inline)) inline void store_tile(const __m512 (&acc)[MR][NV], float alpha, float beta, float* C,
                                                      int ldc, __mmask16 last) {
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

}  // namespace lasp
#endif
