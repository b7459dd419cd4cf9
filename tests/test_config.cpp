// ModelConfig: defaults are MODEL.md's example, save/load round trip, and every invalid value is refused with a
// message that names the key.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/check.h"
#include "core/file.h"
#include "model/config.h"
#include "model/params.h"
#include "testing.h"

namespace {

using lasp::ModelConfig;
using nlohmann::json;

// The config.json example of design/MODEL.md, verbatim.
const char* kModelMdExample = R"({"model_type": "linear_llama3", "vocab_size": 256, "hidden_size": 256, "intermediate_size": 768,
     "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "layer_types": "LLLN",
     "linear_attention": {"feature_map": "silu", "decay": "none", "output_norm": true, "output_gate": true},
     "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false})";

using lasp::testing::TempDir;

// The message of the lasp::Error that from_json throws on j, or "" if none is thrown.
std::string error_of(const json& j) {
  try {
    ModelConfig::from_json(j);
  } catch (const lasp::Error& e) {
    return e.what();
  }
  return "";
}

json with(const std::string& key, const json& value) {
  json j = json::parse(kModelMdExample);
  j[key] = value;
  return j;
}

json with_linear(const std::string& key, const json& value) {
  json j = json::parse(kModelMdExample);
  j["linear_attention"][key] = value;
  return j;
}

#define EXPECT_REFUSED(j, key)                                             \
  do {                                                                     \
    std::string msg_ = error_of(j);                                        \
    EXPECT_NE(msg_, "") << "accepted: " << (j).dump();                     \
    EXPECT_NE(msg_.find(key), std::string::npos) << "message: " << msg_;  \
  } while (0)

TEST(ModelConfig, DefaultIsModelMdExample) {
  ModelConfig c;
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.to_json(), json::parse(kModelMdExample)) << c.to_json().dump();
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_TRUE(c.has_softmax_layer());
  // And parsing the example gives the defaults back.
  EXPECT_EQ(ModelConfig::from_json(json::parse(kModelMdExample)).to_json(), c.to_json());
}

TEST(ModelConfig, MissingKeysTakeDefaultsAndUnknownKeysAreIgnored) {
  EXPECT_EQ(ModelConfig::from_json(json::object()).to_json(), ModelConfig().to_json());
  json j = json::parse(kModelMdExample);
  j["architectures"] = {"LlamaForCausalLM"};
  j["torch_dtype"] = "float32";
  j["linear_attention"]["something_new"] = 3;
  j["head_dim"] = 64;
  EXPECT_EQ(ModelConfig::from_json(j).to_json(), ModelConfig().to_json());
  ModelConfig c = ModelConfig::from_json(json{{"hidden_size", 128}, {"linear_attention", {{"decay", "retention"}}}});
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.linear.decay, lasp::Decay::retention);
  EXPECT_EQ(c.linear.feature_map, lasp::FeatureMap::silu);
  EXPECT_EQ(c.layer_types, "LLLN");
}

TEST(ModelConfig, SaveLoadRoundTrip) {
  TempDir dir;
  ModelConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 96;
  c.intermediate_size = 200;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.layer_types = "LNLLNL";
  c.linear = {lasp::FeatureMap::elu1, lasp::Decay::lightning, false, true};
  c.rms_norm_eps = 1e-6f;
  c.rope_theta = 10000.f;
  c.tie_word_embeddings = true;
  c.save(dir.file("config.json"));
  EXPECT_NE(access(dir.file("config.json").c_str(), F_OK), -1);
  EXPECT_EQ(access((dir.file("config.json") + ".tmp." + std::to_string(getpid())).c_str(), F_OK), -1);
  ModelConfig d = ModelConfig::load(dir.file("config.json"));
  EXPECT_EQ(d.to_json(), c.to_json());
  EXPECT_EQ(d.rms_norm_eps, 1e-6f);
  EXPECT_EQ(d.rope_theta, 10000.f);
  EXPECT_EQ(d.linear.feature_map, lasp::FeatureMap::elu1);
  EXPECT_EQ(d.linear.decay, lasp::Decay::lightning);
  EXPECT_FALSE(d.linear.output_norm);
  EXPECT_TRUE(d.linear.output_gate);
  EXPECT_TRUE(d.tie_word_embeddings);
  // Floats are written by their shortest form.
  std::string text = lasp::read_file(dir.file("config.json"));
  EXPECT_NE(text.find("1e-06"), std::string::npos) << text;
  // Every feature map and decay survives the trip.
  for (auto fm : {lasp::FeatureMap::silu, lasp::FeatureMap::elu1, lasp::FeatureMap::relu, lasp::FeatureMap::identity})
    for (auto dc : {lasp::Decay::none, lasp::Decay::lightning, lasp::Decay::retention}) {
      ModelConfig e;
      e.linear.feature_map = fm;
      e.linear.decay = dc;
      ModelConfig f = ModelConfig::from_json(json::parse(e.to_json().dump()));
      EXPECT_EQ(f.linear.feature_map, fm);
      EXPECT_EQ(f.linear.decay, dc);
    }
}

TEST(ModelConfig, InvalidValuesNameTheKey) {
  EXPECT_REFUSED(with("layer_types", "LLXN"), "layer_types");
  EXPECT_NE(error_of(with("layer_types", "LLXN")).find("\"LLXN\""), std::string::npos);
  EXPECT_REFUSED(with("layer_types", "LLL"), "layer_types");
  EXPECT_REFUSED(with("layer_types", "LLLNN"), "layer_types");
  EXPECT_REFUSED(with("layer_types", "llln"), "layer_types");
  EXPECT_REFUSED(with("layer_types", ""), "layer_types");
  EXPECT_REFUSED(with("num_hidden_layers", 3), "layer_types");
  EXPECT_REFUSED(with("num_attention_heads", 3), "num_attention_heads");        // 256 % 3
  EXPECT_REFUSED(with("num_key_value_heads", 3), "num_key_value_heads");        // 4 % 3
  EXPECT_REFUSED(with("num_key_value_heads", 8), "num_key_value_heads");        // 4 % 8
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads"}) {
    EXPECT_REFUSED(with(key, 0), key);
    EXPECT_REFUSED(with(key, -4), key);
  }
  EXPECT_REFUSED(with("rms_norm_eps", 0.0), "rms_norm_eps");
  EXPECT_REFUSED(with("rms_norm_eps", -1e-5), "rms_norm_eps");
  EXPECT_REFUSED(with("rope_theta", 0), "rope_theta");
  EXPECT_REFUSED(with("rope_theta", 1e300), "rope_theta");
  EXPECT_REFUSED(with_linear("feature_map", "gelu"), "linear_attention.feature_map");
  EXPECT_REFUSED(with_linear("decay", "exponential"), "linear_attention.decay");
  EXPECT_REFUSED(with("model_type", "llama"), "model_type");
  EXPECT_REFUSED(with("head_dim", 32), "head_dim");
  // Odd head dim: fine for pure linear, refused once there is a softmax layer (RoPE pairs dimensions).
  json odd = with("hidden_size", 60);  // 4 heads of 15
  odd["num_attention_heads"] = 4;
  odd["layer_types"] = "LLLL";
  EXPECT_EQ(error_of(odd), "");
  odd["layer_types"] = "LLLN";
  EXPECT_REFUSED(odd, "num_attention_heads");
  EXPECT_NE(error_of(odd).find("RoPE"), std::string::npos) << error_of(odd);
}

TEST(ModelConfig, WrongJsonTypesNameTheKeyAndType) {
  EXPECT_REFUSED(with("hidden_size", "big"), "hidden_size");
  EXPECT_NE(error_of(with("hidden_size", "big")).find("integer"), std::string::npos);
  EXPECT_REFUSED(with("hidden_size", 256.5), "hidden_size");
  EXPECT_REFUSED(with("vocab_size", 1e12), "vocab_size");
  EXPECT_REFUSED(with("vocab_size", 4294967296ll), "vocab_size");  // integer beyond int
  EXPECT_REFUSED(with("num_hidden_layers", true), "num_hidden_layers");
  EXPECT_REFUSED(with("layer_types", json::array({"L", "L", "L", "N"})), "layer_types");
  EXPECT_REFUSED(with("rms_norm_eps", "1e-5"), "rms_norm_eps");
  EXPECT_REFUSED(with("tie_word_embeddings", 0), "tie_word_embeddings");
  EXPECT_REFUSED(with("linear_attention", "silu"), "linear_attention");
  EXPECT_REFUSED(with_linear("feature_map", 1), "linear_attention.feature_map");
  EXPECT_REFUSED(with_linear("output_gate", "yes"), "linear_attention.output_gate");
  EXPECT_REFUSED(with_linear("output_norm", nullptr), "linear_attention.output_norm");
  EXPECT_REFUSED(with("model_type", 3), "model_type");
  EXPECT_NE(error_of(json::array()), "");
  EXPECT_NE(error_of(json("config")), "");
}

TEST(ModelConfig, ValidateCatchesDirectEdits) {
  ModelConfig c;
  c.layer_types = "LLXN";
  EXPECT_THROW(c.validate(), lasp::Error);
  c = ModelConfig();
  c.num_hidden_layers = 5;
  EXPECT_THROW(c.validate(), lasp::Error);
  c = ModelConfig();
  c.num_attention_heads = 0;
  EXPECT_THROW(c.validate(), lasp::Error);
  EXPECT_EQ(c.head_dim(), 0);
  TempDir dir;
  EXPECT_THROW(c.save(dir.file("config.json")), lasp::Error);
}

TEST(ModelConfig, LoadErrorsNameTheFile) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  try {
    ModelConfig::load(path);
    ADD_FAILURE() << "missing file accepted";
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  lasp::write_file_atomic(path, "{\"hidden_size\": 256,");
  try {
    ModelConfig::load(path);
    ADD_FAILURE() << "bad JSON accepted";
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("JSON"), std::string::npos) << e.what();
  }
  lasp::write_file_atomic(path, "{\"hidden_size\": \"big\"}");
  try {
    ModelConfig::load(path);
    ADD_FAILURE() << "bad type accepted";
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
  }
}

}  // namespace

// Based and Rebased (FEATURE_MAPS.md): their keys survive the trip, and what they cannot take is refused by key.
TEST(ModelConfig, ExpandedFeatureMaps) {
  for (const char* kind : {"based", "rebased"}) {
    ModelConfig c = ModelConfig::from_json(with_linear("feature_map", kind));
    ASSERT_TRUE(c.linear.expanded.has_value());
    EXPECT_EQ(c.linear_key_width(), c.head_dim());  // feature_dim absent: d
    json j = c.to_json();
    EXPECT_EQ(j["linear_attention"]["feature_map"], kind);
    EXPECT_EQ(j["linear_attention"]["feature_dim"], c.head_dim());
    EXPECT_EQ(j["linear_attention"]["normalizer_eps"].get<double>(), 1e-10);  // its shortest form
    json k = with_linear("feature_map", kind);
    k["linear_attention"]["feature_dim"] = 16;
    k["linear_attention"]["normalizer_eps"] = 1e-6;
    const ModelConfig d = ModelConfig::from_json(k);
    EXPECT_EQ(d.linear_key_width(), 16);
    EXPECT_EQ(d.linear_state_rows(), std::string(kind) == "based" ? 153 : 136);  // D' at f = 16
    EXPECT_EQ(ModelConfig::from_json(json::parse(d.to_json().dump())).to_json(), d.to_json());
    json lightning = with_linear("feature_map", kind);
    lightning["linear_attention"]["decay"] = "lightning";
    EXPECT_REFUSED(lightning, "linear_attention.decay");
    for (int bad : {0, -2}) {
      json f = with_linear("feature_map", kind);
      f["linear_attention"]["feature_dim"] = bad;
      EXPECT_REFUSED(f, "linear_attention.feature_dim");
    }
    json eps = with_linear("feature_map", kind);
    eps["linear_attention"]["normalizer_eps"] = -1;
    EXPECT_REFUSED(eps, "linear_attention.normalizer_eps");
  }
  json elementwise = with_linear("feature_map", "silu");
  elementwise["linear_attention"]["feature_dim"] = 7;
  EXPECT_REFUSED(elementwise, "linear_attention.feature_dim");
  elementwise["linear_attention"]["feature_dim"] = ModelConfig().head_dim();  // = d is what it is anyway
  EXPECT_EQ(error_of(elementwise), "");
  // rebased's LayerNorm: gamma and beta per layer, FLA's names; based has none
  json r = with_linear("feature_map", "rebased");
  r["linear_attention"]["feature_dim"] = 5;
  const lasp::ParamLayout layout(ModelConfig::from_json(r));
  EXPECT_EQ(layout.find("model.layers.0.self_attn.feature_map.gamma").shape, std::vector<int64_t>{5});
  EXPECT_EQ(layout.find("model.layers.0.self_attn.feature_map.beta").shape, std::vector<int64_t>{5});
  EXPECT_EQ(layout.find("model.layers.0.self_attn.q_proj.weight").shape,
            (std::vector<int64_t>{5 * ModelConfig().num_attention_heads, ModelConfig().hidden_size}));
}
