#include "sp/lasp2_chunked.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/gla.h"
#include "sp/piece_states.h"

namespace lasp {

namespace {

size_t kernel_workspace_floats(const AttentionShape& s, int global_N, int chunk) {
  const LinearAttentionShape linear = s.linear_kernel(1, chunk, s.H), gla = s.gla_kernel(1, chunk, s.H);
  const DeltaRuleShape delta = s.delta_kernel(1, chunk);
  return std::max({linear_attention_forward_workspace_floats(linear), linear_attention_backward_workspace_floats(linear),
                   linear_attention_span_workspace_floats(linear),
                   s.gla ? gla_backward_workspace_floats(gla) : 0,
                   s.delta ? std::max({delta_rule_forward_workspace_floats(delta), delta_rule_backward_workspace_floats(delta),
                                       delta_rule_summary_workspace_floats(delta)})
                           : 0,
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
      gamma_(layers),
      leaving_(layers),
      transitions_(layers),
      halo_(sp, shape.B, shape.N, layout),
      softmax_(sp, shape, global_N, layout, layers) {
  LASP_CHECK(chunk > 0 && chunk <= shape.N, "LASP-2 in chunks: expected 0 < chunk <= {} tokens per rank, got {}",
             shape.N, chunk);
  chunks_ = (shape.N + chunk - 1) / chunk;
  piece_len_ = mine_[0].length;
  ws_.storage.resize(kernel_workspace_floats(shape, global_N, chunk));
  passing_ = make_state_passing(StatePassingKind::gather, sp,
                                {shape.B, shape.value_heads(), shape.dk, shape.dv, mine_, owner_}, 0);
  begin_chunk(0, chunk, Pass::forward);
}

double Lasp2ChunkedAttention::memory_floats(const std::string& layer_types) const {
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear;
  const double S = double(state_floats()), pieces = double(mine_.size()), W = sp_.size();
  double floats = double(kernel_workspace_floats(s_, global_N_, chunk_)) + double(s_.threads) * scratch_floats();
  if (linear > 0) floats += linear * (pieces + chunks_) * S + (W + 2) * pieces * S + 2 * S;
  if (linear > 0 && s_.gla) {  // the pairs sent and gathered; per layer Gamma and the leaving states; A
    const double G = double(gate_floats());
    floats += (W + 1) * pieces * (S + G) + linear * pieces * (G + S) + (chunks_ + 1) * pieces * G;
  }
  if (linear > 0 && s_.delta) {  // per layer A_r; a segment's pair and a product; the convolutions' halos and tails
    const double X = double(transition_floats());
    const double conv = double(s_.B) * s_.conv_rows * (2.0 * s_.dk * s_.H + double(s_.dv) * s_.value_heads());
    floats += linear * pieces * X + 2 * X + S + linear * (2 * pieces + chunks_ + 1) * conv + 2 * conv;
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
  segments_.clear();
  for (int i = 0; i < int(mine_.size()); ++i) {
    const int from = std::max(begin, mine_[i].offset), to = std::min(begin + length, mine_[i].offset + piece_len_);
    if (from < to) segments_.push_back({i, from - mine_[i].offset, from - begin, to - from});
  }
}

template <class F>
void Lasp2ChunkedAttention::for_each_head(F f) {
  if (scratch_.empty()) scratch_.resize(size_t(s_.threads) * scratch_floats());
  const int items = int(segments_.size()) * s_.B * s_.H;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s_.threads)
  for (int it = 0; it < items; ++it) {
    const int h = it % s_.H, b = it / s_.H % s_.B, sg = it / (s_.H * s_.B);
    f(segments_[sg], b, h, scratch_.data() + size_t(omp_get_thread_num()) * scratch_floats());
  }
}

Lasp2ChunkedAttention::SegmentGates Lasp2ChunkedAttention::segment_gates(float* scratch, const Segment& sg, int b, int h,
                                                                        const float* log_gates) const {
  const size_t n = size_t(chunk_) * widest(), m = size_t(chunk_) * s_.dk;
  const SegmentGates f{scratch + n, scratch + n + m, scratch + n + 2 * m, scratch + n + 3 * m};
  gla_gate_products(f.gates, f.bq, f.bk, log_gates + key_at(b, sg.row, h), long(s_.H) * s_.dk, sg.length, s_.dk,
                    docs().flags(b, local_row(sg)));
  return f;
}

// M <- diag(Gamma_seg) M + (K .* bk)^T V, Gamma <- Gamma .* Gamma_seg (both from nothing at a piece's start).
void Lasp2ChunkedAttention::gla_collect(int layer, const float* k, const float* v, const float* log_gates) {
  // (checked here, outside the parallel loops: the backward's passes follow this one)
  LASP_CHECK(s_.gla, "LASP-2 in chunks: GLA's gates came to a layer whose shape said no GLA (the thread scratch has "
                     "no room for them): build the shape with attention_shape()");
  const int H = s_.H, dk = s_.dk, dv = s_.dv;
  const size_t S = state_floats(), G = gate_floats();
  send_.resize(mine_.size() * S);
  gamma_[layer].resize(mine_.size() * G);
  for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
    const size_t head = size_t(b) * H + h;
    float *M = send_.data() + sg.piece * S + head * s_.state_floats(), *gamma = gamma_[layer].data() + sg.piece * G + head * dk;
    const SegmentGates f = segment_gates(tmp, sg, b, h, log_gates);
    const float* total = f.bq + size_t(sg.length - 1) * dk;  // the segment's gate product
    for (int i = 0; i < dk; ++i) {
      for (int j = 0; j < dv; ++j) M[i * dv + j] = sg.at == 0 ? 0.f : total[i] * M[i * dv + j];
      gamma[i] = sg.at == 0 ? total[i] : gla_gate_product(gamma[i], total[i]);
    }
    gated_rows(tmp, k + key_at(b, sg.row, h), H * dk, f.bk, sg.length, dk);
    gemm(true, false, dk, dv, sg.length, 1.f, tmp, dk, v + value_at(b, sg.row, h), H * dv, 1.f, M, dv);
  });
}

void Lasp2ChunkedAttention::linear_collect(int layer, const float* k, const float* v, const LinearGates& gates) {
  if (gates.gla()) return gla_collect(layer, k, v, gates.log_gates);
  if (gates.delta()) return delta_collect(layer, k, v, gates);
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H;
  const size_t S = state_floats(), row_state = size_t(H) * s_.state_floats();
  const StateForm form{Transition::scalar, s_.dk, s_.dv};
  send_.resize(mine_.size() * S);
  std::vector<float> segment_state(row_state);
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b) {
      // The piece's state so far goes through the segment's transition (0 at a start, or where the piece
      // begins), then takes the segment's own state: M = a M + M_segment.
      float* M = send_.data() + sg.piece * S + b * row_state;
      const uint8_t* flags = docs().flags(b, local_row(sg));
      linear_attention_span_state(segment_state.data(), k + key_at(b, sg.row), v + value_at(b, sg.row), lambda, flags,
                                  s_.linear_rows(), s_.linear_kernel(1, sg.length, H), ws_.view());
      const bool cut = sg.at == 0 || docs().starts_in(b, local_row(sg), sg.length).first < sg.length;
      for (int h = 0; h < H; ++h) {
        const float a = cut ? 0.f : decay_power(lambda ? double(lambda[h]) : 1.0, sg.length);
        advance_state(form, M + h * form.state_floats(), &a, segment_state.data() + h * form.state_floats(), nullptr);
      }
    }
}

void Lasp2ChunkedAttention::linear_exchange(int layer, Pass pass, const LinearGates& gates) {
  const size_t S = state_floats(), pieces = mine_.size();
  LASP_CHECK(send_.size() == pieces * S, "LASP-2 in chunks: the exchange of layer {} before its first pass", layer);
  auto& out = pass == Pass::forward ? incoming_[layer] : suffix_;
  out.resize(pieces * S);
  const std::vector<uint8_t> cut = docs().piece_cuts(int(owner_.size()), piece_len_);
  PieceGates piece_gates{nullptr, piece_len_, nullptr, s_.B, s_.value_heads(), s_.dk, nullptr};
  if (gates.delta()) {  // the pieces' transitions A_r, from pass 1 of the forward (kept for the backward's adjoint)
    LASP_CHECK(transitions_[layer].size() == pieces * transition_floats(),
               "LASP-2 in chunks: layer {}'s transitions before its pass 1", layer);
    piece_gates.matrices = transitions_[layer].data();
  } else if (gates.gla()) {  // GLA: each row's gate product, from pass 1 of the forward (a start in it made it 0)
    LASP_CHECK(gamma_[layer].size() == pieces * gate_floats(), "LASP-2 in chunks: layer {}'s gates before its pass 1",
               layer);
    piece_gates.rows = gamma_[layer].data();
  } else {
    piece_gates.lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
    piece_gates.cut = cut.empty() ? nullptr : cut.data();
  }
  passing_->start(send_.data(), piece_gates, pass == Pass::forward)->wait();  // ONE all-gather each way
  passing_->finish(out.data());
}

void Lasp2ChunkedAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                           const LinearGates& gates) {
  const bool gla = gates.gla(), delta = gates.delta();
  const float* lambda = gla || delta ? nullptr : fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H;
  const size_t S = state_floats(), row_state = size_t(s_.value_heads()) * s_.state_floats();
  const auto& P = incoming_[layer];
  LASP_CHECK(P.size() == mine_.size() * S, "LASP-2 in chunks: layer {} runs before its exchange", layer);
  auto& entering = entering_[layer];
  entering.resize(size_t(chunks_) * S);
  carry_.resize(S), carry_next_.resize(S);
  if (gla) leaving_[layer].resize(mine_.size() * S);
  for (const Segment& sg : segments_) {
    // The state entering the segment: P at a piece's start; else, inside a piece (only at a chunk's start),
    // what the previous chunk left, kept by the forward pass for the backward's recomputation.
    float* kept = entering.data() + size_t(index_) * S;
    if (sg.at > 0 && pass_ == Pass::forward) std::memcpy(kept, carry_.data(), sizeof(float) * S);
    const float* in = sg.at > 0 ? kept : first_piece(sg.piece) ? nullptr : P.data() + sg.piece * S;
    const bool pass_on = pass_ == Pass::forward && sg.at + sg.length < piece_len_;
    // GLA's gate gradient needs the state leaving each piece (gla_key_gradients): kept by the forward pass
    const bool leaves = gla && pass_ == Pass::forward && !pass_on;
    float* out = pass_on ? carry_next_.data() : leaves ? leaving_[layer].data() + sg.piece * S : nullptr;
    for (int b = 0; b < s_.B; ++b) {
      const long kr = key_at(b, sg.row), vr = value_at(b, sg.row), gr = gate_at(b, sg.row);
      const uint8_t* flags = docs().flags(b, local_row(sg));
      if (delta)
        delta_rule_forward(o + vr, out ? out + b * row_state : nullptr, q + kr, k + kr, v + vr, gates.beta + gr,
                           gates.log_gates + gr, in ? in + b * row_state : nullptr, flags, s_.delta_kernel(1, sg.length),
                           ws_.view());
      else if (gla)
        gla_forward(o + vr, out ? out + b * row_state : nullptr, q + kr, k + kr, v + vr, gates.log_gates + kr,
                    in ? in + b * row_state : nullptr, flags, s_.gla_kernel(1, sg.length, H), ws_.view());
      else
        linear_attention_forward(o + vr, out ? out + b * row_state : nullptr, q + kr, k + kr, v + vr,
                                 in ? in + b * row_state : nullptr, lambda, flags, s_.linear_kernel(1, sg.length, H),
                                 ws_.view());
    }
    if (pass_on) std::swap(carry_, carry_next_);
  }
}

void Lasp2ChunkedAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                            const float* q, const float* k, const float* v, const LinearGates& gates) {
  const bool gla = gates.gla(), delta = gates.delta();
  const float* lambda = gla || delta ? nullptr : fixed_decay(gates, "LASP-2 in layer-major chunks");
  const int H = s_.H, dkey = s_.dk;
  const size_t S = state_floats(), row_state = size_t(s_.value_heads()) * s_.state_floats();
  const auto& P = incoming_[layer];
  LASP_CHECK(P.size() == mine_.size() * S && entering_[layer].size() == size_t(chunks_) * S,
             "LASP-2 in chunks: the backward of layer {} before its forward", layer);
  send_.resize(mine_.size() * S);
  carry_.resize(S), carry_next_.resize(S);  // here: the gradient of the state leaving a chunk, and entering it
  if (delta) {  // the kernel accumulates its gates' gradients; the seam writes them
    std::fill_n(gates.d_beta, gate_at(s_.B, 0), 0.f);
    std::fill_n(gates.d_log_gates, gate_at(s_.B, 0), 0.f);
  }
  for (auto sg = segments_.rbegin(); sg != segments_.rend(); ++sg) {
    const float* in = sg->at > 0 ? entering_[layer].data() + size_t(index_) * S
                                 : first_piece(sg->piece) ? nullptr : P.data() + sg->piece * S;
    // The gradient of the state leaving the segment: from the next chunk inside the piece; at the piece's end
    // none here (the other ranks' part, G, comes in key_gradients).
    const bool from_next = sg->at + sg->length < piece_len_;
    const bool gives = in != nullptr;  // the state entering it has a gradient to give
    std::fill(carry_next_.begin(), carry_next_.end(), 0.f);
    for (int b = 0; b < s_.B; ++b) {
      const long kr = key_at(b, sg->row), vr = value_at(b, sg->row), gr = gate_at(b, sg->row);
      float* dstate_in = gives ? carry_next_.data() + b * row_state : nullptr;
      const float* dstate_out = from_next ? carry_.data() + b * row_state : nullptr;
      const float* state_in = in ? in + b * row_state : nullptr;
      const uint8_t* flags = docs().flags(b, local_row(*sg));
      if (delta)
        delta_rule_backward(dq + kr, dk + kr, dv + vr, gates.d_beta + gr, gates.d_log_gates + gr, dstate_in, dout + vr,
                            dstate_out, q + kr, k + kr, v + vr, gates.beta + gr, gates.log_gates + gr, state_in, flags,
                            s_.delta_kernel(1, sg->length), ws_.view());
      else if (gla)
        gla_backward(dq + kr, dk + kr, dv + vr, gates.d_log_gates + kr, dstate_in, dout + vr, dstate_out, q + kr,
                     k + kr, v + vr, gates.log_gates + kr, state_in, flags, s_.gla_kernel(1, sg->length, H), ws_.view());
      else
        linear_attention_backward(dq + kr, dk + kr, dv + vr, dstate_in, dout + vr, dstate_out, q + kr, k + kr, v + vr,
                                  state_in, lambda, flags, s_.linear_kernel(1, sg->length, H), ws_.view());
    }
    if (sg->at == 0)  // the piece's dM: what it sends (zero for the first piece, which has no state entering)
      std::memcpy(send_.data() + sg->piece * S, carry_next_.data(), sizeof(float) * S);
    else
      std::swap(carry_, carry_next_);
  }
  if (!gla) return;
  // A of each segment: the gates' product from its end to its piece's end, built from the piece's end as the
  // chunks come in reverse (one row of dk per piece, batch row and head).
  const size_t G = gate_floats(), pieces = mine_.size();
  after_.resize(size_t(chunks_) * pieces * G);
  after_run_.resize(pieces * G);
  for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
    const size_t x = sg.piece * G + (size_t(b) * H + h) * dkey;
    float *run = after_run_.data() + x, *A = after_.data() + size_t(index_) * pieces * G + x;
    if (sg.at + sg.length == piece_len_) std::fill(run, run + dkey, 1.f);  // the piece's last segment
    std::memcpy(A, run, sizeof(float) * dkey);
    const float* total = segment_gates(tmp, sg, b, h, gates.log_gates).bq + size_t(sg.length - 1) * dkey;
    for (int i = 0; i < dkey; ++i) run[i] = gla_gate_product(run[i], total[i]);
  });
}

bool Lasp2ChunkedAttention::linear_key_gradients(int layer, float* dkeys, float* dvalues, const float* k,
                                                 const float* v, const LinearGates& gates) {
  const int H = s_.H;
  const size_t S = state_floats();
  LASP_CHECK(suffix_.size() == mine_.size() * S, "LASP-2 in chunks: key gradients of layer {} before its exchange",
             layer);
  bool any = false;
  for (const Segment& sg : segments_) any = any || !last_piece(sg.piece);
  if (!any) return false;  // the last piece: no later piece's state reads its keys
  if (gates.gla()) {
    gla_key_gradients(layer, dkeys, dvalues, gates.d_log_gates, k, v, gates.log_gates);
    return true;
  }
  if (gates.delta()) {
    delta_key_gradients(layer, dkeys, dvalues, k, v, gates);
    return true;
  }
  const float* lambda = fixed_decay(gates, "LASP-2 in layer-major chunks");
  std::vector<float> scale(H);
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b) {
      // Only keys from the piece's last document start on reach the state it passes on: none of this segment's
      // when that start lies after it (its own starts cut the rest).
      if (last_piece(sg.piece) || docs().starts_in(b, mine_[sg.piece].offset, piece_len_).second >= sg.at + sg.length)
        continue;
      const float* G = suffix_.data() + sg.piece * S + b * size_t(H) * s_.state_floats();
      for (int h = 0; h < H; ++h)  // lambda^(L - j) for the piece position j = sg.at + i: lambda^(L - sg.at - n) lambda^(n - i)
        scale[h] = decay_power(lambda ? double(lambda[h]) : 1.0, piece_len_ - sg.at - sg.length);
      linear_attention_span_state_backward(dkeys + key_at(b, sg.row), dvalues + value_at(b, sg.row), G, k + key_at(b, sg.row),
                                           v + value_at(b, sg.row), lambda, docs().flags(b, local_row(sg)), scale.data(),
                                           s_.linear_rows(), s_.linear_kernel(1, sg.length, H), ws_.view());
    }
  return true;
}

// The later pieces' share (G) for GLA, bk A the gates' product from a key to its piece's end:
// dkx = (V G^T) .* bk A into dk, dv += (K .* bk A) G, and into dg (accumulated) from the segment's end:
// r = rowsum(diag(A) S_end .* G) - the sum of k dkx so far (rowsum(S_out .* G) less the later chunks' share),
// restarting at document starts.
void Lasp2ChunkedAttention::gla_key_gradients(int layer, float* dkeys, float* dvalues, float* dg, const float* k,
                                              const float* v, const float* log_gates) {
  const int H = s_.H, dk = s_.dk, dv = s_.dv, ldk = H * dk;
  const size_t S = state_floats(), G = gate_floats(), pieces = mine_.size();
  LASP_CHECK(dg && after_.size() == size_t(chunks_) * pieces * G && leaving_[layer].size() == pieces * S,
             "LASP-2 in chunks: GLA's key gradients of layer {} before its backward's pass 1", layer);
  for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
    if (last_piece(sg.piece)) return;
    const size_t head = size_t(b) * H + h, kv = s_.state_floats();
    const float* Gm = suffix_.data() + sg.piece * S + head * kv;
    const float* A = after_.data() + (size_t(index_) * pieces + sg.piece) * G + head * dk;
    // the state leaving the segment: the one entering the next chunk inside the piece, or leaving the piece
    const float* S_end = (sg.at + sg.length == piece_len_ ? leaving_[layer].data() + sg.piece * S
                                                          : entering_[layer].data() + size_t(index_ + 1) * S) +
                         head * kv;
    const SegmentGates f = segment_gates(tmp, sg, b, h, log_gates);
    for (int x = 0; x < sg.length * dk; ++x) f.bk[x] = gla_gate_product(f.bk[x], A[x % dk]);
    const long at = key_at(b, sg.row, h), vat = value_at(b, sg.row, h);
    gemm(false, true, sg.length, dk, dv, 1.f, v + vat, H * dv, Gm, dv, 0.f, tmp, dk);  // dkx = (V G^T) .* bk A
    for (int x = 0; x < sg.length * dk; ++x) tmp[x] *= f.bk[x];
    float* r = f.r;
    for (int i = 0; i < dk; ++i) {
      r[i] = 0.f;
      for (int j = 0; j < dv; ++j) r[i] += S_end[i * dv + j] * Gm[i * dv + j];
      r[i] *= A[i];
    }
    const uint8_t* flags = docs().flags(b, local_row(sg));
    for (int t = sg.length - 1; t >= 0; --t) {
      const long row = at + long(t) * ldk;
      const bool start = flags && flags[t];
      for (int i = 0; i < dk; ++i) {
        dkeys[row + i] += tmp[t * dk + i];
        r[i] -= k[row + i] * tmp[t * dk + i];
        if (!start) dg[row + i] += r[i];
      }
      if (start) std::fill(r, r + dk, 0.f);
    }
    gated_rows(tmp, k + at, ldk, f.bk, sg.length, dk);  // dv += (K .* bk A) G
    gemm(false, false, sg.length, dv, dk, 1.f, tmp, dk, Gm, dv, 1.f, dvalues + vat, H * dv);
  });
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
