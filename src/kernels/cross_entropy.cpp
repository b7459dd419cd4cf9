#include "kernels/cross_entropy.h"

#include <cmath>

#include <omp.h>

#include "core/check.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

void cross_entropy_check(const char* name, const float* logits, const int* targets, int T, int V) {
  LASP_CHECK(T >= 0, "{}: T must be >= 0, got {}", name, T);
  LASP_CHECK(V > 0, "{}: V must be > 0, got {}", name, V);
  if (T == 0) return;
  LASP_CHECK(logits && targets, "{}: null pointer (logits={}, targets={})", name, (const void*)logits,
             (const void*)targets);
  for (int t = 0; t < T; ++t)
    LASP_CHECK(targets[t] == -1 || (targets[t] >= 0 && targets[t] < V),
               "{}: target at position {} must be -1 (ignore) or in [0, {}), got {}", name, t, V, targets[t]);
}

// max and log(sum(exp(l - max))) of one row: exponentials in float (vectorized, l - max is exact enough:
// both are floats of the same row), their sum in double.
inline void row_lse(const float* l, int V, float& mx, double& log_sum) {
  float m = l[0];
#pragma omp simd reduction(max : m)
  for (int i = 1; i < V; ++i) m = l[i] > m ? l[i] : m;
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < V; ++i) s += (double)vec_exp(l[i] - m);
  mx = m;
  log_sum = std::log(s);
}

}  // namespace

double cross_entropy_forward(float* losses, const float* logits, const int* targets, int T, int V) {
  cross_entropy_check("cross_entropy_forward", logits, targets, T, V);
  // Deterministic sum for a given thread count: each thread sums a contiguous range, partials are added in
  // thread order (an OpenMP reduction combines them in arrival order).
  double total = 0;
#pragma omp parallel if ((long)T * V > 16384)
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int t0 = (int)((long)T * id / nt), t1 = (int)((long)T * (id + 1) / nt);
    double part = 0;
    for (int t = t0; t < t1; ++t) {
      double loss = 0;
      if (targets[t] >= 0) {
        const float* l = logits + (long)t * V;
        float mx;
        double log_sum;
        row_lse(l, V, mx, log_sum);
        loss = log_sum - ((double)l[targets[t]] - (double)mx);
        part += loss;
      }
      if (losses) losses[t] = (float)loss;
    }
#pragma omp for ordered schedule(static, 1)
    for (int k = 0; k < nt; ++k) {
#pragma omp ordered
      total += part;
    }
  }
  return total;
}

void cross_entropy_backward(float* dlogits, const float* logits, const int* targets, int T, int V, float dloss) {
  cross_entropy_check("cross_entropy_backward", logits, targets, T, V);
  if (T == 0) return;
  LASP_CHECK(dlogits, "cross_entropy_backward: dlogits is null");
  LASP_CHECK(dlogits != logits, "cross_entropy_backward: dlogits must not alias logits (it accumulates)");
#pragma omp parallel for if ((long)T * V > 16384)
  for (int t = 0; t < T; ++t) {
    if (targets[t] < 0) continue;
    const float* l = logits + (long)t * V;
    float* d = dlogits + (long)t * V;
    float mx;
    double log_sum;
    row_lse(l, V, mx, log_sum);
    const float ls = (float)log_sum;  // p_i = exp((l_i - max) - log_sum)
#pragma omp simd
    for (int i = 0; i < V; ++i) d[i] += dloss * vec_exp((l[i] - mx) - ls);
    d[targets[t]] -= dloss;
  }
}

}  // namespace lasp
