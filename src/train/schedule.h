// Learning-rate schedule: linear warmup, then cosine decay (llm.c's schedule, with 1-based steps).
#pragma once

namespace lasp {

// step is 1-based. Steps 1..warmup_steps: max_lr * step / warmup_steps (max_lr at step = warmup_steps).
// Then cosine from max_lr to min_lr: min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * (step - warmup) /
// (total - warmup))), reaching min_lr at step = total_steps; min_lr after it.
// With warmup_steps == total_steps there is no decay: max_lr at total_steps, min_lr after it.
// Requires step >= 1, total_steps >= 1, 0 <= warmup_steps <= total_steps, 0 <= min_lr <= max_lr (finite);
// otherwise throws lasp::Error naming the arguments.
float learning_rate(int step, int total_steps, float max_lr, float min_lr, int warmup_steps);

}  // namespace lasp
