#include "kernels/feature_map.h"

#include <cmath>

#include "core/check.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

bool valid(FeatureMap f) {
  return f == FeatureMap::silu || f == FeatureMap::elu1 || f == FeatureMap::relu || f == FeatureMap::identity;
}

template <GradStore S>
void feature_map_backward_loop(float* dx, const float* dout, const float* x, long n, FeatureMap f) {
  switch (f) {
    case FeatureMap::silu:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) {
        const float s = vec_sigmoid(x[i]);
        store_grad<S>(dx[i], dout[i] * s * (1.f + x[i] * (1.f - s)));
      }
      break;
    case FeatureMap::elu1:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) store_grad<S>(dx[i], x[i] > 0.f ? dout[i] : dout[i] * vec_exp(x[i]));
      break;
    case FeatureMap::relu:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) store_grad<S>(dx[i], x[i] > 0.f ? dout[i] : 0.f);
      break;
    case FeatureMap::identity:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) store_grad<S>(dx[i], dout[i]);
      break;
  }
}

}  // namespace

FeatureMap feature_map_from_string(const std::string& name) {
  if (name == "silu") return FeatureMap::silu;
  if (name == "elu1") return FeatureMap::elu1;
  if (name == "relu") return FeatureMap::relu;
  if (name == "identity") return FeatureMap::identity;
  LASP_CHECK(false, "feature_map_from_string: unknown feature map '{}', expected one of silu, elu1, relu, identity",
             name);
  return FeatureMap::silu;  // unreachable
}

const char* to_string(FeatureMap f) {
  switch (f) {
    case FeatureMap::silu: return "silu";
    case FeatureMap::elu1: return "elu1";
    case FeatureMap::relu: return "relu";
    case FeatureMap::identity: return "identity";
  }
  return "unknown";
}

void feature_map_forward(float* out, const float* x, long n, FeatureMap f) {
  LASP_CHECK(valid(f), "feature_map_forward: invalid FeatureMap value {}", (int)f);
  LASP_CHECK(n >= 0, "feature_map_forward: n must be >= 0, got {}", n);
  if (n == 0) return;
  LASP_CHECK(out && x, "feature_map_forward: null pointer (out={}, x={})", (const void*)out, (const void*)x);
  LASP_CHECK(out != x || f == FeatureMap::identity,
             "feature_map_forward: out must differ from x for feature map {} (backward needs x)", to_string(f));
  switch (f) {
    case FeatureMap::silu:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) out[i] = x[i] * vec_sigmoid(x[i]);
      break;
    case FeatureMap::elu1:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) out[i] = x[i] > 0.f ? x[i] + 1.f : vec_exp(x[i]);
      break;
    case FeatureMap::relu:
#pragma omp parallel for simd if (n > 32768)
      for (long i = 0; i < n; ++i) out[i] = x[i] > 0.f ? x[i] : 0.f;
      break;
    case FeatureMap::identity:
      if (out != x)
#pragma omp parallel for simd if (n > 32768)
        for (long i = 0; i < n; ++i) out[i] = x[i];
      break;
  }
}

void feature_map_backward(float* dx, const float* dout, const float* x, long n, FeatureMap f, GradStore store) {
  LASP_CHECK(valid(f), "feature_map_backward: invalid FeatureMap value {}", (int)f);
  LASP_CHECK(n >= 0, "feature_map_backward: n must be >= 0, got {}", n);
  if (n == 0) return;
  LASP_CHECK(dx && dout && x, "feature_map_backward: null pointer (dx={}, dout={}, x={})", (const void*)dx,
             (const void*)dout, (const void*)x);
  LASP_CHECK(dx != dout && dx != x, "feature_map_backward: dx must not alias dout or x");
  if (store == GradStore::add) feature_map_backward_loop<GradStore::add>(dx, dout, x, n, f);
  else feature_map_backward_loop<GradStore::overwrite>(dx, dout, x, n, f);
}

}  // namespace lasp
