// Ring Attention (LASP2.md section 4): the key/value blocks travel around the ring of SP ranks, W-1 hops,
// the next block received (non-blocking) while the current one is computed. Softmax layers merge the
// partial results with their fp32 log-sum-exp; linear layers compute the masked left product block by
// block (the paper's baseline: no right-product trick). Backward: the blocks travel again together with
// fp32 dK, dV accumulators, which end, after W hops, at the rank owning the block. With the zigzag layout
// this is ring-zigzag: the positions decide the mask, so nothing else changes.
#pragma once
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/documents.h"
#include "sp/grid.h"

namespace lasp {

class RingAttention : public Attention {
 public:
  RingAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  const int* positions() const override { return rank_positions_[sp_.rank()].data(); }
  void set_documents(const uint8_t* starts) override {
    docs_ = gather_documents(sp_, starts, s_.B, s_.N, N_, layout_);
  }
  double memory_floats(const std::string& layer_types) const override;
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

 private:
  Comm& sp_;
  AttentionShape s_;
  int W_, N_;  // ranks, global sequence length
  SpLayout layout_;
  SpDocuments docs_;
  std::vector<std::vector<int>> rank_positions_;
  WorkspaceBuffer ws_{0};  // the softmax kernel's or the masked product's
  std::vector<float> cur_, next_, o_part_, lse_part_;

  // Runs step(block_owner, block) for the blocks of all ranks in ring order, starting with the local one
  // (`parts` tensors of `count` floats each), passing them on while computing; with `home`, one more hop
  // brings every block back to its owner (for the travelling gradient accumulators).
  template <class Step>
  void ring(std::vector<float>& block, size_t count, bool home, Step step);
};

}  // namespace lasp
