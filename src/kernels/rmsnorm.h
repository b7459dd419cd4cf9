// RMSNorm over rows of length D: out = x / sqrt(mean(x^2) + eps) * weight.
// Also the per-head output norm of linear layers: T*H rows of length d sharing one weight of d.
#pragma once
#include "kernels/grad_store.h"

namespace lasp {

// out (T,D), rstd (T) saved for backward = 1 / sqrt(mean(x^2) + eps), x (T,D), weight (D).
// out may equal x.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* weight, int T, int D, float eps);

// The residual sum and the norm of a pre-norm block in one pass: h (T,D) += residual (T,D), then
// out = RMSNorm(h) as rmsnorm_forward. out must differ from h and residual.
void residual_rmsnorm_forward(float* h, float* out, float* rstd, const float* residual, const float* weight, int T,
                              int D, float eps);

// Accumulates: dx (T,D) += dL/dx (GradStore::overwrite: dx = dL/dx), dweight (D) += dL/dweight (always).
// dx must not alias dout or x.
void rmsnorm_backward(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                      const float* rstd, int T, int D, GradStore store = GradStore::add);

}  // namespace lasp
