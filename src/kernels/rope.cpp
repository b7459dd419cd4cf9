#include "kernels/rope.h"

#include <cmath>

#include "core/check.h"

namespace lasp {

namespace {

void rope_check(const char* name, const void* out, const void* in, const int* pos, int B, int N, int H, int d,
                float theta) {
  LASP_CHECK(B >= 0 && N >= 0 && H >= 0, "{}: B, N, H must be >= 0, got B={} N={} H={}", name, B, N, H);
  LASP_CHECK(d > 0 && d % 2 == 0, "{}: head dim d must be even and > 0, got {}", name, d);
  LASP_CHECK(theta > 0.f && std::isfinite(theta), "{}: theta must be finite and > 0, got {}", name, theta);
  if ((long)B * N * H == 0) return;
  LASP_CHECK(out && in && pos, "{}: null pointer (out={}, in={}, pos={})", name, out, in, (const void*)pos);
  for (int n = 0; n < N; ++n) LASP_CHECK(pos[n] >= 0, "{}: pos[{}] must be >= 0, got {}", name, n, pos[n]);
}

// Applies the rotation (sign = +1) or its transpose (sign = -1); accumulate adds into out.
template <bool kAccumulate>
void rope_apply(float* out, const float* x, const int* pos, int B, int N, int H, int d, float theta, float sign) {
  const int half = d / 2;
  constexpr int kChunk = 32;
  const long row = (long)H * d;  // one token of one batch row
#pragma omp parallel for if ((long)B * N * H * d > 16384)
  for (int n = 0; n < N; ++n) {
    float c[kChunk], s[kChunk];
    for (int i0 = 0; i0 < half; i0 += kChunk) {
      const int len = half - i0 < kChunk ? half - i0 : kChunk;
      for (int k = 0; k < len; ++k) {
        const double inv_freq = std::pow((double)theta, -2.0 * (i0 + k) / d);
        const double angle = (double)pos[n] * inv_freq;
        c[k] = (float)std::cos(angle);
        s[k] = sign * (float)std::sin(angle);
      }
      for (int b = 0; b < B; ++b) {
        for (int h = 0; h < H; ++h) {
          const long base = ((long)b * N + n) * row + (long)h * d + i0;
          const float* x1 = x + base;
          const float* x2 = x1 + half;
          float* o1 = out + base;
          float* o2 = o1 + half;
          for (int k = 0; k < len; ++k) {
            const float a = x1[k], bb = x2[k];
            const float r1 = a * c[k] - bb * s[k];
            const float r2 = bb * c[k] + a * s[k];
            if (kAccumulate) {
              o1[k] += r1;
              o2[k] += r2;
            } else {
              o1[k] = r1;
              o2[k] = r2;
            }
          }
        }
      }
    }
  }
}

}  // namespace

void rope_forward(float* out, const float* x, const int* pos, int B, int N, int H, int d, float theta) {
  rope_check("rope_forward", out, x, pos, B, N, H, d, theta);
  if ((long)B * N * H == 0) return;
  rope_apply<false>(out, x, pos, B, N, H, d, theta, 1.f);
}

void rope_backward(float* dx, const float* dout, const int* pos, int B, int N, int H, int d, float theta,
                   GradStore store) {
  rope_check("rope_backward", dx, dout, pos, B, N, H, d, theta);
  if ((long)B * N * H == 0) return;
  LASP_CHECK(dx != dout, "rope_backward: dx must not alias dout");
  if (store == GradStore::add) rope_apply<true>(dx, dout, pos, B, N, H, d, theta, -1.f);
  else rope_apply<false>(dx, dout, pos, B, N, H, d, theta, -1.f);
}

}  // namespace lasp
