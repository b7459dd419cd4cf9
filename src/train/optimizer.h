// AdamW over the model's tensor table (PyTorch semantics), with global gradient-norm clipping.
// Weight decay applies to the 2-D tensors (matrices and embeddings), not to the norm weights.
#pragma once
#include <vector>

#include "model/params.h"

namespace lasp {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;
  float grad_clip = 1.0f;  // max global gradient norm; <= 0 turns clipping off
};

class AdamW {
 public:
  AdamW(const ParamLayout& layout, const AdamWConfig& config);
  // One update of params from grads at learning rate lr; returns the gradient norm before clipping. A
  // non-finite norm (a diverged step) returns at once, with params and moments untouched.
  double step(std::vector<float>& params, const std::vector<float>& grads, float lr);
  int steps() const { return step_; }
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }
  void set_steps(int steps) { step_ = steps; }

 private:
  const ParamLayout& layout_;
  AdamWConfig config_;
  std::vector<float> m_, v_;
  int step_ = 0;
};

// Llama-style initialisation from a seed, each tensor by its TensorSpec::init: matrices, embeddings and the
// convolutions N(0, std^2), norm weights 1 (model/params.h).
void init_weights(const ParamLayout& layout, std::vector<float>& params, uint64_t seed, float std = 0.02f);

}  // namespace lasp
