// LASP-1 (the baseline LASP-2 improves on, LASP2.md section 4): the dk x dv states of the linear layers
// travel along a serial chain of blocking point-to-point hops, piece by piece in global order; the rank
// holding piece p waits for the state from the holder of piece p-1, runs its piece from that state and
// sends its state on. The backward sends the state gradients back along the chain. Softmax layers run
// LASP-2H (sp/lasp2h.h), a component of this method. No bidirectional linear layers. The gated delta rule
// (decay gdn) needs no transition at all here: each piece runs from the state that arrives (DELTA.md); its short
// convolutions take their halo from the previous piece's rank (sp/conv_halo.h).
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/conv_halo.h"
#include "sp/grid.h"
#include "sp/lasp2h.h"

namespace lasp {

class Lasp1Attention : public Attention {
 public:
  Lasp1Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  const int* positions() const override { return softmax_.positions(); }
  void set_documents(const uint8_t* starts) override { softmax_.set_documents(starts); }
  double memory_floats(const std::string& layer_types) const override;
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K) override;
  void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override {
    softmax_.forward(layer, o, lse, q, k, v, recomputing());
  }
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override {
    softmax_.backward(layer, dq, dk, dv, dout, o, lse, q);
  }

 private:
  Comm& sp_;
  AttentionShape s_;
  std::vector<Piece> mine_;
  std::vector<std::pair<int, int>> owner_;  // global piece -> (rank, index among its pieces)
  WorkspaceBuffer ws_{0};
  std::vector<std::vector<float>> incoming_;  // per layer: the state entering each local piece, (pieces, B, HV, dk, dv)
  size_t state_floats() const { return size_t(s_.B) * s_.value_heads() * s_.state_floats(); }
  Lasp2H softmax_;
  std::unique_ptr<ConvHalo> halo_;  // decay gdn
  const uint8_t* local_starts() const {
    return softmax_.documents().empty() ? nullptr : softmax_.documents().local.starts.data();
  }
};

}  // namespace lasp
