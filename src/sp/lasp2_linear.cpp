#include "sp/lasp2_linear.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/delta_rule.h"
#include "kernels/gemm.h"
#include "kernels/gla.h"
#include "sp/piece_states.h"

namespace lasp {

namespace {

size_t kernel_workspace_floats(const AttentionShape& s, int n) {
  const LinearAttentionShape linear = s.linear_kernel(1, n, s.H), gla = s.gla_kernel(1, n, s.H);
  const DeltaRuleShape delta = s.delta_kernel(1, n);
  return std::max({linear_attention_forward_workspace_floats(linear), linear_attention_backward_workspace_floats(linear),
                   linear_attention_span_workspace_floats(linear),
                   s.gla ? std::max(gla_forward_workspace_floats(gla), gla_backward_workspace_floats(gla)) : 0,
                   s.delta ? std::max({delta_rule_forward_workspace_floats(delta), delta_rule_backward_workspace_floats(delta),
                                       delta_rule_summary_workspace_floats(delta)})
                           : 0});
}

}  // namespace

Lasp2Linear::Lasp2Linear(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers, int span,
                         bool whole, const SpDocuments& docs, StatePassingKind passing, int slices)
    : sp_(sp),
      s_(shape),
      docs_(docs),
      whole_(whole),
      span_(span),
      mine_(sp_pieces(global_N, sp.size(), sp.rank(), layout)),
      owner_(sp_piece_owners(global_N, sp.size(), layout)),
      final_states_(layers),
      incoming_(layers),
      entering_(layers),
      gamma_(layers),
      leaving_(layers),
      transitions_(layers) {
  LASP_CHECK(shape.N * sp.size() == global_N, "LASP-2: {} tokens per rank x {} ranks != sequence length {}", shape.N,
             sp.size(), global_N);
  LASP_CHECK(span > 0 && span <= shape.N, "LASP-2: expected spans of 0 < n <= {} tokens per rank, got {}", shape.N,
             span);
  spans_ = (shape.N + span - 1) / span;
  piece_len_ = mine_[0].length;
  longest_ = whole ? std::max(span, piece_len_) : span;
  ws_.storage.resize(kernel_workspace_floats(shape, longest_));
  passing_ = make_state_passing(passing, sp, {shape.B, shape.value_heads(), shape.dk, shape.dv, mine_, owner_}, slices);
  begin_span(0, span, Pass::forward);
}

double Lasp2Linear::memory_floats(int linear_layers) const {
  if (linear_layers == 0) return 0;
  const double linear = linear_layers, S = double(state_floats()), pieces = double(mine_.size());
  double floats = double(ws_.storage.size() + passing_->memory_floats()) + linear * (pieces + spans_) * S +
                  2 * pieces * S + 2 * S;
  if (s_.gla) {  // the thread scratch; per layer Gamma and the leaving states; A
    const double G = double(gate_floats());
    floats += double(s_.threads) * scratch_floats() + linear * pieces * (G + S) + (spans_ + 1) * pieces * G;
  }
  if (s_.delta) {  // per layer A_r; a segment's pair and a product
    const double X = double(transition_floats());
    floats += linear * pieces * X + 2 * X + S;
  }
  return floats;
}

void Lasp2Linear::begin_span(int begin, int length, Pass pass) {
  LASP_CHECK((begin % span_ == 0 || (begin == 0 && length == s_.N)) && length > 0 && begin + length <= s_.N &&
                 (begin + length == s_.N || length == span_ || length == s_.N),
             "LASP-2: span [{}, {}) does not follow spans of {} tokens over {}", begin, begin + length, span_, s_.N);
  begin_ = begin, length_ = length, index_ = begin / span_, pass_ = pass;
  rows_ = whole_ ? s_.N : length;
  segments_.clear();
  for (int i = 0; i < int(mine_.size()); ++i) {
    const int from = std::max(begin, mine_[i].offset), to = std::min(begin + length, mine_[i].offset + piece_len_);
    if (from < to) segments_.push_back({i, from - mine_[i].offset, whole_ ? from : from - begin, to - from});
    LASP_CHECK(to - from <= longest_, "LASP-2: a segment of {} tokens where the buffers hold {}", to - from, longest_);
  }
}

template <class F>
void Lasp2Linear::for_each_head(F f) {
  if (scratch_.empty()) scratch_.resize(size_t(s_.threads) * scratch_floats());
  const int items = int(segments_.size()) * s_.B * s_.H;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s_.threads)
  for (int it = 0; it < items; ++it) {
    const int h = it % s_.H, b = it / s_.H % s_.B, sg = it / (s_.H * s_.B);
    f(segments_[sg], b, h, scratch_.data() + size_t(omp_get_thread_num()) * scratch_floats());
  }
}

Lasp2Linear::SegmentGates Lasp2Linear::segment_gates(float* scratch, const Segment& sg, int b, int h,
                                                     const float* log_gates) const {
  const size_t n = size_t(longest_) * widest(), m = size_t(longest_) * s_.dk;
  const SegmentGates f{scratch + n, scratch + n + m, scratch + n + 2 * m, scratch + n + 3 * m};
  gla_gate_products(f.gates, f.bq, f.bk, log_gates + key_at(b, sg.row, h), long(s_.H) * s_.dk, sg.length, s_.dk,
                    docs().flags(b, local_row(sg)));
  return f;
}

// ---- collect: the pieces' pairs

void Lasp2Linear::collect(int layer, const float* k, const float* v, const LinearGates& gates) {
  send_.resize(mine_.size() * state_floats());
  if (gates.delta()) return delta_collect(layer, k, v, gates);
  if (gates.gla()) return gla_collect(layer, k, v, gates.log_gates);
  scalar_collect(k, v, fixed_decay(gates, "LASP-2"));
}

// The piece's state so far goes through the segment's transition (0 at a start, or where the piece begins), then
// takes the segment's own state: M = a M + M_segment.
void Lasp2Linear::scalar_collect(const float* k, const float* v, const float* lambda) {
  const int H = s_.H;
  const size_t S = state_floats(), row_state = size_t(H) * s_.state_floats();
  const StateForm form{Transition::scalar, s_.dk, s_.dv};
  std::vector<float> segment_state(row_state);
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b) {
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

// M <- diag(Gamma_seg) M + (K .* bk)^T V, Gamma <- Gamma .* Gamma_seg (both from nothing at a piece's start).
void Lasp2Linear::gla_collect(int layer, const float* k, const float* v, const float* log_gates) {
  const int H = s_.H, dk = s_.dk, dv = s_.dv;
  const size_t S = state_floats(), G = gate_floats();
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

// ---- the exchange

PieceGates Lasp2Linear::piece_gates(int layer, const LinearGates& gates, std::vector<uint8_t>& cut) const {
  const size_t pieces = mine_.size();
  PieceGates g{nullptr, piece_len_, nullptr, s_.B, s_.value_heads(), s_.dk, nullptr};
  if (gates.delta()) {  // the pieces' transitions A_r, from the forward's collect (kept for the backward's adjoint)
    LASP_CHECK(transitions_[layer].size() == pieces * transition_floats(),
               "LASP-2: layer {}'s transitions before its collect", layer);
    g.matrices = transitions_[layer].data();
  } else if (gates.gla()) {  // GLA: each row's gate product, from the forward's collect (a start in it made it 0)
    LASP_CHECK(gamma_[layer].size() == pieces * gate_floats(), "LASP-2: layer {}'s gates before its collect", layer);
    g.rows = gamma_[layer].data();
  } else {
    g.lambda = fixed_decay(gates, "LASP-2");
    cut = docs().piece_cuts(int(owner_.size()), piece_len_);
    g.cut = cut.empty() ? nullptr : cut.data();
  }
  return g;
}

void Lasp2Linear::exchange_start(int layer, Pass pass, const LinearGates& gates) {
  LASP_CHECK(send_.size() == mine_.size() * state_floats() && !request_,
             "LASP-2: the exchange of layer {} before its pieces' states, or during another", layer);
  request_ = passing_->start(send_.data(), piece_gates(layer, gates, cut_), pass == Pass::forward);
}

void Lasp2Linear::exchange_finish(int layer, Pass pass) {
  LASP_CHECK(request_, "LASP-2: layer {}'s exchange finished before it started", layer);
  request_->wait();
  request_.reset();
  auto& out = pass == Pass::forward ? incoming_[layer] : suffix_;
  passing_->finish(sized(out, mine_.size() * state_floats()).data());
  if (pass == Pass::forward && keep_)  // the state after the last piece, for decoding
    passing_->final_state(sized(final_states_[layer], state_floats()).data());
}

// ---- the kernels on the segments

void Lasp2Linear::forward(int layer, float* o, const float* q, const float* k, const float* v, const LinearGates& gates,
                          bool incoming) {
  const bool gla = gates.gla(), delta = gates.delta();
  const float* lambda = gla || delta ? nullptr : fixed_decay(gates, "LASP-2");
  const int H = s_.H;
  const size_t S = state_floats(), row_state = size_t(s_.value_heads()) * s_.state_floats();
  const auto& P = incoming_[layer];
  LASP_CHECK(!incoming || P.size() == mine_.size() * S, "LASP-2: layer {} runs before its exchange", layer);
  auto& entering = sized(entering_[layer], size_t(spans_) * S);
  carry_.resize(S), carry_next_.resize(S);
  if (gla) leaving_[layer].resize(mine_.size() * S);
  for (const Segment& sg : segments_) {
    // The state entering the segment: P at a piece's start; else, inside a piece (only at a span's start),
    // what the previous span left, kept by the forward pass for the backward's recomputation.
    float* kept = entering.data() + size_t(index_) * S;
    if (sg.at > 0 && pass_ == Pass::forward) std::memcpy(kept, carry_.data(), sizeof(float) * S);
    const float* in = sg.at > 0 ? kept : incoming && !first_piece(sg.piece) ? P.data() + sg.piece * S : nullptr;
    const bool pass_on = pass_ == Pass::forward && sg.at + sg.length < piece_len_;
    // GLA's gate gradient needs the state leaving each piece (gla_key_gradients): kept by the forward pass
    const bool leaves = gla && pass_ == Pass::forward && !pass_on;
    float* out = pass_on ? carry_next_.data() : leaves ? leaving_[layer].data() + sg.piece * S : nullptr;
    for (int b = 0; b < s_.B; ++b) {
      const long kr = key_at(b, sg.row), vr = value_at(b, sg.row), gr = gate_at(b, sg.row);
      const uint8_t* flags = docs().flags(b, local_row(sg));
      float* state_out = out ? out + b * row_state : nullptr;
      const float* state_in = in ? in + b * row_state : nullptr;
      if (delta)
        delta_rule_forward(o + vr, state_out, q + kr, k + kr, v + vr, gates.beta + gr, gates.log_gates + gr, state_in,
                           flags, s_.delta_kernel(1, sg.length), ws_.view());
      else if (gla)
        gla_forward(o + vr, state_out, q + kr, k + kr, v + vr, gates.log_gates + kr, state_in, flags,
                    s_.gla_kernel(1, sg.length, H), ws_.view());
      else
        linear_attention_forward(o + vr, state_out, q + kr, k + kr, v + vr, state_in, lambda, flags,
                                 s_.linear_kernel(1, sg.length, H), ws_.view());
    }
    if (pass_on) std::swap(carry_, carry_next_);
  }
}

void Lasp2Linear::backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                           const float* k, const float* v, const LinearGates& gates, Edges edges) {
  const bool gla = gates.gla(), delta = gates.delta();
  const float* lambda = gla || delta ? nullptr : fixed_decay(gates, "LASP-2");
  const int H = s_.H, dkey = s_.dk;
  const size_t S = state_floats(), row_state = size_t(s_.value_heads()) * s_.state_floats();
  const auto& P = incoming_[layer];
  const bool incoming = edges != Edges::overlap, sends = edges == Edges::own, from_later = edges == Edges::complete;
  LASP_CHECK((!incoming || P.size() == mine_.size() * S) && entering_[layer].size() == size_t(spans_) * S &&
                 (!from_later || suffix_.size() == mine_.size() * S),
             "LASP-2: the backward of layer {} before its forward, or (complete) before its exchange", layer);
  if (sends) send_.resize(mine_.size() * S);
  carry_.resize(S), carry_next_.resize(S);  // here: the gradient of the state leaving a span, and entering it
  if (delta) {  // the kernel accumulates its gates' gradients; the seam writes them
    for (const Segment& sg : segments_)
      for (int b = 0; b < s_.B; ++b) {
        std::fill_n(gates.d_beta + gate_at(b, sg.row), size_t(sg.length) * s_.value_heads(), 0.f);
        std::fill_n(gates.d_log_gates + gate_at(b, sg.row), size_t(sg.length) * s_.value_heads(), 0.f);
      }
  }
  for (auto sg = segments_.rbegin(); sg != segments_.rend(); ++sg) {
    const float* in = sg->at > 0                                   ? entering_[layer].data() + size_t(index_) * S
                      : incoming && !first_piece(sg->piece) ? P.data() + sg->piece * S
                                                                   : nullptr;
    // The gradient of the state leaving the segment: from the next span inside the piece; at the piece's end
    // G (complete), or none here (the other ranks' part comes in key_gradients).
    const bool from_next = sg->at + sg->length < piece_len_;
    const float* end = from_next                                    ? carry_.data()
                       : from_later && !last_piece(sg->piece) ? suffix_.data() + sg->piece * S
                                                                    : nullptr;
    // The state entering it has a gradient to give: to the span before, or the piece's dP^own to send.
    const bool gives = sg->at > 0 || (sends && in);
    std::fill(carry_next_.begin(), carry_next_.end(), 0.f);
    for (int b = 0; b < s_.B; ++b) {
      const long kr = key_at(b, sg->row), vr = value_at(b, sg->row), gr = gate_at(b, sg->row);
      float* dstate_in = gives ? carry_next_.data() + b * row_state : nullptr;
      const float* dstate_out = end ? end + b * row_state : nullptr;
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
    if (sg->at > 0)
      std::swap(carry_, carry_next_);
    else if (sends)  // the piece's dM: what it sends (zero for the first piece, which has no state entering)
      std::memcpy(send_.data() + sg->piece * S, carry_next_.data(), sizeof(float) * S);
  }
  // GLA, spans of a piece's middle: A of each segment, the gates' product from its end to its piece's end, built
  // from the piece's end as the spans come in reverse (one row of dk per piece, batch row and head). The whole
  // method's key_gradients runs on whole pieces, where A = 1: it needs none.
  if (!gla || whole_) return;
  const size_t G = gate_floats(), pieces = mine_.size();
  after_.resize(size_t(spans_) * pieces * G);
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

// ---- the later pieces' share

bool Lasp2Linear::key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                                const LinearGates& gates) {
  LASP_CHECK(suffix_.size() == mine_.size() * state_floats(), "LASP-2: key gradients of layer {} before its exchange",
             layer);
  bool any = false;
  for (const Segment& sg : segments_) any = any || !last_piece(sg.piece);
  if (!any) return false;  // the last piece: no later piece's state reads its keys
  if (gates.gla())
    gla_key_gradients(layer, dk, dv, gates.d_log_gates, k, v, gates.log_gates);
  else if (gates.delta())
    delta_key_gradients(layer, dk, dv, k, v, gates);
  else
    scalar_key_gradients(dk, dv, k, v, fixed_decay(gates, "LASP-2"));
  return true;
}

// dK += diag(lambda^(L-j)) V G^T, dV += diag(lambda^(L-j)) K G, j the key's position in its piece of L tokens.
void Lasp2Linear::scalar_key_gradients(float* dkeys, float* dvalues, const float* k, const float* v,
                                       const float* lambda) {
  const int H = s_.H;
  const size_t S = state_floats();
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
      linear_attention_span_state_backward(dkeys + key_at(b, sg.row), dvalues + value_at(b, sg.row), G,
                                           k + key_at(b, sg.row), v + value_at(b, sg.row), lambda,
                                           docs().flags(b, local_row(sg)), scale.data(), s_.linear_rows(),
                                           s_.linear_kernel(1, sg.length, H), ws_.view());
    }
}

// GLA, bk A the gates' product from a key to its piece's end (A = 1 for a piece's last segment):
// dkx = (V G^T) .* bk A into dk, dv += (K .* bk A) G, and into dg (accumulated) from the segment's end:
// r = rowsum(diag(A) S_end .* G) - the sum of k dkx so far (rowsum(S_out .* G) less the later spans' share),
// restarting at document starts.
void Lasp2Linear::gla_key_gradients(int layer, float* dkeys, float* dvalues, float* dg, const float* k, const float* v,
                                    const float* log_gates) {
  const int H = s_.H, dk = s_.dk, dv = s_.dv, ldk = H * dk;
  const size_t S = state_floats(), G = gate_floats(), pieces = mine_.size();
  LASP_CHECK(dg && leaving_[layer].size() == pieces * S, "LASP-2: GLA's key gradients of layer {} before its forward",
             layer);
  for (const Segment& sg : segments_)
    LASP_CHECK(sg.at + sg.length == piece_len_ || (!whole_ && after_.size() == size_t(spans_) * pieces * G),
               "LASP-2: GLA's key gradients of layer {} before its backward's first pass, or (whole) on part of a "
               "piece", layer);
  for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
    if (last_piece(sg.piece)) return;
    const size_t head = size_t(b) * H + h, kv = s_.state_floats();
    const float* Gm = suffix_.data() + sg.piece * S + head * kv;
    const bool ends = sg.at + sg.length == piece_len_;
    const float* A = ends ? nullptr : after_.data() + (size_t(index_) * pieces + sg.piece) * G + head * dk;
    // the state leaving the segment: the one entering the next span inside the piece, or leaving the piece
    const float* S_end =
        (ends ? leaving_[layer].data() + sg.piece * S : entering_[layer].data() + size_t(index_ + 1) * S) + head * kv;
    const SegmentGates f = segment_gates(tmp, sg, b, h, log_gates);
    if (A)
      for (int x = 0; x < sg.length * dk; ++x) f.bk[x] = gla_gate_product(f.bk[x], A[x % dk]);
    const long at = key_at(b, sg.row, h), vat = value_at(b, sg.row, h);
    gemm(false, true, sg.length, dk, dv, 1.f, v + vat, H * dv, Gm, dv, 0.f, tmp, dk);  // dkx = (V G^T) .* bk A
    for (int x = 0; x < sg.length * dk; ++x) tmp[x] *= f.bk[x];
    float* r = f.r;
    for (int i = 0; i < dk; ++i) {
      r[i] = 0.f;
      for (int j = 0; j < dv; ++j) r[i] += S_end[i * dv + j] * Gm[i * dv + j];
      if (A) r[i] *= A[i];
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

// ---- the whole method's overlap: P applied after the kernel

void Lasp2Linear::check_whole_pieces(const char* what, const LinearGates& gates) const {
  LASP_CHECK(!gates.delta(), "LASP-2: {} asked for the gated delta rule, whose transition is no closed form", what);
  for (const Segment& sg : segments_)
    LASP_CHECK(whole_ && sg.at == 0 && sg.length == piece_len_,
               "LASP-2: {} runs on whole pieces of {} tokens, got a segment of {} at {}", what, piece_len_, sg.length,
               sg.at);
}

// o += diag(lambda^i) Q P, or for GLA (Q .* bq) P (then the state leaving the piece takes diag(Gamma) P, which its
// kernel, run from nothing, left out).
void Lasp2Linear::apply_incoming(int layer, float* o, const float* q, const LinearGates& gates) {
  check_whole_pieces("apply_incoming", gates);
  const int H = s_.H, dk = s_.dk, dv = s_.dv;
  const size_t S = state_floats();
  const auto& P = incoming_[layer];
  if (gates.gla()) {
    const size_t G = gate_floats();
    for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
      if (first_piece(sg.piece)) return;
      const size_t head = size_t(b) * H + h, kv = s_.state_floats();
      const float* Ph = P.data() + sg.piece * S + head * kv;
      const SegmentGates f = segment_gates(tmp, sg, b, h, gates.log_gates);
      gated_rows(tmp, q + key_at(b, sg.row, h), H * dk, f.bq, sg.length, dk);
      gemm(false, false, sg.length, dv, dk, 1.f, tmp, dk, Ph, dv, 1.f, o + value_at(b, sg.row, h), H * dv);
      float* out = leaving_[layer].data() + sg.piece * S + head * kv;
      const float* Gm = gamma_[layer].data() + sg.piece * G + head * dk;
      for (int i = 0; i < dk; ++i)
        for (int j = 0; j < dv; ++j) out[i * dv + j] += Gm[i] * Ph[i * dv + j];
    });
    return;
  }
  const float* lambda = fixed_decay(gates, "LASP-2");
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b) {
      if (first_piece(sg.piece)) continue;
      linear_attention_span_apply(o + value_at(b, sg.row), q + key_at(b, sg.row),
                                  P.data() + sg.piece * S + b * size_t(H) * s_.state_floats(), lambda,
                                  docs().flags(b, local_row(sg)), s_.linear_rows(), s_.linear_kernel(1, sg.length, H),
                                  ws_.view());
    }
}

// dP^own = Q^T diag(lambda^i) dO, or (Q .* bq)^T dO, or the delta rule's kernel's state gradient alone from P:
// what each piece sends.
void Lasp2Linear::own_state_gradients(int layer, const float* dout, const float* q, const float* k, const float* v,
                                      const LinearGates& gates) {
  const int H = s_.H, dk = s_.dk, dv = s_.dv;
  const size_t S = state_floats();
  sized(send_, mine_.size() * S);
  if (gates.delta()) {
    check_whole_pieces("own_state_gradients", LinearGates{});
    const size_t row_state = size_t(s_.value_heads()) * s_.state_floats();
    const auto& P = incoming_[layer];
    std::fill(send_.begin(), send_.end(), 0.f);
    for (const Segment& sg : segments_)
      for (int b = 0; b < s_.B; ++b) {
        const long kr = key_at(b, sg.row), vr = value_at(b, sg.row), gr = gate_at(b, sg.row);
        delta_rule_backward(nullptr, nullptr, nullptr, nullptr, nullptr, send_.data() + sg.piece * S + b * row_state,
                            dout + vr, nullptr, q + kr, k + kr, v + vr, gates.beta + gr, gates.log_gates + gr,
                            first_piece(sg.piece) ? nullptr : P.data() + sg.piece * S + b * row_state,
                            docs().flags(b, local_row(sg)), s_.delta_kernel(1, sg.length), ws_.view());
      }
    return;
  }
  check_whole_pieces("own_state_gradients", gates);
  if (gates.gla()) {
    for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
      const SegmentGates f = segment_gates(tmp, sg, b, h, gates.log_gates);
      gated_rows(tmp, q + key_at(b, sg.row, h), H * dk, f.bq, sg.length, dk);
      gemm(true, false, dk, dv, sg.length, 1.f, tmp, dk, dout + value_at(b, sg.row, h), H * dv, 0.f,
           send_.data() + sg.piece * S + (size_t(b) * H + h) * s_.state_floats(), dv);
    });
    return;
  }
  const float* lambda = fixed_decay(gates, "LASP-2");
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b)
      linear_attention_span_apply_backward(nullptr, send_.data() + sg.piece * S + b * size_t(H) * s_.state_floats(),
                                           dout + value_at(b, sg.row), q + key_at(b, sg.row), nullptr, lambda,
                                           docs().flags(b, local_row(sg)), s_.linear_rows(),
                                           s_.linear_kernel(1, sg.length, H), ws_.view());
}

// dq += diag(lambda^i) dO P^T, or for GLA dqx = (dO P^T) .* bq with its share of the gate gradient by gla.h's
// identity: dg += the sum from the piece's end of q dqx, restarting at document starts.
void Lasp2Linear::apply_incoming_backward(int layer, float* dq, const float* dout, const float* q,
                                          const LinearGates& gates) {
  check_whole_pieces("apply_incoming_backward", gates);
  const int H = s_.H, dk = s_.dk, dv = s_.dv, ldk = H * dk;
  const size_t S = state_floats();
  const auto& P = incoming_[layer];
  if (gates.gla()) {
    float* dg = gates.d_log_gates;
    for_each_head([&](const Segment& sg, int b, int h, float* tmp) {
      if (first_piece(sg.piece)) return;
      const SegmentGates f = segment_gates(tmp, sg, b, h, gates.log_gates);
      const long at = key_at(b, sg.row, h);
      gemm(false, true, sg.length, dk, dv, 1.f, dout + value_at(b, sg.row, h), H * dv,
           P.data() + sg.piece * S + (size_t(b) * H + h) * s_.state_floats(), dv, 0.f, tmp, dk);
      float* r = f.r;
      std::fill(r, r + dk, 0.f);
      const uint8_t* flags = docs().flags(b, local_row(sg));
      for (int t = sg.length - 1; t >= 0; --t) {
        const long row = at + long(t) * ldk;
        const bool start = flags && flags[t];
        for (int i = 0; i < dk; ++i) {
          const float dqx = tmp[t * dk + i] * f.bq[t * dk + i];
          dq[row + i] += dqx;
          r[i] += q[row + i] * dqx;
          if (!start) dg[row + i] += r[i];
        }
        if (start) std::fill(r, r + dk, 0.f);
      }
    });
    return;
  }
  const float* lambda = fixed_decay(gates, "LASP-2");
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b) {
      if (first_piece(sg.piece)) continue;
      linear_attention_span_apply_backward(dq + key_at(b, sg.row), nullptr, dout + value_at(b, sg.row),
                                           q + key_at(b, sg.row),
                                           P.data() + sg.piece * S + b * size_t(H) * s_.state_floats(), lambda,
                                           docs().flags(b, local_row(sg)), s_.linear_rows(),
                                           s_.linear_kernel(1, sg.length, H), ws_.view());
    }
}

}  // namespace lasp
