#include "train/schedule.h"

#include <cmath>

#include "core/check.h"

namespace lasp {

float learning_rate(int step, int total_steps, float max_lr, float min_lr, int warmup_steps) {
  LASP_CHECK(step >= 1, "learning_rate: step is 1-based, expected step >= 1, got {}", step);
  LASP_CHECK(total_steps >= 1, "learning_rate: expected total_steps >= 1, got {}", total_steps);
  LASP_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps,
             "learning_rate: expected 0 <= warmup_steps <= total_steps, got warmup_steps={} total_steps={}",
             warmup_steps, total_steps);
  LASP_CHECK(std::isfinite(max_lr) && std::isfinite(min_lr) && min_lr >= 0 && min_lr <= max_lr,
             "learning_rate: expected finite 0 <= min_lr <= max_lr, got min_lr={} max_lr={}", min_lr, max_lr);
  if (step <= warmup_steps) return float(double(max_lr) * step / warmup_steps);
  if (step >= total_steps) return min_lr;
  const double progress = double(step - warmup_steps) / double(total_steps - warmup_steps);  // (0, 1)
  const double pi = 3.14159265358979323846;
  return float(double(min_lr) + (double(max_lr) - double(min_lr)) * 0.5 * (1.0 + std::cos(pi * progress)));
}

}  // namespace lasp
