#include "kernels/rmsnorm.h"

#include <cmath>

#include "core/check.h"

namespace lasp {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int T, int D, float eps) {
  LASP_CHECK(T >= 0, "rmsnorm_forward: T must be >= 0, got {}", T);
  LASP_CHECK(D > 0, "rmsnorm_forward: D must be > 0, got {}", D);
  LASP_CHECK(eps >= 0.f && std::isfinite(eps), "rmsnorm_forward: eps must be finite and >= 0, got {}", eps);
  if (T == 0) return;
  LASP_CHECK(out && rstd && x && weight, "rmsnorm_forward: null pointer (out={}, rstd={}, x={}, weight={})",
             (const void*)out, (const void*)rstd, (const void*)x, (const void*)weight);
#pragma omp parallel for if ((long)T * D > 16384)
  for (int t = 0; t < T; ++t) {
    const float* xr = x + (long)t * D;
    float* o = out + (long)t * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += (double)xr[i] * xr[i];
    const float r = (float)(1.0 / std::sqrt(ss / D + (double)eps));
    rstd[t] = r;
    for (int i = 0; i < D; ++i) o[i] = xr[i] * r * weight[i];
  }
}

void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int T, int D) {
  LASP_CHECK(T >= 0, "rmsnorm_backward: T must be >= 0, got {}", T);
  LASP_CHECK(D > 0, "rmsnorm_backward: D must be > 0, got {}", D);
  if (T == 0) return;
  LASP_CHECK(dx && dweight && dout && x && weight && rstd,
             "rmsnorm_backward: null pointer (dx={}, dweight={}, dout={}, x={}, weight={}, rstd={})",
             (const void*)dx, (const void*)dweight, (const void*)dout, (const void*)x, (const void*)weight,
             (const void*)rstd);
  LASP_CHECK(dx != dout && dx != x, "rmsnorm_backward: dx must not alias dout or x");
  // y_i = x_i r w_i, r = (mean(x^2) + eps)^(-1/2), dr/dx_i = -r^3 x_i / D
  // dx_i = r w_i g_i - r^3 x_i / D * sum_j g_j w_j x_j
#pragma omp parallel for if ((long)T * D > 16384)
  for (int t = 0; t < T; ++t) {
    const float* xr = x + (long)t * D;
    const float* g = dout + (long)t * D;
    float* d = dx + (long)t * D;
    const float r = rstd[t];
    double dot = 0;
    for (int i = 0; i < D; ++i) dot += (double)g[i] * weight[i] * xr[i];
    const float c = (float)(dot * r * r * r / D);
    for (int i = 0; i < D; ++i) d[i] += r * weight[i] * g[i] - c * xr[i];
  }
  // dweight_i += sum_t g_ti x_ti r_t: race-free, each thread owns a block of columns.
  constexpr int kBlock = 64;
  const int blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for if (blocks > 1 && (long)T * D > 16384)
  for (int b = 0; b < blocks; ++b) {
    const int i0 = b * kBlock, i1 = i0 + kBlock < D ? i0 + kBlock : D;
    float acc[kBlock] = {};
    for (int t = 0; t < T; ++t) {
      const float* xr = x + (long)t * D;
      const float* g = dout + (long)t * D;
      const float r = rstd[t];
      for (int i = i0; i < i1; ++i) acc[i - i0] += g[i] * xr[i] * r;
    }
    for (int i = i0; i < i1; ++i) dweight[i] += acc[i - i0];
  }
}

}  // namespace lasp
