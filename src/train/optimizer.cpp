#include "train/optimizer.h"

#include <algorithm>
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
  // One update per run of adjacent tensors of the same weight decay: a model's tensors are mostly too small for
  // the update's threads one at a time (measured: a serial ~1.5% of a step of the small model).
  const std::vector<TensorSpec>& specs = layout_.specs();
  for (size_t i = 0; i < specs.size();) {
    const size_t o = specs[i].offset;
    const bool matrix = specs[i].matrix;
    size_t end = o + specs[i].size;
    while (++i < specs.size() && specs[i].offset == end && specs[i].matrix == matrix) end += specs[i].size;
    adamw_update(params.data() + o, m_.data() + o, v_.data() + o, grads.data() + o, long(end - o), lr, config_.beta1,
                 config_.beta2, config_.eps, matrix ? config_.weight_decay : 0.f, step_, scale);
  }
  return norm;
}

void init_weights(const ParamLayout& layout, std::vector<float>& params, uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, std);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (const TensorSpec& t : layout.specs())
    for (size_t i = 0; i < t.size; ++i) {
      float& p = params[t.offset + i];
      switch (t.init) {
        case ParamInit::normal: p = float(normal(rng)); break;
        case ParamInit::one: p = 1.f; break;
        case ParamInit::zero: p = 0.f; break;
        case ParamInit::gdn_a_log: p = float(std::log(16.0 * (1.0 - uniform(rng)))); break;  // exp(A_log) in (0, 16]
        case ParamInit::gdn_dt_bias: {  // softplus(dt_bias) = dt, log-uniform in [0.001, 0.1], at least 1e-4
          const double dt = std::max(1e-4, std::exp(std::log(0.001) + uniform(rng) * (std::log(0.1) - std::log(0.001))));
          p = float(dt + std::log(-std::expm1(-dt)));
          break;
        }
      }
    }
}

}  // namespace lasp
