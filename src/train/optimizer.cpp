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
  // Matrices from N(0, std); vectors at 1 (norm weights, rebased's gamma), but rebased's beta at 0 (FEATURE_MAPS.md).
  const std::string beta = ".feature_map.beta";
  for (const TensorSpec& t : layout.specs()) {
    const bool zero = t.name.size() > beta.size() && t.name.compare(t.name.size() - beta.size(), beta.size(), beta) == 0;
    for (size_t i = 0; i < t.size; ++i) params[t.offset + i] = t.matrix ? float(normal(rng)) : zero ? 0.f : 1.f;
  }
}

}  // namespace lasp
