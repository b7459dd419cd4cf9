// LASP-1 (the baseline LASP-2 improves on, LASP2.md section 4): the d x d states of the linear layers
// travel along a serial chain of blocking point-to-point hops, piece by piece in global order; the rank
// holding piece p waits for the state from the holder of piece p-1, runs its piece from that state and
// sends its state on. The backward sends the state gradients back along the chain. Softmax layers run
// LASP-2H (inherited), as a hybrid model needs something there.
#pragma once
#include <vector>

#include "sp/lasp2.h"

namespace lasp {

class Lasp1Attention : public Lasp2Attention {
 public:
  Lasp1Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const float* lambda) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const float* lambda) override;
  // Its linear layers keep no decode state (generation prefills with the default method).
  void keep_decode_state(bool keep) override { Attention::keep_decode_state(keep); }

 private:
  Comm& sp_;
  AttentionShape s_;
  std::vector<Piece> mine_;
  std::vector<std::pair<int, int>> owner_;  // global piece -> (rank, index among its pieces)
  WorkspaceBuffer ws_{0};
  std::vector<std::vector<float>> incoming_;  // per layer: the state entering each local piece, (pieces, B, H, d, d)
  size_t state_floats() const { return size_t(s_.B) * s_.H * s_.d * s_.d; }
};

}  // namespace lasp
