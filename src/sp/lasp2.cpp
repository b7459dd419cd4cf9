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
  std::vector<float> scratch;               // per thread: (piece_len, d)
  std::vector<float> send, suffix;          // states: (pieces, B, H, d, d)
  std::unique_ptr<StatePassing> passing;    // how the states reach the pieces that need them
  std::vector<std::vector<float>> incoming; // per layer: P of each local piece
  // Each piece runs the local kernel in segments (progress points for MPI); per layer, the state entering
  // each segment: (B, pieces, segments, H, d, d).
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
    const LinearAttentionShape piece{1, piece_len, s.H, s.d, s.block, s.threads};
    const LinearAttentionShape gla{1, piece_len, s.H, s.d, kGlaBlock, s.threads};
    kernel_ws.storage.resize(std::max({linear_attention_forward_workspace_floats(piece),
                                       linear_attention_backward_workspace_floats(piece),
                                       gla_forward_workspace_floats(gla), gla_backward_workspace_floats(gla),
                                       linear_attention_bidirectional_workspace_floats(
                                           {s.B, s.N, s.H, s.d, s.block, s.threads})}));
    scratch.resize(size_t(s.threads) * piece_len * s.d);
    const size_t states = state_floats();
    send.resize(states);
    suffix.resize(states);
    passing = make_state_passing(kind, c, {s.B, s.H, s.d, s.d, mine, owner}, slices);
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
  size_t segment_stride() const { return size_t(s.H) * s.d * s.d; }
  size_t segment_at(int b, int piece, int sg) const {
    return ((size_t(b) * mine.size() + piece) * segments + sg) * segment_stride();
  }
  size_t segment_state_floats() const { return size_t(s.B) * mine.size() * segments * segment_stride(); }

  size_t state_floats() const { return mine.size() * size_t(s.B) * s.H * s.d * s.d; }
  size_t state_at(int piece, int b, int h) const { return ((size_t(piece) * s.B + b) * s.H + h) * s.d * s.d; }
  // Row 0 of (batch row b, piece) in a (B, N_local, H, d) tensor.
  long rows(int b, const Piece& p) const { return (long(b) * s.N + p.offset) * s.H * s.d; }

  // Runs f(b, local piece index, head, thread scratch) over every (b, piece, head), in parallel.
  template <class F>
  void for_each_head(F f) {
    const int items = s.B * int(mine.size()) * s.H;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
    for (int it = 0; it < items; ++it) {
      const int h = it % s.H, i = it / s.H % int(mine.size()), b = it / (s.H * int(mine.size()));
      f(b, i, h, scratch.data() + size_t(omp_get_thread_num()) * piece_len * s.d);
    }
  }

  PieceGates gates(const float* lambda, const std::vector<uint8_t>& cut) const {
    return {lambda, piece_len, cut.empty() ? nullptr : cut.data(), s.B, s.H, s.d};
  }

  // The rows of a piece's (piece_len, d) scratch that a document start cuts off from the states: the queries
  // from its first start on (`after`), or the keys before its last start.
  void cut_rows(float* tmp, const SpDocuments& docs, int b, int i, bool after) const {
    const auto [first, last] = docs.starts_in(b, mine[i].offset, piece_len);
    if (after) std::fill(tmp + size_t(first) * s.d, tmp + size_t(piece_len) * s.d, 0.f);
    else std::fill(tmp, tmp + size_t(last) * s.d, 0.f);
  }

  bool first_piece(int i) const { return mine[i].index == 0; }
  bool last_piece(int i) const { return mine[i].index == int(owner.size()) - 1; }

  // ---- GLA (GATES.md): the same exchange with per-row gates, Gamma = each row's gate product over the piece.
  std::vector<float> gla_scratch;  // per thread: eg, bq, bk, dqx, dkx (piece_len, d), one (d, d) state, r (d)
  std::vector<float> gamma;        // (pieces, B, H, d)
  struct GlaScratch {
    float *eg, *bq, *bk, *dqx, *dkx, *state, *r;
  };
  size_t gla_thread_floats() const { return 5 * size_t(piece_len) * s.d + size_t(s.d) * s.d + s.d; }
  // Sized in the constructor where the shape says GLA (memory_floats counts it), else on the first GLA layer:
  // before the parallel loops.
  size_t gla_floats() const { return gla_thread_floats() * s.threads + mine.size() * size_t(s.B) * s.H * s.d; }
  void gla_prepare() {
    gla_scratch.resize(gla_thread_floats() * s.threads);
    gamma.resize(mine.size() * size_t(s.B) * s.H * s.d);
  }
  GlaScratch gla_thread() {
    const size_t nd = size_t(piece_len) * s.d, per = gla_thread_floats();
    float* base = gla_scratch.data() + per * size_t(omp_get_thread_num());
    return {base, base + nd, base + 2 * nd, base + 3 * nd, base + 4 * nd, base + 5 * nd, base + 5 * nd + s.d * s.d};
  }
  // One head of one piece (gla_gate_products): bq[t] = the gates' product over [0, t], bk[t] = over (t, last];
  // gamma of the piece's rows = bq[last]. Computed again after the exchange rather than kept: keeping them would
  // hold two more (piece_len, H, d) tensors per layer.
  void piece_gates(GlaScratch& w, const float* g, const SpDocuments& docs, int b, int i, int h) {
    const int d = s.d, n = piece_len;
    gla_gate_products(w.eg, w.bq, w.bk, g + rows(b, mine[i]) + long(h) * d, long(s.H) * d, n, d,
                      docs.flags(b, mine[i].offset));
    std::memcpy(gamma.data() + ((size_t(i) * s.B + b) * s.H + h) * d, w.bq + (n - 1) * d, sizeof(float) * d);
  }
  PieceGates gla_gates() const { return {nullptr, piece_len, nullptr, s.B, s.H, s.d, gamma.data()}; }
  // What each piece sends, into send: (A .* bk)^T C (keys: the state M) or (A .* bq)^T C (the state gradient
  // dM); gamma along the way.
  void gated_states(const float* a, bool keys, const float* c, const float* g, const SpDocuments& docs) {
    const int d = s.d, ld = s.H * d;
    gla_prepare();
    for_each_head([&](int b, int i, int h, float* tmp) {
      GlaScratch w = gla_thread();
      piece_gates(w, g, docs, b, i, h);
      const long at = rows(b, mine[i]) + long(h) * d;
      gated_rows(tmp, a + at, ld, keys ? w.bk : w.bq, piece_len, d);
      gemm(true, false, d, d, piece_len, 1.f, tmp, d, c + at, ld, 0.f, send.data() + state_at(i, b, h), d);
    });
  }

  void gla_forward(int layer, bool held, float* o, const float* q, const float* k, const float* v, const float* g,
                   const SpDocuments& docs);
  void gla_backward(int layer, float* dq, float* dk, float* dv, float* dg, const float* dout, const float* q,
                    const float* k, const float* v, const float* g, const SpDocuments& docs);
};

// GLA's forward: the local state M = (K .* bk)^T V of each piece with its rows' gates Gamma, exchanged as pairs;
// the local kernel piece by piece in segments; then o += (Q .* bq) P.
void Lasp2Attention::Impl::gla_forward(int layer, bool held, float* o, const float* q, const float* k, const float* v,
                                       const float* g, const SpDocuments& docs) {
  const int H = s.H, d = s.d, ld = H * d;
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
        const long row = rows(b, mine[i]) + long(begin) * ld;
        lasp::gla_forward(o + row, sg + 1 < segments ? state + segment_stride() : nullptr, q + row, k + row, v + row,
                          g + row, sg > 0 ? state : nullptr, docs.flags(b, mine[i].offset + begin),
                          {1, len, H, d, kGlaBlock, s.threads}, kernel_ws.view());
        if (exchange) exchange->test();
      }
  auto& P = incoming[layer];
  if (exchange) {
    exchange->wait();
    P.resize(state_floats());
    passing->finish(P.data());
    if (keep) {
      final_states[layer].resize(size_t(s.B) * H * d * d);
      passing->final_state(final_states[layer].data());
    }
  }
  for_each_head([&](int b, int i, int h, float* tmp) {
    if (first_piece(i)) return;
    GlaScratch w = gla_thread();
    piece_gates(w, g, docs, b, i, h);
    const long at = rows(b, mine[i]) + long(h) * d;
    gated_rows(tmp, q + at, ld, w.bq, piece_len, d);
    gemm(false, false, piece_len, d, d, 1.f, tmp, d, P.data() + state_at(i, b, h), d, 1.f, o + at, ld);
  });
}

// GLA's backward: dM = (Q .* bq)^T dO exchanged with the gates; the local kernel (its own gate gradient, written);
// then the cross-piece terms dq += (dO P^T) .* bq, dk += (V G^T) .* bk, dv += (K .* bk) G, and their share of
// the gate gradient by gla.h's identity: the sum from the end of q dq - k dk, plus rowsum(S_out .* G), S_out =
// diag(Gamma) P + M the state leaving the piece, restarting at document starts.
void Lasp2Attention::Impl::gla_backward(int layer, float* dq, float* dk, float* dv, float* dg, const float* dout,
                                        const float* q, const float* k, const float* v, const float* g,
                                        const SpDocuments& docs) {
  const int H = s.H, d = s.d, ld = H * d;
  gated_states(q, false, dout, g, docs);  // dM = (Q .* bq)^T dO
  auto exchange = passing->start(send.data(), gla_gates(), false);
  const auto& entering = segment_states[layer];
  const size_t dstate_floats = size_t(H) * d * d;
  std::vector<float> dstate(dstate_floats), dstate_next(dstate_floats);
  for (int b = 0; b < s.B; ++b)
    for (int i = 0; i < int(mine.size()); ++i)
      for (int sg = segments - 1; sg >= 0; --sg) {
        const auto [begin, len] = segment(sg);
        const long row = rows(b, mine[i]) + long(begin) * ld;
        std::fill(dstate.begin(), dstate.end(), 0.f);
        lasp::gla_backward(dq + row, dk + row, dv + row, dg + row, sg > 0 ? dstate.data() : nullptr, dout + row,
                           sg + 1 < segments ? dstate_next.data() : nullptr, q + row, k + row, v + row, g + row,
                           sg > 0 ? entering.data() + segment_at(b, i, sg) : nullptr,
                           docs.flags(b, mine[i].offset + begin), {1, len, H, d, kGlaBlock, s.threads},
                           kernel_ws.view());
        std::swap(dstate, dstate_next);
        exchange->test();
      }
  exchange->wait();
  passing->finish(suffix.data());
  const auto& P = incoming[layer];
  for_each_head([&](int b, int i, int h, float* tmp) {
    GlaScratch w = gla_thread();
    piece_gates(w, g, docs, b, i, h);
    const long at = rows(b, mine[i]) + long(h) * d;
    const size_t n = size_t(piece_len) * d;
    std::fill(w.dqx, w.dqx + n, 0.f);
    std::fill(w.dkx, w.dkx + n, 0.f);
    float* r = w.r;
    std::fill(r, r + d, 0.f);
    if (!first_piece(i)) {  // dqx = (dO P^T) .* bq
      gemm(false, true, piece_len, d, d, 1.f, dout + at, ld, P.data() + state_at(i, b, h), d, 0.f, w.dqx, d);
      for (size_t x = 0; x < n; ++x) w.dqx[x] *= w.bq[x];
    }
    if (!last_piece(i)) {
      const float* G = suffix.data() + state_at(i, b, h);
      gemm(false, true, piece_len, d, d, 1.f, v + at, ld, G, d, 0.f, w.dkx, d);  // dkx = (V G^T) .* bk
      for (size_t x = 0; x < n; ++x) w.dkx[x] *= w.bk[x];
      gated_rows(tmp, k + at, ld, w.bk, piece_len, d);  // dv += (K .* bk) G
      gemm(false, false, piece_len, d, d, 1.f, tmp, d, G, d, 1.f, dv + at, ld);
      // S_out = diag(Gamma) P + (K .* bk)^T V; r = rowsum(S_out .* G)
      gemm(true, false, d, d, piece_len, 1.f, tmp, d, v + at, ld, 0.f, w.state, d);
      const float* Gm = gamma.data() + ((size_t(i) * s.B + b) * H + h) * d;
      for (int x = 0; x < d; ++x)
        for (int y = 0; y < d; ++y) {
          const float sout = w.state[x * d + y] + (first_piece(i) ? 0.f : Gm[x] * P[state_at(i, b, h) + x * d + y]);
          r[x] += sout * G[x * d + y];
        }
    }
    const uint8_t* flags = docs.flags(b, mine[i].offset);
    for (int t = piece_len - 1; t >= 0; --t) {
      const long row = at + long(t) * ld;
      for (int x = 0; x < d; ++x) {
        const float dqx = w.dqx[t * d + x], dkx = w.dkx[t * d + x];
        dq[row + x] += dqx;
        dk[row + x] += dkx;
        r[x] += q[row + x] * dqx - k[row + x] * dkx;
        if (!(flags && flags[t])) dg[row + x] += r[x];
      }
      if (flags && flags[t]) std::fill(r, r + d, 0.f);
    }
  });
}

Lasp2Attention::Lasp2Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
                               StatePassingKind passing, int slices)
    : impl_(std::make_unique<Impl>(sp, shape, global_N, layout, layers, passing, slices)),
      softmax_(sp, shape, global_N, layout, layers) {}

Lasp2Attention::~Lasp2Attention() = default;

void Lasp2Attention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                    const LinearGates& gates) {
  Impl& m = *impl_;
  // A recompute (Attention::set_recomputing) reuses the incoming states of this step's forward.
  const bool held = recomputing() && !m.incoming[layer].empty();
  if (gates.gla()) return m.gla_forward(layer, held, o, q, k, v, gates.log_gates, softmax_.documents());
  const float* lambda = gates.lambda;
  const int H = m.s.H, d = m.s.d, piece_len = m.piece_len, ld = H * d;
  const auto decay = head_powers(lambda, m.s.H, m.piece_len);  // lambda_h^k, k = 0..piece_len, for every head
  const SpDocuments& docs = softmax_.documents();
  const std::vector<uint8_t> cut = docs.piece_cuts(int(m.owner.size()), m.piece_len);
  std::unique_ptr<CommRequest> exchange;
  if (!held) {
    // 1. the local state of every piece: M = K^T diag(lambda^(piece_len-j)) V (after the piece's last start)
    m.for_each_head([&](int b, int i, int h, float* tmp) {
      const std::vector<float>& pw = decay[h];
      const long at = m.rows(b, m.mine[i]) + long(h) * d;
      decayed_rows(tmp, k + at, ld, pw.data(), true, piece_len, d);
      m.cut_rows(tmp, docs, b, i, false);
      gemm(true, false, d, d, piece_len, 1.f, tmp, d, v + at, ld, 0.f, m.send.data() + m.state_at(i, b, h), d);
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
    for (int i = 0; i < int(m.mine.size()); ++i) {
      const long at = m.rows(b, m.mine[i]);
      for (int sg = 0; sg < m.segments; ++sg) {
        const auto [begin, len] = m.segment(sg);
        float* state = entering.data() + m.segment_at(b, i, sg);
        const long row = at + long(begin) * ld;
        linear_attention_forward(o + row, sg + 1 < m.segments ? state + m.segment_stride() : nullptr, q + row, k + row,
                                 v + row, sg > 0 ? state : nullptr, lambda, docs.flags(b, m.mine[i].offset + begin),
                                 {1, len, H, d, m.s.block, m.s.threads}, m.kernel_ws.view());
        if (exchange) exchange->test();  // lets MPI progress
      }
    }
  // 4. the state entering each piece, P; 5. o += diag(lambda^i) Q P
  auto& P = m.incoming[layer];
  if (exchange) {
    exchange->wait();
    P.resize(m.state_floats());
    m.passing->finish(P.data());
    if (m.keep) {  // the state after the last piece, for decoding
      m.final_states[layer].resize(size_t(m.s.B) * H * d * d);
      m.passing->final_state(m.final_states[layer].data());
    }
  }
  m.for_each_head([&](int b, int i, int h, float* tmp) {
    if (m.first_piece(i)) return;
    const std::vector<float>& pw = decay[h];
    const long at = m.rows(b, m.mine[i]) + long(h) * d;
    decayed_rows(tmp, q + at, ld, pw.data(), false, piece_len, d);
    m.cut_rows(tmp, docs, b, i, true);
    gemm(false, false, piece_len, d, d, 1.f, tmp, d, P.data() + m.state_at(i, b, h), d, 1.f, o + at, ld);
  });
}

void Lasp2Attention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v, const LinearGates& gates) {
  Impl& m = *impl_;
  if (gates.gla())
    return m.gla_backward(layer, dq, dk, dv, gates.d_log_gates, dout, q, k, v, gates.log_gates, softmax_.documents());
  const float* lambda = gates.lambda;
  const int H = m.s.H, d = m.s.d, piece_len = m.piece_len, ld = H * d;
  const auto decay = head_powers(lambda, m.s.H, m.piece_len);  // lambda_h^k, k = 0..piece_len, for every head
  const SpDocuments& docs = softmax_.documents();
  const std::vector<uint8_t> cut = docs.piece_cuts(int(m.owner.size()), m.piece_len);
  // 1. dM = Q^T diag(lambda^i) dO: the gradient each piece sends to the state entering it
  m.for_each_head([&](int b, int i, int h, float* tmp) {
    const std::vector<float>& pw = decay[h];
    const long at = m.rows(b, m.mine[i]) + long(h) * d;
    decayed_rows(tmp, q + at, ld, pw.data(), false, piece_len, d);
    m.cut_rows(tmp, docs, b, i, true);
    gemm(true, false, d, d, piece_len, 1.f, tmp, d, dout + at, ld, 0.f, m.send.data() + m.state_at(i, b, h), d);
  });
  // 2. on their way, in flight during 3.
  auto exchange = m.passing->start(m.send.data(), m.gates(lambda, cut), false);
  // 3. the local backward of each piece, segment by segment in reverse, handing the state gradient back
  const auto& entering = m.segment_states[layer];
  const size_t dstate_floats = size_t(H) * d * d;
  std::vector<float> dstate(dstate_floats), dstate_next(dstate_floats);
  for (int b = 0; b < m.s.B; ++b)
    for (int i = 0; i < int(m.mine.size()); ++i) {
      const long at = m.rows(b, m.mine[i]);
      for (int sg = m.segments - 1; sg >= 0; --sg) {
        const auto [begin, len] = m.segment(sg);
        const long row = at + long(begin) * ld;
        std::fill(dstate.begin(), dstate.end(), 0.f);
        linear_attention_backward(dq + row, dk + row, dv + row, sg > 0 ? dstate.data() : nullptr, dout + row,
                                  sg + 1 < m.segments ? dstate_next.data() : nullptr, q + row, k + row, v + row,
                                  sg > 0 ? entering.data() + m.segment_at(b, i, sg) : nullptr, lambda,
                                  docs.flags(b, m.mine[i].offset + begin), {1, len, H, d, m.s.block, m.s.threads},
                                  m.kernel_ws.view());
        std::swap(dstate, dstate_next);
        exchange->test();
      }
    }
  exchange->wait();
  // 4. the gradient of the state leaving each piece, G; 5. the cross-piece terms
  m.passing->finish(m.suffix.data());
  const auto& P = m.incoming[layer];
  m.for_each_head([&](int b, int i, int h, float* tmp) {
    const std::vector<float>& pw = decay[h];
    const long at = m.rows(b, m.mine[i]) + long(h) * d;
    if (!m.first_piece(i)) {  // dQ += diag(lambda^i) dO P^T
      decayed_rows(tmp, dout + at, ld, pw.data(), false, piece_len, d);
      m.cut_rows(tmp, docs, b, i, true);
      gemm(false, true, piece_len, d, d, 1.f, tmp, d, P.data() + m.state_at(i, b, h), d, 1.f, dq + at, ld);
    }
    if (!m.last_piece(i)) {
      const float* G = m.suffix.data() + m.state_at(i, b, h);
      decayed_rows(tmp, v + at, ld, pw.data(), true, piece_len, d);  // dK += diag(lambda^(piece_len-j)) V G^T
      m.cut_rows(tmp, docs, b, i, false);
      gemm(false, true, piece_len, d, d, 1.f, tmp, d, G, d, 1.f, dk + at, ld);
      decayed_rows(tmp, k + at, ld, pw.data(), true, piece_len, d);  // dV += diag(lambda^(piece_len-j)) K G
      m.cut_rows(tmp, docs, b, i, false);
      gemm(false, false, piece_len, d, d, 1.f, tmp, d, G, d, 1.f, dv + at, ld);
    }
  });
}

// The bidirectional form has one state per batch row and head: the sum over every rank's tokens.
void Lasp2Attention::linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!softmax_.documents().empty());
  Impl& m = *impl_;
  const int B = m.s.B, H = m.s.H, d = m.s.d, Nl = m.s.N, ld = H * d;
  const size_t dd = size_t(d) * d, states = size_t(B) * H * dd;
  std::vector<float> local(states), all(states * m.W), others(states, 0.f);
#pragma omp parallel for num_threads(m.s.threads)
  for (int bh = 0; bh < B * H; ++bh) {  // local K^T V
    const long at = long(bh / H) * Nl * ld + long(bh % H) * d;
    gemm(true, false, d, d, Nl, 1.f, k + at, ld, v + at, ld, 0.f, local.data() + size_t(bh) * dd, d);
  }
  m.sp.all_gather(local.data(), all.data(), states);
  for (int r = 0; r < m.W; ++r)
    if (r != m.rank)
      for (size_t i = 0; i < states; ++i) others[i] += all[size_t(r) * states + i];
  linear_attention_bidirectional_forward(o, nullptr, q, k, v, others.data(), {B, Nl, H, d, m.s.block, m.s.threads},
                                         m.kernel_ws.view());
  m.incoming[layer] = std::move(others);  // the other ranks' K^T V, for the backward
}

void Lasp2Attention::linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                                   const float* q, const float* k, const float* v) {
  refuse_documents_bidirectional(!softmax_.documents().empty());
  Impl& m = *impl_;
  const int B = m.s.B, H = m.s.H, d = m.s.d, Nl = m.s.N, ld = H * d;
  const size_t dd = size_t(d) * d, states = size_t(B) * H * dd;
  std::vector<float> local(states), all(states * m.W), others(states, 0.f);
#pragma omp parallel for num_threads(m.s.threads)
  for (int bh = 0; bh < B * H; ++bh) {  // local Q^T dO: this rank's gradient of the total state
    const long at = long(bh / H) * Nl * ld + long(bh % H) * d;
    gemm(true, false, d, d, Nl, 1.f, q + at, ld, dout + at, ld, 0.f, local.data() + size_t(bh) * dd, d);
  }
  m.sp.all_gather(local.data(), all.data(), states);
  for (int r = 0; r < m.W; ++r)
    if (r != m.rank)
      for (size_t i = 0; i < states; ++i) others[i] += all[size_t(r) * states + i];
  linear_attention_bidirectional_backward(dq, dk, dv, nullptr, dout, others.data(), q, k, v,
                                          m.incoming[layer].data(), {B, Nl, H, d, m.s.block, m.s.threads}, m.kernel_ws.view());
}

double Lasp2Attention::memory_floats(const std::string& layer_types) const {
  const Impl& m = *impl_;
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear;
  const double states = double(m.state_floats());
  const double per_layer = states + double(m.segment_state_floats());  // incoming P, segment states
  const double gla = m.s.gla && linear > 0 ? double(m.gla_floats()) : 0.0;
  return double(m.kernel_ws.storage.size() + m.scratch.size() + m.passing->memory_floats()) + 3 * states + gla +
         linear * per_layer +
         softmax_.memory_floats(int(softmax), m.s.H_kv);
}

void Lasp2Attention::keep_decode_state(bool keep) { impl_->keep = keep; }

std::vector<float> Lasp2Attention::final_state(int layer) const { return impl_->final_states.at(layer); }

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
