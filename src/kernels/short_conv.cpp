#include "kernels/short_conv.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace lasp {

namespace {

constexpr int kBlock = 64;  // channels per task: a thread owns whole channels, so dw needs no reduction

void check_sizes(const char* kernel, int B, int N, int C, int K) {
  LASP_CHECK(K >= 1, "{}: kernel width K must be >= 1, got {}", kernel, K);
  LASP_CHECK(C >= 1, "{}: channels C must be >= 1, got {}", kernel, C);
  LASP_CHECK(N >= 0, "{}: tokens N must be >= 0, got {}", kernel, N);
  LASP_CHECK(B >= 0, "{}: batch B must be >= 0, got {}", kernel, B);
}

// The first position a token may read when no start lies in [0, t]: the halo's first row, or 0 without a halo.
inline int no_start_first(const float* halo, int K) { return halo ? -(K - 1) : 0; }

// The first position readable from position N on (the next span's tokens, before their own starts).
inline int tail_first(const uint8_t* starts_row, const float* halo, int N, int K) {
  if (starts_row)
    for (int t = N - 1; t >= 0; --t)
      if (starts_row[t]) return t;
  return no_start_first(halo, K);
}

}  // namespace

void short_conv_forward(float* y, const float* x, const float* w, const float* halo, const uint8_t* starts, int B,
                        int N, int C, int K, int threads) {
  check_sizes("short_conv_forward", B, N, C, K);
  LASP_CHECK(threads >= 1, "short_conv_forward: threads must be >= 1, got {}", threads);
  if ((long)B * N == 0) return;
  LASP_CHECK(y && x && w, "short_conv_forward: null pointer (y={}, x={}, w={})", (const void*)y, (const void*)x,
             (const void*)w);
  LASP_CHECK(y != x && y != halo, "short_conv_forward: y must not alias x or halo");
  const int blocks = (C + kBlock - 1) / kBlock;
  const long span = (long)N * C, halo_span = (long)(K - 1) * C;
  const int no_start = no_start_first(halo, K);
  // Tap by tap over a block of channels: each tap's weights are gathered once into a contiguous vector.
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)B * N * C * K > 32768)
  for (long task = 0; task < (long)B * blocks; ++task) {
    const int b = (int)(task / blocks), c0 = (int)(task % blocks) * kBlock, n = std::min(kBlock, C - c0);
    const float* xb = x + b * span + c0;
    const float* hb = halo ? halo + b * halo_span + c0 : nullptr;
    const uint8_t* sb = starts ? starts + (long)b * N : nullptr;
    float* yb = y + b * span + c0;
    for (int t = 0; t < N; ++t) std::fill_n(yb + (long)t * C, n, 0.f);
    for (int i = 0; i < K; ++i) {
      float wi[kBlock];
      for (int c = 0; c < n; ++c) wi[c] = w[(long)(c0 + c) * K + i];
      int first = no_start;
      for (int t = 0; t < N; ++t) {
        if (sb && sb[t]) first = t;
        const int u = t - (K - 1) + i;
        if (u < first) continue;
        const float* src = u < 0 ? hb + (long)(u + K - 1) * C : xb + (long)u * C;
        float* dst = yb + (long)t * C;
#pragma omp simd
        for (int c = 0; c < n; ++c) dst[c] += wi[c] * src[c];
      }
    }
  }
}

void short_conv_backward(float* dx, float* dw, float* dhalo, const float* dy, const float* x, const float* w,
                         const float* halo, const uint8_t* starts, int B, int N, int C, int K, int threads) {
  check_sizes("short_conv_backward", B, N, C, K);
  LASP_CHECK(threads >= 1, "short_conv_backward: threads must be >= 1, got {}", threads);
  if ((long)B * N == 0) return;
  LASP_CHECK(dx && dw && dy && x && w, "short_conv_backward: null pointer (dx={}, dw={}, dy={}, x={}, w={})",
             (const void*)dx, (const void*)dw, (const void*)dy, (const void*)x, (const void*)w);
  for (const float* g : {(const float*)dx, (const float*)dw, (const float*)dhalo})
    LASP_CHECK(!g || (g != dy && g != x && g != w && g != halo),
               "short_conv_backward: a gradient must not alias dy, x, w or halo");
  LASP_CHECK(dx != dw && dx != dhalo && dw != dhalo, "short_conv_backward: dx, dw and dhalo must differ");
  const int blocks = (C + kBlock - 1) / kBlock;
  const long span = (long)N * C, halo_span = (long)(K - 1) * C;
  const int no_start = no_start_first(halo, K);
  // Tap i of token t read position u = t-K+1+i: dx_u += w_i dy_t (dhalo for u < 0), dw_i += x_u dy_t.
#pragma omp parallel for schedule(static) num_threads(threads) if ((long)B * N * C * K > 32768)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kBlock, n = std::min(kBlock, C - c0);
    for (int i = 0; i < K; ++i) {
      float wi[kBlock], dwi[kBlock] = {};
      for (int c = 0; c < n; ++c) wi[c] = w[(long)(c0 + c) * K + i];
      for (int b = 0; b < B; ++b) {
        const float* xb = x + b * span + c0;
        const float* dyb = dy + b * span + c0;
        const float* hb = halo ? halo + b * halo_span + c0 : nullptr;
        float* dxb = dx + b * span + c0;
        float* dhb = dhalo ? dhalo + b * halo_span + c0 : nullptr;
        const uint8_t* sb = starts ? starts + (long)b * N : nullptr;
        int first = no_start;
        for (int t = 0; t < N; ++t) {
          if (sb && sb[t]) first = t;
          const int u = t - (K - 1) + i;
          if (u < first) continue;
          const float* g = dyb + (long)t * C;
          const float* src = u < 0 ? hb + (long)(u + K - 1) * C : xb + (long)u * C;
          float* dst = u < 0 ? (dhb ? dhb + (long)(u + K - 1) * C : nullptr) : dxb + (long)u * C;
#pragma omp simd
          for (int c = 0; c < n; ++c) dwi[c] += src[c] * g[c];
          if (dst) {
#pragma omp simd
            for (int c = 0; c < n; ++c) dst[c] += wi[c] * g[c];
          }
        }
      }
      for (int c = 0; c < n; ++c) dw[(long)(c0 + c) * K + i] += dwi[c];
    }
  }
}

void short_conv_tail(float* tail, const float* x, const float* halo, const uint8_t* starts, int B, int N, int C,
                     int K) {
  check_sizes("short_conv_tail", B, N, C, K);
  if ((long)B * (K - 1) == 0) return;
  LASP_CHECK(tail && (x || N == 0), "short_conv_tail: null pointer (tail={}, x={})", (const void*)tail,
             (const void*)x);
  LASP_CHECK(tail != x && tail != halo, "short_conv_tail: tail must not alias x or halo");
  for (int b = 0; b < B; ++b) {
    const int first = tail_first(starts ? starts + (long)b * N : nullptr, halo, N, K);
    for (int j = 0; j < K - 1; ++j) {
      const int p = N - (K - 1) + j;  // the position tail row j holds
      float* dst = tail + ((long)b * (K - 1) + j) * C;
      if (p < first) std::fill_n(dst, C, 0.f);
      else if (p >= 0) std::memcpy(dst, x + ((long)b * N + p) * C, sizeof(float) * C);
      else std::memcpy(dst, halo + ((long)b * (K - 1) + p + K - 1) * C, sizeof(float) * C);
    }
  }
}

void short_conv_tail_backward(float* dx, float* dhalo, const float* dtail, const uint8_t* starts, int B, int N, int C,
                              int K) {
  check_sizes("short_conv_tail_backward", B, N, C, K);
  if ((long)B * (K - 1) == 0) return;
  LASP_CHECK(dtail && (dx || N == 0), "short_conv_tail_backward: null pointer (dx={}, dtail={})", (const void*)dx,
             (const void*)dtail);
  LASP_CHECK(dx != dtail && dhalo != dtail, "short_conv_tail_backward: dx and dhalo must not alias dtail");
  for (int b = 0; b < B; ++b) {
    // The halo's rows are readable here whether or not the forward had one: without it they were zeros, and
    // their gradient has no owner (dhalo is then null).
    const int first = tail_first(starts ? starts + (long)b * N : nullptr, dhalo, N, K);
    for (int j = 0; j < K - 1; ++j) {
      const int p = N - (K - 1) + j;
      if (p < first) continue;
      const float* src = dtail + ((long)b * (K - 1) + j) * C;
      float* dst = p >= 0 ? dx + ((long)b * N + p) * C : dhalo + ((long)b * (K - 1) + p + K - 1) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dst[c] += src[c];
    }
  }
}

void short_conv_step(float* y, float* cache, const float* x_new, const float* w, int B, int C, int K) {
  check_sizes("short_conv_step", B, 1, C, K);
  if (B == 0) return;
  LASP_CHECK(y && x_new && w && (cache || K == 1), "short_conv_step: null pointer (y={}, cache={}, x_new={}, w={})",
             (const void*)y, (const void*)cache, (const void*)x_new, (const void*)w);
  LASP_CHECK(y != cache && y != x_new, "short_conv_step: y must not alias cache or x_new");
  for (int b = 0; b < B; ++b) {
    float* cb = cache + (long)b * (K - 1) * C;
    const float* xb = x_new + (long)b * C;
    float* yb = y + (long)b * C;
    std::fill_n(yb, C, 0.f);
    for (int i = 0; i < K; ++i) {  // the forward's order of taps, so both round alike
      const float* src = i < K - 1 ? cb + (long)i * C : xb;
      for (int c = 0; c < C; ++c) yb[c] += w[(long)c * K + i] * src[c];
    }
    if (K > 1) {
      std::memmove(cb, cb + C, sizeof(float) * (K - 2) * C);
      std::memcpy(cb + (long)(K - 2) * C, xb, sizeof(float) * C);
    }
  }
}

}  // namespace lasp
