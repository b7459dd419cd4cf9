// Tiled causal softmax attention (FlashAttention-2 schedule on the CPU). Scores are kept in the log2
// domain: S2 = (scale * log2 e) q k^T, so every exponential is an exp2 (vectorized below).
//
// Forward, per (b, h, query tile): for each visible key tile
//     S = c Q K^T (gemm NT); mask; m' = max(m, rowmax S); P = exp2(S - m'); l = l 2^(m-m') + rowsum P;
//     O = O 2^(m-m') + P V (gemm NN)
//   then o = O / l, lse = (m + log2 l) ln 2.
// Backward, per (b, kv head), for each key tile, for each query head of the group and visible query tile
// (D_i = dout_i . o_i as the tile is packed), exactly 5 products:
//     S = c Q K^T; P = exp2(S - lse log2 e); dP = dO V^T; dS = P (dP - D);
//     dV += P^T dO; dK += scale dS^T Q; dQ += scale dS K.
// With fewer (b, kv head) pairs than threads, two passes instead (per key tile: dV, dK; per query tile: dQ),
// each recomputing P and dS: 7 products per tile pair, but every thread busy.
// Diagonal blocks (the same positions on both sides) skip their upper triangle in every product.
// With s.bf16 (and a CPU with AVX-512-BF16) every product takes bf16 operands (Q, K, V, dO, P, dS rounded to
// nearest even) with fp32 accumulation (kernels/bf16_tile.h), as bf16 flash attention does; the softmax's
// statistics, O, D and the gradients' sums stay fp32.
#include "kernels/softmax_attention.h"

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/check.h"
#include "kernels/bf16_tile.h"
#include "kernels/gemm.h"
#include "kernels/transpose.h"
#include "kernels/vec_math.h"

namespace lasp {
namespace {

// 256 x 256 tiles: per thread 2 x 256 KiB of scores, 64 KiB of output accumulator and 5 x 64 KiB of packed
// operands, in L2. With the operands packed once per tile, 128 to 256 on either side measure the same
// (N = 4096, H = 8, d = 64, one thread: 124-134 counted GFLOP/s; OpenBLAS on the strided tiles gave 100).
constexpr int kTileQ = 256;  // queries per tile
constexpr int kTileK = 256;  // keys per tile
constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kLn2 = 0.69314718055994530942f;

size_t round16(size_t n) { return (n + 15) / 16 * 16; }

struct Tiles {
  int tq, tk;
};
Tiles tiles_for(int Nq, int Nk) { return {std::min(kTileQ, Nq), std::min(kTileK, Nk)}; }

// The bf16 products' operands (kernels/bf16_tile.h), in 32-bit words (a pair of bf16 each): Q and dO as rows and
// in pairs along the queries; K and V transposed in pairs along d, K in pairs along the keys, and K's or V's rows
// before their transpose; P and dS as rows, and transposed (in pairs along the queries, with their untransposed
// pairs first).
struct Bf16Tiles {
  uint32_t *q_rows, *q_pairs, *do_rows, *do_pairs, *kt, *vt, *k_pairs, *kv_rows, *p_rows, *pairs, *pt, *dst;
  static size_t floats(Tiles t, int d) {
    const size_t d2 = (d + 1) / 2, q2 = (t.tq + 1) / 2, k2 = (t.tk + 1) / 2;
    return 2 * round16(t.tq * d2) + 2 * round16(q2 * d) + 3 * round16(d2 * t.tk) + round16(k2 * d) +
           round16(t.tq * k2) + 3 * round16(q2 * t.tk);
  }
  Bf16Tiles(float* base, Tiles t, int d) {
    const size_t d2 = (d + 1) / 2, q2 = (t.tq + 1) / 2, k2 = (t.tk + 1) / 2;
    uint32_t* at = reinterpret_cast<uint32_t*>(base);
    const auto take = [&](size_t n) { uint32_t* p = at; at += round16(n); return p; };
    q_rows = take(t.tq * d2), do_rows = take(t.tq * d2), q_pairs = take(q2 * d), do_pairs = take(q2 * d);
    kt = take(d2 * t.tk), vt = take(d2 * t.tk), kv_rows = take(d2 * t.tk), k_pairs = take(k2 * d);
    p_rows = take(t.tq * k2), pairs = take(q2 * t.tk), pt = take(q2 * t.tk), dst = take(q2 * t.tk);
  }
  static bf16* rows(uint32_t* w) { return reinterpret_cast<bf16*>(w); }
};

// Per-thread scratch: S (tq x tk), P/dP (tq x tk), O accumulator (tq x d), four row vectors (tq), the packed
// operands: three key-tile buffers (tk x d) and two query-tile buffers (tq x d); and the bf16 products' operands.
size_t per_thread_floats(Tiles t, int d) {
  return 2 * round16(size_t(t.tq) * t.tk) + round16(size_t(t.tq) * d) + 4 * round16(t.tq) +
         3 * round16(size_t(t.tk) * d) + 2 * round16(size_t(t.tq) * d) + Bf16Tiles::floats(t, d);
}
// Where a thread's bf16 operands start in its scratch.
float* bf16_area(float* thread, Tiles t, int d) { return thread + per_thread_floats(t, d) - Bf16Tiles::floats(t, d); }

// Operands as the register-blocked products want them (row-major, dense, B not transposed): a tile of
// `rows` rows of a (N, heads, d) tensor, copied dense or transposed. Packing once per tile costs ~1% of the
// products it feeds; OpenBLAS packing the strided tiles on every call cost ~25%.
void pack_rows(float* dst, const float* src, size_t ld, int rows, int d) {
  for (int r = 0; r < rows; ++r) std::copy_n(src + r * ld, d, dst + size_t(r) * d);
}
void pack_transposed(float* dst, const float* src, size_t ld, int rows, int d) {
  transpose(dst, rows, src, int(ld), rows, d);  // dst (d x rows)
}

std::string shape_str(const SoftmaxAttentionShape& s) {
  return fmt::format("B={} Nq={} Nk={} H={} H_kv={} d={} scale={} threads={} bf16={}", s.B, s.Nq, s.Nk, s.H, s.H_kv,
                     s.d, s.scale, s.threads, s.bf16);
}

void check_shape(const char* kernel, const SoftmaxAttentionShape& s) {
  LASP_CHECK(s.B > 0 && s.Nq > 0 && s.Nk > 0 && s.H > 0 && s.H_kv > 0 && s.d > 0 && s.threads > 0,
             "{}: expected positive sizes, got {}", kernel, shape_str(s));
  LASP_CHECK(s.H % s.H_kv == 0, "{}: expected H_kv to divide H, got {}", kernel, shape_str(s));
  LASP_CHECK(std::isfinite(s.scale), "{}: expected a finite scale, got {}", kernel, shape_str(s));
}

void check_ptr(const char* kernel, const void* p, const char* name, const SoftmaxAttentionShape& s) {
  LASP_CHECK(p != nullptr, "{}: {} is null ({})", kernel, name, shape_str(s));
}

// Splits the workspace into per-thread slices (64-byte aligned), one for each of s.threads threads.
int plan_threads(const char* kernel, const SoftmaxAttentionShape& s, Workspace ws, float** base, size_t* per) {
  const Tiles t = tiles_for(s.Nq, s.Nk);
  *per = per_thread_floats(t, s.d);
  LASP_CHECK(ws.data != nullptr || ws.floats == 0, "{}: workspace data is null ({})", kernel, shape_str(s));
  const size_t skew = ws.data ? (64 - reinterpret_cast<uintptr_t>(ws.data) % 64) % 64 / sizeof(float) : 0;
  const size_t usable = ws.floats > skew ? ws.floats - skew : 0;
  const size_t fits = usable / *per;
  LASP_CHECK(ws.data != nullptr && fits >= size_t(s.threads),
             "{}: workspace too small: got {} floats, need softmax_attention_workspace_floats(Nq, Nk, d, threads) = "
             "{} ({})",
             kernel, ws.floats, softmax_attention_workspace_floats(s.Nq, s.Nk, s.d, s.threads), shape_str(s));
  *base = ws.data + skew;
  return s.threads;
}

void pos_range(const int* pos, int n, int* lo, int* hi) {
  int a = pos[0], b = pos[0];
  for (int i = 1; i < n; ++i) {
    a = std::min(a, pos[i]);
    b = std::max(b, pos[i]);
  }
  *lo = a;
  *hi = b;
}

// S[i][j] = -inf where key j is not visible to query i: after it, or (qd: the queries' documents, or null)
// before its document's start.
void apply_mask(float* S, int nq, int nk, const int* qp, const int* kp, const int* qd) {
  for (int i = 0; i < nq; ++i) {
    float* row = S + size_t(i) * nk;
    const int p = qp[i], first = qd ? qd[i] : INT_MIN;
    for (int j = 0; j < nk; ++j)
      if (kp[j] > p || kp[j] < first) row[j] = -INFINITY;
  }
}

// What a (query tile, key tile) pair needs: nothing (every key after every query, or before every query's
// document), the mask, or neither. lo/hi: the tiles' position ranges; dlo/dhi: the queries' documents.
enum class Visibility { none, masked, all };
Visibility visibility(int qlo, int qhi, int dlo, int dhi, int klo, int khi) {
  if (klo > qhi || khi < dlo) return Visibility::none;
  return khi > qlo || klo < dhi ? Visibility::masked : Visibility::all;
}

// True for a causal diagonal block: both sides hold the same strictly increasing positions, so entry (i, j)
// is visible exactly when j <= i and the products may skip the upper triangle (Skip hints of gemm.h).
bool diagonal_pair(const int* qp, int nq, const int* kp, int nk) {
  if (nq != nk) return false;
  for (int i = 0; i < nq; ++i)
    if (qp[i] != kp[i] || (i > 0 && qp[i] <= qp[i - 1])) return false;
  return true;
}

// ---- row primitives: max, exp2 (with and without the sum), dS = P (dP - D) ----
#if defined(__AVX512F__)

// 2^x for x in [-126, 128], ~1 ulp; 0 for x < -126, -inf and NaN.
inline __m512 exp2_ps(__m512 x) {
  const __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.f));
  const __m512 r = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, r);  // [-0.5, 0.5]
  // minimax fit of 2^f on [-0.5, 0.5] (relative error 2e-9 before rounding)
  __m512 p = _mm512_set1_ps(1.5345811e-04f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399931e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6184891e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503286e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(ok, p, r);
}

inline __mmask16 tail_mask(int n) { return __mmask16((1u << n) - 1); }

float row_max(const float* s, int n) {
  __m512 a0 = _mm512_set1_ps(-INFINITY), a1 = a0;
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    a0 = _mm512_max_ps(a0, _mm512_loadu_ps(s + j));
    a1 = _mm512_max_ps(a1, _mm512_loadu_ps(s + j + 16));
  }
  for (; j + 16 <= n; j += 16) a0 = _mm512_max_ps(a0, _mm512_loadu_ps(s + j));
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    a1 = _mm512_mask_max_ps(a1, k, a1, _mm512_maskz_loadu_ps(k, s + j));
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
}

// s = 2^(s - m) in place; returns the row sum.
float exp2_row_sum(float* s, int n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 p0 = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
    const __m512 p1 = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j + 16), vm));
    _mm512_storeu_ps(s + j, p0);
    _mm512_storeu_ps(s + j + 16, p1);
    a0 = _mm512_add_ps(a0, p0);
    a1 = _mm512_add_ps(a1, p1);
  }
  for (; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vm));
    _mm512_mask_storeu_ps(s + j, k, p);
    a0 = _mm512_add_ps(a0, _mm512_maskz_mov_ps(k, p));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

void exp2_row(float* s, int n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    _mm512_mask_storeu_ps(s + j, k, exp2_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vm)));
  }
}

// dp = p (dp - D)
void ds_row(float* dp, const float* p, int n, float D) {
  const __m512 vd = _mm512_set1_ps(D);
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + j), vd);
    _mm512_mask_storeu_ps(dp + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + j), x));
  }
}

#else  // AVX2 and below: loops the compiler vectorizes (the scalar libm exp2 here was 9% of an AVX2 step)

float row_max(const float* s, int n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int j = 0; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

float exp2_row_sum(float* s, int n, float m) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; ++j) sum += (s[j] = vec_exp2(s[j] - m));
  return sum;
}

void exp2_row(float* s, int n, float m) {
#pragma omp simd
  for (int j = 0; j < n; ++j) s[j] = vec_exp2(s[j] - m);
}

void ds_row(float* dp, const float* p, int n, float D) {
#pragma omp simd
  for (int j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - D);
}

#endif

}  // namespace

size_t softmax_attention_workspace_floats(int Nq, int Nk, int d, int threads) {
  LASP_CHECK(Nq > 0 && Nk > 0 && d > 0 && threads > 0,
             "softmax_attention_workspace_floats: expected positive sizes, got Nq={} Nk={} d={} threads={}", Nq,
             Nk, d, threads);
  return size_t(threads) * per_thread_floats(tiles_for(Nq, Nk), d) + 16;  // + 16: alignment slack
}

void softmax_attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                               const int* q_pos, const int* k_pos, const int* q_doc, const SoftmaxAttentionShape& s,
                               Workspace ws) {
  const char* kernel = "softmax_attention_forward";
  check_shape(kernel, s);
  check_ptr(kernel, o, "o", s);
  check_ptr(kernel, lse, "lse", s);
  check_ptr(kernel, q, "q", s);
  check_ptr(kernel, k, "k", s);
  check_ptr(kernel, v, "v", s);
  check_ptr(kernel, q_pos, "q_pos", s);
  check_ptr(kernel, k_pos, "k_pos", s);
  float* base;
  size_t per;
  const int threads = plan_threads(kernel, s, ws, &base, &per);

  const Tiles t = tiles_for(s.Nq, s.Nk);
  const int B = s.B, Nq = s.Nq, Nk = s.Nk, H = s.H, H_kv = s.H_kv, d = s.d, group = H / H_kv;
  const int nqt = (Nq + t.tq - 1) / t.tq, nkt = (Nk + t.tk - 1) / t.tk;
  const long items = long(B) * H * nqt;
  const float c = s.scale * kLog2e;
  const size_t ldq = size_t(H) * d, ldk = size_t(H_kv) * d;
  const bool bf = s.bf16 && bf16_tiles_available();
  const int d2 = (d + 1) / 2;  // d in pairs (bf16 products)

#pragma omp parallel num_threads(threads)
  {
    float* S = base + size_t(omp_get_thread_num()) * per;
    float* O = S + 2 * round16(size_t(t.tq) * t.tk);
    float* m = O + round16(size_t(t.tq) * d);
    float* l = m + round16(t.tq);
    float* Kt = l + 2 * round16(t.tq);                // (d x tk) the key tile transposed
    float* Vp = Kt + round16(size_t(t.tk) * d);      // (tk x d) the value tile
    const Bf16Tiles w(bf16_area(S, t, d), t, d);  // the bf16 products' operands
#pragma omp for schedule(dynamic, 1)
    for (long item = 0; item < items; ++item) {
      // Later query tiles first: with causal positions they see the most keys (better load balance).
      const int qt = nqt - 1 - int(item % nqt);
      const int h = int(item / nqt % H), b = int(item / nqt / H), hk = h / group;
      const int q0 = qt * t.tq, nq = std::min(t.tq, Nq - q0);
      int qlo, qhi, dlo = INT_MIN, dhi = INT_MIN;
      pos_range(q_pos + q0, nq, &qlo, &qhi);
      const int* qd = q_doc ? q_doc + size_t(b) * Nq + q0 : nullptr;
      if (qd) pos_range(qd, nq, &dlo, &dhi);
      const float* qt_ptr = q + (size_t(b) * Nq + q0) * ldq + size_t(h) * d;
      if (bf) pack_bf16_rows(Bf16Tiles::rows(w.q_rows), qt_ptr, ldq, nq, d);
      std::fill(O, O + size_t(nq) * d, 0.f);
      std::fill(m, m + nq, -INFINITY);
      std::fill(l, l + nq, 0.f);
      for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * t.tk, nk = std::min(t.tk, Nk - k0);
        int klo, khi;
        pos_range(k_pos + k0, nk, &klo, &khi);
        const Visibility seen = visibility(qlo, qhi, dlo, dhi, klo, khi);
        if (seen == Visibility::none) continue;
        const size_t kv_off = (size_t(b) * Nk + k0) * ldk + size_t(hk) * d;
        // On a diagonal block the products skip the upper triangle: S's is left unset, then masked to -inf.
        const bool diag = khi > qlo && diagonal_pair(q_pos + q0, nq, k_pos + k0, nk);
        if (bf) {  // S in full (the mask covers a diagonal block's upper triangle)
          pack_bf16_pairs_transposed(w.kt, Bf16Tiles::rows(w.kv_rows), k + kv_off, ldk, nk, d);
          bf16_tile_product(nq, nk, d2, c, Bf16Tiles::rows(w.q_rows), 2 * d2, w.kt, nk, 0.f, S, nk);
        } else {
          pack_transposed(Kt, k + kv_off, ldk, nk, d);
          gemm(false, false, nq, nk, d, c, qt_ptr, int(ldq), Kt, nk, 0.f, S, nk, nullptr,
               diag ? Skip::c_upper : Skip::none);
        }
        if (seen == Visibility::masked) apply_mask(S, nq, nk, q_pos + q0, k_pos + k0, qd);
        for (int i = 0; i < nq; ++i) {
          float* row = S + size_t(i) * nk;
          const float m_new = std::max(m[i], row_max(row, nk));
          const float m_use = m_new == -INFINITY ? 0.f : m_new;  // row sees nothing yet: P = 0
          const float alpha = m[i] == m_new ? 1.f : std::exp2(m[i] - m_use);
          l[i] = l[i] * alpha + exp2_row_sum(row, nk, m_use);
          if (alpha != 1.f) {
            float* orow = O + size_t(i) * d;
            for (int x = 0; x < d; ++x) orow[x] *= alpha;
          }
          m[i] = m_new;
        }
        if (bf) {
          const int nk2 = (nk + 1) / 2;
          pack_bf16_rows(Bf16Tiles::rows(w.p_rows), S, nk, nq, nk);
          pack_bf16_pairs(w.k_pairs, v + kv_off, ldk, nk, d);  // V in pairs along the keys
          bf16_tile_product(nq, d, nk2, 1.f, Bf16Tiles::rows(w.p_rows), 2 * nk2, w.k_pairs, d, 1.f, O, d);
        } else {
          pack_rows(Vp, v + kv_off, ldk, nk, d);
          gemm(false, false, nq, d, nk, 1.f, S, nk, Vp, d, 1.f, O, d, nullptr, diag ? Skip::a_upper : Skip::none);
        }
      }
      for (int i = 0; i < nq; ++i) {
        float* orow = o + ((size_t(b) * Nq + q0 + i) * H + h) * d;
        const float* acc = O + size_t(i) * d;
        const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
        for (int x = 0; x < d; ++x) orow[x] = acc[x] * inv;
        lse[(size_t(b) * H + h) * Nq + q0 + i] = l[i] > 0.f ? (m[i] + std::log2(l[i])) * kLn2 : -INFINITY;
      }
    }
  }
}

void softmax_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* o,
                                const float* lse, const float* q, const float* k, const float* v,
                                const int* q_pos, const int* k_pos, const int* q_doc,
                                const SoftmaxAttentionShape& s, Workspace ws) {
  const char* kernel = "softmax_attention_backward";
  check_shape(kernel, s);
  check_ptr(kernel, dq, "dq", s);
  check_ptr(kernel, dk, "dk", s);
  check_ptr(kernel, dv, "dv", s);
  check_ptr(kernel, dout, "dout", s);
  check_ptr(kernel, o, "o", s);
  check_ptr(kernel, lse, "lse", s);
  check_ptr(kernel, q, "q", s);
  check_ptr(kernel, k, "k", s);
  check_ptr(kernel, v, "v", s);
  check_ptr(kernel, q_pos, "q_pos", s);
  check_ptr(kernel, k_pos, "k_pos", s);
  float* base;
  size_t per;
  const int threads = plan_threads(kernel, s, ws, &base, &per);

  const Tiles t = tiles_for(s.Nq, s.Nk);
  const int B = s.B, Nq = s.Nq, Nk = s.Nk, H = s.H, H_kv = s.H_kv, d = s.d, group = H / H_kv;
  const int nqt = (Nq + t.tq - 1) / t.tq, nkt = (Nk + t.tk - 1) / t.tk;
  const float c = s.scale * kLog2e;
  const size_t ldq = size_t(H) * d, ldk = size_t(H_kv) * d;
  // One work item per (b, KV head) accumulates its dK, dV over the query heads of its group and dQ, in one
  // pass. With fewer such items than threads (B H_kv < threads: GQA on a many-core node) the work is split
  // into two passes that use every thread: over key tiles (dK, dV) and over query tiles (dQ); each computes
  // the probabilities itself, 7 products per tile pair instead of 5.
  const bool split = long(B) * H_kv < threads;
  const bool bf = s.bf16 && bf16_tiles_available();
  const int d2 = (d + 1) / 2;  // d in pairs (bf16 products)

#pragma omp parallel num_threads(threads)
  {
    float* P = base + size_t(omp_get_thread_num()) * per;
    const Bf16Tiles w(bf16_area(P, t, d), t, d);  // the bf16 products' operands
    float* dP = P + round16(size_t(t.tq) * t.tk);
    float* Dv = dP + round16(size_t(t.tq) * t.tk) + round16(size_t(t.tq) * d);
    float* L2 = Dv + round16(t.tq);
    float* Kt = L2 + 2 * round16(t.tq);              // (d x tk) key tile transposed
    float* Vt = Kt + round16(size_t(t.tk) * d);      // (d x tk) value tile transposed
    float* Kp = Vt + round16(size_t(t.tk) * d);      // (tk x d) key tile
    float* Qp = Kp + round16(size_t(t.tk) * d);      // (tq x d) query tile
    float* dOp = Qp + round16(size_t(t.tq) * d);     // (tq x d) output-gradient tile

    struct QTile { size_t off; int q0, nq, lo, hi, dlo = INT_MIN, dhi = INT_MIN; const int* doc = nullptr; };
    struct KTile { size_t off; int k0, nk, lo, hi; };
    // Packs query tile qt of head h (Q, dO) with D_i = dout_i . o_i and lse in the log2 domain.
    auto load_q = [&](int b, int h, int qt) {
      QTile x{0, qt * t.tq, std::min(t.tq, Nq - qt * t.tq), 0, 0};
      pos_range(q_pos + x.q0, x.nq, &x.lo, &x.hi);
      if (q_doc) x.doc = q_doc + size_t(b) * Nq + x.q0, pos_range(x.doc, x.nq, &x.dlo, &x.dhi);
      x.off = (size_t(b) * Nq + x.q0) * ldq + size_t(h) * d;
      if (bf) {
        pack_bf16_rows(Bf16Tiles::rows(w.q_rows), q + x.off, ldq, x.nq, d);
        pack_bf16_rows(Bf16Tiles::rows(w.do_rows), dout + x.off, ldq, x.nq, d);
        pack_bf16_pairs(w.q_pairs, q + x.off, ldq, x.nq, d);
        pack_bf16_pairs(w.do_pairs, dout + x.off, ldq, x.nq, d);
      } else {
        pack_rows(Qp, q + x.off, ldq, x.nq, d);
        pack_rows(dOp, dout + x.off, ldq, x.nq, d);
      }
      for (int i = 0; i < x.nq; ++i) {
        const float* dor = dout + x.off + i * ldq;
        const float* orow = o + x.off + i * ldq;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)  // vectorized: this runs for every tile pair
        for (int e = 0; e < d; ++e) acc += dor[e] * orow[e];
        Dv[i] = acc;
        L2[i] = lse[(size_t(b) * H + h) * Nq + x.q0 + i] * kLog2e;
      }
      return x;
    };
    // Packs key tile kt of KV head hk (K^T, V^T, K).
    auto load_k = [&](int b, int hk, int kt) {
      KTile x{0, kt * t.tk, std::min(t.tk, Nk - kt * t.tk), 0, 0};
      pos_range(k_pos + x.k0, x.nk, &x.lo, &x.hi);
      x.off = (size_t(b) * Nk + x.k0) * ldk + size_t(hk) * d;
      if (bf) {
        pack_bf16_pairs_transposed(w.kt, Bf16Tiles::rows(w.kv_rows), k + x.off, ldk, x.nk, d);
        pack_bf16_pairs_transposed(w.vt, Bf16Tiles::rows(w.kv_rows), v + x.off, ldk, x.nk, d);
        pack_bf16_pairs(w.k_pairs, k + x.off, ldk, x.nk, d);
        return x;
      }
      pack_transposed(Kt, k + x.off, ldk, x.nk, d);
      pack_transposed(Vt, v + x.off, ldk, x.nk, d);
      pack_rows(Kp, k + x.off, ldk, x.nk, d);
      return x;
    };
    auto visible = [&](const QTile& qx, const KTile& kx) {
      return visibility(qx.lo, qx.hi, qx.dlo, qx.dhi, kx.lo, kx.hi) != Visibility::none;
    };
    // P = exp2(S - lse) and dP <- dS = P (dO V^T - D) for the loaded pair; returns whether it is a diagonal
    // block, whose products skip the upper triangle (P's is masked to 0, dS's set to 0).
    auto probabilities = [&](const QTile& qx, const KTile& kx) {
      const int nq = qx.nq, nk = kx.nk;
      const bool diag = kx.hi > qx.lo && diagonal_pair(q_pos + qx.q0, nq, k_pos + kx.k0, nk);
      const Skip upper = diag ? Skip::c_upper : Skip::none;
      if (bf)  // in full (the mask and dS's zeros cover a diagonal block's upper triangle)
        bf16_tile_product(nq, nk, d2, c, Bf16Tiles::rows(w.q_rows), 2 * d2, w.kt, nk, 0.f, P, nk);
      else
        gemm(false, false, nq, nk, d, c, Qp, d, Kt, nk, 0.f, P, nk, nullptr, upper);
      if (visibility(qx.lo, qx.hi, qx.dlo, qx.dhi, kx.lo, kx.hi) == Visibility::masked)
        apply_mask(P, nq, nk, q_pos + qx.q0, k_pos + kx.k0, qx.doc);
      for (int i = 0; i < nq; ++i) {
        float* row = P + size_t(i) * nk;
        if (L2[i] == -INFINITY)  // the query sees no key at all
          std::fill(row, row + nk, 0.f);
        else
          exp2_row(row, nk, L2[i]);
      }
      if (bf)
        bf16_tile_product(nq, nk, d2, 1.f, Bf16Tiles::rows(w.do_rows), 2 * d2, w.vt, nk, 0.f, dP, nk);
      else
        gemm(false, false, nq, nk, d, 1.f, dOp, d, Vt, nk, 0.f, dP, nk, nullptr, upper);
      for (int i = 0; i < nq; ++i) {
        const int visible = diag ? i + 1 : nk;
        float* row = dP + size_t(i) * nk;
        ds_row(row, P + size_t(i) * nk, visible, Dv[i]);
        std::fill(row + visible, row + nk, 0.f);
      }
      return diag;
    };
    // P^T and dS^T are upper triangular on a diagonal block, dS lower triangular.
    // bf16: X^T (X: P or dS, nq x nk) as an A operand, in pairs along the queries (nk x 2 q2 bf16).
    auto transposed_pairs = [&](uint32_t* dst, const float* X, int nq, int nk) {
      pack_bf16_pairs(w.pairs, X, nk, nq, nk);
      const int q2 = (nq + 1) / 2;
      transpose(reinterpret_cast<float*>(dst), q2, reinterpret_cast<const float*>(w.pairs), nk, q2, nk);
    };
    auto add_dkdv = [&](const QTile& qx, const KTile& kx, bool diag) {
      if (bf) {
        const int q2 = (qx.nq + 1) / 2;
        transposed_pairs(w.pt, P, qx.nq, kx.nk);
        bf16_tile_product(kx.nk, d, q2, 1.f, Bf16Tiles::rows(w.pt), 2 * q2, w.do_pairs, d, 1.f, dv + kx.off, int(ldk));
        transposed_pairs(w.dst, dP, qx.nq, kx.nk);
        bf16_tile_product(kx.nk, d, q2, s.scale, Bf16Tiles::rows(w.dst), 2 * q2, w.q_pairs, d, 1.f, dk + kx.off,
                          int(ldk));
        return;
      }
      const Skip skip = diag ? Skip::a_lower : Skip::none;
      gemm(true, false, kx.nk, d, qx.nq, 1.f, P, kx.nk, dOp, d, 1.f, dv + kx.off, int(ldk), nullptr, skip);
      gemm(true, false, kx.nk, d, qx.nq, s.scale, dP, kx.nk, Qp, d, 1.f, dk + kx.off, int(ldk), nullptr, skip);
    };
    auto add_dq = [&](const QTile& qx, const KTile& kx, bool diag) {
      if (bf) {
        const int k2 = (kx.nk + 1) / 2;
        pack_bf16_rows(Bf16Tiles::rows(w.p_rows), dP, kx.nk, qx.nq, kx.nk);  // dS's rows
        bf16_tile_product(qx.nq, d, k2, s.scale, Bf16Tiles::rows(w.p_rows), 2 * k2, w.k_pairs, d, 1.f, dq + qx.off,
                          int(ldq));
        return;
      }
      gemm(false, false, qx.nq, d, kx.nk, s.scale, dP, kx.nk, Kp, d, 1.f, dq + qx.off, int(ldq), nullptr,
           diag ? Skip::a_upper : Skip::none);
    };

    if (!split) {
#pragma omp for schedule(dynamic, 1)
      for (long item = 0; item < long(B) * H_kv; ++item) {
        // Key tiles outside: each is packed (two transposes) once, query tiles (plain copies) per pair.
        const int hk = int(item % H_kv), b = int(item / H_kv);
        for (int kt = 0; kt < nkt; ++kt) {
          const KTile kx = load_k(b, hk, kt);
          for (int h = hk * group; h < (hk + 1) * group; ++h)
            for (int qt = 0; qt < nqt; ++qt) {
              int lo, hi;
              pos_range(q_pos + qt * t.tq, std::min(t.tq, Nq - qt * t.tq), &lo, &hi);
              if (kx.lo > hi) continue;  // every key after every query
              const QTile qx = load_q(b, h, qt);
              if (!visible(qx, kx)) continue;  // before every query's document
              const bool diag = probabilities(qx, kx);
              add_dkdv(qx, kx, diag);
              add_dq(qx, kx, diag);
            }
        }
      }
    } else {
#pragma omp for schedule(dynamic, 1)
      for (long item = 0; item < long(B) * H_kv * nkt; ++item) {  // dK, dV: one key tile each
        const int kt = int(item % nkt), hk = int(item / nkt % H_kv), b = int(item / nkt / H_kv);
        const KTile kx = load_k(b, hk, kt);
        for (int h = hk * group; h < (hk + 1) * group; ++h)
          for (int qt = 0; qt < nqt; ++qt) {
            int lo, hi;
            pos_range(q_pos + qt * t.tq, std::min(t.tq, Nq - qt * t.tq), &lo, &hi);
            if (kx.lo > hi) continue;
            const QTile qx = load_q(b, h, qt);
            if (!visible(qx, kx)) continue;
            add_dkdv(qx, kx, probabilities(qx, kx));
          }
      }
#pragma omp for schedule(dynamic, 1)
      for (long item = 0; item < long(B) * H * nqt; ++item) {  // dQ: one query tile each
        const int qt = int(item % nqt), h = int(item / nqt % H), b = int(item / nqt / H);
        const QTile qx = load_q(b, h, qt);
        for (int kt = 0; kt < nkt; ++kt) {
          int lo, hi;
          pos_range(k_pos + kt * t.tk, std::min(t.tk, Nk - kt * t.tk), &lo, &hi);
          if (lo > qx.hi || hi < qx.dlo) continue;
          const KTile kx = load_k(b, h / group, kt);
          add_dq(qx, kx, probabilities(qx, kx));
        }
      }
    }
  }
}

void softmax_attention_merge(float* o_acc, float* lse_acc, const float* o_part, const float* lse_part, int B,
                             int Nq, int H, int d) {
  LASP_CHECK(B > 0 && Nq > 0 && H > 0 && d > 0, "softmax_attention_merge: expected positive sizes, got B={} Nq={} H={} d={}",
             B, Nq, H, d);
  LASP_CHECK(o_acc && lse_acc && o_part && lse_part,
             "softmax_attention_merge: null pointer (o_acc={} lse_acc={} o_part={} lse_part={}), B={} Nq={} H={} d={}",
             fmt::ptr(o_acc), fmt::ptr(lse_acc), fmt::ptr(o_part), fmt::ptr(lse_part), B, Nq, H, d);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int n = 0; n < Nq; ++n)
      for (int h = 0; h < H; ++h) {
        float& la = lse_acc[(size_t(b) * H + h) * Nq + n];
        const float lp = lse_part[(size_t(b) * H + h) * Nq + n];
        float* oa = o_acc + ((size_t(b) * Nq + n) * H + h) * d;
        const float* op = o_part + ((size_t(b) * Nq + n) * H + h) * d;
        if (lp == -INFINITY) continue;  // the part saw no key: nothing to add
        if (la == -INFINITY) {
          for (int x = 0; x < d; ++x) oa[x] = op[x];
          la = lp;
          continue;
        }
        const float mx = std::max(la, lp);
        const float wa = std::exp(la - mx), wp = std::exp(lp - mx), sum = wa + wp;
        for (int x = 0; x < d; ++x) oa[x] = (wa * oa[x] + wp * op[x]) / sum;
        la = mx + std::log(sum);
      }
}

}  // namespace lasp
