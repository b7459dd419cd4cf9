// The markers lasp reads from folders: tokens.json (tokenize's manifest: read_marker, then check_shard_set
// against two shards of a --data glob, and whether tokenize may replace the folder) and lasp_checkpoint.json
// (read_marker, load_token_meaning through an OpenedCheckpoint), on arbitrary text. Only lasp::Error is an
// expected rejection; an accepted checkpoint marker must say a vocabulary and a doc_start >= -1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/check.h"
#include "core/folder.h"
#include "train/checkpoint.h"
#include "train/token_manifest.h"

namespace {

namespace fs = std::filesystem;

// Folders in memory (/dev/shm): tok/ with tokens.json and two shard names, ckpt/ with lasp_checkpoint.json.
char g_root[] = "/dev/shm/lasp-fuzz-manifest-XXXXXX";  // a char array: alive in atexit, unlike a std::string

const std::string& root() {
  static const std::string dir = [] {
    if (!::mkdtemp(g_root)) std::abort();
    fs::create_directory(std::string(g_root) + "/tok");
    fs::create_directory(std::string(g_root) + "/ckpt");
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(g_root, ec);
    });
    return std::string(g_root);
  }();
  return dir;
}

void put(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string tok = root() + "/tok", ckpt = root() + "/ckpt";
  put(tok + "/tokens.json", text);
  put(ckpt + "/lasp_checkpoint.json", text);

  const nlohmann::json manifest = lasp::read_marker(lasp::tokens_folder(), tok);
  if (!manifest.is_null() && !manifest.is_object()) std::abort();
  try {
    lasp::check_shard_set(tok + "/tokens_*.bin", {{tok + "/tokens_000000.bin", 5}, {tok + "/tokens_000001.bin", 7}});
  } catch (const lasp::Error&) {
  }
  try {
    lasp::check_replaceable(lasp::tokens_folder(), tok);
  } catch (const lasp::Error&) {
  }
  try {
    const lasp::OpenedCheckpoint opened(ckpt);
    const std::optional<lasp::TokenMeaning> meaning = lasp::load_token_meaning(opened);
    if (meaning && meaning->doc_start < -1) {
      std::fprintf(stderr, "accepted doc_start %d\n", meaning->doc_start);
      std::abort();
    }
  } catch (const lasp::Error&) {
  }
  return 0;
}
