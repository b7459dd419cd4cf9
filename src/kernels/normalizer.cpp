#include "kernels/normalizer.h"

#include <cstring>

namespace lasp {

void normalizer_append_ones(float* vt, const float* v, size_t rows, int d) {
#pragma omp parallel for if (rows > 4096)
  for (size_t r = 0; r < rows; ++r) {
    std::memcpy(vt + r * (d + 1), v + r * d, sizeof(float) * d);
    vt[r * (d + 1) + d] = 1.f;
  }
}

void normalizer_forward(float* o, const float* y, size_t rows, int d, float eps) {
#pragma omp parallel for if (rows > 4096)
  for (size_t r = 0; r < rows; ++r) {
    const float* yr = y + r * (d + 1);
    const float inv = 1.f / (yr[d] + eps);
    for (int i = 0; i < d; ++i) o[r * d + i] = yr[i] * inv;
  }
}

void normalizer_backward(float* dy, const float* dout, const float* o, const float* y, size_t rows, int d, float eps) {
#pragma omp parallel for if (rows > 4096)
  for (size_t r = 0; r < rows; ++r) {
    const float inv = 1.f / (y[r * (d + 1) + d] + eps);
    float dot = 0.f;
    for (int i = 0; i < d; ++i) {
      dy[r * (d + 1) + i] = dout[r * d + i] * inv;
      dot += dout[r * d + i] * o[r * d + i];
    }
    dy[r * (d + 1) + d] = -dot * inv;
  }
}

void normalizer_drop_column(float* dst, const float* src, size_t rows, int d) {
  for (size_t r = 0; r < rows; ++r) std::memmove(dst + r * d, src + r * (d + 1), sizeof(float) * d);  // in order: in place
}

}  // namespace lasp
