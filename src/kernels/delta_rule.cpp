#include "kernels/delta_rule.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/gemm_small.h"
#include "kernels/gla.h"
#include "kernels/transpose.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

// The tokens of one (batch row, value head): pointers at token 0, rows ld floats apart. q (no outputs), v (values 0)
// and dout (no output gradient) may be null: the transition runs the same chunks on X (dk x dk) with no values.
struct Stream {
  const float *q = nullptr, *k = nullptr, *v = nullptr, *beta = nullptr, *g = nullptr, *dout = nullptr;
  const uint8_t* flags = nullptr;  // (N) document starts, or null
  long kld = 0, vld = 0, gld = 0;  // row strides of q and k, of v and dout, of beta and g
  int vw = -1;                     // v's columns: the first vw of the value width, the rest 0 (-1: all)
};

// One thread's scratch for one chunk of n <= cb tokens (dense, n floats a row for n x n matrices); values are
// `width` wide (dv, or dk for the transition's X).
struct Scratch {
  float *q, *k, *v;                    // (cb, dk), (cb, dk), (cb, width): the chunk's rows
  float *beta, *alpha, *gamma, *kdec;  // (cb): alpha = exp(g), 0 at a start; gamma_i, exp(c_end - c_i)
  float *ld, *lk, *t, *p;              // (cb, cb): Ld; (K K^T) .* Ld strictly lower; T; (Q K^T) .* Ld
  float *w, *kt;                       // (cb, dk): W; K~ = diag(kdec) K
  float *u, *vp, *o;                   // (cb, width): U; V' = U - W S; O
  float *state, *tmp, *bt;             // (dk, width) S; (cb, max(dk, width)); product_bt's transposed operand
  // backward
  float *dO, *dvp, *dr, *dz, *dq, *dk, *dv, *dp, *dl, *dbeta, *dc, *dstate, *colsum;
  // each chunk's incoming S, and its lk, t, w and vp: in the backward those point at the chunk's here
  float *kept, *kept_lk, *kept_t, *kept_w, *kept_vp;
  const uint8_t* flags;  // the chunk's starts, or null
};

int chunk_rows(const DeltaRuleShape& s) { return std::min(s.block, s.N); }
int chunk_count(const DeltaRuleShape& s) { return (s.N + s.block - 1) / s.block; }

Scratch carve(Carver& c, const DeltaRuleShape& s, int width, bool backward) {
  const size_t cb = chunk_rows(s), dk = s.dk, wide = std::max(dk, size_t(width));
  Scratch x{};
  x.q = c.take(cb * dk), x.k = c.take(cb * dk), x.v = c.take(cb * width);
  for (float** part : {&x.beta, &x.alpha, &x.gamma, &x.kdec}) *part = c.take(cb);
  x.ld = c.take(cb * cb), x.p = c.take(cb * cb), x.kt = c.take(cb * dk), x.u = c.take(cb * width);
  if (!backward) x.lk = c.take(cb * cb), x.t = c.take(cb * cb), x.w = c.take(cb * dk), x.vp = c.take(cb * width);
  x.o = c.take(cb * width);
  x.state = c.take(dk * width), x.tmp = c.take(cb * wide), x.bt = c.take(std::max(cb, dk) * wide);
  if (backward) {
    for (float** part : {&x.dO, &x.dvp, &x.dr, &x.dv}) *part = c.take(cb * width);
    for (float** part : {&x.dz, &x.dq, &x.dk}) *part = c.take(cb * dk);
    x.dp = c.take(cb * cb), x.dl = c.take(cb * cb);
    x.dbeta = c.take(cb), x.dc = c.take(cb), x.colsum = c.take(cb);
    x.dstate = c.take(dk * width);
    const size_t chunks = chunk_count(s);
    x.kept = c.take(chunks * dk * width);
    x.kept_lk = c.take(chunks * cb * cb), x.kept_t = c.take(chunks * cb * cb);
    x.kept_w = c.take(chunks * cb * dk), x.kept_vp = c.take(chunks * cb * width);
  }
  return x;
}

size_t per_thread(const DeltaRuleShape& s, int width, bool backward) {
  Carver counter{nullptr};
  carve(counter, s, width, backward);
  return counter.used;
}

size_t workspace(const DeltaRuleShape& s, int width, bool backward) {
  delta_rule_check_shape(s, "delta_rule workspace");
  return per_thread(s, width, backward) * size_t(s.threads);
}

void check(const char* kernel, const DeltaRuleShape& s, Workspace ws, size_t need) {
  delta_rule_check_shape(s, kernel);
  LASP_CHECK(ws.floats >= need && ws.data != nullptr,
             "{}: workspace of {} floats needed for N={} dk={} dv={} block={} on {} threads, got {}", kernel, need,
             s.N, s.dk, s.dv, s.block, s.threads, ws.floats);
}

float dot(const float* a, const float* b, long n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (long i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// C (M x N) = alpha A B^T + beta C for dense A (M x K) and B (N x K). The small register-blocked product reads B only
// as stored, so B goes through bt transposed; without it oneDNN reads B^T in place.
// c_upper: only C's lower triangle is needed (the rest may keep anything).
void product_bt(int M, int N, int K, float alpha, const float* A, const float* B, float* bt, float beta, float* C,
                Skip skip = Skip::none) {
  if (!gemm_small_available()) return gemm(false, true, M, N, K, alpha, A, K, B, K, beta, C, N);
  transpose(bt, N, B, K, N, K);
  gemm(false, false, M, N, K, alpha, A, K, bt, N, beta, C, N, nullptr, skip);
}

// a (n x n) = a .* ld on and below the diagonal (strictly below when `strict`), 0 above it: whatever a held there.
void mask_lower(float* a, const float* ld, int n, bool strict) {
  for (int i = 0; i < n; ++i) {
    float* row = a + long(i) * n;
    const float* l = ld + long(i) * n;
    const int end = strict ? i : i + 1;
#pragma omp simd
    for (int j = 0; j < end; ++j) row[j] *= l[j];
    std::fill(row + end, row + n, 0.f);
  }
}

// T = (I + diag(beta) L_k)^-1, unit lower triangular, by forward substitution in blocks of 16 rows: a block's rows
// take the rows above it in one product, T[I, :] = -Lb[I, <I] T[<I, :] (zero right of the block, as the rows above
// are), then each other's in order. lb: scratch (n x n) for Lb = diag(beta) L_k.
void solve_t(float* t, float* lb, const float* lk, const float* beta, int n) {
  for (int i = 0; i < n; ++i)
#pragma omp simd
    for (int j = 0; j < i; ++j) lb[long(i) * n + j] = beta[i] * lk[long(i) * n + j];
  constexpr int kRows = 16;
  for (int r0 = 0; r0 < n; r0 += kRows) {
    const int r1 = std::min(n, r0 + kRows);
    float* rows = t + long(r0) * n;
    if (r0) gemm(false, false, r1 - r0, n, r0, -1.f, lb + long(r0) * n, n, t, n, 0.f, rows, n);
    else std::fill(rows, rows + long(r1) * n, 0.f);
    for (int i = r0; i < r1; ++i) {
      float* row = t + long(i) * n;
      row[i] = 1.f;
      for (int m = r0; m < i; ++m) {
        const float a = lb[long(i) * n + m];
        const float* tm = t + long(m) * n;
#pragma omp simd
        for (int j = 0; j <= m; ++j) row[j] -= a * tm[j];
      }
    }
  }
}

// x = rows [t0, t0 + n) of a strided tensor, dense (n, width): its first `stored` columns (-1: all), zeros after
// them; zeros for a null tensor.
void gather(float* x, const float* src, long ld, int t0, int n, int width, int stored = -1) {
  const int m = src ? (stored < 0 ? width : stored) : 0;
  for (int i = 0; i < n; ++i) {
    if (m > 0) std::memcpy(x + long(i) * width, src + (long(t0) + i) * ld, sizeof(float) * m);
    std::fill(x + long(i) * width + m, x + long(i + 1) * width, 0.f);
  }
}

void add_rows(float* dst, long ld, const float* x, int t0, int n, int width) {
  for (int i = 0; i < n; ++i) {
    float* row = dst + (long(t0) + i) * ld;
#pragma omp simd
    for (int j = 0; j < width; ++j) row[j] += x[long(i) * width + j];
  }
}

// Reads the chunk [t0, t0 + n) and computes what depends on it alone (DELTA.md "Chunkwise form"): the decay factors,
// L_k, T = (I + diag(beta) L_k)^-1, W = T diag(beta gamma) K and U = T diag(beta) V; with `decays_only` (the
// backward's reverse sweep, which finds the chunk's L_k, T, W and V' kept) only the decay factors and K~.
void chunk_factors(Scratch& x, const Stream& st, int t0, int n, int dk, int width, bool decays_only = false) {
  if (st.q) gather(x.q, st.q, st.kld, t0, n, dk);
  gather(x.k, st.k, st.kld, t0, n, dk);
  gather(x.v, st.v, st.vld, t0, n, width, st.vw);
  x.flags = st.flags ? st.flags + t0 : nullptr;
  for (int i = 0; i < n; ++i) {
    x.beta[i] = st.beta[(long(t0) + i) * st.gld];
    x.alpha[i] = x.flags && x.flags[i] ? 0.f : vec_exp(st.g[(long(t0) + i) * st.gld]);
  }
  // gamma_i = alpha_0 ... alpha_i; kdec_j = alpha_{j+1} ... alpha_{n-1}; Ld_ij = alpha_{j+1} ... alpha_i (j <= i)
  float run = 1.f;
  for (int i = 0; i < n; ++i) x.gamma[i] = run = gla_gate_product(run, x.alpha[i]);
  x.kdec[n - 1] = 1.f;
  for (int j = n - 2; j >= 0; --j) x.kdec[j] = gla_gate_product(x.kdec[j + 1], x.alpha[j + 1]);
  // Row by row down the columns: Ld_ij = alpha_i Ld_(i-1)j for j < i
  for (int i = 0; i < n; ++i) {
    float* row = x.ld + long(i) * n;
    const float* above = row - n;
    const float a = x.alpha[i];
#pragma omp simd
    for (int j = 0; j < i; ++j) row[j] = gla_gate_product(above[j], a);
    row[i] = 1.f;
    std::fill(row + i + 1, row + n, 0.f);
  }
  for (int i = 0; i < n; ++i) {
    const float bg = x.beta[i] * x.gamma[i], kd = x.kdec[i];
#pragma omp simd
    for (int j = 0; j < dk; ++j) x.tmp[i * dk + j] = bg * x.k[i * dk + j], x.kt[i * dk + j] = kd * x.k[i * dk + j];
  }
  if (decays_only) return;
  product_bt(n, n, dk, 1.f, x.k, x.k, x.bt, 0.f, x.lk, Skip::c_upper);
  mask_lower(x.lk, x.ld, n, true);
  solve_t(x.t, x.p, x.lk, x.beta, n);
  gemm(false, false, n, dk, n, 1.f, x.t, n, x.tmp, dk, 0.f, x.w, dk, nullptr, Skip::a_upper);
  if (!st.v) return std::fill(x.u, x.u + long(n) * width, 0.f);
  for (int i = 0; i < n; ++i)
#pragma omp simd
    for (int j = 0; j < width; ++j) x.tmp[i * width + j] = x.beta[i] * x.v[i * width + j];
  gemm(false, false, n, width, n, 1.f, x.t, n, x.tmp, width, 0.f, x.u, width, nullptr, Skip::a_upper);
}

// V' = U - W S: the values net of what the decayed S already predicts.
void chunk_values(Scratch& x, const float* S, int n, int dk, int width) {
  std::memcpy(x.vp, x.u, sizeof(float) * n * width);
  gemm(false, false, n, width, dk, -1.f, x.w, dk, S, width, 1.f, x.vp, width);
}

// The scores P = (Q K^T) .* Ld.
void chunk_scores(Scratch& x, int n, int dk) {
  product_bt(n, n, dk, 1.f, x.q, x.k, x.bt, 0.f, x.p, Skip::c_upper);
  mask_lower(x.p, x.ld, n, false);
}

// O = diag(gamma) Q S + P V' (after chunk_values).
void chunk_outputs(Scratch& x, const float* S, int n, int dk, int width) {
  gemm(false, false, n, width, dk, 1.f, x.q, dk, S, width, 0.f, x.o, width);
  for (int i = 0; i < n; ++i)
#pragma omp simd
    for (int j = 0; j < width; ++j) x.o[i * width + j] *= x.gamma[i];
  gemm(false, false, n, width, n, 1.f, x.p, n, x.vp, width, 1.f, x.o, width, nullptr, Skip::a_upper);
}

// S <- gamma_end S + K~^T V': the state leaving the chunk.
void chunk_advance(Scratch& x, float* S, int n, int dk, int width) {
  gemm(true, false, dk, width, n, 1.f, x.kt, dk, x.vp, width, x.gamma[n - 1], S, width);
}

// dV' = K~ dS + P^T dO: the gradient of V', the values net of the state's prediction.
void chunk_values_gradient(Scratch& x, bool outputs, int n, int dk, int width) {
  gemm(false, false, n, width, dk, 1.f, x.kt, dk, x.dstate, width, 0.f, x.dvp, width);
  if (outputs) gemm(true, false, n, width, n, 1.f, x.p, n, x.dO, width, 1.f, x.dvp, width, nullptr, Skip::a_lower);
}

// dS <- gamma_end dS + (diag(gamma) Q)^T dO - W^T dV': the gradient of the state entering the chunk (after
// chunk_values_gradient). It depends on neither the state nor the values.
void chunk_state_gradient(Scratch& x, bool outputs, int n, int dk, int width) {
  float* dS = x.dstate;
  gemm(true, false, dk, width, n, -1.f, x.w, dk, x.dvp, width, x.gamma[n - 1], dS, width);
  if (!outputs) return;
  for (int i = 0; i < n; ++i)
#pragma omp simd
    for (int j = 0; j < dk; ++j) x.tmp[i * dk + j] = x.gamma[i] * x.q[i * dk + j];
  gemm(true, false, dk, width, n, 1.f, x.tmp, dk, x.dO, width, 1.f, dS, width);
}

// The chunk's gradients (DELTA.md "Chunkwise backward") after chunk_factors and chunk_values from its incoming
// state S: dq, dk, dv, dbeta, dc (the cumulative log-gates') into the dense chunk buffers, and x.dstate from the
// gradient of the state leaving the chunk to that of the state entering it. dO: x.dO when `outputs`.
// U = T R and W = T Z give dR = T^T dV', dZ = -dR S^T and dL_k = -T^T dT T^T = -dR (U - W S)^T = -dR V'^T.
void chunk_backward(Scratch& x, const float* S, bool outputs, bool values, int n, int dk, int width) {
  float* dS = x.dstate;
  std::fill(x.dq, x.dq + long(n) * dk, 0.f);
  std::fill(x.dk, x.dk + long(n) * dk, 0.f);
  std::fill(x.dc, x.dc + n, 0.f);
  std::fill(x.dbeta, x.dbeta + n, 0.f);
  chunk_values_gradient(x, outputs, n, dk, width);
  if (outputs) {
    // dQ = diag(gamma) dO S^T + E K; gamma_i's share of dc_i: gamma_i q_i . (S dO_i)
    product_bt(n, dk, width, 1.f, x.dO, S, x.bt, 0.f, x.dq);
    for (int i = 0; i < n; ++i) {
      float* dqi = x.dq + long(i) * dk;
      x.dc[i] += x.gamma[i] * dot(x.q + long(i) * dk, dqi, dk);
      for (int j = 0; j < dk; ++j) dqi[j] *= x.gamma[i];
    }
    // E = (dO V'^T) .* Ld; the scores' share of dc: rowsum - colsum of (dO V'^T) .* P
    product_bt(n, n, width, 1.f, x.dO, x.vp, x.bt, 0.f, x.dp, Skip::c_upper);
    std::fill(x.colsum, x.colsum + n, 0.f);
    for (int i = 0; i < n; ++i) {
      float* e = x.dp + long(i) * n;
      const float *p = x.p + long(i) * n, *l = x.ld + long(i) * n;
      float row = 0.f;
#pragma omp simd reduction(+ : row)
      for (int j = 0; j <= i; ++j) {
        const float share = e[j] * p[j];
        row += share, x.colsum[j] += share;
        e[j] *= l[j];
      }
      x.dc[i] += row;
      std::fill(e + i + 1, e + n, 0.f);
    }
    for (int j = 0; j < n; ++j) x.dc[j] -= x.colsum[j];
    gemm(false, false, n, dk, n, 1.f, x.dp, n, x.k, dk, 1.f, x.dq, dk, nullptr, Skip::a_upper);
    gemm(true, false, n, dk, n, 1.f, x.dp, n, x.q, dk, 1.f, x.dk, dk, nullptr, Skip::a_lower);
  }
  // dK += diag(kdec) V' dS^T; R_j = kdec_j k_j . (dS v'_j) leaves dc_j and joins dc_end, with gamma_end <S, dS>
  product_bt(n, dk, width, 1.f, x.vp, dS, x.bt, 0.f, x.tmp);
  float r_sum = 0.f;
  for (int j = 0; j < n; ++j) {
    const float* a = x.tmp + long(j) * dk;
    const float r = x.kdec[j] * dot(x.k + long(j) * dk, a, dk);
    x.dc[j] -= r, r_sum += r;
#pragma omp simd
    for (int i = 0; i < dk; ++i) x.dk[j * dk + i] += x.kdec[j] * a[i];
  }
  x.dc[n - 1] += r_sum + x.gamma[n - 1] * dot(S, dS, long(dk) * width);
  // dR = T^T dV'; dV = diag(beta) dR
  gemm(true, false, n, width, n, 1.f, x.t, n, x.dvp, width, 0.f, x.dr, width, nullptr, Skip::a_lower);
  if (values)
    for (int i = 0; i < n; ++i) {
      const float* dri = x.dr + long(i) * width;
      x.dbeta[i] += dot(x.v + long(i) * width, dri, width);
#pragma omp simd
      for (int j = 0; j < width; ++j) x.dv[i * width + j] = x.beta[i] * dri[j];
    }
  // dZ = -dR S^T, Z = diag(beta gamma) K
  product_bt(n, dk, width, -1.f, x.dr, S, x.bt, 0.f, x.dz);
  for (int i = 0; i < n; ++i) {
    const float* dzi = x.dz + long(i) * dk;
    const float kz = dot(x.k + long(i) * dk, dzi, dk), bg = x.beta[i] * x.gamma[i];
    x.dbeta[i] += x.gamma[i] * kz, x.dc[i] += bg * kz;
#pragma omp simd
    for (int j = 0; j < dk; ++j) x.dk[i * dk + j] += bg * dzi[j];
  }
  // dL_k = strictly_lower(-dR V'^T), L = diag(beta) L_k with L_k = (K K^T) .* Ld: X = diag(beta) (dL_k .* Ld) is
  // the gradient of K K^T (dK += X K + X^T K), Y = dL_k .* L that of the log-gates (rowsum - colsum)
  product_bt(n, n, width, -1.f, x.dr, x.vp, x.bt, 0.f, x.dl, Skip::c_upper);
  std::fill(x.colsum, x.colsum + n, 0.f);
  for (int i = 0; i < n; ++i) {
    float* d = x.dl + long(i) * n;
    const float *lk = x.lk + long(i) * n, *l = x.ld + long(i) * n, b = x.beta[i];
    float row = 0.f;
#pragma omp simd reduction(+ : row)
    for (int j = 0; j < i; ++j) {
      const float y = d[j] * lk[j];
      row += y, x.colsum[j] += b * y;
      d[j] *= b * l[j];
    }
    x.dbeta[i] += row, x.dc[i] += b * row;
    std::fill(d + i, d + n, 0.f);
  }
  for (int j = 0; j < n; ++j) x.dc[j] -= x.colsum[j];
  gemm(false, false, n, dk, n, 1.f, x.dl, n, x.k, dk, 1.f, x.dk, dk, nullptr, Skip::a_upper);
  gemm(true, false, n, dk, n, 1.f, x.dl, n, x.k, dk, 1.f, x.dk, dk, nullptr, Skip::a_lower);
  chunk_state_gradient(x, outputs, n, dk, width);
}

// dg += dc summed from the chunk's end (c_i = g_0 + ... + g_i). A start's factors are 0 whatever the log-gates at
// and before it, so its dg is 0 and the sum restarts before it.
void add_gate_gradient(float* dg, long ld, const Scratch& x, int t0, int n) {
  float run = 0.f;
  for (int i = n - 1; i >= 0; --i) {
    run += x.dc[i];
    if (x.flags && x.flags[i]) run = 0.f;
    else dg[(long(t0) + i) * ld] += run;
  }
}

// The stream's state S through its chunks, from what S holds.
void run_forward(Scratch& x, const Stream& st, float* S, float* o, int N, int block, int dk, int width) {
  for (int t0 = 0; t0 < N; t0 += block) {
    const int n = std::min(block, N - t0);
    chunk_factors(x, st, t0, n, dk, width);
    chunk_values(x, S, n, dk, width);
    if (o) {
      chunk_scores(x, n, dk);
      chunk_outputs(x, S, n, dk, width);
      for (int i = 0; i < n; ++i)
        std::memcpy(o + (long(t0) + i) * st.vld, x.o + long(i) * width, sizeof(float) * width);
    }
    chunk_advance(x, S, n, dk, width);
  }
}

// Gradients of the stream from x.state (its incoming state) and x.dstate (the gradient of its outgoing state), which
// becomes the gradient of the incoming one. A first pass keeps each chunk's incoming state, L_k, T, W and V'; the
// second walks the chunks from the last. Outputs accumulate at the stream's rows (dq, dk kld apart, dv vld, dbeta
// and dg gld; any of dq, dv, dbeta may be null).
void run_backward(Scratch& x, const Stream& st, float* dq, float* dk, float* dv, float* dbeta, float* dg, int N,
                  int block, int dkey, int width) {
  const long kv = long(dkey) * width;
  const int chunks = (N + block - 1) / block;
  const long rows = std::min(block, N), tt = rows * rows;
  auto point = [&](int c) {  // chunk c's kept factors
    x.lk = x.kept_lk + c * tt, x.t = x.kept_t + c * tt, x.w = x.kept_w + c * rows * dkey;
    x.vp = x.kept_vp + c * rows * width;
  };
  const bool outputs = st.dout != nullptr;
  if (!dq && !dk && !dv && !dbeta && !dg) {  // the state's gradient alone: one reverse sweep
    Stream keys = st;
    keys.v = nullptr;  // U is not needed
    point(0);
    for (int c = chunks - 1; c >= 0; --c) {
      const int t0 = c * block, n = std::min(block, N - t0);
      chunk_factors(x, keys, t0, n, dkey, width);
      if (outputs) chunk_scores(x, n, dkey), gather(x.dO, st.dout, st.vld, t0, n, width);
      chunk_values_gradient(x, outputs, n, dkey, width);
      chunk_state_gradient(x, outputs, n, dkey, width);
    }
    return;
  }
  for (int c = 0; c < chunks; ++c) {
    const int t0 = c * block, n = std::min(block, N - t0);
    std::memcpy(x.kept + c * kv, x.state, sizeof(float) * kv);
    point(c);
    chunk_factors(x, st, t0, n, dkey, width);
    chunk_values(x, x.state, n, dkey, width);
    chunk_advance(x, x.state, n, dkey, width);
  }
  for (int c = chunks - 1; c >= 0; --c) {
    const int t0 = c * block, n = std::min(block, N - t0);
    const float* S = x.kept + c * kv;
    point(c);
    chunk_factors(x, st, t0, n, dkey, width, true);
    if (outputs) chunk_scores(x, n, dkey), gather(x.dO, st.dout, st.vld, t0, n, width);
    chunk_backward(x, S, outputs, st.v != nullptr, n, dkey, width);
    if (dq) add_rows(dq, st.kld, x.dq, t0, n, dkey);
    if (dk) add_rows(dk, st.kld, x.dk, t0, n, dkey);
    if (dv) add_rows(dv, st.vld, x.dv, t0, n, width);
    if (dbeta)
      for (int i = 0; i < n; ++i) dbeta[(long(t0) + i) * st.gld] += x.dbeta[i];
    if (dg) add_gate_gradient(dg, st.gld, x, t0, n);
  }
}

// f(scratch, b, head) for every item (batch row, head) of `heads` per row, in parallel, each thread its own scratch.
template <class F>
void for_each_item(const DeltaRuleShape& s, int heads, int width, bool backward, Workspace ws, F f) {
  const size_t stride = per_thread(s, width, backward);
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int item = 0; item < s.B * heads; ++item) {
    Carver c{ws.data + stride * size_t(omp_get_thread_num())};
    Scratch x = carve(c, s, width, backward);
    f(x, item / heads, item % heads);
  }
}

// The stream of value head hv of batch row b.
Stream stream(const DeltaRuleShape& s, int b, int hv, const float* q, const float* k, const float* v,
              const float* beta, const float* g, const float* dout, const uint8_t* starts) {
  const int h = hv / (s.HV / s.H);
  const long row = long(b) * s.N;
  Stream st;
  st.kld = long(s.H) * s.dk, st.vld = long(s.HV) * s.dv, st.gld = s.HV;
  st.q = q ? q + row * st.kld + long(h) * s.dk : nullptr;
  st.k = k + row * st.kld + long(h) * s.dk;
  st.v = v ? v + row * st.vld + long(hv) * s.dv : nullptr;
  st.dout = dout ? dout + row * st.vld + long(hv) * s.dv : nullptr;
  st.beta = beta + row * s.HV + hv, st.g = g + row * s.HV + hv;
  st.flags = starts ? starts + row : nullptr;
  return st;
}

bool holds_start(const DeltaRuleShape& s, const uint8_t* starts, int b) {
  return starts && std::any_of(starts + long(b) * s.N, starts + long(b + 1) * s.N, [](uint8_t f) { return f != 0; });
}

void set_identity(float* X, int d) {
  std::fill(X, X + long(d) * d, 0.f);
  for (int i = 0; i < d; ++i) X[long(i) * d + i] = 1.f;
}

}  // namespace

void delta_rule_check_shape(const DeltaRuleShape& s, const char* kernel) {
  LASP_CHECK(s.B > 0 && s.N > 0 && s.H > 0 && s.HV > 0 && s.dk > 0 && s.dv > 0 && s.block > 0 && s.threads > 0,
             "{}: sizes must be positive, got B={} N={} H={} HV={} dk={} dv={} block={} threads={}", kernel, s.B, s.N,
             s.H, s.HV, s.dk, s.dv, s.block, s.threads);
  LASP_CHECK(s.HV % s.H == 0, "{}: value heads HV must be a multiple of the q/k heads H (each q/k head read by "
             "HV / H value heads), got HV={} H={}", kernel, s.HV, s.H);
}

size_t delta_rule_forward_workspace_floats(const DeltaRuleShape& s) { return workspace(s, s.dv, false); }
size_t delta_rule_backward_workspace_floats(const DeltaRuleShape& s) { return workspace(s, s.dv, true); }
size_t delta_rule_summary_workspace_floats(const DeltaRuleShape& s) { return workspace(s, s.dv + s.dk, false); }
size_t delta_rule_transition_backward_workspace_floats(const DeltaRuleShape& s) { return workspace(s, s.dk, true); }

void delta_rule_forward(float* o, float* state_out, const float* q, const float* k, const float* v, const float* beta,
                        const float* g, const float* state_in, const uint8_t* starts, const DeltaRuleShape& s,
                        Workspace ws) {
  check("delta_rule_forward", s, ws, delta_rule_forward_workspace_floats(s));
  const long kv = long(s.dk) * s.dv;
  for_each_item(s, s.HV, s.dv, false, ws, [&](Scratch& x, int b, int hv) {
    const long at = (long(b) * s.HV + hv) * kv;
    if (state_in) std::memcpy(x.state, state_in + at, sizeof(float) * kv);
    else std::fill(x.state, x.state + kv, 0.f);
    const Stream st = stream(s, b, hv, q, k, v, beta, g, nullptr, starts);
    float* rows = o ? o + long(b) * s.N * st.vld + long(hv) * s.dv : nullptr;
    run_forward(x, st, x.state, rows, s.N, s.block, s.dk, s.dv);
    if (state_out) std::memcpy(state_out + at, x.state, sizeof(float) * kv);
  });
}

// Parallel over (batch row, q/k head): the value heads reading one q/k head run on one thread, one after the
// other, since they all add into its dq and dk.
void delta_rule_backward(float* dq, float* dk, float* dv, float* dbeta, float* dg, float* dstate_in, const float* dout,
                         const float* dstate_out, const float* q, const float* k, const float* v, const float* beta,
                         const float* g, const float* state_in, const uint8_t* starts, const DeltaRuleShape& s,
                         Workspace ws) {
  check("delta_rule_backward", s, ws, delta_rule_backward_workspace_floats(s));
  const long kv = long(s.dk) * s.dv, kld = long(s.H) * s.dk, vld = long(s.HV) * s.dv;
  const int group = s.HV / s.H;
  for_each_item(s, s.H, s.dv, true, ws, [&](Scratch& x, int b, int h) {
    for (int hv = h * group; hv < (h + 1) * group; ++hv) {
      const long at = (long(b) * s.HV + hv) * kv, krow = long(b) * s.N * kld + long(h) * s.dk;
      const long vrow = long(b) * s.N * vld + long(hv) * s.dv, grow = long(b) * s.N * s.HV + hv;
      if (state_in) std::memcpy(x.state, state_in + at, sizeof(float) * kv);
      else std::fill(x.state, x.state + kv, 0.f);
      if (dstate_out) std::memcpy(x.dstate, dstate_out + at, sizeof(float) * kv);
      else std::fill(x.dstate, x.dstate + kv, 0.f);
      const Stream st = stream(s, b, hv, q, k, v, beta, g, dout, starts);
      run_backward(x, st, dq ? dq + krow : nullptr, dk ? dk + krow : nullptr, dv ? dv + vrow : nullptr,
                   dbeta ? dbeta + grow : nullptr, dg ? dg + grow : nullptr, s.N, s.block, s.dk, s.dv);
      if (dstate_in)
        for (long e = 0; e < kv; ++e) dstate_in[at + e] += x.dstate[e];
    }
  });
}

// The recurrence on [S | X] (dk x (dv + dk)) from [0 | I] with values [v | 0]: S ends as the span's state from
// nothing, X as its transition, both from one set of chunk factors (X alone, dk wide, without v). A start zeroes
// both columns' state, so A is 0 for a row holding one.
void delta_rule_summary(float* A, float* state_out, const float* k, const float* v, const float* beta, const float* g,
                        const uint8_t* starts, const DeltaRuleShape& s, Workspace ws) {
  check("delta_rule_summary", s, ws, delta_rule_summary_workspace_floats(s));
  LASP_CHECK(A && (v || !state_out), "delta_rule_summary: A is required, and v with state_out (A={}, v={}, "
             "state_out={})", (const void*)A, (const void*)v, (const void*)state_out);
  const int values = state_out ? s.dv : 0, width = values + s.dk;
  const long kk = long(s.dk) * s.dk, kv = long(s.dk) * s.dv;
  for_each_item(s, s.HV, width, false, ws, [&](Scratch& x, int b, int hv) {
    std::fill(x.state, x.state + long(s.dk) * width, 0.f);
    for (int i = 0; i < s.dk; ++i) x.state[long(i) * width + values + i] = 1.f;
    Stream st = stream(s, b, hv, nullptr, k, state_out ? v : nullptr, beta, g, nullptr, starts);
    st.vw = values;
    run_forward(x, st, x.state, nullptr, s.N, s.block, s.dk, width);
    const long item = long(b) * s.HV + hv;
    for (int i = 0; i < s.dk; ++i) {
      const float* row = x.state + long(i) * width;
      if (state_out) std::memcpy(state_out + item * kv + long(i) * s.dv, row, sizeof(float) * s.dv);
      std::memcpy(A + item * kk + long(i) * s.dk, row + values, sizeof(float) * s.dk);
    }
  });
}

// The adjoint: the backward of that map from X_0 = I with the end gradient dA and no outputs.
void delta_rule_transition_backward(float* dk, float* dbeta, float* dg, const float* dA, const float* k,
                                    const float* beta, const float* g, const uint8_t* starts,
                                    const DeltaRuleShape& s, Workspace ws) {
  check("delta_rule_transition_backward", s, ws, delta_rule_transition_backward_workspace_floats(s));
  const long kk = long(s.dk) * s.dk, kld = long(s.H) * s.dk;
  const int group = s.HV / s.H;
  for_each_item(s, s.H, s.dk, true, ws, [&](Scratch& x, int b, int h) {
    if (holds_start(s, starts, b)) return;
    for (int hv = h * group; hv < (h + 1) * group; ++hv) {
      const long grow = long(b) * s.N * s.HV + hv;
      set_identity(x.state, s.dk);
      std::memcpy(x.dstate, dA + (long(b) * s.HV + hv) * kk, sizeof(float) * kk);
      run_backward(x, stream(s, b, hv, nullptr, k, nullptr, beta, g, nullptr, nullptr), nullptr,
                   dk ? dk + long(b) * s.N * kld + long(h) * s.dk : nullptr, nullptr, dbeta ? dbeta + grow : nullptr,
                   dg ? dg + grow : nullptr, s.N, s.block, s.dk, s.dk);
    }
  });
}

}  // namespace lasp
