// lasp: one binary, one small struct per subcommand (its flags and its run). Errors print
// "lasp: error: ..." and exit non-zero; under mpirun one failing rank ends every rank.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <climits>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include "bench_kernels.h"
#include "bench_project.h"
#include "bench_sp.h"
#include "bench_train.h"
#include "comm/comm.h"
#include "core/check.h"
#include "core/memory.h"
#include "flags.h"
#include "generate/decoder.h"
#include "kernels/bf16.h"
#include "kernels/gemm.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "train/plot.h"
#include "train/tokenizer.h"
#include "train/trainer.h"

namespace {

using namespace lasp_cli;

// MPI starts only for the commands that use it; the error path must know whether it did.
struct Session {
  lasp::Comm* world = nullptr;
  int threads = 0;
  lasp::Comm& start_world() {
    if (!world) world = &lasp::comm_world();
    return *world;
  }
};

struct Command {
  CLI::App* cmd = nullptr;
  virtual ~Command() = default;
  virtual void run(Session& session) = 0;
};

struct InfoCommand : Command {
  explicit InfoCommand(CLI::App& app) { cmd = app.add_subcommand("info", "version, BLAS, MPI, CPU, threads, SP methods"); }
  void run(Session&) override {
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
    std::printf("lasp %s\nBLAS: %s\nbf16 products: %s\nMPI: %s\nCPU features: %s\nbuilt for: %s\nthreads: %d of %d cores\n",
                LASP_VERSION, lasp::blas_config(), lasp::bf16_path(), lasp::mpi_library_version().c_str(), features.c_str(),
#if defined(__AVX512F__)
                "AVX-512 (small-block GEMM kernel on)",
#elif defined(__AVX2__)
                "AVX2 (small blocks use oneDNN)",
#else
                "generic x86-64",
#endif
                omp_get_max_threads(), omp_get_num_procs());
    std::printf("linear-attention kinds: feature maps silu, elu1, relu, identity (element-wise) and based, rebased "
                "(expanded rows with a normalizer, --feature-dim); decays none, lightning, retention, gla, gdn (Gated "
                "DeltaNet)\n");
    std::printf("sequence-parallel methods (--sp-method):\n");
    for (const lasp::SpMethod& m : lasp::sp_methods())
      std::printf("  %-12s linear layers: %s\n  %-12s softmax layers: %s\n  %-12s GLA's gates (decay gla): %s; "
                  "gdn: %s; based/rebased: %s; SP prefill: %s; layer-major chunks: %s\n", m.name.c_str(),
                  m.linear.c_str(), "", m.softmax.c_str(), "", m.runs(lasp::Transition::diagonal) ? "yes" : "no",
                  m.runs(lasp::Transition::full) ? "yes" : "no", m.expanded_maps ? "yes" : "no",
                  m.decoding ? "yes" : "no", m.layer_major() ? "yes" : "no");
  }
};

struct TrainCommand : Command {
  ModelFlags model;
  lasp::TrainOptions o;
  std::string on_save_error = "stop", save_dtype = "fp32";
  void follow_tokenizer();

  explicit TrainCommand(CLI::App& app) {
    cmd = app.add_subcommand("train", "train a model on text, llm.c token shards or the synthetic recall task");
    model.add(cmd);
    cmd->add_option("--data", o.data_path,
                    "byte-level text file, llm.c token shards (a path or a glob), or synthetic[:pairs=P,tokens=T,seed=S]")
        ->required();
    cmd->add_option("--data-format", o.data_format, "auto | text | shards (auto: shards when the file starts with the "
                    "shard magic)")->default_val(o.data_format)->check(CLI::IsMember({"auto", "text", "shards"}));
    cmd->add_option("--seq-len", o.seq_len, "tokens per sequence")->default_val(o.seq_len)->check(kAtLeastOne);
    cmd->add_option("--batch", o.batch, "sequences per step")->default_val(o.batch)->check(kAtLeastOne);
    cmd->add_option("--steps", o.steps, "optimizer steps")->default_val(o.steps)->check(kAtLeastOne);
    cmd->add_option("--lr", o.lr, "peak learning rate")->default_val(o.lr)->check(kPositive);
    cmd->add_option("--min-lr", o.min_lr, "learning rate at the end of the cosine (default lr/10)")->check(kNonNegative);
    cmd->add_option("--warmup", o.warmup, "warmup steps (default steps/10)")->check(kNonNegative);
    cmd->add_option("--seed", o.seed, "seed of the weights and the data order")->default_val(o.seed);
    cmd->add_option("--save", o.save_dir, "write a checkpoint folder at the end (replaces only a previous checkpoint)");
    cmd->add_option("--save-dtype", save_dtype, "fp32 | bf16: the dtype of model.safetensors (bf16: half the size, "
                    "rounded to nearest even; a resume stays exact, the optimizer file keeps the fp32 weights)")
        ->check(CLI::IsMember({"fp32", "bf16"}));
    cmd->add_option("--save-every", o.save_every, "also save the checkpoint every so many steps (0: at the end only)")
        ->default_val(o.save_every)->check(kNonNegative);
    cmd->add_option("--on-save-error", on_save_error, "a periodic save that fails: stop (the previous checkpoint stays) "
                    "or continue training")->default_val(on_save_error)->check(CLI::IsMember({"stop", "continue"}));
    cmd->add_option("--stop-at", o.stop_at, "stop and save after this step (the schedule still spans --steps)")
        ->default_val(o.stop_at)->check(kNonNegative);
    cmd->add_option("--resume", o.resume_dir, "continue the run saved in this checkpoint (--steps is the total)");
    cmd->add_flag("--new-data", o.new_data, "with --resume: train on --data other than the saved run's (its data "
                  "position is not restored; windows are drawn anew)");
    cmd->add_option("--metrics", o.metrics_path, "append one JSON object per step to this file");
    cmd->add_option("--val-fraction", o.val_fraction, "the end of the data held out for validation")
        ->default_val(o.val_fraction)->check(number_check(0, false, 0.9));
    cmd->add_option("--eval-every", o.eval_every, "validation loss every so many steps and at the end (0: off)")
        ->default_val(o.eval_every)->check(kNonNegative);
    cmd->add_option("--eval-batches", o.eval_batches, "validation windows per DP rank")
        ->default_val(o.eval_batches)->check(kAtLeastOne);
    cmd->add_option("--weight-decay", o.adamw.weight_decay, "AdamW weight decay (matrices)")
        ->default_val(o.adamw.weight_decay)->check(kNonNegative);
    cmd->add_option("--grad-clip", o.adamw.grad_clip, "max gradient norm (0: off)")
        ->default_val(o.adamw.grad_clip)->check(kNonNegative);
    cmd->add_option("--block", o.block, "linear attention block size")->default_val(o.block)->check(kAtLeastOne);
    add_doc_start_flag(cmd, o.doc_start);
    add_memory_flags(cmd, o.memory);
    add_parallel_flags(cmd, o.parallel);
  }
  void run(Session& session) override {
    o.continue_on_save_error = on_save_error == "continue";
    o.save_bf16 = save_dtype == "bf16";
    o.seed_given = cmd->count("--seed") > 0;
    follow_tokenizer();
    lasp::Comm& world = session.start_world();
    // A resume reads its checkpoint through one opened folder, from the model flags' check to the optimizer state.
    if (!o.resume_dir.empty()) o.resume_checkpoint = std::make_shared<const lasp::OpenedCheckpoint>(o.resume_dir);
    lasp::train(o.resume_dir.empty() ? model.build() : model.for_resume(*o.resume_checkpoint), o, world);
  }
};

// Token shards written by `lasp tokenize` sit beside their tokenizer.model: a new model takes its vocabulary.
void TrainCommand::follow_tokenizer() {
  const std::string path = lasp::tokenizer_beside(o.data_path);
  if (!o.resume_dir.empty() || path.empty()) return;
  const int vocab = lasp::Tokenizer::load(path).vocab_size();
  if (model.vocab || !model.config_path.empty()) {
    const int given = model.vocab ? *model.vocab : lasp::ModelConfig::load(model.config_path).vocab_size;
    LASP_CHECK(given >= vocab, "train: the model's vocabulary of {} is smaller than that of the data's tokenizer {} "
               "({} pieces)", given, path, vocab);
    return;
  }
  model.vocab = vocab;
  std::fprintf(stderr, "lasp: vocabulary %d from %s\n", vocab, path.c_str());
}

struct EvalCommand : Command {
  std::string checkpoint, data, format = "auto";
  int seq_len = 1024, batches = 1;
  bool json = false;
  lasp::ParallelOptions parallel;
  lasp::MemoryRequest memory;
  std::optional<int> doc_start;

  explicit EvalCommand(CLI::App& app) {
    cmd = app.add_subcommand("eval", "mean next-token loss of a checkpoint on the start of a file");
    cmd->add_option("--checkpoint", checkpoint, "checkpoint folder")->required();
    cmd->add_option("--data", data, "text, token shards or synthetic[:...] (as for train)")->required();
    cmd->add_option("--data-format", format, "auto | text | shards")->default_val(format)
        ->check(CLI::IsMember({"auto", "text", "shards"}));
    cmd->add_option("--seq-len", seq_len, "tokens per window")->default_val(seq_len)->check(kAtLeastOne);
    cmd->add_option("--batches", batches, "windows to evaluate")->default_val(batches)->check(kAtLeastOne);
    cmd->add_flag("--json", json, "print one JSON object");
    add_doc_start_flag(cmd, doc_start);
    add_memory_flags(cmd, memory);
    add_parallel_flags(cmd, parallel);
  }
  void run(Session& session) override {
    lasp::Comm& world = session.start_world();
    const lasp::EvalResult r = lasp::evaluate_checkpoint(checkpoint, data, seq_len, batches, world, parallel,
                                                         lasp::kLinearBlock, format, memory, doc_start);
    if (world.rank() != 0) return;
    nlohmann::ordered_json j{{"loss", r.loss}, {"tokens", r.tokens}, {"attention_bytes", r.attention_bytes}};
    if (r.recall_accuracy >= 0) j["recall_accuracy"] = r.recall_accuracy;
    if (r.bits_per_byte >= 0) j["bits_per_byte"] = r.bits_per_byte, j["bytes"] = r.bytes;
    if (json)
      std::cout << j.dump() << std::endl;
    else
      std::printf("loss %.6f over %lld tokens%s (%.2f MB of attention traffic on rank 0)\n", r.loss, (long long)r.tokens,
                  r.bits_per_byte >= 0 ? fmt::format(", {:.4f} bits per byte of {} bytes", r.bits_per_byte, r.bytes).c_str()
                                       : "",
                  r.attention_bytes / 1e6);
  }
};

struct GenerateCommand : Command {
  std::string checkpoint, prompt_text;
  int max_new_tokens = 200, top_k = 40;
  float temperature = 0.8f;
  uint64_t seed = 1;
  lasp::ParallelOptions parallel;
  lasp::Precision precision = lasp::Precision::fp32;
  std::optional<int> doc_start;

  explicit GenerateCommand(CLI::App& app) {
    cmd = app.add_subcommand("generate", "continue a prompt with a trained checkpoint (byte-level text)");
    cmd->add_option("--checkpoint", checkpoint, "checkpoint folder")->required();
    cmd->add_option("--prompt", prompt_text, "text to continue")->required();
    cmd->add_option("--max-new-tokens", max_new_tokens, "tokens to generate")->default_val(max_new_tokens)->check(kAtLeastOne);
    cmd->add_option("--temperature", temperature, "sampling temperature (0: greedy)")->default_val(temperature)
        ->check(kNonNegative);
    cmd->add_option("--top-k", top_k, "sample among the k most likely tokens (0: all)")->default_val(top_k)
        ->check(kNonNegative);
    cmd->add_option("--seed", seed, "seed of the sampling")->default_val(seed);
    add_precision_flag(cmd, precision);
    add_doc_start_flag(cmd, doc_start);
    cmd->add_option("--sp-size", parallel.sp_size, "ranks that prefill the prompt sequence-parallel (under mpirun)")
        ->default_val(1)->check(kAtLeastOne);
    cmd->add_option("--sp-layout", parallel.sp_layout, "contiguous | zigzag (default: zigzag when the model has a "
                    "softmax layer)")->check(CLI::IsMember({"contiguous", "zigzag"}));
  }
  void run(Session& session) override {
    // MPI first (under mpirun), before anything can fail on one rank only. Several ranks without --sp-size would
    // each generate alone, their outputs interleaved.
    lasp::Comm& world = session.start_world();
    LASP_CHECK(world.size() == parallel.sp_size, "generate: --sp-size {} must equal the number of ranks, {}{}",
               parallel.sp_size, world.size(), parallel.sp_size == 1 ? fmt::format(" (started by mpirun: give --sp-size "
               "{} to prefill the prompt over them, or run one process)", world.size()) : std::string());
    lasp::Comm* sp = parallel.sp_size > 1 ? &world : nullptr;
    const lasp::OpenedCheckpoint opened(checkpoint);  // every read goes through it: a save swapping another in
    const lasp::ModelConfig config = lasp::load_checkpoint_config(opened);  // cannot mix two checkpoints
    const lasp::ParamLayout layout(config);
    lasp::check_fits_in_memory(4.0 * double(layout.total()), "the checkpoint's weights");
    std::vector<float> params(layout.total());
    lasp::load_checkpoint_weights(opened, layout, params);
    // With the checkpoint's tokenizer (trained on `lasp tokenize` shards): a new document, BOS + the prompt's
    // encoding, and text out; else bytes in and out. A checkpoint that says what its ids are must have them.
    const std::optional<lasp::TokenMeaning> saved = lasp::load_token_meaning(opened);
    LASP_CHECK(!saved || saved->vocabulary == "bytes" || saved->vocabulary.rfind("tokenizer ", 0) == 0,
               "generate: {} was trained on {} ids, which are not text: generate reads and writes text", checkpoint,
               saved ? saved->vocabulary : "");
    std::optional<lasp::Tokenizer> tokenizer;
    if (opened.has("tokenizer.model"))
      tokenizer = lasp::Tokenizer::from_bytes(opened.read("tokenizer.model"), opened.shown("tokenizer.model"));
    std::vector<int> prompt;
    if (tokenizer) {
      LASP_CHECK(tokenizer->vocab_size() <= config.vocab_size, "generate: {} has {} pieces, more than the model's "
                 "vocabulary of {}", tokenizer->path(), tokenizer->vocab_size(), config.vocab_size);
      const lasp::InvalidUtf8 bad = lasp::find_invalid_utf8(prompt_text);
      LASP_CHECK(bad.count == 0, "generate: the prompt is not UTF-8 text (byte {} of it, 0x{:02x}): {}'s tokenizer "
                 "would read it as U+FFFD", bad.first, bad.count ? (unsigned char)prompt_text[size_t(bad.first)] : 0,
                 checkpoint);
      prompt = tokenizer->encode(prompt_text);
      prompt.insert(prompt.begin(), tokenizer->bos());
    } else {
      for (unsigned char ch : prompt_text) {
        LASP_CHECK(ch < config.vocab_size, "generate: prompt byte {} is outside the model's vocabulary of {}", int(ch),
                   config.vocab_size);
        prompt.push_back(ch);
      }
    }
    LASP_CHECK(!prompt.empty(), "generate: the prompt is empty: a byte-level model continues at least one byte "
               "(give --prompt some text)");
    LASP_CHECK(int64_t(prompt.size()) + max_new_tokens <= INT_MAX, "generate: the prompt ({} tokens) + "
               "--max-new-tokens {} must be at most {} tokens", prompt.size(), max_new_tokens, INT_MAX);
    lasp::Decoder decoder(config, params, int(prompt.size()) + max_new_tokens, precision);
    // Documents as training had them: the checkpoint's (or the flag's) token, else the tokenizer's BOS.
    const std::optional<int> start = lasp::doc_start_of(checkpoint, saved, doc_start);
    const int document_token = start ? *start : tokenizer ? tokenizer->bos() : -1;
    LASP_CHECK(document_token >= -1 && document_token < config.vocab_size, "--doc-start must be a token of the "
               "model's vocabulary [0, {}) or -1 for none, got {}", config.vocab_size, document_token);
    if (document_token >= 0) decoder.set_document_start(document_token);
    const lasp::SpLayout sp_layout = lasp::sp_method_layout("", parallel.sp_layout, config, parallel.sp_size);
    std::vector<float> logits =
        sp ? lasp::prefill_sequence_parallel(decoder, config, prompt, *sp, sp_layout) : decoder.prefill(prompt);
    const bool print = !sp || sp->rank() == 0;  // every rank decodes the same tokens; rank 0 prints them
    if (print) std::fwrite(prompt_text.data(), 1, prompt_text.size(), stdout);
    uint64_t rng = seed;
    std::optional<lasp::DecodeStream> text;
    if (tokenizer) text.emplace(*tokenizer);
    auto put = [](const std::string& s) { std::fwrite(s.data(), 1, s.size(), stdout); };
    for (int i = 0; i < max_new_tokens; ++i) {
      const int next = lasp::sample_token(logits, temperature, top_k, rng);
      if (print && text && next < tokenizer->vocab_size()) put(text->push(next));
      else if (print) std::fputc(next < 256 ? next : '?', stdout);
      if (print) std::fflush(stdout);
      if (i + 1 < max_new_tokens) logits = decoder.step(next);
    }
    if (print && text) put(text->finish());
    if (print) std::fputc('\n', stdout);
  }
};

struct PlotCommand : Command {
  std::vector<std::string> metrics;
  std::string out, title = "lasp training";
  int second_group = 0;
  explicit PlotCommand(CLI::App& app) {
    cmd = app.add_subcommand("plot", "loss curves of --metrics files as a PNG (several: runs side by side)");
    cmd->add_option("metrics", metrics,
                    "JSON-lines files of lasp train --metrics: one draws its training and validation loss, several "
                    "their validation losses, each named by its file")
        ->required();
    cmd->add_option("--out", out, "PNG to write (default: the first metrics file name with .png)");
    cmd->add_option("--title", title, "the picture's title")->default_val(title);
    cmd->add_option("--second-group", second_group, "several files: those from the K-th (counting from 0) on are "
                    "a second group, open points in the first ones' colours (0: one group)")->default_val(0);
  }
  void run(Session&) override {
    if (out.empty()) out = metrics[0].substr(0, metrics[0].rfind('.')) + ".png";
    lasp::plot_metrics(metrics, out, title, second_group);
    std::printf("wrote %s\n", out.c_str());
  }
};

struct TokenizeCommand : Command {
  lasp::TokenizeOptions o;
  std::string invalid_utf8 = "refuse";
  explicit TokenizeCommand(CLI::App& app) {
    cmd = app.add_subcommand("tokenize", "text files -> a SentencePiece tokenizer and llm.c token shards (subword text)");
    cmd->add_option("--input", o.inputs, "files or glob patterns: text (each file one document unless --separator "
                    "says otherwise) or JSON Lines (*.jsonl: each line's --text-field one document), either of them "
                    "also .gz or .zst")->required()->expected(1, -1);
    cmd->add_option("--out", o.out_dir, "folder for tokenizer.model, tokens_NNNNNN.bin and tokens.json (new, empty, "
                    "or an earlier tokenize's; replaced only once the new output is complete)")->required();
    cmd->add_option("--vocab-size", o.vocab_size, "pieces of the tokenizer to train (at most 65536: uint16 shards)")
        ->check(kAtLeastOne);
    cmd->add_option("--model-type", o.model_type, "bpe | unigram")->default_val(o.model_type)
        ->check(CLI::IsMember({"bpe", "unigram"}));
    cmd->add_option("--model", o.model, "a SentencePiece .model to use instead of training one");
    cmd->add_option("--separator", o.separator, "a string that separates documents inside the files (default: one "
                    "document per file)");
    cmd->add_option("--text-field", o.text_field, "JSON Lines: the field that holds each line's text")
        ->default_val(o.text_field);
    cmd->add_option("--sample-bytes", o.sample_bytes, "train the tokenizer on a sample of about this many bytes of "
                    "the text, spread over it (0: all of it)")->default_val(o.sample_bytes)->check(kNonNegative);
    cmd->add_option("--shard-tokens", o.shard_tokens, "tokens per shard")->default_val(o.shard_tokens)->check(kAtLeastOne);
    cmd->add_option("--invalid-utf8", invalid_utf8, "bytes that are not valid UTF-8: refuse (an error naming the file "
                    "and offset) or replace (each by U+FFFD, counted)")->default_val(invalid_utf8)
        ->check(CLI::IsMember({"refuse", "replace"}));
    cmd->add_flag("--skip-bad-lines", o.skip_bad_lines, "skip (and count) JSON lines that are not JSON or hold no "
                  "string --text-field, and empty documents, instead of stopping at the first");
  }
  void run(Session&) override {
    LASP_CHECK(!o.model.empty() || o.vocab_size > 0, "tokenize: give --vocab-size to train a tokenizer, or --model");
    o.threads = omp_get_max_threads();
    o.replace_invalid_utf8 = invalid_utf8 == "replace";
    // A progress line for each pass that lasts over a second, rewritten at most twice a second.
    std::string phase;
    double shown = -1;
    int64_t shown_done = -1;
    const lasp::TokenizeReport r = lasp::tokenize(o, [&](const lasp::TokenizeProgress& p) {
      const bool last = p.done == p.total && shown_done != p.done;  // the end of a pass, once
      if (p.seconds < 1 || (p.phase == phase && p.seconds - shown < 0.5 && !last)) return;
      if (!phase.empty() && p.phase != phase) std::fprintf(stderr, "\n");
      phase = p.phase, shown = p.seconds, shown_done = p.done;
      const double rate = double(p.done) / p.seconds, left = rate > 0 ? double(p.total - p.done) / rate : 0;
      std::fprintf(stderr, "\rtokenize: %s %3.0f%% of %.1f MB, %.1f MB/s, ETA %d:%02d  ", p.phase,
                   p.total > 0 ? 100.0 * double(p.done) / double(p.total) : 100.0, double(p.total) / 1e6, rate / 1e6,
                   int(left) / 60, int(left) % 60);
    });
    if (!phase.empty()) std::fprintf(stderr, "\n");
    std::printf("tokenize: %lld documents, %lld bytes -> %lld tokens (%.2f bytes per token), vocabulary %d, %zu "
                "shard(s) in %s\n", (long long)r.documents, (long long)r.bytes, (long long)r.tokens,
                r.tokens ? double(r.bytes) / double(r.tokens) : 0.0, r.vocab_size, r.shards.size(), o.out_dir.c_str());
    if (r.replaced > 0)
      std::printf("tokenize: %lld byte(s) that were not valid UTF-8 were replaced by U+FFFD (--invalid-utf8 replace)\n",
                  (long long)r.replaced);
    if (r.skipped > 0)
      std::printf("tokenize: skipped %lld bad line(s) or empty document(s) (--skip-bad-lines); the first: %s\n",
                  (long long)r.skipped, r.first_skipped.c_str());
    if (r.sampled)
      std::printf("tokenize: the tokenizer learned from a sample of %.1f MB of the %.1f MB of text (--sample-bytes)\n",
                  double(r.sample_bytes) / 1e6, double(r.bytes) / 1e6);
    if (o.model.empty()) std::printf("tokenize: reading and training %.1f s, ", r.training_seconds);
    else std::printf("tokenize: ");
    std::printf("encoding %.1f s (%.1f MB/s of text on %d thread%s)\n", r.encoding_seconds,
                r.encoding_seconds > 0 ? double(r.bytes) / 1e6 / r.encoding_seconds : 0.0, o.threads,
                o.threads == 1 ? "" : "s");
  }
};

struct BenchKernelsCommand : Command {
  lasp::KernelBenchOptions o;
  bool json = false, quick = false;
  explicit BenchKernelsCommand(CLI::App& bench) {
    cmd = bench.add_subcommand("kernels", "attention kernels vs the FP32 FMA peak");
    cmd->add_flag("--json", json, "print one JSON object");
    cmd->add_flag("--quick", quick, "small sizes (N=1024, 1 repeat): a smoke test");
    cmd->add_option("--seq-len", o.N, "sequence length N")->default_val(o.N)->check(kAtLeastOne);
    cmd->add_option("--heads", o.H, "heads H")->default_val(o.H)->check(kAtLeastOne);
    cmd->add_option("--head-dim", o.d, "head dim d")->default_val(o.d)->check(kAtLeastOne);
    cmd->add_option("--feature-dim", o.feature_dim, "Based and Rebased: q and k values per head")
        ->default_val(o.feature_dim)->check(kAtLeastOne);
    cmd->add_option("--block", o.linear_block, "linear attention block size")->default_val(o.linear_block)
        ->check(kAtLeastOne);
    cmd->add_option("--repeats", o.repeats, "runs per measurement (median)")->default_val(o.repeats)->check(kAtLeastOne);
  }
  void run(Session& session) override {
    if (quick) o.N = 1024, o.repeats = 1;
    o.threads = session.threads;
    const nlohmann::ordered_json r = lasp::bench_kernels(o);
    if (json) {
      std::cout << r.dump() << std::endl;
      return;
    }
    std::printf("FP32 FMA peak: %.1f GFLOP/s (1 thread), %.1f GFLOP/s (%d threads)\n",
                r["peak_fp32_gflops"]["1"].get<double>(), r["peak_fp32_gflops"]["all"].get<double>(),
                r["config"]["threads_all"].get<int>());
    for (const char* kernel :
         {"linear_attention", "linear_attention_lightning", "gla", "gdn", "based", "rebased", "softmax_attention"})
      for (const char* t : {"1", "all"})
        std::printf("%-26s %-3s threads: %8.1f GFLOP/s  %10.0f tokens/s\n", kernel, t,
                    r[kernel][t]["gflops"].get<double>(), r[kernel][t]["tokens_per_s"].get<double>());
    for (const auto& [kernel, name] :
         {std::pair{"gla", "GLA"}, {"gdn", "Gated DeltaNet"}, {"based", "Based"}, {"rebased", "Rebased"}})
      std::printf("%s tokens/s vs the lightning kernel: %.2f (1 thread), %.2f (all)\n", name,
                  r[kernel]["tokens_vs_lightning_1"].get<double>(), r[kernel]["tokens_vs_lightning_all"].get<double>());
    std::printf("(Based and Rebased: feature_dim %d, values d + 1 wide with the normalizer's column)\n",
                r["config"].value("feature_dim", 16));
  }
};

struct BenchSpCommand : Command {
  lasp::SpBenchOptions o;
  explicit BenchSpCommand(CLI::App& bench) {
    cmd = bench.add_subcommand("sp", "every sequence-parallel method side by side, under the current mpirun");
    cmd->add_option("--methods", o.methods, "methods to run")->default_str(lasp::sp_method_names(" "))
        ->check(CLI::IsMember(sp_method_list()));
    cmd->add_option("--seq-lens", o.seq_lens, "sequence lengths")->default_str("4096 16384");
    cmd->add_option("--models", o.models, "layer patterns (pure linear, hybrid)")->default_str("LLLL LLLN");
    cmd->add_option("--repeats", o.repeats, "timed steps per case (median)")->default_val(o.repeats)->check(kAtLeastOne);
    cmd->add_option("--scan-slices", o.scan_slices, "allscan's K")->default_val(o.scan_slices)->check(kAtLeastOne);
    cmd->add_option("--decay", o.decay, "the linear layers' decay")->default_val(o.decay)
        ->check(CLI::IsMember({"none", "lightning", "retention", "gla", "gdn"}));
    cmd->add_option("--feature-map", o.feature_map, "the linear layers' feature map (based | rebased: expanded rows)")
        ->check(CLI::IsMember({"silu", "elu1", "relu", "identity", "based", "rebased"}));
    cmd->add_option("--feature-dim", o.feature_dim, "based | rebased: q and k values per head")
        ->default_val(o.feature_dim)->check(kAtLeastOne);
    cmd->add_option("--out", o.out_prefix, "prefix of the CSV, JSON and PNG files")->default_val(o.out_prefix);
  }
  void run(Session& session) override { lasp::bench_sp(o, session.start_world()); }
};

struct BenchProjectCommand : Command {
  lasp::ProjectOptions o;
  explicit BenchProjectCommand(CLI::App& bench) {
    cmd = bench.add_subcommand("project", "alpha-beta projection of every SP method to 16-256 ranks");
    cmd->add_option("--link-gbit", o.link_gbit, "bandwidth between nodes per rank")->default_val(o.link_gbit)
        ->check(kPositive);
    cmd->add_option("--intra-gbit", o.intra_gbit, "bandwidth inside a node")->default_val(o.intra_gbit)->check(kPositive);
    cmd->add_option("--latency-us", o.latency_us, "latency per message between nodes")->default_val(o.latency_us)
        ->check(kNonNegative);
    cmd->add_option("--ranks-per-node", o.ranks_per_node, "ranks per node")->default_val(o.ranks_per_node)
        ->check(kAtLeastOne);
    cmd->add_option("--accelerator-speedup", o.accelerator_speedup,
                    "second projection with compute this much faster than measured here")
        ->default_val(o.accelerator_speedup)->check(kPositive);
  }
  void run(Session&) override { lasp::bench_project(o); }
};

struct BenchTrainCommand : Command {
  ModelFlags model;
  lasp::TrainBenchOptions o;
  bool json = false;
  explicit BenchTrainCommand(CLI::App& bench) {
    cmd = bench.add_subcommand("train", "training tokens/s and peak memory of a model (default: the small hybrid)");
    model.add(cmd);
    cmd->add_option("--seq-lens,--seq-len", o.seq_lens, "tokens per sequence; several lengths run one process each "
                    "and write --out.json, --out.png and its points --out.dat (one per length: the median)")
        ->default_str("4096")->check(kAtLeastOne)->delimiter(',');
    cmd->add_option("--batch", o.batch, "sequences per step")->default_val(o.batch)->check(kAtLeastOne);
    cmd->add_option("--steps", o.steps, "timed steps (median)")->default_val(o.steps)->check(kAtLeastOne);
    cmd->add_option("--warmup", o.warmup, "untimed steps first")->default_val(o.warmup)->check(kNonNegative);
    add_memory_flags(cmd, o.memory);
    cmd->add_option("--doc-every", o.doc_every, "packed documents of about this many tokens (0: one stream), to "
                    "measure what documents cost")->default_val(o.doc_every)->check(kNonNegative);
    cmd->add_flag("--compare-pytorch", o.compare_pytorch, "also time the same step in PyTorch at its best, eager and "
                  "compiled (tools/peer.py; current PyTorch once scripts/setup_peer.sh made .venv-peer)");
    cmd->add_option("--peer-profile", o.peer_profile, "with --compare-pytorch: also profile one step of the peer "
                    "(torch.profiler): its N operators of most self time, in the JSON's pytorch.profile")
        ->default_val(o.peer_profile)->check(kNonNegative);
    cmd->add_option("--reference", o.reference_script, "path of tools/reference.py (default: the source tree's)");
    cmd->add_option("--out", o.out_prefix, "with several lengths: prefix of the JSON and PNG files")
        ->default_val(o.out_prefix);
    cmd->add_flag("--json", json, "print one JSON object (a list with several lengths)");
  }
  void run(Session& session) override {
    const lasp::ModelConfig config = model.build();
    nlohmann::ordered_json r;
    if (o.seq_lens.size() == 1) {
      r = lasp::bench_train(config, o);
    } else {
      const std::string self = std::filesystem::read_symlink("/proc/self/exe");  // this binary, for the children
      r = lasp::bench_train_lengths(config, o, self, omp_get_max_threads());
    }
    if (json || o.seq_lens.size() == 1) std::cout << (json ? r.dump() : r.dump(2)) << std::endl;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lasp: linear-attention and hybrid language models on long sequences, sequence-parallel (LASP-2)"};
  app.require_subcommand(1);
  app.get_formatter()->column_width(34);
  Session session;
  bool verbose = false;
  app.add_option("--threads", session.threads, "OpenMP threads (0 = every core)")->default_val(0)->check(kNonNegative);
  app.add_flag("--verbose", verbose, "errors also say where in lasp's source they were raised");

  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(std::make_unique<InfoCommand>(app));
  commands.push_back(std::make_unique<TrainCommand>(app));
  commands.push_back(std::make_unique<EvalCommand>(app));
  commands.push_back(std::make_unique<GenerateCommand>(app));
  commands.push_back(std::make_unique<PlotCommand>(app));
  commands.push_back(std::make_unique<TokenizeCommand>(app));
  CLI::App* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  commands.push_back(std::make_unique<BenchKernelsCommand>(*bench));
  commands.push_back(std::make_unique<BenchSpCommand>(*bench));
  commands.push_back(std::make_unique<BenchProjectCommand>(*bench));
  commands.push_back(std::make_unique<BenchTrainCommand>(*bench));
  strict_integers(&app);  // every integer option: decimal digits only

  CLI11_PARSE(app, argc, argv);
  try {
    if (session.threads > 0) omp_set_num_threads(session.threads);
    for (const auto& command : commands)
      if (*command->cmd) command->run(session);
    // Output that did not reach its file (a full disk, a closed device) is an error, not a silent exit 0.
    errno = 0;
    const bool written = std::fflush(stdout) == 0 && !std::ferror(stdout);
    LASP_CHECK(written, "writing to standard output failed{}: what lasp printed is incomplete",
               errno ? std::string(": ") + std::strerror(errno) : std::string());
  } catch (const std::exception& e) {
    std::string message = e.what();
    if (dynamic_cast<const std::bad_alloc*>(&e))
      message = "out of memory (std::bad_alloc): the sizes asked for need more memory than this machine can give";
    const auto* error = dynamic_cast<const lasp::Error*>(&e);
    if (verbose && error && !error->where.empty()) message += " [raised at " + error->where + "]";
    // Under mpirun one failing rank ends every rank (MPI_Abort), so that none waits forever.
    if (session.world && session.world->size() > 1) session.world->abort("error: " + message);
    std::fprintf(stderr, "lasp: error: %s\n", message.c_str());
    return 1;
  }
  // Progress and step lines go to stderr: when those were lost too, the run did not say what it did.
  return std::fflush(stderr) == 0 && !std::ferror(stderr) ? 0 : 1;
}
