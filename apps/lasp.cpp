// lasp: one binary, subcommands. Errors print "lasp: error: ..." and exit non-zero.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>

#include "bench_kernels.h"
#include "bench_project.h"
#include "bench_sp.h"
#include "bench_train.h"
#include "comm/comm.h"
#include "core/check.h"
#include "core/memory.h"
#include "kernels/gemm.h"
#include "model/config.h"
#include "generate/decoder.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "train/plot.h"
#include "sp/grid.h"
#include "sp/methods.h"
#include "train/trainer.h"

namespace {

// Range checks whose errors read "--seq-len: must be >= 1, got 0" (CLI11's own print the double range in
// full) and that refuse NaN and infinities.
CLI::Validator number_check(double lo, bool open, double hi = INFINITY) {
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
const CLI::Validator kPositive = number_check(0, true), kNonNegative = number_check(0, false);
const CLI::Validator kAtLeastOne = number_check(1, false);

std::vector<std::string> sp_method_list() {
  std::vector<std::string> names;
  for (const lasp::SpMethod& m : lasp::sp_methods()) names.push_back(m.name);
  return names;
}

// --sp-method's help: every method with what its linear and softmax layers do.
std::string sp_method_help() {
  std::string help = "sequence-parallel method:";
  for (const lasp::SpMethod& m : lasp::sp_methods())
    help += "\n  " + m.name + ": linear layers " + m.linear + "; softmax layers " + m.softmax;
  return help;
}

// Model flags: each overrides the config file (or the default small hybrid) when given.
struct ModelFlags {
  std::string config_path, feature_map, decay;
  std::optional<std::string> layer_types;
  std::optional<int> layers, hidden, heads, kv_heads, ffn, vocab;
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
    app->add_option("--feature-map", feature_map, "silu | elu1 | relu | identity (default silu)");
    app->add_option("--decay", decay, "none | lightning | retention (default none)");
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
  lasp::ModelConfig for_resume(const std::string& checkpoint) const {
    LASP_CHECK(config_path.empty(), "--resume {}: the model is the checkpoint's; --config {} cannot change it",
               checkpoint, config_path);
    const lasp::ModelConfig saved = lasp::load_checkpoint_config(checkpoint);
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
    if (!feature_map.empty()) c.linear.feature_map = lasp::feature_map_from_string(feature_map);
    if (!decay.empty()) c.linear.decay = lasp::decay_from_string(decay);
    if (no_output_norm) c.linear.output_norm = false;
    if (no_output_gate) c.linear.output_gate = false;
    if (tie) c.tie_word_embeddings = true;
    c.validate();
    return c;
  }
};

void print_kernel_bench_text(const nlohmann::ordered_json& r) {
  std::printf("FP32 FMA peak: %.1f GFLOP/s (1 thread), %.1f GFLOP/s (%d threads)\n",
              r["peak_fp32_gflops"]["1"].get<double>(), r["peak_fp32_gflops"]["all"].get<double>(),
              r["config"]["threads_all"].get<int>());
  for (const char* kernel : {"linear_attention", "softmax_attention"})
    for (const char* t : {"1", "all"})
      std::printf("%-18s %-3s threads: %8.1f GFLOP/s  %10.0f tokens/s\n", kernel, t,
                  r[kernel][t]["gflops"].get<double>(), r[kernel][t]["tokens_per_s"].get<double>());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lasp: linear-attention and hybrid language models on long sequences, sequence-parallel (LASP-2)"};
  app.require_subcommand(1);
  app.get_formatter()->column_width(34);
  int threads = 0;
  app.add_option("--threads", threads, "OpenMP threads (0 = every core)")->default_val(0)->check(kNonNegative);
  bool verbose = false;
  app.add_flag("--verbose", verbose, "errors also say where in lasp's source they were raised");

  auto* info = app.add_subcommand("info", "version, BLAS, threads");

  // train
  auto* train_cmd = app.add_subcommand("train", "train a model on text, llm.c token shards or the synthetic recall task");
  ModelFlags train_model;
  train_model.add(train_cmd);
  lasp::TrainOptions topt;
  std::string on_save_error = "stop";
  train_cmd->add_option("--data", topt.data_path,
                        "byte-level text file, llm.c token shards (a path or a glob), or synthetic[:pairs=P,tokens=T,seed=S]")
      ->required();
  train_cmd->add_option("--seq-len", topt.seq_len, "tokens per sequence")->default_val(topt.seq_len)->check(kAtLeastOne);
  train_cmd->add_option("--batch", topt.batch, "sequences per step")->default_val(topt.batch)->check(kAtLeastOne);
  train_cmd->add_option("--steps", topt.steps, "optimizer steps")->default_val(topt.steps)->check(kAtLeastOne);
  train_cmd->add_option("--lr", topt.lr, "peak learning rate")->default_val(topt.lr)->check(kPositive);
  train_cmd->add_option("--min-lr", topt.min_lr, "learning rate at the end of the cosine (default lr/10)")->check(kNonNegative);
  train_cmd->add_option("--warmup", topt.warmup, "warmup steps (default steps/10)")->check(kNonNegative);
  train_cmd->add_option("--seed", topt.seed, "seed of the weights and the data order")->default_val(topt.seed);
  train_cmd->add_option("--save", topt.save_dir, "write a checkpoint folder at the end (replaces only a previous checkpoint)");
  train_cmd->add_option("--on-save-error", on_save_error, "a periodic save that fails: stop (the previous checkpoint stays) "
                        "or continue training")->default_val(on_save_error)->check(CLI::IsMember({"stop", "continue"}));
  train_cmd->add_option("--data-format", topt.data_format, "auto | text | shards (auto: shards when the file starts with "
                        "the shard magic)")->default_val(topt.data_format)->check(CLI::IsMember({"auto", "text", "shards"}));
  train_cmd->add_option("--metrics", topt.metrics_path, "append one JSON object per step to this file");
  train_cmd->add_option("--save-every", topt.save_every, "also save the checkpoint every so many steps (0: at the end only)")
      ->default_val(topt.save_every)->check(kNonNegative);
  train_cmd->add_option("--stop-at", topt.stop_at, "stop and save after this step (the schedule still spans --steps)")
      ->default_val(topt.stop_at)->check(kNonNegative);
  train_cmd->add_option("--resume", topt.resume_dir, "continue the run saved in this checkpoint (--steps is the total)");
  train_cmd->add_option("--val-fraction", topt.val_fraction, "the end of the data held out for validation")
      ->default_val(topt.val_fraction)->check(number_check(0, false, 0.9));
  train_cmd->add_option("--eval-every", topt.eval_every, "validation loss every so many steps and at the end (0: off)")
      ->default_val(topt.eval_every)->check(kNonNegative);
  train_cmd->add_option("--eval-batches", topt.eval_batches, "validation windows per DP rank")
      ->default_val(topt.eval_batches)->check(kAtLeastOne);
  train_cmd->add_option("--weight-decay", topt.adamw.weight_decay, "AdamW weight decay (matrices)")->default_val(topt.adamw.weight_decay)->check(kNonNegative);
  train_cmd->add_option("--grad-clip", topt.adamw.grad_clip, "max gradient norm (0: off)")->default_val(topt.adamw.grad_clip)->check(kNonNegative);
  train_cmd->add_option("--block", topt.block, "linear attention block size")->default_val(topt.block)->check(kAtLeastOne);
  train_cmd->add_flag("--recompute", topt.recompute, "recompute each layer in the backward (less memory)");
  auto add_parallel = [](CLI::App* cmd, lasp::ParallelOptions& p) {
    cmd->add_option("--sp-size", p.sp_size, "sequence-parallel ranks per sequence")->default_val(1)->check(kAtLeastOne);
    cmd->add_option("--dp-size", p.dp_size, "data-parallel groups")->default_val(1)->check(kAtLeastOne);
    cmd->add_option("--sp-layout", p.sp_layout, "contiguous | zigzag (default: zigzag when the model has a softmax layer)");
    cmd->add_option("--sp-method", p.sp_method, sp_method_help())->default_val(lasp::sp_methods().front().name)
        ->check(CLI::IsMember(sp_method_list()));
  };
  add_parallel(train_cmd, topt.parallel);

  // eval
  auto* eval_cmd = app.add_subcommand("eval", "mean next-token loss of a checkpoint on the start of a file");
  std::string eval_ckpt, eval_data;
  int eval_seq = 1024, eval_batches = 1;
  bool eval_json = false;
  eval_cmd->add_option("--checkpoint", eval_ckpt, "checkpoint folder")->required();
  eval_cmd->add_option("--data", eval_data, "text, token shards or synthetic[:...] (as for train)")->required();
  eval_cmd->add_option("--seq-len", eval_seq, "tokens per window")->default_val(eval_seq)->check(kAtLeastOne);
  eval_cmd->add_option("--batches", eval_batches, "windows to evaluate")->default_val(eval_batches)->check(kAtLeastOne);
  eval_cmd->add_flag("--json", eval_json, "print one JSON object");
  std::string eval_format = "auto";
  eval_cmd->add_option("--data-format", eval_format, "auto | text | shards")->default_val(eval_format)
      ->check(CLI::IsMember({"auto", "text", "shards"}));
  lasp::ParallelOptions eval_parallel;
  add_parallel(eval_cmd, eval_parallel);

  // generate
  auto* gen_cmd = app.add_subcommand("generate", "continue a prompt with a trained checkpoint (byte-level text)");
  std::string gen_ckpt, gen_prompt;
  int gen_tokens = 200, gen_top_k = 40;
  float gen_temperature = 0.8f;
  uint64_t gen_seed = 1;
  gen_cmd->add_option("--checkpoint", gen_ckpt, "checkpoint folder")->required();
  gen_cmd->add_option("--prompt", gen_prompt, "text to continue")->required();
  gen_cmd->add_option("--max-new-tokens", gen_tokens, "tokens to generate")->default_val(gen_tokens)->check(kAtLeastOne);
  gen_cmd->add_option("--temperature", gen_temperature, "sampling temperature (0: greedy)")->default_val(gen_temperature)->check(kNonNegative);
  gen_cmd->add_option("--top-k", gen_top_k, "sample among the k most likely tokens (0: all)")->default_val(gen_top_k)->check(kNonNegative);
  gen_cmd->add_option("--seed", gen_seed, "seed of the sampling")->default_val(gen_seed);
  lasp::ParallelOptions gen_parallel;
  gen_cmd->add_option("--sp-size", gen_parallel.sp_size, "ranks that prefill the prompt sequence-parallel (under mpirun)")
      ->default_val(1)->check(kAtLeastOne);
  gen_cmd->add_option("--sp-layout", gen_parallel.sp_layout, "contiguous | zigzag (default: zigzag when the model has a softmax layer)");

  // plot
  auto* plot_cmd = app.add_subcommand("plot", "loss curve of a --metrics file as a PNG");
  std::string plot_in, plot_out;
  plot_cmd->add_option("metrics", plot_in, "the JSON-lines file of lasp train --metrics")->required();
  plot_cmd->add_option("--out", plot_out, "PNG to write (default: the metrics file name with .png)");

  // bench
  auto* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  auto* bench_kernels_cmd = bench->add_subcommand("kernels", "attention kernels vs the FP32 FMA peak");
  lasp::KernelBenchOptions kopt;
  bool json = false, quick = false;
  bench_kernels_cmd->add_flag("--json", json, "print one JSON object");
  bench_kernels_cmd->add_flag("--quick", quick, "small sizes (N=1024, 1 repeat): a smoke test");
  bench_kernels_cmd->add_option("--seq-len", kopt.N, "sequence length N")->default_val(kopt.N)->check(kAtLeastOne);
  bench_kernels_cmd->add_option("--heads", kopt.H, "heads H")->default_val(kopt.H)->check(kAtLeastOne);
  bench_kernels_cmd->add_option("--head-dim", kopt.d, "head dim d")->default_val(kopt.d)->check(kAtLeastOne);
  bench_kernels_cmd->add_option("--block", kopt.linear_block, "linear attention block size")
      ->default_val(kopt.linear_block)->check(kAtLeastOne);
  bench_kernels_cmd->add_option("--repeats", kopt.repeats, "runs per measurement (median)")
      ->default_val(kopt.repeats)->check(kAtLeastOne);

  auto* bench_sp_cmd = bench->add_subcommand("sp", "every sequence-parallel method side by side, under the current mpirun");
  lasp::SpBenchOptions sopt;
  bench_sp_cmd->add_option("--methods", sopt.methods, "methods to run")->default_str(lasp::sp_method_names(" "))
      ->check(CLI::IsMember(sp_method_list()));
  bench_sp_cmd->add_option("--seq-lens", sopt.seq_lens, "sequence lengths")->default_str("4096 16384");
  bench_sp_cmd->add_option("--models", sopt.models, "layer patterns (pure linear, hybrid)")->default_str("LLLL LLLN");
  bench_sp_cmd->add_option("--repeats", sopt.repeats, "timed steps per case (median)")->default_val(sopt.repeats)->check(kAtLeastOne);
  bench_sp_cmd->add_option("--out", sopt.out_prefix, "prefix of the CSV, JSON and PNG files")->default_val(sopt.out_prefix);

  auto* bench_project_cmd = bench->add_subcommand("project", "alpha-beta projection of every SP method to 16-128 ranks");
  lasp::ProjectOptions popt;
  bench_project_cmd->add_option("--link-gbit", popt.link_gbit, "bandwidth between nodes per rank")->default_val(popt.link_gbit)->check(kPositive);
  bench_project_cmd->add_option("--intra-gbit", popt.intra_gbit, "bandwidth inside a node")->default_val(popt.intra_gbit)->check(kPositive);
  bench_project_cmd->add_option("--latency-us", popt.latency_us, "latency per message between nodes")->default_val(popt.latency_us)->check(kNonNegative);
  bench_project_cmd->add_option("--ranks-per-node", popt.ranks_per_node, "ranks per node")->default_val(popt.ranks_per_node)->check(kAtLeastOne);
  bench_project_cmd->add_option("--accelerator-speedup", popt.accelerator_speedup,
                                "second projection with compute this much faster than measured here")
      ->default_val(popt.accelerator_speedup)->check(kPositive);

  auto* bench_train_cmd = bench->add_subcommand("train", "training tokens/s of a model (default: the small hybrid)");
  ModelFlags bench_model;
  bench_model.add(bench_train_cmd);
  lasp::TrainBenchOptions bopt;
  bool bench_train_json = false;
  bench_train_cmd->add_option("--seq-len", bopt.seq_len, "tokens per sequence")->default_val(bopt.seq_len)->check(kAtLeastOne);
  bench_train_cmd->add_option("--batch", bopt.batch, "sequences per step")->default_val(bopt.batch)->check(kAtLeastOne);
  bench_train_cmd->add_option("--steps", bopt.steps, "timed steps (median)")->default_val(bopt.steps)->check(kAtLeastOne);
  bench_train_cmd->add_flag("--compare-pytorch", bopt.compare_pytorch, "also time the same step in PyTorch (tools/reference.py)");
  bench_train_cmd->add_option("--reference", bopt.reference_script, "path of tools/reference.py")->default_val(bopt.reference_script);
  bench_train_cmd->add_flag("--json", bench_train_json, "print one JSON object");

  CLI11_PARSE(app, argc, argv);
  lasp::Comm* world = nullptr;  // MPI starts only for the commands that use it
  try {
    if (threads > 0) omp_set_num_threads(threads);
    if (*info) {
      __builtin_cpu_init();
      std::string features;
      auto feature = [&](bool has, const char* name) {
        if (has) features += std::string(features.empty() ? "" : " ") + name;
      };
      feature(__builtin_cpu_supports("avx2"), "avx2");
      feature(__builtin_cpu_supports("fma"), "fma");
      feature(__builtin_cpu_supports("avx512f"), "avx512f");
      feature(__builtin_cpu_supports("avx512bw"), "avx512bw");
      feature(__builtin_cpu_supports("avx512vl"), "avx512vl");
      feature(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
      std::printf("lasp %s\nBLAS: %s\nMPI: %s\nCPU features: %s\nbuilt for: %s\nthreads: %d of %d cores\n",
                  LASP_VERSION, lasp::blas_config(), lasp::mpi_library_version().c_str(), features.c_str(),
#if defined(__AVX512F__)
                  "AVX-512 (small-block GEMM kernel on)",
#elif defined(__AVX2__)
                  "AVX2 (small blocks use oneDNN)",
#else
                  "generic x86-64",
#endif
                  omp_get_max_threads(), omp_get_num_procs());
      std::printf("sequence-parallel methods (--sp-method):\n");
      for (const lasp::SpMethod& m : lasp::sp_methods())
        std::printf("  %-12s linear layers: %s\n  %-12s softmax layers: %s\n", m.name.c_str(), m.linear.c_str(), "",
                    m.softmax.c_str());
    } else if (*train_cmd) {
      world = &lasp::comm_world();
      topt.continue_on_save_error = on_save_error == "continue";
      lasp::train(topt.resume_dir.empty() ? train_model.build() : train_model.for_resume(topt.resume_dir), topt, *world);
    } else if (*eval_cmd) {
      world = &lasp::comm_world();
      const lasp::EvalResult r =
          lasp::evaluate_checkpoint(eval_ckpt, eval_data, eval_seq, eval_batches, *world, eval_parallel, lasp::kLinearBlock, eval_format);
      if (world->rank() == 0) {
        nlohmann::ordered_json j{{"loss", r.loss}, {"tokens", r.tokens}, {"attention_bytes", r.attention_bytes}};
        if (r.recall_accuracy >= 0) j["recall_accuracy"] = r.recall_accuracy;
        if (eval_json)
          std::cout << j.dump() << std::endl;
        else
          std::printf("loss %.6f over %lld tokens (%.2f MB of attention traffic on rank 0)\n", r.loss,
                      (long long)r.tokens, r.attention_bytes / 1e6);
      }
    } else if (*gen_cmd) {
      if (gen_parallel.sp_size > 1) world = &lasp::comm_world();  // before anything can fail on one rank only
      const lasp::ModelConfig config = lasp::load_checkpoint_config(gen_ckpt);
      const lasp::ParamLayout layout(config);
      lasp::check_fits_in_memory(4.0 * double(layout.total()), "the checkpoint's weights");
      std::vector<float> params(layout.total());
      lasp::load_checkpoint_weights(gen_ckpt, layout, params);
      std::vector<int> prompt;
      for (unsigned char ch : gen_prompt) {
        LASP_CHECK(ch < config.vocab_size, "generate: prompt byte {} is outside the model's vocabulary of {}", int(ch),
                   config.vocab_size);
        prompt.push_back(ch);
      }
      lasp::Comm* sp = nullptr;
      if (gen_parallel.sp_size > 1) {
        LASP_CHECK(world->size() == gen_parallel.sp_size, "generate: --sp-size {} must equal the number of ranks, {}",
                   gen_parallel.sp_size, world->size());
        sp = world;
      }
      const lasp::SpLayout sp_layout = lasp::sp_method_layout("", gen_parallel.sp_layout, config, gen_parallel.sp_size);
      LASP_CHECK(int64_t(prompt.size()) + gen_tokens <= INT_MAX, "generate: the prompt ({} tokens) + --max-new-tokens "
                 "{} must be at most {} tokens", prompt.size(), gen_tokens, INT_MAX);
      lasp::Decoder decoder(config, params, int(prompt.size()) + gen_tokens);
      std::vector<float> logits = sp ? lasp::prefill_sequence_parallel(decoder, config, prompt, *sp, sp_layout)
                                     : decoder.prefill(prompt);
      const bool print = !sp || sp->rank() == 0;  // every rank decodes the same tokens; rank 0 prints them
      if (print) std::fwrite(gen_prompt.data(), 1, gen_prompt.size(), stdout);
      uint64_t rng = gen_seed;
      for (int i = 0; i < gen_tokens; ++i) {
        const int next = lasp::sample_token(logits, gen_temperature, gen_top_k, rng);
        if (print) std::fputc(next < 256 ? next : '?', stdout), std::fflush(stdout);
        if (i + 1 < gen_tokens) logits = decoder.step(next);
      }
      if (print) std::fputc('\n', stdout);
    } else if (*plot_cmd) {
      if (plot_out.empty()) plot_out = plot_in.substr(0, plot_in.rfind('.')) + ".png";
      lasp::plot_metrics(plot_in, plot_out);
      std::printf("wrote %s\n", plot_out.c_str());
    } else if (*bench_kernels_cmd) {
      if (quick) kopt.N = 1024, kopt.repeats = 1;
      kopt.threads = threads;
      const nlohmann::ordered_json r = lasp::bench_kernels(kopt);
      if (json) std::cout << r.dump() << std::endl;
      else print_kernel_bench_text(r);
    } else if (*bench_project_cmd) {
      lasp::bench_project(popt);
    } else if (*bench_sp_cmd) {
      world = &lasp::comm_world();
      lasp::bench_sp(sopt, *world);
    } else if (*bench_train_cmd) {
      const nlohmann::ordered_json r = lasp::bench_train(bench_model.build(), bopt);
      std::cout << (bench_train_json ? r.dump() : r.dump(2)) << std::endl;
    }
  } catch (const std::exception& e) {
    std::string message = e.what();
    if (dynamic_cast<const std::bad_alloc*>(&e)) message = "out of memory (std::bad_alloc): the sizes asked for need more memory than this machine can give";
    const auto* error = dynamic_cast<const lasp::Error*>(&e);
    if (verbose && error && !error->where.empty()) message += " [raised at " + error->where + "]";
    // Under mpirun one failing rank ends every rank (MPI_Abort), so that none waits forever.
    if (world && world->size() > 1) world->abort("error: " + message);
    std::fprintf(stderr, "lasp: error: %s\n", message.c_str());
    return 1;
  }
  return 0;
}
