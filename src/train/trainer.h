// `lasp train` and `lasp eval` on one process (the sequence-parallel runs come with the sp/ issue).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/optimizer.h"

namespace lasp {

struct TrainOptions {
  std::string data_path;       // byte-level text
  int seq_len = 1024, batch = 1, steps = 100;
  float lr = 1e-3f;            // peak learning rate
  float min_lr = -1.f;         // end of the cosine; < 0: lr / 10
  int warmup = -1;             // warmup steps; < 0: steps / 10
  uint64_t seed = 1234;
  std::string save_dir;        // empty: no checkpoint
  bool recompute = false;      // keep only each layer's input; recompute the layer in backward
  int block = 32;              // linear attention block size
  AdamWConfig adamw;
};

struct TrainResult {
  std::vector<double> losses;  // mean training loss of each step
  double tokens_per_s = 0;     // over the whole run, after the first step
};

// Progress goes to stderr, one line per step.
TrainResult train(const ModelConfig& config, const TrainOptions& options);

struct EvalResult {
  double loss = 0;   // mean next-token cross-entropy
  int64_t tokens = 0;
};
// Windows k = 0..batches-1 of the file: tokens [k N, k N + N], the last N as targets.
EvalResult evaluate_checkpoint(const std::string& checkpoint_dir, const std::string& data_path, int seq_len,
                               int batches, int block = 32);

}  // namespace lasp
