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

// One chunk of one head row: the pairs (i, i + d/2) for i in [i0, i0 + len), with c, s the chunk's cosines
// and sines; sign = -1 applies the transpose (backward).
template <bool kAccumulate>
inline void rotate(float* out, const float* x, const float* c, const float* s, int len, int half, float sign) {
  const float* x1 = x;
  const float* x2 = x + half;
  float* o1 = out;
  float* o2 = out + half;
  for (int k = 0; k < len; ++k) {
    const float a = x1[k], bb = x2[k], sk = sign * s[k];
    const float r1 = a * c[k] - bb * sk;
    const float r2 = bb * c[k] + a * sk;
    if (kAccumulate) {
      o1[k] += r1;
      o2[k] += r2;
    } else {
      o1[k] = r1;
      o2[k] = r2;
    }
  }
}

// cos and sin of positions pos * theta^(-2i/d), i in [i0, i0 + len), computed in double.
void angles(float* c, float* s, int pos, int i0, int len, int d, float theta) {
  for (int k = 0; k < len; ++k) {
    const double angle = (double)pos * std::pow((double)theta, -2.0 * (i0 + k) / d);
    c[k] = (float)std::cos(angle);
    s[k] = (float)std::sin(angle);
  }
}

// Applies the rotation (sign = +1) or its transpose (sign = -1) with angles from the table (cos, sin of
// (N, d/2)) or, when table is null, computed on the fly; accumulate adds into out.
template <bool kAccumulate>
void rope_apply(float* out, const float* x, const RopeTable* table, const int* pos, int B, int N, int H, int d,
                float theta, float sign) {
  const int half = d / 2;
  constexpr int kChunk = 32;
  const long row = (long)H * d;  // one token of one batch row
#pragma omp parallel for if ((long)B * N * H * d > 16384)
  for (int n = 0; n < N; ++n) {
    float cbuf[kChunk], sbuf[kChunk];
    for (int i0 = 0; i0 < half; i0 += kChunk) {
      const int len = half - i0 < kChunk ? half - i0 : kChunk;
      const float *c = cbuf, *s = sbuf;
      if (table) {
        c = table->cos.data() + (long)n * half + i0;
        s = table->sin.data() + (long)n * half + i0;
      } else {
        angles(cbuf, sbuf, pos[n], i0, len, d, theta);
      }
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h) {
          const long base = ((long)b * N + n) * row + (long)h * d + i0;
          rotate<kAccumulate>(out + base, x + base, c, s, len, half, sign);
        }
    }
  }
}

}  // namespace

void rope_forward(float* out, const float* x, const int* pos, int B, int N, int H, int d, float theta) {
  rope_check("rope_forward", out, x, pos, B, N, H, d, theta);
  if ((long)B * N * H == 0) return;
  rope_apply<false>(out, x, nullptr, pos, B, N, H, d, theta, 1.f);
}

void rope_backward(float* dx, const float* dout, const int* pos, int B, int N, int H, int d, float theta,
                   GradStore store) {
  rope_check("rope_backward", dx, dout, pos, B, N, H, d, theta);
  if ((long)B * N * H == 0) return;
  LASP_CHECK(dx != dout, "rope_backward: dx must not alias dout");
  if (store == GradStore::add) rope_apply<true>(dx, dout, nullptr, pos, B, N, H, d, theta, -1.f);
  else rope_apply<false>(dx, dout, nullptr, pos, B, N, H, d, theta, -1.f);
}

RopeTable rope_table(const int* pos, int N, int d, float theta) {
  LASP_CHECK(N >= 0, "rope_table: N must be >= 0, got {}", N);
  LASP_CHECK(d > 0 && d % 2 == 0, "rope_table: head dim d must be even and > 0, got {}", d);
  LASP_CHECK(theta > 0.f && std::isfinite(theta), "rope_table: theta must be finite and > 0, got {}", theta);
  LASP_CHECK(N == 0 || pos, "rope_table: pos is null");
  for (int n = 0; n < N; ++n) LASP_CHECK(pos[n] >= 0, "rope_table: pos[{}] must be >= 0, got {}", n, pos[n]);
  RopeTable t;
  t.N = N;
  t.d = d;
  t.cos.resize(size_t(N) * (d / 2));
  t.sin.resize(t.cos.size());
#pragma omp parallel for if ((long)N * d > 16384)
  for (int n = 0; n < N; ++n) angles(&t.cos[size_t(n) * (d / 2)], &t.sin[size_t(n) * (d / 2)], pos[n], 0, d / 2, d, theta);
  return t;
}

void rope_forward(float* out, const float* x, const RopeTable& t, int B, int H) {
  LASP_CHECK(B >= 0 && H >= 0, "rope_forward: B, H must be >= 0, got B={} H={}", B, H);
  if ((long)B * t.N * H == 0) return;
  LASP_CHECK(out && x, "rope_forward: null pointer (out={}, x={})", (const void*)out, (const void*)x);
  rope_apply<false>(out, x, &t, nullptr, B, t.N, H, t.d, 0.f, 1.f);
}

void rope_backward(float* dx, const float* dout, const RopeTable& t, int B, int H, GradStore store) {
  LASP_CHECK(B >= 0 && H >= 0, "rope_backward: B, H must be >= 0, got B={} H={}", B, H);
  if ((long)B * t.N * H == 0) return;
  LASP_CHECK(dx && dout, "rope_backward: null pointer (dx={}, dout={})", (const void*)dx, (const void*)dout);
  LASP_CHECK(dx != dout, "rope_backward: dx must not alias dout");
  if (store == GradStore::add) rope_apply<true>(dx, dout, &t, nullptr, B, t.N, H, t.d, 0.f, -1.f);
  else rope_apply<false>(dx, dout, &t, nullptr, B, t.N, H, t.d, 0.f, -1.f);
}

}  // namespace lasp
