// AdamW (decoupled weight decay) with PyTorch's torch.optim.AdamW semantics, and global-norm clipping helpers.
#pragma once

namespace lasp {

// sum of g_i^2 in double.
double grad_norm_squared(const float* g, long n);

// min(1, max_norm / (norm + 1e-6)): the factor that clips a gradient of global norm `norm`. max_norm > 0.
float grad_clip_scale(double norm, float max_norm);

// One step (step is 1-based) on n parameters, with g = grad * grad_scale:
//   param *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   param -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
void adamw_update(float* param, float* m, float* v, const float* grad, long n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int step, float grad_scale);

}  // namespace lasp
