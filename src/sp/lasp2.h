// LASP-2 for linear attention layers and LASP-2H for softmax layers (LASP2.md sections 2 and 3), behind
// the model's Attention seam. Each rank holds its pieces of the sequence (one piece: contiguous layout;
// pieces r and 2W-1-r: zigzag).
//
// Linear layers: LASP-2's passes (sp/lasp2_linear.h) over this rank's tokens at once. Forward: each piece's pair
//   (its state M from nothing, its transition), ONE non-blocking exchange of them (the paper's AllGather, or a
//   scan: sp/state_passing.h, the methods exscan and allscan) started before the local kernel and finished after
//   it; the kernel runs in spans (progress points for MPI) from nothing at each piece's start, and the state
//   entering it, P, is added afterwards: o += diag(lambda^i) Q P (GLA: (Q .* bq) P). Backward: dP^own = Q^T
//   diag(lambda^i) dO, ONE exchange in flight during the local backward kernel, then dQ's share of P and the later
//   pieces' share, from G at the piece's end, of dK, dV (and GLA's gates). The gated delta rule (decay gdn), whose
//   transition is no closed form, exchanges first and runs the kernel from P; its backward runs its kernel's first,
//   then exchanges dP^own and adds the share of G. Its short convolutions' halo: sp/conv_halo.h, a halo per piece.
// Bidirectional linear layer: the local K^T V, ONE AllGather, o = Q (total); backward: the local Q^T dO,
//   ONE AllGather, the kernel's backward with the other ranks' sum as the gradient of the local state.
// Softmax layer: LASP-2H (sp/lasp2h.h), a component of this method.
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/grid.h"
#include "sp/conv_halo.h"
#include "sp/lasp2_linear.h"
#include "sp/lasp2h.h"
#include "sp/state_passing.h"

namespace lasp {

class Lasp2Attention : public Attention {
 public:
  // shape.N is this rank's token count per row (N_global / W); layers: the model's layer count; passing: how
  // the piece states travel (the paper's AllGather, or a scan); slices: All-Scan's K.
  Lasp2Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
                 StatePassingKind passing = StatePassingKind::gather, int slices = 1);
  ~Lasp2Attention() override;
  const int* positions() const override { return softmax_.positions(); }
  void set_documents(const uint8_t* starts) override { softmax_.set_documents(starts); }
  double memory_floats(const std::string& layer_types) const override;
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) override;
  void linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v) override;
  ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K) override;
  void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

  // For a sequence-parallel prefill: every rank computes each linear layer's state after the WHOLE sequence
  // from the gathered piece states; the softmax layers' keys and values are the gathered ones.
  void keep_decode_state(bool keep) override;
  std::vector<float> final_state(int layer) const override;
  std::vector<float> keys_in_order(int layer, bool values) const override;

 private:
  Comm& sp_;
  AttentionShape s_;  // s_.N: this rank's tokens per row
  int span_;          // tokens per row of the kernel's spans
  Lasp2H softmax_;
  Lasp2Linear linear_;  // (after softmax_, whose documents it reads)
  ConvHalo halo_;       // decay gdn
  std::vector<std::vector<float>> others_;  // bidirectional, per layer: the other ranks' K^T V, for the backward
  WorkspaceBuffer bidirectional_ws_{0};
  WorkspaceBuffer& bidirectional_ws();  // sized on first use
  template <class F>
  void for_each_span(bool reverse, Pass pass, F f);  // f() after begin_span of each span in turn
};

}  // namespace lasp
