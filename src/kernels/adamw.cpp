#include "kernels/adamw.h"

#include <cmath>

#include <omp.h>

#include "core/check.h"

namespace lasp {

double grad_norm_squared(const float* g, long n) {
  LASP_CHECK(n >= 0, "grad_norm_squared: n must be >= 0, got {}", n);
  if (n == 0) return 0;
  LASP_CHECK(g, "grad_norm_squared: g is null");
  // Deterministic for a given thread count: contiguous ranges, partials added in thread order.
  double s = 0;
#pragma omp parallel if (n > 65536)
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const long i0 = n * id / nt, i1 = n * (id + 1) / nt;
    double part = 0;
#pragma omp simd reduction(+ : part)  // fixed lane order: still deterministic
    for (long i = i0; i < i1; ++i) part += (double)g[i] * g[i];
#pragma omp for ordered schedule(static, 1)
    for (int k = 0; k < nt; ++k) {
#pragma omp ordered
      s += part;
    }
  }
  return s;
}

float grad_clip_scale(double norm, float max_norm) {
  LASP_CHECK(max_norm > 0.f, "grad_clip_scale: max_norm must be > 0, got {}", max_norm);
  LASP_CHECK(norm >= 0, "grad_clip_scale: norm must be >= 0, got {}", norm);
  const double s = (double)max_norm / (norm + 1e-6);
  return s < 1.0 ? (float)s : 1.f;
}

void adamw_update(float* param, float* m, float* v, const float* grad, long n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int step, float grad_scale) {
  LASP_CHECK(n >= 0, "adamw_update: n must be >= 0, got {}", n);
  LASP_CHECK(step >= 1, "adamw_update: step is 1-based, must be >= 1, got {}", step);
  LASP_CHECK(lr >= 0.f, "adamw_update: lr must be >= 0, got {}", lr);
  LASP_CHECK(beta1 >= 0.f && beta1 < 1.f, "adamw_update: beta1 must be in [0, 1), got {}", beta1);
  LASP_CHECK(beta2 >= 0.f && beta2 < 1.f, "adamw_update: beta2 must be in [0, 1), got {}", beta2);
  LASP_CHECK(eps >= 0.f, "adamw_update: eps must be >= 0, got {}", eps);
  LASP_CHECK(weight_decay >= 0.f, "adamw_update: weight_decay must be >= 0, got {}", weight_decay);
  if (n == 0) return;
  LASP_CHECK(param && m && v && grad, "adamw_update: null pointer (param={}, m={}, v={}, grad={})",
             (const void*)param, (const void*)m, (const void*)v, (const void*)grad);
  // Scalars as PyTorch computes them (Python doubles, then used as float scalars on float tensors).
  const float decay = (float)(1.0 - (double)lr * weight_decay);
  const float one_minus_b1 = (float)(1.0 - (double)beta1);
  const float one_minus_b2 = (float)(1.0 - (double)beta2);
  const double bc1 = 1.0 - std::pow((double)beta1, step);
  const double bc2 = 1.0 - std::pow((double)beta2, step);
  const float neg_step_size = (float)(-(double)lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
#pragma omp parallel for simd if (n > 65536)
  for (long i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    const float p = param[i] * decay;
    const float mi = m[i] * beta1 + one_minus_b1 * g;
    const float vi = v[i] * beta2 + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    param[i] = p + neg_step_size * mi / denom;  // addcdiv_(m, denom, value=-step_size)
  }
}

}  // namespace lasp
