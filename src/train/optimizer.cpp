#include "train/optimizer.h"

#include <cmath>
#include <random>

#include "kernels/adamw.h"

namespace lasp {

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& config)
    : layout_(layout), config_(config), m_(layout.total(), 0.f), v_(layout.total(), 0.f) {}

double AdamW::step(std::vector<float>& params, const std::vector<float>& grads, float lr) {
  const double norm = std::sqrt(grad_norm_squared(grads.data(), long(grads.size())));
  if (!std::isfinite(norm)) return norm;  // a diverged step: the caller stops; the weights stay as they were
  ++step_;
  const float scale = config_.grad_clip > 0 ? grad_clip_scale(norm, config_.grad_clip) : 1.f;
  for (const TensorSpec& t : layout_.specs()) {
    const size_t o = t.offset;
    adamw_update(params.data() + o, m_.data() + o, v_.data() + o, grads.data() + o, long(t.size), lr,
                 config_.beta1, config_.beta2, config_.eps, t.matrix ? config_.weight_decay : 0.f, step_, scale);
  }
  return norm;
}

void init_weights(const ParamLayout& layout, std::vector<float>& params, uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, std);
  for (const TensorSpec& t : layout.specs())
    for (size_t i = 0; i < t.size; ++i) params[t.offset + i] = t.matrix ? float(normal(rng)) : 1.f;
}

}  // namespace lasp
