// exp, sigmoid and log1p written so that loops over arrays vectorize (std::exp stays a scalar libm call unless
// fast-math is on, which lasp never enables). Accuracy: within 3 ulp of std::exp where the result is a
// normal float; 0 below that range (no denormals), inf above it; NaN for NaN.
#pragma once
#include <cstdint>
#include <cstring>

namespace lasp {

inline float vec_exp(float x_in) {
  // Computed on the range where the result is a normal float; outside it 0 (no denormals) or inf.
  // A NaN is replaced by 0 here so that it never reaches the float -> int conversion (undefined for NaN).
  float x = x_in != x_in ? 0.f : x_in;
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.72283f ? 88.72283f : x;
  // x = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two so that r is exact (Cody-Waite).
  const float n = __builtin_rintf(x * 1.44269504088896341f);
  float r = __builtin_fmaf(n, -0.693359375f, x);
  r = __builtin_fmaf(n, 2.12194440e-4f, r);
  // exp(r) by its degree-6 Taylor polynomial: truncation below 2^-24 relative on |r| <= ln2 / 2.
  float p = 1.f / 720;
  p = __builtin_fmaf(p, r, 1.f / 120);
  p = __builtin_fmaf(p, r, 1.f / 24);
  p = __builtin_fmaf(p, r, 1.f / 6);
  p = __builtin_fmaf(p, r, 0.5f);
  p = __builtin_fmaf(p, r, 1.f);
  p = __builtin_fmaf(p, r, 1.f);
  // 2^n in two halves so that n = -126 .. 128 stay representable.
  const int32_t ni = int32_t(n), half = ni / 2;
  int32_t b1 = (half + 127) << 23, b2 = (ni - half + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  const float y = p * s1 * s2;
  return x_in < -87.33654f ? 0.f : x_in > 88.72283f ? __builtin_inff() : x_in != x_in ? x_in : y;
}

// 2^x for x in [-126, 128] within 2 ulp (the minimax polynomial of softmax_attention.cpp's AVX-512 form, which
// this one matches); 0 below -126, for -inf and for NaN (a masked score); inf above 128.
inline float vec_exp2(float x_in) {
  const bool in_range = x_in >= -126.f;  // false for NaN
  float x = in_range ? x_in : -126.f;
  x = x > 128.f ? 128.f : x;
  const float r = __builtin_rintf(x), f = x - r;  // f in [-0.5, 0.5]
  float p = 1.5345811e-04f;
  p = __builtin_fmaf(p, f, 1.3399931e-03f);
  p = __builtin_fmaf(p, f, 9.6184891e-03f);
  p = __builtin_fmaf(p, f, 5.5503286e-02f);
  p = __builtin_fmaf(p, f, 2.4022646e-01f);
  p = __builtin_fmaf(p, f, 6.9314718e-01f);
  p = __builtin_fmaf(p, f, 1.0f);
  const int32_t bits = (int32_t(r) + 127) << 23;  // 2^r: r = 128 gives the bits of inf
  float scale;
  std::memcpy(&scale, &bits, 4);
  return in_range ? p * scale : 0.f;
}

// 1 / (1 + exp(-x)) without overflow.
inline float vec_sigmoid(float x) {
  const float e = vec_exp(-(x < 0 ? -x : x));
  const float s = 1.f / (1.f + e);
  return x >= 0 ? s : e * s;
}

// log(1 + u) for u in [0, 1] (what a log-sigmoid needs), within 3 ulp: 2 atanh(s) with s = u / (2 + u) <= 1/3,
// its odd series to s^15 (the next term is below 2^-28 of the sum). NaN for NaN.
inline float vec_log1p_unit(float u) {
  const float s = u / (2.f + u), w = s * s;
  float p = 1.f / 15;
  p = __builtin_fmaf(p, w, 1.f / 13);
  p = __builtin_fmaf(p, w, 1.f / 11);
  p = __builtin_fmaf(p, w, 1.f / 9);
  p = __builtin_fmaf(p, w, 1.f / 7);
  p = __builtin_fmaf(p, w, 1.f / 5);
  p = __builtin_fmaf(p, w, 1.f / 3);
  p = __builtin_fmaf(p, w, 1.f);
  return 2.f * s * p;
}

// log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)), without overflow either way.
inline float vec_log_sigmoid(float x) {
  return (x < 0.f ? x : 0.f) - vec_log1p_unit(vec_exp(x < 0.f ? x : -x));
}

}  // namespace lasp
