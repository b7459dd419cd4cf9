#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "core/file.h"

namespace lasp {

using nlohmann::json;

std::string json_shown(const nlohmann::json& v) {
  if (v.is_structured()) return v.empty() ? v.dump() : fmt::format("(a JSON {} of {} items)", v.type_name(), v.size());
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

namespace {

[[noreturn]] void config_error(const std::string& key, const std::string& value, const std::string& allowed) {
  throw Error(fmt::format("config: {} = {}: {}", key, value, allowed));
}

std::string shown(const json& v) { return json_shown(v); }

std::string json_quoted(const std::string& s) { return shown(json(s)); }

// A float as JSON by its shortest decimal form, so that 1e-5f is written as 1e-05.
json float_json(float f) {
  if (!std::isfinite(f)) return json(double(f));  // dumps as null; validate() rejects these anyway
  return json(std::stod(fmt::format("{}", f)));
}

void get_int(const json& j, const char* key, const std::string& full_key, int& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  if (!it->is_number_integer()) config_error(full_key, shown(*it), "expected an integer");
  if (it->is_number_unsigned()) {
    auto v = it->get<uint64_t>();
    if (v > uint64_t(std::numeric_limits<int>::max())) config_error(full_key, shown(*it), "integer out of range");
    out = int(v);
  } else {
    auto v = it->get<int64_t>();
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
      config_error(full_key, shown(*it), "integer out of range");
    out = int(v);
  }
}

void get_float(const json& j, const char* key, const std::string& full_key, float& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  if (!it->is_number()) config_error(full_key, shown(*it), "expected a number");
  const double v = it->get<double>(), max = std::numeric_limits<float>::max();
  // What rounds to a finite float is in range: to_json writes FLT_MAX as 3.4028235e+38, a little above it.
  const double limit = max + std::ldexp(1.0, 103);  // FLT_MAX plus half its ulp: rounds to infinity
  if (!std::isfinite(v) || std::fabs(v) >= limit) config_error(full_key, shown(*it), "number out of the float range");
  out = std::fabs(v) > max ? float(std::copysign(max, v)) : float(v);
}

void get_bool(const json& j, const char* key, const std::string& full_key, bool& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  if (!it->is_boolean()) config_error(full_key, shown(*it), "expected true or false");
  out = it->get<bool>();
}

bool get_string(const json& j, const char* key, const std::string& full_key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end()) return false;
  if (!it->is_string()) config_error(full_key, shown(*it), "expected a string");
  out = it->get<std::string>();
  return true;
}

}  // namespace

int ModelConfig::head_dim() const { return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0; }

bool LinearAttentionConfig::set_feature_map(const std::string& name) {
  if (name == "based" || name == "rebased") {
    feature_map = FeatureMap::identity;  // q and k reach the row map as projected
    expanded = expanded_kind_from_string(name);
    return true;
  }
  for (FeatureMap f : {FeatureMap::silu, FeatureMap::elu1, FeatureMap::relu, FeatureMap::identity})
    if (name == to_string(f)) {
      feature_map = f;
      expanded.reset();
      return true;
    }
  return false;
}

int ModelConfig::linear_key_width() const {
  if (linear.decay == Decay::gdn && linear.head_k_dim > 0) return linear.head_k_dim;
  return linear.expanded && linear.feature_dim > 0 ? linear.feature_dim : head_dim();
}

int ModelConfig::linear_value_width() const {
  return linear.decay == Decay::gdn && linear.head_v_dim > 0 ? linear.head_v_dim : head_dim();
}

int ModelConfig::linear_value_heads() const {
  return linear.decay == Decay::gdn && linear.num_v_heads > 0 ? linear.num_v_heads : num_attention_heads;
}

int ModelConfig::linear_state_rows() const {
  return linear.expanded ? int(expanded_features(linear_key_width(), *linear.expanded)) : linear_key_width();
}

ModelConfig::AttentionWidths ModelConfig::attention_widths(int l) const {
  const int H = num_attention_heads, d = head_dim(), HV = linear_value_heads();
  if (layer_types.at(size_t(l)) == 'L')
    return {H * linear_key_width(), H * linear_key_width(), HV * linear_value_width(), HV * linear_value_width()};
  return {H * d, num_key_value_heads * d, num_key_value_heads * d, H * d};
}

int ModelConfig::widest_attention() const {
  // An expanded map's values and outputs carry the normalizer's column inside the layer: H (d + 1).
  int widest = linear.expanded ? num_attention_heads * (head_dim() + 1) : 0;
  for (int l = 0; l < int(layer_types.size()); ++l) {
    const AttentionWidths w = attention_widths(l);
    widest = std::max({widest, w.q, w.k, w.v, w.o});
  }
  return widest;
}

bool ModelConfig::has_softmax_layer() const { return layer_types.find('N') != std::string::npos; }

void ModelConfig::validate() const {
  auto positive = [](const char* key, int v) {
    if (v <= 0) config_error(key, std::to_string(v), "must be a positive integer");
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  if (layer_types.find_first_not_of("LN") != std::string::npos)
    config_error("layer_types", json_quoted(layer_types), "only 'L' (linear) and 'N' (softmax) are allowed");
  if (layer_types.size() != size_t(num_hidden_layers))
    config_error("layer_types", json_quoted(layer_types),
                 fmt::format("must have one letter per layer, num_hidden_layers = {}, found {} letters",
                             num_hidden_layers, layer_types.size()));
  if (hidden_size % num_attention_heads != 0)
    config_error("num_attention_heads", std::to_string(num_attention_heads),
                 fmt::format("must divide hidden_size = {}", hidden_size));
  if (num_attention_heads % num_key_value_heads != 0)
    config_error("num_key_value_heads", std::to_string(num_key_value_heads),
                 fmt::format("must divide num_attention_heads = {}", num_attention_heads));
  if (has_softmax_layer() && head_dim() % 2 != 0)
    config_error("num_attention_heads", std::to_string(num_attention_heads),
                 fmt::format("head dim hidden_size / num_attention_heads = {} / {} = {} must be even for RoPE in "
                             "the softmax ('N') layers of layer_types = {}",
                             hidden_size, num_attention_heads, head_dim(), json_quoted(layer_types)));
  if (!(rms_norm_eps > 0.f) || !std::isfinite(rms_norm_eps))
    config_error("rms_norm_eps", fmt::format("{}", rms_norm_eps), "must be a finite number > 0");
  if (!(rope_theta > 0.f) || !std::isfinite(rope_theta))
    config_error("rope_theta", fmt::format("{}", rope_theta), "must be a finite number > 0");
  auto fm = int(linear.feature_map);
  if (fm < int(FeatureMap::silu) || fm > int(FeatureMap::identity))
    config_error("linear_attention.feature_map", std::to_string(fm), "invalid FeatureMap value");
  auto dc = int(linear.decay);
  if (dc < int(Decay::none) || dc > int(Decay::gdn))
    config_error("linear_attention.decay", std::to_string(dc), "invalid Decay value");
  if (linear.gate_low_rank <= 0)
    config_error("linear_attention.gate_low_rank", std::to_string(linear.gate_low_rank), "must be a positive integer");
  if (!(linear.gate_normalizer > 0.f) || !std::isfinite(linear.gate_normalizer))
    config_error("linear_attention.gate_normalizer", fmt::format("{}", linear.gate_normalizer),
                 "must be a finite number > 0");
  if (linear.feature_dim < 0)
    config_error("linear_attention.feature_dim", std::to_string(linear.feature_dim), "must be a positive integer");
  if (!linear.expanded && linear.feature_dim != 0 && linear.feature_dim != head_dim())
    config_error("linear_attention.feature_dim", std::to_string(linear.feature_dim),
                 fmt::format("must equal the head dim {} with the element-wise feature_map {} (only based and "
                             "rebased project q and k to another width)",
                             head_dim(), json_quoted(to_string(linear.feature_map))));
  if (linear.expanded && linear.decay != Decay::none)
    config_error("linear_attention.decay", json_quoted(to_string(linear.decay)),
                 fmt::format("must be \"none\" with feature_map {}: none of its sources decays (FEATURE_MAPS.md)",
                             json_quoted(linear.feature_map_name())));
  if (!(linear.normalizer_eps >= 0.f) || !std::isfinite(linear.normalizer_eps))
    config_error("linear_attention.normalizer_eps", fmt::format("{}", linear.normalizer_eps),
                 "must be a finite number >= 0");
  const bool gdn = linear.decay == Decay::gdn;
  if (gdn && (linear.expanded || linear.feature_map != FeatureMap::silu))
    config_error("linear_attention.feature_map", json_quoted(linear.feature_map_name()),
                 "must be \"silu\" with decay \"gdn\": it names the activation after the short convolutions (DELTA.md)");
  for (auto [key, value] : {std::pair{"head_k_dim", linear.head_k_dim}, {"head_v_dim", linear.head_v_dim},
                            {"num_v_heads", linear.num_v_heads}, {"conv_size", linear.conv_size}}) {
    const std::string full = std::string("linear_attention.") + key;
    if (value < 0) config_error(full, std::to_string(value), "must be a non-negative integer");
    const int unset = full == "linear_attention.conv_size" ? 4 : 0;
    if (!gdn && value != unset)
      config_error(full, std::to_string(value), fmt::format("applies to decay \"gdn\" only (decay is {})",
                                                             json_quoted(to_string(linear.decay))));
  }
  if (gdn && linear_value_heads() % num_attention_heads != 0)
    config_error("linear_attention.num_v_heads", std::to_string(linear_value_heads()),
                 fmt::format("must be a multiple of num_attention_heads = {} (each q/k head serves as many value heads)",
                             num_attention_heads));
}

nlohmann::json ModelConfig::to_json() const {
  json j = json::object();
  j["model_type"] = "linear_llama3";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["layer_types"] = layer_types;
  j["linear_attention"] = {{"feature_map", linear.feature_map_name()},
                           {"decay", to_string(linear.decay)},
                           {"output_norm", linear.output_norm},
                           {"output_gate", linear.output_gate}};
  if (linear.decay == Decay::gla) {
    j["linear_attention"]["gate_low_rank"] = linear.gate_low_rank;
    j["linear_attention"]["gate_normalizer"] = float_json(linear.gate_normalizer);
  }
  if (linear.decay == Decay::gdn) {
    j["linear_attention"]["head_k_dim"] = linear_key_width();
    j["linear_attention"]["head_v_dim"] = linear_value_width();
    j["linear_attention"]["num_v_heads"] = linear_value_heads();
    j["linear_attention"]["conv_size"] = linear.conv_size;
  }
  if (linear.expanded) {
    j["linear_attention"]["feature_dim"] = linear_key_width();
    j["linear_attention"]["normalizer_eps"] = float_json(linear.normalizer_eps);
  }
  j["rms_norm_eps"] = float_json(rms_norm_eps);
  j["rope_theta"] = float_json(rope_theta);
  j["tie_word_embeddings"] = tie_word_embeddings;
  return j;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) config_error("(top level)", shown(j), "expected a JSON object");
  ModelConfig c;
  std::string model_type;
  if (get_string(j, "model_type", "model_type", model_type) && model_type != "linear_llama3")
    config_error("model_type", json_quoted(model_type), "only \"linear_llama3\" is allowed");
  get_int(j, "vocab_size", "vocab_size", c.vocab_size);
  get_int(j, "hidden_size", "hidden_size", c.hidden_size);
  get_int(j, "intermediate_size", "intermediate_size", c.intermediate_size);
  get_int(j, "num_hidden_layers", "num_hidden_layers", c.num_hidden_layers);
  get_int(j, "num_attention_heads", "num_attention_heads", c.num_attention_heads);
  get_int(j, "num_key_value_heads", "num_key_value_heads", c.num_key_value_heads);
  get_string(j, "layer_types", "layer_types", c.layer_types);
  get_float(j, "rms_norm_eps", "rms_norm_eps", c.rms_norm_eps);
  get_float(j, "rope_theta", "rope_theta", c.rope_theta);
  get_bool(j, "tie_word_embeddings", "tie_word_embeddings", c.tie_word_embeddings);
  if (auto it = j.find("linear_attention"); it != j.end()) {
    if (!it->is_object()) config_error("linear_attention", shown(*it), "expected a JSON object");
    std::string s;
    if (get_string(*it, "feature_map", "linear_attention.feature_map", s)) {
      if (!c.linear.set_feature_map(s))
        config_error("linear_attention.feature_map", json_quoted(s),
                     "one of \"silu\", \"elu1\", \"relu\", \"identity\", \"based\", \"rebased\"");
    }
    if (get_string(*it, "decay", "linear_attention.decay", s)) {
      if (s == "none") c.linear.decay = Decay::none;
      else if (s == "lightning") c.linear.decay = Decay::lightning;
      else if (s == "retention") c.linear.decay = Decay::retention;
      else if (s == "gla") c.linear.decay = Decay::gla;
      else if (s == "gdn") c.linear.decay = Decay::gdn;
      else config_error("linear_attention.decay", json_quoted(s),
                        "one of \"none\", \"lightning\", \"retention\", \"gla\", \"gdn\"");
    }
    get_bool(*it, "output_norm", "linear_attention.output_norm", c.linear.output_norm);
    get_bool(*it, "output_gate", "linear_attention.output_gate", c.linear.output_gate);
    get_int(*it, "gate_low_rank", "linear_attention.gate_low_rank", c.linear.gate_low_rank);
    get_float(*it, "gate_normalizer", "linear_attention.gate_normalizer", c.linear.gate_normalizer);
    get_int(*it, "feature_dim", "linear_attention.feature_dim", c.linear.feature_dim);
    if (it->contains("feature_dim") && c.linear.feature_dim <= 0)
      config_error("linear_attention.feature_dim", std::to_string(c.linear.feature_dim), "must be a positive integer");
    get_float(*it, "normalizer_eps", "linear_attention.normalizer_eps", c.linear.normalizer_eps);
    get_int(*it, "head_k_dim", "linear_attention.head_k_dim", c.linear.head_k_dim);
    get_int(*it, "head_v_dim", "linear_attention.head_v_dim", c.linear.head_v_dim);
    get_int(*it, "num_v_heads", "linear_attention.num_v_heads", c.linear.num_v_heads);
    get_int(*it, "conv_size", "linear_attention.conv_size", c.linear.conv_size);
    for (const char* key : {"head_k_dim", "head_v_dim", "num_v_heads"})
      if (it->contains(key) && it->at(key).is_number_integer() && it->at(key).get<int64_t>() <= 0)
        config_error(std::string("linear_attention.") + key, it->at(key).dump(), "must be a positive integer");
    if (it->contains("conv_size") && c.linear.decay != Decay::gdn)
      config_error("linear_attention.conv_size", it->at("conv_size").dump(), "applies to decay \"gdn\" only");
  }
  c.validate();
  if (auto it = j.find("head_dim"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() != c.head_dim())
      config_error("head_dim", shown(*it),
                   fmt::format("must equal hidden_size / num_attention_heads = {}", c.head_dim()));
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::string text = read_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("config {}: not valid JSON: {}", path, e.what()));
  }
  try {
    return from_json(j);
  } catch (const Error& e) {
    throw Error(fmt::format("{} (in {})", e.what(), path));
  }
}

void ModelConfig::save(const std::string& path) const {
  validate();
  write_file_atomic(path, to_json().dump(2) + "\n");
}

}  // namespace lasp
