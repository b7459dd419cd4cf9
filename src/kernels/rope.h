// Llama rotary position embedding (rotate_half convention): dimension i pairs with i + d/2,
// inv_freq_i = theta^(-2i/d), angle = pos * inv_freq_i,
//   out[i] = x[i] cos - x[i+d/2] sin,  out[i+d/2] = x[i+d/2] cos + x[i] sin.
#pragma once
#include <vector>

#include "kernels/grad_store.h"

namespace lasp {

// out, x (B, N, H, d); pos (N): global positions (>= 0, same for every batch row, need not be contiguous).
// d must be even. out may equal x.
void rope_forward(float* out, const float* x, const int* pos, int B, int N, int H, int d, float theta);

// Accumulates: dx (B, N, H, d) += R^T dout (GradStore::overwrite: dx = R^T dout). dx must not alias dout.
void rope_backward(float* dx, const float* dout, const int* pos, int B, int N, int H, int d, float theta,
                   GradStore store = GradStore::add);

// The same with the angles looked up instead of computed (a model's positions never change; computing
// pow, cos and sin on every call cost ~1.5% of a training step): cos and sin of (N, d/2), as the calls
// above compute them, so the results are identical.
struct RopeTable {
  std::vector<float> cos, sin;
  int N = 0, d = 0;
};
RopeTable rope_table(const int* pos, int N, int d, float theta);
void rope_forward(float* out, const float* x, const RopeTable& table, int B, int H);
void rope_backward(float* dx, const float* dout, const RopeTable& table, int B, int H,
                   GradStore store = GradStore::add);

}  // namespace lasp
