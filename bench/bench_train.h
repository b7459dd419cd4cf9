// `lasp bench train`: tokens/s of full training steps (forward, backward, AdamW) of a model on random
// tokens, median over steps; optionally next to the same step in PyTorch (tools/reference.py time-step).
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace lasp {

struct TrainBenchOptions {
  int seq_len = 4096, batch = 1, steps = 5;
  bool compare_pytorch = false;
  std::string reference_script = "tools/reference.py";
};

nlohmann::ordered_json bench_train(const ModelConfig& config, const TrainBenchOptions& options);

}  // namespace lasp
