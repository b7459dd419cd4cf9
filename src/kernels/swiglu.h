// SwiGLU gating of the MLP: out = silu(gate) * up, elementwise over n = T*F values.
#pragma once
#include "kernels/grad_store.h"

namespace lasp {

// out, gate, up (n). out may equal gate or up.
void swiglu_forward(float* out, const float* gate, const float* up, long n);

// Accumulates: dgate += dout * up * silu'(gate), dup += dout * silu(gate) (GradStore::overwrite: =).
// Gradients must not alias inputs.
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n,
                     GradStore store = GradStore::add);

}  // namespace lasp
