// `lasp bench train`: tokens/s and peak memory of full training steps (forward, backward, AdamW) of a model
// on random tokens under lasp's memory plan, median over steps; optionally next to the same step in PyTorch
// (tools/reference.py time-step: the peer of tools/peer.py, under .venv-peer's current PyTorch when
// scripts/setup_peer.sh made it, else Debian's). Several lengths run one child process each, so that each
// length's peak RSS is its own, and give a table, a JSON file and a PNG (tokens/s and memory per token against N).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/memory_plan.h"

namespace lasp {

struct TrainBenchOptions {
  std::vector<int> seq_lens = {4096};
  int batch = 1, steps = 5, warmup = 1;  // timed steps (median) after untimed warm-up steps
  MemoryRequest memory;
  int doc_every = 0;  // > 0: packed documents of about this many tokens (token 0 opens one); 0: one stream
  bool compare_pytorch = false;
  int peer_profile = 0;  // > 0: with compare_pytorch, the peer's operators of most time in one step, this many
  std::string reference_script;  // tools/reference.py; empty: the source tree's, found from any folder
  std::string out_prefix = "bench_train";  // several lengths: PREFIX.json, PREFIX.png and its points PREFIX.dat
};

// One length (seq_lens[0]) in this process.
nlohmann::ordered_json bench_train(const ModelConfig& config, const TrainBenchOptions& options);

// Every length, each in a child process of the lasp binary `self` with `threads` OpenMP threads; prints a
// table, writes PREFIX.json and PREFIX.png, and returns the rows.
nlohmann::ordered_json bench_train_lengths(const ModelConfig& config, const TrainBenchOptions& options,
                                           const std::string& self, int threads);

}  // namespace lasp
