// The command line's shared parts: range checks with readable messages, the model flags (which override a
// config file or the default model, and must not contradict a checkpoint being resumed) and the SP flags.
#pragma once
#include <CLI/CLI.hpp>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/check.h"
#include "model/config.h"
#include "sp/methods.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace lasp_cli {

// Range checks whose errors read "--seq-len: must be >= 1, got 0" (CLI11's own print the double range in
// full) and that refuse NaN and infinities.
inline CLI::Validator number_check(double lo, bool open, double hi = INFINITY) {
  const std::string range = fmt::format("{} {}", open ? ">" : ">=", lo) +
                            (hi < INFINITY ? fmt::format(" and <= {}", hi) : std::string());
  return CLI::Validator(
      [lo, open, hi, range](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return "expected a number, got '" + text + "'";
        if (!std::isfinite(v) || (open ? !(v > lo) : !(v >= lo)) || v > hi)
          return fmt::format("must be a finite number {}, got {}", range, text);
        return {};
      },
      range);
}
inline const CLI::Validator kPositive = number_check(0, true), kNonNegative = number_check(0, false);
inline const CLI::Validator kAtLeastOne = number_check(1, false);

// Integers are written in decimal, whole (core/parse.h): CLI11 alone takes '' as "not given", 0x100 as hex,
// 010 as octal (8), ' 300' and '+3', and -1 for an unsigned value (a seed of 2^64 - 1). Leading zeros are
// dropped here, so that 010 is ten.
inline CLI::Validator decimal_integer(bool is_unsigned) {
  return CLI::Validator(
      [is_unsigned](std::string& text) -> std::string {
        const size_t sign = !is_unsigned && !text.empty() && text[0] == '-' ? 1 : 0;
        bool ok = text.size() > sign;
        for (size_t i = sign; i < text.size(); ++i) ok = ok && text[i] >= '0' && text[i] <= '9';
        if (!ok)
          return fmt::format("expected {} integer in decimal digits, got '{}'", is_unsigned ? "a non-negative" : "an",
                             text);
        const size_t zeros = std::min(text.find_first_not_of('0', sign), text.size() - 1) - sign;
        text.erase(sign, zeros);
        return {};
      },
      "");
}

// Puts decimal_integer on every integer option of app and its subcommands (once all are added).
inline void strict_integers(CLI::App* app) {
  for (CLI::Option* option : app->get_options()) {
    const std::string type = option->get_type_name();
    // transform: first, and allowed to change the text (check would run it on a copy)
    if (type.rfind("INT", 0) == 0) option->transform(decimal_integer(false));
    if (type.rfind("UINT", 0) == 0) option->transform(decimal_integer(true));
  }
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) strict_integers(sub);
}

inline std::vector<std::string> sp_method_list() {
  std::vector<std::string> names;
  for (const lasp::SpMethod& m : lasp::sp_methods()) names.push_back(m.name);
  return names;
}

// --sp-method's help: every method with what its linear and softmax layers do.
inline std::string sp_method_help() {
  std::string help = "sequence-parallel method:";
  for (const lasp::SpMethod& m : lasp::sp_methods())
    help += "\n  " + m.name + ": linear layers " + m.linear + "; softmax layers " + m.softmax;
  return help;
}

// Model flags: each overrides the config file (or the default small hybrid) when given.
struct ModelFlags {
  std::string config_path, feature_map, decay;
  std::optional<std::string> layer_types;
  std::optional<int> layers, hidden, heads, kv_heads, ffn, vocab, feature_dim, head_k_dim, head_v_dim, num_v_heads,
      conv_size;
  bool no_output_norm = false, no_output_gate = false, tie = false;

  void add(CLI::App* app) {
    app->add_option("--config", config_path, "config.json to start from (default: the small hybrid of MODEL.md)");
    app->add_option("--layer-types", layer_types, "one letter per layer: L linear, N softmax (default LLLN)");
    app->add_option("--layers", layers, "num_hidden_layers (default: the length of --layer-types)");
    app->add_option("--hidden", hidden, "hidden_size (default 256)");
    app->add_option("--heads", heads, "num_attention_heads (default 4)");
    app->add_option("--kv-heads", kv_heads, "num_key_value_heads (default 2)");
    app->add_option("--ffn", ffn, "intermediate_size (default 768)");
    app->add_option("--vocab", vocab, "vocab_size (default 256)");
    app->add_option("--feature-map", feature_map,
                    "silu | elu1 | relu | identity (element-wise), based | rebased (expanded rows, with a normalizer; "
                    "decay none) (default silu)");
    app->add_option("--feature-dim", feature_dim, "based | rebased: q and k values per head (default: the head dim)");
    app->add_option("--decay", decay, "none | lightning | retention | gla (GLA's per-token gates) | gdn (Gated "
                    "DeltaNet: the gated delta rule with short convolutions) (default none)");
    app->add_option("--head-k-dim", head_k_dim, "decay gdn: q and k values per head (default: the head dim)");
    app->add_option("--head-v-dim", head_v_dim, "decay gdn: v values per value head (default: the head dim)");
    app->add_option("--num-v-heads", num_v_heads, "decay gdn: value heads, a multiple of --heads (default: --heads)");
    app->add_option("--conv-size", conv_size, "decay gdn: the short convolutions' width (0: none; default 4)");
    app->add_flag("--no-output-norm", no_output_norm, "linear layers without the per-head output RMSNorm");
    app->add_flag("--no-output-gate", no_output_gate, "linear layers without the output gate");
    app->add_flag("--tie-embeddings", tie, "lm_head shares the embedding");
  }

  // The config file (or the default small hybrid) with the flags applied.
  lasp::ModelConfig build() const {
    return apply(config_path.empty() ? lasp::ModelConfig{} : lasp::ModelConfig::load(config_path));
  }

  // A resumed run's model is its checkpoint's: flags may repeat it, but one that contradicts it is an error
  // naming both values (it used to be ignored silently).
  lasp::ModelConfig for_resume(const lasp::OpenedCheckpoint& opened) const {
    const std::string& checkpoint = opened.path();
    LASP_CHECK(config_path.empty(), "--resume {}: the model is the checkpoint's; --config {} cannot change it",
               checkpoint, config_path);
    const lasp::ModelConfig saved = lasp::load_checkpoint_config(opened);
    const nlohmann::json a = saved.to_json(), b = apply(saved).to_json();
    for (const auto& [key, value] : b.items())
      LASP_CHECK(a.at(key) == value, "--resume {}: the model flags give {} = {}, but the checkpoint has {} = {}; "
                 "leave the model flags out to continue the saved model", checkpoint, key, value.dump(), key,
                 a.at(key).dump());
    return saved;
  }

  lasp::ModelConfig apply(lasp::ModelConfig c) const {
    if (layer_types) {
      LASP_CHECK(!layer_types->empty(), "--layer-types must hold one letter per layer (L linear, N softmax), got an "
                 "empty string");
      c.layer_types = *layer_types, c.num_hidden_layers = int(layer_types->size());
    }
    if (layers) c.num_hidden_layers = *layers;
    if (hidden) c.hidden_size = *hidden;
    if (heads) c.num_attention_heads = *heads;
    if (kv_heads) c.num_key_value_heads = *kv_heads;
    if (ffn) c.intermediate_size = *ffn;
    if (vocab) c.vocab_size = *vocab;
    LASP_CHECK(feature_map.empty() || c.linear.set_feature_map(feature_map),
               "--feature-map: expected one of silu, elu1, relu, identity, based, rebased, got '{}'", feature_map);
    if (feature_dim) c.linear.feature_dim = *feature_dim;
    if (!decay.empty()) c.linear.decay = lasp::decay_from_string(decay);
    if (head_k_dim) c.linear.head_k_dim = *head_k_dim;
    if (head_v_dim) c.linear.head_v_dim = *head_v_dim;
    if (num_v_heads) c.linear.num_v_heads = *num_v_heads;
    if (conv_size) c.linear.conv_size = *conv_size;
    if (no_output_norm) c.linear.output_norm = false;
    if (no_output_gate) c.linear.output_gate = false;
    if (tie) c.tie_word_embeddings = true;
    c.validate();
    return c;
  }
};

// --sp-size, --dp-size, --sp-layout, --sp-method.
inline void add_parallel_flags(CLI::App* cmd, lasp::ParallelOptions& p) {
  cmd->add_option("--sp-size", p.sp_size, "sequence-parallel ranks per sequence")->default_val(1)->check(kAtLeastOne);
  cmd->add_option("--dp-size", p.dp_size, "data-parallel groups")->default_val(1)->check(kAtLeastOne);
  cmd->add_option("--sp-layout", p.sp_layout, "contiguous | zigzag (default: the method's; zigzag when the model has a "
                  "softmax layer)")->check(CLI::IsMember({"contiguous", "zigzag"}));
  cmd->add_option("--sp-method", p.sp_method, sp_method_help())->default_val(lasp::sp_methods().front().name)
      ->check(CLI::IsMember(sp_method_list()));
  cmd->add_option("--scan-slices", p.scan_slices, "allscan: the slices (K) each state is cut into on its way from "
                  "rank to rank")->default_val(lasp::kAllScanSlices)->check(kAtLeastOne);
}

// --precision fp32|bf16 (train, eval, bench train, generate).
// --doc-start on train and eval (trainer.h document_start).
inline void add_doc_start_flag(CLI::App* cmd, std::optional<int>& doc_start) {
  cmd->add_option("--doc-start", doc_start, "the token that opens a document: attention never crosses documents "
                  "(default: the checkpoint's, else the BOS of the tokenizer beside token shards; -1: one stream)")
      ->check(number_check(-1, false));
}

// The names only (a CheckedTransformer into the enum also took its numbers: --precision 1 meant bf16).
inline void add_precision_flag(CLI::App* cmd, lasp::Precision& precision) {
  cmd->add_option_function<std::string>(
         "--precision",
         [&precision](const std::string& name) {
           precision = lasp::precision_from_string(name);
         },
         "fp32 | bf16: bf16 multiplies the projections' and the softmax attention's bf16 operands with fp32 "
         "accumulation (AMX or AVX-512-BF16); weights, gradients, norms, the linear attention and the loss stay fp32")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->default_str("fp32");
}

// --memory-limit, --recompute, --chunk (model/memory_plan.h).
inline void add_memory_flags(CLI::App* cmd, lasp::MemoryRequest& m) {
  cmd->add_option("--memory-limit", m.limit_gib, "GiB per rank that the memory plan must fit (default: 90% of this "
                  "node's available memory, shared by its ranks)")->check(number_check(0, true, 1 << 20));  // <= 1 PiB
  cmd->add_flag("--recompute", m.recompute, "keep each layer's input only and recompute the layer in the backward, "
                "whatever the plan would choose");
  add_precision_flag(cmd, m.precision);
  cmd->add_option("--chunk", m.chunk, "run the sequence in chunks of this many tokens, whatever the plan would choose: "
                  "through every layer on one SP rank, layer by layer across SP ranks (lasp2)")->check(kAtLeastOne);
}

}  // namespace lasp_cli
