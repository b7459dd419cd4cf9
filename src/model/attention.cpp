#include "model/attention.h"

#include "core/check.h"
#include "core/memory.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lasp {

LinearAttentionShape LocalAttention::linear_shape() const { return shape_.linear_kernel(shape_.B, shape_.N, shape_.H); }

SoftmaxAttentionShape LocalAttention::softmax_shape() const {
  return shape_.softmax_kernel(shape_.B, shape_.N, shape_.N, shape_.H, shape_.H_kv);
}

const float* fixed_decay(const LinearGates& gates, const char* method) {
  LASP_CHECK(!gates.gla(), "{} does not support GLA's gates (decay gla); `lasp info` lists the methods that do", method);
  LASP_CHECK(!gates.delta(), "{} does not support the gated delta rule (decay gdn); `lasp info` lists the methods "
             "that do", method);
  return gates.lambda;
}

void Attention::linear_bidirectional_forward(int, float*, const float*, const float*, const float*) {
  throw Error("this sequence-parallel method has no bidirectional linear layers (lasp info lists the methods)");
}
void Attention::linear_bidirectional_backward(int, float*, float*, float*, const float*, const float*, const float*,
                                              const float*) {
  throw Error("this sequence-parallel method has no bidirectional linear layers (lasp info lists the methods)");
}

void Attention::set_documents(const uint8_t* starts) {
  if (starts)
    throw Error("this attention does not support documents (--doc-start -1 runs one stream)");
}

void Attention::begin_chunk(int, int, Pass) {
  throw Error("this attention runs its whole sequence piece at once; the chunked memory plan needs one sequence-parallel "
              "rank (--sp-size 1)");
}

Attention::ConvRuns Attention::conv_halo(int, float*, const float*, int, int) { return {}; }
void Attention::conv_halo_backward(int, float*, const float*, int, int) {}

void Attention::keep_decode_state(bool keep) {
  if (keep) throw Error("this sequence-parallel method does not keep the state generation continues from");
}
std::vector<float> Attention::final_state(int) const { throw Error("final_state: no decode state kept"); }
std::vector<float> Attention::keys_in_order(int, bool) const { throw Error("keys_in_order: no decode state kept"); }

double LocalAttention::floats_needed(const AttentionShape& s) {
  const LinearAttentionShape linear = s.linear_kernel(s.B, s.N, s.H), gla = s.gla_kernel(s.B, s.N, s.H);
  return double(std::max({linear_attention_forward_workspace_floats(linear),
                          linear_attention_backward_workspace_floats(linear), gla_forward_workspace_floats(gla),
                          gla_backward_workspace_floats(gla),
                          softmax_attention_workspace_floats(s.N, s.N, s.d, s.threads),
                          linear_attention_bidirectional_workspace_floats(linear),
                          s.delta ? delta_rule_backward_workspace_floats(s.delta_kernel(s.B, s.N)) : size_t(0),
                          s.delta ? delta_rule_forward_workspace_floats(s.delta_kernel(s.B, s.N)) : size_t(0)}));
}

LocalAttention::LocalAttention(const AttentionShape& shape)
    : shape_(shape), positions_(shape.N), workspace_(0) {
  std::iota(positions_.begin(), positions_.end(), 0);
  const int threads = shape.threads;
  LASP_CHECK(threads > 0, "attention: the kernels' thread count must be positive, got {}", threads);
  const size_t need = size_t(floats_needed(shape));
  check_fits_in_memory(4.0 * double(need),
                       fmt::format("the attention workspace for N={} H={} d={} dk={} dv={} on {} threads", shape.N,
                                   shape.H, shape.d, shape.dk, shape.dv, threads));
  workspace_.storage.resize(need);
}

namespace {
std::vector<float>& slot(std::vector<std::vector<float>>& by_layer, int layer) {
  if (int(by_layer.size()) <= layer) by_layer.resize(layer + 1);
  return by_layer[layer];
}
}  // namespace

LinearAttentionShape LocalAttention::gla_shape() const { return shape_.gla_kernel(shape_.B, shape_.N, shape_.H); }

void LocalAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                    const LinearGates& gates) {
  float* state_out = nullptr;
  if (keep_) {
    auto& s = slot(final_states_, layer);
    s.resize(size_t(shape_.B) * shape_.value_heads() * shape_.state_floats());
    state_out = s.data();
  }
  if (gates.delta())
    delta_rule_forward(o, state_out, q, k, v, gates.beta, gates.log_gates, nullptr, docs_.start_flags(),
                       shape_.delta_kernel(shape_.B, shape_.N), workspace_.view());
  else if (gates.gla())
    gla_forward(o, state_out, q, k, v, gates.log_gates, nullptr, docs_.start_flags(), gla_shape(), workspace_.view());
  else
    linear_attention_forward(o, state_out, q, k, v, nullptr, gates.lambda, docs_.start_flags(), linear_shape(),
                             workspace_.view());
}

void LocalAttention::linear_backward(int, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v, const LinearGates& gates) {
  if (gates.delta()) {
    const size_t n = size_t(shape_.B) * shape_.N * shape_.value_heads();
    std::fill(gates.d_log_gates, gates.d_log_gates + n, 0.f);  // the kernel accumulates, the seam writes
    std::fill(gates.d_beta, gates.d_beta + n, 0.f);
    delta_rule_backward(dq, dk, dv, gates.d_beta, gates.d_log_gates, nullptr, dout, nullptr, q, k, v, gates.beta,
                        gates.log_gates, nullptr, docs_.start_flags(), shape_.delta_kernel(shape_.B, shape_.N),
                        workspace_.view());
  } else if (gates.gla())
    gla_backward(dq, dk, dv, gates.d_log_gates, nullptr, dout, nullptr, q, k, v, gates.log_gates, nullptr,
                 docs_.start_flags(), gla_shape(), workspace_.view());
  else
    linear_attention_backward(dq, dk, dv, nullptr, dout, nullptr, q, k, v, nullptr, gates.lambda,
                              docs_.start_flags(), linear_shape(), workspace_.view());
}

void LocalAttention::linear_bidirectional_forward(int, float* o, const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!docs_.empty());
  linear_attention_bidirectional_forward(o, nullptr, q, k, v, nullptr, linear_shape(), workspace_.view());
}

void LocalAttention::linear_bidirectional_backward(int, float* dq, float* dk, float* dv, const float* dout,
                                                   const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!docs_.empty());
  linear_attention_bidirectional_backward(dq, dk, dv, nullptr, dout, nullptr, q, k, v, nullptr, linear_shape(),
                                          workspace_.view());
}

void LocalAttention::softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) {
  if (keep_) {
    const size_t n = size_t(shape_.B) * shape_.N * shape_.H_kv * shape_.d;
    slot(keys_, layer).assign(k, k + n);
    slot(values_, layer).assign(v, v + n);
  }
  softmax_attention_forward(o, lse, q, k, v, positions_.data(), positions_.data(), docs_.first_positions(),
                            softmax_shape(), workspace_.view());
}

void LocalAttention::softmax_backward(int, float* dq, float* dk, float* dv, const float* dout, const float* o,
                                      const float* lse, const float* q, const float* k, const float* v) {
  softmax_attention_backward(dq, dk, dv, dout, o, lse, q, k, v, positions_.data(), positions_.data(),
                             docs_.first_positions(), softmax_shape(), workspace_.view());
}

void LocalAttention::set_documents(const uint8_t* starts) {
  docs_ = starts ? documents_at(starts, shape_.B, shape_.N, positions_.data(), shape_.N) : Documents{};
}

}  // namespace lasp
