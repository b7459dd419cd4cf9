// The per-head L2 norm of Gated DeltaNet's q and k (../shared/design/DELTA.md), over rows of n:
//   y = scale x r,   r = 1 / sqrt(sum x^2 + eps)      (FLA's eps 1e-6; scale 1 / sqrt(dk) for q, else 1)
// The backward takes x and r (the layer keeps or recomputes the conv output x): with y' = x r, the unscaled output
// formed as the forward forms it, dx = r (dy' - y' (y' . dy')), dy' = scale dy, exact for any eps and scale.
#pragma once
#include "kernels/grad_store.h"

namespace lasp {

constexpr float kL2NormEps = 1e-6f;

// y, x (rows, n), rstd (rows) = r, kept for the backward. y may equal x (the backward then needs x again).
void l2_norm_forward(float* y, float* rstd, const float* x, long rows, int n, float eps, float scale, int threads);

// Accumulates: dx (rows, n) += dL/dx (GradStore::overwrite: dx = dL/dx). dx must not alias dy or x.
void l2_norm_backward(float* dx, const float* dy, const float* x, const float* rstd, long rows, int n, float scale,
                      int threads, GradStore store = GradStore::add);

}  // namespace lasp
