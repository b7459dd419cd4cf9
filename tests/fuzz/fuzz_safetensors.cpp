// SafetensorsFile::open on arbitrary bytes, then read() of every tensor it accepts, at the shape it declares.
#include <cstring>

#include "core/check.h"
#include "fuzz_util.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static lasp_fuzz::MemFile file;
  file.write(data, size);
  try {
    const lasp::SafetensorsFile f = lasp::SafetensorsFile::open(file.path());
    uint64_t header = 0;  // open() accepted it, so the 8-byte length is there
    std::memcpy(&header, data, 8);
    for (const auto& [name, t] : f.tensors()) {
      size_t n = 1;
      bool big = false;
      for (int64_t d : t.shape) big = big || __builtin_mul_overflow(n, size_t(d), &n);
      if (big || n > (16u << 20) / sizeof(float)) continue;  // over 16 MB of floats: skip, not a finding
      try {
        const std::vector<float> v = f.read(name, t.shape);
        if (v.size() != n) std::abort();
        // F32 is copied as is: the floats must be the bytes at data_offsets.
        if (t.dtype == "F32" && n && std::memcmp(v.data(), data + 8 + header + t.begin, 4 * n) != 0) std::abort();
      } catch (const lasp::Error&) {
        if (t.dtype == "F32" || t.dtype == "BF16" || t.dtype == "F16" || t.dtype == "F64") std::abort();
      }
      std::vector<int64_t> wrong = t.shape;
      wrong.push_back(2);
      try {
        f.read(name, wrong);
        std::abort();  // a shape that is not the declared one must be refused
      } catch (const lasp::Error&) {
      }
    }
  } catch (const lasp::Error&) {
  }
  return 0;
}
