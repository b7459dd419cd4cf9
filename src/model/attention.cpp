#include "model/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lasp {

LinearAttentionShape LocalAttention::linear_shape() const {
  return {shape_.B, shape_.N, shape_.H, shape_.d, shape_.block};
}

SoftmaxAttentionShape LocalAttention::softmax_shape() const {
  return {shape_.B, shape_.N, shape_.N, shape_.H, shape_.H_kv, shape_.d, 1.f / std::sqrt(float(shape_.d))};
}

LocalAttention::LocalAttention(const AttentionShape& shape)
    : shape_(shape), positions_(shape.N), workspace_(0) {
  std::iota(positions_.begin(), positions_.end(), 0);
  const int threads = omp_get_max_threads();
  const size_t need = std::max({linear_attention_forward_workspace_floats(linear_shape(), threads),
                                linear_attention_backward_workspace_floats(linear_shape(), threads),
                                softmax_attention_workspace_floats(shape.N, shape.N, shape.d, threads),
                                linear_attention_bidirectional_workspace_floats(linear_shape(), threads)});
  workspace_.storage.resize(need);
}

void LocalAttention::linear_forward(int, float* o, const float* q, const float* k, const float* v,
                                    const float* lambda) {
  linear_attention_forward(o, nullptr, q, k, v, nullptr, lambda, linear_shape(), workspace_.view());
}

void LocalAttention::linear_backward(int, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v, const float* lambda) {
  linear_attention_backward(dq, dk, dv, nullptr, dout, nullptr, q, k, v, nullptr, lambda, linear_shape(),
                            workspace_.view());
}

void LocalAttention::linear_bidirectional_forward(int, float* o, const float* q, const float* k, const float* v) {
  linear_attention_bidirectional_forward(o, nullptr, q, k, v, nullptr, linear_shape(), workspace_.view());
}

void LocalAttention::linear_bidirectional_backward(int, float* dq, float* dk, float* dv, const float* dout,
                                                   const float* q, const float* k, const float* v) {
  linear_attention_bidirectional_backward(dq, dk, dv, nullptr, dout, nullptr, q, k, v, nullptr, linear_shape(),
                                          workspace_.view());
}

void LocalAttention::softmax_forward(int, float* o, float* lse, const float* q, const float* k, const float* v) {
  softmax_attention_forward(o, lse, q, k, v, positions_.data(), positions_.data(), softmax_shape(),
                            workspace_.view());
}

void LocalAttention::softmax_backward(int, float* dq, float* dk, float* dv, const float* dout, const float* o,
                                      const float* lse, const float* q, const float* k, const float* v) {
  softmax_attention_backward(dq, dk, dv, dout, o, lse, q, k, v, positions_.data(), positions_.data(),
                             softmax_shape(), workspace_.view());
}

}  // namespace lasp
