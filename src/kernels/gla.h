// Gated linear attention (GLA, ../shared/design/GATES.md), fp32, for H heads with keys dk wide and values dv:
// the decay is a log-gate per token, head and key dim, g <= 0.
//
//   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        o_t = q_t S_t        (S_{-1} = state_in, or 0)
//
// state_out = S_{N-1}. Chunkwise: the sequence is cut into blocks of `block` tokens; inside a block every
// factor is a product of gates exp(g) <= 1 over an interval of at most `block` tokens (never a ratio of two
// small products, never the exponential of a difference of two long sums), flushed to 0 below 1e-30, so no
// gate strength overflows or loses precision: the intra-block scores pair by pair, the state terms with the
// products from the block's start to a query and from a key to the block's end.
//
// Layouts: q, k, g and their gradients (B, N, H, dk); v, o and theirs (B, N, H, dv); states (B, H, dk, dv).
// The backward ACCUMULATES (+=) into dq, dk, dv and dstate_in, and WRITES dg (it is its scratch on the way);
// optional pointers may be null.
// The gate gradient uses the identity dL/dc_t = q_t dq_t - k_t dk_t (elementwise; this kernel's own dq, dk)
// for c the cumulative log-gate, so dg_t = sum_{t' >= t} (q_t' dq_t' - k_t' dk_t') + rowsum(S_{N-1} .* dstate_out).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/workspace.h"
#include "kernels/linear_attention.h"
#include "kernels/vec_math.h"

namespace lasp {

// The block size of the GLA kernel wherever lasp does not ask for another: the intra-block scores cost
// block / 2 exponentials per token and key dim.
constexpr int kGlaBlock = 16;

// GATES.md's log-gate of the gate projection's output z: logsigmoid(z) / normalizer, as
// min(z, 0) - log1p(exp(-|z|)) (no overflow either way); and its derivative in z, sigmoid(-z) / normalizer.
// (Vectorizable: loops over them run at SIMD width.)
inline float gla_log_gate(float z, float normalizer) { return vec_log_sigmoid(z) / normalizer; }
inline float gla_log_gate_derivative(float z, float normalizer) {
  return 1.f / ((1.f + vec_exp(z < 80.f ? z : 80.f)) * normalizer);
}

// x * y flushed to 0 below 1e-30: a product of gates never reaches the denormals.
inline float gla_gate_product(float x, float y) {
  const float p = x * y;
  return p < 1e-30f ? 0.f : p;
}

// The gate products of n rows of log-gates g (d per row, rows ld apart), the one rule for GLA's factors here and
// in sequence parallelism: gates[t] = exp(g_t), 0 at a document start (flags[t], flags may be null);
// before[t] = the product of gates over [0, t], after[t] = over (t, n-1]. Each product has at most n factors
// <= 1 and is flushed to 0 below 1e-30 (no denormals). Outputs (n, d), dense.
void gla_gate_products(float* gates, float* before, float* after, const float* g, long ld, int n, int d,
                       const uint8_t* flags);

size_t gla_forward_workspace_floats(const LinearAttentionShape& s);
size_t gla_backward_workspace_floats(const LinearAttentionShape& s);

// starts (B, N) or null: documents as in linear_attention.h; a start's gate is 0 (and so is its gradient).
void gla_forward(float* o, float* state_out, const float* q, const float* k, const float* v, const float* g,
                 const float* state_in, const uint8_t* starts, const LinearAttentionShape& s, Workspace ws);
void gla_backward(float* dq, float* dk, float* dv, float* dg, float* dstate_in, const float* dout,
                  const float* dstate_out, const float* q, const float* k, const float* v, const float* g,
                  const float* state_in, const uint8_t* starts, const LinearAttentionShape& s, Workspace ws);

}  // namespace lasp
