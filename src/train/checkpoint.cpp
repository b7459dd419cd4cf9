#include "train/checkpoint.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "core/file.h"
#include "core/folder.h"
#include "core/parse.h"
#include "model/safetensors.h"

namespace lasp {

namespace fs = std::filesystem;

namespace {

// The files a lasp checkpoint folder holds: a save replaces a folder of nothing else.
const char* const kCheckpointFiles[] = {"config.json", "model.safetensors", "optimizer.safetensors",
                                        "trainer_state.json", "tokenizer.model", "lasp_checkpoint.json"};

bool is_checkpoint_file(const std::string& name) {
  for (const char* f : kCheckpointFiles)
    if (name == f) return true;
  return false;
}

// A checkpoint folder: its marker lasp_checkpoint.json, and nothing else than the files above.
const FolderKind kCheckpointFolder = {"--save", "lasp checkpoint", "lasp_checkpoint.json", "lasp checkpoint", "save", 1,
                                      [](const nlohmann::json&, const std::string& name) {
                                        return is_checkpoint_file(name);
                                      }};

std::string parent_of(const std::string& dir) {
  const fs::path parent = fs::path(dir).parent_path();
  return parent.empty() ? "." : parent.string();
}

void check_finite(const std::string& what, const ParamLayout& layout, const std::vector<float>& values,
                  const std::string& prefix) {
  for (const TensorSpec& t : layout.specs())
    for (size_t i = 0; i < t.size; ++i)
      LASP_CHECK(std::isfinite(values[t.offset + i]), "{}: tensor '{}{}' holds {} at element {}: refusing non-finite "
                 "values", what, prefix, t.name, values[t.offset + i], i);
}

void write_tensors(const std::string& path, const ParamLayout& layout, const std::vector<float>& values,
                   const std::string& prefix, bool bf16) {
  std::vector<NamedTensor> tensors;
  for (const TensorSpec& t : layout.specs())
    tensors.push_back({prefix + t.name, t.shape, values.data() + t.offset, bf16});
  safetensors_write(path, tensors, {{"format", "pt"}, {"writer", "lasp"}});
}

void read_tensors(const SafetensorsFile& file, const ParamLayout& layout, std::vector<float>& values,
                  const std::string& prefix) {
  for (const TensorSpec& t : layout.specs()) file.read(prefix + t.name, t.shape, values.data() + t.offset);
  check_finite(file.path(), layout, values, prefix);
}

// An integer in [lo, hi], stored as a JSON integer (1.5, or 2^40 for an int, is an error: not 1, not a wrap).
int64_t state_int(const nlohmann::json& j, const char* key, int64_t lo, int64_t hi, const std::string& path) {
  const auto it = j.find(key);
  LASP_CHECK(it != j.end(), "{}: no \"{}\" (expected an integer in [{}, {}])", path, key, lo, hi);
  const bool in_range = it->is_number_unsigned() ? it->get<uint64_t>() <= uint64_t(hi) && int64_t(it->get<uint64_t>()) >= lo
                        : it->is_number_integer() && it->get<int64_t>() >= lo && it->get<int64_t>() <= hi;
  LASP_CHECK(in_range, "{}: \"{}\" must be an integer in [{}, {}], found {}", path, key, lo, hi, json_shown(*it));
  return it->get<int64_t>();
}

uint64_t state_uint(const nlohmann::json& j, const char* key, const std::string& path) {
  const auto it = j.find(key);
  const bool ok = it != j.end() && (it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0));
  LASP_CHECK(ok, "{}: \"{}\" must be an integer in [0, {}], found {}", path, key, UINT64_MAX,
             it == j.end() ? std::string("nothing") : json_shown(*it));
  return it->get<uint64_t>();
}

std::string state_string(const nlohmann::json& j, const char* key, const std::string& path) {
  const auto it = j.find(key);
  LASP_CHECK(it != j.end() && it->is_string(), "{}: \"{}\" must be a string, found {}", path, key,
             it == j.end() ? std::string("nothing") : json_shown(*it));
  return it->get<std::string>();
}

}  // namespace

nlohmann::json TrainerState::to_json() const {
  nlohmann::json j = {{"step", step},       {"sampler", sampler}, {"sp_size", sp_size},   {"dp_size", dp_size},
                      {"sp_layout", sp_layout}, {"batch", batch}, {"seq_len", seq_len},   {"seed", seed},
                      {"data", data}};
  if (!precision.empty()) j["precision"] = precision;
  return j;
}

TrainerState parse_trainer_state(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  LASP_CHECK(j.is_object(), "{}: expected a JSON object, found a {}", path, j.type_name());
  TrainerState s;
  s.step = int(state_int(j, "step", 0, INT_MAX - 1, path));  // the next step, step + 1, must be an int
  s.sampler = state_string(j, "sampler", path);
  s.sp_size = int(state_int(j, "sp_size", 1, INT_MAX, path));
  s.dp_size = int(state_int(j, "dp_size", 1, INT_MAX, path));
  s.batch = int(state_int(j, "batch", 1, INT_MAX, path));
  s.seq_len = int(state_int(j, "seq_len", 1, INT_MAX, path));
  s.seed = state_uint(j, "seed", path);
  s.sp_layout = state_string(j, "sp_layout", path);
  s.data = state_string(j, "data", path);
  if (j.contains("precision")) {  // since issue 27; older checkpoints do not say
    s.precision = state_string(j, "precision", path);
    LASP_CHECK(s.precision == "fp32" || s.precision == "bf16", "{}: \"precision\" must be \"fp32\" or \"bf16\", "
               "found {}", path, json_shown(j["precision"]));
  }
  return s;
}

uint64_t checkpoint_bytes(const ParamLayout& layout, bool with_optimizer, bool bf16_weights) {
  uint64_t floats = 0;
  for (const TensorSpec& t : layout.specs()) floats += t.size;
  const uint64_t headers = 160 * layout.specs().size();  // JSON header entry per tensor, generously
  const uint64_t weights = (bf16_weights ? 2 : 4) * floats + headers, fp32 = 4 * floats + headers;
  const uint64_t optimizer = with_optimizer ? (bf16_weights ? 3 : 2) * fp32 : 0;  // m, v (and the masters)
  return weights + optimizer + (4 << 20);  // config.json, trainer_state.json, tokenizer.model (~1 MB at 64K pieces)
}

FolderLock check_checkpoint_target(const std::string& dir_in, uint64_t bytes) {
  const std::string dir = without_trailing_slashes(dir_in), parent = parent_of(dir);
  FolderLock lock = check_folder_target(kCheckpointFolder, dir);
  struct statvfs fsinfo {};
  LASP_CHECK(::statvfs(parent.c_str(), &fsinfo) == 0, "--save {}: cannot read the free space of {}: {}", dir, parent,
             std::strerror(errno));
  const uint64_t free_bytes = uint64_t(fsinfo.f_bavail) * fsinfo.f_frsize;
  LASP_CHECK(free_bytes >= bytes, "--save {}: a checkpoint needs {} ({} bytes) but the filesystem of {} has only {} "
             "free", dir, human_bytes(double(bytes)), bytes, parent, human_bytes(double(free_bytes)));
  return lock;
}

OpenedCheckpoint::OpenedCheckpoint(const std::string& dir)
    : OpenedFolder(dir, {std::begin(kCheckpointFiles), std::end(kCheckpointFiles)}) {}

void save_checkpoint(const std::string& dir, const ModelConfig& config, const ParamLayout& layout,
                     const std::vector<float>& params, const OptimizerState* optimizer, bool bf16_weights,
                     const std::string& tokenizer, const std::optional<TokenMeaning>& meaning) {
  check_finite("checkpoint " + dir, layout, params, "");
  if (optimizer) {
    check_finite("checkpoint " + dir + " (AdamW moments)", layout, *optimizer->m, "m.");
    check_finite("checkpoint " + dir + " (AdamW moments)", layout, *optimizer->v, "v.");
  }
  write_folder(kCheckpointFolder, dir, [&](const std::string& tmp) {
    write_tensors(tmp + "/model.safetensors", layout, params, "", bf16_weights);
    config.save(tmp + "/config.json");
    if (!tokenizer.empty()) write_file_atomic(tmp + "/tokenizer.model", read_file(tokenizer));
    if (optimizer) {
      std::vector<NamedTensor> tensors;
      for (const TensorSpec& t : layout.specs()) {
        tensors.push_back({"m." + t.name, t.shape, optimizer->m->data() + t.offset});
        tensors.push_back({"v." + t.name, t.shape, optimizer->v->data() + t.offset});
        if (bf16_weights) tensors.push_back({"w." + t.name, t.shape, params.data() + t.offset});
      }
      safetensors_write(tmp + "/optimizer.safetensors", tensors, {{"writer", "lasp"}});
      write_file_atomic(tmp + "/trainer_state.json", optimizer->trainer.to_json().dump(2) + "\n");
    }
    if (!meaning) return nlohmann::json::object();
    return nlohmann::json{{"vocabulary", meaning->vocabulary}, {"doc_start", meaning->doc_start}};
  });
}

namespace {

// FNV-1a, 64 bits: a stable fingerprint of a tokenizer's bytes (to tell two tokenizers apart, not a seal).
std::string fingerprint(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return fmt::format("{:016x}", h);
}

std::string describe_vocabulary(const std::string& v) {
  if (v == "bytes") return "bytes (byte-level text)";
  if (v == "ids") return "token ids without a tokenizer (shards of another tool)";
  if (v == "synthetic") return "the synthetic recall task's tokens";
  return "the pieces of the tokenizer " + v.substr(v.find(' ') + 1);
}

}  // namespace

std::string vocabulary_of(bool bytes, bool synthetic, const std::string& tokenizer) {
  if (synthetic) return "synthetic";
  if (bytes) return "bytes";
  return tokenizer.empty() ? "ids" : "tokenizer " + fingerprint(read_file(tokenizer));
}

std::optional<TokenMeaning> load_token_meaning(const OpenedCheckpoint& ck) {
  const nlohmann::json marker = read_marker(kCheckpointFolder, ck);
  if (marker.is_null() || !marker.contains("vocabulary")) return std::nullopt;
  const std::string dir = ck.path(), path = ck.shown(kCheckpointFolder.marker);
  TokenMeaning m;
  m.vocabulary = state_string(marker, "vocabulary", path);
  m.doc_start = int(state_int(marker, "doc_start", -1, INT_MAX, path));
  if (m.vocabulary.rfind("tokenizer ", 0) == 0) {
    LASP_CHECK(ck.has("tokenizer.model"), "{}: the checkpoint was trained on {}, but its tokenizer.model is missing: "
               "without it its ids cannot be read as text. Put the tokenizer.model back", dir,
               describe_vocabulary(m.vocabulary));
    const std::string found = "tokenizer " + fingerprint(ck.read("tokenizer.model"));
    LASP_CHECK(found == m.vocabulary, "{}: its tokenizer.model is not the one it was trained with ({} where the "
               "checkpoint says {})", dir, found, m.vocabulary);
  }
  return m;
}

void check_vocabulary(const std::string& dir, const std::optional<TokenMeaning>& saved, const std::string& vocabulary,
                      const std::string& data) {
  LASP_CHECK(!saved || saved->vocabulary == vocabulary, "{} was trained on {}, but {} holds {}: the same ids would "
             "mean other tokens", dir, describe_vocabulary(saved ? saved->vocabulary : ""), data,
             describe_vocabulary(vocabulary));
}

std::optional<int> doc_start_of(const std::string& dir, const std::optional<TokenMeaning>& saved,
                                std::optional<int> flag) {
  if (!saved) return flag;
  LASP_CHECK(!flag || *flag == saved->doc_start, "--doc-start {} contradicts the checkpoint {}, trained with "
             "documents opening at {} (drop the flag to use it)", *flag, dir,
             saved->doc_start < 0 ? std::string("no token (one stream)") : "token " + std::to_string(saved->doc_start));
  return saved->doc_start;
}

ModelConfig load_checkpoint_config(const std::string& dir) { return load_checkpoint_config(OpenedCheckpoint(dir)); }

ModelConfig load_checkpoint_config(const OpenedCheckpoint& ck) {
  const std::string dir = ck.path();
  LASP_CHECK(ck.has("config.json"), "{}: not a checkpoint: it has no config.json", dir);
  ModelConfig config = ck.named([&] { return ModelConfig::load(ck.fd_path("config.json")); });
  // Lightning's per-head decay follows the paper's ALiBi slopes since checkpoints carry their marker; before,
  // a head count that is not a power of two got other rates: such weights were trained for another model.
  const int H = config.num_attention_heads;
  const bool changed_meaning = config.linear.decay == Decay::lightning && (H & (H - 1)) != 0 &&
                               config.layer_types.find('L') != std::string::npos;
  LASP_CHECK(!changed_meaning || !read_marker(kCheckpointFolder, ck).is_null(), "{}: a checkpoint of an older lasp "
             "with lightning decay and {} heads: that lasp gave head h the rate 2^(-8(h+1)/{}), where the paper's "
             "code (and lasp now) takes the ALiBi slopes, so these weights belong to another model and are not "
             "loaded. Train it again", dir, H, H);
  return config;
}

void load_checkpoint_weights(const std::string& dir, const ParamLayout& layout, std::vector<float>& params) {
  load_checkpoint_weights(OpenedCheckpoint(dir), layout, params);
}

void load_checkpoint_weights(const OpenedCheckpoint& ck, const ParamLayout& layout, std::vector<float>& params) {
  LASP_CHECK(ck.has("model.safetensors"), "{}: not a checkpoint: it has no model.safetensors", ck.path());
  ck.named([&] {
    const SafetensorsFile file = SafetensorsFile::open(ck.fd_path("model.safetensors"));
    read_tensors(file, layout, params, "");
    for (const auto& [name, info] : file.tensors()) {
      bool known = false;
      for (const TensorSpec& t : layout.specs()) known = known || t.name == name;
      LASP_CHECK(known, "{}: tensor '{}' is not part of the model that config.json describes", file.path(), name);
    }
  });
}

TrainerState load_trainer_state(const OpenedCheckpoint& ck) {
  LASP_CHECK(ck.has("trainer_state.json") && ck.has("optimizer.safetensors"),
             "--resume {}: no optimizer.safetensors / trainer_state.json there (a checkpoint saved by lasp train)",
             ck.path());
  return parse_trainer_state(ck.read("trainer_state.json"), ck.shown("trainer_state.json"));
}

TrainerState load_optimizer_state(const OpenedCheckpoint& ck, const ParamLayout& layout, std::vector<float>& m,
                                  std::vector<float>& v, std::vector<float>& params) {
  const TrainerState state = load_trainer_state(ck);
  ck.named([&] {
    const SafetensorsFile file = SafetensorsFile::open(ck.fd_path("optimizer.safetensors"));
    read_tensors(file, layout, m, "m.");
    read_tensors(file, layout, v, "v.");
    if (file.has("w." + layout.specs().front().name)) read_tensors(file, layout, params, "w.");  // bf16 weights' masters
  });
  return state;
}

}  // namespace lasp
