// A checkpoint is a folder (MODEL.md): config.json + model.safetensors (fp32, Hugging Face names),
// each written to a temporary name and renamed.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace lasp {

void save_checkpoint(const std::string& dir, const ModelConfig& config, const ParamLayout& layout,
                     const std::vector<float>& params);
ModelConfig load_checkpoint_config(const std::string& dir);
// Reads every tensor of the layout into params; a missing or mis-shaped tensor (a config that contradicts
// the weights) is an error naming the file, the tensor and both shapes. Extra tensors are an error too.
void load_checkpoint_weights(const std::string& dir, const ParamLayout& layout, std::vector<float>& params);

}  // namespace lasp
