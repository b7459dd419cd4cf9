// safetensors: round trip, files written by tools/reference.py (and ours read back by it), BF16/F16/F64, and
// every corruption refused with lasp::Error, never a crash.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <dirent.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/check.h"
#include "core/file.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "testing.h"

namespace {

using lasp::SafetensorsFile;
using nlohmann::json;

using lasp::testing::TempDir;

// The repository root, from this file's path (absolute under CMake, relative to the cwd in a manual build).
std::string repo_root() {
  std::string f = __FILE__;
  auto slash = f.rfind("/tests/");
  std::string root = slash == std::string::npos ? "." : f.substr(0, slash);
  if (root.empty()) root = ".";
  if (f.rfind("tests/", 0) == 0) root = ".";
  return root;
}

std::string tensor_header(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                          size_t b, size_t e) {
  return json{{name, {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {b, e}}}}}.dump();
}

// A file from a header text and data bytes, with an explicit header length.
std::string raw_file(const std::string& header, const std::string& data, uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}
std::string raw_file(const std::string& header, const std::string& data) { return raw_file(header, data, header.size()); }

void put(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Opens path and reads every tensor whose dtype converts; true if all of it succeeded, false on lasp::Error.
bool opens_and_reads(const std::string& path) {
  try {
    SafetensorsFile f = SafetensorsFile::open(path);
    for (const auto& [name, info] : f.tensors()) f.read(name, info.shape);
    return true;
  } catch (const lasp::Error&) {
    return false;
  }
}

struct Sample {
  std::vector<std::string> names{"model.embed_tokens.weight", "model.norm.weight", "scalar", "empty", "odd"};
  std::vector<std::vector<int64_t>> shapes{{7, 5}, {5}, {}, {0, 3}, {3, 1, 3}};
  std::vector<std::vector<float>> values;
  Sample() {
    for (size_t i = 0; i < names.size(); ++i) {
      size_t n = 1;
      for (auto d : shapes[i]) n *= size_t(d);
      values.push_back(lasp::testing::random_vector(n, 100 + uint32_t(i)));
    }
  }
  std::vector<lasp::NamedTensor> tensors() const {
    std::vector<lasp::NamedTensor> t;
    for (size_t i = 0; i < names.size(); ++i) t.push_back({names[i], shapes[i], values[i].data()});
    return t;
  }
  void write(const std::string& path) const { lasp::safetensors_write(path, tensors(), {{"format", "pt"}, {"step", "12"}}); }
};

// --save-dtype bf16: BF16 tensors hold each value rounded to nearest even (ties to the even mantissa), 2 bytes
// each, and read back as those values; F32 tensors beside them are untouched.
TEST(Safetensors, Bf16TensorsRoundToNearestEven) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  // 1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7: to the even 1. 1 + 3 * 2^-8 lies halfway between
  // 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6. 1 + 2^-8 + 2^-20 is past halfway: up.
  const std::vector<float> values = {1.f + 0x1p-8f, 1.f + 3 * 0x1p-8f, 1.f + 0x1p-8f + 0x1p-20f, -3.14159f, 0.f,
                                     0x1p-130f, 65504.f};
  const std::vector<float> expected = {1.f, 1.f + 0x1p-6f, 1.f + 0x1p-7f, -3.140625f, 0.f, 0x1p-130f, 65536.f};
  const std::vector<float> exact = {0.5f, 0.25f};
  lasp::safetensors_write(path, {{"rounded", {7}, values.data(), true}, {"exact", {2}, exact.data()}});
  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.tensors().at("rounded").dtype, "BF16");
  EXPECT_EQ(f.tensors().at("rounded").end - f.tensors().at("rounded").begin, 14u);
  EXPECT_EQ(f.tensors().at("exact").dtype, "F32");
  const std::vector<float> got = f.read("rounded", {7});
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(got[i], expected[i]) << "value " << values[i];
  EXPECT_EQ(f.read("exact", {2}), exact);
}

TEST(Safetensors, RoundTrip) {
  TempDir dir;
  Sample s;
  const std::string path = dir.file("model.safetensors");
  s.write(path);
  // No temporary file left behind.
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});

  // Layout: header length a multiple of 8, tensors contiguous in the given order.
  std::string bytes = lasp::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  size_t expect_size = 8 + n;
  for (auto& v : s.values) expect_size += 4 * v.size();
  EXPECT_EQ(bytes.size(), expect_size);

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), (json{{"format", "pt"}, {"step", "12"}}));
  EXPECT_EQ(f.tensors().size(), s.names.size());
  size_t offset = 0;
  for (size_t i = 0; i < s.names.size(); ++i) {
    ASSERT_TRUE(f.has(s.names[i]));
    const auto& info = f.tensors().at(s.names[i]);
    EXPECT_EQ(info.dtype, "F32");
    EXPECT_EQ(info.shape, s.shapes[i]);
    EXPECT_EQ(info.begin, offset);
    offset += 4 * s.values[i].size();
    EXPECT_EQ(info.end, offset);
    EXPECT_EQ(f.read(s.names[i], s.shapes[i]), s.values[i]);  // bit exact
    std::vector<float> out(s.values[i].size() + 1, -7.f);
    f.read(s.names[i], s.shapes[i], out.data());
    EXPECT_TRUE(std::equal(s.values[i].begin(), s.values[i].end(), out.begin()));
    EXPECT_EQ(out.back(), -7.f);
  }
  EXPECT_FALSE(f.has("lm_head.weight"));

  // Overwriting an existing file is atomic too, and no metadata writes no "__metadata__".
  float one = 1.f;
  lasp::safetensors_write(path, {{"x", {1}, &one}});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
  SafetensorsFile g = SafetensorsFile::open(path);
  EXPECT_EQ(g.tensors().size(), 1u);
  EXPECT_TRUE(g.metadata().empty());
  EXPECT_EQ(g.read("x", {1}), std::vector<float>{1.f});

  // An empty file list is a valid file.
  lasp::safetensors_write(path, {});
  EXPECT_TRUE(SafetensorsFile::open(path).tensors().empty());
}

TEST(Safetensors, WriteRefusesBadInput) {
  TempDir dir;
  float x[2] = {1, 2};
  const std::string path = dir.file("a.safetensors");
  EXPECT_THROW(lasp::safetensors_write(path, {{"a", {2}, x}, {"a", {2}, x}}), lasp::Error);
  EXPECT_THROW(lasp::safetensors_write(path, {{"__metadata__", {2}, x}}), lasp::Error);
  EXPECT_THROW(lasp::safetensors_write(path, {{"a", {-2}, x}}), lasp::Error);
  EXPECT_THROW(lasp::safetensors_write(path, {{"a", {2}, x}}, {{"step", 3}}), lasp::Error);
  EXPECT_THROW(lasp::safetensors_write(dir.file("no/such/folder/a.safetensors"), {{"a", {2}, x}}), lasp::Error);
  EXPECT_TRUE(dir.entries().empty());
}

// Runs tools/reference.py init on lasp's default config and reads every parameter of MODEL.md's table; then
// the reference reads a file we wrote and reports the same sums.
TEST(Safetensors, ReadsTheReferenceCheckpoint) {
  TempDir dir;
  const std::string ref = repo_root() + "/tools/reference.py";
  ASSERT_EQ(access(ref.c_str(), R_OK), 0) << "cannot find " << ref;
  lasp::ModelConfig c;
  c.save(dir.file("config.json"));
  std::string cmd = "/usr/bin/python3 '" + ref + "' init --config '" + dir.file("config.json") + "' --out '" +
                    dir.path + "/ckpt' --seed 1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "failed: " << cmd;

  SafetensorsFile f = SafetensorsFile::open(dir.path + "/ckpt/model.safetensors");
  EXPECT_EQ(f.metadata().value("format", ""), "pt");
  const int64_t V = c.vocab_size, D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads,
                d = c.head_dim(), Hkv = c.num_key_value_heads;
  std::map<std::string, std::vector<int64_t>> shapes{{"model.embed_tokens.weight", {V, D}},
                                                     {"model.norm.weight", {D}},
                                                     {"lm_head.weight", {V, D}}};
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const bool lin = c.layer_types[i] == 'L';
    const int64_t kv = lin ? H * d : Hkv * d;
    shapes[p + "input_layernorm.weight"] = {D};
    shapes[p + "self_attn.q_proj.weight"] = {H * d, D};
    shapes[p + "self_attn.k_proj.weight"] = {kv, D};
    shapes[p + "self_attn.v_proj.weight"] = {kv, D};
    shapes[p + "self_attn.o_proj.weight"] = {D, H * d};
    if (lin) shapes[p + "self_attn.g_proj.weight"] = {H * d, D};
    if (lin) shapes[p + "self_attn.o_norm.weight"] = {d};
    shapes[p + "post_attention_layernorm.weight"] = {D};
    shapes[p + "mlp.gate_proj.weight"] = {F, D};
    shapes[p + "mlp.up_proj.weight"] = {F, D};
    shapes[p + "mlp.down_proj.weight"] = {D, F};
  }
  EXPECT_EQ(f.tensors().size(), shapes.size());
  std::vector<std::vector<float>> values;
  std::vector<lasp::NamedTensor> back;
  for (const auto& [name, shape] : shapes) {
    ASSERT_TRUE(f.has(name)) << name;
    EXPECT_EQ(f.tensors().at(name).dtype, "F32");
    values.push_back(f.read(name, shape));
    const auto& v = values.back();
    double sum = 0, sq = 0;
    for (float x : v) sum += x, sq += double(x) * x;
    const double mean = sum / double(v.size()), sd = std::sqrt(sq / double(v.size()) - mean * mean);
    if (shape.size() == 1) {  // norms: 1 + 0.1 N(0, 1)
      EXPECT_NEAR(mean, 1.0, 0.05) << name;
      EXPECT_NEAR(sd, 0.1, 0.03) << name;
    } else {  // 0.02 N(0, 1)
      EXPECT_NEAR(mean, 0.0, 0.002) << name;
      EXPECT_NEAR(sd, 0.02, 0.002) << name;
    }
  }
  size_t i = 0;
  for (const auto& [name, shape] : shapes) back.push_back({name, shape, values[i++].data()});
  // Write it back in our own format; the reference reads ours and both files hold the same values.
  const std::string ours = dir.file("ours.safetensors");
  lasp::safetensors_write(ours, back, {{"format", "pt"}});
  const std::string script = dir.file("compare.py");
  put(script,
      "import sys\n"
      "sys.path.insert(0, sys.argv[1])\n"
      "import reference as r\n"
      "a, b = r.read_safetensors(sys.argv[2]), r.read_safetensors(sys.argv[3])\n"
      "assert sorted(a) == sorted(b), (sorted(a), sorted(b))\n"
      "for k in a:\n"
      "    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and bool((a[k] == b[k]).all()), k\n");
  cmd = "/usr/bin/python3 '" + script + "' '" + repo_root() + "/tools' '" + dir.path + "/ckpt/model.safetensors' '" +
        ours + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << "failed: " << cmd;
}

TEST(Safetensors, ReadsBf16F16F64) {
  TempDir dir;
  // BF16: the top 16 bits of the fp32 value, little-endian.
  const std::vector<float> want{1.f, -2.f, 0.5f, 3.140625f, 0.f, -0.f, INFINITY, 1e-20f};
  std::string bf16;
  std::vector<float> want_bf16;
  for (float x : want) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    bits &= 0xffff0000u;
    float t;
    std::memcpy(&t, &bits, 4);
    want_bf16.push_back(t);
    bf16.push_back(char((bits >> 16) & 0xff));
    bf16.push_back(char(bits >> 24));
  }
  // F16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), 2^-15 (subnormal), inf, -0, 0.333 (0x3555).
  const uint16_t h[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0200, 0x7c00, 0x8000, 0x3555};
  const std::vector<float> want_f16{1.f, -2.f, 65504.f, std::ldexp(1.f, -24), std::ldexp(1.f, -15), INFINITY, -0.f,
                                    0.333251953125f};
  std::string f16;
  for (uint16_t x : h) f16.push_back(char(x & 0xff)), f16.push_back(char(x >> 8));
  const double dd[] = {1.0, -1e-3, 1e30};
  std::string f64(reinterpret_cast<const char*>(dd), sizeof dd);

  json header = {{"b", {{"dtype", "BF16"}, {"shape", {2, 4}}, {"data_offsets", {0, 16}}}},
                 {"h", {{"dtype", "F16"}, {"shape", {8}}, {"data_offsets", {16, 32}}}},
                 {"d", {{"dtype", "F64"}, {"shape", {3, 1}}, {"data_offsets", {32, 56}}}},
                 {"i", {{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {56, 64}}}}};
  const std::string path = dir.file("mixed.safetensors");
  put(path, raw_file(header.dump(), bf16 + f16 + f64 + std::string(8, '\1')));
  SafetensorsFile f = SafetensorsFile::open(path);
  std::vector<float> b = f.read("b", {2, 4});
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(b[i], want_bf16[i]) << i;
    EXPECT_EQ(std::signbit(b[i]), std::signbit(want_bf16[i])) << i;
  }
  EXPECT_EQ(b[3], 3.140625f);  // exactly representable in bf16
  std::vector<float> hv = f.read("h", {8});
  for (size_t i = 0; i < want_f16.size(); ++i) {
    EXPECT_EQ(hv[i], want_f16[i]) << i;
    EXPECT_EQ(std::signbit(hv[i]), std::signbit(want_f16[i])) << i;
  }
  EXPECT_EQ(f.read("d", {3, 1}), (std::vector<float>{1.f, float(-1e-3), 1e30f}));
  EXPECT_EQ(f.tensors().at("i").dtype, "I64");
  EXPECT_THROW(f.read("i", {1}), lasp::Error);  // opens, but does not convert to fp32
}

TEST(Safetensors, ReadErrorsNameTensorAndShapes) {
  TempDir dir;
  Sample s;
  const std::string path = dir.file("model.safetensors");
  s.write(path);
  SafetensorsFile f = SafetensorsFile::open(path);
  try {
    f.read("model.embed_tokens.weight", {5, 7});
    ADD_FAILURE() << "wrong shape accepted";
  } catch (const lasp::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find("model.embed_tokens.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("[5, 7]"), std::string::npos) << m;
    EXPECT_NE(m.find("[7, 5]"), std::string::npos) << m;
  }
  try {
    f.read("lm_head.weight", {7, 5});
    ADD_FAILURE() << "missing tensor accepted";
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(f.read("model.norm.weight", {5, 1}), lasp::Error);
  EXPECT_THROW(f.read("model.norm.weight", {}), lasp::Error);
  EXPECT_THROW(f.read("model.norm.weight", {-5}), lasp::Error);
  EXPECT_THROW(f.read("model.embed_tokens.weight", {INT64_MAX, INT64_MAX}), lasp::Error);
  EXPECT_THROW(SafetensorsFile::open(dir.file("missing.safetensors")), lasp::Error);
  EXPECT_THROW(SafetensorsFile::open(dir.path), lasp::Error);  // a folder
}

TEST(Safetensors, TruncatedFilesAreRefused) {
  TempDir dir;
  Sample s;
  const std::string good = dir.file("good.safetensors");
  s.write(good);
  const std::string bytes = lasp::read_file(good);
  const std::string path = dir.file("bad.safetensors");
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    put(path, bytes.substr(0, cut));
    EXPECT_THROW(SafetensorsFile::open(path), lasp::Error) << "cut at " << cut << " of " << bytes.size();
  }
}

TEST(Safetensors, CorruptHeadersAreRefused) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::string data(64, '\0');
  auto refused = [&](const std::string& file_bytes) {
    put(path, file_bytes);
    try {
      SafetensorsFile::open(path);
    } catch (const lasp::Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      return true;
    }
    return false;
  };
  const std::string ok = tensor_header("t", "F32", {4, 4}, 0, 64);
  ASSERT_FALSE(refused(raw_file(ok, data)));

  // Header length.
  EXPECT_TRUE(refused(""));
  EXPECT_TRUE(refused("\x10\0\0"));
  EXPECT_TRUE(refused(raw_file(ok, data, 0)));
  EXPECT_TRUE(refused(raw_file(ok, data, ok.size() + data.size() + 1)));  // past EOF
  EXPECT_TRUE(refused(raw_file(ok, data, UINT64_MAX)));
  EXPECT_TRUE(refused(raw_file(ok, data, uint64_t(1) << 40)));
  EXPECT_TRUE(refused(raw_file(ok, data, ok.size() - 1)));  // cuts the JSON
  // Not JSON, or not an object.
  EXPECT_TRUE(refused(raw_file("garbage!", data)));
  EXPECT_TRUE(refused(raw_file(std::string(ok.size(), '\xff'), data)));
  EXPECT_TRUE(refused(raw_file("[1, 2, 3]", data)));
  EXPECT_TRUE(refused(raw_file("\"text\"", data)));
  EXPECT_TRUE(refused(raw_file(std::string(100000, '[') + std::string(100000, ']'), data)));
  EXPECT_TRUE(refused(raw_file(std::string(4, '\0'), data)));
  // Entries with missing fields or wrong types.
  EXPECT_TRUE(refused(raw_file(R"({"t": 3})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"shape": [16], "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": 4, "shape": [16], "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": 16, "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": ["16"], "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16.0], "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16], "data_offsets": [0]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64, 128]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16], "data_offsets": "0-64"}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16], "data_offsets": [-64, 0]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16], "data_offsets": [0.0, 64.0]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"__metadata__": [], "t": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}})", data)));
  // Unknown dtype, negative and huge dims.
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F31", {16}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "", {16}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {-4, -4}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {INT64_MAX, INT64_MAX, 4}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {1ll << 62, 4}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 64]}})", data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 64]}})", data)));
  // Offsets: reversed, past the data section, huge, and a byte count that disagrees with the shape.
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {16}, 64, 0), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {16}, 4, 68), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {16}, 0, 65), data)));
  EXPECT_TRUE(refused(raw_file(R"({"t": {"dtype": "F32", "shape": [16], "data_offsets": [18446744073709551552, 18446744073709551615]}})", data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {15}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {4, 4}, 0, 60), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "BF16", {16}, 0, 64), data)));
  EXPECT_TRUE(refused(raw_file(tensor_header("t", "F32", {0}, 0, 4), data)));
  // Overlapping tensors.
  json two = json::parse(tensor_header("a", "F32", {8}, 0, 32));
  two.update(json::parse(tensor_header("b", "F32", {8}, 28, 60)));
  EXPECT_TRUE(refused(raw_file(two.dump(), data)));
  json same = json::parse(tensor_header("a", "F32", {8}, 0, 32));
  same.update(json::parse(tensor_header("b", "F32", {8}, 0, 32)));
  EXPECT_TRUE(refused(raw_file(same.dump(), data)));
  // Adjacent tensors and empty tensors anywhere are fine.
  json fine = json::parse(tensor_header("a", "F32", {8}, 0, 32));
  fine.update(json::parse(tensor_header("b", "F32", {2, 4}, 32, 64)));
  fine.update(json::parse(tensor_header("c", "F32", {0, 5}, 16, 16)));
  EXPECT_FALSE(refused(raw_file(fine.dump(), data)));
}

// Flips bytes of a valid file at every position of the header and a few in the data: each result either opens
// and reads cleanly or throws lasp::Error. (A crash or another exception fails the test.)
TEST(Safetensors, CorruptedBytesNeverCrash) {
  TempDir dir;
  Sample s;
  const std::string good = dir.file("good.safetensors");
  s.write(good);
  const std::string bytes = lasp::read_file(good);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const std::string path = dir.file("bad.safetensors");
  int refused = 0, accepted = 0;
  for (size_t pos = 0; pos < std::min<size_t>(bytes.size(), 8 + n + 16); ++pos) {
    for (unsigned char v : {0x00, 0x01, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x7d, 0xff}) {
      std::string b = bytes;
      if (static_cast<unsigned char>(b[pos]) == v) continue;
      b[pos] = char(v);
      put(path, b);
      (opens_and_reads(path) ? accepted : refused)++;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(accepted, 0);  // e.g. digits changed inside the metadata strings
}

TEST(FileIo, ReadAndAtomicWrite) {
  TempDir dir;
  const std::string path = dir.file("x.bin");
  std::string bytes("a\0b\xff", 4);
  lasp::write_file_atomic(path, bytes);
  EXPECT_EQ(lasp::read_file(path), bytes);
  lasp::write_file_atomic(path, "");
  EXPECT_EQ(lasp::read_file(path), "");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"x.bin"});
  try {
    lasp::read_file(dir.file("nope"));
    ADD_FAILURE();
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.file("nope")), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
  try {
    lasp::write_file_atomic(dir.file("no/dir/x"), "1");
    ADD_FAILURE();
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.file("no/dir/x")), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"x.bin"});
}

}  // namespace

// The tensors must fill the data section exactly, as the reference implementation requires: a gap between
// tensors, bytes after the last one, or a header length one short (JSON ignores the padding spaces, so it
// still parses, and every tensor moves by a byte) are refused.
TEST(Safetensors, TensorsMustTileTheDataSection) {
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  const std::string data(64, '\0');
  auto error_of = [&](const std::string& bytes) -> std::string {
    put(path, bytes);
    try {
      SafetensorsFile::open(path);
    } catch (const lasp::Error& e) {
      return e.what();
    }
    return "";
  };
  json gap = json::parse(tensor_header("a", "F32", {4}, 0, 16));
  gap.update(json::parse(tensor_header("b", "F32", {8}, 32, 64)));
  EXPECT_NE(error_of(raw_file(gap.dump(), data)).find("bytes [16, 32) of the data section belong to no tensor"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(tensor_header("a", "F32", {8}, 0, 32), data)).find("the tensors end at byte 32"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(tensor_header("e", "F32", {0}, 0, 0), data)).find("the tensors end at byte 0"),
            std::string::npos);
  // A valid file, then its header length one short.
  Sample s;
  s.write(path);
  std::string bytes = lasp::read_file(path);
  ASSERT_EQ(error_of(bytes), "");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  ASSERT_EQ(bytes[8 + n - 1], ' ') << "the writer pads the header with spaces";
  --n;
  std::memcpy(&bytes[0], &n, 8);
  EXPECT_NE(error_of(bytes).find("the tensors end at byte"), std::string::npos) << error_of(bytes);
}
