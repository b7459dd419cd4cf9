#include "kernels/gla.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/transpose.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

void check(const char* kernel, const LinearAttentionShape& s, Workspace ws, size_t need) {
  LASP_CHECK(s.B > 0 && s.N > 0 && s.H > 0 && s.d > 0 && s.block > 0 && s.threads > 0,
             "{}: sizes must be positive, got B={} N={} H={} d={} block={} threads={}", kernel, s.B, s.N, s.H, s.d,
             s.block, s.threads);
  LASP_CHECK(ws.floats >= need && (need == 0 || ws.data != nullptr),
             "{}: workspace of {} floats needed for d={} block={} on {} threads, got {}", kernel, need, s.d, s.block,
             s.threads, ws.floats);
}

#if defined(__AVX512F__)
// The sum of a vector's lanes, as a tree (GCC 12's headers warn of an uninitialized value in the shuffles).
inline float horizontal_sum(__m512 x) {
  alignas(64) float l[16];
  _mm512_store_ps(l, x);
  for (int w = 8; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) l[i] += l[i + w];
  return l[0];
}
#endif

// a . b, vectorized (a serial chain of scalar adds here cost 3/4 of the forward).
float dot(const float* a, const float* b, int n) {
  int i = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    i = n;
  }
  sum = horizontal_sum(acc);
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// One thread's scratch: one block of one (batch row, head).
struct Scratch {
  float *state, *dstate;         // (d, d): the running S (forward) or dS (backward)
  float *st, *vt;                // (d, d) S or dS transposed; (d, blk) V transposed: every product NN or TN
  float *q, *k, *v, *g, *o;      // (blk, d) the block's rows; o: dO in the backward
  float *c, *cr;                 // (blk, d) the gates summed from the block start to t, and after u to its end
  float* eg;                     // (blk, d) exp(g): each token's gate
  float *qg, *kg;                // (blk, d) q_t exp(c_t), k_u exp(cr_u)
  float *dq, *dk, *dv;           // (blk, d) the block's contributions (backward)
  float *a, *da;                 // (blk, blk) intra-block scores and their gradient
  float *run, *e, *ke, *qe;      // (d) a running sum; one pair's gate product, k_u e, q_t e
};

Scratch carve(Carver& c, const LinearAttentionShape& s, bool backward) {
  const size_t bd = size_t(s.block) * s.d, dd = size_t(s.d) * s.d;
  Scratch w{};
  w.state = c.take(dd);
  for (float** part : {&w.q, &w.k, &w.v, &w.g, &w.o, &w.c, &w.cr, &w.eg, &w.qg, &w.kg}) *part = c.take(bd);
  w.a = c.take(size_t(s.block) * s.block);
  for (float** part : {&w.run, &w.e, &w.ke}) *part = c.take(s.d);
  if (backward) {
    w.dstate = c.take(dd);
    w.st = c.take(dd);
    w.vt = c.take(bd);
    for (float** part : {&w.dq, &w.dk, &w.dv}) *part = c.take(bd);
    w.da = c.take(size_t(s.block) * s.block);
    w.qe = c.take(s.d);
  }
  return w;
}

size_t stride(const LinearAttentionShape& s, bool backward) {
  Carver counter{nullptr};
  carve(counter, s, backward);
  return counter.used;
}

size_t workspace(const LinearAttentionShape& s, bool backward) { return stride(s, backward) * size_t(s.threads); }

// Rows [t0, t0 + rows) of head (b, h) of a (B, N, H, d) tensor.
struct Rows {
  const LinearAttentionShape& s;
  int b, h, t0, rows;
  long at(int r) const { return ((long(b) * s.N + t0 + r) * s.H + h) * s.d; }
  void load(float* dst, const float* x) const {
    for (int r = 0; r < rows; ++r) {
      const float* src = x + at(r);
#pragma omp simd
      for (int i = 0; i < s.d; ++i) dst[long(r) * s.d + i] = src[i];
    }
  }
  void store(float* x, const float* src) const {
    for (int r = 0; r < rows; ++r) {
      float* dst = x + at(r);
#pragma omp simd
      for (int i = 0; i < s.d; ++i) dst[i] = src[long(r) * s.d + i];
    }
  }
  void add(float* x, const float* src) const {
    for (int r = 0; r < rows; ++r)
#pragma omp simd
      for (int i = 0; i < s.d; ++i) x[at(r) + i] += src[long(r) * s.d + i];
  }
};

// Loads a block's q, k, v and log-gates; c_t = the gates' sum over [0, t], cr_u = over (u, last]; qg = q exp(c),
// kg = k exp(cr). Each sum is taken directly (never as the difference of two long sums, which would lose its
// precision to theirs), and every exponent is <= 0.
void load_block(Scratch& w, const Rows& rows, const float* q, const float* k, const float* v, const float* g) {
  const int d = rows.s.d, n = rows.rows;
  rows.load(w.q, q);
  rows.load(w.k, k);
  rows.load(w.v, v);
  rows.load(w.g, g);
#pragma omp simd
  for (int i = 0; i < d; ++i) w.c[i] = w.g[i], w.cr[(n - 1) * d + i] = 0.f;
  for (int t = 1; t < n; ++t)
#pragma omp simd
    for (int i = 0; i < d; ++i) w.c[t * d + i] = w.c[(t - 1) * d + i] + w.g[t * d + i];
  for (int t = n - 2; t >= 0; --t)
#pragma omp simd
    for (int i = 0; i < d; ++i) w.cr[t * d + i] = w.cr[(t + 1) * d + i] + w.g[(t + 1) * d + i];
  for (int t = 0; t < n; ++t)
#pragma omp simd
    for (int i = 0; i < d; ++i) {
      w.qg[t * d + i] = w.q[t * d + i] * vec_exp(w.c[t * d + i]);
      w.kg[t * d + i] = w.k[t * d + i] * vec_exp(w.cr[t * d + i]);
      w.eg[t * d + i] = vec_exp(w.g[t * d + i]);
    }
}

// Walks the keys u = t, t-1, ..., 0 of query t with e = the product of the gates over (u, t] (<= 1), one factor
// more at each step (at most block - 1 of them: a few ulp), flushed to 0 below 1e-30 (no denormals).
template <class F>
void for_each_key(Scratch& w, int t, int d, F f) {
  std::fill(w.e, w.e + d, 1.f);
  for (int u = t; u >= 0; --u) {
    f(u);
    const float* eg = w.eg + u * d;
#pragma omp simd
    for (int i = 0; i < d; ++i) {
      const float x = w.e[i] * eg[i];
      w.e[i] = x < 1e-30f ? 0.f : x;
    }
  }
}

// S = diag(exp(c_last)) S + kg^T v: the state after the block.
void advance_state(float* S, const Scratch& w, int n, int d) {
  const float* last = w.c + (n - 1) * d;
  for (int i = 0; i < d; ++i) {
    const float f = vec_exp(last[i]);
    for (int j = 0; j < d; ++j) S[i * d + j] *= f;
  }
  gemm(true, false, d, d, n, 1.f, w.kg, d, w.v, d, 1.f, S, d);
}

template <class F>
void for_each_head(const LinearAttentionShape& s, Workspace ws, bool backward, F f) {
  const size_t per_thread = stride(s, backward);
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int bh = 0; bh < s.B * s.H; ++bh) {
    Carver c{ws.data + per_thread * size_t(omp_get_thread_num())};
    Scratch w = carve(c, s, backward);
    f(w, bh / s.H, bh % s.H);
  }
}

}  // namespace

size_t gla_forward_workspace_floats(const LinearAttentionShape& s) { return workspace(s, false); }
size_t gla_backward_workspace_floats(const LinearAttentionShape& s) { return workspace(s, true); }

void gla_forward(float* o, float* state_out, const float* q, const float* k, const float* v, const float* g,
                 const float* state_in, const LinearAttentionShape& s, Workspace ws) {
  check("gla_forward", s, ws, gla_forward_workspace_floats(s));
  const int d = s.d, blk = s.block;
  const size_t dd = size_t(d) * d;
  for_each_head(s, ws, false, [&](Scratch& w, int b, int h) {
    const size_t at = (size_t(b) * s.H + h) * dd;
    if (state_in) std::memcpy(w.state, state_in + at, sizeof(float) * dd);
    else std::fill(w.state, w.state + dd, 0.f);
    for (int t0 = 0; t0 < s.N; t0 += blk) {
      const int n = std::min(blk, s.N - t0);
      const Rows rows{s, b, h, t0, n};
      load_block(w, rows, q, k, v, g);
      for (int t = 0; t < n; ++t) {  // a[t][u] = sum_i q_t,i k_u,i exp(gates over (u, t]), u <= t
        std::fill(w.a + t * n + t + 1, w.a + (t + 1) * n, 0.f);
        for_each_key(w, t, d, [&](int u) {
#pragma omp simd
          for (int i = 0; i < d; ++i) w.ke[i] = w.k[u * d + i] * w.e[i];
          w.a[t * n + u] = dot(w.q + t * d, w.ke, d);
        });
      }
      gemm(false, false, n, d, d, 1.f, w.qg, d, w.state, d, 0.f, w.o, d);  // o = qg S + a v
      gemm(false, false, n, d, n, 1.f, w.a, n, w.v, d, 1.f, w.o, d);
      rows.store(o, w.o);
      advance_state(w.state, w, n, d);
    }
    if (state_out) std::memcpy(state_out + at, w.state, sizeof(float) * dd);
  });
}

void gla_backward(float* dq, float* dk, float* dv, float* dg, float* dstate_in, const float* dout,
                  const float* dstate_out, const float* q, const float* k, const float* v, const float* g,
                  const float* state_in, const LinearAttentionShape& s, Workspace ws) {
  check("gla_backward", s, ws, gla_backward_workspace_floats(s));
  const int d = s.d, blk = s.block;
  const size_t dd = size_t(d) * d;
  for_each_head(s, ws, true, [&](Scratch& w, int b, int h) {
    const size_t at = (size_t(b) * s.H + h) * dd;
    // Pass 1, forward: the terms that need the running state S (dq) or only the block (the intra-block ones).
    // dg holds q dq - k dk of these terms until pass 2 sums it from the end.
    if (state_in) std::memcpy(w.state, state_in + at, sizeof(float) * dd);
    else std::fill(w.state, w.state + dd, 0.f);
    for (int t0 = 0; t0 < s.N; t0 += blk) {
      const int n = std::min(blk, s.N - t0);
      const Rows rows{s, b, h, t0, n};
      load_block(w, rows, q, k, v, g);
      rows.load(w.o, dout);
      transpose(w.st, d, w.state, d, d, d);
      gemm(false, false, n, d, d, 1.f, w.o, d, w.st, d, 0.f, w.dq, d);  // dq = (dO S^T) exp(c)
      for (int t = 0; t < n; ++t)
#pragma omp simd
        for (int i = 0; i < d; ++i) w.dq[t * d + i] *= vec_exp(w.c[t * d + i]);
      transpose(w.vt, n, w.v, d, n, d);
      gemm(false, false, n, n, d, 1.f, w.o, d, w.vt, n, 0.f, w.da, n);  // dA = dO V^T
      std::fill(w.dk, w.dk + size_t(n) * d, 0.f);
      for (int t = 0; t < n; ++t) {  // the pairs u <= t: a, and dq, dk through exp(gates over (u, t])
        std::fill(w.a + t * n + t + 1, w.a + (t + 1) * n, 0.f);
        const float* qt = w.q + t * d;
        float* dqt = w.dq + t * d;
        for_each_key(w, t, d, [&](int u) {
          const float* ku = w.k + u * d;
#pragma omp simd
          for (int i = 0; i < d; ++i) w.ke[i] = ku[i] * w.e[i], w.qe[i] = qt[i] * w.e[i];
          w.a[t * n + u] = dot(qt, w.ke, d);
          const float da = w.da[t * n + u];
          float* dku = w.dk + u * d;
#pragma omp simd
          for (int i = 0; i < d; ++i) dqt[i] += da * w.ke[i], dku[i] += da * w.qe[i];
        });
      }
      gemm(true, false, n, d, n, 1.f, w.a, n, w.o, d, 0.f, w.dv, d);  // dv = A^T dO
      rows.add(dq, w.dq);
      rows.add(dk, w.dk);
      rows.add(dv, w.dv);
      if (dg) {
        for (int t = 0; t < n; ++t)
#pragma omp simd
          for (int i = 0; i < d; ++i)
            w.dq[t * d + i] = w.q[t * d + i] * w.dq[t * d + i] - w.k[t * d + i] * w.dk[t * d + i];
        rows.store(dg, w.dq);
      }
      advance_state(w.state, w, n, d);
    }
    // Pass 2, backward: the state gradient dS from the end, the terms that need it (dk, dv), and dg's sum.
    // r = the running sum of q dq - k dk from the end, plus rowsum(S_last .* dstate_out): the final state
    // depends on every gate.
    float* r = w.run;
    std::fill(r, r + d, 0.f);
    if (dstate_out) {
      std::memcpy(w.dstate, dstate_out + at, sizeof(float) * dd);
      for (int i = 0; i < d; ++i) r[i] = dot(w.state + i * d, w.dstate + i * d, d);
    } else {
      std::fill(w.dstate, w.dstate + dd, 0.f);
    }
    const int blocks = (s.N + blk - 1) / blk;
    for (int blkno = blocks - 1; blkno >= 0; --blkno) {
      const int t0 = blkno * blk, n = std::min(blk, s.N - t0);
      const Rows rows{s, b, h, t0, n};
      load_block(w, rows, q, k, v, g);
      rows.load(w.o, dout);
      const float* last = w.c + (n - 1) * d;
      transpose(w.st, d, w.dstate, d, d, d);
      gemm(false, false, n, d, d, 1.f, w.v, d, w.st, d, 0.f, w.dk, d);  // dk = (V dS^T) exp(cr)
      for (int t = 0; t < n; ++t)
#pragma omp simd
        for (int i = 0; i < d; ++i) w.dk[t * d + i] *= vec_exp(w.cr[t * d + i]);
      gemm(false, false, n, d, d, 1.f, w.kg, d, w.dstate, d, 0.f, w.dv, d);  // dv = kg dS
      rows.add(dk, w.dk);
      rows.add(dv, w.dv);
      for (int i = 0; i < d; ++i) {  // dS = diag(exp(c_last)) dS + qg^T dO
        const float f = vec_exp(last[i]);
        for (int j = 0; j < d; ++j) w.dstate[i * d + j] *= f;
      }
      gemm(true, false, d, d, n, 1.f, w.qg, d, w.o, d, 1.f, w.dstate, d);
      if (dg) {
        rows.load(w.dq, dg);  // pass 1's q dq - k dk
        for (int t = n - 1; t >= 0; --t)
#pragma omp simd
          for (int i = 0; i < d; ++i) {
            r[i] += w.dq[t * d + i] - w.k[t * d + i] * w.dk[t * d + i];
            w.dq[t * d + i] = r[i];
          }
        rows.store(dg, w.dq);
      }
    }
    if (dstate_in)
      for (size_t x = 0; x < dd; ++x) dstate_in[at + x] += w.dstate[x];
  });
}

}  // namespace lasp
