// LASP-2 for linear attention layers and LASP-2H for softmax layers (LASP2.md sections 2 and 3), behind
// the model's Attention seam. Each rank holds its pieces of the sequence (one piece: contiguous layout;
// pieces r and 2W-1-r: zigzag).
//
// Linear layer, forward: the local state M of every piece (d x d per head), ONE non-blocking AllGather of
//   the states started before the intra-rank chunkwise kernel and waited for after it, the prefix
//   P_p = sum_{s<p} lambda^(L(p-1-s)) M_s over global piece order, then o += diag(lambda^i) Q P_p. P_p is
//   kept for the backward.
// Linear layer, backward: dM_p = Q^T diag(lambda^i) dO, ONE non-blocking AllGather overlapped with the
//   local backward kernel, the suffix G_p = sum_{s>p} lambda^(L(s-p-1)) dM_s, then
//   dQ += diag(lambda^i) dO P_p^T, dK += diag(lambda^(L-j)) V G_p^T, dV += diag(lambda^(L-j)) K G_p.
// Bidirectional linear layer: the local K^T V, ONE AllGather, o = Q (total); backward: the local Q^T dO,
//   ONE AllGather, the kernel's backward with the other ranks' sum as the gradient of the local state.
// Softmax layer: ONE AllGather of [K | V] (H_kv heads, RoPE applied with global positions), the local
//   queries against all keys (positions decide the causal mask, so any layout works); backward: dK, dV of
//   all positions from the local queries, ONE ReduceScatter back to the owners.
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/grid.h"

namespace lasp {

class Lasp2Attention : public Attention {
 public:
  // shape.N is this rank's token count per row (N_global / W); layers: the model's layer count.
  Lasp2Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  ~Lasp2Attention() override;
  const int* positions() const override { return positions_.data(); }
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const float* lambda) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const float* lambda) override;
  void linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) override;
  void linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

  // For a sequence-parallel prefill: every rank computes each linear layer's state after the WHOLE sequence
  // from the gathered piece states; the softmax layers' keys and values are the gathered ones.
  void keep_decode_state(bool keep) override;
  std::vector<float> final_state(int layer) const override;
  std::vector<float> keys_in_order(int layer, bool values) const override;

 protected:
  // The pieces other methods build on. gather_kv: ONE all-gather of this rank's K and V ((B, N_local,
  // heads, d) each), kept for the layer's backward and returned as (2, B, N, heads, d) with the keys in rank
  // order; gathered_positions() gives their global positions. zeroed_dkv / scatter_dkv: gradients of the
  // gathered K and V, summed back to their owners by ONE reduce-scatter and added into dk, dv.
  const float* gather_kv(int layer, const float* k, const float* v, int heads);
  const float* gathered_kv(int layer) const;
  const int* gathered_positions() const;
  int global_length() const;
  float* zeroed_dkv(int heads);
  void scatter_dkv(float* dk, float* dv, int heads);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<int> positions_;
};

}  // namespace lasp
