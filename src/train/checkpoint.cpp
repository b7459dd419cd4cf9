#include "train/checkpoint.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "core/check.h"
#include "model/safetensors.h"

namespace lasp {

namespace {
void make_dir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw Error("cannot create checkpoint folder " + dir + ": " + std::strerror(errno));
}
}  // namespace

void save_checkpoint(const std::string& dir, const ModelConfig& config, const ParamLayout& layout,
                     const std::vector<float>& params) {
  make_dir(dir);
  std::vector<NamedTensor> tensors;
  for (const TensorSpec& t : layout.specs()) tensors.push_back({t.name, t.shape, params.data() + t.offset});
  safetensors_write(dir + "/model.safetensors", tensors, {{"format", "pt"}, {"writer", "lasp"}});
  config.save(dir + "/config.json");
}

ModelConfig load_checkpoint_config(const std::string& dir) { return ModelConfig::load(dir + "/config.json"); }

void load_checkpoint_weights(const std::string& dir, const ParamLayout& layout, std::vector<float>& params) {
  const SafetensorsFile file = SafetensorsFile::open(dir + "/model.safetensors");
  for (const TensorSpec& t : layout.specs()) file.read(t.name, t.shape, params.data() + t.offset);
  for (const auto& [name, info] : file.tensors()) {
    bool known = false;
    for (const TensorSpec& t : layout.specs()) known = known || t.name == name;
    LASP_CHECK(known, "{}/model.safetensors: tensor '{}' is not part of the model that config.json describes", dir,
               name);
  }
}

}  // namespace lasp
