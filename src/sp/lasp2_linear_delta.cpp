// Lasp2Linear's Gated DeltaNet part (sp/lasp2_linear.h): the pieces' (A_r, B_r) pairs folded segment by segment,
// and the later pieces' share of the backward.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/delta_rule.h"
#include "kernels/gemm.h"
#include "sp/lasp2_linear.h"

namespace lasp {

// collect: a segment's own pair (A_c, B_c) in one sweep (delta_rule_summary), folded into its piece's:
// A <- A_c A, B <- A_c B + B_c (the segment's pair itself at the piece's start).
void Lasp2Linear::delta_collect(int layer, const float* k, const float* v, const LinearGates& gates) {
  const int HV = s_.value_heads(), dk = s_.dk, dv = s_.dv;
  const size_t S = state_floats(), X = transition_floats(), kk = size_t(dk) * dk, kv = size_t(dk) * dv;
  std::vector<float>& A = transitions_[layer];
  A.resize(mine_.size() * X);
  segment_A_.resize(HV * kk), segment_B_.resize(HV * kv), product_.resize(HV * kk);
  for (const Segment& sg : segments_)
    for (int b = 0; b < s_.B; ++b) {
      float* piece_A = A.data() + sg.piece * X + b * HV * kk;
      float* piece_B = send_.data() + sg.piece * S + b * HV * kv;
      const bool first = sg.at == 0;
      float *seg_A = first ? piece_A : segment_A_.data(), *seg_B = first ? piece_B : segment_B_.data();
      delta_rule_summary(seg_A, seg_B, k + key_at(b, sg.row), v + value_at(b, sg.row), gates.beta + gate_at(b, sg.row),
                         gates.log_gates + gate_at(b, sg.row), docs().flags(b, local_row(sg)),
                         s_.delta_kernel(1, sg.length), ws_.view());
      if (first) continue;
#pragma omp parallel for schedule(static) num_threads(s_.threads)
      for (int h = 0; h < HV; ++h) {
        float *Ah = piece_A + h * kk, *Bh = piece_B + h * kv, *Bc = seg_B + h * kv, *AA = product_.data() + h * kk;
        const float* Ac = seg_A + h * kk;
        gemm(false, false, dk, dv, dk, 1.f, Ac, dk, Bh, dv, 1.f, Bc, dv);  // B_c + A_c B
        gemm(false, false, dk, dk, dk, 1.f, Ac, dk, Ah, dk, 0.f, AA, dk);  // A_c A
        std::memcpy(Bh, Bc, sizeof(float) * kv);
        std::memcpy(Ah, AA, sizeof(float) * kk);
      }
    }
}

// key_gradients, spans in reverse: the later pieces' share. The kernel's backward is linear in (dout, dstate_out),
// so the share is its backward with no output gradient from G at the piece's end, the state's gradient carried from
// span to span (backward gave the share of the piece's own outputs).
void Lasp2Linear::delta_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                                      const LinearGates& gates) {
  const size_t S = state_floats(), row_state = size_t(s_.value_heads()) * s_.state_floats();
  const auto& P = incoming_[layer];
  LASP_CHECK(gates.d_beta && gates.d_log_gates && entering_[layer].size() == size_t(spans_) * S,
             "LASP-2: the delta rule's key gradients of layer {} before its backward's first pass", layer);
  for (auto sg = segments_.rbegin(); sg != segments_.rend(); ++sg) {
    if (last_piece(sg->piece)) continue;  // no later piece reads it
    const float* in = sg->at > 0 ? entering_[layer].data() + size_t(index_) * S
                                 : first_piece(sg->piece) ? nullptr : P.data() + sg->piece * S;
    const bool ends = sg->at + sg->length == piece_len_, gives = sg->at > 0;  // gives: to the span before
    if (gives) std::fill(carry_next_.begin(), carry_next_.end(), 0.f);
    for (int b = 0; b < s_.B; ++b) {
      const long kr = key_at(b, sg->row), vr = value_at(b, sg->row), gr = gate_at(b, sg->row);
      const float* dstate_out = (ends ? suffix_.data() + sg->piece * S : carry_.data()) + b * row_state;
      delta_rule_backward(nullptr, dk + kr, dv + vr, gates.d_beta + gr, gates.d_log_gates + gr,
                          gives ? carry_next_.data() + b * row_state : nullptr, nullptr, dstate_out, nullptr, k + kr,
                          v + vr, gates.beta + gr, gates.log_gates + gr, in ? in + b * row_state : nullptr,
                          docs().flags(b, local_row(*sg)), s_.delta_kernel(1, sg->length), ws_.view());
    }
    if (gives) std::swap(carry_, carry_next_);
  }
}

}  // namespace lasp
