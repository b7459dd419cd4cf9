#include "kernels/swiglu.h"

#include <cmath>

#include "core/check.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

template <GradStore S>
void swiglu_backward_loop(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n) {
#pragma omp parallel for simd if (n > 32768)
  for (long i = 0; i < n; ++i) {
    const float g = gate[i], s = vec_sigmoid(g), go = dout[i];
    store_grad<S>(dgate[i], go * up[i] * s * (1.f + g * (1.f - s)));
    store_grad<S>(dup[i], go * g * s);
  }
}

}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, long n) {
  LASP_CHECK(n >= 0, "swiglu_forward: n must be >= 0, got {}", n);
  if (n == 0) return;
  LASP_CHECK(out && gate && up, "swiglu_forward: null pointer (out={}, gate={}, up={})", (const void*)out,
             (const void*)gate, (const void*)up);
#pragma omp parallel for simd if (n > 32768)
  for (long i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g * vec_sigmoid(g) * up[i];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n,
                     GradStore store) {
  LASP_CHECK(n >= 0, "swiglu_backward: n must be >= 0, got {}", n);
  if (n == 0) return;
  LASP_CHECK(dgate && dup && dout && gate && up,
             "swiglu_backward: null pointer (dgate={}, dup={}, dout={}, gate={}, up={})", (const void*)dgate,
             (const void*)dup, (const void*)dout, (const void*)gate, (const void*)up);
  LASP_CHECK(dgate != dup && dgate != dout && dup != dout && dgate != gate && dgate != up && dup != gate &&
                 dup != up,
             "swiglu_backward: gradients must not alias each other, dout, gate or up");
  if (store == GradStore::add) swiglu_backward_loop<GradStore::add>(dgate, dup, dout, gate, up, n);
  else swiglu_backward_loop<GradStore::overwrite>(dgate, dup, dout, gate, up, n);
}

}  // namespace lasp
