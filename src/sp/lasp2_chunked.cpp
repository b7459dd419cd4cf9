#include "sp/lasp2_chunked.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "sp/piece_states.h"

namespace lasp {

namespace {

size_t kernel_workspace_floats(const AttentionShape& s, int global_N, int chunk) {
  const LinearAttentionShape linear{1, chunk, s.H, s.d, s.block, s.threads};
  return std::max({linear_attention_forward_workspace_floats(linear), linear_attention_backward_workspace_floats(linear),
                   softmax_attention_workspace_floats(chunk, global_N, s.d, s.threads)});
}

}  // namespace

Lasp2ChunkedAttention::Lasp2ChunkedAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                             int layers, int chunk)
    : sp_(sp),
      s_(shape),
      global_N_(global_N),
      chunk_(chunk),
      chunks_(0),
      piece_len_(0),
      mine_(sp_pieces(global_N, sp.size(), sp.rank(), layout)),
      owner_(sp_piece_owners(global_N, sp.size(), layout)),
      all_positions_(sp_positions(global_N, sp.size(), sp.rank(), layout)),
      incoming_(layers),
      entering_(layers),
      softmax_(sp, shape, global_N, layout, layers) {
  LASP_CHECK(chunk > 0 && chunk <= shape.N, "LASP-2 in chunks: expected 0 < chunk <= {} tokens per rank, got {}",
             shape.N, chunk);
  chunks_ = (shape.N + chunk - 1) / chunk;
  piece_len_ = mine_[0].length;
  ws_.storage.resize(kernel_workspace_floats(shape, global_N, chunk));
  begin_chunk(0, chunk, Pass::forward);
}

double Lasp2ChunkedAttention::memory_floats(const std::string& layer_types) const {
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear;
  const double S = double(state_floats()), pieces = double(mine_.size()), W = sp_.size();
  double floats = double(kernel_workspace_floats(s_, global_N_, chunk_)) + double(s_.threads) * chunk_ * s_.d;
  if (linear > 0) floats += linear * (pieces + chunks_) * S + (W + 2) * pieces * S + 2 * S;
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
  segments_.clear();
  for (int i = 0; i < int(mine_.size()); ++i) {
    const int from = std::max(begin, mine_[i].offset), to = std::min(begin + length, mine_[i].offset + piece_len_);
    if (from < to) segments_.push_back({i, from - mine_[i].offset, from - begin, to - from});
  }
}

template <class F>
void Lasp2ChunkedAttention::for_each_head(F f) {
  if (scratch_.empty()) scratch_.resize(size_t(s_.threads) * chunk_ * s_.d);
  const int items = int(segments_.size()) * s_.B * s_.H;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s_.threads)
  for (int it = 0; it < items; ++it) {
    const int h = it % s_.H, b = it / s_.H % s_.B, sg = it / (s_.H * s_.B);
    f(segments_[sg], b, h, scratch_.data() + size_t(omp_get_thread_num()) * chunk_ * s_.d);
  }
}

void Lasp2ChunkedAttention::linear_collect(int, const float* k, const float* v, const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H, d = s_.d, ld = H * d;
  const size_t S = state_floats();
  send_.resize(mine_.size() * S);
  const auto pw = head_powers(lambda, H, chunk_);
  for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
    float* M = send_.data() + sg.piece * S + (size_t(b) * H + h) * d * d;
    const long at = (long(b) * length_ + sg.row) * ld + long(h) * d;
    const auto [first, last] = docs().starts_in(b, local_row(sg), sg.length);  // a start keeps nothing before it
    const float decay = first < sg.length ? 0.f : pw[h][sg.length];
    for (size_t x = 0; x < size_t(d) * d; ++x) M[x] = sg.at == 0 ? 0.f : decay * M[x];  // a piece starts from nothing
    decayed_rows(tmp, k + at, ld, pw[h].data(), true, sg.length, d);  // M += K^T diag(lambda^(n-j)) V
    std::fill(tmp, tmp + size_t(last) * d, 0.f);
    gemm(true, false, d, d, sg.length, 1.f, tmp, d, v + at, ld, 1.f, M, d);
  });
}

void Lasp2ChunkedAttention::linear_exchange(int layer, Pass pass, const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  const size_t S = state_floats(), pieces = mine_.size();
  LASP_CHECK(send_.size() == pieces * S, "LASP-2 in chunks: the exchange of layer {} before its first pass", layer);
  recv_.resize(sp_.size() * pieces * S);
  sp_.all_gather(send_.data(), recv_.data(), pieces * S);  // ONE all-gather each way
  auto& out = pass == Pass::forward ? incoming_[layer] : suffix_;
  out.resize(pieces * S);
  const std::vector<uint8_t> cut = docs().piece_cuts(int(owner_.size()), piece_len_);
  scan_piece_states(out.data(), recv_.data(), owner_, sp_.rank(), s_.B, s_.H, s_.d, lambda, piece_len_,
                    pass == Pass::forward, cut.empty() ? nullptr : cut.data());
}

void Lasp2ChunkedAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                           const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H, d = s_.d, ld = H * d;
  const size_t S = state_floats(), row_state = size_t(H) * d * d;
  const auto& P = incoming_[layer];
  LASP_CHECK(P.size() == mine_.size() * S, "LASP-2 in chunks: layer {} runs before its exchange", layer);
  auto& entering = entering_[layer];
  entering.resize(size_t(chunks_) * S);
  carry_.resize(S), carry_next_.resize(S);
  for (const Segment& sg : segments_) {
    // The state entering the segment: P at a piece's start; else, inside a piece (only at a chunk's start),
    // what the previous chunk left, kept by the forward pass for the backward's recomputation.
    float* kept = entering.data() + size_t(index_) * S;
    if (sg.at > 0 && pass_ == Pass::forward) std::memcpy(kept, carry_.data(), sizeof(float) * S);
    const float* in = sg.at > 0 ? kept : first_piece(sg.piece) ? nullptr : P.data() + sg.piece * S;
    const bool pass_on = pass_ == Pass::forward && sg.at + sg.length < piece_len_;
    for (int b = 0; b < s_.B; ++b) {
      const long at = (long(b) * length_ + sg.row) * ld;
      linear_attention_forward(o + at, pass_on ? carry_next_.data() + b * row_state : nullptr, q + at, k + at, v + at,
                               in ? in + b * row_state : nullptr, lambda, docs().flags(b, local_row(sg)),
                               {1, sg.length, H, d, s_.block, s_.threads},
                               ws_.view());
    }
    if (pass_on) std::swap(carry_, carry_next_);
  }
}

void Lasp2ChunkedAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                            const float* q, const float* k, const float* v, const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H, d = s_.d, ld = H * d;
  const size_t S = state_floats(), row_state = size_t(H) * d * d;
  const auto& P = incoming_[layer];
  LASP_CHECK(P.size() == mine_.size() * S && entering_[layer].size() == size_t(chunks_) * S,
             "LASP-2 in chunks: the backward of layer {} before its forward", layer);
  send_.resize(mine_.size() * S);
  carry_.resize(S), carry_next_.resize(S);  // here: the gradient of the state leaving a chunk, and entering it
  for (auto sg = segments_.rbegin(); sg != segments_.rend(); ++sg) {
    const float* in = sg->at > 0 ? entering_[layer].data() + size_t(index_) * S
                                 : first_piece(sg->piece) ? nullptr : P.data() + sg->piece * S;
    // The gradient of the state leaving the segment: from the next chunk inside the piece; at the piece's end
    // none here (the other ranks' part, G, comes in key_gradients).
    const bool from_next = sg->at + sg->length < piece_len_;
    const bool gives = in != nullptr;  // the state entering it has a gradient to give
    std::fill(carry_next_.begin(), carry_next_.end(), 0.f);
    for (int b = 0; b < s_.B; ++b) {
      const long at = (long(b) * length_ + sg->row) * ld;
      linear_attention_backward(dq + at, dk + at, dv + at, gives ? carry_next_.data() + b * row_state : nullptr,
                                dout + at, from_next ? carry_.data() + b * row_state : nullptr, q + at, k + at, v + at,
                                in ? in + b * row_state : nullptr, lambda, docs().flags(b, local_row(*sg)),
                                {1, sg->length, H, d, s_.block, s_.threads},
                                ws_.view());
    }
    if (sg->at == 0)  // the piece's dM: what it sends (zero for the first piece, which has no state entering)
      std::memcpy(send_.data() + sg->piece * S, carry_next_.data(), sizeof(float) * S);
    else
      std::swap(carry_, carry_next_);
  }
}

bool Lasp2ChunkedAttention::linear_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                                                 const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H, d = s_.d, ld = H * d;
  const size_t S = state_floats();
  LASP_CHECK(suffix_.size() == mine_.size() * S, "LASP-2 in chunks: key gradients of layer {} before its exchange",
             layer);
  bool any = false;
  for (const Segment& sg : segments_) any = any || !last_piece(sg.piece);
  if (!any) return false;  // the last piece: no later piece's state reads its keys
  const auto pw = head_powers(lambda, H, chunk_);
  for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
    if (last_piece(sg.piece)) return;
    const float* G = suffix_.data() + sg.piece * S + (size_t(b) * H + h) * d * d;
    const long at = (long(b) * length_ + sg.row) * ld + long(h) * d;
    // lambda^(L - j) for the piece position j = sg.at + i: lambda^(L - sg.at - n) lambda^(n - i)
    const float scale = decay_power(lambda ? double(lambda[h]) : 1.0, piece_len_ - sg.at - sg.length);
    // Only keys from the piece's last document start on reach the state it passes on.
    const int last = docs().starts_in(b, mine_[sg.piece].offset, piece_len_).second;
    const size_t cut = size_t(std::clamp(last - sg.at, 0, sg.length)) * d;
    decayed_rows(tmp, v + at, ld, pw[h].data(), true, sg.length, d, scale);  // dK += diag(.) V G^T
    std::fill(tmp, tmp + cut, 0.f);
    gemm(false, true, sg.length, d, d, 1.f, tmp, d, G, d, 1.f, dk + at, ld);
    decayed_rows(tmp, k + at, ld, pw[h].data(), true, sg.length, d, scale);  // dV += diag(.) K G
    std::fill(tmp, tmp + cut, 0.f);
    gemm(false, false, sg.length, d, d, 1.f, tmp, d, G, d, 1.f, dv + at, ld);
  });
  return true;
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
                            softmax_shape(s_.B, length_, global_N_, s_.H, s_.H_kv, s_.d, s_.threads), ws_.view());
}

void Lasp2ChunkedAttention::softmax_backward(int layer, float* dq, float*, float*, const float* dout, const float* o,
                                             const float* lse, const float* q, const float*, const float*) {
  const float* kv = softmax_.gathered_kv(layer);
  const size_t all = size_t(s_.B) * global_N_ * s_.H_kv * s_.d;
  if (dkv_layer_ != layer) dkv_ = softmax_.zeroed_dkv(s_.H_kv), dkv_layer_ = layer;  // the layer's first chunk
  softmax_attention_backward(dq, dkv_, dkv_ + all, dout, o, lse, q, kv, kv + all, positions_.data(),
                             softmax_.gathered_positions(), chunk_documents(),
                             softmax_shape(s_.B, length_, global_N_, s_.H, s_.H_kv, s_.d, s_.threads), ws_.view());
}

}  // namespace lasp
