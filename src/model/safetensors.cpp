#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include <fmt/ranges.h>

#include "core/check.h"
#include "core/file.h"
#include "kernels/bf16.h"

namespace lasp {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeader = 100u << 20;  // 100 MiB, as the reference implementation
constexpr int kMaxDepth = 64;                // a valid header nests 3 deep

// Element size of a safetensors dtype, 0 if unknown.
size_t dtype_size(const std::string& dt) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  auto it = sizes.find(dt);
  return it == sizes.end() ? 0 : it->second;
}

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

// Maximum bracket nesting of a JSON text (outside strings), stopping early past `limit`.
int json_depth(const char* p, size_t n, int limit) {
  int depth = 0, worst = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      worst = std::max(worst, ++depth);
      if (worst > limit) return worst;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return worst;
}

uint64_t load_u64_le(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint64_t(uint8_t(p[i]));
  return v;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: renormalize
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    bits = sign | uint32_t(112 - e) << 23 | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.bytes_ = read_file(path);
  auto bad = [&](const std::string& what) -> Error { return Error(fmt::format("safetensors {}: {}", path, what)); };

  const size_t size = f.bytes_.size();
  if (size < 8) throw bad(fmt::format("file is {} bytes, shorter than the 8-byte header length", size));
  const uint64_t n = load_u64_le(f.bytes_.data());
  if (n == 0) throw bad("header length is 0");
  if (n > kMaxHeader) throw bad(fmt::format("header length {} is larger than the {} bytes allowed", n, kMaxHeader));
  if (n > size - 8)
    throw bad(fmt::format("header length {} runs past the end of the file ({} bytes after the length)", n, size - 8));
  f.data_start_ = 8 + size_t(n);
  const size_t data_size = size - f.data_start_;
  const char* header_text = f.bytes_.data() + 8;

  if (json_depth(header_text, size_t(n), kMaxDepth) > kMaxDepth)
    throw bad(fmt::format("header JSON nests deeper than {} levels", kMaxDepth));
  json header;
  try {
    header = json::parse(header_text, header_text + n);
  } catch (const json::exception& e) {
    throw bad(fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) throw bad(fmt::format("header is a JSON {}, expected an object", header.type_name()));

  std::vector<std::pair<size_t, size_t>> spans;   // (begin, end) of non-empty tensors
  std::vector<const std::string*> span_names;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw bad(fmt::format("__metadata__ is a JSON {}, expected an object", entry.type_name()));
      f.metadata_ = entry;
      continue;
    }
    auto bad_entry = [&](const std::string& what) { return bad(fmt::format("tensor '{}': {}", name, what)); };
    if (!entry.is_object()) throw bad_entry(fmt::format("entry is a JSON {}, expected an object", entry.type_name()));
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!entry.contains(key)) throw bad_entry(fmt::format("missing '{}'", key));
    TensorInfo info;

    const json& dt = entry["dtype"];
    if (!dt.is_string()) throw bad_entry(fmt::format("dtype is a JSON {}, expected a string", dt.type_name()));
    info.dtype = dt.get<std::string>();
    const size_t elem = dtype_size(info.dtype);
    if (elem == 0) throw bad_entry(fmt::format("unknown dtype '{}'", info.dtype));

    const json& sh = entry["shape"];
    if (!sh.is_array()) throw bad_entry(fmt::format("shape is a JSON {}, expected an array", sh.type_name()));
    // Element count, saturating: anything past data_size cannot match the offsets anyway.
    const uint64_t cap = std::numeric_limits<uint64_t>::max() / 16;
    uint64_t count = 1;
    for (const json& d : sh) {
      if (!d.is_number_integer()) throw bad_entry(fmt::format("shape has a {} entry, expected integers", d.type_name()));
      if (d.is_number_unsigned() ? d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())
                                 : d.get<int64_t>() < 0)
        throw bad_entry(fmt::format("shape {} has a negative or too large dimension", sh.dump()));
      const auto v = d.get<int64_t>();
      info.shape.push_back(v);
      count = (v != 0 && count > cap / uint64_t(v)) ? cap : count * uint64_t(v);
    }

    const json& off = entry["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad_entry(fmt::format("data_offsets = {}, expected [begin, end] with non-negative integers",
                                  off.dump().substr(0, 200)));
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      throw bad_entry(fmt::format("data_offsets [{}, {}] must satisfy begin <= end <= {} (the data section size)",
                                  b, e, data_size));
    const uint64_t want = count >= cap ? cap : count * elem;
    if (e - b != want)
      throw bad_entry(fmt::format("data_offsets [{}, {}] hold {} bytes, but shape {} of {} needs {}", b, e, e - b,
                                  shape_str(info.shape), info.dtype,
                                  count >= cap ? std::string("more than the file holds") : std::to_string(want)));
    info.begin = size_t(b);
    info.end = size_t(e);
    if (e > b) {
      spans.emplace_back(info.begin, info.end);
      span_names.push_back(&name);
    }
    f.tensors_.emplace(name, std::move(info));
  }

  // The non-empty spans, sorted, must tile the data section exactly: no overlap, no gap, nothing after the
  // last one. (A header length one short still parses, as JSON ignores the padding spaces, but shifts every
  // tensor by a byte; the end check catches it.)
  std::vector<size_t> order(spans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spans[a] < spans[b]; });
  size_t covered = 0;  // the data section is tiled up to here
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& cur = spans[order[i]];
    if (cur.first < covered)
      throw bad(fmt::format("tensors '{}' and '{}' [{}, {}] overlap", *span_names[order[i - 1]], *span_names[order[i]],
                            cur.first, cur.second));
    if (cur.first > covered)
      throw bad(fmt::format("bytes [{}, {}) of the data section belong to no tensor (before '{}'): the tensors must "
                            "fill it exactly", covered, cur.first, *span_names[order[i]]));
    covered = cur.second;
  }
  if (covered != data_size)
    throw bad(fmt::format("the tensors end at byte {} of the data section but the file holds {} bytes after the "
                          "header: a wrong header length, or bytes that belong to no tensor", covered, data_size));
  return f;
}

void SafetensorsFile::read(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw Error(fmt::format("safetensors {}: no tensor '{}' (expected shape {})", path_, name, shape_str(shape)));
  const TensorInfo& t = it->second;
  if (t.shape != shape)
    throw Error(fmt::format("safetensors {}: tensor '{}' has shape {}, expected {}", path_, name, shape_str(t.shape),
                            shape_str(shape)));
  const char* src = bytes_.data() + data_start_ + t.begin;
  const size_t elem = dtype_size(t.dtype);
  const size_t n = (t.end - t.begin) / elem;
  if (t.dtype == "F32") {
    if (n) std::memcpy(out, src, n * 4);
  } else if (t.dtype == "BF16") {
    for (size_t i = 0; i < n; ++i) {
      uint32_t bits = uint32_t(uint8_t(src[2 * i])) << 16 | uint32_t(uint8_t(src[2 * i + 1])) << 24;
      std::memcpy(out + i, &bits, 4);
    }
  } else if (t.dtype == "F16") {
    for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(uint16_t(uint8_t(src[2 * i]) | uint8_t(src[2 * i + 1]) << 8));
  } else if (t.dtype == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double d;
      std::memcpy(&d, src + 8 * i, 8);
      out[i] = float(d);
    }
  } else {
    throw Error(fmt::format("safetensors {}: tensor '{}' has dtype {}, expected one of F32, BF16, F16, F64", path_,
                            name, t.dtype));
  }
}

std::vector<float> SafetensorsFile::read(const std::string& name, const std::vector<int64_t>& shape) const {
  size_t n = 1;
  for (int64_t d : shape) {
    LASP_CHECK(d >= 0, "safetensors {}: tensor '{}': expected shape {} has a negative dimension", path_, name,
               shape_str(shape));
    n *= size_t(d);
  }
  // Check the shape before allocating, so a wrong expectation cannot ask for absurd memory.
  auto it = tensors_.find(name);
  if (it != tensors_.end() && it->second.shape == shape) {
    std::vector<float> out(n);
    read(name, shape, out.data());
    return out;
  }
  read(name, shape, nullptr);  // throws the missing / wrong-shape error
  return {};
}

void safetensors_write(const std::string& path, const std::vector<NamedTensor>& tensors, const nlohmann::json& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.is_null()) {
    LASP_CHECK(metadata.is_object(), "safetensors_write {}: metadata must be a JSON object, got a {}", path,
               metadata.type_name());
    if (!metadata.empty()) {
      auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
      for (auto& [k, v] : metadata.items()) {
        LASP_CHECK(v.is_string(), "safetensors_write {}: metadata '{}' is a {}, the format needs strings", path, k,
                   v.type_name());
        m[k] = v.get<std::string>();
      }
    }
  }
  std::set<std::string> seen;
  size_t offset = 0;
  for (const auto& t : tensors) {
    LASP_CHECK(!t.name.empty() && t.name != "__metadata__", "safetensors_write {}: invalid tensor name '{}'", path,
               t.name);
    LASP_CHECK(seen.insert(t.name).second, "safetensors_write {}: tensor '{}' appears twice", path, t.name);
    size_t n = 1;
    for (int64_t d : t.shape) {
      LASP_CHECK(d >= 0, "safetensors_write {}: tensor '{}' has shape {}", path, t.name, shape_str(t.shape));
      n *= size_t(d);
    }
    LASP_CHECK(n == 0 || t.data != nullptr, "safetensors_write {}: tensor '{}' has no data", path, t.name);
    const size_t bytes = (t.bf16 ? 2 : 4) * n;
    header[t.name] = {{"dtype", t.bf16 ? "BF16" : "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string bytes;
  bytes.reserve(8 + h.size() + offset);
  for (int i = 0; i < 8; ++i) bytes.push_back(char(uint64_t(h.size()) >> (8 * i) & 0xff));
  bytes += h;
  for (const auto& t : tensors) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= size_t(d);
    if (n && t.bf16) {
      std::vector<bf16> rounded(n);
      to_bf16(rounded.data(), t.data, n);
      bytes.append(reinterpret_cast<const char*>(rounded.data()), 2 * n);  // little-endian host
    } else if (n) {
      bytes.append(reinterpret_cast<const char*>(t.data), 4 * n);
    }
  }
  write_file_atomic(path, bytes);
}

}  // namespace lasp
