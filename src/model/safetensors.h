// Reading and writing safetensors files (design/MODEL.md): an 8-byte little-endian header length n, n bytes
// of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data.
// open() validates the whole header, so that no later read can run outside the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lasp {

struct TensorInfo {
  std::string dtype;           // "F32", "BF16", "F16", "F64", or another safetensors dtype (I64, U8, ...)
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;   // byte offsets relative to the data section
};

class SafetensorsFile {
 public:
  // Reads the whole file and validates the header; every problem throws lasp::Error naming the path.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const nlohmann::json& metadata() const { return metadata_; }  // the "__metadata__" object, or {} if absent
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }

  // Copies a tensor as fp32 (F32 as is; BF16, F16, F64 converted). Throws if it is missing, if its dtype is
  // not one of those four, or if its shape differs from `shape` (naming path, tensor, expected and found shape).
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out) const;
  std::vector<float> read(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  std::string path_;
  std::string bytes_;       // the whole file
  size_t data_start_ = 0;   // 8 + header length
  std::map<std::string, TensorInfo> tensors_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;  // product(shape) floats
  bool bf16 = false;  // stored as BF16 (rounded to nearest even), else F32
};

// Writes F32 (or BF16) tensors, in the given order and contiguous, after a header JSON padded with spaces to a multiple
// of 8 bytes (so the data section is 8-byte aligned), atomically (write_file_atomic). metadata: null or an
// object whose values are strings (the safetensors format requires string values), stored as "__metadata__".
void safetensors_write(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const nlohmann::json& metadata = {});

}  // namespace lasp
