#include "model/params.h"

#include <fmt/ranges.h>

#include "core/check.h"
#include "core/parse.h"

namespace lasp {

ParamLayout::ParamLayout(const ModelConfig& c) : config_(c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  add("model.embed_tokens.weight", {V, D});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const bool linear = c.layer_types[i] == 'L';
    const ModelConfig::AttentionWidths e = c.attention_widths(i);
    add(p + "input_layernorm.weight", {D});
    add(p + "self_attn.q_proj.weight", {e.q, D});
    add(p + "self_attn.k_proj.weight", {e.k, D});
    add(p + "self_attn.v_proj.weight", {e.v, D});
    add(p + "self_attn.o_proj.weight", {D, e.o});
    if (linear && c.linear.output_gate) add(p + "self_attn.g_proj.weight", {e.o, D});
    if (linear && c.linear.output_norm) add(p + "self_attn.o_norm.weight", {c.linear_value_width()});
    if (linear && c.linear.decay == Decay::gla) {  // GATES.md: the low-rank gate projection, a gate per key dim
      add(p + "self_attn.gk_proj.0.weight", {c.linear.gate_low_rank, D});
      add(p + "self_attn.gk_proj.1.weight", {e.k, c.linear.gate_low_rank});
      add(p + "self_attn.gk_proj.1.bias", {e.k});
    }
    if (linear && c.linear.expanded == ExpandedKind::rebased) {  // FEATURE_MAPS.md: FLA's names
      add(p + "self_attn.feature_map.gamma", {c.linear_key_width()});
      add(p + "self_attn.feature_map.beta", {c.linear_key_width()}, ParamInit::zero);
    }
    if (linear && c.linear.decay == Decay::gdn) {  // DELTA.md: FLA's names
      const int64_t HV = c.linear_value_heads(), K = c.linear.conv_size;
      add(p + "self_attn.a_proj.weight", {HV, D});
      add(p + "self_attn.b_proj.weight", {HV, D});
      add(p + "self_attn.A_log", {HV}, ParamInit::gdn_a_log);
      add(p + "self_attn.dt_bias", {HV}, ParamInit::gdn_dt_bias);
      if (K > 0) {
        add(p + "self_attn.q_conv1d.weight", {e.q, 1, K}, ParamInit::normal);
        add(p + "self_attn.k_conv1d.weight", {e.k, 1, K}, ParamInit::normal);
        add(p + "self_attn.v_conv1d.weight", {e.v, 1, K}, ParamInit::normal);
      }
    }
    add(p + "post_attention_layernorm.weight", {D});
    add(p + "mlp.gate_proj.weight", {F, D});
    add(p + "mlp.up_proj.weight", {F, D});
    add(p + "mlp.down_proj.weight", {D, F});
  }
  add("model.norm.weight", {D});
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, D});
}

void ParamLayout::add(const std::string& name, std::vector<int64_t> shape, std::optional<ParamInit> init) {
  TensorSpec s;
  s.name = name;
  s.size = size_t(checked_product(shape, "parameter " + name));
  s.init = init.value_or(shape.size() == 2 ? ParamInit::normal : ParamInit::one);
  s.matrix = s.init == ParamInit::normal;
  s.shape = std::move(shape);
  s.offset = total_;
  // Each tensor starts on a cache line. Sizes that wrap 64 bits are refused (a config can ask for them).
  LASP_CHECK(!__builtin_add_overflow(total_, (s.size + 15) / 16 * 16, &total_),
             "the model's parameter count does not fit in 64 bits (at {} of shape [{}])", name,
             fmt::join(s.shape, ", "));
  specs_.push_back(std::move(s));
}

const TensorSpec& ParamLayout::find(const std::string& name) const {
  for (const TensorSpec& s : specs_)
    if (s.name == name) return s;
  throw Error("no parameter named '" + name + "' in this model");
}

Weights ParamLayout::bind(float* base) const {
  auto at = [&](const std::string& name) { return base + find(name).offset; };
  auto maybe = [&](const std::string& name) -> float* {
    for (const TensorSpec& s : specs_)
      if (s.name == name) return base + s.offset;
    return nullptr;
  };
  Weights w;
  w.embed = at("model.embed_tokens.weight");
  for (int i = 0; i < config_.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.input_norm = at(p + "input_layernorm.weight");
    l.wq = at(p + "self_attn.q_proj.weight");
    l.wk = at(p + "self_attn.k_proj.weight");
    l.wv = at(p + "self_attn.v_proj.weight");
    l.wo = at(p + "self_attn.o_proj.weight");
    l.wg = maybe(p + "self_attn.g_proj.weight");
    l.o_norm = maybe(p + "self_attn.o_norm.weight");
    l.wgk1 = maybe(p + "self_attn.gk_proj.0.weight");
    l.wgk2 = maybe(p + "self_attn.gk_proj.1.weight");
    l.bgk = maybe(p + "self_attn.gk_proj.1.bias");
    l.fm_gamma = maybe(p + "self_attn.feature_map.gamma");
    l.fm_beta = maybe(p + "self_attn.feature_map.beta");
    l.wa = maybe(p + "self_attn.a_proj.weight");
    l.wb = maybe(p + "self_attn.b_proj.weight");
    l.a_log = maybe(p + "self_attn.A_log");
    l.dt_bias = maybe(p + "self_attn.dt_bias");
    l.q_conv = maybe(p + "self_attn.q_conv1d.weight");
    l.k_conv = maybe(p + "self_attn.k_conv1d.weight");
    l.v_conv = maybe(p + "self_attn.v_conv1d.weight");
    l.post_norm = at(p + "post_attention_layernorm.weight");
    l.w_gate = at(p + "mlp.gate_proj.weight");
    l.w_up = at(p + "mlp.up_proj.weight");
    l.w_down = at(p + "mlp.down_proj.weight");
    w.layers.push_back(l);
  }
  w.final_norm = at("model.norm.weight");
  w.lm_head = config_.tie_word_embeddings ? w.embed : at("lm_head.weight");
  return w;
}

}  // namespace lasp
