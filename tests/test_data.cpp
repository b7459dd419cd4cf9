// Tests of token data (byte-level text source, llm.c token shards, format detection, evaluation windows, the
// resumable random window sampler and its alignment, sequence-parallel slicing, the held-out split) and of the
// learning-rate schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/check.h"
#include "core/file.h"
#include "train/data.h"
#include "train/schedule.h"
#include "testing.h"

using namespace lasp;

namespace {

// A temporary file holding `bytes`, removed (with its folder) when the object goes.
struct TempFile {
  lasp::testing::TempDir dir{"lasp_test_data"};
  std::string path = dir.file("data.bin");
  explicit TempFile(const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + path);
  }
};

// Bytes 0, 1, ..., n-1 (mod 256).
std::vector<uint8_t> counting_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(i % 256);
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    b = uint8_t(x >> 24);
  }
  return v;
}

// The message of the lasp::Error that f throws; fails the test (and returns "") if it throws nothing.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a lasp::Error";
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ------------------------------------------------------------------------------------------- text source
TEST(TextTokens, SizeVocabAndRead) {
  TempFile f({'h', 'e', 'l', 'l', 'o', 0xff, 0x00});
  auto src = open_text_tokens(f.path);
  EXPECT_EQ(src->size(), 7);
  EXPECT_EQ(src->vocab_size(), 256);
  std::vector<int> out(3, -1);
  src->read(3, 3, out.data());
  EXPECT_EQ(out, (std::vector<int>{'l', 'o', 255}));
  src->read(7, 0, out.data());  // empty read at the end is fine
  EXPECT_TRUE(contains(error_of([&] { src->read(5, 3, out.data()); }), f.path));
  error_of([&] { src->read(-1, 1, out.data()); });
  error_of([&] { src->read(0, -1, out.data()); });
}

TEST(TextTokens, EmptyAndMissingFilesAreErrors) {
  TempFile empty({});
  std::string msg = error_of([&] { open_text_tokens(empty.path); });
  EXPECT_TRUE(contains(msg, empty.path)) << msg;
  EXPECT_TRUE(contains(msg, "empty")) << msg;

  const std::string missing = empty.path + ".does_not_exist";
  msg = error_of([&] { open_text_tokens(missing); });
  EXPECT_TRUE(contains(msg, missing)) << msg;

  msg = error_of([&] { open_text_tokens("/tmp"); });  // a directory
  EXPECT_TRUE(contains(msg, "/tmp")) << msg;
}

// ------------------------------------------------------------------------------------------- eval windows
TEST(EvalBatch, WindowsAreExact) {
  TempFile f(counting_bytes(100));
  auto src = open_text_tokens(f.path);
  const int N = 8;
  Batch b = eval_batch(*src, N, 0, 3);
  ASSERT_EQ(b.B, 3);
  ASSERT_EQ(b.N, N);
  ASSERT_EQ(b.inputs.size(), 24u);
  ASSERT_EQ(b.targets.size(), 24u);
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < N; ++i) {
      EXPECT_EQ(b.inputs[k * N + i], k * N + i) << "window " << k << " position " << i;
      EXPECT_EQ(b.targets[k * N + i], k * N + i + 1) << "window " << k << " position " << i;
    }
  // A later first window and a sub-range begin.
  Batch c = eval_batch(*src, N, 2, 1, /*begin=*/10);
  for (int i = 0; i < N; ++i) {
    EXPECT_EQ(c.inputs[i], 10 + 2 * N + i);
    EXPECT_EQ(c.targets[i], 10 + 2 * N + i + 1);
  }
}

TEST(EvalBatch, TooShortNamesTheSizes) {
  TempFile f(counting_bytes(24));  // windows of N=8: 0 and 1 fit (need 17), window 2 needs 25
  auto src = open_text_tokens(f.path);
  EXPECT_NO_THROW(eval_batch(*src, 8, 0, 2));
  std::string msg = error_of([&] { eval_batch(*src, 8, 0, 3); });
  EXPECT_TRUE(contains(msg, "24")) << msg;
  EXPECT_TRUE(contains(msg, "25")) << msg;
  // The sub-range end counts, not the file size.
  msg = error_of([&] { eval_batch(*src, 8, 0, 2, 0, 16); });
  EXPECT_TRUE(contains(msg, "16")) << msg;
  EXPECT_TRUE(contains(msg, "17")) << msg;
  error_of([&] { eval_batch(*src, 0, 0, 1); });
  error_of([&] { eval_batch(*src, 8, 0, 0); });
  error_of([&] { eval_batch(*src, 8, -1, 1); });
  error_of([&] { eval_batch(*src, 8, 0, 1, 0, 25); });  // end past the file
  EXPECT_EQ(eval_window_count(24, 8), 2);
  EXPECT_EQ(eval_window_count(25, 8), 3);
  EXPECT_EQ(eval_window_count(8, 8), 0);
}

// ------------------------------------------------------------------------------------------- sampler
TEST(WindowSampler, SameSeedSameBatchesDifferentSeedsDiffer) {
  TempFile f(random_bytes(5000, 1));
  auto src = open_text_tokens(f.path);
  WindowSampler a(*src, 16, 4, 42), b(*src, 16, 4, 42), c(*src, 16, 4, 43);
  bool differ = false;
  for (int s = 0; s < 10; ++s) {
    Batch x = a.next(), y = b.next(), z = c.next();
    EXPECT_EQ(x.inputs, y.inputs);
    EXPECT_EQ(x.targets, y.targets);
    differ |= x.inputs != z.inputs;
  }
  EXPECT_TRUE(differ);
  EXPECT_EQ(a.steps(), 10);
}

TEST(WindowSampler, RestoreContinuesIdentically) {
  TempFile f(random_bytes(3000, 2));
  auto src = open_text_tokens(f.path);
  WindowSampler a(*src, 32, 3, 7);
  for (int s = 0; s < 5; ++s) a.next();
  const std::string st = a.state();
  std::vector<Batch> expected;
  for (int s = 0; s < 6; ++s) expected.push_back(a.next());

  WindowSampler b(*src, 32, 3, 999);  // a different seed: the state replaces it
  b.next();
  b.restore(st);
  EXPECT_EQ(b.steps(), 5);
  for (int s = 0; s < 6; ++s) {
    Batch y = b.next();
    EXPECT_EQ(y.inputs, expected[s].inputs) << "step " << s;
    EXPECT_EQ(y.targets, expected[s].targets) << "step " << s;
  }
  EXPECT_EQ(b.steps(), 11);
  EXPECT_EQ(b.state(), a.state());

  error_of([&] { b.restore(""); });
  error_of([&] { b.restore("garbage 1 2 3"); });
  error_of([&] { b.restore(st.substr(0, st.size() / 2)); });
  error_of([&] { b.restore(st + " 17"); });
  EXPECT_EQ(b.state(), a.state());  // a failed restore leaves the sampler as it was
}

TEST(WindowSampler, WindowsAreConsistentAndInRange) {
  // Counting bytes with a period longer than the file: a token's value is its position, so every row must be
  // a run of consecutive positions with its start in [begin, end - N - 1].
  const int n = 200;
  std::vector<uint8_t> bytes(n);
  for (int i = 0; i < n; ++i) bytes[i] = uint8_t(i);
  TempFile f(bytes);
  auto src = open_text_tokens(f.path);
  struct Case { int N; int64_t begin, end; };
  for (Case cs : {Case{10, 0, -1}, Case{199, 0, -1}, Case{1, 0, -1}, Case{7, 50, 120}, Case{5, 100, 106}}) {
    const int64_t end = cs.end < 0 ? n : cs.end;
    WindowSampler s(*src, cs.N, 8, 123, cs.begin, cs.end);
    std::set<int> starts;
    for (int step = 0; step < 300; ++step) {
      Batch b = s.next();
      for (int r = 0; r < b.B; ++r) {
        const int start = b.inputs[size_t(r) * cs.N];
        ASSERT_GE(start, cs.begin);
        ASSERT_LE(start, end - cs.N - 1);
        starts.insert(start);
        for (int i = 0; i < cs.N; ++i) {
          ASSERT_EQ(b.inputs[size_t(r) * cs.N + i], start + i);
          ASSERT_EQ(b.targets[size_t(r) * cs.N + i], start + i + 1);
        }
      }
    }
    // 2400 draws over at most 190 starts: every start shows up (both ends included).
    EXPECT_EQ(int64_t(starts.size()), end - cs.begin - cs.N) << "N=" << cs.N << " begin=" << cs.begin;
  }
}

TEST(WindowSampler, FileOfExactlyOneWindow) {
  TempFile f(counting_bytes(17));
  auto src = open_text_tokens(f.path);
  WindowSampler s(*src, 16, 5, 1);
  for (int step = 0; step < 20; ++step) {
    Batch b = s.next();
    for (int r = 0; r < 5; ++r)
      for (int i = 0; i < 16; ++i) {
        ASSERT_EQ(b.inputs[r * 16 + i], i);
        ASSERT_EQ(b.targets[r * 16 + i], i + 1);
      }
  }
  std::string msg = error_of([&] { WindowSampler(*src, 17, 1, 1); });
  EXPECT_TRUE(contains(msg, "17 tokens")) << msg;
  EXPECT_TRUE(contains(msg, "18")) << msg;
  msg = error_of([&] { WindowSampler(*src, 8, 1, 1, 10, 17); });  // a sub-range of 7 tokens
  EXPECT_TRUE(contains(msg, "7 tokens")) << msg;
  error_of([&] { WindowSampler(*src, 0, 1, 1); });
  error_of([&] { WindowSampler(*src, 4, 0, 1); });
  error_of([&] { WindowSampler(*src, 4, 1, 1, 10, 5); });
  error_of([&] { WindowSampler(*src, 4, 1, 1, 0, 18); });
}

// ------------------------------------------------------------------------------------------- SP slicing
TEST(SliceForRank, ReassemblesTheFullBatch) {
  TempFile f(random_bytes(1000, 3));
  auto src = open_text_tokens(f.path);
  const int N = 12, B = 3;
  WindowSampler s(*src, N, B, 5);
  Batch full = s.next();
  for (int W : {1, 2, 3, 4}) {
    const int C = N / W;
    Batch joined;
    joined.inputs.assign(size_t(B) * N, -1);
    joined.targets.assign(size_t(B) * N, -1);
    for (int t = 0; t < W; ++t) {
      Batch part = slice_for_rank(full, t, W);
      ASSERT_EQ(part.B, B);
      ASSERT_EQ(part.N, C);
      ASSERT_EQ(part.inputs.size(), size_t(B) * C);
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < C; ++i) {
          joined.inputs[size_t(b) * N + t * C + i] = part.inputs[size_t(b) * C + i];
          joined.targets[size_t(b) * N + t * C + i] = part.targets[size_t(b) * C + i];
        }
      // Rank t's targets are its inputs shifted by one token of the window.
      for (int b = 0; b < B; ++b)
        for (int i = 0; i + 1 < C; ++i) EXPECT_EQ(part.targets[size_t(b) * C + i], part.inputs[size_t(b) * C + i + 1]);
    }
    EXPECT_EQ(joined.inputs, full.inputs) << "W=" << W;
    EXPECT_EQ(joined.targets, full.targets) << "W=" << W;
  }
  std::string msg = error_of([&] { slice_for_rank(full, 0, 5); });
  EXPECT_TRUE(contains(msg, "N=12")) << msg;
  EXPECT_TRUE(contains(msg, "W=5")) << msg;
  error_of([&] { slice_for_rank(full, 2, 2); });
  error_of([&] { slice_for_rank(full, -1, 2); });
  error_of([&] { slice_for_rank(full, 0, 0); });
}

// ------------------------------------------------------------------------------------------- split
TEST(SplitTokens, Ranges) {
  Split s = split_tokens(1000, 0.1);
  EXPECT_EQ(s.train_begin, 0);
  EXPECT_EQ(s.train_end, 900);
  EXPECT_EQ(s.val_begin, 900);
  EXPECT_EQ(s.val_end, 1000);
  s = split_tokens(1000, 0.0);
  EXPECT_EQ(s.train_end, 1000);
  EXPECT_EQ(s.val_begin, 1000);
  EXPECT_EQ(s.val_end, 1000);
  s = split_tokens(7, 0.5);  // 3.5 rounds to 4
  EXPECT_EQ(s.train_end, 3);
  EXPECT_EQ(s.val_begin, 3);
  EXPECT_EQ(s.val_end, 7);
  error_of([] { split_tokens(100, 1.0); });
  error_of([] { split_tokens(100, -0.1); });
  error_of([] { split_tokens(100, std::nan("")); });
  error_of([] { split_tokens(-1, 0.1); });

  // The parts feed the sampler and eval_batch; a part too small for a window is reported there.
  TempFile f(counting_bytes(100));
  auto src = open_text_tokens(f.path);
  s = split_tokens(src->size(), 0.2);
  WindowSampler train(*src, 8, 4, 1, s.train_begin, s.train_end);
  for (int step = 0; step < 50; ++step)
    for (int v : train.next().targets) EXPECT_LT(v, s.train_end);
  Batch val = eval_batch(*src, 8, 0, 2, s.val_begin, s.val_end);
  EXPECT_EQ(val.inputs[0], 80);
  std::string msg = error_of([&] { eval_batch(*src, 8, 0, 3, s.val_begin, s.val_end); });
  EXPECT_TRUE(contains(msg, "20 tokens")) << msg;
}

// ------------------------------------------------------------------------------------------- schedule
TEST(LearningRate, WarmupThenCosine) {
  const float max_lr = 1e-3f, min_lr = 1e-4f;
  const int total = 110, warmup = 10;
  EXPECT_FLOAT_EQ(learning_rate(1, total, max_lr, min_lr, warmup), max_lr / 10);
  EXPECT_FLOAT_EQ(learning_rate(5, total, max_lr, min_lr, warmup), max_lr / 2);
  EXPECT_FLOAT_EQ(learning_rate(warmup, total, max_lr, min_lr, warmup), max_lr);
  EXPECT_FLOAT_EQ(learning_rate(60, total, max_lr, min_lr, warmup), (max_lr + min_lr) / 2);  // decay midpoint
  EXPECT_FLOAT_EQ(learning_rate(total, total, max_lr, min_lr, warmup), min_lr);
  EXPECT_FLOAT_EQ(learning_rate(total + 1, total, max_lr, min_lr, warmup), min_lr);
  EXPECT_FLOAT_EQ(learning_rate(10000, total, max_lr, min_lr, warmup), min_lr);
  // A quarter into the decay: min + (max - min) * (1 + cos(pi/4)) / 2.
  EXPECT_NEAR(learning_rate(35, total, max_lr, min_lr, warmup),
              min_lr + (max_lr - min_lr) * 0.5 * (1 + std::cos(M_PI / 4)), 1e-9);
  // Monotone: up through warmup, down after.
  for (int s = 2; s <= total + 2; ++s) {
    const float prev = learning_rate(s - 1, total, max_lr, min_lr, warmup);
    const float cur = learning_rate(s, total, max_lr, min_lr, warmup);
    if (s <= warmup)
      EXPECT_GT(cur, prev) << s;
    else
      EXPECT_LE(cur, prev) << s;
  }
  // No warmup: the decay starts at step 1, just below max_lr. warmup == total: no decay.
  EXPECT_LT(learning_rate(1, 100, max_lr, min_lr, 0), max_lr);
  EXPECT_GT(learning_rate(1, 100, max_lr, min_lr, 0), 0.99f * max_lr);
  EXPECT_FLOAT_EQ(learning_rate(100, 100, max_lr, min_lr, 100), max_lr);
  EXPECT_FLOAT_EQ(learning_rate(101, 100, max_lr, min_lr, 100), min_lr);
  EXPECT_FLOAT_EQ(learning_rate(1, 1, max_lr, max_lr, 0), max_lr);  // constant lr
}

TEST(LearningRate, BadArguments) {
  EXPECT_TRUE(contains(error_of([] { learning_rate(0, 10, 1e-3f, 0, 1); }), "step"));
  EXPECT_TRUE(contains(error_of([] { learning_rate(1, 0, 1e-3f, 0, 0); }), "total_steps"));
  EXPECT_TRUE(contains(error_of([] { learning_rate(1, 10, 1e-3f, 0, 11); }), "warmup_steps"));
  EXPECT_TRUE(contains(error_of([] { learning_rate(1, 10, 1e-3f, 0, -1); }), "warmup_steps"));
  EXPECT_TRUE(contains(error_of([] { learning_rate(1, 10, 1e-3f, 2e-3f, 1); }), "min_lr"));
  EXPECT_TRUE(contains(error_of([] { learning_rate(1, 10, 1e-3f, -1e-4f, 1); }), "min_lr"));
  EXPECT_TRUE(contains(error_of([] { learning_rate(1, 10, NAN, 0, 1); }), "max_lr"));
}

// ------------------------------------------------------------------------------------------- token shards
namespace {

// A temporary folder; d / "name" is a path in it.
struct ShardDir : lasp::testing::TempDir {
  ShardDir() : lasp::testing::TempDir("lasp_test_shards") {}
  std::string operator/(const std::string& name) const { return file(name); }
};

// A shard's bytes with the given header fields (little-endian) followed by `token_bytes` raw bytes.
std::string raw_shard(int32_t magic, int32_t version, int32_t count, const std::string& token_bytes) {
  std::string b(1024, '\0');
  const int32_t fields[3] = {magic, version, count};
  for (int f = 0; f < 3; ++f)
    for (int k = 0; k < 4; ++k) b[size_t(4 * f + k)] = char(uint8_t(uint32_t(fields[f]) >> (8 * k)));
  return b + token_bytes;
}

std::vector<int> read_all(const TokenSource& src) {
  std::vector<int> v(size_t(src.size()));
  src.read(0, src.size(), v.data());
  return v;
}

}  // namespace

TEST(TokenShards, RoundTripByGlobInNameOrder) {
  ShardDir d;
  const std::vector<uint16_t> a = {0, 1, 2, 50256, 7}, b = {65535, 256, 255}, c = {9, 8, 7, 6, 5, 4, 3};
  // Written out of name order; an empty shard in the middle and a file that the pattern does not match.
  write_token_shard(d / "train_002.bin", c);
  write_token_shard(d / "train_000.bin", a);
  write_token_shard(d / "train_001.bin", {});
  write_token_shard(d / "train_0015.bin", b);
  write_token_shard(d / "val_000.bin", {1, 2, 3});
  auto src = open_token_shards(d / "train_*.bin");
  // Byte order of the names: train_000 < train_001 < train_0015 < train_002.
  std::vector<int> want;
  for (const auto* part : {&a, &b, &c}) want.insert(want.end(), part->begin(), part->end());
  ASSERT_EQ(src->size(), int64_t(want.size()));
  EXPECT_EQ(read_all(*src), want);
  EXPECT_EQ(src->vocab_size(), 65536);
  EXPECT_EQ(src->vocab_size(), 65536);  // the lazy scan runs once and stays
  // Reads that start in, end in and cross the boundaries (including the empty shard's).
  for (int64_t begin = 0; begin <= src->size(); ++begin)
    for (int64_t count = 0; begin + count <= src->size(); ++count) {
      std::vector<int> got(size_t(count) + 1, -1);
      src->read(begin, count, got.data());
      for (int64_t i = 0; i < count; ++i) ASSERT_EQ(got[size_t(i)], want[size_t(begin + i)]) << begin << "+" << i;
      ASSERT_EQ(got[size_t(count)], -1) << "read past its count";
    }
  std::vector<int> out(4);
  std::string msg = error_of([&] { src->read(src->size() - 2, 3, out.data()); });
  EXPECT_TRUE(contains(msg, "expected a range within [0, 15)")) << msg;
  error_of([&] { src->read(-1, 1, out.data()); });
}

TEST(TokenShards, OnePathAndTheVocabularyIsTheLargestTokenPlusOne) {
  ShardDir d;
  write_token_shard(d / "one.bin", {3, 50256, 17, 0});
  auto src = open_token_shards(d / "one.bin");
  EXPECT_EQ(src->size(), 4);
  EXPECT_EQ(read_all(*src), (std::vector<int>{3, 50256, 17, 0}));
  EXPECT_EQ(src->vocab_size(), 50257);
  // A single-file glob, and a bracket expression.
  EXPECT_EQ(open_token_shards(d / "on?.bin")->size(), 4);
  EXPECT_EQ(open_token_shards(d / "[o]ne.bin")->size(), 4);
}

TEST(TokenShards, FileFormatIsLittleEndianLlmC) {
  ShardDir d;
  write_token_shard(d / "s.bin", {0x0102, 0xFFFE, 20});
  const std::string bytes = read_file(d / "s.bin");
  ASSERT_EQ(bytes.size(), 1024u + 6u);
  // Header: magic 20240520 = 0x0134D888, version 1, count 3, then zeros.
  const std::string head = std::string("\x88\xD8\x34\x01", 4) + std::string("\x01\0\0\0", 4) +
                           std::string("\x03\0\0\0", 4);
  EXPECT_EQ(bytes.substr(0, 12), head);
  EXPECT_EQ(bytes.substr(12, 1012), std::string(1012, '\0'));
  EXPECT_EQ(bytes.substr(1024), std::string("\x02\x01\xFE\xFF\x14\x00", 6));
  // A hand-made shard (as llm.c / nanoGPT write them) reads back the same way.
  TempFile f(std::vector<uint8_t>{});
  write_file_atomic(f.path, raw_shard(20240520, 1, 2, std::string("\x34\x12\x00\x80", 4)));
  auto src = open_token_shards(f.path);
  EXPECT_EQ(read_all(*src), (std::vector<int>{0x1234, 0x8000}));
  EXPECT_EQ(src->vocab_size(), 0x8001);
}

TEST(TokenShards, BadFilesAreClearErrors) {
  ShardDir d;
  auto error_for = [&](const std::string& name, const std::string& bytes) {
    write_file_atomic(d / name, bytes);
    std::string msg = error_of([&] { open_token_shards(d / name); });
    EXPECT_TRUE(contains(msg, d / name)) << "the message names the file: " << msg;
    return msg;
  };
  std::string msg = error_for("magic.bin", raw_shard(123, 1, 2, "abcd"));
  EXPECT_TRUE(contains(msg, "expected magic 20240520, found 123")) << msg;
  msg = error_for("version.bin", raw_shard(20240520, 2, 2, "abcd"));
  EXPECT_TRUE(contains(msg, "unsupported version 2")) << msg;
  msg = error_for("truncated.bin", raw_shard(20240520, 1, 10, std::string(14, 'x')));
  EXPECT_TRUE(contains(msg, "header says 10 tokens (= 20 bytes) but the file holds only 14 bytes of tokens"))
      << msg;
  msg = error_for("odd.bin", raw_shard(20240520, 1, 2, std::string(5, 'x')));
  EXPECT_TRUE(contains(msg, "header says 2 tokens (= 4 bytes) but the file holds 5 bytes of tokens")) << msg;
  msg = error_for("negative.bin", raw_shard(20240520, 1, -3, ""));
  EXPECT_TRUE(contains(msg, "negative")) << msg;
  msg = error_for("empty.bin", "");
  EXPECT_TRUE(contains(msg, "is empty")) << msg;
  msg = error_for("short.bin", std::string(500, '\0'));
  EXPECT_TRUE(contains(msg, "holds 500 bytes, shorter than the 1024-byte header")) << msg;
  // A header alone is a valid shard of 0 tokens, but a set of shards must hold at least one token.
  msg = error_for("header_only.bin", raw_shard(20240520, 1, 0, ""));
  EXPECT_TRUE(contains(msg, "hold 0 tokens")) << msg;
  write_token_shard(d / "z_empty_1.bin", {});
  write_token_shard(d / "z_empty_2.bin", {});
  msg = error_of([&] { open_token_shards(d / "z_empty_*.bin"); });
  EXPECT_TRUE(contains(msg, "2 shard file(s)") && contains(msg, "hold 0 tokens")) << msg;
  // One bad shard among good ones is named.
  write_token_shard(d / "m_0.bin", {1, 2});
  write_file_atomic(d / "m_1.bin", raw_shard(20240520, 1, 4, "ab"));
  msg = error_of([&] { open_token_shards(d / "m_*.bin"); });
  EXPECT_TRUE(contains(msg, d / "m_1.bin") && contains(msg, "only 2 bytes")) << msg;

  msg = error_of([&] { open_token_shards(d / "nothing_*.bin"); });
  EXPECT_TRUE(contains(msg, "no file matches the shard pattern " + d / "nothing_*.bin")) << msg;
  msg = error_of([&] { open_token_shards(d / "missing.bin"); });
  EXPECT_TRUE(contains(msg, "cannot open shard file " + d / "missing.bin")) << msg;
  msg = error_of([&] { open_token_shards(d.path); });
  EXPECT_TRUE(contains(msg, "not a regular file")) << msg;
  error_of([&] { open_token_shards(""); });
}

TEST(OpenTokens, AutoDetectsShardsGlobsAndText) {
  ShardDir d;
  write_token_shard(d / "a.bin", {500, 1, 2});
  write_token_shard(d / "b.bin", {3});
  write_file_atomic(d / "text.txt", "hello world");
  write_file_atomic(d / "long.txt", std::string(2000, 'z'));
  // A text file that starts like the magic but is too short to be anything else: still text.
  write_file_atomic(d / "short.txt", "\x88\xD8\x34");

  auto s = open_tokens(d / "a.bin");
  EXPECT_EQ(s->size(), 3);
  EXPECT_EQ(s->vocab_size(), 501);
  s = open_tokens(d / "*.bin", "auto");
  EXPECT_EQ(read_all(*s), (std::vector<int>{500, 1, 2, 3}));
  s = open_tokens(d / "text.txt");
  EXPECT_EQ(s->size(), 11);
  EXPECT_EQ(s->vocab_size(), 256);
  EXPECT_EQ(read_all(*s)[0], int('h'));
  s = open_tokens(d / "short.txt");
  EXPECT_EQ(s->size(), 3);
  EXPECT_EQ(s->vocab_size(), 256);

  // Explicit formats: a shard read as text is its bytes; text read as shards is a magic error.
  s = open_tokens(d / "a.bin", "text");
  EXPECT_EQ(s->size(), 1024 + 6);
  EXPECT_EQ(open_tokens(d / "b.bin", "shards")->size(), 1);
  std::string msg = error_of([&] { open_tokens(d / "long.txt", "shards"); });
  EXPECT_TRUE(contains(msg, "expected magic 20240520, found 2054847098")) << msg;  // "zzzz"
  msg = error_of([&] { open_tokens(d / "text.txt", "shards"); });
  EXPECT_TRUE(contains(msg, "shorter than the 1024-byte header")) << msg;
  msg = error_of([&] { open_tokens(d / "text.txt", "csv"); });
  EXPECT_TRUE(contains(msg, "unknown token data format 'csv'") && contains(msg, "auto, text or shards")) << msg;
  // Missing files: a plain path is reported by the text reader, a pattern by the shard reader.
  msg = error_of([&] { open_tokens(d / "missing.txt"); });
  EXPECT_TRUE(contains(msg, "cannot open data file")) << msg;
  msg = error_of([&] { open_tokens(d / "missing_*.bin"); });
  EXPECT_TRUE(contains(msg, "no file matches")) << msg;
}

TEST(OpenTokens, ShardsFeedTheSamplerAndEvalWindows) {
  ShardDir d;
  std::vector<uint16_t> a(300), b(200);
  for (size_t i = 0; i < a.size(); ++i) a[i] = uint16_t(1000 + i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = uint16_t(1300 + i);
  write_token_shard(d / "s0.bin", a);
  write_token_shard(d / "s1.bin", b);
  auto src = open_tokens(d / "s*.bin");
  WindowSampler s(*src, 64, 4, 5);
  for (int step = 0; step < 50; ++step) {
    Batch bt = s.next();
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < 64; ++i) ASSERT_EQ(bt.targets[size_t(r) * 64 + i], bt.inputs[size_t(r) * 64 + i] + 1);
  }
  Batch e = eval_batch(*src, 100, 0, 4);
  EXPECT_EQ(e.inputs[299], 1299);
  EXPECT_EQ(e.inputs[300], 1300);  // window 3 starts at token 300, the second shard's first
}

// ------------------------------------------------------------------------------------------- sampler alignment
TEST(WindowSampler, AlignOneIsTheDefaultSampler) {
  TempFile f(random_bytes(4000, 3));
  auto src = open_text_tokens(f.path);
  for (int64_t begin : {0, 37}) {
    WindowSampler a(*src, 24, 5, 99, begin, 3900), b(*src, 24, 5, 99, begin, 3900, 1);
    for (int step = 0; step < 20; ++step) {
      Batch x = a.next(), y = b.next();
      ASSERT_EQ(x.inputs, y.inputs);
      ASSERT_EQ(x.targets, y.targets);
    }
    EXPECT_EQ(a.state(), b.state());
  }
}

TEST(WindowSampler, AlignedStartsAreMultiplesInRange) {
  const int n = 250;
  std::vector<uint8_t> bytes(n);
  for (int i = 0; i < n; ++i) bytes[i] = uint8_t(i);
  TempFile f(bytes);
  auto src = open_text_tokens(f.path);
  struct Case { int N; int64_t begin, end, align; };
  for (Case cs : {Case{16, 0, -1, 16}, Case{16, 0, -1, 17}, Case{10, 13, 200, 7}, Case{9, 20, 30, 10},
                  Case{4, 0, -1, 100}}) {
    const int64_t end = cs.end < 0 ? n : cs.end;
    WindowSampler s(*src, cs.N, 6, 4, cs.begin, cs.end, cs.align);
    std::set<int64_t> seen;
    for (int step = 0; step < 200; ++step)
      for (int64_t st : s.next_starts()) {
        ASSERT_EQ(st % cs.align, 0);
        ASSERT_GE(st, cs.begin);
        ASSERT_LE(st, end - cs.N - 1);
        seen.insert(st);
      }
    std::set<int64_t> all;
    for (int64_t st = 0; st <= end - cs.N - 1; st += cs.align)
      if (st >= cs.begin) all.insert(st);
    EXPECT_EQ(seen, all) << "N=" << cs.N << " align=" << cs.align;
    Batch b = s.next();
    for (int r = 0; r < b.B; ++r) EXPECT_EQ(b.inputs[size_t(r) * cs.N] % cs.align, 0);
  }
  std::string msg = error_of([&] { WindowSampler(*src, 10, 1, 1, 21, 39, 20); });  // starts 21..28
  EXPECT_TRUE(contains(msg, "multiple of the alignment 20")) << msg;
  error_of([&] { WindowSampler(*src, 10, 1, 1, 0, -1, 0); });
}
