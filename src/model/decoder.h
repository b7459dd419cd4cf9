// Generation: the prompt is prefilled with the chunked forward (linear layers hand over their final
// d x d state, softmax layers their keys and values), then tokens are decoded one at a time: a linear
// layer keeps only its state (constant memory), a softmax layer appends to its key/value cache.
#pragma once
#include <cstdint>
#include <vector>

#include "comm/comm.h"
#include "model/config.h"
#include "model/params.h"
#include "sp/grid.h"

namespace lasp {

class Decoder {
 public:
  // params: the model's weights in ParamLayout(config) order; max_tokens bounds prompt + generated tokens.
  // With an SP group of several ranks the prompt is prefilled sequence-parallel (LASP-2 / LASP-2H): the
  // longest prefix that the layout divides evenly (and leaves at least one token), the rest token by token;
  // then every rank holds the same decode state and decodes the same tokens.
  Decoder(const ModelConfig& config, const std::vector<float>& params, int max_tokens, Comm* sp = nullptr,
          SpLayout layout = SpLayout::contiguous);
  // Runs the prompt (at least one token); returns the logits (V) at its last position.
  std::vector<float> prefill(const std::vector<int>& prompt);
  // Feeds one token at the next position; returns the logits (V) after it.
  std::vector<float> step(int token);
  int position() const { return pos_; }

 private:
  ModelConfig config_;
  ParamLayout layout_;
  const std::vector<float>& params_;
  int max_tokens_, pos_ = 0;
  Comm* sp_;
  SpLayout layout_kind_;
  std::vector<std::vector<float>> state_;   // linear layers: (H, d, d) S = sum_{j<pos} lambda^(pos-j) k_j^T v_j
  std::vector<std::vector<float>> k_cache_, v_cache_;  // softmax layers: (max_tokens, H_kv, d)
  std::vector<std::vector<float>> lambda_;  // per layer, per head
};

// Picks a token from logits: argmax when temperature <= 0, else a sample from softmax(logits / T)
// restricted to the top_k largest (top_k <= 0: all), with the given generator state.
int sample_token(const std::vector<float>& logits, float temperature, int top_k, uint64_t& rng_state);

}  // namespace lasp
