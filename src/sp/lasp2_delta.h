// LASP-2 for the gated delta rule (decay gdn, ../shared/design/DELTA.md "Across ranks"), a component of
// Lasp2Attention. A piece moves the state entering it by an affine map S_out = A_r S_in + B_r with a full
// d_k x d_k transition, so pieces exchange pairs, not states (sp/state_passing.h, Transition::full):
//   forward:  per piece B_r (its end state from 0) and A_r (0 when it holds a document start), one sweep
//             (delta_rule_summary); the pairs on their way (the AllGather of HV d_k (d_k + d_v) floats per piece,
//             or a scan); P_r, the state entering each piece, folded in piece order; then the piece's kernel from
//             P_r. P_r and A_r are kept.
//   backward: per piece dP^own (the gradient of its own outputs at P_r, from nothing at its end: one reverse
//             sweep), passed with the adjoint transitions A_r^T the other way; G_r, the gradient of the state
//             leaving each piece; then the piece's backward from P_r with G_r at its end, which gives every
//             gradient.
// The short convolutions' halo (Attention::conv_halo): sp/conv_halo.h, a halo per piece.
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/conv_halo.h"
#include "sp/documents.h"
#include "sp/grid.h"
#include "sp/state_passing.h"

namespace lasp {

class Lasp2Delta {
 public:
  Lasp2Delta(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
             StatePassingKind passing, int slices);
  // held: a recompute, whose incoming states this step's forward already has (no exchange).
  void forward(int layer, bool held, float* o, const float* q, const float* k, const float* v,
               const LinearGates& gates, const SpDocuments& docs);
  // Accumulates into dq, dk, dv; writes the gates' gradients (gates.d_beta, gates.d_log_gates).
  void backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                const float* v, const LinearGates& gates, const SpDocuments& docs);
  ConvHalo& halo() { return halo_; }
  bool holds(int layer) const { return !incoming_.at(layer).empty(); }
  void keep_decode_state(bool keep) { keep_ = keep; }
  const std::vector<float>& final_state(int layer) const { return final_states_.at(layer); }
  double memory_floats(int linear_layers) const;

 private:
  Comm& sp_;
  AttentionShape s_;
  int W_, rank_, HV_, piece_len_;
  std::vector<Piece> mine_;
  std::vector<std::pair<int, int>> owner_;
  std::unique_ptr<StatePassing> passing_;
  WorkspaceBuffer ws_{0};
  std::vector<float> send_, suffix_;                // (pieces, B, HV, dk, dv) each
  std::vector<std::vector<float>> incoming_;        // per layer: P of each local piece
  std::vector<std::vector<float>> transitions_;     // per layer: A_r of each local piece (pieces, B, HV, dk, dk)
  ConvHalo halo_;                                   // the short convolutions' halo
  bool keep_ = false;
  std::vector<std::vector<float>> final_states_;

  size_t state_at(int piece, int b) const { return (size_t(piece) * s_.B + b) * HV_ * s_.state_floats(); }
  size_t transition_at(int piece, int b) const { return (size_t(piece) * s_.B + b) * HV_ * s_.dk * s_.dk; }
  long key_at(int b, long t) const { return (long(b) * s_.N + t) * s_.H * s_.dk; }
  long value_at(int b, long t) const { return (long(b) * s_.N + t) * HV_ * s_.dv; }
  long gate_at(int b, long t) const { return (long(b) * s_.N + t) * HV_; }
  bool first_piece(int i) const { return mine_[i].index == 0; }
  bool last_piece(int i) const { return mine_[i].index == int(owner_.size()) - 1; }
};

}  // namespace lasp
