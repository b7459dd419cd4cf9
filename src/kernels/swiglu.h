// SwiGLU gating of the MLP: out = silu(gate) * up, elementwise over n = T*F values.
#pragma once
#include "kernels/bf16.h"
#include "kernels/grad_store.h"

namespace lasp {

// out, gate, up (n). out may equal gate or up.
void swiglu_forward(float* out, const float* gate, const float* up, long n);

// The same rounded to bf16 as it is written (the next product's operand under precision bf16: no fp32 pass between).
void swiglu_forward_bf16(bf16* out, const float* gate, const float* up, long n);
void swiglu_forward_bf16(bf16* out, const bf16* gate, const bf16* up, long n);  // gate and up as bf16 products wrote them

// Accumulates: dgate += dout * up * silu'(gate), dup += dout * silu(gate) (GradStore::overwrite: =).
// Gradients must not alias inputs.
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n,
                     GradStore store = GradStore::add);
// Writes both rounded to bf16 (GradStore::overwrite), for dout, gate, up of `rows` rows of `width` values: row r's
// gradients at dgate + r ld and dup + r ld (so that dgate and dup may share the rows of one operand, ld = 2 width).
void swiglu_backward_bf16(bf16* dgate, bf16* dup, long ld, const float* dout, const float* gate, const float* up,
                          long rows, long width);
void swiglu_backward_bf16(bf16* dgate, bf16* dup, long ld, const float* dout, const bf16* gate, const bf16* up,
                          long rows, long width);

}  // namespace lasp
