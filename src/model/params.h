// The model's tensor table: every parameter's checkpoint name (MODEL.md), shape and offset in one flat
// buffer. Parameters, gradients and the two AdamW moments are four buffers of the same layout, so one
// table serves them all; Weights binds the table to a buffer as named pointers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace lasp {

// How a tensor starts (train/optimizer.h init_weights): weights from N(0, std), which also take weight decay;
// norm weights and rebased's gamma at 1, rebased's beta at 0; Gated DeltaNet's A_log and dt_bias by FLA's recipe
// (DELTA.md).
enum class ParamInit { normal, one, zero, gdn_a_log, gdn_dt_bias };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0, size = 0;
  ParamInit init = ParamInit::one;
  bool matrix = false;  // init normal: the 2-D weights and the convolutions' [C, 1, K]; takes weight decay
};

struct LayerWeights {
  float* input_norm;  // (D)
  float* wq;          // (H*d, D); linear layers (H*dk, D), dk = ModelConfig::linear_key_width()
  float* wk;          // (H*dk, D) linear layer, (H_kv*d, D) softmax layer
  float* wv;          // (H*d, D) linear layer, (H_kv*d, D) softmax layer
  float* wo;          // (D, H*d)
  float* wg;          // (H*d, D) linear layers with output_gate, else null
  float* o_norm;      // (d) linear layers with output_norm, else null
  float *wgk1, *wgk2, *bgk;  // decay gla: (r, D), (H*d, r), (H*d) the gate projection, else null
  float *fm_gamma, *fm_beta;  // feature_map rebased: (dk), (dk) its LayerNorm's, shared by q, k and the heads
  // decay gdn (DELTA.md), else null: wq, wk (H*dk, D), wv, wg (HV*dv, D), wo (D, HV*dv), o_norm (dv), and
  float *wa, *wb;              // (HV, D) the log-gate's and beta's projections
  float *a_log, *dt_bias;      // (HV)
  float *q_conv, *k_conv, *v_conv;  // (H*dk, K), (H*dk, K), (HV*dv, K) the short convolutions (null: conv_size 0)
  float* post_norm;   // (D)
  float* w_gate;      // (F, D)
  float* w_up;        // (F, D)
  float* w_down;      // (D, F)
};

struct Weights {
  float* embed;       // (V, D)
  std::vector<LayerWeights> layers;
  float* final_norm;  // (D)
  float* lm_head;     // (V, D); the embedding when tied
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& config);
  const std::vector<TensorSpec>& specs() const { return specs_; }
  size_t total() const { return total_; }
  Weights bind(float* base) const;
  const TensorSpec& find(const std::string& name) const;

 private:
  ModelConfig config_;
  std::vector<TensorSpec> specs_;
  size_t total_ = 0;
  // init: by default normal for 2-D shapes, one otherwise.
  void add(const std::string& name, std::vector<int64_t> shape, std::optional<ParamInit> init = std::nullopt);
};

}  // namespace lasp
