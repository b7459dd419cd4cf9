// parse_trainer_state (trainer_state.json, the resume state) on arbitrary text; every accepted state must
// survive to_json -> parse unchanged, and its sampler string either restore a WindowSampler or be refused.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "train/checkpoint.h"
#include "train/data.h"

namespace {

struct Zeros final : lasp::TokenSource {  // a token source to restore the sampler on
  int64_t size() const override { return 1000; }
  int vocab_size() const override { return 1; }
  void read(int64_t, int64_t count, int* out) const override { std::fill(out, out + count, 0); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lasp::TrainerState state;
  try {
    state = lasp::parse_trainer_state(text, "trainer_state.json");
  } catch (const lasp::Error&) {
    return 0;
  }
  const std::string once = state.to_json().dump();
  try {
    const std::string twice = lasp::parse_trainer_state(once, "round trip").to_json().dump();
    if (twice != once) {
      std::fprintf(stderr, "trainer state round trip changed it:\n  %s\n  %s\n", once.c_str(), twice.c_str());
      std::abort();
    }
  } catch (const lasp::Error& e) {
    std::fprintf(stderr, "trainer state round trip: its own to_json() is refused: %s\n", e.what());
    std::abort();
  }
  static const Zeros zeros;
  lasp::WindowSampler sampler(zeros, 16, 2, 1);
  try {
    sampler.restore(state.sampler);
    sampler.next();
  } catch (const lasp::Error&) {
  }
  return 0;
}
