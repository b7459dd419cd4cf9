// The AllGather baseline of the LASP-2 paper for linear attention layers (LASP2.md section 4): gather K and
// V of the whole sequence (ONE all-gather), then compute this rank's queries by the masked left product
// (Q K^T .* Psi) V over all earlier keys: O(N^2) work and O(N) communication, no right-product trick.
// Backward: the gradients of all K and V from the local queries, ONE reduce-scatter back to the owners.
// Softmax layers run LASP-2H (sp/lasp2h.h), the same AllGather-KV exchange, which both layer kinds share
// here. No bidirectional linear layers.
#pragma once
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/grid.h"
#include "sp/lasp2h.h"

namespace lasp {

class AllGatherAttention : public Attention {
 public:
  AllGatherAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  const int* positions() const override { return kv_.positions(); }
  void set_documents(const uint8_t* starts) override { kv_.set_documents(starts); }
  double memory_floats(const std::string& layer_types) const override;
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override {
    kv_.forward(layer, o, lse, q, k, v, recomputing());
  }
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override {
    kv_.backward(layer, dq, dk, dv, dout, o, lse, q);
  }

 private:
  AttentionShape s_;
  Lasp2H kv_;           // the exchange of K, V (and LASP-2H for the softmax layers)
  WorkspaceBuffer ws_;  // the masked product's
};

}  // namespace lasp
