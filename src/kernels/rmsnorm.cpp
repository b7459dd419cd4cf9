#include "kernels/rmsnorm.h"

#include <omp.h>

#include <cmath>
#include <vector>

#include "core/check.h"

namespace lasp {

namespace {

void check_forward(const char* kernel, const float* out, const float* rstd, const float* x, const float* weight,
                   int T, int D, float eps) {
  LASP_CHECK(T >= 0, "{}: T must be >= 0, got {}", kernel, T);
  LASP_CHECK(D > 0, "{}: D must be > 0, got {}", kernel, D);
  LASP_CHECK(eps >= 0.f && std::isfinite(eps), "{}: eps must be finite and >= 0, got {}", kernel, eps);
  LASP_CHECK(T == 0 || (out && rstd && x && weight), "{}: null pointer (out={}, rstd={}, x={}, weight={})", kernel,
             (const void*)out, (const void*)rstd, (const void*)x, (const void*)weight);
}

// One row: o = x r w, returns r = 1 / sqrt(mean(x^2) + eps) (sum of squares in double).
inline float norm_row(float* o, const float* x, const float* weight, int D, float eps) {
  double ss = 0;
#pragma omp simd reduction(+ : ss)  // vectorized (a serial chain of double adds was the bottleneck)
  for (int i = 0; i < D; ++i) ss += (double)x[i] * x[i];
  const float r = (float)(1.0 / std::sqrt(ss / D + (double)eps));
  for (int i = 0; i < D; ++i) o[i] = x[i] * r * weight[i];
  return r;
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int T, int D, float eps) {
  check_forward("rmsnorm_forward", out, rstd, x, weight, T, D, eps);
#pragma omp parallel for if ((long)T * D > 16384)
  for (int t = 0; t < T; ++t) rstd[t] = norm_row(out + (long)t * D, x + (long)t * D, weight, D, eps);
}

void residual_rmsnorm_forward(float* h, float* out, float* rstd, const float* residual, const float* weight, int T,
                              int D, float eps) {
  check_forward("residual_rmsnorm_forward", out, rstd, h, weight, T, D, eps);
  LASP_CHECK(T == 0 || residual, "residual_rmsnorm_forward: residual is null");
  LASP_CHECK(out != h && out != residual, "residual_rmsnorm_forward: out must differ from h and residual");
#pragma omp parallel for if ((long)T * D > 16384)
  for (int t = 0; t < T; ++t) {
    float* hr = h + (long)t * D;
    const float* rr = residual + (long)t * D;
    for (int i = 0; i < D; ++i) hr[i] += rr[i];
    rstd[t] = norm_row(out + (long)t * D, hr, weight, D, eps);
  }
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int T, int D, GradStore store) {
  LASP_CHECK(T >= 0, "rmsnorm_backward: T must be >= 0, got {}", T);
  LASP_CHECK(D > 0, "rmsnorm_backward: D must be > 0, got {}", D);
  if (T == 0) return;
  LASP_CHECK(dx && dweight && dout && x && weight && rstd,
             "rmsnorm_backward: null pointer (dx={}, dweight={}, dout={}, x={}, weight={}, rstd={})",
             (const void*)dx, (const void*)dweight, (const void*)dout, (const void*)x, (const void*)weight,
             (const void*)rstd);
  LASP_CHECK(dx != dout && dx != x, "rmsnorm_backward: dx must not alias dout or x");
  // y_i = x_i r w_i, r = (mean(x^2) + eps)^(-1/2), dr/dx_i = -r^3 x_i / D
  // dx_i = r w_i g_i - r^3 x_i / D * sum_j g_j w_j x_j;  dweight_i += sum_t g_ti x_ti r_t
  // One pass over the rows: each thread takes a contiguous range and sums its part of dweight, and the parts are
  // added in thread order (deterministic for a given thread count; a second pass for dweight read g and x again).
  const int threads = (long)T * D > 16384 ? omp_get_max_threads() : 1;
  std::vector<float> parts(size_t(threads) * D, 0.f);
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    float* part = parts.data() + size_t(id) * D;
    for (long t = long(T) * id / nt, end = long(T) * (id + 1) / nt; t < end; ++t) {
      const float* xr = x + t * D;
      const float* g = dout + t * D;
      float* d = dx + t * D;
      const float r = rstd[t];
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int i = 0; i < D; ++i) dot += (double)g[i] * weight[i] * xr[i];
      const float c = (float)(dot * r * r * r / D);
      if (store == GradStore::add)
        for (int i = 0; i < D; ++i) d[i] += r * weight[i] * g[i] - c * xr[i];
      else
        for (int i = 0; i < D; ++i) d[i] = r * weight[i] * g[i] - c * xr[i];
      for (int i = 0; i < D; ++i) part[i] += g[i] * xr[i] * r;
    }
  }
  for (int id = 0; id < threads; ++id)
    for (int i = 0; i < D; ++i) dweight[i] += parts[size_t(id) * D + i];
}

}  // namespace lasp
