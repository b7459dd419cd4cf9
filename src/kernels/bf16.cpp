#include "kernels/bf16.h"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "core/check.h"

namespace lasp {

namespace {

bool cpu_has(unsigned leaf, unsigned subleaf, int reg, int bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}

bool has_avx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }

// 16 floats to bf16 with the integer form of round-to-nearest-even (the same rule as to_bf16).
__attribute__((target("avx512f,avx512bw"))) void to_bf16_avx512(bf16* dst, const float* src, size_t n) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(0x400000);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(src + i));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, lsb));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
  for (; i < n; ++i) dst[i] = to_bf16(src[i]);
}

// The matmul primitives, one per product shape (the model asks for a handful, every step).
// oneDNN splits a product's work for the threads there are when it creates the primitive: they are part of
// the key (measured: a primitive made on 1 thread ran no faster on 2).
struct Key {
  bool ta, tb;
  int M, N, K, lda, ldb, ldc, threads;
  float alpha, beta;
  bool c_bf16;
  bool operator<(const Key& o) const {
    return std::tie(ta, tb, M, N, K, lda, ldb, ldc, threads, alpha, beta, c_bf16) <
           std::tie(o.ta, o.tb, o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.threads, o.alpha, o.beta, o.c_bf16);
  }
};

struct Primitives {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;
  std::map<Key, std::pair<dnnl::matmul, dnnl::matmul::primitive_desc>> cache;
};

Primitives& primitives() {
  static Primitives p;
  return p;
}

}  // namespace

bf16 to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16((u | 0x400000u) >> 16);  // NaN: keep it, quiet
  u += 0x7fffu + ((u >> 16) & 1u);  // halfway rounds to the even neighbour
  return bf16(u >> 16);
}

float from_bf16(bf16 x) {
  const uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

void to_bf16_serial(bf16* dst, const float* src, size_t n) {
  static const bool avx512 = has_avx512();
  if (avx512) return to_bf16_avx512(dst, src, n);
  for (size_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

void to_bf16(bf16* dst, const float* src, size_t n) {
  constexpr size_t kPart = 1 << 16;
#pragma omp parallel for schedule(static) if (n > 4 * kPart)
  for (size_t at = 0; at < n; at += kPart) to_bf16_serial(dst + at, src + at, std::min(kPart, n - at));
}

void from_bf16(float* dst, const bf16* src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 18))
  for (size_t i = 0; i < n; ++i) dst[i] = from_bf16(src[i]);
}

const char* bf16_path() {
  static const char* path = [] {
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const bool amx = cpu_has(7, 0, 3, 22) && (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx;
    const bool avx512_bf16 =
        cpu_has(7, 1, 0, 5) && (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
    return amx ? "AMX" : avx512_bf16 ? "AVX-512-BF16" : "none";
  }();
  return path;
}

namespace {

// C = alpha op(A) op(B) + beta C, C fp32 or (c_bf16, beta 0) bf16.
void matmul_bf16(const char* name, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda,
                 const bf16* B, int ldb, float beta, void* C, int ldc, bool c_bf16) {
  LASP_CHECK(std::strcmp(bf16_path(), "none") != 0,
             "{}: this CPU has neither AMX nor AVX-512-BF16 for bf16 products; use --precision fp32", name);
  LASP_CHECK(M > 0 && N > 0 && K > 0 && A && B && C, "{}: expected positive sizes and operands, got M={} N={} K={}",
             name, M, N, K);
  using dims = dnnl::memory::dims;
  using dt = dnnl::memory::data_type;
  const dnnl::memory::desc a({M, K}, dt::bf16, trans_a ? dims{1, lda} : dims{lda, 1});
  const dnnl::memory::desc b({K, N}, dt::bf16, trans_b ? dims{1, ldb} : dims{ldb, 1});
  const dnnl::memory::desc c({M, N}, c_bf16 ? dt::bf16 : dt::f32, dims{ldc, 1});
  Primitives& p = primitives();
  dnnl::matmul* product;
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    const Key key{trans_a, trans_b, M, N, K, lda, ldb, ldc, omp_get_max_threads(), alpha, beta, c_bf16};
    auto it = p.cache.find(key);
    if (it == p.cache.end()) {
      dnnl::primitive_attr attr;
      if (alpha != 1.f) attr.set_output_scales(0, {alpha});
      if (beta != 0.f) {
        dnnl::post_ops ops;
        ops.append_sum(beta);
        attr.set_post_ops(ops);
      }
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, p.engine);
      it = p.cache.emplace(key, std::make_pair(dnnl::matmul(pd), pd)).first;
    }
    product = &it->second.first;
  }
  dnnl::stream stream(p.engine);
  product->execute(stream, {{DNNL_ARG_SRC, dnnl::memory(a, p.engine, const_cast<bf16*>(A))},
                            {DNNL_ARG_WEIGHTS, dnnl::memory(b, p.engine, const_cast<bf16*>(B))},
                            {DNNL_ARG_DST, dnnl::memory(c, p.engine, C)}});
  stream.wait();
}

}  // namespace

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda, const bf16* B,
               int ldb, float beta, float* C, int ldc) {
  matmul_bf16("gemm_bf16", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, false);
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda, const bf16* B,
               int ldb, bf16* C, int ldc) {
  matmul_bf16("gemm_bf16", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, 0.f, C, ldc, true);
}

}  // namespace lasp
