#include "model/chunked_attention.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/memory.h"
#include "kernels/short_conv.h"

namespace lasp {

namespace {

size_t workspace_floats(const AttentionShape& s, int sequence_length) {
  const LinearAttentionShape linear = s.linear_kernel(s.B, s.N, s.H), gla = s.gla_kernel(s.B, s.N, s.H);
  const DeltaRuleShape delta = s.delta_kernel(s.B, s.N);
  return std::max({linear_attention_forward_workspace_floats(linear), linear_attention_backward_workspace_floats(linear),
                   gla_forward_workspace_floats(gla), gla_backward_workspace_floats(gla),
                   softmax_attention_workspace_floats(s.N, sequence_length, s.d, s.threads),
                   s.delta ? delta_rule_forward_workspace_floats(delta) : size_t(0),
                   s.delta ? delta_rule_backward_workspace_floats(delta) : size_t(0)});
}

}  // namespace

ChunkedAttention::ChunkedAttention(const AttentionShape& shape, int sequence_length, int layers)
    : s_(shape), N_(sequence_length), chunks_(0), all_positions_(sequence_length) {
  LASP_CHECK(shape.B > 0 && shape.N > 0 && sequence_length >= shape.N && shape.threads > 0,
             "chunked attention: expected 0 < chunk <= sequence length and positive B and threads, got chunk={} N={} "
             "B={} threads={}",
             shape.N, sequence_length, shape.B, shape.threads);
  chunks_ = (sequence_length + shape.N - 1) / shape.N;
  std::iota(all_positions_.begin(), all_positions_.end(), 0);
  positions_.reserve(shape.N);
  for (auto* by_layer : {&entering_, &dleaving_, &keys_, &values_, &dkeys_, &dvalues_, &final_states_})
    by_layer->resize(layers);
  const size_t need = workspace_floats(shape, sequence_length);
  check_fits_in_memory(4.0 * double(need), fmt::format("the attention workspace for a chunk of {} tokens", shape.N));
  workspace_.storage.resize(need);
  begin_chunk(0, shape.N, Pass::forward);
}

double ChunkedAttention::floats_needed(const AttentionShape& s, int sequence_length, const std::string& layer_types) {
  const double linear_layers = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax_layers = double(layer_types.size()) - linear_layers;
  const double chunks = (double(sequence_length) + s.N - 1) / s.N;
  const double state = double(s.B) * s.value_heads() * s.state_floats();
  const double kv = 2.0 * s.B * double(sequence_length) * s.H_kv * s.d;  // keys and values of one layer
  // gdn: each chunk's tails of the q, k and v convolutions' inputs, and their gradients in flight
  const double tails = double(s.B) * s.conv_rows * (2.0 * s.H * s.dk + double(s.value_heads()) * s.dv);
  return double(workspace_floats(s, sequence_length)) + linear_layers * (chunks + 1) * state + state +
         linear_layers * (chunks + 2) * tails + softmax_layers * 2 * kv;  // kept keys and values, and their gradients
}

void ChunkedAttention::begin_chunk(int begin, int length, Pass pass) {
  LASP_CHECK(begin % s_.N == 0 && length > 0 && length <= s_.N && begin + length <= N_ &&
                 (begin + length == N_ || length == s_.N),
             "chunked attention: chunk [{}, {}) does not follow chunks of {} tokens over {}", begin, begin + length,
             s_.N, N_);
  begin_ = begin, length_ = length, index_ = begin / s_.N, pass_ = pass;
  positions_.assign(all_positions_.begin() + begin, all_positions_.begin() + begin + length);
  docs_ = documents_slice(all_docs_, N_, begin, length);
  if (pass == Pass::backward && index_ == chunks_ - 1) {  // the backward pass starts: nothing has flowed back yet
    for (auto& g : dkeys_) std::fill(g.begin(), g.end(), 0.f);
    for (auto& g : dvalues_) std::fill(g.begin(), g.end(), 0.f);
  }
}

void ChunkedAttention::set_documents(const uint8_t* starts) {
  all_docs_ = starts ? documents_at(starts, s_.B, N_, all_positions_.data(), N_) : Documents{};
  docs_ = documents_slice(all_docs_, N_, begin_, length_);
}

float* ChunkedAttention::entering(int layer, int chunk) {
  if (chunk == 0) return nullptr;
  return sized(entering_[layer], size_t(chunks_ - 1) * state_floats()).data() + size_t(chunk - 1) * state_floats();
}

void ChunkedAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                      const LinearGates& gates) {
  // The state leaving this chunk is written once, by the forward pass; a recomputed forward only reads.
  float* leaving = nullptr;
  if (pass_ == Pass::forward && index_ + 1 < chunks_) leaving = entering(layer, index_ + 1);
  if (pass_ == Pass::forward && index_ + 1 == chunks_ && keep_) leaving = sized(final_states_[layer], state_floats()).data();
  if (gates.delta())
    delta_rule_forward(o, leaving, q, k, v, gates.beta, gates.log_gates, entering(layer, index_), docs_.start_flags(),
                       s_.delta_kernel(s_.B, length_), workspace_.view());
  else if (gates.gla())
    gla_forward(o, leaving, q, k, v, gates.log_gates, entering(layer, index_), docs_.start_flags(), gla_shape(),
                workspace_.view());
  else
    linear_attention_forward(o, leaving, q, k, v, entering(layer, index_), gates.lambda, docs_.start_flags(),
                             linear_shape(), workspace_.view());
}

void ChunkedAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                       const float* k, const float* v, const LinearGates& gates) {
  const size_t n = state_floats();
  float* dstate_in = nullptr;
  if (index_ > 0) dstate_in = sized(dentering_, n).data(), std::fill(dentering_.begin(), dentering_.end(), 0.f);
  const float* dstate_out = index_ + 1 < chunks_ ? sized(dleaving_[layer], n).data() : nullptr;
  if (gates.delta()) {  // the kernel accumulates its gates' gradients; the seam writes them
    const size_t gates_n = size_t(s_.B) * length_ * s_.value_heads();
    std::fill(gates.d_beta, gates.d_beta + gates_n, 0.f);
    std::fill(gates.d_log_gates, gates.d_log_gates + gates_n, 0.f);
    delta_rule_backward(dq, dk, dv, gates.d_beta, gates.d_log_gates, dstate_in, dout, dstate_out, q, k, v, gates.beta,
                        gates.log_gates, entering(layer, index_), docs_.start_flags(), s_.delta_kernel(s_.B, length_),
                        workspace_.view());
  } else if (gates.gla())  // the chunk's gate gradient is whole: later chunks reach it through dstate_out
    gla_backward(dq, dk, dv, gates.d_log_gates, dstate_in, dout, dstate_out, q, k, v, gates.log_gates,
                 entering(layer, index_), docs_.start_flags(), gla_shape(), workspace_.view());
  else
    linear_attention_backward(dq, dk, dv, dstate_in, dout, dstate_out, q, k, v, entering(layer, index_), gates.lambda,
                              docs_.start_flags(), linear_shape(), workspace_.view());
  if (dstate_in) std::swap(dleaving_[layer], dentering_);  // the chunk before receives it as its leaving gradient
}

// The forward pass keeps each chunk's tail (its own halo, the tail before it, covers a chunk shorter than K-1); any
// forward of chunk c reads chunk c-1's.
Attention::ConvRuns ChunkedAttention::conv_halo(int conv, float* halo, const float* x, int C, int K) {
  const size_t n = size_t(s_.B) * (K - 1) * C;
  if (int(conv_tails_.size()) <= conv) conv_tails_.resize(conv + 1);
  float* tails = sized(conv_tails_[conv], size_t(chunks_) * n).data();
  if (pass_ == Pass::forward)
    short_conv_tail(tails + index_ * n, x, index_ > 0 ? tails + (index_ - 1) * n : nullptr, docs_.start_flags(), s_.B,
                    length_, C, K);
  if (index_ == 0) return {};
  std::copy(tails + (index_ - 1) * n, tails + index_ * n, halo);
  return {1, 0};
}

// Chunks go last to first: the gradient of this chunk's tail (from the chunk after it) reaches its rows through
// the tail's adjoint, and what of it fell on its own halo joins dhalo, handed to the chunk before.
void ChunkedAttention::conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) {
  const size_t n = size_t(s_.B) * (K - 1) * C;
  if (int(dtails_.size()) <= conv) dtails_.resize(conv + 1);
  std::vector<float>& dtail = dtails_[conv];
  sized(dtail_next_, n);
  std::copy(dhalo, dhalo + n, dtail_next_.begin());
  if (index_ + 1 < chunks_)
    short_conv_tail_backward(dx, index_ > 0 ? dtail_next_.data() : nullptr, sized(dtail, n).data(),
                             docs_.start_flags(), s_.B, length_, C, K);
  std::swap(dtail, dtail_next_);
}

SoftmaxAttentionShape ChunkedAttention::softmax_row_shape() const {
  return s_.softmax_kernel(1, length_, begin_ + length_, s_.H, s_.H_kv);
}

// One batch row at a time: the kept keys of a row are (N, H_kv, d), of which the kernel reads the first
// begin + length (every key up to this chunk's last query).
void ChunkedAttention::softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) {
  const size_t row = size_t(s_.H_kv) * s_.d, all = size_t(N_) * row, mine = size_t(length_) * row;
  const size_t qrow = size_t(length_) * s_.H * s_.d;
  float* keys = sized(keys_[layer], s_.B * all).data();
  float* values = sized(values_[layer], s_.B * all).data();
  for (int b = 0; b < s_.B; ++b) {
    if (pass_ == Pass::forward) {
      std::memcpy(keys + b * all + begin_ * row, k + b * mine, sizeof(float) * mine);
      std::memcpy(values + b * all + begin_ * row, v + b * mine, sizeof(float) * mine);
    }
    softmax_attention_forward(o + b * qrow, lse + size_t(b) * s_.H * length_, q + b * qrow, keys + b * all,
                              values + b * all, positions_.data(), all_positions_.data(), row_documents(b),
                              softmax_row_shape(), workspace_.view());
  }
}

void ChunkedAttention::softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                                        const float* lse, const float* q, const float*, const float*) {
  const size_t row = size_t(s_.H_kv) * s_.d, all = size_t(N_) * row, mine = size_t(length_) * row;
  const size_t qrow = size_t(length_) * s_.H * s_.d;
  LASP_CHECK(keys_[layer].size() == s_.B * all, "chunked attention: softmax backward of layer {} before its forward",
             layer);
  float* dkeys = sized(dkeys_[layer], s_.B * all).data();
  float* dvalues = sized(dvalues_[layer], s_.B * all).data();
  for (int b = 0; b < s_.B; ++b) {
    softmax_attention_backward(dq + b * qrow, dkeys + b * all, dvalues + b * all, dout + b * qrow, o + b * qrow,
                               lse + size_t(b) * s_.H * length_, q + b * qrow, keys_[layer].data() + b * all,
                               values_[layer].data() + b * all, positions_.data(), all_positions_.data(),
                               row_documents(b), softmax_row_shape(), workspace_.view());
    // Every later chunk has been through already: this chunk's keys have their whole gradient.
    const float* from_k = dkeys + b * all + begin_ * row;
    const float* from_v = dvalues + b * all + begin_ * row;
    for (size_t i = 0; i < mine; ++i) dk[b * mine + i] += from_k[i], dv[b * mine + i] += from_v[i];
  }
}

}  // namespace lasp
