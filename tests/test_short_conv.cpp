// Tests of the short causal depthwise convolution (kernels/short_conv.h) against a double reference written here
// from nn.Conv1d's definition: the cross-correlation over the left-padded sequence (the halo, or zeros, in the
// K-1 pad), token t seeing only positions from its document's start on. The backward is compared with central
// differences of that reference under L = sum(y * p), into zeroed and into pre-filled gradients (accumulation).
// Then the across-span rule: two spans joined by short_conv_tail (and its adjoint) equal the whole run, and a chain
// of decoding steps equals the forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "kernels/short_conv.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

namespace {


// y (B, N, C) in double. halo empty: zeros; starts empty: no documents.
std::vector<double> ref_conv(const std::vector<double>& x, const std::vector<double>& w,
                             const std::vector<double>& halo, const std::vector<uint8_t>& starts, int B, int N, int C,
                             int K) {
  std::vector<double> y((size_t)B * N * C), pad(N + K - 1);
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c) {
      for (int j = 0; j < K - 1; ++j) pad[j] = halo.empty() ? 0 : halo[((size_t)b * (K - 1) + j) * C + c];
      for (int u = 0; u < N; ++u) pad[K - 1 + u] = x[((size_t)b * N + u) * C + c];
      for (int t = 0; t < N; ++t) {
        int first = -(K - 1);  // the first readable position: the document's start, else the pad's first row
        for (int s = t; s >= 0; --s)
          if (!starts.empty() && starts[(size_t)b * N + s]) {
            first = s;
            break;
          }
        double acc = 0;
        for (int i = 0; i < K; ++i)  // pad[t + i] holds position t + i - (K - 1)
          if (t + i - (K - 1) >= first) acc += w[(size_t)c * K + i] * pad[t + i];
        y[((size_t)b * N + t) * C + c] = acc;
      }
    }
  return y;
}

// Document patterns for N tokens, as start positions: none (starts null), at 0 and N-1, consecutive inside, one
// inside, every token.
std::vector<std::vector<int>> start_patterns(int N) {
  std::vector<std::vector<int>> all = {{}, {0, N - 1}, {N / 2, N / 2 + 1}, {1}, {}};
  for (int t = 0; t < N; ++t) all.back().push_back(t);
  std::vector<std::vector<int>> out = {{}};
  for (size_t p = 1; p < all.size(); ++p) {
    std::vector<int> s;
    for (int t : all[p])
      if (t < N && std::find(s.begin(), s.end(), t) == s.end()) s.push_back(t);
    if (!s.empty()) out.push_back(s);
  }
  return out;
}

// starts (B, N): the pattern in row 0, and in row 1 shifted by one token (rows differ).
std::vector<uint8_t> make_starts(const std::vector<int>& pattern, int B, int N) {
  if (pattern.empty()) return {};
  std::vector<uint8_t> s((size_t)B * N, 0);
  for (int b = 0; b < B; ++b)
    for (int t : pattern) s[(size_t)b * N + std::min(N - 1, t + b)] = 1;
  return s;
}

std::string label_of(int B, int N, int C, int K, bool halo, const std::vector<int>& pattern) {
  std::string starts;
  for (int t : pattern) starts += std::to_string(t) + ",";
  return "B=" + std::to_string(B) + " N=" + std::to_string(N) + " C=" + std::to_string(C) + " K=" + std::to_string(K) +
         (halo ? " halo" : " no halo") + " starts={" + starts + "}";
}

// Calls f(B, N, C, K, with_halo, starts pattern) over the sweep.
void for_each_case(const std::function<void(int, int, int, int, bool, const std::vector<int>&)>& f) {
  for (int K : {1, 2, 4})
    for (int N : {1, 2, 3, 7, 33})
      for (int C : {1, 5, 17})
        for (bool halo : {false, true})
          for (const auto& pattern : start_patterns(N)) f(2, N, C, K, halo, pattern);
}

const float* data_or_null(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }
const uint8_t* data_or_null(const std::vector<uint8_t>& v) { return v.empty() ? nullptr : v.data(); }

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (double)std::fabs(a[i] - b[i]));
  return m;
}

TEST(ShortConv, ForwardMatchesConv1dReference) {
  uint32_t seed = 1;
  for_each_case([&](int B, int N, int C, int K, bool with_halo, const std::vector<int>& pattern) {
    const std::string label = label_of(B, N, C, K, with_halo, pattern);
    const auto x = random_vector((size_t)B * N * C, ++seed), w = random_vector((size_t)C * K, ++seed);
    const auto halo = with_halo ? random_vector((size_t)B * (K - 1) * C, ++seed) : std::vector<float>{};
    const auto starts = make_starts(pattern, B, N);
    const auto ref = ref_conv(to_double(x), to_double(w), to_double(halo), starts, B, N, C, K);
    std::vector<float> y((size_t)B * N * C, NAN);
    short_conv_forward(y.data(), x.data(), w.data(), data_or_null(halo), data_or_null(starts), B, N, C, K, 1);
    EXPECT_LE(normalized_error(ref, y), kFp32Tolerance) << label;
  });
}

// Tokens at or after a row's first start never read the halo: a huge halo changes nothing there.
TEST(ShortConv, HaloIgnoredAfterAStart) {
  const int B = 2, N = 9, C = 5, K = 4;
  const auto x = random_vector((size_t)B * N * C, 3), w = random_vector((size_t)C * K, 4);
  const auto halo = random_vector((size_t)B * (K - 1) * C, 5);
  auto big = halo;
  for (auto& v : big) v = 1e6f;
  std::vector<uint8_t> starts((size_t)B * N, 0);
  starts[1] = 1;      // row 0: token 0 reads the halo, 1.. do not
  starts[N + 0] = 1;  // row 1: no token reads it
  std::vector<float> y((size_t)B * N * C), y_big((size_t)B * N * C);
  short_conv_forward(y.data(), x.data(), w.data(), halo.data(), starts.data(), B, N, C, K, 1);
  short_conv_forward(y_big.data(), x.data(), w.data(), big.data(), starts.data(), B, N, C, K, 1);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < N; ++t)
      for (int c = 0; c < C; ++c) {
        const size_t i = ((size_t)b * N + t) * C + c;
        if (b == 0 && t == 0) EXPECT_NE(y[i], y_big[i]) << "row 0 token 0 reads the halo";
        else EXPECT_EQ(y[i], y_big[i]) << "b=" << b << " t=" << t << " c=" << c;
      }
}

TEST(ShortConv, BackwardMatchesFiniteDifferences) {
  uint32_t seed = 100;
  for_each_case([&](int B, int N, int C, int K, bool with_halo, const std::vector<int>& pattern) {
    const std::string label = label_of(B, N, C, K, with_halo, pattern);
    const auto x = random_vector((size_t)B * N * C, ++seed), w = random_vector((size_t)C * K, ++seed);
    const auto halo = with_halo ? random_vector((size_t)B * (K - 1) * C, ++seed) : std::vector<float>{};
    const auto p = random_vector((size_t)B * N * C, ++seed);
    const auto starts = make_starts(pattern, B, N);
    const auto xd = to_double(x), wd = to_double(w), hd = to_double(halo), pd = to_double(p);
    auto loss = [&](const std::vector<double>& xv, const std::vector<double>& wv, const std::vector<double>& hv) {
      const auto y = ref_conv(xv, wv, hv, starts, B, N, C, K);
      double L = 0;
      for (size_t i = 0; i < y.size(); ++i) L += y[i] * pd[i];
      return L;
    };
    std::vector<std::vector<double>> fd = {
        finite_difference([&](const std::vector<double>& v) { return loss(v, wd, hd); }, xd),
        finite_difference([&](const std::vector<double>& v) { return loss(xd, v, hd); }, wd)};
    if (with_halo) fd.push_back(finite_difference([&](const std::vector<double>& v) { return loss(xd, wd, v); }, hd));

    check_backward(fd, [&](std::vector<std::vector<float>>& g) {
      short_conv_backward(g[0].data(), g[1].data(), with_halo ? g[2].data() : nullptr, p.data(), x.data(), w.data(),
                          data_or_null(halo), data_or_null(starts), B, N, C, K, 1);
    }, label);
  });
}

// Several channel blocks on several threads (the kernels' parallel paths): the forward against the reference, and
// the backward equal to the one-thread run (each channel's sums run in the same order).
TEST(ShortConv, ThreadsSplitChannels) {
  const int B = 2, N = 200, C = 150, K = 4;
  const auto x = random_vector((size_t)B * N * C, 7), w = random_vector((size_t)C * K, 8);
  const auto halo = random_vector((size_t)B * (K - 1) * C, 9), dy = random_vector((size_t)B * N * C, 10);
  std::vector<uint8_t> starts((size_t)B * N, 0);
  starts[37] = starts[N + 120] = starts[N + 121] = 1;
  const auto ref = ref_conv(to_double(x), to_double(w), to_double(halo), starts, B, N, C, K);
  std::vector<float> y((size_t)B * N * C);
  short_conv_forward(y.data(), x.data(), w.data(), halo.data(), starts.data(), B, N, C, K, 4);
  EXPECT_LE(normalized_error(ref, y), kFp32Tolerance);

  std::vector<float> dx1(x.size()), dw1(w.size()), dh1(halo.size()), dx4(x.size()), dw4(w.size()), dh4(halo.size());
  short_conv_backward(dx1.data(), dw1.data(), dh1.data(), dy.data(), x.data(), w.data(), halo.data(), starts.data(), B,
                      N, C, K, 1);
  short_conv_backward(dx4.data(), dw4.data(), dh4.data(), dy.data(), x.data(), w.data(), halo.data(), starts.data(), B,
                      N, C, K, 4);
  EXPECT_EQ(dx1, dx4);
  EXPECT_EQ(dw1, dw4);
  EXPECT_EQ(dh1, dh4);
}

// A sequence run as two spans, the second with halo = short_conv_tail of the first, equals the whole run; the
// second span's dhalo, handed back through short_conv_tail_backward, completes the first span's dx and dhalo.
TEST(ShortConv, TwoSpansEqualTheWholeRun) {
  const int B = 2, N = 12, C = 5, K = 4;
  const auto x = random_vector((size_t)B * N * C, 11), w = random_vector((size_t)C * K, 12);
  const auto dy = random_vector((size_t)B * N * C, 13);
  // row 0: a start at 4 (inside the last K-1 tokens of a first span of 5..7) and at 10; row 1: at 1 and 2
  // (inside a first span shorter than K-1, from 3 on), then none.
  std::vector<uint8_t> starts((size_t)B * N, 0);
  starts[4] = starts[10] = starts[N + 1] = starts[N + 2] = 1;
  for (bool with_halo : {false, true})
    for (bool with_starts : {false, true})
      for (int n1 : {0, 1, 2, 3, 5, 6, 7, 11, 12}) {
        const std::string label = std::string(with_halo ? "halo" : "no halo") + (with_starts ? " starts" : "") +
                                  " n1=" + std::to_string(n1);
        const int n2 = N - n1;
        const auto halo = with_halo ? random_vector((size_t)B * (K - 1) * C, 14) : std::vector<float>{};
        const auto st = with_starts ? starts : std::vector<uint8_t>{};
        // The spans' rows, cut from the whole (B, N, .) arrays.
        auto cut = [&](const auto& v, int t0, int n, int width) {
          std::vector<typename std::decay_t<decltype(v)>::value_type> out;
          if (v.empty()) return out;
          for (int b = 0; b < B; ++b)
            out.insert(out.end(), v.begin() + ((size_t)b * N + t0) * width, v.begin() + ((size_t)b * N + t0 + n) * width);
          return out;
        };
        const auto x1 = cut(x, 0, n1, C), x2 = cut(x, n1, n2, C), dy1 = cut(dy, 0, n1, C), dy2 = cut(dy, n1, n2, C);
        const auto s1 = cut(st, 0, n1, 1), s2 = cut(st, n1, n2, 1);
        const uint8_t* s1p = n1 > 0 ? data_or_null(s1) : nullptr;
        const uint8_t* s2p = n2 > 0 ? data_or_null(s2) : nullptr;

        std::vector<float> y((size_t)B * N * C), dx((size_t)B * N * C), dw(w.size()), dh(halo.size());
        short_conv_forward(y.data(), x.data(), w.data(), data_or_null(halo), data_or_null(st), B, N, C, K, 1);
        short_conv_backward(dx.data(), dw.data(), with_halo ? dh.data() : nullptr, dy.data(), x.data(), w.data(),
                            data_or_null(halo), data_or_null(st), B, N, C, K, 1);

        std::vector<float> y1((size_t)B * n1 * C), y2((size_t)B * n2 * C), tail((size_t)B * (K - 1) * C, NAN);
        short_conv_forward(y1.data(), x1.data(), w.data(), data_or_null(halo), s1p, B, n1, C, K, 1);
        short_conv_tail(tail.data(), x1.data(), data_or_null(halo), s1p, B, n1, C, K);
        short_conv_forward(y2.data(), x2.data(), w.data(), tail.data(), s2p, B, n2, C, K, 1);
        std::vector<float> dx1(x1.size()), dx2(x2.size()), dw_split(w.size()), dh_split(halo.size()),
            dtail(tail.size());
        short_conv_backward(dx2.data(), dw_split.data(), dtail.data(), dy2.data(), x2.data(), w.data(), tail.data(),
                            s2p, B, n2, C, K, 1);
        short_conv_backward(dx1.data(), dw_split.data(), with_halo ? dh_split.data() : nullptr, dy1.data(),
                            x1.data(), w.data(), data_or_null(halo), s1p, B, n1, C, K, 1);
        short_conv_tail_backward(dx1.data(), with_halo ? dh_split.data() : nullptr, dtail.data(), s1p, B, n1, C, K);

        // The same float operations in the same order (a zeroed tail row adds w * 0): equal up to FMA contraction.
        EXPECT_LE(max_abs_diff(cut(y, 0, n1, C), y1), 1e-6) << label << " y, first span";
        EXPECT_LE(max_abs_diff(cut(y, n1, n2, C), y2), 1e-6) << label << " y, second span";
        EXPECT_LE(max_abs_diff(cut(dx, 0, n1, C), dx1), 1e-6) << label << " dx, first span";
        EXPECT_LE(max_abs_diff(cut(dx, n1, n2, C), dx2), 1e-6) << label << " dx, second span";
        EXPECT_LE(max_abs_diff(dw, dw_split), 1e-5) << label << " dw";
        EXPECT_LE(max_abs_diff(dh, dh_split), 1e-6) << label << " dhalo";
      }
}

// The tail's rows: the last K-1 positions, from the halo where N < K-1, zero before the last start.
TEST(ShortConv, TailRows) {
  const int B = 1, C = 2, K = 4;
  const std::vector<float> halo = {-1, -1, -2, -2, -3, -3}, x = {1, 1, 2, 2};  // positions -3..-1, then 0, 1
  std::vector<float> tail(6, NAN);
  short_conv_tail(tail.data(), x.data(), halo.data(), nullptr, B, 2, C, K);
  EXPECT_EQ(tail, (std::vector<float>{-3, -3, 1, 1, 2, 2}));
  short_conv_tail(tail.data(), x.data(), nullptr, nullptr, B, 2, C, K);
  EXPECT_EQ(tail, (std::vector<float>{0, 0, 1, 1, 2, 2}));
  const std::vector<uint8_t> starts = {0, 1};
  short_conv_tail(tail.data(), x.data(), halo.data(), starts.data(), B, 2, C, K);
  EXPECT_EQ(tail, (std::vector<float>{0, 0, 0, 0, 2, 2}));
  short_conv_tail(tail.data(), nullptr, halo.data(), nullptr, B, 0, C, K);
  EXPECT_EQ(tail, halo);
}

// Decoding token by token (the caller zeroes a row's cache at its document starts) equals the forward, and the
// final cache equals the tail.
TEST(ShortConv, DecodeStepsEqualTheForward) {
  const int B = 2, N = 9;
  for (int K : {1, 2, 4})
    for (int C : {5, 17})
      for (bool with_halo : {false, true}) {
        const std::string label = "K=" + std::to_string(K) + " C=" + std::to_string(C) + (with_halo ? " halo" : "");
        const auto x = random_vector((size_t)B * N * C, 20 + K), w = random_vector((size_t)C * K, 21 + K);
        const auto halo = with_halo ? random_vector((size_t)B * (K - 1) * C, 22) : std::vector<float>{};
        std::vector<uint8_t> starts((size_t)B * N, 0);
        starts[3] = starts[4] = starts[N + 0] = starts[N + 7] = 1;
        std::vector<float> y((size_t)B * N * C), tail((size_t)B * (K - 1) * C);
        short_conv_forward(y.data(), x.data(), w.data(), data_or_null(halo), starts.data(), B, N, C, K, 1);
        short_conv_tail(tail.data(), x.data(), data_or_null(halo), starts.data(), B, N, C, K);

        std::vector<float> cache = with_halo ? halo : std::vector<float>((size_t)B * (K - 1) * C, 0.f);
        std::vector<float> x_new((size_t)B * C), y_step((size_t)B * C), y_steps((size_t)B * N * C);
        for (int t = 0; t < N; ++t) {
          for (int b = 0; b < B; ++b) {
            if (starts[(size_t)b * N + t])
              std::fill_n(cache.begin() + (size_t)b * (K - 1) * C, (size_t)(K - 1) * C, 0.f);
            std::copy_n(x.begin() + ((size_t)b * N + t) * C, C, x_new.begin() + (size_t)b * C);
          }
          short_conv_step(y_step.data(), cache.data(), x_new.data(), w.data(), B, C, K);
          for (int b = 0; b < B; ++b)
            std::copy_n(y_step.begin() + (size_t)b * C, C, y_steps.begin() + ((size_t)b * N + t) * C);
        }
        EXPECT_LE(max_abs_diff(y, y_steps), 1e-6) << label;
        EXPECT_EQ(cache, tail) << label;
      }
}

TEST(ShortConv, RefusesBadSizes) {
  std::vector<float> a(64), b(64), c(64), d(64), e(64);
  const float* n = nullptr;
  expect_error([&] { short_conv_forward(a.data(), b.data(), c.data(), n, nullptr, 1, 4, 2, 0, 1); },
               "short_conv_forward: kernel width K must be >= 1, got 0");
  expect_error([&] { short_conv_forward(a.data(), b.data(), c.data(), n, nullptr, 1, 4, 0, 2, 1); },
               "short_conv_forward: channels C must be >= 1, got 0");
  expect_error([&] { short_conv_forward(a.data(), b.data(), c.data(), n, nullptr, 1, -1, 2, 2, 1); },
               "short_conv_forward: tokens N must be >= 0, got -1");
  expect_error([&] { short_conv_forward(a.data(), b.data(), c.data(), n, nullptr, 1, 4, 2, 2, 0); },
               "short_conv_forward: threads must be >= 1, got 0");
  expect_error([&] { short_conv_forward(a.data(), a.data(), c.data(), n, nullptr, 1, 4, 2, 2, 1); },
               "short_conv_forward: y must not alias x");
  expect_error([&] { short_conv_forward(a.data(), nullptr, c.data(), n, nullptr, 1, 4, 2, 2, 1); },
               "short_conv_forward: null pointer");
  expect_error([&] { short_conv_backward(a.data(), b.data(), nullptr, c.data(), d.data(), e.data(), n, nullptr, 1, 4,
                                         2, 0, 1); },
               "short_conv_backward: kernel width K must be >= 1, got 0");
  expect_error([&] { short_conv_backward(a.data(), b.data(), nullptr, a.data(), d.data(), e.data(), n, nullptr, 1, 4,
                                         2, 2, 1); },
               "short_conv_backward: a gradient must not alias");
  expect_error([&] { short_conv_tail(a.data(), b.data(), n, nullptr, 1, 4, 0, 2); },
               "short_conv_tail: channels C must be >= 1, got 0");
  expect_error([&] { short_conv_tail_backward(a.data(), nullptr, b.data(), nullptr, 1, -2, 2, 2); },
               "short_conv_tail_backward: tokens N must be >= 0, got -2");
  expect_error([&] { short_conv_step(a.data(), b.data(), c.data(), d.data(), 1, 2, 0); },
               "short_conv_step: kernel width K must be >= 1, got 0");
  expect_error([&] { short_conv_step(a.data(), a.data(), c.data(), d.data(), 1, 2, 3); },
               "short_conv_step: y must not alias");
}

}  // namespace
