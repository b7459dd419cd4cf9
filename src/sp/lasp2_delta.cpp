#include "sp/lasp2_delta.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/delta_rule.h"

namespace lasp {

Lasp2Delta::Lasp2Delta(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
                       StatePassingKind passing, int slices)
    : sp_(sp), s_(shape), W_(sp.size()), rank_(sp.rank()), HV_(shape.value_heads()),
      halo_(sp, shape.B, shape.N, layout) {
  mine_ = sp_pieces(global_N, W_, rank_, layout);
  owner_ = sp_piece_owners(global_N, W_, layout);
  piece_len_ = mine_[0].length;
  const DeltaRuleShape piece = s_.delta_kernel(1, piece_len_);
  ws_.storage.resize(std::max({delta_rule_forward_workspace_floats(piece), delta_rule_backward_workspace_floats(piece),
                               delta_rule_summary_workspace_floats(piece)}));
  const size_t states = mine_.size() * size_t(s_.B) * HV_ * s_.state_floats();
  send_.resize(states);
  suffix_.resize(states);
  passing_ = make_state_passing(passing, sp, {s_.B, HV_, s_.dk, s_.dv, mine_, owner_}, slices);
  incoming_.resize(layers);
  transitions_.resize(layers);
  final_states_.resize(layers);
}

void Lasp2Delta::forward(int layer, bool held, float* o, const float* q, const float* k, const float* v,
                         const LinearGates& gates, const SpDocuments& docs) {
  const DeltaRuleShape piece = s_.delta_kernel(1, piece_len_);
  auto& P = incoming_[layer];
  auto& A = transitions_[layer];
  if (!held) {
    // 1. each piece's pair in one sweep: B_r, its end state from nothing, and A_r (kept for the backward); 2. the
    //    pairs on their way; 3. P_r
    A.resize(mine_.size() * size_t(s_.B) * HV_ * s_.dk * s_.dk);
    for (int b = 0; b < s_.B; ++b)
      for (int i = 0; i < int(mine_.size()); ++i) {
        const long t0 = mine_[i].offset;
        delta_rule_summary(A.data() + transition_at(i, b), send_.data() + state_at(i, b), k + key_at(b, t0),
                           v + value_at(b, t0), gates.beta + gate_at(b, t0), gates.log_gates + gate_at(b, t0),
                           docs.flags(b, t0), piece, ws_.view());
      }
    PieceGates pairs{nullptr, piece_len_, nullptr, s_.B, HV_, s_.dk};
    pairs.matrices = A.data();
    passing_->start(send_.data(), pairs, true)->wait();
    P.resize(send_.size());
    passing_->finish(P.data());
    if (keep_) {  // the state after the last piece, for decoding
      final_states_[layer].resize(size_t(s_.B) * HV_ * s_.state_floats());
      passing_->final_state(final_states_[layer].data());
    }
  }
  // 4. each piece's kernel from the state entering it
  for (int b = 0; b < s_.B; ++b)
    for (int i = 0; i < int(mine_.size()); ++i) {
      const long t0 = mine_[i].offset;
      delta_rule_forward(o + value_at(b, t0), nullptr, q + key_at(b, t0), k + key_at(b, t0), v + value_at(b, t0),
                         gates.beta + gate_at(b, t0), gates.log_gates + gate_at(b, t0),
                         first_piece(i) ? nullptr : P.data() + state_at(i, b), docs.flags(b, t0), piece, ws_.view());
    }
}

void Lasp2Delta::backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const LinearGates& gates, const SpDocuments& docs) {
  const DeltaRuleShape piece = s_.delta_kernel(1, piece_len_);
  const auto& P = incoming_[layer];
  // 1. dP^own of each piece: its own outputs' gradient at the state entering it; 2. with the adjoint
  //    transitions A_r^T the other way; 3. G_r, the gradient of the state leaving each piece
  std::fill(send_.begin(), send_.end(), 0.f);
  for (int b = 0; b < s_.B; ++b)
    for (int i = 0; i < int(mine_.size()); ++i) {
      const long t0 = mine_[i].offset;
      delta_rule_backward(nullptr, nullptr, nullptr, nullptr, nullptr, send_.data() + state_at(i, b),
                          dout + value_at(b, t0), nullptr, q + key_at(b, t0), k + key_at(b, t0), v + value_at(b, t0),
                          gates.beta + gate_at(b, t0), gates.log_gates + gate_at(b, t0),
                          first_piece(i) ? nullptr : P.data() + state_at(i, b), docs.flags(b, t0), piece, ws_.view());
    }
  PieceGates pairs{nullptr, piece_len_, nullptr, s_.B, HV_, s_.dk};
  pairs.matrices = transitions_[layer].data();  // this step's forward's
  passing_->start(send_.data(), pairs, false)->wait();
  passing_->finish(suffix_.data());
  // 4. each piece's whole backward from P_r with G_r leaving it
  const size_t gates_n = size_t(s_.B) * s_.N * HV_;
  std::fill(gates.d_beta, gates.d_beta + gates_n, 0.f);
  std::fill(gates.d_log_gates, gates.d_log_gates + gates_n, 0.f);
  for (int b = 0; b < s_.B; ++b)
    for (int i = 0; i < int(mine_.size()); ++i) {
      const long t0 = mine_[i].offset, kt = key_at(b, t0), vt = value_at(b, t0), gt = gate_at(b, t0);
      delta_rule_backward(dq + kt, dk + kt, dv + vt, gates.d_beta + gt, gates.d_log_gates + gt, nullptr, dout + vt,
                          last_piece(i) ? nullptr : suffix_.data() + state_at(i, b), q + kt, k + kt, v + vt,
                          gates.beta + gt, gates.log_gates + gt, first_piece(i) ? nullptr : P.data() + state_at(i, b),
                          docs.flags(b, t0), piece, ws_.view());
    }
}

double Lasp2Delta::memory_floats(int linear_layers) const {
  const double transitions = double(mine_.size()) * s_.B * HV_ * s_.dk * s_.dk;
  return double(ws_.storage.size() + passing_->memory_floats() + 2 * send_.size()) +
         double(linear_layers) * (double(send_.size()) + transitions);
}

}  // namespace lasp
