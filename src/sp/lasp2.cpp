#include "sp/lasp2.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/gla.h"
#include "sp/piece_states.h"
#include "sp/state_passing.h"

namespace lasp {

struct Lasp2Attention::Impl {
  Comm& sp;
  AttentionShape s;
  int W, rank;
  std::vector<Piece> mine;                  // this rank's pieces
  std::vector<std::pair<int, int>> owner;   // global piece -> (rank, index among that rank's pieces)
  int piece_len;                                    // tokens per piece
  WorkspaceBuffer kernel_ws{0};
  std::vector<float> scratch;               // GLA, per thread: (piece_len, dk)
  std::vector<float> send, suffix;          // states: (pieces, B, H, dk, dv)
  std::unique_ptr<StatePassing> passing;    // how the states reach the pieces that need them
  std::vector<std::vector<float>> incoming; // per layer: P of each local piece
  // Each piece runs the local kernel in segments (progress points for MPI); per layer, the state entering
  // each segment: (B, pieces, segments, H, dk, dv).
  int segments = 1, segment_len = 0;
  std::vector<std::vector<float>> segment_states;
  bool keep = false;                        // keep the decode state (final linear states)
  std::vector<std::vector<float>> final_states;

  Impl(Comm& c, const AttentionShape& shape, int global_N, SpLayout layout, int layers, StatePassingKind kind,
       int slices)
      : sp(c), s(shape), W(c.size()), rank(c.rank()) {
    LASP_CHECK(shape.N * W == global_N, "LASP-2: {} tokens per rank x {} ranks != sequence length {}", shape.N, W,
               global_N);
    mine = sp_pieces(global_N, W, rank, layout);
    piece_len = mine[0].length;
    owner = sp_piece_owners(global_N, W, layout);
    const LinearAttentionShape piece = s.linear_kernel(1, piece_len, s.H), gla = s.gla_kernel(1, piece_len, s.H);
    kernel_ws.storage.resize(std::max({linear_attention_forward_workspace_floats(piece),
                                       linear_attention_backward_workspace_floats(piece),
                                       linear_attention_span_workspace_floats(piece),
                                       gla_forward_workspace_floats(gla), gla_backward_workspace_floats(gla),
                                       linear_attention_bidirectional_workspace_floats(s.linear_kernel(s.B, s.N, s.H))}));
    const size_t states = state_floats();
    send.resize(states);
    suffix.resize(states);
    passing = make_state_passing(kind, c, {s.B, s.H, s.dk, s.dv, mine, owner}, slices);
    if (s.gla) gla_prepare();
    incoming.resize(layers);
    final_states.resize(layers);
    // Up to 4 segments of whole blocks.
    const int blocks = (piece_len + s.block - 1) / s.block;
    segments = std::min(4, blocks);
    segment_len = (blocks + segments - 1) / segments * s.block;
    segments = (piece_len + segment_len - 1) / segment_len;
    segment_states.resize(layers);
  }

  std::pair<int, int> segment(int sg) const {
    const int begin = sg * segment_len;
    return {begin, std::min(segment_len, piece_len - begin)};
  }
  size_t segment_stride() const { return size_t(s.H) * s.state_floats(); }
  size_t segment_at(int b, int piece, int sg) const {
    return ((size_t(b) * mine.size() + piece) * segments + sg) * segment_stride();
  }
  size_t segment_state_floats() const { return size_t(s.B) * mine.size() * segments * segment_stride(); }

  size_t state_floats() const { return mine.size() * size_t(s.B) * s.H * s.state_floats(); }
  size_t state_at(int piece, int b, int h) const { return ((size_t(piece) * s.B + b) * s.H + h) * s.state_floats(); }
  int widest() const { return std::max(s.dk, s.dv); }
  // Token t of batch row b, head h in a (B, N_local, H, width) tensor: keys (q, k, GLA's gates) are qk_width()
  // wide (dk, or the raw f of expanded features), values (v, o) dv.
  long key_at(int b, long t, int h = 0) const { return ((long(b) * s.N + t) * s.H + h) * s.qk_width(); }
  long value_at(int b, long t, int h = 0) const { return ((long(b) * s.N + t) * s.H + h) * s.dv; }

  // GLA: runs f(b, local piece index, head, thread scratch) over every (b, piece, head), in parallel.
  template <class F>
  void for_each_head(F f) {
    const int items = s.B * int(mine.size()) * s.H;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
    for (int it = 0; it < items; ++it) {
      const int h = it % s.H, i = it / s.H % int(mine.size()), b = it / (s.H * int(mine.size()));
      f(b, i, h, scratch.data() + size_t(omp_get_thread_num()) * piece_len * s.dk);
    }
  }

  PieceGates gates(const float* lambda, const std::vector<uint8_t>& cut) const {
    return {lambda, piece_len, cut.empty() ? nullptr : cut.data(), s.B, s.H, s.dk};
  }

  // The pieces of this rank, one batch row at a time: f(b, local piece index, its first token).
  template <class F>
  void for_each_piece(F f) const {
    for (int b = 0; b < s.B; ++b)
      for (int i = 0; i < int(mine.size()); ++i) f(b, i, long(mine[i].offset));
  }

  bool first_piece(int i) const { return mine[i].index == 0; }
  bool last_piece(int i) const { return mine[i].index == int(owner.size()) - 1; }

  // ---- GLA (GATES.md): the same exchange with per-row gates, Gamma = each row's gate product over the piece.
  std::vector<float> gla_scratch;  // per thread: eg, bq, bk, dqx, dkx (piece_len, dk), one (dk, dv) state, r (dk)
  std::vector<float> gamma;        // (pieces, B, H, dk)
  struct GlaScratch {
    float *eg, *bq, *bk, *dqx, *dkx, *state, *r;
  };
  size_t gla_thread_floats() const { return 5 * size_t(piece_len) * s.dk + s.state_floats() + s.dk; }
  // Sized in the constructor where the shape says GLA (memory_floats counts it), else on the first GLA layer:
  // before the parallel loops. The thread scratch of for_each_head comes with them.
  size_t gla_floats() const {
    return (gla_thread_floats() + size_t(piece_len) * s.dk) * s.threads + mine.size() * size_t(s.B) * s.H * s.dk;
  }
  void gla_prepare() {
    gla_scratch.resize(gla_thread_floats() * s.threads);
    scratch.resize(size_t(s.threads) * piece_len * s.dk);
    gamma.resize(mine.size() * size_t(s.B) * s.H * s.dk);
  }
  GlaScratch gla_thread() {
    const size_t nd = size_t(piece_len) * s.dk, per = gla_thread_floats();
    float* base = gla_scratch.data() + per * size_t(omp_get_thread_num());
    return {base, base + nd, base + 2 * nd, base + 3 * nd, base + 4 * nd, base + 5 * nd, base + 5 * nd + s.state_floats()};
  }
  // One head of one piece (gla_gate_products): bq[t] = the gates' product over [0, t], bk[t] = over (t, last];
  // gamma of the piece's rows = bq[last]. Computed again after the exchange rather than kept: keeping them would
  // hold two more (piece_len, H, dk) tensors per layer.
  void piece_gates(GlaScratch& w, const float* g, const SpDocuments& docs, int b, int i, int h) {
    const int dk = s.dk, n = piece_len;
    gla_gate_products(w.eg, w.bq, w.bk, g + key_at(b, mine[i].offset, h), long(s.H) * dk, n, dk,
                      docs.flags(b, mine[i].offset));
    std::memcpy(gamma.data() + ((size_t(i) * s.B + b) * s.H + h) * dk, w.bq + (n - 1) * dk, sizeof(float) * dk);
  }
  PieceGates gla_gates() const { return {nullptr, piece_len, nullptr, s.B, s.H, s.dk, gamma.data()}; }
  // What each piece sends, into send: (A .* bk)^T C (keys: the state M) or (A .* bq)^T C (the state gradient
  // dM), A dk wide (k or q), C dv wide (v or dO); gamma along the way.
  void gated_states(const float* a, bool keys, const float* c, const float* g, const SpDocuments& docs) {
    const int dk = s.dk, dv = s.dv;
    gla_prepare();
    for_each_head([&](int b, int i, int h, float* tmp) {
      GlaScratch w = gla_thread();
      piece_gates(w, g, docs, b, i, h);
      gated_rows(tmp, a + key_at(b, mine[i].offset, h), s.H * dk, keys ? w.bk : w.bq, piece_len, dk);
      gemm(true, false, dk, dv, piece_len, 1.f, tmp, dk, c + value_at(b, mine[i].offset, h), s.H * dv, 0.f,
           send.data() + state_at(i, b, h), dv);
    });
  }
  // The kernels' shape for `len` tokens of one batch row.
  LinearAttentionShape kernel_shape(int len, bool gla) const {
    return gla ? s.gla_kernel(1, len, s.H) : s.linear_kernel(1, len, s.H);
  }

  void gla_forward(int layer, bool held, float* o, const float* q, const float* k, const float* v, const float* g,
                   const SpDocuments& docs);
  void gla_backward(int layer, float* dq, float* dkeys, float* dvalues, float* dg, const float* dout, const float* q,
                    const float* k, const float* v, const float* g, const SpDocuments& docs);
};

// GLA's forward: the local state M = (K .* bk)^T V of each piece with its rows' gates Gamma, exchanged as pairs;
// the local kernel piece by piece in segments; then o += (Q .* bq) P.
void Lasp2Attention::Impl::gla_forward(int layer, bool held, float* o, const float* q, const float* k, const float* v,
                                       const float* g, const SpDocuments& docs) {
  const int H = s.H, dk = s.dk, dv = s.dv, ldk = H * dk, ldv = H * dv;
  std::unique_ptr<CommRequest> exchange;
  if (!held) {  // held: a recompute, whose incoming states P this step's forward already has
    gated_states(k, true, v, g, docs);  // M = (K .* bk)^T V
    exchange = passing->start(send.data(), gla_gates(), true);
  }
  auto& entering = segment_states[layer];
  entering.resize(segment_state_floats());
  for (int b = 0; b < s.B; ++b)
    for (int i = 0; i < int(mine.size()); ++i)
      for (int sg = 0; sg < segments; ++sg) {
        const auto [begin, len] = segment(sg);
        float* state = entering.data() + segment_at(b, i, sg);
        const long kr = key_at(b, mine[i].offset + begin), vr = value_at(b, mine[i].offset + begin);
        lasp::gla_forward(o + vr, sg + 1 < segments ? state + segment_stride() : nullptr, q + kr, k + kr, v + vr,
                          g + kr, sg > 0 ? state : nullptr, docs.flags(b, mine[i].offset + begin), kernel_shape(len, true),
                          kernel_ws.view());
        if (exchange) exchange->test();
      }
  auto& P = incoming[layer];
  if (exchange) {
    exchange->wait();
    P.resize(state_floats());
    passing->finish(P.data());
    if (keep) {
      final_states[layer].resize(size_t(s.B) * H * s.state_floats());
      passing->final_state(final_states[layer].data());
    }
  }
  for_each_head([&](int b, int i, int h, float* tmp) {
    if (first_piece(i)) return;
    GlaScratch w = gla_thread();
    piece_gates(w, g, docs, b, i, h);
    gated_rows(tmp, q + key_at(b, mine[i].offset, h), ldk, w.bq, piece_len, dk);
    gemm(false, false, piece_len, dv, dk, 1.f, tmp, dk, P.data() + state_at(i, b, h), dv, 1.f,
         o + value_at(b, mine[i].offset, h), ldv);
  });
}

// GLA's backward: dM = (Q .* bq)^T dO exchanged with the gates; the local kernel (its own gate gradient, written);
// then the cross-piece terms dq += (dO P^T) .* bq, dk += (V G^T) .* bk, dv += (K .* bk) G, and their share of
// the gate gradient by gla.h's identity: the sum from the end of q dq - k dk, plus rowsum(S_out .* G), S_out =
// diag(Gamma) P + M the state leaving the piece, restarting at document starts.
void Lasp2Attention::Impl::gla_backward(int layer, float* dq, float* dkeys, float* dvalues, float* dg, const float* dout,
                                        const float* q, const float* k, const float* v, const float* g,
                                        const SpDocuments& docs) {
  const int H = s.H, dk = s.dk, dv = s.dv, ldk = H * dk, ldv = H * dv;
  gated_states(q, false, dout, g, docs);  // dM = (Q .* bq)^T dO
  auto exchange = passing->start(send.data(), gla_gates(), false);
  const auto& entering = segment_states[layer];
  const size_t dstate_floats = segment_stride();
  std::vector<float> dstate(dstate_floats), dstate_next(dstate_floats);
  for (int b = 0; b < s.B; ++b)
    for (int i = 0; i < int(mine.size()); ++i)
      for (int sg = segments - 1; sg >= 0; --sg) {
        const auto [begin, len] = segment(sg);
        const long kr = key_at(b, mine[i].offset + begin), vr = value_at(b, mine[i].offset + begin);
        std::fill(dstate.begin(), dstate.end(), 0.f);
        lasp::gla_backward(dq + kr, dkeys + kr, dvalues + vr, dg + kr, sg > 0 ? dstate.data() : nullptr, dout + vr,
                           sg + 1 < segments ? dstate_next.data() : nullptr, q + kr, k + kr, v + vr, g + kr,
                           sg > 0 ? entering.data() + segment_at(b, i, sg) : nullptr,
                           docs.flags(b, mine[i].offset + begin), kernel_shape(len, true), kernel_ws.view());
        std::swap(dstate, dstate_next);
        exchange->test();
      }
  exchange->wait();
  passing->finish(suffix.data());
  const auto& P = incoming[layer];
  for_each_head([&](int b, int i, int h, float* tmp) {
    GlaScratch w = gla_thread();
    piece_gates(w, g, docs, b, i, h);
    const long at = key_at(b, mine[i].offset, h), vat = value_at(b, mine[i].offset, h);
    const size_t n = size_t(piece_len) * dk;
    std::fill(w.dqx, w.dqx + n, 0.f);
    std::fill(w.dkx, w.dkx + n, 0.f);
    float* r = w.r;
    std::fill(r, r + dk, 0.f);
    if (!first_piece(i)) {  // dqx = (dO P^T) .* bq
      gemm(false, true, piece_len, dk, dv, 1.f, dout + vat, ldv, P.data() + state_at(i, b, h), dv, 0.f, w.dqx, dk);
      for (size_t x = 0; x < n; ++x) w.dqx[x] *= w.bq[x];
    }
    if (!last_piece(i)) {
      const float* G = suffix.data() + state_at(i, b, h);
      gemm(false, true, piece_len, dk, dv, 1.f, v + vat, ldv, G, dv, 0.f, w.dkx, dk);  // dkx = (V G^T) .* bk
      for (size_t x = 0; x < n; ++x) w.dkx[x] *= w.bk[x];
      gated_rows(tmp, k + at, ldk, w.bk, piece_len, dk);  // dv += (K .* bk) G
      gemm(false, false, piece_len, dv, dk, 1.f, tmp, dk, G, dv, 1.f, dvalues + vat, ldv);
      // S_out = diag(Gamma) P + (K .* bk)^T V; r = rowsum(S_out .* G)
      gemm(true, false, dk, dv, piece_len, 1.f, tmp, dk, v + vat, ldv, 0.f, w.state, dv);
      const float* Gm = gamma.data() + ((size_t(i) * s.B + b) * H + h) * dk;
      for (int x = 0; x < dk; ++x)
        for (int y = 0; y < dv; ++y) {
          const float sout = w.state[x * dv + y] + (first_piece(i) ? 0.f : Gm[x] * P[state_at(i, b, h) + x * dv + y]);
          r[x] += sout * G[x * dv + y];
        }
    }
    const uint8_t* flags = docs.flags(b, mine[i].offset);
    for (int t = piece_len - 1; t >= 0; --t) {
      const long row = at + long(t) * ldk;
      for (int x = 0; x < dk; ++x) {
        const float dqx = w.dqx[t * dk + x], dkx = w.dkx[t * dk + x];
        dq[row + x] += dqx;
        dkeys[row + x] += dkx;
        r[x] += q[row + x] * dqx - k[row + x] * dkx;
        if (!(flags && flags[t])) dg[row + x] += r[x];
      }
      if (flags && flags[t]) std::fill(r, r + dk, 0.f);
    }
  });
}

Lasp2Attention::Lasp2Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
                               StatePassingKind passing, int slices)
    : impl_(std::make_unique<Impl>(sp, shape, global_N, layout, layers, passing, slices)),
      delta_(shape.delta ? std::make_unique<Lasp2Delta>(sp, shape, global_N, layout, layers, passing, slices) : nullptr),
      softmax_(sp, shape, global_N, layout, layers) {}

Lasp2Attention::~Lasp2Attention() = default;

void Lasp2Attention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                    const LinearGates& gates) {
  Impl& m = *impl_;
  // A recompute (Attention::set_recomputing) reuses the incoming states of this step's forward.
  const bool held = recomputing() && !m.incoming[layer].empty();
  if (gates.delta()) {
    LASP_CHECK(delta_, "LASP-2: the gated delta rule's gates reached an attention made without it (shape.delta)");
    return delta_->forward(layer, recomputing() && delta_->holds(layer), o, q, k, v, gates, softmax_.documents());
  }
  if (gates.gla()) return m.gla_forward(layer, held, o, q, k, v, gates.log_gates, softmax_.documents());
  const float* lambda = gates.lambda;
  const int H = m.s.H;
  const SpDocuments& docs = softmax_.documents();
  const std::vector<uint8_t> cut = docs.piece_cuts(int(m.owner.size()), m.piece_len);
  const LinearAttentionShape piece = m.kernel_shape(m.piece_len, false);
  std::unique_ptr<CommRequest> exchange;
  if (!held) {
    // 1. the local state of every piece: M = K^T diag(lambda^(piece_len-j)) V (after the piece's last start)
    m.for_each_piece([&](int b, int i, long t0) {
      linear_attention_span_state(m.send.data() + m.state_at(i, b, 0), k + m.key_at(b, t0), v + m.value_at(b, t0), lambda,
                                  docs.flags(b, t0), m.s.linear_rows(), piece, m.kernel_ws.view());
    });
    // 2. the states on their way (sp/state_passing.h), in flight during 3.
    exchange = m.passing->start(m.send.data(), m.gates(lambda, cut), true);
  }
  // 3. the chunkwise kernel on each piece on its own (intra-block and intra-piece terms), in segments that
  //    hand their state over, so that MPI progresses the gather between them. The state entering each
  //    segment is kept for the backward.
  auto& entering = m.segment_states[layer];
  entering.resize(m.segment_state_floats());
  for (int b = 0; b < m.s.B; ++b)
    for (int i = 0; i < int(m.mine.size()); ++i)
      for (int sg = 0; sg < m.segments; ++sg) {
        const auto [begin, len] = m.segment(sg);
        float* state = entering.data() + m.segment_at(b, i, sg);
        const long t = m.mine[i].offset + begin, kr = m.key_at(b, t), vr = m.value_at(b, t);
        linear_attention_forward(o + vr, sg + 1 < m.segments ? state + m.segment_stride() : nullptr, q + kr, k + kr,
                                 v + vr, sg > 0 ? state : nullptr, lambda, docs.flags(b, t), m.kernel_shape(len, false),
                                 m.kernel_ws.view());
        if (exchange) exchange->test();  // lets MPI progress
      }
  // 4. the state entering each piece, P; 5. o += diag(lambda^i) Q P
  auto& P = m.incoming[layer];
  if (exchange) {
    exchange->wait();
    P.resize(m.state_floats());
    m.passing->finish(P.data());
    if (m.keep) {  // the state after the last piece, for decoding
      m.final_states[layer].resize(size_t(m.s.B) * H * m.s.state_floats());
      m.passing->final_state(m.final_states[layer].data());
    }
  }
  m.for_each_piece([&](int b, int i, long t0) {
    if (m.first_piece(i)) return;
    linear_attention_span_apply(o + m.value_at(b, t0), q + m.key_at(b, t0), P.data() + m.state_at(i, b, 0), lambda,
                                docs.flags(b, t0), m.s.linear_rows(), piece, m.kernel_ws.view());
  });
}

void Lasp2Attention::linear_backward(int layer, float* dq, float* dkeys, float* dvalues, const float* dout,
                                     const float* q, const float* k, const float* v, const LinearGates& gates) {
  Impl& m = *impl_;
  if (gates.delta()) return delta_->backward(layer, dq, dkeys, dvalues, dout, q, k, v, gates, softmax_.documents());
  if (gates.gla())
    return m.gla_backward(layer, dq, dkeys, dvalues, gates.d_log_gates, dout, q, k, v, gates.log_gates,
                          softmax_.documents());
  const float* lambda = gates.lambda;
  const SpDocuments& docs = softmax_.documents();
  const std::vector<uint8_t> cut = docs.piece_cuts(int(m.owner.size()), m.piece_len);
  const LinearAttentionShape piece = m.kernel_shape(m.piece_len, false);
  // 1. dM = Q^T diag(lambda^i) dO: the gradient each piece sends to the state entering it
  m.for_each_piece([&](int b, int i, long t0) {
    linear_attention_span_apply_backward(nullptr, m.send.data() + m.state_at(i, b, 0), dout + m.value_at(b, t0),
                                         q + m.key_at(b, t0), nullptr, lambda, docs.flags(b, t0), m.s.linear_rows(), piece,
                                         m.kernel_ws.view());
  });
  // 2. on their way, in flight during 3.
  auto exchange = m.passing->start(m.send.data(), m.gates(lambda, cut), false);
  // 3. the local backward of each piece, segment by segment in reverse, handing the state gradient back
  const auto& entering = m.segment_states[layer];
  const size_t dstate_floats = m.segment_stride();
  std::vector<float> dstate(dstate_floats), dstate_next(dstate_floats);
  for (int b = 0; b < m.s.B; ++b)
    for (int i = 0; i < int(m.mine.size()); ++i)
      for (int sg = m.segments - 1; sg >= 0; --sg) {
        const auto [begin, len] = m.segment(sg);
        const long t = m.mine[i].offset + begin, kr = m.key_at(b, t), vr = m.value_at(b, t);
        std::fill(dstate.begin(), dstate.end(), 0.f);
        linear_attention_backward(dq + kr, dkeys + kr, dvalues + vr, sg > 0 ? dstate.data() : nullptr, dout + vr,
                                  sg + 1 < m.segments ? dstate_next.data() : nullptr, q + kr, k + kr, v + vr,
                                  sg > 0 ? entering.data() + m.segment_at(b, i, sg) : nullptr, lambda, docs.flags(b, t),
                                  m.kernel_shape(len, false), m.kernel_ws.view());
        std::swap(dstate, dstate_next);
        exchange->test();
      }
  exchange->wait();
  // 4. the gradient of the state leaving each piece, G; 5. the cross-piece terms
  m.passing->finish(m.suffix.data());
  const auto& P = m.incoming[layer];
  m.for_each_piece([&](int b, int i, long t0) {
    const long at = m.key_at(b, t0), vat = m.value_at(b, t0);
    if (!m.first_piece(i))  // dQ += diag(lambda^i) dO P^T
      linear_attention_span_apply_backward(dq + at, nullptr, dout + vat, q + at, P.data() + m.state_at(i, b, 0), lambda,
                                           docs.flags(b, t0), m.s.linear_rows(), piece, m.kernel_ws.view());
    if (!m.last_piece(i))  // dK += diag(lambda^(piece_len-j)) V G^T, dV += diag(lambda^(piece_len-j)) K G
      linear_attention_span_state_backward(dkeys + at, dvalues + vat, m.suffix.data() + m.state_at(i, b, 0), k + at,
                                           v + vat, lambda, docs.flags(b, t0), nullptr, m.s.linear_rows(), piece,
                                           m.kernel_ws.view());
  });
}

// The bidirectional form has one state per batch row and head: the sum over every rank's tokens.
void Lasp2Attention::linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!softmax_.documents().empty());
  Impl& m = *impl_;
  const int B = m.s.B, H = m.s.H, dk = m.s.dk, dv = m.s.dv;
  const size_t kv = m.s.state_floats(), states = size_t(B) * H * kv;
  std::vector<float> local(states), all(states * m.W), others(states, 0.f);
#pragma omp parallel for num_threads(m.s.threads)
  for (int bh = 0; bh < B * H; ++bh)  // local K^T V
    gemm(true, false, dk, dv, m.s.N, 1.f, k + m.key_at(bh / H, 0, bh % H), H * dk, v + m.value_at(bh / H, 0, bh % H),
         H * dv, 0.f, local.data() + size_t(bh) * kv, dv);
  m.sp.all_gather(local.data(), all.data(), states);
  for (int r = 0; r < m.W; ++r)
    if (r != m.rank)
      for (size_t i = 0; i < states; ++i) others[i] += all[size_t(r) * states + i];
  linear_attention_bidirectional_forward(o, nullptr, q, k, v, others.data(), m.s.linear_kernel(B, m.s.N, H),
                                         m.kernel_ws.view());
  m.incoming[layer] = std::move(others);  // the other ranks' K^T V, for the backward
}

void Lasp2Attention::linear_bidirectional_backward(int layer, float* dq, float* dkeys, float* dvalues, const float* dout,
                                                   const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!softmax_.documents().empty());
  Impl& m = *impl_;
  const int B = m.s.B, H = m.s.H, dk = m.s.dk, dv = m.s.dv;
  const size_t kv = m.s.state_floats(), states = size_t(B) * H * kv;
  std::vector<float> local(states), all(states * m.W), others(states, 0.f);
#pragma omp parallel for num_threads(m.s.threads)
  for (int bh = 0; bh < B * H; ++bh)  // local Q^T dO: this rank's gradient of the total state
    gemm(true, false, dk, dv, m.s.N, 1.f, q + m.key_at(bh / H, 0, bh % H), H * dk,
         dout + m.value_at(bh / H, 0, bh % H), H * dv, 0.f, local.data() + size_t(bh) * kv, dv);
  m.sp.all_gather(local.data(), all.data(), states);
  for (int r = 0; r < m.W; ++r)
    if (r != m.rank)
      for (size_t i = 0; i < states; ++i) others[i] += all[size_t(r) * states + i];
  linear_attention_bidirectional_backward(dq, dkeys, dvalues, nullptr, dout, others.data(), q, k, v,
                                          m.incoming[layer].data(), m.s.linear_kernel(B, m.s.N, H), m.kernel_ws.view());
}

double Lasp2Attention::memory_floats(const std::string& layer_types) const {
  const Impl& m = *impl_;
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear;
  const double states = double(m.state_floats());
  const double per_layer = states + double(m.segment_state_floats());  // incoming P, segment states
  const double gla = m.s.gla && linear > 0 ? double(m.gla_floats()) : 0.0;
  if (delta_) return delta_->memory_floats(int(linear)) + softmax_.memory_floats(int(softmax), m.s.H_kv);
  return double(m.kernel_ws.storage.size() + m.passing->memory_floats()) + 3 * states + gla +
         linear * per_layer +
         softmax_.memory_floats(int(softmax), m.s.H_kv);
}

void Lasp2Attention::keep_decode_state(bool keep) {
  impl_->keep = keep;
  if (delta_) delta_->keep_decode_state(keep);
}

std::vector<float> Lasp2Attention::final_state(int layer) const {
  return delta_ ? delta_->final_state(layer) : impl_->final_states.at(layer);
}

Attention::ConvRuns Lasp2Attention::conv_halo(int, float* halo, const float* x, int C, int K) {
  LASP_CHECK(delta_, "LASP-2: a convolution halo asked of an attention without the gated delta rule");
  const SpDocuments& docs = softmax_.documents();
  return delta_->halo().forward(halo, x, docs.empty() ? nullptr : docs.local.starts.data(), C, K);
}

void Lasp2Attention::conv_halo_backward(int, float* dx, const float* dhalo, int C, int K) {
  const SpDocuments& docs = softmax_.documents();
  delta_->halo().backward(dx, dhalo, docs.empty() ? nullptr : docs.local.starts.data(), C, K);
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
