#include "kernels/linear_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"

namespace lasp {

Decay decay_from_string(const std::string& name) {
  if (name == "none") return Decay::none;
  if (name == "lightning") return Decay::lightning;
  if (name == "retention") return Decay::retention;
  throw Error("unknown decay '" + name + "': expected one of none, lightning, retention");
}

const char* to_string(Decay decay) {
  switch (decay) {
    case Decay::none: return "none";
    case Decay::lightning: return "lightning";
    case Decay::retention: return "retention";
  }
  return "?";
}

void linear_attention_decays(float* lambda, int H, Decay decay) {
  for (int h = 0; h < H; ++h) {
    double l = 1.0;
    if (decay == Decay::lightning) l = std::exp(-std::exp2(-8.0 * (h + 1) / H));
    if (decay == Decay::retention) l = 1.0 - std::exp2(-5.0 - h);
    lambda[h] = float(l);
  }
}

namespace {

void check_shape(const char* kernel, const LinearAttentionShape& s) {
  LASP_CHECK(s.B > 0 && s.N > 0 && s.H > 0 && s.d > 0 && s.block > 0,
             "{}: sizes must be positive, got B={} N={} H={} d={} block={}", kernel, s.B, s.N, s.H, s.d,
             s.block);
}

void check_workspace(const char* kernel, Workspace ws, size_t need, const LinearAttentionShape& s) {
  LASP_CHECK(ws.floats >= need && (need == 0 || ws.data != nullptr),
             "{}: workspace of {} floats needed for B={} N={} H={} d={} block={} on {} threads, got {}",
             kernel, need, s.B, s.N, s.H, s.d, s.block, omp_get_max_threads(), ws.floats);
}

int num_blocks(const LinearAttentionShape& s) { return (s.N + s.block - 1) / s.block; }

// Per-head decay tables for one block size L: pw[k] = lambda^k (k = 0..L) and the masked decay matrix
// psi[i][j] = lambda^(i-j) for j <= i, else 0. Powers below 1e-30 become 0 so that no denormals appear.
struct DecayTables {
  float* pw;   // (L+1)
  float* psi;  // (L, L)
  void fill(double lambda, int L) {
    double p = 1.0;
    for (int k = 0; k <= L; ++k, p *= lambda) pw[k] = p < 1e-30 ? 0.f : float(p);
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) psi[i * L + j] = j <= i ? pw[i - j] : 0.f;
  }
};

// a (L x L) .*= psi, in place.
void apply_psi(float* a, const float* psi, int L) {
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < L; ++j) a[i * L + j] *= psi[i * L + j];
}

// dst (L x d, dense) = diag(scale[r]) src (rows with stride ld).
void scale_rows(float* dst, const float* src, int ld, const float* scale, int L, int d) {
  for (int r = 0; r < L; ++r) {
    const float f = scale[r];
    const float* in = src + (long)r * ld;
    float* out = dst + (long)r * d;
    for (int i = 0; i < d; ++i) out[i] = f * in[i];
  }
}

// Scale factors of one block: inter[i] = lambda^i, tail[j] = lambda^(L-j).
void block_factors(float* inter, float* tail, const float* pw, int L) {
  for (int i = 0; i < L; ++i) {
    inter[i] = pw[i];
    tail[i] = pw[L - i];
  }
}

// Per-thread scratch of the causal kernels, carved from the workspace in parts of whole cache lines.
struct Scratch {
  DecayTables full, last;  // tables for a full block and for the shorter last block
  float *a, *da, *tmp, *inter, *tail, *dstate, *states;
};

struct Carver {
  float* base;  // null: only count
  size_t used = 0;
  float* take(size_t n) {
    float* part = base ? base + used : nullptr;
    used += (n + 15) / 16 * 16;
    return part;
  }
};

Scratch carve(Carver& c, const LinearAttentionShape& s, bool backward) {
  const size_t blk = s.block, d = s.d;
  Scratch w{};
  w.full.pw = c.take(blk + 1);
  w.full.psi = c.take(blk * blk);
  w.last.pw = c.take(blk + 1);
  w.last.psi = c.take(blk * blk);
  w.a = c.take(blk * blk);
  w.tmp = c.take(blk * d);
  w.inter = c.take(blk);
  w.tail = c.take(blk);
  w.dstate = c.take(d * d);
  if (backward) {
    w.da = c.take(blk * blk);
    w.states = c.take((size_t(num_blocks(s)) + 1) * d * d);  // S_b of every block, for dQ
  }
  return w;
}

size_t scratch_stride(const LinearAttentionShape& s, bool backward) {
  Carver counter{nullptr};
  carve(counter, s, backward);
  return counter.used;
}

Scratch thread_scratch(Workspace ws, const LinearAttentionShape& s, bool backward) {
  Carver c{ws.data + scratch_stride(s, backward) * size_t(omp_get_thread_num())};
  return carve(c, s, backward);
}

}  // namespace

size_t linear_attention_forward_workspace_floats(const LinearAttentionShape& s, int threads) {
  return scratch_stride(s, false) * size_t(threads);
}

size_t linear_attention_backward_workspace_floats(const LinearAttentionShape& s, int threads) {
  return scratch_stride(s, true) * size_t(threads);
}

void linear_attention_forward(float* o, float* state_out, const float* q, const float* k, const float* v,
                              const float* state_in, const float* lambda, const LinearAttentionShape& s,
                              Workspace ws) {
  const char* kernel = "linear_attention_forward";
  check_shape(kernel, s);
  LASP_CHECK(o && q && k && v, "{}: o, q, k and v must not be null", kernel);
  const int threads = omp_get_max_threads();
  check_workspace(kernel, ws, linear_attention_forward_workspace_floats(s, threads), s);

  const int N = s.N, H = s.H, d = s.d, blk = s.block, nb = num_blocks(s);
  const int ld = H * d;  // row stride of q, k, v, o

#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < s.B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    Scratch w = thread_scratch(ws, s, false);
    const double lam = lambda ? lambda[h] : 1.0;
    const bool decays = lam != 1.0;
    const long base = (long(b) * N * H + h) * d;
    float* S = w.dstate;  // the running state S_b, (d, d)
    const float* P = state_in ? state_in + size_t(bh) * d * d : nullptr;
    if (P) std::memcpy(S, P, sizeof(float) * d * d);
    else std::fill(S, S + d * d, 0.f);

    const int last_len = N - (nb - 1) * blk;
    w.full.fill(lam, blk);
    if (last_len != blk) w.last.fill(lam, last_len);

    for (int blkno = 0; blkno < nb; ++blkno) {
      const int L = blkno == nb - 1 ? last_len : blk;
      const DecayTables& t = L == blk ? w.full : w.last;
      const long off = base + long(blkno) * blk * ld;
      const float *qb = q + off, *kb = k + off, *vb = v + off;
      float* ob = o + off;
      // intra: O_b = ((Q_b K_b^T) .* psi) V_b
      gemm(false, true, L, L, d, 1.f, qb, ld, kb, ld, 0.f, w.a, L);
      apply_psi(w.a, t.psi, L);
      gemm(false, false, L, d, L, 1.f, w.a, L, vb, ld, 0.f, ob, ld);
      // inter: O_b += diag(lambda^i) Q_b S_b
      if (decays) {
        block_factors(w.inter, w.tail, t.pw, L);
        scale_rows(w.tmp, qb, ld, w.inter, L, d);
        gemm(false, false, L, d, d, 1.f, w.tmp, d, S, d, 1.f, ob, ld);
        // S = lambda^L S + K_b^T diag(lambda^(L-j)) V_b
        scale_rows(w.tmp, kb, ld, w.tail, L, d);
        gemm(true, false, d, d, L, 1.f, w.tmp, d, vb, ld, t.pw[L], S, d);
      } else {
        gemm(false, false, L, d, d, 1.f, qb, ld, S, d, 1.f, ob, ld);
        gemm(true, false, d, d, L, 1.f, kb, ld, vb, ld, 1.f, S, d);
      }
    }
    if (state_out) std::memcpy(state_out + size_t(bh) * d * d, S, sizeof(float) * d * d);
  }
}

void linear_attention_backward(float* dq, float* dk, float* dv, float* dstate_in, const float* dout,
                               const float* dstate_out, const float* q, const float* k, const float* v,
                               const float* state_in, const float* lambda, const LinearAttentionShape& s,
                               Workspace ws) {
  const char* kernel = "linear_attention_backward";
  check_shape(kernel, s);
  LASP_CHECK(dq && dk && dv && dout && q && k && v, "{}: dq, dk, dv, dout, q, k and v must not be null",
             kernel);
  const int threads = omp_get_max_threads();
  check_workspace(kernel, ws, linear_attention_backward_workspace_floats(s, threads), s);

  const int N = s.N, H = s.H, d = s.d, blk = s.block, nb = num_blocks(s);
  const int ld = H * d;
  const size_t dd = size_t(d) * d;

#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < s.B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    Scratch w = thread_scratch(ws, s, true);
    const double lam = lambda ? lambda[h] : 1.0;
    const long base = (long(b) * N * H + h) * d;
    const int last_len = N - (nb - 1) * blk;
    w.full.fill(lam, blk);
    if (last_len != blk) w.last.fill(lam, last_len);
    auto tables = [&](int blkno) -> const DecayTables& { return blkno == nb - 1 && last_len != blk ? w.last : w.full; };
    auto length = [&](int blkno) { return blkno == nb - 1 ? last_len : blk; };

    // Pass 1, forward order: the state entering every block, states[b] = S_b.
    float* states = w.states;
    if (state_in) std::memcpy(states, state_in + size_t(bh) * dd, sizeof(float) * dd);
    else std::fill(states, states + dd, 0.f);
    for (int blkno = 0; blkno < nb; ++blkno) {
      const int L = length(blkno);
      const DecayTables& t = tables(blkno);
      const long off = base + long(blkno) * blk * ld;
      float* next = states + size_t(blkno + 1) * dd;
      std::memcpy(next, states + size_t(blkno) * dd, sizeof(float) * dd);
      block_factors(w.inter, w.tail, t.pw, L);
      scale_rows(w.tmp, k + off, ld, w.tail, L, d);
      gemm(true, false, d, d, L, 1.f, w.tmp, d, v + off, ld, t.pw[L], next, d);
    }

    // Pass 2, reverse order; dS is the gradient of the state leaving the current block.
    float* dS = w.dstate;
    if (dstate_out) std::memcpy(dS, dstate_out + size_t(bh) * dd, sizeof(float) * dd);
    else std::fill(dS, dS + dd, 0.f);
    for (int blkno = nb - 1; blkno >= 0; --blkno) {
      const int L = length(blkno);
      const DecayTables& t = tables(blkno);
      const long off = base + long(blkno) * blk * ld;
      const float *qb = q + off, *kb = k + off, *vb = v + off, *dob = dout + off;
      float *dqb = dq + off, *dkb = dk + off, *dvb = dv + off;
      const float* Sb = states + size_t(blkno) * dd;
      block_factors(w.inter, w.tail, t.pw, L);

      // intra-block terms: A = (Q K^T) .* psi, dA = (dO V^T) .* psi
      gemm(false, true, L, L, d, 1.f, qb, ld, kb, ld, 0.f, w.a, L);
      apply_psi(w.a, t.psi, L);
      gemm(false, true, L, L, d, 1.f, dob, ld, vb, ld, 0.f, w.da, L);
      apply_psi(w.da, t.psi, L);
      gemm(false, false, L, d, L, 1.f, w.da, L, kb, ld, 1.f, dqb, ld);   // dQ += dA K
      gemm(true, false, L, d, L, 1.f, w.da, L, qb, ld, 1.f, dkb, ld);    // dK += dA^T Q
      gemm(true, false, L, d, L, 1.f, w.a, L, dob, ld, 1.f, dvb, ld);    // dV += A^T dO

      // inter terms with the tail-scaled K, V and the inter-scaled dO
      scale_rows(w.tmp, vb, ld, w.tail, L, d);
      gemm(false, true, L, d, d, 1.f, w.tmp, d, dS, d, 1.f, dkb, ld);    // dK += diag(l^(L-j)) V dS^T
      scale_rows(w.tmp, kb, ld, w.tail, L, d);
      gemm(false, false, L, d, d, 1.f, w.tmp, d, dS, d, 1.f, dvb, ld);   // dV += diag(l^(L-j)) K dS
      scale_rows(w.tmp, dob, ld, w.inter, L, d);
      gemm(false, true, L, d, d, 1.f, w.tmp, d, Sb, d, 1.f, dqb, ld);    // dQ += diag(l^i) dO S_b^T
      gemm(true, false, d, d, L, 1.f, qb, ld, w.tmp, d, t.pw[L], dS, d); // dS_b = l^L dS + Q^T diag(l^i) dO
    }
    if (dstate_in) {
      float* g = dstate_in + size_t(bh) * dd;
      for (size_t i = 0; i < dd; ++i) g[i] += dS[i];
    }
  }
}

size_t linear_attention_bidirectional_workspace_floats(const LinearAttentionShape& s, int threads) {
  return 2 * size_t(s.d) * s.d * size_t(threads);
}

void linear_attention_bidirectional_forward(float* o, float* state_out, const float* q, const float* k,
                                            const float* v, const float* state_in,
                                            const LinearAttentionShape& s, Workspace ws) {
  const char* kernel = "linear_attention_bidirectional_forward";
  check_shape(kernel, s);
  LASP_CHECK(o && q && k && v, "{}: o, q, k and v must not be null", kernel);
  check_workspace(kernel, ws, linear_attention_bidirectional_workspace_floats(s, omp_get_max_threads()), s);
  const int N = s.N, H = s.H, d = s.d, ld = H * d;
  const size_t dd = size_t(d) * d;
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < s.B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const long base = (long(b) * N * H + h) * d;
    float* M = ws.data + 2 * dd * size_t(omp_get_thread_num());
    gemm(true, false, d, d, N, 1.f, k + base, ld, v + base, ld, 0.f, M, d);  // M = K^T V
    if (state_out) std::memcpy(state_out + size_t(bh) * dd, M, sizeof(float) * dd);
    if (state_in)
      for (size_t i = 0; i < dd; ++i) M[i] += state_in[size_t(bh) * dd + i];
    gemm(false, false, N, d, d, 1.f, q + base, ld, M, d, 0.f, o + base, ld);  // O = Q (M + P)
  }
}

void linear_attention_bidirectional_backward(float* dq, float* dk, float* dv, float* dstate_in,
                                             const float* dout, const float* dstate_out, const float* q,
                                             const float* k, const float* v, const float* state_in,
                                             const LinearAttentionShape& s, Workspace ws) {
  const char* kernel = "linear_attention_bidirectional_backward";
  check_shape(kernel, s);
  LASP_CHECK(dq && dk && dv && dout && q && k && v, "{}: dq, dk, dv, dout, q, k and v must not be null",
             kernel);
  check_workspace(kernel, ws, linear_attention_bidirectional_workspace_floats(s, omp_get_max_threads()), s);
  const int N = s.N, H = s.H, d = s.d, ld = H * d;
  const size_t dd = size_t(d) * d;
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < s.B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const long base = (long(b) * N * H + h) * d;
    float* M = ws.data + 2 * dd * size_t(omp_get_thread_num());
    float* dM = M + dd;
    gemm(true, false, d, d, N, 1.f, k + base, ld, v + base, ld, 0.f, M, d);
    if (state_in)
      for (size_t i = 0; i < dd; ++i) M[i] += state_in[size_t(bh) * dd + i];
    gemm(false, true, N, d, d, 1.f, dout + base, ld, M, d, 1.f, dq + base, ld);  // dQ += dO (M + P)^T
    gemm(true, false, d, d, N, 1.f, q + base, ld, dout + base, ld, 0.f, dM, d);  // Q^T dO
    if (dstate_in)
      for (size_t i = 0; i < dd; ++i) dstate_in[size_t(bh) * dd + i] += dM[i];
    if (dstate_out)
      for (size_t i = 0; i < dd; ++i) dM[i] += dstate_out[size_t(bh) * dd + i];
    gemm(false, true, N, d, d, 1.f, v + base, ld, dM, d, 1.f, dk + base, ld);  // dK += V dM^T
    gemm(false, false, N, d, d, 1.f, k + base, ld, dM, d, 1.f, dv + base, ld); // dV += K dM
  }
}

}  // namespace lasp
