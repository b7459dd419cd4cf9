// The AllGather baseline of the LASP-2 paper for linear attention layers (LASP2.md section 4): gather K and
// V of the whole sequence (ONE all-gather), then compute this rank's queries by the masked left product
// (Q K^T .* Psi) V over all earlier keys: O(N^2) work and O(N) communication, no right-product trick.
// Backward: the gradients of all K and V from the local queries, ONE reduce-scatter back to the owners.
// Softmax layers run LASP-2H (inherited), which is the same AllGather-KV scheme.
#pragma once
#include <vector>

#include "sp/lasp2.h"

namespace lasp {

class AllGatherAttention : public Lasp2Attention {
 public:
  AllGatherAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const float* lambda) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const float* lambda) override;
  // Its linear layers keep no decode state (generation prefills with the default method).
  void keep_decode_state(bool keep) override { Attention::keep_decode_state(keep); }

 private:
  AttentionShape s_;
  WorkspaceBuffer ws_;  // the masked product's
};

}  // namespace lasp
