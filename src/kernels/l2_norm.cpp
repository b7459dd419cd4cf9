#include "kernels/l2_norm.h"

#include <cmath>

#include "core/check.h"

namespace lasp {

namespace {

void check_sizes(const char* kernel, long rows, int n, float scale, int threads) {
  LASP_CHECK(rows >= 0, "{}: rows must be >= 0, got {}", kernel, rows);
  LASP_CHECK(n >= 1, "{}: row length n must be >= 1, got {}", kernel, n);
  LASP_CHECK(std::isfinite(scale), "{}: scale must be finite, got {}", kernel, scale);
  LASP_CHECK(threads >= 1, "{}: threads must be >= 1, got {}", kernel, threads);
}

template <GradStore S>
void backward_rows(float* dx, const float* dy, const float* x, const float* rstd, long rows, int n, float scale,
                   int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * n > 16384)
  for (long t = 0; t < rows; ++t) {
    const float* xr = x + t * n;
    const float* g = dy + t * n;
    float* d = dx + t * n;
    const float r = rstd[t];
    double dot = 0;  // y' . dy'
#pragma omp simd reduction(+ : dot)
    for (int i = 0; i < n; ++i) dot += (double)(xr[i] * r) * g[i];
    const float p = (float)(dot * scale), rs = r * scale;
#pragma omp simd
    for (int i = 0; i < n; ++i) store_grad<S>(d[i], rs * g[i] - r * (xr[i] * r) * p);
  }
}

}  // namespace

void l2_norm_forward(float* y, float* rstd, const float* x, long rows, int n, float eps, float scale, int threads) {
  check_sizes("l2_norm_forward", rows, n, scale, threads);
  LASP_CHECK(eps > 0.f && std::isfinite(eps), "l2_norm_forward: eps must be finite and > 0, got {}", eps);
  if (rows == 0) return;
  LASP_CHECK(y && rstd && x, "l2_norm_forward: null pointer (y={}, rstd={}, x={})", (const void*)y,
             (const void*)rstd, (const void*)x);
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * n > 16384)
  for (long t = 0; t < rows; ++t) {
    const float* xr = x + t * n;
    float* yr = y + t * n;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < n; ++i) ss += (double)xr[i] * xr[i];
    const float r = (float)(1.0 / std::sqrt(ss + (double)eps));
    rstd[t] = r;
#pragma omp simd
    for (int i = 0; i < n; ++i) yr[i] = (xr[i] * r) * scale;  // y' = x r first: the backward forms the same y'
  }
}

void l2_norm_backward(float* dx, const float* dy, const float* x, const float* rstd, long rows, int n, float scale,
                      int threads, GradStore store) {
  check_sizes("l2_norm_backward", rows, n, scale, threads);
  if (rows == 0) return;
  LASP_CHECK(dx && dy && x && rstd, "l2_norm_backward: null pointer (dx={}, dy={}, x={}, rstd={})", (const void*)dx,
             (const void*)dy, (const void*)x, (const void*)rstd);
  LASP_CHECK(dx != dy && dx != x, "l2_norm_backward: dx must not alias dy or x");
  if (store == GradStore::add) backward_rows<GradStore::add>(dx, dy, x, rstd, rows, n, scale, threads);
  else backward_rows<GradStore::overwrite>(dx, dy, x, rstd, rows, n, scale, threads);
}

}  // namespace lasp
