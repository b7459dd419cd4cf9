// exp and sigmoid written so that loops over arrays vectorize (std::exp stays a scalar libm call unless
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

// 1 / (1 + exp(-x)) without overflow.
inline float vec_sigmoid(float x) {
  const float e = vec_exp(-(x < 0 ? -x : x));
  const float s = 1.f / (1.f + e);
  return x >= 0 ? s : e * s;
}

}  // namespace lasp
