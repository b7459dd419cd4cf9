// Tests of token data (byte-level text source, evaluation windows, the resumable random window sampler,
// sequence-parallel slicing, the held-out split) and of the learning-rate schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/check.h"
#include "train/data.h"
#include "train/schedule.h"

using namespace lasp;

namespace {

// A temporary file holding `bytes`, removed when the object goes.
struct TempFile {
  std::string path;
  explicit TempFile(const std::vector<uint8_t>& bytes) {
    const char* dir = std::getenv("TMPDIR");
    std::string templ = std::string(dir && *dir ? dir : "/tmp") + "/lasp_test_data_XXXXXX";
    std::vector<char> name(templ.begin(), templ.end());
    name.push_back('\0');
    int fd = mkstemp(name.data());
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    path = name.data();
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n <= 0) {
        ::close(fd);
        throw std::runtime_error("write failed");
      }
      done += size_t(n);
    }
    ::close(fd);
  }
  ~TempFile() { std::remove(path.c_str()); }
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
