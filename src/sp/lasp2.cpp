#include "sp/lasp2.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/gemm.h"

namespace lasp {

namespace {

// The kernel's spans: up to 4 of whole blocks per piece (progress points for MPI between them).
int progress_span(const AttentionShape& s, int global_N, int W, SpLayout layout) {
  const int piece_len = sp_pieces(global_N, W, 0, layout)[0].length;
  const int blocks = (piece_len + s.block - 1) / s.block, segments = std::min(4, blocks);
  return std::min(piece_len, (blocks + segments - 1) / segments * s.block);
}

}  // namespace

Lasp2Attention::Lasp2Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
                               StatePassingKind passing, int slices)
    : sp_(sp),
      s_(shape),
      span_(progress_span(shape, global_N, sp.size(), layout)),
      softmax_(sp, shape, global_N, layout, layers),
      linear_(sp, shape, global_N, layout, layers, span_, true, softmax_.documents(), passing, slices),
      halo_(sp, shape.B, shape.N, layout),
      others_(layers) {}

Lasp2Attention::~Lasp2Attention() = default;

WorkspaceBuffer& Lasp2Attention::bidirectional_ws() {
  const size_t n = linear_attention_bidirectional_workspace_floats(s_.linear_kernel(s_.B, s_.N, s_.H));
  if (bidirectional_ws_.storage.size() < n) bidirectional_ws_.storage.resize(n);
  return bidirectional_ws_;
}

template <class F>
void Lasp2Attention::for_each_span(bool reverse, Pass pass, F f) {
  const int spans = (s_.N + span_ - 1) / span_;
  for (int i = 0; i < spans; ++i) {
    const int begin = (reverse ? spans - 1 - i : i) * span_;
    linear_.begin_span(begin, std::min(span_, s_.N - begin), pass);
    f();
  }
}

// A transition in closed form (scalar, diagonal) lets the exchange overlap the kernel: P is applied afterwards.
// The delta rule's runs its kernel from P (and its backward from P with G).
void Lasp2Attention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                    const LinearGates& gates) {
  LASP_CHECK(!gates.delta() || s_.delta,
             "LASP-2: the gated delta rule's gates reached an attention made without it (shape.delta)");
  // A recompute (Attention::set_recomputing) reuses the incoming states of this step's forward.
  const bool held = recomputing() && linear_.holds(layer), overlap = !gates.delta();
  if (!held) {
    linear_.begin_span(0, s_.N, Pass::forward);
    linear_.collect(layer, k, v, gates);
    linear_.exchange_start(layer, Pass::forward, gates);
    if (!overlap) linear_.exchange_finish(layer, Pass::forward);
  }
  for_each_span(false, Pass::forward, [&] {
    linear_.forward(layer, o, q, k, v, gates, !overlap);
    linear_.exchange_test();  // lets MPI progress
  });
  if (!overlap) return;
  if (!held) linear_.exchange_finish(layer, Pass::forward);
  linear_.begin_span(0, s_.N, Pass::forward);
  linear_.apply_incoming(layer, o, q, gates);
}

void Lasp2Attention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v, const LinearGates& gates) {
  const bool overlap = !gates.delta();
  linear_.begin_span(0, s_.N, Pass::backward);
  linear_.own_state_gradients(layer, dout, q, k, v, gates);
  linear_.exchange_start(layer, Pass::backward, gates);
  if (!overlap) linear_.exchange_finish(layer, Pass::backward);
  for_each_span(true, Pass::backward, [&] {
    linear_.backward(layer, dq, dk, dv, dout, q, k, v, gates,
                     overlap ? Lasp2Linear::Edges::overlap : Lasp2Linear::Edges::complete);
    linear_.exchange_test();
  });
  if (!overlap) return;
  linear_.exchange_finish(layer, Pass::backward);
  linear_.begin_span(0, s_.N, Pass::backward);
  linear_.apply_incoming_backward(layer, dq, dout, q, gates);
  linear_.key_gradients(layer, dk, dv, k, v, gates);
}

// The bidirectional form has one state per batch row and head: the sum over every rank's tokens.
void Lasp2Attention::linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!softmax_.documents().empty());
  const int B = s_.B, H = s_.H, dk = s_.dk, dv = s_.dv;
  const size_t kv = s_.state_floats(), states = size_t(B) * H * kv;
  std::vector<float> local(states), all(states * sp_.size()), others(states, 0.f);
#pragma omp parallel for num_threads(s_.threads)
  for (int bh = 0; bh < B * H; ++bh)  // local K^T V
    gemm(true, false, dk, dv, s_.N, 1.f, k + size_t(bh / H) * s_.N * H * dk + size_t(bh % H) * dk, H * dk, v + size_t(bh / H) * s_.N * H * dv + size_t(bh % H) * dv,
         H * dv, 0.f, local.data() + size_t(bh) * kv, dv);
  sp_.all_gather(local.data(), all.data(), states);
  for (int r = 0; r < sp_.size(); ++r)
    if (r != sp_.rank())
      for (size_t i = 0; i < states; ++i) others[i] += all[size_t(r) * states + i];
  linear_attention_bidirectional_forward(o, nullptr, q, k, v, others.data(), s_.linear_kernel(B, s_.N, H),
                                         bidirectional_ws().view());
  others_[layer] = std::move(others);  // the other ranks' K^T V, for the backward
}

void Lasp2Attention::linear_bidirectional_backward(int layer, float* dq, float* dkeys, float* dvalues, const float* dout,
                                                   const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!softmax_.documents().empty());
  const int B = s_.B, H = s_.H, dk = s_.dk, dv = s_.dv;
  const size_t kv = s_.state_floats(), states = size_t(B) * H * kv;
  std::vector<float> local(states), all(states * sp_.size()), others(states, 0.f);
#pragma omp parallel for num_threads(s_.threads)
  for (int bh = 0; bh < B * H; ++bh)  // local Q^T dO: this rank's gradient of the total state
    gemm(true, false, dk, dv, s_.N, 1.f, q + size_t(bh / H) * s_.N * H * dk + size_t(bh % H) * dk, H * dk,
         dout + size_t(bh / H) * s_.N * H * dv + size_t(bh % H) * dv, H * dv, 0.f, local.data() + size_t(bh) * kv, dv);
  sp_.all_gather(local.data(), all.data(), states);
  for (int r = 0; r < sp_.size(); ++r)
    if (r != sp_.rank())
      for (size_t i = 0; i < states; ++i) others[i] += all[size_t(r) * states + i];
  linear_attention_bidirectional_backward(dq, dkeys, dvalues, nullptr, dout, others.data(), q, k, v,
                                          others_[layer].data(), s_.linear_kernel(B, s_.N, H), bidirectional_ws().view());
}

double Lasp2Attention::memory_floats(const std::string& layer_types) const {
  const int linear = int(std::count(layer_types.begin(), layer_types.end(), 'L'));
  return linear_.memory_floats(linear) + softmax_.memory_floats(int(layer_types.size()) - linear, s_.H_kv);
}

void Lasp2Attention::keep_decode_state(bool keep) { linear_.keep_final_states(keep); }

std::vector<float> Lasp2Attention::final_state(int layer) const { return linear_.final_state(layer); }

Attention::ConvRuns Lasp2Attention::conv_halo(int, float* halo, const float* x, int C, int K) {
  LASP_CHECK(s_.delta, "LASP-2: a convolution halo asked of an attention without the gated delta rule");
  const SpDocuments& docs = softmax_.documents();
  return halo_.forward(halo, x, docs.empty() ? nullptr : docs.local.starts.data(), C, K);
}

void Lasp2Attention::conv_halo_backward(int, float* dx, const float* dhalo, int C, int K) {
  const SpDocuments& docs = softmax_.documents();
  halo_.backward(dx, dhalo, docs.empty() ? nullptr : docs.local.starts.data(), C, K);
}

std::vector<float> Lasp2Attention::keys_in_order(int layer, bool values) const {
  return softmax_.keys_in_order(layer, values);
}

void Lasp2Attention::softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) {
  softmax_.forward(layer, o, lse, q, k, v, recomputing());
}

void Lasp2Attention::softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                                      const float* lse, const float* q, const float*, const float*) {
  softmax_.backward(layer, dq, dk, dv, dout, o, lse, q);
}

}  // namespace lasp
