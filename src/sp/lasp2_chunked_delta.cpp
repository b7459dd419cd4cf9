// Lasp2ChunkedAttention's Gated DeltaNet part (sp/lasp2_chunked.h): the pieces' (A_r, B_r) pairs folded chunk by
// chunk, the later pieces' share of the backward, and the short convolutions' halos across chunks and ranks.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/short_conv.h"
#include "sp/lasp2_chunked.h"

namespace lasp {

// Pass 1: a segment's own pair (A_c, B_c) in one sweep (delta_rule_summary), folded into its piece's:
// A <- A_c A, B <- A_c B + B_c (the segment's pair itself at the piece's start).
void Lasp2ChunkedAttention::delta_collect(int layer, const float* k, const float* v, const LinearGates& gates) {
  const int HV = s_.value_heads(), dk = s_.dk, dv = s_.dv;
  const size_t S = state_floats(), X = transition_floats(), kk = size_t(dk) * dk, kv = size_t(dk) * dv;
  send_.resize(mine_.size() * S);
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

// Pass 2, chunks in reverse: the later pieces' share. The kernel's backward is linear in (dout, dstate_out), so the
// share is its backward with no output gradient from G at the piece's end, the state's gradient carried from chunk to
// chunk (pass 1 gave the share of the piece's own outputs).
void Lasp2ChunkedAttention::delta_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                                                const LinearGates& gates) {
  const size_t S = state_floats(), row_state = size_t(s_.value_heads()) * s_.state_floats();
  const auto& P = incoming_[layer];
  LASP_CHECK(gates.d_beta && gates.d_log_gates && entering_[layer].size() == size_t(chunks_) * S,
             "LASP-2 in chunks: the delta rule's key gradients of layer {} before its backward's pass 1", layer);
  for (auto sg = segments_.rbegin(); sg != segments_.rend(); ++sg) {
    if (last_piece(sg->piece)) continue;  // no later piece reads it
    const float* in = sg->at > 0 ? entering_[layer].data() + size_t(index_) * S
                                 : first_piece(sg->piece) ? nullptr : P.data() + sg->piece * S;
    const bool ends = sg->at + sg->length == piece_len_, gives = sg->at > 0;  // gives: to the chunk before
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

// The tails of this rank's pieces, cut at their last document start (short_conv_tail), on their way; the halos of its
// pieces back.
void Lasp2ChunkedAttention::conv_exchange(int conv, const float* tails, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), all = size_t(s_.B) * pieces * n;
  for (auto* v : {&piece_halos_, &dpiece_halos_, &conv_tails_, &dtails_})
    if (int(v->size()) <= conv) v->resize(conv + 1);
  if (int(dtail_chunk_.size()) <= conv) dtail_chunk_.resize(conv + 1, -1);
  std::vector<float> cut(all);
  const std::vector<int> tokens = halo_.tail_tokens(K);
  for (int b = 0; b < s_.B; ++b)
    for (size_t i = 0; i < pieces; ++i) {
      const size_t at = (size_t(b) * pieces + i) * n;
      short_conv_tail(cut.data() + at, tails + at, nullptr, docs().flags(b, tokens[i * (K - 1)]), 1, K - 1, C, K);
    }
  halo_.exchange(sized(piece_halos_[conv], all).data(), cut.data(), C, K);
  dpiece_halos_[conv].assign(all, 0.f);
}

// Each segment's halo: the previous piece's tail at a piece's start, else the tail of the chunk before (kept by the
// forward passes, which keep this chunk's too: that of its last segment).
Attention::ConvRuns Lasp2ChunkedAttention::conv_halo(int conv, float* halo, const float* x, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), R = segments_.size();
  const ConvRuns runs{int(R), R > 1 ? segments_[1].row : 0};
  if (K == 1) return runs;  // no halo
  LASP_CHECK(int(piece_halos_.size()) > conv && piece_halos_[conv].size() == size_t(s_.B) * pieces * n,
             "LASP-2 in chunks: convolution {}'s halo asked before its exchange", conv);
  float* tails = sized(conv_tails_[conv], size_t(chunks_) * s_.B * n).data();
  for (size_t r = 0; r < R; ++r) {
    const Segment& sg = segments_[r];
    for (int b = 0; b < s_.B; ++b) {
      const float* from = sg.at == 0 ? piece_halos_[conv].data() + (size_t(b) * pieces + sg.piece) * n
                                     : tails + (size_t(index_ - 1) * s_.B + b) * n;
      std::copy_n(from, n, halo + (b * R + r) * n);
    }
  }
  if (pass_ == Pass::forward) {
    const Segment& sg = segments_.back();
    for (int b = 0; b < s_.B; ++b)
      short_conv_tail(tails + (size_t(index_) * s_.B + b) * n, x + (long(b) * length_ + sg.row) * C,
                      halo + (b * R + R - 1) * n, docs().flags(b, local_row(sg)), 1, sg.length, C, K);
  }
  return runs;
}

// Chunks come last to first (in both backward passes): the gradient of this chunk's tail, from the chunk after it in
// the piece, reaches its last segment's rows and halo (short_conv_tail_backward); then each segment's halo gradient
// goes to the chunk before, or at a piece's start to the previous piece (sent after pass 2).
void Lasp2ChunkedAttention::conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), R = segments_.size();
  if (K == 1) return;
  LASP_CHECK(int(dpiece_halos_.size()) > conv && dpiece_halos_[conv].size() == size_t(s_.B) * pieces * n,
             "LASP-2 in chunks: convolution {}'s halo gradient before its exchange", conv);
  std::copy_n(dhalo, s_.B * R * n, sized(dhalo_, s_.B * R * n).begin());
  std::vector<float>& dtail = sized(dtails_[conv], s_.B * n);
  if (dtail_chunk_[conv] == index_) {
    const Segment& sg = segments_.back();
    for (int b = 0; b < s_.B; ++b)
      short_conv_tail_backward(dx + (long(b) * length_ + sg.row) * C, dhalo_.data() + (b * R + R - 1) * n,
                               dtail.data() + b * n, docs().flags(b, local_row(sg)), 1, sg.length, C, K);
  }
  dtail_chunk_[conv] = -1;
  for (size_t r = 0; r < R; ++r) {
    const Segment& sg = segments_[r];
    for (int b = 0; b < s_.B; ++b) {
      const float* g = dhalo_.data() + (b * R + r) * n;
      if (sg.at > 0) {
        std::copy_n(g, n, dtail.data() + b * n);
        dtail_chunk_[conv] = index_ - 1;
      } else if (!first_piece(sg.piece)) {
        float* to = dpiece_halos_[conv].data() + (size_t(b) * pieces + sg.piece) * n;
        for (size_t e = 0; e < n; ++e) to[e] += g[e];
      }
    }
  }
}

// After pass 2: every piece's halo gradient (both passes') back to the holder of the piece before it; this rank's
// pieces' tails' gradient, through the cut at their last document start.
void Lasp2ChunkedAttention::conv_exchange_backward(int conv, float* dtails, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), all = size_t(s_.B) * pieces * n;
  LASP_CHECK(int(dpiece_halos_.size()) > conv && dpiece_halos_[conv].size() == all,
             "LASP-2 in chunks: convolution {}'s backward exchange before its forward one", conv);
  std::vector<float> cut(all);
  halo_.exchange_backward(cut.data(), dpiece_halos_[conv].data(), C, K);
  std::fill(dpiece_halos_[conv].begin(), dpiece_halos_[conv].end(), 0.f);
  std::fill_n(dtails, all, 0.f);
  const std::vector<int> tokens = halo_.tail_tokens(K);
  for (int b = 0; b < s_.B; ++b)
    for (size_t i = 0; i < pieces; ++i) {
      const size_t at = (size_t(b) * pieces + i) * n;
      short_conv_tail_backward(dtails + at, nullptr, cut.data() + at, docs().flags(b, tokens[i * (K - 1)]), 1, K - 1,
                               C, K);
    }
}

}  // namespace lasp
