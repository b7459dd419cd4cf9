// Llama rotary position embedding (rotate_half convention): dimension i pairs with i + d/2,
// inv_freq_i = theta^(-2i/d), angle = pos * inv_freq_i,
//   out[i] = x[i] cos - x[i+d/2] sin,  out[i+d/2] = x[i+d/2] cos + x[i] sin.
#pragma once
#include "kernels/grad_store.h"

namespace lasp {

// out, x (B, N, H, d); pos (N): global positions (>= 0, same for every batch row, need not be contiguous).
// d must be even. out may equal x.
void rope_forward(float* out, const float* x, const int* pos, int B, int N, int H, int d, float theta);

// Accumulates: dx (B, N, H, d) += R^T dout (GradStore::overwrite: dx = R^T dout). dx must not alias dout.
void rope_backward(float* dx, const float* dout, const int* pos, int B, int N, int H, int d, float theta,
                   GradStore store = GradStore::add);

}  // namespace lasp
