#include "peak.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>

namespace lasp {
namespace {

// 16 independent accumulator chains hide the FMA latency (4 cycles x 2 ports needs >= 8).
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec splat(float x) { return _mm512_set1_ps(x); }
inline float first(Vec v) { return _mm512_cvtss_f32(v); }
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec splat(float x) { return _mm256_set1_ps(x); }
inline float first(Vec v) { return _mm256_cvtss_f32(v); }
#else
using Vec = float;
constexpr int kLanes = 1;
inline Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
inline Vec splat(float x) { return x; }
inline float first(Vec v) { return v; }
#endif

constexpr int kChains = 16;

// Runs `iters` rounds of kChains FMAs; returns a value that depends on all of them.
float fma_loop(long iters) {
  Vec acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = splat(1.0f + i * 1e-3f);
  const Vec a = splat(0.999999f), b = splat(1e-7f);
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = fma(acc[i], a, b);
  float s = 0;
  for (int i = 0; i < kChains; ++i) s += first(acc[i]);
  return s;
}

}  // namespace

double fma_peak_gflops(int threads) {
  const long iters = 4'000'000;  // ~0.04 s per thread at 200 GFLOP/s
  const double flops_per_thread = double(iters) * kChains * kLanes * 2;
  double best = 0;
  volatile float sink = 0;
  for (int trial = 0; trial < 5; ++trial) {
    auto t0 = std::chrono::steady_clock::now();
    float sum = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sum)
    sum += fma_loop(iters);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink = sink + sum;
    best = std::max(best, flops_per_thread * threads / dt / 1e9);
  }
  return best;
}

}  // namespace lasp
