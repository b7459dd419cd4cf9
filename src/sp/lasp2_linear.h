// LASP-2's linear layers, written once (LASP2.md section 2, GATES.md, DELTA.md "Across ranks"): the whole-sequence
// method (sp/lasp2.h) and its layer-major chunks (sp/lasp2_chunked.h) are two schedules of these passes.
// A layer runs over this rank's tokens as spans: [begin, begin + length) of each batch row, held in tensors of
// `length` rows per batch row (a chunk of the model's, or all of this rank's tokens at once), cut into segments at
// piece boundaries. Per layer:
//   collect           each segment's affine pair (kernels/state_algebra.h) folded into its piece's: S_out = A S_in + B,
//                     A a scalar per head (lambda^n; lightning, retention), a diagonal (GLA's gate products) or a
//                     full d_k x d_k matrix (the delta rule's, delta_rule_summary); 0 across a document start.
//   exchange          the pieces' pairs on their way (sp/state_passing.h): forward P, the state entering each piece;
//                     backward G, the gradient of the state leaving it. Started, then finished (test() between).
//   forward           the kernel on each segment from the state entering it: P at a piece's start (or nothing: the
//                     whole method's overlap, apply_incoming adds it afterwards), else what the span before left
//                     (kept for the backward).
//   backward          (spans last to first) the kernel's backward from the kept entering state; the gradient of
//                     the state leaving a segment comes from the next span of the piece; at the piece's start that
//                     of the state entering it is the piece's dP^own, what it sends (Edges says what else).
//   key_gradients     (spans last to first) the later pieces' share, from G at the piece's end: into dk, dv (and
//                     the gates' gradients).
// The whole method overlaps the exchange with the kernel where a piece's outputs are linear in P through a
// transition it knows in closed form (scalar and diagonal): its forward runs from nothing and apply_incoming adds
// o += (Q .* decay) P; its backward sends own_state_gradients before the kernel and adds dQ afterwards. The delta
// rule's whole method exchanges first: its kernel runs from P, and its backward from P with G (Edges::complete).
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "core/workspace.h"
#include "model/attention.h"
#include "sp/documents.h"
#include "sp/grid.h"
#include "sp/state_passing.h"

namespace lasp {

class Lasp2Linear {
 public:
  using Pass = Attention::Pass;
  // shape.N: this rank's tokens per row (global_N / W); span: the tokens per row of one span (the last may be
  // shorter); whole: the tensors handed over hold all of this rank's tokens (else the running span's), and whole
  // pieces may run at once (the overlap's calls). docs: the documents (set between steps; the reference stays).
  Lasp2Linear(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers, int span, bool whole,
              const SpDocuments& docs, StatePassingKind passing = StatePassingKind::gather, int slices = 1);
  double memory_floats(int linear_layers) const;

  // The next calls run this rank's tokens [begin, begin + length): a span, or (whole) all of them at once.
  void begin_span(int begin, int length, Pass pass);
  struct Segment {  // the running span cut at piece boundaries: local piece, first token in the piece, row in the span
    int piece, at, row, length;
  };
  const std::vector<Segment>& segments() const { return segments_; }
  int span_index() const { return index_; }
  bool first_piece(int i) const { return mine_[i].index == 0; }

  void collect(int layer, const float* k, const float* v, const LinearGates& gates);
  void exchange_start(int layer, Pass pass, const LinearGates& gates);
  void exchange_test() { if (request_) request_->test(); }
  void exchange_finish(int layer, Pass pass);
  bool holds(int layer) const { return !incoming_.at(layer).empty(); }  // P of this step's forward
  // incoming: the pieces' P enters the kernel at their start (false: apply_incoming adds it afterwards).
  void forward(int layer, float* o, const float* q, const float* k, const float* v, const LinearGates& gates,
               bool incoming = true);
  // What the backward's kernel runs with at a piece's edges:
  //   own       from P, no gradient from the later pieces; at the piece's start it gives dP^own, what the piece
  //             sends (the layer-major first pass; key_gradients adds the later pieces' share after the exchange)
  //   overlap   from nothing (the forward's overlap), no gradient from later pieces; nothing to send
  //             (own_state_gradients sent it; apply_incoming_backward and key_gradients add the rest)
  //   complete  from P, with G at the piece's end: every gradient at once (after the exchange)
  enum class Edges { own, overlap, complete };
  void backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                const float* v, const LinearGates& gates, Edges edges = Edges::own);
  bool key_gradients(int layer, float* dk, float* dv, const float* k, const float* v, const LinearGates& gates);

  // The whole method (every segment a whole piece): dP^own, what each piece sends, before its backward's kernel
  // (closed form for scalar and diagonal transitions; the delta rule's kernel's state gradient alone, from P).
  void own_state_gradients(int layer, const float* dout, const float* q, const float* k, const float* v,
                           const LinearGates& gates);
  // Its overlap (scalar and diagonal transitions): o += the incoming state's share; after the backward's kernel,
  // dq's share of P.
  void apply_incoming(int layer, float* o, const float* q, const LinearGates& gates);
  void apply_incoming_backward(int layer, float* dq, const float* dout, const float* q, const LinearGates& gates);

  // Decoding after an SP prefill: with keep, the forward's exchange keeps each layer's state after the last piece.
  void keep_final_states(bool keep) { keep_ = keep; }
  const std::vector<float>& final_state(int layer) const { return final_states_.at(layer); }

 private:
  Comm& sp_;
  AttentionShape s_;  // s_.N: this rank's tokens per row
  const SpDocuments& docs_;
  bool whole_;
  int span_, spans_ = 0, piece_len_ = 0, longest_ = 0;  // longest_: the most tokens per row of one call
  std::vector<Piece> mine_;
  std::vector<std::pair<int, int>> owner_;  // global piece -> (rank, index among its pieces)
  int begin_ = 0, length_ = 0, index_ = 0, rows_ = 0;  // rows_: tokens per batch row of the tensors handed over
  Pass pass_ = Pass::forward;
  std::vector<Segment> segments_;
  WorkspaceBuffer ws_{0};       // the kernels'
  std::vector<float> scratch_;  // GLA's, per thread: (longest_, max(dk, dv)), three (longest_, dk) and a row of dk
  std::unique_ptr<StatePassing> passing_;
  std::unique_ptr<CommRequest> request_;  // the exchange under way
  std::vector<uint8_t> cut_;              // its pieces' document cuts (scalar transitions)
  bool keep_ = false;
  std::vector<std::vector<float>> final_states_;
  // Per layer: P of each local piece (pieces, B, HV, dk, dv); the state entering each span (spans, B, HV, dk, dv;
  // written where a span starts inside a piece). For the pass under way: the piece states or their gradients to
  // send (pieces, B, HV, dk, dv), the suffix G, the state or state gradient carried between spans (B, HV, dk, dv)
  // and the next one.
  std::vector<std::vector<float>> incoming_, entering_;
  std::vector<float> send_, suffix_, carry_, carry_next_;
  // GLA, per layer: each piece's gate product Gamma (pieces, B, H, dk) and the state leaving it (pieces, B, H, dk,
  // dv); in the backward, each span's A (spans, pieces, B, H, dk) and the running product it is taken from.
  std::vector<std::vector<float>> gamma_, leaving_;
  std::vector<float> after_, after_run_;
  // Gated DeltaNet, per layer: each piece's transition A_r (pieces, B, HV, dk, dk); a segment's pair and a product.
  std::vector<std::vector<float>> transitions_;
  std::vector<float> segment_A_, segment_B_, product_;

  const SpDocuments& docs() const { return docs_; }
  int local_row(const Segment& sg) const { return mine_[sg.piece].offset + sg.at; }  // in this rank's tokens
  size_t state_floats() const { return size_t(s_.B) * s_.value_heads() * s_.state_floats(); }  // one piece's
  size_t transition_floats() const { return size_t(s_.B) * s_.value_heads() * s_.dk * s_.dk; }  // one piece's A_r
  size_t gate_floats() const { return size_t(s_.B) * s_.H * s_.dk; }  // one piece's gates, (B, H, dk)
  int widest() const { return std::max(s_.dk, s_.dv); }
  size_t scratch_floats() const { return size_t(longest_) * widest() + 3 * size_t(longest_) * s_.dk + s_.dk; }
  // Row t of batch row b, head h, in a (B, rows_, H, width) tensor: keys (q, k, GLA's gates) qk_width() wide,
  // values (v, o) dv.
  long key_at(int b, long t, int h = 0) const { return ((long(b) * rows_ + t) * s_.H + h) * s_.qk_width(); }
  long value_at(int b, long t, int h = 0) const { return ((long(b) * rows_ + t) * s_.value_heads() + h) * s_.dv; }
  long gate_at(int b, long t) const { return (long(b) * rows_ + t) * s_.value_heads(); }  // gdn's beta and g
  bool last_piece(int i) const { return mine_[i].index == int(owner_.size()) - 1; }
  PieceGates piece_gates(int layer, const LinearGates& gates, std::vector<uint8_t>& cut) const;
  // GLA: runs f(segment, b, h, thread scratch) over every segment of the running span, row and head, in parallel.
  template <class F>
  void for_each_head(F f);
  // GLA: the gates' products of one head of a segment (gla_gate_products) into the thread's scratch, after its
  // first (longest_, max(dk, dv)): gates, bq (over [0, t]), bk (over (t, end]), each (longest_, dk); r: a row of dk.
  struct SegmentGates {
    float *gates, *bq, *bk, *r;
  };
  SegmentGates segment_gates(float* scratch, const Segment& sg, int b, int h, const float* log_gates) const;
  void check_whole_pieces(const char* what, const LinearGates& gates) const;
  void scalar_collect(const float* k, const float* v, const float* lambda);
  void gla_collect(int layer, const float* k, const float* v, const float* log_gates);
  void delta_collect(int layer, const float* k, const float* v, const LinearGates& gates);
  void scalar_key_gradients(float* dk, float* dv, const float* k, const float* v, const float* lambda);
  void gla_key_gradients(int layer, float* dk, float* dv, float* dg, const float* k, const float* v,
                         const float* log_gates);
  void delta_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v, const LinearGates& gates);
};

}  // namespace lasp
