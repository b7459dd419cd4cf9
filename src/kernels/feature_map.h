// The linear-attention feature map phi, applied elementwise to q and k.
//   silu: x * sigmoid(x); elu1: elu(x) + 1 (x > 0: x + 1, else exp(x)); relu: max(x, 0); identity: x.
#pragma once
#include "kernels/grad_store.h"
#include <string>

namespace lasp {

enum class FeatureMap { silu, elu1, relu, identity };

// "silu", "elu1", "relu", "identity"; anything else throws lasp::Error listing the allowed values.
FeatureMap feature_map_from_string(const std::string& name);
const char* to_string(FeatureMap f);

// out, x (n). out must differ from x (backward needs x) unless f is identity.
void feature_map_forward(float* out, const float* x, long n, FeatureMap f);

// Accumulates: dx += dout * phi'(x) (relu: derivative 0 at x <= 0); GradStore::overwrite: dx = ...
// dx must not alias dout or x.
void feature_map_backward(float* dx, const float* dout, const float* x, long n, FeatureMap f,
                          GradStore store = GradStore::add);

}  // namespace lasp
