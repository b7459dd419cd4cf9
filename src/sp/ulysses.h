// Ulysses (DeepSpeed; LASP2.md section 4): an all-to-all turns this rank's slice of the sequence for all
// heads into the whole sequence for H/W of the heads; attention runs locally on those heads (the chunkwise
// linear kernel or the tiled softmax kernel), and an all-to-all turns the output back. Backward: the same
// all-to-alls for the output gradient and the q, k, v gradients. Needs H divisible by W; the key/value
// heads of softmax layers are replicated to H heads before the exchange (and their gradients summed back).
// The gated delta rule (decay gdn): its HV value heads, beta and log-gates travel with the values (H and HV
// divide evenly over the ranks, so each rank's value heads read its own q/k heads); its short convolutions take
// their halo from the previous piece's rank (sp/conv_halo.h).
#pragma once
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/conv_halo.h"
#include "sp/documents.h"
#include "sp/grid.h"

namespace lasp {

class UlyssesAttention : public Attention {
 public:
  UlyssesAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  const int* positions() const override { return positions_.data(); }
  // After the exchange every rank holds whole sequences (of its heads): their documents are those of all N.
  void set_documents(const uint8_t* starts) override;
  double memory_floats(const std::string& layer_types) const override;
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) override;
  void linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v) override;
  // lse is not used: the softmax statistics live with the head-sharded output, kept here for the backward.
  ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K) override;
  void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

 private:
  Comm& sp_;
  AttentionShape s_;
  int N_, W_, hg_;                                 // global length, ranks, heads per rank after the exchange
  std::vector<int> positions_;                     // this rank's global positions
  std::vector<std::vector<int>> rank_positions_;   // every rank's
  std::vector<int> all_positions_;                 // 0 .. N-1
  SpLayout layout_;
  Documents docs_;                                 // of the whole sequence, (B, N)
  std::vector<uint8_t> local_starts_;              // this rank's (B, N_local), empty without documents
  std::unique_ptr<ConvHalo> halo_;                 // decay gdn
  WorkspaceBuffer ws_{0};
  std::vector<float> send_, recv_;
  struct Saved {
    std::vector<float> q, k, v, o, lse;  // head-sharded, (B, N, hg, width); lse (B, hg, N)
    std::vector<float> g;                // GLA's log-gates, head-sharded like q; gdn's, like v
    std::vector<float> beta;             // gdn: head-sharded like v
  };
  std::vector<Saved> saved_;

  // x (B, N_local, heads, d) -> full (B, N, heads / W, d): this rank's head group, whole sequence.
  void to_heads(const float* x, int heads, int d, std::vector<float>& full);
  // The inverse: full (B, N, heads / W, d) -> x (B, N_local, heads, d), added into x when accumulate.
  void to_sequence(const std::vector<float>& full, int heads, int d, float* x, bool accumulate);
  // k or v (B, N_local, H_kv, d) -> (B, N_local, H, d), each query head with its key/value head.
  std::vector<float> expand_kv(const float* x) const;
  // The kernels' shapes after the exchange: this rank's hg_ heads over the whole sequence.
  LinearAttentionShape linear_shape() const { return s_.linear_kernel(s_.B, N_, hg_); }
  LinearAttentionShape gla_shape() const { return s_.gla_kernel(s_.B, N_, hg_); }
  DeltaRuleShape delta_shape() const {
    return {s_.B, N_, hg_, s_.value_heads() / W_, s_.dk, s_.dv, kDeltaBlock, s_.threads};
  }
  SoftmaxAttentionShape softmax_shape() const { return s_.softmax_kernel(s_.B, N_, N_, hg_, hg_); }
};

}  // namespace lasp
