// The model's shape: config.json of design/MODEL.md (Hugging Face style keys), parsed and validated.
// A default-constructed ModelConfig is lasp's default small hybrid ("LLLN", D 256, H 4, H_kv 2, F 768).
#pragma once
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/expanded_feature_map.h"
#include "kernels/feature_map.h"
#include "kernels/linear_attention.h"

namespace lasp {

// A JSON value for an error message: compact, cut at 80 characters; an array or object by its kind and size
// only (dumping a hostile nesting would recurse until the stack runs out).
std::string json_shown(const nlohmann::json& value);

struct LinearAttentionConfig {
  FeatureMap feature_map = FeatureMap::silu;
  Decay decay = Decay::none;
  bool output_norm = true;  // per-head RMSNorm over d (o_norm)
  bool output_gate = true;  // o * silu(W_g x) (g_proj)
  // decay gla (GATES.md): log-gates g = logsigmoid(W_gk2 (W_gk1 x) + b_gk) / gate_normalizer, W_gk1 of rank
  // gate_low_rank (gk_proj.0, gk_proj.1)
  int gate_low_rank = 16;
  float gate_normalizer = 16.f;
  // feature_map "based" | "rebased" (FEATURE_MAPS.md): the row maps that expand each head's feature_dim raw q and
  // k values (feature_dim 0: d), with every output divided by its normalizer (+ normalizer_eps). feature_map then
  // holds identity (q and k reach the row map as projected; rebased's LayerNorm is part of the row map).
  std::optional<ExpandedKind> expanded;
  int feature_dim = 0;
  float normalizer_eps = 1e-10f;
  // decay gdn (DELTA.md): the gated delta rule with short convolutions. head_k_dim, head_v_dim (0: d), num_v_heads
  // (0: H, else a multiple of H: value heads of their own, GVA), conv_size (the convolutions' width; 0: none).
  int head_k_dim = 0, head_v_dim = 0, num_v_heads = 0, conv_size = 4;
  std::string feature_map_name() const { return expanded ? to_string(*expanded) : to_string(feature_map); }
  // feature_map and expanded from a config or flag value: silu, elu1, relu, identity, based, rebased; false
  // (nothing changed) for any other name, which the caller reports in its own terms.
  bool set_feature_map(const std::string& name);
};

struct ModelConfig {
  int vocab_size = 256;          // V
  int hidden_size = 256;         // D
  int intermediate_size = 768;   // F
  int num_hidden_layers = 4;     // L
  int num_attention_heads = 4;   // H
  int num_key_value_heads = 2;   // H_kv (softmax layers only)
  std::string layer_types = "LLLN";  // one letter per layer: 'L' linear, 'N' softmax
  LinearAttentionConfig linear;      // JSON key "linear_attention"
  float rms_norm_eps = 1e-5f;
  float rope_theta = 500000.f;
  bool tie_word_embeddings = false;

  int head_dim() const;            // d = hidden_size / num_attention_heads
  bool has_softmax_layer() const;  // any 'N' in layer_types
  // The linear layers' widths per head: q and k as projected (GLA's gates too; feature_dim under an expanded
  // map; head_k_dim under gdn), and v, o (d; head_v_dim under gdn). Their state is linear_state_rows() x (the
  // value width, + 1 with an expanded map's normalizer). Values have linear_value_heads() heads (gdn: HV).
  int linear_key_width() const;
  int linear_value_width() const;
  int linear_value_heads() const;
  int linear_state_rows() const;  // the key width, or an expanded map's D' features
  // The widths per token (heads x width) of layer l's attention tensors: queries, keys, values and the output
  // o_proj reads. Linear: H dk, H dk, HV dv, HV dv; softmax: H d, H_kv d, H_kv d, H d.
  struct AttentionWidths {
    int q, k, v, o;
  };
  AttentionWidths attention_widths(int l) const;
  int widest_attention() const;  // the largest of every layer's four widths

  // Throws lasp::Error "config: <key> = <value>: <what is allowed>" on the first inconsistency.
  void validate() const;

  // Exactly the keys of MODEL.md, with "model_type": "linear_llama3". Floats are written by their shortest
  // decimal form (1e-5f -> 1e-05, not 9.99999974737875e-06).
  nlohmann::json to_json() const;

  // Missing keys take the defaults above, unknown keys are ignored (Hugging Face style); a key of the wrong
  // JSON type throws naming the key and the expected type. "model_type", if present, must be
  // "linear_llama3"; "head_dim", if present, must equal hidden_size / num_attention_heads. Then validate().
  static ModelConfig from_json(const nlohmann::json& j);

  // Reads and parses path (errors name the file and the parse error), then from_json.
  static ModelConfig load(const std::string& path);

  // Pretty JSON (2-space indent, trailing newline), written atomically.
  void save(const std::string& path) const;
};

}  // namespace lasp
