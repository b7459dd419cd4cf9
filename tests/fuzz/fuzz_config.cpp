// ModelConfig::from_json on arbitrary JSON, and the round trip to_json -> from_json of every accepted config.
#include <cstdio>
#include <cstdlib>

#include "core/check.h"
#include "fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: nothing of lasp's to test
  }
  lasp::ModelConfig c;
  try {
    c = lasp::ModelConfig::from_json(j);
  } catch (const lasp::Error&) {
    return 0;
  }
  // Saved and loaded again, an accepted config must come back the same.
  const std::string once = c.to_json().dump();
  try {
    const std::string twice = lasp::ModelConfig::from_json(nlohmann::json::parse(once)).to_json().dump();
    if (twice != once) {
      std::fprintf(stderr, "config round trip changed it:\n  %s\n  %s\n", once.c_str(), twice.c_str());
      std::abort();
    }
  } catch (const lasp::Error& e) {
    std::fprintf(stderr, "config round trip: its own to_json() is refused: %s\n  %s\n", e.what(), once.c_str());
    std::abort();
  }
  // load() = read the file + parse + from_json: it must accept the same text.
  static lasp_fuzz::MemFile file;
  file.write(data, size);
  if (lasp::ModelConfig::load(file.path()).to_json().dump() != once) std::abort();
  return 0;
}
