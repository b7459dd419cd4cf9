// LASP-2 and LASP-2H in chunks, for the layer-major memory plan of several SP ranks (LayerMajorAttention,
// ModelPlan::layer_major): the model hands this rank's piece(s) over as chunks of at most `chunk` tokens per
// row, each layer in two passes; the exchange is the same ONE collective each way as sp/lasp2.h's.
// Linear layers: LASP-2's passes (sp/lasp2_linear.h), chunk by chunk: forward pass 1 collects each chunk's pair
//   into its piece's, the exchange, pass 2 runs the kernel from the state entering the chunk; backward pass 1 (chunks
//   in reverse) the kernel's backward (and each piece's dP^own at its start), the exchange, pass 2 (in reverse) the
//   later pieces' share. Gated DeltaNet's short convolutions: each chunk's halo is the tail of the chunk before it
//   in its piece (kept by the forward), or at a piece's start the previous piece's tail, exchanged point to point
//   before the layer (sp/conv_halo.h); backward, a chunk's halo gradient goes to the chunk before, and at a piece's
//   start (both passes') back to the previous piece's holder after pass 2.
// Softmax layer: pass 1 keeps the chunks' keys and values, ONE AllGather of them (sp/lasp2h.h), pass 2 the
//   chunk's queries against every key. Backward: pass 1 accumulates the gradient of every gathered key,
//   ONE ReduceScatter back to the owners, pass 2 adds each chunk's share to its dk, dv.
// A chunk may straddle the two pieces of a zigzag rank: it runs as one segment per piece.
#pragma once
#include <vector>

#include "comm/comm.h"
#include "core/check.h"
#include "model/attention.h"
#include "sp/conv_halo.h"
#include "sp/grid.h"
#include "sp/lasp2_linear.h"
#include "sp/lasp2h.h"
#include "sp/state_passing.h"

namespace lasp {

class Lasp2ChunkedAttention : public LayerMajorAttention {
 public:
  // shape.N: this rank's tokens per row (global_N / W); chunk: tokens per row in one chunk of the model.
  Lasp2ChunkedAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers, int chunk);
  const int* positions() const override { return positions_.data(); }  // the running chunk's
  double memory_floats(const std::string& layer_types) const override;

  void set_documents(const uint8_t* starts) override { softmax_.set_documents(starts); }
  void begin_chunk(int begin, int length, Pass pass) override;
  void linear_collect(int layer, const float* k, const float* v, const LinearGates& gates) override;
  void softmax_collect(int layer, const float* k, const float* v) override;
  void linear_exchange(int layer, Pass pass, const LinearGates& gates) override;
  void softmax_exchange(int layer, Pass pass) override;
  bool linear_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                            const LinearGates& gates) override;
  bool softmax_key_gradients(int layer, float* dk, float* dv) override;
  ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K) override;
  void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) override;
  std::vector<int> conv_tail_tokens(int K) const override { return halo_.tail_tokens(K); }
  void conv_exchange(int conv, const float* tails, int C, int K) override;
  void conv_exchange_backward(int conv, float* dtails, int C, int K) override;

  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

 private:
  using Segment = Lasp2Linear::Segment;
  Comm& sp_;
  AttentionShape s_;  // s_.N: this rank's tokens per row
  int global_N_, chunk_, chunks_;
  std::vector<Piece> mine_;
  std::vector<int> all_positions_, positions_;  // this rank's global positions; the running chunk's
  int begin_ = 0, length_ = 0, index_ = 0;
  Pass pass_ = Pass::forward;
  WorkspaceBuffer ws_{0};  // the softmax kernels' (a chunk of queries)
  // The short convolutions, per convolution (3 l + q, k, v): each piece's halo (B, pieces, K-1, C) and, in the
  // backward, its gradient (both passes'); each chunk's tail (chunks, B, K-1, C), the tail's gradient for the
  // chunk before (B, K-1, C) and which chunk that is (-1: none).
  ConvHalo halo_;
  std::vector<std::vector<float>> piece_halos_, dpiece_halos_, conv_tails_, dtails_;
  std::vector<int> dtail_chunk_;
  std::vector<float> dhalo_;
  // Softmax layers: this rank's keys and values (2, B, N, H_kv, d) collected in pass 1, then in the backward
  // their gradients from the reduce-scatter; the gathered keys' gradients of the layer under way.
  Lasp2H softmax_;
  std::vector<float> local_kv_;
  Documents chunk_docs_;  // the running chunk's queries' documents (softmax), when there are documents
  float* dkv_ = nullptr;
  int dkv_layer_ = -1;
  Lasp2Linear linear_;  // the linear layers (after softmax_, whose documents it reads)

  const SpDocuments& docs() const { return softmax_.documents(); }
  const std::vector<Segment>& segments() const { return linear_.segments(); }
  int local_row(const Segment& sg) const { return mine_[sg.piece].offset + sg.at; }  // in this rank's tokens
  const int* chunk_documents();  // the running chunk's queries' documents (B, length), or null
  size_t kv_floats() const { return size_t(s_.B) * s_.N * s_.H_kv * s_.d; }  // this rank's keys
};

}  // namespace lasp
