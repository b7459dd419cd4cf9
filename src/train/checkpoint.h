// A checkpoint is a folder (MODEL.md): config.json + model.safetensors (fp32, or bf16 with --save-dtype bf16;
// Hugging Face names), and for a resumable training run optimizer.safetensors (the AdamW moments, "m.<name>"
// and "v.<name>"; with bf16 weights also the fp32 master weights "w.<name>", so that a resume is exact) and
// trainer_state.json (step, data position, run layout), and lasp_checkpoint.json, the marker that says it is
// a lasp checkpoint (its format version). The folder is written whole (core/folder.h): under a temporary name
// and swapped in, so a crash leaves either the old checkpoint or the new one, never a mix; a save only ever
// replaces a previous lasp checkpoint (its marker, and nothing but its files) or an empty folder.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/folder.h"
#include "model/config.h"
#include "model/params.h"

namespace lasp {

// trainer_state.json: where a training run stands.
struct TrainerState {
  int step = 0;              // the last completed optimizer step, in [0, INT_MAX - 1]
  std::string sampler;       // the window sampler's state (train/data.h)
  int sp_size = 1, dp_size = 1, batch = 1, seq_len = 1;
  std::string sp_layout, data;
  uint64_t seed = 0;
  std::string precision;     // "fp32" | "bf16"; empty: not recorded (checkpoints of an older lasp)
  nlohmann::json to_json() const;
};
// Parses trainer_state.json strictly: every key present with the right JSON type and in range (integers
// must be JSON integers, no fractions, no wrap); throws lasp::Error naming `path`, the key, what was expected
// and what was found.
TrainerState parse_trainer_state(const std::string& text, const std::string& path);

struct OptimizerState {
  const std::vector<float>* m = nullptr;  // AdamW moments in the layout of the parameters
  const std::vector<float>* v = nullptr;
  TrainerState trainer;
};

// Bytes a checkpoint of this layout takes on disk (with the optimizer: weights + two moments, + the fp32
// master weights when the weights are bf16).
uint64_t checkpoint_bytes(const ParamLayout& layout, bool with_optimizer, bool bf16_weights = false);

// Before training: takes the lock of `dir` for the run (core/folder.h FolderLock: a second run saving there is
// refused, naming the holder), and checks that `dir` can take a checkpoint of `bytes` (throws lasp::Error
// saying what is wrong otherwise): dir is absent, an empty folder or a previous lasp checkpoint (its marker,
// nothing but its files); its parent folder exists and is writable; that filesystem has room for a whole new
// checkpoint beside the old one. Removes stale temporary folders of earlier saves whose process is gone.
[[nodiscard]] FolderLock check_checkpoint_target(const std::string& dir, uint64_t bytes);

// A checkpoint opened for reading (core/folder.h OpenedFolder): its folder and files are opened at once and
// everything below reads through them, so that a save of another run swapping a new checkpoint in at the
// path cannot hand a reader (eval, generate, resume) the files of two checkpoints. Each function that takes a
// path opens the checkpoint itself.
class OpenedCheckpoint : public OpenedFolder {
 public:
  explicit OpenedCheckpoint(const std::string& dir);
};

// What a checkpoint's token ids mean, kept in its marker (checkpoints of older lasp versions and of other
// writers do not say): the vocabulary it was trained on and the token that opened a document.
struct TokenMeaning {
  std::string vocabulary;  // "bytes", "tokenizer <checksum of its tokenizer.model>", "ids" (shards of another tool)
                           // or "synthetic"
  int doc_start = -1;      // -1: one stream
};
// The vocabulary that data's ids are in (see above); tokenizer: the .model beside it, if any.
std::string vocabulary_of(bool bytes, bool synthetic, const std::string& tokenizer);
// The checkpoint's TokenMeaning, or nothing when it does not say.
std::optional<TokenMeaning> load_token_meaning(const OpenedCheckpoint& checkpoint);
// Throws unless a checkpoint that says its vocabulary was trained on `vocabulary` (what data holds), naming both.
void check_vocabulary(const std::string& dir, const std::optional<TokenMeaning>& saved, const std::string& vocabulary,
                      const std::string& data);
// The document token of a run on checkpoint dir: --doc-start if given (an error when the checkpoint says
// another), else the checkpoint's, else (it does not say) nothing.
std::optional<int> doc_start_of(const std::string& dir, const std::optional<TokenMeaning>& saved,
                                std::optional<int> flag);

// Refuses non-finite values (names the tensor), then writes the folder as described above. On failure the
// temporary folder is removed, dir is untouched and lasp::Error says why. bf16_weights: model.safetensors
// in BF16, rounded to nearest even (half the size; for eval, generate and export). tokenizer: a SentencePiece
// model copied in as tokenizer.model (the data's, so that generate and eval speak text).
void save_checkpoint(const std::string& dir, const ModelConfig& config, const ParamLayout& layout,
                     const std::vector<float>& params, const OptimizerState* optimizer = nullptr,
                     bool bf16_weights = false, const std::string& tokenizer = "",
                     const std::optional<TokenMeaning>& meaning = {});
ModelConfig load_checkpoint_config(const OpenedCheckpoint& checkpoint);
ModelConfig load_checkpoint_config(const std::string& dir);
// Reads every tensor of the layout into params; a missing or mis-shaped tensor (a config that contradicts
// the weights) is an error naming the file, the tensor and both shapes. Extra tensors are an error too, and
// so is a non-finite value (naming the tensor).
void load_checkpoint_weights(const OpenedCheckpoint& checkpoint, const ParamLayout& layout, std::vector<float>& params);
void load_checkpoint_weights(const std::string& dir, const ParamLayout& layout, std::vector<float>& params);
// Reads the AdamW moments and trainer_state.json; throws if the checkpoint has none. A checkpoint with bf16
// weights also holds their fp32 masters: they replace params (read by load_checkpoint_weights, rounded).
TrainerState load_optimizer_state(const OpenedCheckpoint& checkpoint, const ParamLayout& layout, std::vector<float>& m,
                                  std::vector<float>& v, std::vector<float>& params);
// trainer_state.json alone; throws if the checkpoint has none.
TrainerState load_trainer_state(const OpenedCheckpoint& checkpoint);

}  // namespace lasp
