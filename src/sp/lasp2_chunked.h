// LASP-2 and LASP-2H in chunks, for the layer-major memory plan of several SP ranks (LayerMajorAttention,
// ModelPlan::layer_major): the model hands this rank's piece(s) over as chunks of at most `chunk` tokens per
// row, each layer in two passes; the exchange is the same ONE collective each way as sp/lasp2.h's.
// Linear layer:
//   forward  pass 1: the chunks' keys and values fold into each piece's state M (chunk by chunk:
//            M <- lambda^n M + K^T diag(lambda^(n-j)) V); ONE AllGather of M; the prefix P of every piece.
//            pass 2: the chunkwise kernel on each chunk from the state entering it: P at a piece's start,
//            else the state the previous chunk left, which is kept for the backward.
//   backward pass 1 (chunks in reverse): the kernel's backward from the kept entering state; the gradient
//            of the state leaving a chunk comes from the next chunk of the piece (none at the piece's end),
//            and at the piece's start that of the state entering it, dM = Q^T diag(lambda^i) dO over the
//            piece, is what the piece sends. ONE AllGather of dM; the suffix G of every piece.
//            pass 2: dK += diag(lambda^(L-j)) V G^T, dV += diag(lambda^(L-j)) K G (j: position in the piece).
// GLA (GATES.md): the same passes with per-row gates: pass 1 folds M <- diag(Gamma_seg) M + (K .* bk)^T V and
//   each piece's gate product Gamma, exchanged as (Gamma, M) pairs (kept per layer for the backward's exchange);
//   the kernel runs from P with the chunk's log-gates. Backward pass 1 also writes the kernel's gate gradient
//   and keeps, for each chunk, the gates' product from its end to its piece's end (A); pass 2 adds the later
//   pieces' share: dK += (V G^T) .* bk A, dV += (K .* bk A) G, dg += rowsum(diag(A) S_end .* G) - the sum from
//   the end of k dk's share (gla.h's identity; S_end: the state leaving the chunk's segment).
// Gated DeltaNet (DELTA.md; sp/lasp2_delta.h): pass 1 folds each segment's pair (A_c, B_c) (delta_rule_summary) into
//   its piece's, A <- A_c A, B <- A_c B + B_c; the pieces exchange (A_r, B_r) pairs (A_r kept per layer for the
//   backward's adjoint); pass 2 runs the kernel from P as above. Backward pass 1 as above gives dq, dk, dv and the
//   gates' gradients of the piece's own outputs and, at each piece's start, dP^own to send; pass 2, in REVERSE chunk
//   order, adds the later pieces' share: the kernel's backward without output gradients from G at the piece's end,
//   its state gradient carried from chunk to chunk. The short convolutions: each chunk's halo is the tail of the
//   chunk before it in its piece (kept by the forward), or at a piece's start the previous piece's tail, exchanged
//   point to point before the layer (sp/conv_halo.h); backward, a chunk's halo gradient goes to the chunk before,
//   and at a piece's start (both passes') back to the previous piece's holder after pass 2.
// Softmax layer: pass 1 keeps the chunks' keys and values, ONE AllGather of them (sp/lasp2h.h), pass 2 the
//   chunk's queries against every key. Backward: pass 1 accumulates the gradient of every gathered key,
//   ONE ReduceScatter back to the owners, pass 2 adds each chunk's share to its dk, dv.
// A chunk may straddle the two pieces of a zigzag rank: it runs as one segment per piece.
#pragma once
#include <vector>

#include "comm/comm.h"
#include "core/check.h"
#include "model/attention.h"
#include "sp/conv_halo.h"
#include "sp/grid.h"
#include "sp/lasp2h.h"
#include "sp/state_passing.h"

namespace lasp {

class Lasp2ChunkedAttention : public LayerMajorAttention {
 public:
  // shape.N: this rank's tokens per row (global_N / W); chunk: tokens per row in one chunk of the model.
  Lasp2ChunkedAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers, int chunk);
  const int* positions() const override { return positions_.data(); }  // the running chunk's
  double memory_floats(const std::string& layer_types) const override;

  void set_documents(const uint8_t* starts) override { softmax_.set_documents(starts); }
  void begin_chunk(int begin, int length, Pass pass) override;
  void linear_collect(int layer, const float* k, const float* v, const LinearGates& gates) override;
  void softmax_collect(int layer, const float* k, const float* v) override;
  void linear_exchange(int layer, Pass pass, const LinearGates& gates) override;
  void softmax_exchange(int layer, Pass pass) override;
  bool linear_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                            const LinearGates& gates) override;
  bool softmax_key_gradients(int layer, float* dk, float* dv) override;
  ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K) override;
  void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) override;
  std::vector<int> conv_tail_tokens(int K) const override { return halo_.tail_tokens(K); }
  void conv_exchange(int conv, const float* tails, int C, int K) override;
  void conv_exchange_backward(int conv, float* dtails, int C, int K) override;

  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

 private:
  // The running chunk cut at piece boundaries: local piece index, first token's position in the piece, its
  // row in the chunk, tokens.
  struct Segment {
    int piece, at, row, length;
  };
  Comm& sp_;
  AttentionShape s_;  // s_.N: this rank's tokens per row
  int global_N_, chunk_, chunks_, piece_len_;
  std::vector<Piece> mine_;
  std::vector<std::pair<int, int>> owner_;  // global piece -> (rank, index among its pieces)
  std::vector<int> all_positions_, positions_;  // this rank's global positions; the running chunk's
  int begin_ = 0, length_ = 0, index_ = 0;
  Pass pass_ = Pass::forward;
  std::vector<Segment> segments_;
  WorkspaceBuffer ws_{0};       // the kernels' (a chunk of queries)
  std::vector<float> scratch_;  // per thread: (chunk, max(dk, dv)), and for GLA three (chunk, dk) and a row of dk
  std::unique_ptr<StatePassing> passing_;  // ONE AllGather each way (gather): the pieces' states, or GLA's pairs
  // Linear layers. Per layer: P of each local piece (pieces, B, H, dk, dv); the state entering each chunk
  // (chunks, B, H, dk, dv; written where a chunk starts inside a piece). For the pass under way: the piece
  // states or their gradients to send (pieces, B, H, dk, dv), those of every rank, the suffix G, the state or
  // state gradient carried between chunks (B, H, dk, dv) and the next one.
  std::vector<std::vector<float>> incoming_, entering_;
  std::vector<float> send_, suffix_, carry_, carry_next_;
  // GLA, per layer: each piece's gate product Gamma (pieces, B, H, dk) and the state leaving it (pieces, B, H,
  // dk, dv); in the backward, each chunk's A (chunks, pieces, B, H, dk) and the running product it is taken from.
  std::vector<std::vector<float>> gamma_, leaving_;
  std::vector<float> after_, after_run_;
  // Gated DeltaNet, per layer: each piece's transition A_r (pieces, B, HV, dk, dk); a segment's pair and a product.
  std::vector<std::vector<float>> transitions_;
  std::vector<float> segment_A_, segment_B_, product_;
  // The short convolutions, per convolution (3 l + q, k, v): each piece's halo (B, pieces, K-1, C) and, in the
  // backward, its gradient (both passes'); each chunk's tail (chunks, B, K-1, C), the tail's gradient for the
  // chunk before (B, K-1, C) and which chunk that is (-1: none).
  ConvHalo halo_;
  std::vector<std::vector<float>> piece_halos_, dpiece_halos_, conv_tails_, dtails_;
  std::vector<int> dtail_chunk_;
  std::vector<float> dhalo_;
  // Softmax layers: this rank's keys and values (2, B, N, H_kv, d) collected in pass 1, then in the backward
  // their gradients from the reduce-scatter; the gathered keys' gradients of the layer under way.
  Lasp2H softmax_;
  std::vector<float> local_kv_;
  Documents chunk_docs_;  // the running chunk's queries' documents (softmax), when there are documents
  float* dkv_ = nullptr;
  int dkv_layer_ = -1;

  const SpDocuments& docs() const { return softmax_.documents(); }
  int local_row(const Segment& sg) const { return mine_[sg.piece].offset + sg.at; }  // in this rank's tokens
  const int* chunk_documents();  // the running chunk's queries' documents (B, length), or null
  size_t state_floats() const { return size_t(s_.B) * s_.value_heads() * s_.state_floats(); }  // one piece's, (B, HV, dk, dv)
  size_t transition_floats() const { return size_t(s_.B) * s_.value_heads() * s_.dk * s_.dk; }  // one piece's A_r
  size_t kv_floats() const { return size_t(s_.B) * s_.N * s_.H_kv * s_.d; }  // this rank's keys
  size_t gate_floats() const { return size_t(s_.B) * s_.H * s_.dk; }  // one piece's gates, (B, H, dk)
  int widest() const { return std::max(s_.dk, s_.dv); }
  size_t scratch_floats() const {
    return size_t(chunk_) * widest() + (s_.gla ? 3 * size_t(chunk_) * s_.dk + s_.dk : 0);
  }
  // Token t of batch row b, head h, of the running chunk in a (B, length, H, width) tensor: keys (q, k, GLA's
  // gates) qk_width() wide, values (v, o) dv.
  long key_at(int b, long t, int h = 0) const { return ((long(b) * length_ + t) * s_.H + h) * s_.qk_width(); }
  long value_at(int b, long t, int h = 0) const { return ((long(b) * length_ + t) * s_.value_heads() + h) * s_.dv; }
  long gate_at(int b, long t) const { return (long(b) * length_ + t) * s_.value_heads(); }  // gdn's beta and g
  bool first_piece(int i) const { return mine_[i].index == 0; }
  bool last_piece(int i) const { return mine_[i].index == int(owner_.size()) - 1; }
  // Runs f(segment, b, h, thread scratch) over every segment of the running chunk, row and head, in parallel.
  template <class F>
  void for_each_head(F f);
  // GLA: the gates' products of one head of a segment (gla_gate_products) into the thread's scratch, after its
  // first (chunk, max(dk, dv)): gates, bq (over [0, t]), bk (over (t, end]), each (chunk, dk); r: a row of dk.
  struct SegmentGates {
    float *gates, *bq, *bk, *r;
  };
  SegmentGates segment_gates(float* scratch, const Segment& sg, int b, int h, const float* log_gates) const;
  void gla_collect(int layer, const float* k, const float* v, const float* log_gates);
  void delta_collect(int layer, const float* k, const float* v, const LinearGates& gates);
  void delta_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v, const LinearGates& gates);
  void gla_key_gradients(int layer, float* dk, float* dv, float* dg, const float* k, const float* v,
                         const float* log_gates);
};

}  // namespace lasp
