// `lasp train` and `lasp eval`, on one process or under mpirun: world = dp x sp ranks. Each rank reads
// only its slice of each window, the linear layers run LASP-2 and the softmax layers LASP-2H across the
// SP group, and the gradients are summed over the world (the loss is the mean over the global batch).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "model/config.h"
#include "model/memory_plan.h"
#include "sp/methods.h"
#include "train/optimizer.h"

namespace lasp {

class OpenedCheckpoint;

struct ParallelOptions {
  int sp_size = 1, dp_size = 1;
  std::string sp_layout;  // contiguous | zigzag; empty: zigzag when the model has a softmax layer
  std::string sp_method;  // a method of sp/methods.h; empty: the default (LASP-2 + LASP-2H)
  int scan_slices = kAllScanSlices;  // allscan's K
};

struct TrainOptions {
  std::string data_path;       // text, llm.c token shards (path or glob), or synthetic[:pairs=P,tokens=T,seed=S]
  std::string data_format = "auto";  // auto | text | shards (train/data.h open_tokens)
  int seq_len = 1024, batch = 1, steps = 100;  // batch: sequences per DP rank
  float lr = 1e-3f;            // peak learning rate
  std::optional<float> min_lr; // end of the cosine; absent: lr / 10
  std::optional<int> warmup;   // warmup steps; absent: steps / 10
  uint64_t seed = 1234;
  bool seed_given = false;     // --seed given: a resume whose checkpoint has another seed is an error
  std::string save_dir;        // empty: no checkpoint; else written every save_every steps and at the end
  bool save_bf16 = false;      // --save-dtype bf16: model.safetensors in BF16 (the optimizer file keeps fp32 masters)
  int save_every = 0;          // 0: only at the end
  bool continue_on_save_error = false;  // a failed periodic save: warn and train on (default: stop with the error)
  int stop_at = 0;             // > 0: stop (and save) after this step, as an interrupted run would
  std::string resume_dir;      // continue a run from its checkpoint (weights, AdamW moments, step, data position)
  // resume_dir opened once by the caller (checkpoint.h OpenedCheckpoint; every read of the resume goes through
  // it); absent: train opens it.
  std::shared_ptr<const OpenedCheckpoint> resume_checkpoint;
  bool new_data = false;       // --new-data: resume on data_path although the saved run had other data
  double val_fraction = 0.1;   // the last part of the data file, held out for validation (0: none)
  int eval_every = 0;          // validation every so many steps and at the end (0: never)
  int eval_batches = 4;        // windows per DP rank in each validation
  std::string metrics_path;    // empty: none; else one JSON object per step appended (rank 0)
  MemoryRequest memory;        // --memory-limit, --recompute, --chunk (model/memory_plan.h)
  int block = kLinearBlock;    // linear attention block size
  std::optional<int> doc_start;  // --doc-start: the token that opens a document (-1: none); absent: document_start
  AdamWConfig adamw;
  ParallelOptions parallel;
};

struct TrainResult {
  std::vector<double> losses;  // mean training loss of each step run here (global batch)
  std::vector<std::pair<int, double>> val_losses;  // (step, validation loss)
  double tokens_per_s = 0;     // global tokens per second, after the first step
  uint64_t attention_bytes_per_step = 0, gradient_bytes_per_step = 0;  // sent + received by rank 0
};

// Throws lasp::Error naming the flag when an option is out of range (NaN included): "--min-lr must be ...".
void check_train_options(const TrainOptions& options);

// Progress goes to stderr from rank 0, one line per step. A non-finite loss or gradient norm stops training
// with an error (the update of that step is not applied, nothing is saved after it). With resume_dir the model is the checkpoint's
// (config is ignored) and the run continues at the step after the checkpoint's, up to options.steps:
// with the same world layout the losses are bit-identical to an uninterrupted run.
TrainResult train(const ModelConfig& config, const TrainOptions& options, Comm& world);

struct EvalResult {
  double loss = 0;   // mean next-token cross-entropy
  int64_t tokens = 0;
  uint64_t attention_bytes = 0;  // sent + received by rank 0 for attention over the whole evaluation
  double recall_accuracy = -1;   // synthetic recall data: the fraction of answers predicted (argmax)
  // Bits per byte of the text the targets stand for, comparable across tokenizers: byte-level text, or token
  // shards with a tokenizer (the checkpoint's tokenizer.model, else the one beside the shards); -1 otherwise.
  double bits_per_byte = -1;
  int64_t bytes = 0;
};
// Windows k = 0..batches-1 of the file: tokens [k N, k N + N], the last N as targets.
EvalResult evaluate_checkpoint(const std::string& checkpoint_dir, const std::string& data_path, int seq_len,
                               int batches, Comm& world, const ParallelOptions& parallel = {}, int block = kLinearBlock,
                               const std::string& data_format = "auto", const MemoryRequest& memory = {},
                               std::optional<int> doc_start = {});

// The token that opens a document in this data (MODEL.md, Model::set_document_start), or -1 for none:
// `requested` (--doc-start) when given, checked against the vocabulary; else the BOS of the tokenizer beside
// token shards; else none (raw bytes, shards without a tokenizer, synthetic data). `why` says which.
int document_start(std::optional<int> requested, const std::string& data_path, int vocab_size, std::string* why);

}  // namespace lasp
