// Generation: the prompt is prefilled with the chunked forward (linear layers hand over their final
// d x d state, softmax layers their keys and values), then tokens are decoded one at a time: a linear
// layer keeps only its state (constant memory), a softmax layer appends to its key/value cache.
#pragma once
#include <cstdint>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "sp/grid.h"

namespace lasp {

class Decoder {
 public:
  // params: the model's weights in ParamLayout(config) order; max_tokens bounds prompt + generated tokens.
  // precision bf16: every projection, in the prefill and in each step, multiplies bf16 operands (a bf16 copy
  // of the weights made here) with fp32 accumulation, as the bf16 forward of training does.
  Decoder(const ModelConfig& config, const std::vector<float>& params, int max_tokens,
          Precision precision = Precision::fp32);
  // Runs the prompt (at least one token) in this process, in chunks when the memory plan says so (a long
  // prompt); returns the logits (V) at its last position.
  std::vector<float> prefill(const std::vector<int>& prompt);
  // Runs the first `prefix` prompt tokens through `attention`, an SP method's Attention over those tokens
  // that keeps the decode state (positions: this rank's global positions among them), then the rest of the
  // prompt token by token. Every rank ends with the same decode state and logits.
  // plan: how the model runs them (a chunked plan needs a ChunkedAttention of that chunk); its precision is
  // the decoder's. sp: the SP group of the attention, or null for one process (decay gdn: the rank that ran the
  // prefix's last token hands the others its convolutions' cache).
  std::vector<float> prefill(const std::vector<int>& prompt, Attention& attention, const std::vector<int>& positions,
                             int prefix, ModelPlan plan = {}, Comm* sp = nullptr);
  // Feeds one token at the next position; returns the logits (V) after it.
  std::vector<float> step(int token);
  // Documents (MODEL.md), before the prefill: `token` opens a new document, in the prompt and when decoded,
  // and what follows never sees what came before it; -1: none.
  void set_document_start(int token) { doc_start_ = token; }
  int position() const { return pos_; }
  // The OpenMP threads of the prefill's attention kernels: those of the process when the decoder was made.
  int threads() const { return threads_; }

 private:
  ModelConfig config_;
  ParamLayout layout_;
  const std::vector<float>& params_;
  Weights weights_;  // named pointers into params_
  int max_tokens_, pos_ = 0, threads_;
  int doc_start_ = -1, doc_begin_ = 0;  // the document-start token; where the running document began
  std::vector<std::vector<float>> state_;   // linear layers: (H, d, d) S = sum_{j<pos} lambda^(pos-j) k_j^T v_j;
                                            // gdn: (HV, dk, dv) the delta rule's
  std::vector<std::vector<float>> conv_cache_;  // gdn: the K-1 rows before the next token of the q, k, v
                                                // projections, ((K-1) x C) each, one after the other
  std::vector<std::vector<float>> k_cache_, v_cache_;  // softmax layers: (max_tokens, H_kv, d)
  std::vector<std::vector<float>> lambda_;  // per layer, per head
  Precision precision_;
  std::vector<bf16> params_bf16_;  // precision bf16: the weights, ParamLayout order

  // y (out) = W (out x in) x (in), W one of the weights in the nn.Linear layout.
  std::vector<float> project(const float* W, const std::vector<float>& x, int out) const;
  // decay gdn: one token through layer l's delta rule (DELTA.md "Decoding"): attn (HV dv) from xn; the layer's
  // state and conv cache move on by the token.
  void gdn_step(int l, const std::vector<float>& xn, std::vector<float>& attn);
};

// The prompt prefilled sequence-parallel over sp with the default SP method (LASP-2 / LASP-2H): the longest
// prefix that the layout divides evenly (and leaves at least one token), the rest token by token; with one
// rank, decoder.prefill(prompt). Every rank then holds the same decode state and decodes the same tokens.
std::vector<float> prefill_sequence_parallel(Decoder& decoder, const ModelConfig& config, const std::vector<int>& prompt,
                                             Comm& sp, SpLayout layout);

// Picks a token from logits: argmax when temperature <= 0, else a sample from softmax(logits / T)
// restricted to the top_k largest (top_k <= 0: all), with the given generator state.
int sample_token(const std::vector<float>& logits, float temperature, int top_k, uint64_t& rng_state);

}  // namespace lasp
