// LASP-2H for softmax layers (LASP2.md section 3), a component that each SP method using it names
// explicitly (sp/methods.h says which). Forward: ONE all-gather of [K | V] (H_kv heads,
// RoPE applied with global positions), then the local queries against all keys (positions decide the causal
// mask, so any layout works). Backward: dK, dV of all positions from the local queries, ONE reduce-scatter
// back to their owners. The exchange itself (gather_kv / scatter_dkv) also serves the AllGather baseline's
// linear layers, which gather K and V the same way.
#pragma once
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/documents.h"
#include "sp/grid.h"

namespace lasp {

class Lasp2H {
 public:
  // shape.N is this rank's token count per row (global_N / W); layers: the model's layer count.
  Lasp2H(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers);
  const int* positions() const { return positions_.data(); }  // this rank's global positions
  // Documents (Attention::set_documents), gathered from every rank; the method's linear layers read them too.
  void set_documents(const uint8_t* starts) { docs_ = gather_documents(sp_, starts, s_.B, s_.N, global_N_, layout_); }
  const SpDocuments& documents() const { return docs_; }

  // reuse: the keys and values this layer gathered in this step's forward (a recompute), not gathered again.
  void forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v, bool reuse = false);
  // Accumulates into dq, dk, dv; uses the keys and values gathered by forward.
  void backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o, const float* lse,
                const float* q);
  // A layer's gathered keys (or values) in position order (B, N, H_kv, d), for generation.
  std::vector<float> keys_in_order(int layer, bool values) const;

  // The exchange. gather_kv: ONE all-gather of this rank's K and V ((B, N_local, heads, d) each), kept for
  // the layer's backward and returned as (2, B, N, heads, d) in rank order; gathered_positions() gives their
  // global positions. zeroed_dkv / scatter_dkv: gradients of the gathered K and V, summed back to their
  // owners by ONE reduce-scatter and added into dk, dv.
  const float* gather_kv(int layer, const float* k, const float* v, int heads);
  const float* gathered_kv(int layer) const { return kv_all_.at(layer).data(); }
  const int* gathered_positions() const { return k_pos_.data(); }
  int global_length() const { return global_N_; }
  float* zeroed_dkv(int heads);
  void scatter_dkv(float* dk, float* dv, int heads);

  // Attention::memory_floats of `layers` layers exchanging `heads` heads: the kept K, V of each, the exchange
  // buffers and the softmax kernel's workspace.
  double memory_floats(int layers, int heads) const;

 private:
  Comm& sp_;
  AttentionShape s_;
  int global_N_, W_;
  SpLayout layout_;
  SpDocuments docs_;
  std::vector<int> positions_, k_pos_;      // this rank's positions; the gathered keys' (rank-major)
  WorkspaceBuffer ws_{0};                   // the softmax kernel's
  std::vector<std::vector<float>> kv_all_;  // per layer: gathered K and V, (2, B, N, heads, d)
  std::vector<float> kv_send_, kv_recv_, dkv_all_, dkv_send_, dkv_recv_;
};

}  // namespace lasp
