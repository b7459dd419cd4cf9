// A checkpoint is a folder (MODEL.md): config.json + model.safetensors (fp32, Hugging Face names), and
// for a resumable training run optimizer.safetensors (the AdamW moments, "m.<name>" and "v.<name>") and
// trainer_state.json (step, data position, run layout). The folder is written under a temporary name and
// renamed over the old one, so a crash leaves either the old checkpoint or the new one, never a mix.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/params.h"

namespace lasp {

struct OptimizerState {
  const std::vector<float>* m = nullptr;  // AdamW moments in the layout of the parameters
  const std::vector<float>* v = nullptr;
  nlohmann::json trainer;                 // trainer_state.json
};

void save_checkpoint(const std::string& dir, const ModelConfig& config, const ParamLayout& layout,
                     const std::vector<float>& params, const OptimizerState* optimizer = nullptr);
ModelConfig load_checkpoint_config(const std::string& dir);
// Reads every tensor of the layout into params; a missing or mis-shaped tensor (a config that contradicts
// the weights) is an error naming the file, the tensor and both shapes. Extra tensors are an error too.
void load_checkpoint_weights(const std::string& dir, const ParamLayout& layout, std::vector<float>& params);
// Reads the AdamW moments and returns trainer_state.json; throws if the checkpoint has none.
nlohmann::json load_optimizer_state(const std::string& dir, const ParamLayout& layout, std::vector<float>& m,
                                    std::vector<float>& v);

}  // namespace lasp
