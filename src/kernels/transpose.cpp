#include "kernels/transpose.h"

#include <immintrin.h>

namespace lasp {

#if defined(__AVX512F__)
namespace {

// Transposes one 16 x 16 tile: rows r[0..15] in, columns out (r[i] becomes column i).
inline void transpose_tile(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int i = 0; i < 16; i += 4) {
    r[i] = lo(t[i], t[i + 2]);
    r[i + 1] = hi(t[i], t[i + 2]);
    r[i + 2] = lo(t[i + 1], t[i + 3]);
    r[i + 3] = hi(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

}  // namespace

void transpose(float* dst, int ldd, const float* src, int lds, int rows, int cols) {
  int i = 0;
  for (; i + 16 <= rows; i += 16) {
    int j = 0;
    for (; j + 16 <= cols; j += 16) {
      __m512 r[16];
      for (int x = 0; x < 16; ++x) r[x] = _mm512_loadu_ps(src + long(i + x) * lds + j);
      transpose_tile(r);
      for (int x = 0; x < 16; ++x) _mm512_storeu_ps(dst + long(j + x) * ldd + i, r[x]);
    }
    for (; j < cols; ++j)
      for (int x = 0; x < 16; ++x) dst[long(j) * ldd + i + x] = src[long(i + x) * lds + j];
  }
  for (; i < rows; ++i)
    for (int j = 0; j < cols; ++j) dst[long(j) * ldd + i] = src[long(i) * lds + j];
}

#else

void transpose(float* dst, int ldd, const float* src, int lds, int rows, int cols) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) dst[long(j) * ldd + i] = src[long(i) * lds + j];
}

#endif

}  // namespace lasp
