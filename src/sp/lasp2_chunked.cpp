#include "sp/lasp2_chunked.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace lasp {

Lasp2ChunkedAttention::Lasp2ChunkedAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                             int layers, int chunk)
    : sp_(sp),
      s_(shape),
      global_N_(global_N),
      chunk_(chunk),
      chunks_(0),
      mine_(sp_pieces(global_N, sp.size(), sp.rank(), layout)),
      all_positions_(sp_positions(global_N, sp.size(), sp.rank(), layout)),
      halo_(sp, shape.B, shape.N, layout),
      softmax_(sp, shape, global_N, layout, layers),
      linear_(sp, shape, global_N, layout, layers, chunk, false, softmax_.documents()) {
  LASP_CHECK(chunk > 0 && chunk <= shape.N, "LASP-2 in chunks: expected 0 < chunk <= {} tokens per rank, got {}",
             shape.N, chunk);
  chunks_ = (shape.N + chunk - 1) / chunk;
  ws_.storage.resize(softmax_attention_workspace_floats(chunk, global_N, s_.d, s_.threads));
  begin_chunk(0, chunk, Pass::forward);
}

double Lasp2ChunkedAttention::memory_floats(const std::string& layer_types) const {
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear, pieces = double(mine_.size());
  double floats = double(ws_.storage.size()) + linear_.memory_floats(int(linear));
  if (linear > 0 && s_.delta) {  // the convolutions' halos and tails
    const double conv = double(s_.B) * s_.conv_rows * (2.0 * s_.dk * s_.H + double(s_.dv) * s_.value_heads());
    floats += linear * (2 * pieces + chunks_ + 1) * conv + 2 * conv;
  }
  if (softmax > 0) floats += softmax_.memory_floats(int(softmax), s_.H_kv) + 2.0 * kv_floats();
  return floats;
}

void Lasp2ChunkedAttention::begin_chunk(int begin, int length, Pass pass) {
  LASP_CHECK(begin % chunk_ == 0 && length > 0 && length <= chunk_ && begin + length <= s_.N &&
                 (begin + length == s_.N || length == chunk_),
             "LASP-2 in chunks: chunk [{}, {}) does not follow chunks of {} tokens over {}", begin, begin + length,
             chunk_, s_.N);
  begin_ = begin, length_ = length, index_ = begin / chunk_, pass_ = pass;
  if (pass == Pass::forward) dkv_layer_ = -1;  // a new step: no key gradients under way
  positions_.assign(all_positions_.begin() + begin, all_positions_.begin() + begin + length);
  linear_.begin_span(begin, length, pass);
}

void Lasp2ChunkedAttention::linear_collect(int layer, const float* k, const float* v, const LinearGates& gates) {
  linear_.collect(layer, k, v, gates);
}

void Lasp2ChunkedAttention::linear_exchange(int layer, Pass pass, const LinearGates& gates) {
  linear_.exchange_start(layer, pass, gates);  // ONE all-gather each way
  linear_.exchange_finish(layer, pass);
}

void Lasp2ChunkedAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                           const LinearGates& gates) {
  linear_.forward(layer, o, q, k, v, gates);
}

void Lasp2ChunkedAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                            const float* q, const float* k, const float* v, const LinearGates& gates) {
  linear_.backward(layer, dq, dk, dv, dout, q, k, v, gates);
}

bool Lasp2ChunkedAttention::linear_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                                                 const LinearGates& gates) {
  return linear_.key_gradients(layer, dk, dv, k, v, gates);
}

// Softmax layers: this rank's keys and values in local order, (2, B, N, H_kv, d); a chunk's rows of each.
void Lasp2ChunkedAttention::softmax_collect(int, const float* k, const float* v) {
  const size_t row = size_t(s_.H_kv) * s_.d, n = size_t(length_) * row;
  local_kv_.resize(2 * kv_floats());
  for (int b = 0; b < s_.B; ++b) {
    const size_t to = (size_t(b) * s_.N + begin_) * row;
    std::memcpy(local_kv_.data() + to, k + b * n, sizeof(float) * n);
    std::memcpy(local_kv_.data() + kv_floats() + to, v + b * n, sizeof(float) * n);
  }
}

void Lasp2ChunkedAttention::softmax_exchange(int layer, Pass pass) {
  local_kv_.resize(2 * kv_floats());
  if (pass == Pass::forward) {
    softmax_.gather_kv(layer, local_kv_.data(), local_kv_.data() + kv_floats(), s_.H_kv);
    return;
  }
  LASP_CHECK(dkv_layer_ == layer, "LASP-2 in chunks: the backward exchange of layer {} before its first pass", layer);
  std::fill(local_kv_.begin(), local_kv_.end(), 0.f);
  softmax_.scatter_dkv(local_kv_.data(), local_kv_.data() + kv_floats(), s_.H_kv);
  dkv_layer_ = -1;  // the layer's key gradients are handed on: a next backward starts from zero
}

bool Lasp2ChunkedAttention::softmax_key_gradients(int, float* dk, float* dv) {
  const size_t row = size_t(s_.H_kv) * s_.d, n = size_t(length_) * row;
  for (int b = 0; b < s_.B; ++b) {
    const float* from = local_kv_.data() + (size_t(b) * s_.N + begin_) * row;
    for (size_t i = 0; i < n; ++i) dk[b * n + i] += from[i], dv[b * n + i] += from[kv_floats() + i];
  }
  return true;
}

const int* Lasp2ChunkedAttention::chunk_documents() {
  if (docs().empty()) return nullptr;
  chunk_docs_ = documents_slice(docs().local, s_.N, begin_, length_);
  return chunk_docs_.first_positions();
}

void Lasp2ChunkedAttention::softmax_forward(int layer, float* o, float* lse, const float* q, const float*,
                                            const float*) {
  const float* kv = softmax_.gathered_kv(layer);
  const size_t all = size_t(s_.B) * global_N_ * s_.H_kv * s_.d;
  softmax_attention_forward(o, lse, q, kv, kv + all, positions_.data(), softmax_.gathered_positions(), chunk_documents(),
                            s_.softmax_kernel(s_.B, length_, global_N_, s_.H, s_.H_kv), ws_.view());
}

void Lasp2ChunkedAttention::softmax_backward(int layer, float* dq, float*, float*, const float* dout, const float* o,
                                             const float* lse, const float* q, const float*, const float*) {
  const float* kv = softmax_.gathered_kv(layer);
  const size_t all = size_t(s_.B) * global_N_ * s_.H_kv * s_.d;
  if (dkv_layer_ != layer) dkv_ = softmax_.zeroed_dkv(s_.H_kv), dkv_layer_ = layer;  // the layer's first chunk
  softmax_attention_backward(dq, dkv_, dkv_ + all, dout, o, lse, q, kv, kv + all, positions_.data(),
                             softmax_.gathered_positions(), chunk_documents(),
                             s_.softmax_kernel(s_.B, length_, global_N_, s_.H, s_.H_kv), ws_.view());
}

}  // namespace lasp
