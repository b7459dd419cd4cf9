// One process, the sequence in chunks: the attention of a model that runs its N tokens per row as
// consecutive chunks of at most `chunk` tokens, each through every layer (Attention::begin_chunk). Memory
// then scales with the chunk, not with N, except for what attention itself must keep:
//   linear layers: the d x d state entering each chunk (B, H, d, d per chunk and layer), so that a chunk's
//     forward can be run again before its backward; backward, the gradient of the state leaving the chunk
//     is handed to the chunk before, as LASP-2 hands states between ranks (LASP2.md section 2);
//   softmax layers: the keys and values of every token (B, N, H_kv, d each), and their gradients during the
//     backward pass (a chunk's queries reach every earlier key);
//   decay gdn: the delta rule's state as above (HV, dk, dv), and each chunk's last K-1 rows of every short
//     convolution's input (Attention::conv_halo), the next chunk's halo; backward, the halo's gradient is
//     handed to the chunk before.
// The forward pass stores states and keys; the backward pass's recomputed forwards only read them.
#pragma once
#include <vector>

#include "model/attention.h"

namespace lasp {

class ChunkedAttention : public Attention {
 public:
  // shape.N: the chunk (tokens per row in one chunk); sequence_length: N, tokens per row in all.
  ChunkedAttention(const AttentionShape& shape, int sequence_length, int layers);

  // memory_floats before constructing one (the plan compares chunks with it).
  static double floats_needed(const AttentionShape& shape, int sequence_length, const std::string& layer_types);
  double memory_floats(const std::string& layer_types) const override {
    return floats_needed(s_, N_, layer_types);
  }

  void begin_chunk(int begin, int length, Pass pass) override;
  void set_documents(const uint8_t* starts) override;
  const int* positions() const override { return positions_.data(); }
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K) override;
  void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

  // Generation from a long prompt: the state after the last chunk, the kept keys and values.
  void keep_decode_state(bool keep) override { keep_ = keep; }
  std::vector<float> final_state(int layer) const override { return final_states_.at(layer); }
  std::vector<float> keys_in_order(int layer, bool values) const override { return (values ? values_ : keys_).at(layer); }

 private:
  AttentionShape s_;   // s_.N: the chunk
  int N_, chunks_;     // tokens per row; chunks per row
  int begin_ = 0, length_ = 0, index_ = 0;
  Pass pass_ = Pass::forward;
  bool keep_ = false;
  std::vector<int> positions_, all_positions_;  // this chunk's; 0 .. N-1
  Documents all_docs_, docs_;                   // of the whole sequence; of this chunk
  WorkspaceBuffer workspace_{0};
  // Per layer, allocated on first use: the states entering chunks 1.. (chunks - 1, B, H, dk, dv); the gradient
  // of the state leaving the current chunk; keys, values (B, N, H_kv, d) and their gradients.
  std::vector<std::vector<float>> entering_, dleaving_, keys_, values_, dkeys_, dvalues_, final_states_;
  std::vector<float> dentering_;  // the gradient of the state entering the current chunk, then handed back
  // decay gdn, per convolution (3 l + q, k, v): every chunk's tail (chunks, B, K-1, C), written by the forward
  // pass; the gradient of the current chunk's tail, from the chunk after it (B, K-1, C); scratch of that size.
  std::vector<std::vector<float>> conv_tails_, dtails_;
  std::vector<float> dtail_next_;

  size_t state_floats() const { return size_t(s_.B) * s_.value_heads() * s_.state_floats(); }
  float* entering(int layer, int chunk);  // null for chunk 0 (no state)
  LinearAttentionShape linear_shape() const { return s_.linear_kernel(s_.B, length_, s_.H); }
  LinearAttentionShape gla_shape() const { return s_.gla_kernel(s_.B, length_, s_.H); }
  SoftmaxAttentionShape softmax_row_shape() const;
  const int* row_documents(int b) const {  // where the documents of row b's queries begin, or null
    return docs_.empty() ? nullptr : docs_.first.data() + size_t(b) * length_;
  }
};

}  // namespace lasp
