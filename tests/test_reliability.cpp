// Issue 15: nothing lost, nothing silently wrong. Each test reproduces one case that the reliability run found
// (data loss, silent acceptance, undefined behaviour) and checks the error that replaced it: a non-zero exit,
// a message that says what was expected and what was found, and untouched data.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "core/check.h"
#include "core/file.h"
#include "kernels/bf16.h"
#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using lasp::TempDir;
using lasp::testing::CommandResult;
using lasp::testing::run_command;

const std::string kLasp = LASP_BINARY;
const std::string kTinyModel = " --seq-len 32 --hidden 32 --heads 2 --kv-heads 1 --ffn 64";

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

// A PID that belonged to a process that has exited.
pid_t dead_pid() {
  const pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  return pid;
}

// The JSON line of a command's output (eval --json), without the lines around it (the memory plan's names the
// memory available, which changes from run to run).
std::string json_line(const std::string& output) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty() && line[0] == '{') return line;
  return "(no JSON line in: " + output + ")";
}

// A text file, a folder to work in, and helpers to run lasp and check its failures.
class Reliability : public ::testing::Test {
 protected:
  TempDir tmp{"lasp_reliability"};
  std::string data = tmp.file("text.txt");

  void SetUp() override {
    std::ofstream out(data);
    for (int i = 0; i < 200; ++i) out << "line " << i % 11 << " of the text, word " << (i * 7) % 5 << ".\n";
  }
  std::string train(const std::string& args, const std::string& model = kTinyModel) const {
    return kLasp + " train --data " + data + model + " " + args;
  }

  // The command fails cleanly (exit 1, not a crash) with a message holding every part.
  static std::string expect_error(const std::string& command, std::initializer_list<std::string> parts) {
    const CommandResult r = run_command(command);
    EXPECT_EQ(r.status, 1) << command << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, "lasp: error: ")) << command << "\n" << r.output;
    for (const std::string& part : parts) EXPECT_TRUE(contains(r.output, part)) << "expected '" << part << "' in:\n" << r.output;
    return r.output;
  }
  static void expect_ok(const std::string& command) {
    const CommandResult r = run_command(command);
    EXPECT_EQ(r.status, 0) << command << "\n" << r.output;
  }
  std::vector<std::string> leftovers(const std::string& name) const {
    std::vector<std::string> found;
    for (const std::string& e : tmp.entries())
      if (e.rfind(name + ".tmp.", 0) == 0) found.push_back(e);
    return found;
  }
};

// ---- Data loss ----

// Old: the folder's contents were deleted (mkdir d; echo x > d/notes; lasp train ... --save d).
TEST_F(Reliability, SaveRefusesAFolderThatIsNotACheckpoint) {
  const std::string dir = tmp.file("d");
  fs::create_directory(dir);
  std::ofstream(dir + "/notes") << "x";
  expect_error(train("--steps 1 --save " + dir), {"not a lasp checkpoint", "no lasp_checkpoint.json"});
  EXPECT_EQ(lasp::read_file(dir + "/notes"), "x");
  // Also a half checkpoint: config.json without the weights.
  fs::remove(dir + "/notes");
  std::ofstream(dir + "/config.json") << "{}";
  expect_error(train("--steps 1 --save " + dir), {"not a lasp checkpoint"});
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
}

// Old (issue 27): a folder holding only files with checkpoint names was replaced without a look at their
// content: a Hugging Face export (config.json + model.safetensors), a lone tokenizer.model or
// trainer_state.json, all gone with exit 0. Only a folder with lasp's marker is a checkpoint.
TEST_F(Reliability, SaveRefusesFoldersThatOnlyLookLikeCheckpoints) {
  const std::vector<std::vector<std::pair<std::string, std::string>>> folders = {
      {{"config.json", "{\"model_type\":\"llama\"}"}, {"model.safetensors", std::string(1000, '\x7f')}},
      {{"tokenizer.model", "mine"}},
      {{"trainer_state.json", "{}"}},
      {{"lasp_checkpoint.json", "{\"format\": \"something else\", \"version\": 1}"}, {"config.json", "{}"}},
      {{"lasp_checkpoint.json", "{\"format\": \"lasp checkpoint\", \"version\": 99}"}, {"config.json", "{}"}},
  };
  for (size_t i = 0; i < folders.size(); ++i) {
    const std::string dir = tmp.file("user" + std::to_string(i));
    fs::create_directory(dir);
    for (const auto& [name, content] : folders[i]) std::ofstream(dir + "/" + name) << content;
    expect_error(train("--steps 1 --save " + dir), {"--save " + dir, "not a lasp checkpoint"});
    for (const auto& [name, content] : folders[i]) EXPECT_EQ(lasp::read_file(dir + "/" + name), content) << name;
  }
  // A checkpoint of lasp's with a file of the user's put inside: that file is not lost either.
  const std::string ckpt = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + ckpt));
  std::ofstream(ckpt + "/notes.txt") << "mine";
  expect_error(train("--steps 1 --save " + ckpt), {"also holds 'notes.txt'"});
  EXPECT_EQ(lasp::read_file(ckpt + "/notes.txt"), "mine");
}

// Old: a regular file was replaced by the checkpoint folder.
TEST_F(Reliability, SaveRefusesARegularFile) {
  const std::string file = tmp.file("f");
  std::ofstream(file) << "precious";
  expect_error(train("--steps 1 --save " + file), {"not a folder"});
  EXPECT_EQ(lasp::read_file(file), "precious");
}

// What a save may replace: nothing, an empty folder, a previous checkpoint (also named with a trailing slash).
TEST_F(Reliability, SaveReplacesOnlyCheckpointsAndEmptyFolders) {
  const std::string dir = tmp.file("ckpt");
  fs::create_directory(dir);
  expect_ok(train("--steps 1 --save " + dir));
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  expect_ok(train("--steps 2 --save " + dir + "/"));
  const lasp::TrainerState s = lasp::parse_trainer_state(lasp::read_file(dir + "/trainer_state.json"), "state");
  EXPECT_EQ(s.step, 2);
  EXPECT_TRUE(leftovers("ckpt").empty());
  EXPECT_FALSE(fs::exists(dir + "/.tmp"));
}

// Old: NAME.tmp.PID folders of killed saves stayed forever (613 MB after 40 kills).
TEST_F(Reliability, StaleTemporaryFoldersOfDeadProcessesAreRemoved) {
  const std::string dir = tmp.file("ckpt"), host = host_name();
  const std::string dead = fmt::format("{}.tmp.{}.{}", dir, host, dead_pid());
  const std::string legacy = fmt::format("{}.tmp.{}", dir, dead_pid());  // the old naming
  const std::string alive = fmt::format("{}.tmp.{}.{}", dir, host, getppid());  // a live process's save: kept
  const std::string other_host = fmt::format("{}.tmp.{}.{}", dir, "another-host", dead_pid());  // not ours to judge
  for (const std::string& d : {dead, legacy, alive, other_host}) fs::create_directories(d + "/inside");
  const CommandResult r = run_command(train("--steps 1 --save " + dir));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "left by an interrupted save")) << r.output;
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(legacy));
  EXPECT_TRUE(fs::exists(alive));
  EXPECT_TRUE(fs::exists(other_host));
}

// A save that fails (here: a file-size limit, as a full disk would) removes its own temporary folder and
// says so; the run exits non-zero. Old: exit 1 but the NAME.tmp.PID folder stayed.
TEST_F(Reliability, AFailedSaveLeavesNothingBehind) {
  const std::string dir = tmp.file("ckpt");
  // SIGXFSZ ignored, so that writing past the limit fails with EFBIG instead of killing the process.
  expect_error("bash -c \"trap '' XFSZ; ulimit -f 64; " + train("--steps 1 --save " + dir) + "\"",
               {"saving the checkpoint failed", "File too large"});
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(leftovers("ckpt").empty()) << leftovers("ckpt").front();
}

// A periodic save that fails stops the run and leaves the previous checkpoint intact; --on-save-error
// continue trains on with a warning (the final save must still succeed, so the run still fails here).
TEST_F(Reliability, AFailedPeriodicSaveStopsUnlessAskedToContinue) {
  const std::string dir = tmp.file("ckpt");
  expect_ok(train("--steps 6 --stop-at 2 --save " + dir));
  const std::string limited = "bash -c \"trap '' XFSZ; ulimit -f 64; ";
  const std::string out = expect_error(limited + train("--steps 6 --save-every 1 --resume " + dir + " --save " + dir) + "\"",
                                       {"step 3: saving the checkpoint failed", "the checkpoint of step"});
  EXPECT_FALSE(contains(out, "step 4/6")) << out;
  EXPECT_EQ(lasp::parse_trainer_state(lasp::read_file(dir + "/trainer_state.json"), "state").step, 2);
  const std::string cont = expect_error(
      limited + train("--steps 6 --save-every 1 --on-save-error continue --resume " + dir + " --save " + dir) + "\"",
      {"training goes on", "step 6: saving the checkpoint failed"});
  EXPECT_TRUE(contains(cont, "step 5/6")) << cont;
  EXPECT_EQ(lasp::parse_trainer_state(lasp::read_file(dir + "/trainer_state.json"), "state").step, 2);
  EXPECT_TRUE(leftovers("ckpt").empty());
}

// No room for a checkpoint is found before training, with how much is needed. (The free space of a real
// filesystem is never 1 EiB, so this exercises the same statvfs check a full disk trips.)
TEST_F(Reliability, NoRoomForACheckpointIsFoundBeforeTraining) {
  try {
    const lasp::FolderLock lock = lasp::check_checkpoint_target(tmp.file("ckpt"), uint64_t(1) << 60);
    ADD_FAILURE() << "expected an error";
  } catch (const lasp::Error& e) {
    EXPECT_TRUE(contains(e.what(), "a checkpoint needs 1.0 EiB")) << e.what();
    EXPECT_TRUE(contains(e.what(), "free")) << e.what();
  }
  EXPECT_TRUE(leftovers("ckpt").empty());
  // A folder that cannot be created in.
  expect_error(train("--steps 1 --save " + tmp.file("no/such/folder/ckpt")), {"does not exist"});
}

// Old: --metrics on a full filesystem left an empty file and exited 0. /dev/full fails every write with ENOSPC.
TEST_F(Reliability, MetricsWriteFailureIsAnError) {
  expect_error(train("--steps 1 --metrics /dev/full"), {"cannot write to '/dev/full'", "No space left"});
  expect_error(train("--steps 1 --metrics " + tmp.file("no/such/folder/m.jsonl")), {"m.jsonl"});
}

// Old: bench sp --out into a folder that cannot be written printed "wrote" and wrote nothing.
TEST_F(Reliability, BenchSpOutputFailureIsAnError) {
  const std::string out = expect_error(kLasp + " bench sp --seq-lens 64 --repeats 1 --methods lasp2 --models LL --out " +
                                           tmp.file("no/such/folder/x"),
                                       {"cannot write", "No such file"});
  EXPECT_FALSE(contains(out, "wrote")) << out;
  EXPECT_FALSE(contains(out, "[1/1]")) << out;  // refused before running anything
}

// The plot command checks what gnuplot did: an unwritable PNG path is an error, not a silent success.
TEST_F(Reliability, PlotOutputFailureIsAnError) {
  const std::string metrics = tmp.file("m.jsonl");
  std::ofstream(metrics) << "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"loss\": 2.0}\n";
  expect_ok(kLasp + " plot " + metrics + " --out " + tmp.file("m.png"));
  EXPECT_GT(fs::file_size(tmp.file("m.png")), 0u);
  expect_error(kLasp + " plot " + metrics + " --out " + tmp.file("no/such/folder/m.png"), {"m.png"});
}

// Several metrics files go into one picture; any unreadable one is named and no picture is left.
TEST_F(Reliability, PlotOfSeveralRunsNamesABadFile) {
  const std::string a = tmp.file("gla_LLLL.jsonl"), b = tmp.file("based_LLLN.jsonl");
  std::ofstream(a) << "{\"step\": 1, \"loss\": 2.5, \"val_loss\": 2.6}\n{\"step\": 2, \"loss\": 2.0}\n";
  std::ofstream(b) << "{\"step\": 1, \"loss\": 2.4}\n";
  expect_ok(kLasp + " plot " + a + " " + b + " --title \"it's two\" --out " + tmp.file("two.png"));
  EXPECT_GT(fs::file_size(tmp.file("two.png")), 0u);
  std::ofstream(b) << "{\"step\": 1, \"loss\": 2.4}\nnot json\n";
  expect_error(kLasp + " plot " + a + " " + b + " --out " + tmp.file("bad.png"), {"based_LLLN.jsonl line 2"});
  EXPECT_FALSE(fs::exists(tmp.file("bad.png")));
}

// The text every Debian system has, and a tokenize of it into `out` (a small vocabulary: quick to train).
const std::string kLicence = "/usr/share/common-licenses/GPL-3";
std::string tokenize_into(const std::string& out, const std::string& extra = "") {
  return kLasp + " tokenize --input " + kLicence + " --vocab-size 400 --out " + out + " " + extra;
}

// Every file of a folder with its bytes: what must survive a failed or refused run unchanged.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files[e.path().filename().string()] = lasp::read_file(e.path());
  return files;
}

// Old (issue 27): tokenize --out deleted any tokens_*.bin and tokenizer.model found there, whoever wrote them,
// and its own input when that sat in --out.
TEST_F(Reliability, TokenizeNeverDeletesFilesItDidNotWrite) {
  const std::string out = tmp.file("o");
  fs::create_directory(out);
  std::ofstream(out + "/tokens_myshards.bin") << "mine";
  std::ofstream(out + "/tokenizer.model") << "mine";
  expect_error(tokenize_into(out), {"tokenize: --out " + out, "not a lasp tokenize output", "no tokens.json"});
  EXPECT_EQ(snapshot(out), (std::map<std::string, std::string>{{"tokenizer.model", "mine"}, {"tokens_myshards.bin", "mine"}}));
  // An earlier output with the input copied into it: the input is not one of its files.
  const std::string tok = tmp.file("tok");
  expect_ok(tokenize_into(tok));
  fs::copy_file(kLicence, tok + "/input.txt");
  const auto before = snapshot(tok);
  expect_error(kLasp + " tokenize --input " + tok + "/input.txt --vocab-size 400 --out " + tok,
               {"also holds 'input.txt'"});
  EXPECT_EQ(snapshot(tok), before);
}

// Old (issue 27): a failed rerun emptied the earlier output before checking its arguments. The new output is
// written beside the old one and swapped in only when complete.
TEST_F(Reliability, AFailedTokenizeLeavesTheEarlierOutputWhole) {
  const std::string tok = tmp.file("tok"), garbage = tmp.file("garbage.model"), empty = tmp.file("empty.txt");
  expect_ok(tokenize_into(tok));
  const auto before = snapshot(tok);
  std::ofstream(garbage) << "not a model";
  std::ofstream{empty};
  expect_error(kLasp + " tokenize --input " + kLicence + " --vocab-size 70000 --out " + tok, {"--vocab-size must be 1 to 65536"});
  expect_error(kLasp + " tokenize --input " + kLicence + " --vocab-size 60000 --out " + tok,
               {"is more than a bpe tokenizer can learn from this text"});
  expect_error(kLasp + " tokenize --input " + kLicence + " --model " + garbage + " --out " + tok,
               {garbage, "not a SentencePiece model"});
  expect_error(kLasp + " tokenize --input " + empty + " --model " + tok + "/tokenizer.model --out " + tok,
               {"empty document"});
  EXPECT_EQ(snapshot(tok), before);
  EXPECT_TRUE(leftovers("tok").empty());
  // A rerun that succeeds replaces the output whole: no shard of the old set stays beside the new one.
  expect_ok(tokenize_into(tok, "--shard-tokens 5000"));
  expect_ok(tokenize_into(tok));
  EXPECT_FALSE(fs::exists(tok + "/tokens_000001.bin"));
}

// Old (issue 27): a SIGTERM during tokenize left a partial shard set that train took as complete (30 of ~120
// shards: exit 0), and a killed write left files that the next tokenize refused. Now the output is swapped in
// only when complete, the next tokenize removes what a killed one left, and train and eval check the shard
// set against tokens.json.
TEST_F(Reliability, AnInterruptedTokenizeLeavesNoPartialShardSet) {
  const std::string tok = tmp.file("tok"), big = tmp.file("big.txt");
  expect_ok(tokenize_into(tok));
  const auto before = snapshot(tok);
  {
    std::ofstream out(big);
    const std::string text = lasp::read_file(kLicence);
    for (int i = 0; i < 200; ++i) out << text << "\n\n";
  }
  const std::string model = tok + "/tokenizer.model";
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1), dup2(null, 2);
    execl(kLasp.c_str(), kLasp.c_str(), "tokenize", "--input", big.c_str(), "--model", model.c_str(), "--separator",
          "\n\n", "--shard-tokens", "2000", "--out", tok.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Kill it once it is writing shards into its temporary folder.
  bool writing = false;
  for (int i = 0; i < 4000 && !writing; ++i) {
    usleep(5000);
    for (const std::string& t : leftovers("tok")) writing = writing || fs::exists(tmp.file(t) + "/tokens_000002.bin");
  }
  EXPECT_TRUE(writing) << "tokenize never wrote its third shard";
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "tokenize ended before the signal came";
  EXPECT_EQ(snapshot(tok), before);  // the earlier output, whole
  // The next tokenize removes the killed one's folder and succeeds.
  const CommandResult r = run_command(tokenize_into(tok));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "left by an interrupted tokenize")) << r.output;
  EXPECT_TRUE(leftovers("tok").empty());
}

// ---- Silently wrong results ----

// Old (issue 27): bytes that are not UTF-8 became U+FFFD without a word (the README promises that every byte
// round-trips; eval then counted each as three bytes). Refused, naming the file and the offset, unless
// --invalid-utf8 replace accepts it knowingly (and says how many).
TEST_F(Reliability, TokenizeRefusesTextThatIsNotUtf8UnlessAskedToReplace) {
  const std::string latin1 = tmp.file("latin1.txt"), tok = tmp.file("tok");
  std::ofstream(latin1) << "first line\ncaf\xe9 ol\xe9\n" << lasp::read_file(kLicence);
  expect_error(kLasp + " tokenize --input " + kLicence + " " + latin1 + " --vocab-size 400 --out " + tok,
               {latin1 + " is not UTF-8 text", "offset 14 (line 2), 0xe9", "2 such bytes", "--invalid-utf8 replace"});
  EXPECT_FALSE(fs::exists(tok));
  // The same with --model: nothing is encoded either.
  const std::string given = tmp.file("given");
  expect_ok(tokenize_into(given));
  expect_error(kLasp + " tokenize --input " + latin1 + " --model " + given + "/tokenizer.model --out " + tok,
               {"offset 14"});
  const CommandResult r = run_command(kLasp + " tokenize --input " + kLicence + " " + latin1 +
                                      " --vocab-size 400 --invalid-utf8 replace --out " + tok);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "2 byte(s) that were not valid UTF-8 were replaced by U+FFFD")) << r.output;
  EXPECT_EQ(nlohmann::json::parse(lasp::read_file(tok + "/tokens.json"))["invalid_utf8_replaced"], 2);
  const CommandResult keep = run_command(kLasp + " tokenize --input " + latin1 + " --vocab-size 400 --invalid-utf8 keep "
                                         "--out " + tok);
  EXPECT_NE(keep.status, 0);
  EXPECT_TRUE(contains(keep.output, "--invalid-utf8: keep not in {refuse,replace}")) << keep.output;
}

// Issue 28: bad input in a corpus (a line that is not JSON or holds no string "text", an empty document, a
// truncated .gz) stops tokenize naming the file and the line, and writes nothing; --skip-bad-lines skips and
// counts bad lines instead, never a damaged file.
TEST_F(Reliability, TokenizeNamesTheFileAndLineOfBadInput) {
  const std::string given = tmp.file("given"), jsonl = tmp.file("c.jsonl"), tok = tmp.file("tok");
  expect_ok(tokenize_into(given));
  const std::string model = " --model " + given + "/tokenizer.model --out " + tok;
  std::ofstream(jsonl) << "{\"text\": \"one document\"}\n{\"text\": 7}\n{\"text\": \"\"}\n{\"text\": \"two\"}\n";
  expect_error(kLasp + " tokenize --input " + jsonl + model, {jsonl + " line 2: its \"text\" field is a number"});
  EXPECT_FALSE(fs::exists(tok));
  const CommandResult r = run_command(kLasp + " tokenize --input " + jsonl + model + " --skip-bad-lines");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "skipped 2 bad line(s) or empty document(s) (--skip-bad-lines); the first: " + jsonl +
                       " line 2")) << r.output;
  const nlohmann::json manifest = nlohmann::json::parse(lasp::read_file(tok + "/tokens.json"));
  EXPECT_EQ(manifest["documents"], 2);
  EXPECT_EQ(manifest["skipped"], 2);
  const std::string cut = tmp.file("cut.txt.gz");
  ASSERT_EQ(run_command("gzip -c " + kLicence + " | head -c 5000 > " + cut).status, 0);
  expect_error(kLasp + " tokenize --input " + cut + model + " --skip-bad-lines",
               {cut + ": the gzip data is cut short (a truncated file?): its text stops in line "});
}

// Old (issue 27): SentencePiece's own errors reached the user with its source paths and its options
// ("./src/trainer_interface.cc(580) [...] Increase vocab_size or decrease character_coverage with
// --character_coverage option."), never stating the smallest vocabulary; lines over 4,192 bytes were dropped
// from training without a word, so a file of one long line failed as "[!sentences_.empty()]".
TEST_F(Reliability, TokenizeStatesTheVocabularyTheTextAllows) {
  const std::string tok = tmp.file("tok");
  for (const auto& [vocab, says] : std::vector<std::pair<std::string, std::string>>{
           {"100", "--vocab-size 100 is too small for this text: a tokenizer of it needs at least 334 pieces"},
           {"60000", "--vocab-size 60000 is more than a bpe tokenizer can learn from this text: at most 6228 pieces"}}) {
    const std::string out = expect_error(kLasp + " tokenize --input " + kLicence + " --vocab-size " + vocab + " --out " + tok,
                                         {says});
    EXPECT_FALSE(contains(out, ".cc(")) << out;
    EXPECT_FALSE(contains(out, "character_coverage")) << out;
  }
  expect_ok(kLasp + " tokenize --input " + kLicence + " --vocab-size 334 --out " + tok);  // the minimum it named
  const std::string empty = tmp.file("empty.txt");
  std::ofstream(empty) << "\n\n\n";
  expect_error(kLasp + " tokenize --input " + empty + " --vocab-size 400 --out " + tok, {"hold no text to train"});
  // The licence as one line of 35 KB: trained on (every part of it), not dropped.
  const std::string line = tmp.file("line.txt");
  std::string text = lasp::read_file(kLicence);
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::ofstream(line) << text;
  const std::string one = tmp.file("one");
  const CommandResult r = run_command(kLasp + " tokenize --input " + line + " --vocab-size 1000 --out " + one);
  ASSERT_EQ(r.status, 0) << r.output;
  const nlohmann::json manifest = nlohmann::json::parse(lasp::read_file(one + "/tokens.json"));
  EXPECT_EQ(manifest["vocab_size"], 1000);
  EXPECT_LT(manifest["tokens"].get<double>(), manifest["bytes"].get<double>() / 3) << "the pieces learned no words";
}

// Old: --lr 1e3 --grad-clip 0 printed NaN losses, saved a checkpoint of NaN weights and exited 0; with
// clipping it stopped with "grad_clip_scale: norm must be >= 0, got -nan".
TEST_F(Reliability, DivergenceStopsWithAClearMessageAndSavesNothing) {
  const std::string dir = tmp.file("ckpt");
  const std::string out = expect_error(train("--steps 12 --lr 1e3 --grad-clip 0 --save-every 1 --save " + dir),
                                       {"training diverged at step", "the update was not applied", "--grad-clip 1"});
  // The checkpoint holds the last finite step, and the message says which: eval loads it (it refuses
  // non-finite weights).
  const int saved = lasp::parse_trainer_state(lasp::read_file(dir + "/trainer_state.json"), "state").step;
  EXPECT_TRUE(contains(out, fmt::format("The checkpoint {} of step {} stays as it was", dir, saved))) << out;
  EXPECT_TRUE(contains(out, fmt::format("training diverged at step {}:", saved + 1))) << out;
  expect_ok(kLasp + " eval --checkpoint " + dir + " --data " + data + " --seq-len 32");
  // With clipping (the default) the same: a message that says so, not grad_clip_scale's internal check.
  const std::string clipped = expect_error(train("--steps 12 --lr 1e3"), {"training diverged at step", "Try a lower --lr (now 1000)"});
  EXPECT_FALSE(contains(clipped, "grad_clip_scale")) << clipped;
}

// The weights lasp writes are finite, and a checkpoint with a non-finite weight is refused by eval, generate
// and resume, naming the tensor.
TEST_F(Reliability, NonFiniteWeightsAreRefused) {
  const std::string dir = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + dir));
  // Put a NaN into the first element of model.norm.weight.
  const std::string path = dir + "/model.safetensors";
  std::string bytes = lasp::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  const size_t at = 8 + n + header["model.norm.weight"]["data_offsets"][0].get<size_t>();
  const float nan = NAN;
  std::memcpy(&bytes[at], &nan, 4);
  lasp::write_file_atomic(path, bytes);
  for (const std::string& command :
       {kLasp + " eval --checkpoint " + dir + " --data " + data + " --seq-len 32",
        kLasp + " generate --checkpoint " + dir + " --prompt hi --max-new-tokens 2",
        train("--steps 3 --resume " + dir)})
    expect_error(command, {"model.norm.weight", "non-finite"});
  // The writer refuses too.
  lasp::ModelConfig c;
  const lasp::ParamLayout layout(c);
  std::vector<float> params(layout.total(), 0.5f);
  params[layout.find("lm_head.weight").offset + 3] = INFINITY;
  try {
    lasp::save_checkpoint(tmp.file("bad"), c, layout, params);
    ADD_FAILURE() << "expected an error";
  } catch (const lasp::Error& e) {
    EXPECT_TRUE(contains(e.what(), "lm_head.weight") && contains(e.what(), "inf")) << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp.file("bad")));
}

// Old: a header length one byte short still parsed (JSON ignores the padding) and shifted every weight by a
// byte: eval printed "loss nan".
TEST_F(Reliability, ASafetensorsHeaderOneByteShortIsRefused) {
  const std::string dir = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + dir));
  const std::string path = dir + "/model.safetensors";
  std::string bytes = lasp::read_file(path);
  bytes[0] = char(bytes[0] - 1);  // header lengths here are far above 256: no borrow
  lasp::write_file_atomic(path, bytes);
  expect_error(kLasp + " eval --checkpoint " + dir + " --data " + data + " --seq-len 32",
               {"model.safetensors", "the tensors end at byte"});
}

// Old: a *.bin without the shard magic was trained on as byte text, silently.
TEST_F(Reliability, ABinFileWithoutTheShardMagicIsAnError) {
  const std::string bin = tmp.file("train_000.bin");
  std::ofstream(bin) << lasp::read_file(data);
  expect_error(kLasp + " train --data " + bin + kTinyModel + " --steps 1",
               {"named like an llm.c token shard", "--data-format text"});
  const CommandResult r = run_command(kLasp + " train --data " + bin + kTinyModel + " --steps 1 --data-format text");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "byte-level text")) << r.output;  // says which format it used
  const CommandResult t = run_command(train("--steps 1"));
  EXPECT_TRUE(contains(t.output, "lasp: data " + data + ": byte-level text")) << t.output;
}

// Old: pairs=4294967297 became 1, pairs=1e3 became 1, pairs=4x became 4.
TEST_F(Reliability, SyntheticSpecIntegersAreStrict) {
  for (const std::string value : {"4294967297", "1e3", "4x", "-2", "0", ""})
    expect_error(kLasp + " train --data synthetic:pairs=" + value + kTinyModel + " --steps 1",
                 {"pairs must be an integer in [1, 2147483647], got '" + value + "'"});
  expect_error(kLasp + " train --data synthetic:seed=-1" + kTinyModel + " --steps 1", {"seed must be an integer"});
}

// Old: "step": 2^40 resumed at step 1, 1.5 at step 2, INT_MAX overflowed step + 1.
TEST_F(Reliability, TrainerStateIsParsedStrictly) {
  const std::string dir = tmp.file("ckpt");
  expect_ok(train("--steps 4 --stop-at 1 --save " + dir));
  const std::string state_path = dir + "/trainer_state.json";
  const nlohmann::json good = nlohmann::json::parse(lasp::read_file(state_path));
  for (const std::string step : {"1099511627776", "1.5", "-1", "2147483647", "\"1\"", "null"}) {
    nlohmann::json bad = good;
    bad["step"] = nlohmann::json::parse(step);
    lasp::write_file_atomic(state_path, bad.dump());
    expect_error(train("--steps 4 --resume " + dir), {"\"step\" must be an integer in [0, 2147483646], found " + step});
  }
  nlohmann::json missing = good;
  missing.erase("sampler");
  lasp::write_file_atomic(state_path, missing.dump());
  expect_error(train("--steps 4 --resume " + dir), {"\"sampler\" must be a string"});
  // The parser alone: every key typed and in range.
  EXPECT_EQ(lasp::parse_trainer_state(good.dump(), "s").step, 1);
  EXPECT_THROW(lasp::parse_trainer_state("[]", "s"), lasp::Error);
  EXPECT_THROW(lasp::parse_trainer_state("{", "s"), lasp::Error);
  nlohmann::json zero_sp = good;
  zero_sp["sp_size"] = 0;
  EXPECT_THROW(lasp::parse_trainer_state(zero_sp.dump(), "s"), lasp::Error);
}

// Old: negative or NaN --min-lr/--warmup fell back to defaults; negative or NaN --grad-clip turned clipping off.
TEST_F(Reliability, OptionRangesAreChecked) {
  for (const std::string flag : {"--min-lr -1", "--min-lr nan", "--warmup -1", "--grad-clip -1", "--grad-clip nan",
                                  "--lr nan", "--lr inf", "--weight-decay -0.1"}) {
    const CommandResult r = run_command(train("--steps 1 " + flag));
    EXPECT_NE(r.status, 0) << flag << "\n" << r.output;
    EXPECT_LT(r.status, 128) << flag << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, flag.substr(0, flag.find(' ')) + ": must be a finite number")) << flag << "\n" << r.output;
  }
  expect_error(train("--steps 1 --lr 1e-3 --min-lr 1e-2"), {"--min-lr 0.01 must be <= --lr 0.001"});
  // Range messages read like sentences, not like CLI11's "not in range 0.000000 to 1797693...".
  const CommandResult r = run_command(train("--steps 1 --seq-len 0"));
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.output, "--seq-len: must be a finite number >= 1, got 0")) << r.output;
  EXPECT_FALSE(contains(r.output, "179769")) << r.output;
}

// A command line CLI11 refuses: exit status 1..127 (not a crash, not 0) with every part in the message.
std::string expect_refused(const std::string& command, std::initializer_list<std::string> parts) {
  const CommandResult r = run_command(command);
  EXPECT_GT(r.status, 0) << command << "\n" << r.output;
  EXPECT_LT(r.status, 128) << command << "\n" << r.output;
  for (const std::string& part : parts) EXPECT_TRUE(contains(r.output, part)) << "expected '" << part << "' in:\n" << r.output;
  return r.output;
}

// Old (issue 27): --hidden '', --vocab '' and --doc-start '' meant "not given"; --seq-len 0x100, --doc-start 0x1,
// --vocab-size ' 300', --seed -1 (2^64 - 1) and 010 (octal 8) were taken; --precision 1 meant bf16;
// --memory-limit 1e308 printed "inf EiB limit"; ring-zigzag silently ran zigzag under --sp-layout contiguous.
TEST_F(Reliability, OptionValuesAreStrict) {
  for (const std::string flag : {"--hidden ''", "--vocab ''"})
    expect_refused(train("--steps 1 " + flag), {flag.substr(0, flag.find(' ')) + ": expected an integer in decimal digits, got ''"});
  expect_refused(train("--steps 1 --doc-start ''"), {"--doc-start: expected an integer in decimal digits, got ''"});
  expect_refused(kLasp + " train --data " + data + " --steps 1 --seq-len 0x100", {"--seq-len: expected an integer in "
                                                                                  "decimal digits, got '0x100'"});
  expect_refused(train("--steps 1 --doc-start 0x1"), {"got '0x1'"});
  expect_refused(train("--steps 1 --seed -1"), {"--seed: expected a non-negative integer in decimal digits, got '-1'"});
  expect_refused(train("--steps 1 --batch +1"), {"got '+1'"});
  expect_refused(kLasp + " --threads 0x2 info", {"--threads", "got '0x2'"});
  expect_refused(kLasp + " tokenize --input " + kLicence + " --vocab-size ' 300' --out " + tmp.file("tok"), {"got ' 300'"});
  expect_refused(kLasp + " bench train --seq-lens 64,0x80", {"got '0x80'"});
  // 010 is ten, not octal eight: --steps 010 with --stop-at 9 trains 9 of 10 steps.
  const CommandResult ten = run_command(train("--steps 010 --stop-at 9"));
  EXPECT_EQ(ten.status, 0) << ten.output;
  EXPECT_TRUE(contains(ten.output, "step 9/10")) << ten.output;
  expect_refused(train("--steps 1 --precision 1"), {"--precision: 1 not in {fp32,bf16}"});
  expect_refused(train("--steps 1 --memory-limit 1e308"), {"--memory-limit: must be a finite number > 0 and <= 1048576, "
                                                           "got 1e308"});
  expect_error(train("--steps 1 --sp-method ring-zigzag --sp-layout contiguous"),
               {"--sp-layout contiguous contradicts --sp-method ring-zigzag, which runs on the zigzag layout"});
}

// Old (issue 27): --stop-at at or before the saved step did nothing (exit 0); a resume with another --seed or
// --data said nothing (the seed given replaced the saved one). The seed and the data belong to the saved run
// (another --data only with --new-data); another --precision is allowed with a warning.
TEST_F(Reliability, AResumeKeepsTheSavedRunsSeedDataAndStep) {
  const std::string ckpt = tmp.file("ckpt"), other = tmp.file("other.txt");
  std::ofstream(other) << lasp::read_file(kLicence);
  expect_ok(train("--steps 6 --stop-at 3 --seed 7 --save " + ckpt));
  EXPECT_EQ(nlohmann::json::parse(lasp::read_file(ckpt + "/trainer_state.json"))["precision"], "fp32");
  expect_error(train("--steps 6 --resume " + ckpt + " --stop-at 3"),
               {"--stop-at 3 is not after the checkpoint's step 3: the run would train nothing"});
  expect_error(train("--steps 6 --resume " + ckpt + " --seed 8"), {"--seed 8 contradicts the saved run's seed 7"});
  expect_error(kLasp + " train --data " + other + kTinyModel + " --steps 6 --resume " + ckpt,
               {"the saved run trained on --data " + data + ", not " + other, "--new-data"});
  // Without --seed the saved one goes on: the same losses as an uninterrupted run with --seed 7.
  const std::string whole = tmp.file("whole");
  expect_ok(train("--steps 6 --seed 7 --save " + whole));
  expect_ok(train("--steps 6 --resume " + ckpt + " --save " + ckpt));
  const std::string ev = kLasp + " eval --json --data " + data + " --seq-len 32 --checkpoint ";
  EXPECT_EQ(json_line(run_command(ev + ckpt).output), json_line(run_command(ev + whole).output));
  const CommandResult moved = run_command(kLasp + " train --data " + other + kTinyModel + " --steps 8 --new-data --resume " +
                                          ckpt);
  EXPECT_EQ(moved.status, 0) << moved.output;
  EXPECT_TRUE(contains(moved.output, "training goes on on " + other + " (--new-data")) << moved.output;
  if (!contains(run_command(kLasp + " info").output, "bf16 products: none")) {
    const CommandResult bf16 = run_command(train("--steps 8 --resume " + ckpt + " --precision bf16"));
    EXPECT_EQ(bf16.status, 0) << bf16.output;
    EXPECT_TRUE(contains(bf16.output, "warning: --resume " + ckpt + ": the saved run trained in fp32, this one goes on "
                         "in bf16")) << bf16.output;
  }
}

// Old (issue 27): an empty prompt's message named --max-new-tokens' value as a prompt limit ("the prompt must
// hold 1 to 5 tokens"); under mpirun -np 2 without --sp-size generate ran twice, its outputs interleaved.
TEST_F(Reliability, GenerateRefusesAnEmptyPromptAndRanksWithoutSpSize) {
  const std::string ckpt = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + ckpt));
  const std::string out = expect_error(kLasp + " generate --checkpoint " + ckpt + " --prompt '' --max-new-tokens 5",
                                       {"generate: the prompt is empty"});
  EXPECT_FALSE(contains(out, "1 to 5")) << out;
  ASSERT_EQ(run_command("command -v mpirun").status, 0) << "mpirun (openmpi-bin, installed by scripts/setup.sh) is needed";
  const std::string mpirun = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_pml=ob1 "
                             "OMPI_MCA_btl=self,vader OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 ";
  const CommandResult twice = run_command(mpirun + kLasp + " generate --checkpoint " + ckpt + " --prompt hi "
                                          "--max-new-tokens 3");
  EXPECT_NE(twice.status, 0) << twice.output;
  EXPECT_TRUE(contains(twice.output, "--sp-size 1 must equal the number of ranks, 2 (started by mpirun: give "
                       "--sp-size 2")) << twice.output;
  const CommandResult once = run_command(mpirun + kLasp + " generate --checkpoint " + ckpt + " --prompt hello "
                                         "--max-new-tokens 3 --sp-size 2");
  EXPECT_EQ(once.status, 0) << once.output;
  EXPECT_EQ(once.output.rfind("hello", 0), 0u) << once.output;  // one output, from rank 0
}

// Old: --layer-types '' gave the default model.
TEST_F(Reliability, EmptyLayerTypesIsAnError) {
  expect_error(train("--steps 1 --layer-types ''"), {"--layer-types must hold one letter per layer"});
}

// Old: --resume silently ignored --hidden/--heads that contradicted the checkpoint.
TEST_F(Reliability, ResumeRefusesModelFlagsThatContradictTheCheckpoint) {
  const std::string dir = tmp.file("ckpt");
  expect_ok(train("--steps 4 --stop-at 1 --save " + dir));
  expect_error(kLasp + " train --data " + data + " --seq-len 32 --batch 2 --hidden 64 --steps 4 --resume " + dir,
               {"the model flags give hidden_size = 64, but the checkpoint has hidden_size = 32"});
  expect_ok(train("--steps 4 --stop-at 2 --resume " + dir + " --save " + dir));  // the same flags again: fine
}

// Old: bench project with a link speed of 0, -1 or NaN printed "-nan%".
TEST_F(Reliability, BenchProjectRefusesImpossibleLinks) {
  for (const std::string v : {"0", "-1", "nan"}) {
    const CommandResult r = run_command(kLasp + " bench project --link-gbit " + v);
    EXPECT_NE(r.status, 0) << v << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, "--link-gbit: must be a finite number > 0")) << r.output;
    EXPECT_FALSE(contains(r.output, "nan%")) << r.output;
  }
}

// A shard set that is not the whole of what tokenize wrote is an error naming what is missing or extra.
TEST_F(Reliability, APartialShardSetIsRefused) {
  const std::string tok = tmp.file("tok");
  expect_ok(tokenize_into(tok, "--shard-tokens 3000"));
  ASSERT_TRUE(fs::exists(tok + "/tokens_000003.bin"));
  const std::string shards = " --data '" + tok + "/tokens_*.bin' --layer-types L --hidden 32 --heads 2 --kv-heads 1 "
                             "--ffn 64 --seq-len 64";
  expect_ok(kLasp + " train --steps 1 --save " + tmp.file("ckpt") + shards);
  fs::rename(tok + "/tokens_000003.bin", tmp.file("away.bin"));
  expect_error(kLasp + " train --steps 1" + shards, {"1 of the", "tokens.json lists are missing", "tokens_000003.bin"});
  expect_error(kLasp + " eval --checkpoint " + tmp.file("ckpt") + " --data '" + tok + "/tokens_*.bin' --seq-len 64",
               {"tokens_000003.bin"});
  fs::rename(tmp.file("away.bin"), tok + "/tokens_000003.bin");
  // A shard that is not the one tokenize wrote (another token count).
  lasp::write_token_shard(tok + "/tokens_000001.bin", std::vector<uint16_t>(17, 5));
  expect_error(kLasp + " train --steps 1" + shards, {"tokens_000001.bin holds 17 tokens", "lists it with 3000"});
  // Shards beside a tokenizer.model without the manifest: an interrupted (or older) tokenize.
  fs::remove(tok + "/tokens.json");
  expect_error(kLasp + " train --steps 1" + shards, {"no tokens.json", "Run lasp tokenize again"});
}

// Old (issue 27): lightning's rates were 2^(-8(h+1)/H), not the paper's ALiBi slopes, for head counts that are
// not a power of two. A checkpoint of that lasp (no marker) with such a head count means another model now.
TEST_F(Reliability, LightningCheckpointsOfTheOldDecayRuleAreRefused) {
  const std::string model = " --layer-types LN --hidden 48 --heads 6 --kv-heads 2 --ffn 64 --seq-len 32 --decay lightning";
  const std::string ckpt = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + ckpt, model));
  expect_ok(kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 32");
  fs::remove(ckpt + "/lasp_checkpoint.json");  // as an older lasp wrote it
  expect_error(kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 32",
               {"lightning decay and 6 heads", "not loaded"});
  expect_error(kLasp + " generate --checkpoint " + ckpt + " --prompt hi --max-new-tokens 2", {"6 heads"});
  // A power of two: the rule gave the same rates, and the checkpoint still loads.
  const std::string four = tmp.file("four");
  expect_ok(train("--steps 1 --save " + four, " --layer-types LN --hidden 32 --heads 4 --kv-heads 2 --ffn 64 "
                  "--seq-len 32 --decay lightning"));
  fs::remove(four + "/lasp_checkpoint.json");
  expect_ok(kLasp + " eval --checkpoint " + four + " --data " + data + " --seq-len 32");
}

// Old (issue 27): output that failed to reach stdout went unnoticed: generate, eval --json, the tokenize
// summary and train's step lines to /dev/full all exited 0.
TEST_F(Reliability, AFailedWriteToStdoutIsAnError) {
  const std::string ckpt = tmp.file("ckpt"), tok = tmp.file("tok");
  expect_ok(train("--steps 1 --save " + ckpt));
  for (const std::string& command :
       {kLasp + " generate --checkpoint " + ckpt + " --prompt The --max-new-tokens 4",
        kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 32 --json",
        kLasp + " tokenize --input " + kLicence + " --vocab-size 400 --out " + tok, kLasp + " info"})
    expect_error("{ " + command + " > /dev/full; }", {"writing to standard output failed"});
  // Train's step lines go to stderr: their loss cannot be reported there, but the exit status says it.
  EXPECT_EQ(run_command("{ " + train("--steps 1") + " 2> /dev/full; }").status, 1);
}

// Old (issue 27): --doc-start was not kept: a resume without the flag trained the rest as one stream, eval
// defaulted to one stream, generate had no --doc-start. The checkpoint keeps its document token now.
TEST_F(Reliability, TheDocumentTokenBelongsToTheCheckpoint) {
  const std::string ckpt = tmp.file("ckpt");
  const std::string model = " --layer-types LN --hidden 32 --heads 2 --kv-heads 1 --ffn 64 --seq-len 32";
  expect_ok(train("--steps 4 --stop-at 2 --doc-start 10 --save " + ckpt, model));  // 10: each newline
  const CommandResult resumed = run_command(train("--steps 4 --resume " + ckpt + " --save " + ckpt, model));
  EXPECT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "documents open at token 10")) << resumed.output;
  const CommandResult eval = run_command(kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 32");
  EXPECT_TRUE(contains(eval.output, "documents open at token 10")) << eval.output;
  // Uninterrupted: the same losses as the resumed run (the documents were kept across the resume).
  const std::string whole = tmp.file("whole");
  expect_ok(train("--steps 4 --doc-start 10 --save " + whole, model));
  const std::string ev = kLasp + " eval --json --data " + data + " --seq-len 32 --checkpoint ";
  EXPECT_EQ(json_line(run_command(ev + ckpt).output), json_line(run_command(ev + whole).output));
  for (const std::string& command : {train("--steps 6 --resume " + ckpt + " --doc-start -1", model),
                                     kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --doc-start 11",
                                     kLasp + " generate --checkpoint " + ckpt + " --prompt hi --doc-start -1"})
    expect_error(command, {"contradicts the checkpoint", "documents opening at token 10"});
  expect_ok(kLasp + " generate --checkpoint " + ckpt + " --prompt hi --max-new-tokens 3 --doc-start 10");
}

// Old (issue 27): a checkpoint trained on subword tokens was used on bytes when its tokenizer.model was missing
// (generate printed raw bytes, eval of a text file said 12.95 bits per byte, exit 0). The checkpoint records
// its vocabulary: bytes, or a tokenizer and its fingerprint.
TEST_F(Reliability, ACheckpointIsUsedOnlyWithItsVocabulary) {
  const std::string tok = tmp.file("tok"), ckpt = tmp.file("ckpt"), bytes = tmp.file("bytes");
  expect_ok(tokenize_into(tok));
  const std::string shards = " --data '" + tok + "/tokens_*.bin'";
  const std::string model = " --layer-types LN --hidden 32 --heads 2 --kv-heads 1 --ffn 64 --seq-len 32";
  expect_ok(kLasp + " train --steps 1 --save " + ckpt + shards + model);
  expect_ok(train("--steps 1 --save " + bytes, model));
  expect_error(kLasp + " eval --checkpoint " + ckpt + " --data " + data + " --seq-len 32",
               {"was trained on the pieces of the tokenizer", "holds bytes"});
  expect_error(kLasp + " eval --checkpoint " + bytes + shards + " --seq-len 32",
               {"was trained on bytes", "holds the pieces of the tokenizer"});
  expect_error(train("--steps 2 --resume " + ckpt, model), {"the saved run trained on --data"});
  expect_error(train("--steps 2 --new-data --resume " + ckpt, model), {"holds bytes"});  // other data, other ids
  fs::rename(ckpt + "/tokenizer.model", tmp.file("away.model"));
  for (const std::string& command : {kLasp + " generate --checkpoint " + ckpt + " --prompt The",
                                     kLasp + " eval --checkpoint " + ckpt + shards + " --seq-len 32"})
    expect_error(command, {"its tokenizer.model is missing"});
  std::ofstream(ckpt + "/tokenizer.model") << lasp::read_file(tmp.file("away.model")) << "x";
  expect_error(kLasp + " generate --checkpoint " + ckpt + " --prompt The", {"not the one it was trained with"});
  fs::rename(tmp.file("away.model"), ckpt + "/tokenizer.model");
  expect_ok(kLasp + " generate --checkpoint " + ckpt + " --prompt The --max-new-tokens 3");
  expect_ok(kLasp + " eval --checkpoint " + ckpt + shards + " --seq-len 32");
}

// Old (issue 27): two runs saving to one folder got no lock nor warning (the checkpoint flipped between their
// models). A run holds NAME.lock beside its folder from its first check to its end; a second is refused,
// naming the folder and the holder. A killed holder's lock is taken over.
TEST_F(Reliability, TwoRunsCannotWriteOneFolder) {
  const std::string dir = tmp.file("ckpt"), lock = dir + ".lock";
  const std::string steps = "100000";
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1), dup2(null, 2);
    execl(kLasp.c_str(), kLasp.c_str(), "train", "--data", data.c_str(), "--seq-len", "32", "--hidden", "32", "--heads",
          "2", "--kv-heads", "1", "--ffn", "64", "--steps", steps.c_str(), "--save", dir.c_str(), (char*)nullptr);
    _exit(127);
  }
  const std::string holder = "process " + std::to_string(pid) + " on " + host_name();
  bool held = false;
  for (int i = 0; i < 2000 && !held; ++i, usleep(10000))
    held = fs::exists(lock) && lasp::read_file(lock) == holder;
  ASSERT_TRUE(held) << "the first run never took " << lock;
  expect_error(train("--steps 1 --save " + dir), {"--save " + dir + ": another lasp run (" + holder + ") is writing "
                                                  "this lasp checkpoint now", lock});
  expect_error(train("--steps 1 --save " + dir + "/"), {"another lasp run (" + holder + ")"});
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  waitpid(pid, nullptr, 0);
  expect_ok(train("--steps 1 --save " + dir));  // the killed run's lock file is taken over, and removed at the end
  EXPECT_FALSE(fs::exists(lock));
  // tokenize --out takes the same lock (held here by this test, as another run would)
  const std::string tok = tmp.file("tok");
  const int fd = open((tok + ".lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX), 0);
  ASSERT_EQ(write(fd, "process 4242 on elsewhere", 25), 25);
  expect_error(tokenize_into(tok), {"tokenize: --out " + tok + ": another lasp run (process 4242 on elsewhere)"});
  EXPECT_FALSE(fs::exists(tok));
  close(fd);
  expect_ok(tokenize_into(tok));
}

// Old (issue 27): a reader (eval) read config.json and model.safetensors by path, and a save swapping another
// checkpoint in between the two made it fail (77 of 376 runs) or mix them. A checkpoint is read through one
// opened folder: whatever is swapped in meanwhile, a reader gets one checkpoint whole.
TEST_F(Reliability, AReaderSeesOneCheckpointWhileSavesSwapThem) {
  const std::string a = tmp.file("a"), b = tmp.file("b"), dir = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + a));
  expect_ok(train("--steps 1 --save " + b, " --seq-len 32 --hidden 48 --heads 2 --kv-heads 1 --ffn 96 --layer-types LL"));
  struct Saved {
    lasp::ModelConfig config;
    std::vector<float> params;
  };
  std::vector<Saved> saved;
  for (const std::string& d : {a, b}) {
    Saved one{lasp::load_checkpoint_config(d), {}};
    one.params.resize(lasp::ParamLayout(one.config).total());
    lasp::load_checkpoint_weights(d, lasp::ParamLayout(one.config), one.params);
    saved.push_back(one);
  }
  auto save = [&](const Saved& one) {
    lasp::save_checkpoint(dir, one.config, lasp::ParamLayout(one.config), one.params, nullptr, false, "",
                          lasp::TokenMeaning{"bytes", -1});
  };
  save(saved[0]);
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread swapper([&] {
    for (int i = 1; !stop; ++i, ++swaps) save(saved[size_t(i % 2)]);
  });
  int read = 0;
  for (int i = 0; i < 300; ++i) {
    const lasp::OpenedCheckpoint opened(dir);
    const lasp::ModelConfig config = lasp::load_checkpoint_config(opened);
    const int which = config.hidden_size == saved[0].config.hidden_size ? 0 : 1;
    std::vector<float> params(lasp::ParamLayout(config).total());
    usleep(500);  // a swap or two between the reads
    ASSERT_NO_THROW(lasp::load_checkpoint_weights(opened, lasp::ParamLayout(config), params)) << "read " << i;
    EXPECT_EQ(params, saved[size_t(which)].params) << "read " << i;
    ++read;
  }
  // and whole runs of eval and generate, while the saves go on
  for (int i = 0; i < 20; ++i) {
    expect_ok(kLasp + " eval --checkpoint " + dir + " --data " + data + " --seq-len 32");
    expect_ok(kLasp + " generate --checkpoint " + dir + " --prompt hi --max-new-tokens 2");
  }
  stop = true;
  swapper.join();
  EXPECT_GT(swaps.load(), 40) << "too few swaps to test anything";
  EXPECT_EQ(read, 300);
}

// Old (issue 27): bench train --seq-lens with a repeated length drew its line back and forth in run order. Now
// the plot has one point per length, the median of its runs, in increasing order (PREFIX.dat holds them).
TEST_F(Reliability, BenchTrainPlotsOnePointPerLength) {
  const std::string prefix = tmp.file("lengths");
  expect_ok(kLasp + " bench train --layer-types L --hidden 32 --heads 2 --kv-heads 1 --ffn 64 --steps 1 --warmup 0 "
            "--seq-lens 256,128,256 --out " + prefix);
  std::istringstream dat(lasp::read_file(prefix + ".dat"));
  std::vector<int> lengths;
  for (std::string line; std::getline(dat, line);)
    if (!line.empty() && line[0] != '#') lengths.push_back(std::stoi(line));
  EXPECT_EQ(lengths, (std::vector<int>{128, 256}));
  EXPECT_TRUE(fs::exists(prefix + ".png"));
}

// Old: each length ran in a child process that was not handed --precision, so `--precision bf16` with several
// lengths timed fp32. Every row says the precision it ran.
TEST_F(Reliability, BenchTrainLengthsRunTheAskedPrecision) {
  const bool bf16 = std::string(lasp::bf16_path()) != "none";
  const std::string precision = bf16 ? "bf16" : "fp32", prefix = tmp.file("precision");
  expect_ok(kLasp + " bench train --layer-types L --hidden 32 --heads 2 --kv-heads 1 --ffn 64 --steps 1 --warmup 0 "
            "--seq-lens 64,128 --precision " + precision + " --out " + prefix);
  const nlohmann::json rows = nlohmann::json::parse(lasp::read_file(prefix + ".json"));
  ASSERT_EQ(rows.size(), 2u);
  for (const auto& row : rows) EXPECT_EQ(row.at("precision"), precision) << row.dump();
}

// ---- Undefined behaviour: sizes in 64 bits, absurd ones refused with what they would need ----

TEST_F(Reliability, AbsurdSizesAreRefusedWithTheMemoryTheyNeed) {
  // Old: B*N wrapped (UBSan: linear_attention.cpp, model.cpp).
  expect_error(train("--steps 1 --batch 2147483647"), {"tokens per process"});
  // Old: prompt + --max-new-tokens 2147483647 wrapped.
  const std::string dir = tmp.file("ckpt");
  expect_ok(train("--steps 1 --save " + dir));
  expect_error(kLasp + " generate --checkpoint " + dir + " --prompt hi --max-new-tokens 2147483647",
               {"--max-new-tokens 2147483647"});
  // Old: ParamLayout::total() wrapped for hidden 2^30, ffn 2^30 (a config that passes validation).
  expect_error(train("--steps 1", " --seq-len 32 --hidden 1073741824 --heads 2 --ffn 1073741824"), {"does not fit in 64 bits"});
  const std::string big = expect_error(train("--steps 1", " --seq-len 32 --hidden 65536 --heads 2 --ffn 65536"),
                                       {"more than this machine's"});
  EXPECT_TRUE(contains(big, "GiB") || contains(big, "TiB")) << big;
}

// ---- Messages: no build paths unless asked ----

TEST_F(Reliability, ErrorsCarryNoSourcePathsUnlessVerbose) {
  const std::string plain = expect_error(train("--steps 1 --batch 2147483647"), {"tokens per process"});
  EXPECT_FALSE(contains(plain, ".cpp:")) << plain;
  expect_error(kLasp + " --verbose train --data " + data + kTinyModel + " --steps 1 --batch 2147483647",
                                           {"[raised at ", ".cpp:"});
}

}  // namespace

namespace {

// Found by tests/fuzz (fuzz_config): a config holding FLT_MAX was accepted, but its own to_json output
// (3.4028235e+38, the shortest form, a little above FLT_MAX as a double) was refused.
TEST(ReliabilityFuzzFindings, ConfigRoundTripsAtFloatMax) {
  const lasp::ModelConfig c = lasp::ModelConfig::from_json({{"rms_norm_eps", 3.4028234663852886e38}});
  const lasp::ModelConfig back = lasp::ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.rms_norm_eps, c.rms_norm_eps);
  EXPECT_THROW(lasp::ModelConfig::from_json({{"rms_norm_eps", 3.5e38}}), lasp::Error);
}

// Found by tests/fuzz (fuzz_tokenizer_model): a tokenizer.model with a piece holding a NUL byte (or none) made
// SentencePiece throw its trie library's exception, which reached the user with its source path
// ("./third_party/darts_clone/darts.h:1143: exception: failed to insert key").
TEST(ReliabilityFuzzFindings, ATokenizerModelWithAnUnindexablePieceIsRefused) {
  const std::string model = std::string(LASP_SOURCE_DIR) + "/tests/fuzz/findings/fuzz_tokenizer_model/empty_or_nul_piece.model";
  try {
    lasp::Tokenizer::load(model);
    ADD_FAILURE() << "expected an error";
  } catch (const lasp::Error& e) {
    EXPECT_TRUE(contains(e.what(), "not a SentencePiece model: its piece 312 is text with a NUL byte")) << e.what();
  }
}

// Found by hand for the fuzz harnesses: a deeply nested value where a number belongs overflowed the stack
// while the error message dumped it (config and trainer_state.json alike).
TEST(ReliabilityFuzzFindings, DeepNestingIsRefusedNotACrash) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THROW(lasp::ModelConfig::from_json(nlohmann::json::parse("{\"vocab_size\": " + deep + "}")), lasp::Error);
  const std::string state = "{\"step\": " + deep + ", \"sampler\": \"x\", \"sp_size\": 1, \"dp_size\": 1, \"batch\": 1, "
                            "\"seq_len\": 8, \"seed\": 1, \"sp_layout\": \"contiguous\", \"data\": \"d\"}";
  try {
    lasp::parse_trainer_state(state, "trainer_state.json");
    ADD_FAILURE() << "expected an error";
  } catch (const lasp::Error& e) {
    EXPECT_TRUE(contains(e.what(), "a JSON array of 1 items")) << e.what();
  }
}

}  // namespace
