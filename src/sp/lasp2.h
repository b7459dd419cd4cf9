// LASP-2 for linear attention layers and LASP-2H for softmax layers (LASP2.md sections 2 and 3), behind
// the model's Attention seam. Each rank holds its pieces of the sequence (one piece: contiguous layout;
// pieces r and 2W-1-r: zigzag).
//
// L below is the number of tokens per piece (piece_len in the code).
// Linear layer, forward: the local state M of every piece (d x d per head), ONE non-blocking AllGather of
//   the states started before the intra-rank chunkwise kernel and waited for after it, the prefix
//   P_p = sum_{s<p} lambda^(L(p-1-s)) M_s over global piece order, then o += diag(lambda^i) Q P_p. P_p is
//   kept for the backward.
// Linear layer, backward: dM_p = Q^T diag(lambda^i) dO, ONE non-blocking AllGather overlapped with the
//   local backward kernel, the suffix G_p = sum_{s>p} lambda^(L(s-p-1)) dM_s, then
//   dQ += diag(lambda^i) dO P_p^T, dK += diag(lambda^(L-j)) V G_p^T, dV += diag(lambda^(L-j)) K G_p.
// Bidirectional linear layer: the local K^T V, ONE AllGather, o = Q (total); backward: the local Q^T dO,
//   ONE AllGather, the kernel's backward with the other ranks' sum as the gradient of the local state.
// Softmax layer: LASP-2H (sp/lasp2h.h), a component of this method. The gated delta rule (decay gdn):
// sp/lasp2_delta.h, another.
// The exchange of the piece states is the paper's AllGather, or a scan (sp/state_passing.h: the methods exscan
// and allscan), with the same local work around it.
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/grid.h"
#include "sp/lasp2_delta.h"
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
  struct Impl;
  std::unique_ptr<Impl> impl_;  // LASP-2 for the linear layers
  std::unique_ptr<Lasp2Delta> delta_;  // decay gdn: the same for the gated delta rule, else null
  Lasp2H softmax_;
};

}  // namespace lasp
