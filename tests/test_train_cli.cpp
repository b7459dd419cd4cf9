// `lasp train` / `lasp eval` end to end: a trained checkpoint gives the same eval loss in lasp and in the
// PyTorch reference; bad checkpoints, configs and data files give clear errors and a non-zero exit.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "testing.h"

namespace {

using Result = lasp::testing::CommandResult;
Result run(const std::string& command) { return lasp::testing::run_command(command); }

const std::string kLasp = LASP_BINARY;
const std::string kReference = std::string("/usr/bin/python3 ") + LASP_SOURCE_DIR + "/tools/reference.py";

// A few KB of text with structure (so a model can learn something), written once per test binary.
class TrainCli : public ::testing::Test {
 protected:
  static lasp::testing::TempDir* tmp;
  static std::string dir, data, ckpt;
  static void SetUpTestSuite() {
    tmp = new lasp::testing::TempDir("lasp_cli_test");
    dir = tmp->path;
    data = dir + "/text.txt";
    std::ofstream out(data);
    for (int i = 0; i < 300; ++i)
      out << "the quick brown fox " << i % 17 << " jumps over the lazy dog " << (i * 7) % 13 << ".\n";
    out.close();
    ckpt = dir + "/ckpt";
    const Result r = run(kLasp + " train --data " + data + " --seq-len 64 --batch 2 --steps 3 --hidden 64 --heads 4" +
                         " --kv-heads 2 --ffn 128 --layer-types LLLN --decay lightning --save " + ckpt);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  static void TearDownTestSuite() { delete tmp; }

  // Copies the checkpoint to a new folder the test may damage.
  std::string copy_checkpoint(const std::string& name) {
    const std::string to = dir + "/" + name;
    std::filesystem::remove_all(to);
    std::filesystem::copy(ckpt, to, std::filesystem::copy_options::recursive);
    return to;
  }
  void expect_error(const std::string& command, const std::string& message_part) {
    const Result r = run(command);
    EXPECT_NE(r.status, 0) << command << "\n" << r.output;
    EXPECT_LT(r.status, 128) << "crashed: " << command << "\n" << r.output;
    EXPECT_NE(r.output.find(message_part), std::string::npos) << "expected '" << message_part << "' in:\n" << r.output;
  }
};
lasp::testing::TempDir* TrainCli::tmp = nullptr;
std::string TrainCli::dir, TrainCli::data, TrainCli::ckpt;

TEST_F(TrainCli, EvalEqualsPyTorchReference) {
  const Result ours = run(kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 100 --batches 5 --json");
  ASSERT_EQ(ours.status, 0) << ours.output;
  const Result ref = run(kReference + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 100 --batches 5");
  ASSERT_EQ(ref.status, 0) << ref.output;
  const auto a = nlohmann::json::parse(ours.output.substr(ours.output.find('{')));
  const auto b = nlohmann::json::parse(ref.output.substr(ref.output.find('{')));
  EXPECT_EQ(a["tokens"], 500);
  EXPECT_EQ(b["tokens"], 500);
  const double la = a["loss"], lb = b["loss"];
  std::printf("  eval loss: lasp %.7f  pytorch %.7f\n", la, lb);
  EXPECT_NEAR(la, lb, 1e-4 * lb);
}

TEST_F(TrainCli, MissingModelFile) {
  const std::string c = copy_checkpoint("missing");
  std::remove((c + "/model.safetensors").c_str());
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "model.safetensors");
}

TEST_F(TrainCli, TruncatedModelFile) {
  const std::string c = copy_checkpoint("truncated");
  std::system(("truncate -s 5000 " + c + "/model.safetensors").c_str());
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "model.safetensors");
}

TEST_F(TrainCli, BadHeaderLength) {
  const std::string c = copy_checkpoint("header");
  std::fstream f(c + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  const unsigned char huge[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
  f.write(reinterpret_cast<const char*>(huge), 8);
  f.close();
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "header");
}

TEST_F(TrainCli, BadHeaderJson) {
  const std::string c = copy_checkpoint("json");
  std::fstream f(c + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(8);
  f.write("}}}not json", 11);
  f.close();
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "model.safetensors");
}

TEST_F(TrainCli, ConfigContradictsCheckpoint) {
  const std::string c = copy_checkpoint("contradicts");
  auto cfg = nlohmann::json::parse(std::ifstream(c + "/config.json"));
  cfg["intermediate_size"] = 96;  // the weights say 128
  std::ofstream(c + "/config.json") << cfg.dump();
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "mlp.gate_proj.weight");
}

TEST_F(TrainCli, MissingTensor) {
  // A file holding every tensor but lm_head, written with the reference's own safetensors writer.
  const std::string c = copy_checkpoint("missing_tensor");
  const std::string script = "import sys; sys.path.insert(0, '" + std::string(LASP_SOURCE_DIR) + "/tools'); " +
                             "import reference as R; t = R.read_safetensors('" + c + "/model.safetensors'); " +
                             "del t['lm_head.weight']; R.write_safetensors('" + c + "/model.safetensors', t)";
  const Result w = run("/usr/bin/python3 -c \"" + script + "\"");
  ASSERT_EQ(w.status, 0) << w.output;
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "lm_head.weight");
}

TEST_F(TrainCli, ExtraTensor) {  // the config says tied embeddings, the file has an lm_head
  const std::string c = copy_checkpoint("extra_tensor");
  auto cfg = nlohmann::json::parse(std::ifstream(c + "/config.json"));
  cfg["tie_word_embeddings"] = true;
  std::ofstream(c + "/config.json") << cfg.dump();
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "lm_head.weight");
}

TEST_F(TrainCli, InvalidConfigValue) {
  const std::string c = copy_checkpoint("invalid");
  auto cfg = nlohmann::json::parse(std::ifstream(c + "/config.json"));
  cfg["layer_types"] = "LLXN";
  std::ofstream(c + "/config.json") << cfg.dump();
  expect_error(kLasp + " eval --checkpoint " + c + " --data " + data + " --seq-len 32", "layer_types");
}

TEST_F(TrainCli, DataShorterThanOneWindow) {
  const std::string tiny = dir + "/tiny.txt";
  std::ofstream(tiny) << "short";
  expect_error(kLasp + " eval --checkpoint " + ckpt + " --data " + tiny + " --seq-len 32", "tokens");
  expect_error(kLasp + " train --data " + tiny + " --seq-len 32 --steps 1", "tokens");
}

TEST_F(TrainCli, BadModelFlags) {
  expect_error(kLasp + " train --data " + data + " --seq-len 32 --steps 1 --layer-types LLQ", "layer_types");
  expect_error(kLasp + " train --data " + data + " --seq-len 32 --steps 1 --heads 3", "num_attention_heads");
  expect_error(kLasp + " train --data " + data + " --seq-len 32 --steps 1 --kv-heads 3", "num_key_value_heads");
  expect_error(kLasp + " train --data " + data + " --seq-len 32 --steps 1 --decay fast", "decay");
}

TEST_F(TrainCli, TrainingLowersTheLoss) {
  const Result r = run(kLasp + " train --data " + data + " --seq-len 64 --batch 4 --steps 30 --lr 3e-3 --hidden 64" +
                       " --heads 4 --ffn 128 --layer-types LLLN");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto first = r.output.find("loss "), last = r.output.rfind("loss ");
  const double l0 = std::stod(r.output.substr(first + 5)), l1 = std::stod(r.output.substr(last + 5));
  std::printf("  loss %.3f -> %.3f\n", l0, l1);
  EXPECT_LT(l1, l0 - 1.0);
}

}  // namespace

namespace {

// The synthetic recall task trains and evaluates end to end, and eval reports its accuracy.
TEST(TrainCliSynthetic, TrainsAndReportsRecallAccuracy) {
  const lasp::testing::TempDir tmp("lasp_synthetic");
  const std::string& dir = tmp.path;
  const Result t = run(kLasp + " train --data synthetic:pairs=4 --seq-len 64 --batch 2 --steps 3 --hidden 64 --heads 4" +
                       " --ffn 128 --eval-every 3 --metrics " + dir + "/m.jsonl --save " + dir + "/ckpt");
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("recall accuracy"), std::string::npos) << t.output;
  const Result e = run(kLasp + " eval --checkpoint " + dir + "/ckpt --data synthetic:pairs=4 --seq-len 64 --batches 4 --json");
  ASSERT_EQ(e.status, 0) << e.output;
  const auto j = nlohmann::json::parse(e.output.substr(e.output.find('{')));
  EXPECT_TRUE(j.contains("recall_accuracy")) << e.output;
  EXPECT_GE(j["recall_accuracy"].get<double>(), 0.0);
  EXPECT_LE(j["recall_accuracy"].get<double>(), 1.0);
  const Result bad = run(kLasp + " train --data synthetic:pairs=40 --seq-len 64 --steps 1");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("4 * pairs + 1"), std::string::npos) << bad.output;
}

}  // namespace
