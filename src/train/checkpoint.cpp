#include "train/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/file.h"
#include "model/safetensors.h"

namespace lasp {

namespace fs = std::filesystem;

namespace {

void write_tensors(const std::string& path, const ParamLayout& layout, const std::vector<float>& values,
                   const std::string& prefix) {
  std::vector<NamedTensor> tensors;
  for (const TensorSpec& t : layout.specs()) tensors.push_back({prefix + t.name, t.shape, values.data() + t.offset});
  safetensors_write(path, tensors, {{"format", "pt"}, {"writer", "lasp"}});
}

void read_tensors(const std::string& path, const ParamLayout& layout, std::vector<float>& values,
                  const std::string& prefix) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  for (const TensorSpec& t : layout.specs()) file.read(prefix + t.name, t.shape, values.data() + t.offset);
  for (const auto& [name, info] : file.tensors()) {
    bool known = false;
    for (const TensorSpec& t : layout.specs()) known = known || prefix + t.name == name;
    LASP_CHECK(known, "{}: tensor '{}' is not part of the model that config.json describes", path, name);
  }
}

}  // namespace

void save_checkpoint(const std::string& dir, const ModelConfig& config, const ParamLayout& layout,
                     const std::vector<float>& params, const OptimizerState* optimizer) {
  const std::string tmp = dir + ".tmp." + std::to_string(getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  LASP_CHECK(fs::create_directories(tmp, ec) || fs::is_directory(tmp), "cannot create checkpoint folder {}: {}", tmp,
             ec.message());
  write_tensors(tmp + "/model.safetensors", layout, params, "");
  config.save(tmp + "/config.json");
  if (optimizer) {
    std::vector<NamedTensor> tensors;
    for (const TensorSpec& t : layout.specs()) {
      tensors.push_back({"m." + t.name, t.shape, optimizer->m->data() + t.offset});
      tensors.push_back({"v." + t.name, t.shape, optimizer->v->data() + t.offset});
    }
    safetensors_write(tmp + "/optimizer.safetensors", tensors, {{"writer", "lasp"}});
    write_file_atomic(tmp + "/trainer_state.json", optimizer->trainer.dump(2) + "\n");
  }
  // Swap the complete folder in with one atomic exchange (the old checkpoint then sits at tmp and is
  // removed), or one rename when there was none: at every instant dir is a whole checkpoint.
  if (fs::exists(dir)) {
    LASP_CHECK(renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0,
               "cannot swap the new checkpoint {} into {}: {}", tmp, dir, std::strerror(errno));
    fs::remove_all(tmp, ec);
  } else {
    fs::rename(tmp, dir, ec);
    LASP_CHECK(!ec, "cannot rename {} to {}: {}", tmp, dir, ec.message());
  }
}

ModelConfig load_checkpoint_config(const std::string& dir) { return ModelConfig::load(dir + "/config.json"); }

void load_checkpoint_weights(const std::string& dir, const ParamLayout& layout, std::vector<float>& params) {
  read_tensors(dir + "/model.safetensors", layout, params, "");
}

nlohmann::json load_optimizer_state(const std::string& dir, const ParamLayout& layout, std::vector<float>& m,
                                    std::vector<float>& v) {
  const std::string state_path = dir + "/trainer_state.json";
  LASP_CHECK(fs::exists(state_path) && fs::exists(dir + "/optimizer.safetensors"),
             "--resume {}: no optimizer.safetensors / trainer_state.json there (a checkpoint saved by lasp train)", dir);
  const SafetensorsFile file = SafetensorsFile::open(dir + "/optimizer.safetensors");
  for (const TensorSpec& t : layout.specs()) {
    file.read("m." + t.name, t.shape, m.data() + t.offset);
    file.read("v." + t.name, t.shape, v.data() + t.offset);
  }
  try {
    return nlohmann::json::parse(read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(state_path + ": not valid JSON: " + e.what());
  }
}

}  // namespace lasp
