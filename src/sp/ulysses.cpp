#include "sp/ulysses.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/check.h"

namespace lasp {

UlyssesAttention::UlyssesAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers)
    : sp_(sp), s_(shape), N_(global_N), W_(sp.size()), hg_(0), layout_(layout), saved_(layers) {
  LASP_CHECK(shape.H % W_ == 0, "ulysses: the {} attention heads must divide evenly over the {} sp ranks", shape.H, W_);
  hg_ = shape.H / W_;
  if (shape.delta) halo_ = std::make_unique<ConvHalo>(sp, shape.B, shape.N, layout);
  positions_ = sp_positions(global_N, W_, sp.rank(), layout);
  for (int r = 0; r < W_; ++r) rank_positions_.push_back(sp_positions(global_N, W_, r, layout));
  all_positions_.resize(global_N);
  std::iota(all_positions_.begin(), all_positions_.end(), 0);
  const LinearAttentionShape full = linear_shape();
  ws_.storage.resize(std::max({linear_attention_forward_workspace_floats(full),
                               gla_forward_workspace_floats(gla_shape()), gla_backward_workspace_floats(gla_shape()),
                               linear_attention_backward_workspace_floats(full),
                               linear_attention_bidirectional_workspace_floats(full),
                               softmax_attention_workspace_floats(global_N, global_N, shape.d, shape.threads),
                               shape.delta ? delta_rule_forward_workspace_floats(delta_shape()) : size_t(0),
                               shape.delta ? delta_rule_backward_workspace_floats(delta_shape()) : size_t(0)}));
}

// Each layer keeps its head-sharded q, k, v, o (and lse) over the whole sequence; the backward's
// whole-sequence gradients and the exchange buffers come on top.
double UlyssesAttention::memory_floats(const std::string& layer_types) const {
  const int widest = std::max({s_.d, s_.dk, s_.dv});
  const double sharded = double(s_.B) * N_ * hg_ * widest, local = double(s_.B) * s_.N * s_.H * widest;
  const double per_layer = 4 * sharded + double(s_.B) * hg_ * N_;
  return double(ws_.storage.size()) + double(layer_types.size()) * per_layer + 5 * sharded + 4 * local;
}

void UlyssesAttention::to_heads(const float* x, int heads, int d, std::vector<float>& full) {
  const int B = s_.B, Nl = s_.N, g = heads / W_;
  const size_t piece = size_t(B) * Nl * g * d;  // what goes to one rank
  send_.resize(piece * W_);
  recv_.resize(piece * W_);
  for (int r = 0; r < W_; ++r)  // (B, Nl, heads, d) -> (W, B, Nl, g, d): head group r to rank r
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < Nl; ++n)
        std::memcpy(send_.data() + r * piece + (size_t(b) * Nl + n) * g * d,
                    x + ((size_t(b) * Nl + n) * heads + size_t(r) * g) * d, sizeof(float) * g * d);
  sp_.all_to_all(send_.data(), recv_.data(), piece);
  full.resize(size_t(B) * N_ * g * d);
  for (int src = 0; src < W_; ++src)  // rank src's rows go to their global positions
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < Nl; ++n)
        std::memcpy(full.data() + (size_t(b) * N_ + rank_positions_[src][n]) * g * d,
                    recv_.data() + src * piece + (size_t(b) * Nl + n) * g * d, sizeof(float) * g * d);
}

void UlyssesAttention::to_sequence(const std::vector<float>& full, int heads, int d, float* x, bool accumulate) {
  const int B = s_.B, Nl = s_.N, g = heads / W_;
  const size_t piece = size_t(B) * Nl * g * d;
  send_.resize(piece * W_);
  recv_.resize(piece * W_);
  for (int dst = 0; dst < W_; ++dst)  // rank dst's rows of this head group
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < Nl; ++n)
        std::memcpy(send_.data() + dst * piece + (size_t(b) * Nl + n) * g * d,
                    full.data() + (size_t(b) * N_ + rank_positions_[dst][n]) * g * d, sizeof(float) * g * d);
  sp_.all_to_all(send_.data(), recv_.data(), piece);
  for (int r = 0; r < W_; ++r)  // head group r from rank r
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < Nl; ++n) {
        float* out = x + ((size_t(b) * Nl + n) * heads + size_t(r) * g) * d;
        const float* in = recv_.data() + r * piece + (size_t(b) * Nl + n) * g * d;
        if (accumulate)
          for (int i = 0; i < g * d; ++i) out[i] += in[i];
        else
          std::memcpy(out, in, sizeof(float) * g * d);
      }
}

std::vector<float> UlyssesAttention::expand_kv(const float* x) const {
  const int B = s_.B, Nl = s_.N, H = s_.H, Hkv = s_.H_kv, d = s_.d, group = H / Hkv;
  std::vector<float> out(size_t(B) * Nl * H * d);
  for (size_t row = 0; row < size_t(B) * Nl; ++row)
    for (int h = 0; h < H; ++h)
      std::memcpy(out.data() + (row * H + h) * d, x + (row * Hkv + h / group) * d, sizeof(float) * d);
  return out;
}

Attention::ConvRuns UlyssesAttention::conv_halo(int, float* halo, const float* x, int C, int K) {
  LASP_CHECK(halo_, "ulysses: a convolution halo asked of an attention made without the gated delta rule");
  return halo_->forward(halo, x, local_starts_.empty() ? nullptr : local_starts_.data(), C, K);
}

void UlyssesAttention::conv_halo_backward(int, float* dx, const float* dhalo, int C, int K) {
  halo_->backward(dx, dhalo, local_starts_.empty() ? nullptr : local_starts_.data(), C, K);
}

void UlyssesAttention::set_documents(const uint8_t* starts) {
  if (starts) local_starts_.assign(starts, starts + size_t(s_.B) * s_.N);
  else local_starts_.clear();
  const SpDocuments gathered = gather_documents(sp_, starts, s_.B, s_.N, N_, layout_);
  docs_ = gathered.empty() ? Documents{} : documents_at(gathered.all.data(), s_.B, N_, all_positions_.data(), N_);
}

void UlyssesAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                      const LinearGates& gates) {
  const float* lambda = gates.lambda;
  const int HV = s_.value_heads();
  Saved& sv = saved_[layer];
  to_heads(q, s_.H, s_.qk_width(), sv.q);
  to_heads(k, s_.H, s_.qk_width(), sv.k);
  to_heads(v, HV, s_.dv, sv.v);
  std::vector<float> of(sv.v.size());
  if (gates.delta()) {  // beta and the log-gates travel with the values: two more all-to-alls
    to_heads(gates.beta, HV, 1, sv.beta);
    to_heads(gates.log_gates, HV, 1, sv.g);
    delta_rule_forward(of.data(), nullptr, sv.q.data(), sv.k.data(), sv.v.data(), sv.beta.data(), sv.g.data(), nullptr,
                       docs_.start_flags(), delta_shape(), ws_.view());
  } else if (gates.gla()) {  // GLA's log-gates travel with the queries: a fourth all-to-all
    to_heads(gates.log_gates, s_.H, s_.dk, sv.g);
    gla_forward(of.data(), nullptr, sv.q.data(), sv.k.data(), sv.v.data(), sv.g.data(), nullptr, docs_.start_flags(),
                gla_shape(), ws_.view());
  } else {
    linear_attention_forward(of.data(), nullptr, sv.q.data(), sv.k.data(), sv.v.data(), nullptr,
                             lambda ? lambda + sp_.rank() * hg_ : nullptr, docs_.start_flags(), linear_shape(),
                             ws_.view());
  }
  to_sequence(of, HV, s_.dv, o, false);
}

void UlyssesAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float*,
                                       const float*, const float*, const LinearGates& gates) {
  const float* lambda = gates.lambda;
  const int HV = s_.value_heads();
  const Saved& sv = saved_[layer];
  std::vector<float> dof, dqf(sv.q.size(), 0.f), dkf(sv.k.size(), 0.f), dvf(sv.v.size(), 0.f);
  to_heads(dout, HV, s_.dv, dof);
  if (gates.delta()) {
    std::vector<float> dbf(sv.beta.size(), 0.f), dgf(sv.g.size(), 0.f);
    delta_rule_backward(dqf.data(), dkf.data(), dvf.data(), dbf.data(), dgf.data(), nullptr, dof.data(), nullptr,
                        sv.q.data(), sv.k.data(), sv.v.data(), sv.beta.data(), sv.g.data(), nullptr,
                        docs_.start_flags(), delta_shape(), ws_.view());
    to_sequence(dbf, HV, 1, gates.d_beta, false);
    to_sequence(dgf, HV, 1, gates.d_log_gates, false);
  } else if (gates.gla()) {
    std::vector<float> dgf(sv.q.size());
    gla_backward(dqf.data(), dkf.data(), dvf.data(), dgf.data(), nullptr, dof.data(), nullptr, sv.q.data(),
                 sv.k.data(), sv.v.data(), sv.g.data(), nullptr, docs_.start_flags(), gla_shape(), ws_.view());
    to_sequence(dgf, s_.H, s_.dk, gates.d_log_gates, false);
  } else {
    linear_attention_backward(dqf.data(), dkf.data(), dvf.data(), nullptr, dof.data(), nullptr, sv.q.data(),
                              sv.k.data(), sv.v.data(), nullptr, lambda ? lambda + sp_.rank() * hg_ : nullptr,
                              docs_.start_flags(), linear_shape(), ws_.view());
  }
  to_sequence(dqf, s_.H, s_.qk_width(), dq, true);
  to_sequence(dkf, s_.H, s_.qk_width(), dk, true);
  to_sequence(dvf, HV, s_.dv, dv, true);
}

void UlyssesAttention::linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!docs_.empty());
  Saved& sv = saved_[layer];
  to_heads(q, s_.H, s_.qk_width(), sv.q);
  to_heads(k, s_.H, s_.qk_width(), sv.k);
  to_heads(v, s_.H, s_.dv, sv.v);
  std::vector<float> of(sv.v.size());
  linear_attention_bidirectional_forward(of.data(), nullptr, sv.q.data(), sv.k.data(), sv.v.data(), nullptr,
                                         linear_shape(), ws_.view());
  to_sequence(of, s_.H, s_.dv, o, false);
}

void UlyssesAttention::linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                                     const float*, const float*, const float*) {
  refuse_documents_bidirectional(!docs_.empty());
  const Saved& sv = saved_[layer];
  std::vector<float> dof, dqf(sv.q.size(), 0.f), dkf(sv.k.size(), 0.f), dvf(sv.v.size(), 0.f);
  to_heads(dout, s_.H, s_.dv, dof);
  linear_attention_bidirectional_backward(dqf.data(), dkf.data(), dvf.data(), nullptr, dof.data(), nullptr,
                                          sv.q.data(), sv.k.data(), sv.v.data(), nullptr,
                                          linear_shape(), ws_.view());
  to_sequence(dqf, s_.H, s_.qk_width(), dq, true);
  to_sequence(dkf, s_.H, s_.qk_width(), dk, true);
  to_sequence(dvf, s_.H, s_.dv, dv, true);
}

void UlyssesAttention::softmax_forward(int layer, float* o, float*, const float* q, const float* k, const float* v) {
  Saved& sv = saved_[layer];
  to_heads(q, s_.H, s_.d, sv.q);
  to_heads(expand_kv(k).data(), s_.H, s_.d, sv.k);
  to_heads(expand_kv(v).data(), s_.H, s_.d, sv.v);
  sv.o.assign(sv.q.size(), 0.f);
  sv.lse.assign(size_t(s_.B) * hg_ * N_, 0.f);
  const SoftmaxAttentionShape shape = softmax_shape();
  softmax_attention_forward(sv.o.data(), sv.lse.data(), sv.q.data(), sv.k.data(), sv.v.data(), all_positions_.data(),
                            all_positions_.data(), docs_.first_positions(), shape, ws_.view());
  to_sequence(sv.o, s_.H, s_.d, o, false);
}

void UlyssesAttention::softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float*,
                                        const float*, const float*, const float*, const float*) {
  const Saved& sv = saved_[layer];
  std::vector<float> dof, dqf(sv.q.size(), 0.f), dkf(sv.q.size(), 0.f), dvf(sv.q.size(), 0.f);
  to_heads(dout, s_.H, s_.d, dof);
  const SoftmaxAttentionShape shape = softmax_shape();
  softmax_attention_backward(dqf.data(), dkf.data(), dvf.data(), dof.data(), sv.o.data(), sv.lse.data(), sv.q.data(),
                             sv.k.data(), sv.v.data(), all_positions_.data(), all_positions_.data(),
                             docs_.first_positions(), shape, ws_.view());
  to_sequence(dqf, s_.H, s_.d, dq, true);
  // the replicated key/value heads: their gradients sum back onto the H_kv heads
  const int B = s_.B, Nl = s_.N, H = s_.H, Hkv = s_.H_kv, d = s_.d, group = H / Hkv;
  std::vector<float> dk_wide(size_t(B) * Nl * H * d, 0.f), dv_wide(dk_wide.size(), 0.f);
  to_sequence(dkf, H, d, dk_wide.data(), false);
  to_sequence(dvf, H, d, dv_wide.data(), false);
  for (size_t row = 0; row < size_t(B) * Nl; ++row)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < d; ++i) {
        dk[(row * Hkv + h / group) * d + i] += dk_wide[(row * H + h) * d + i];
        dv[(row * Hkv + h / group) * d + i] += dv_wide[(row * H + h) * d + i];
      }
}

}  // namespace lasp
