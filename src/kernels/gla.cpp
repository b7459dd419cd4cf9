#include "kernels/gla.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/gemm_small.h"
#include "kernels/transpose.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

void check(const char* kernel, const LinearAttentionShape& s, Workspace ws, size_t need) {
  LASP_CHECK(s.B > 0 && s.N > 0 && s.H > 0 && s.dk > 0 && s.dv > 0 && s.block > 0 && s.threads > 0,
             "{}: sizes must be positive, got B={} N={} H={} dk={} dv={} block={} threads={}", kernel, s.B, s.N, s.H,
             s.dk, s.dv, s.block, s.threads);
  LASP_CHECK(s.f == 0, "{}: GLA's gates act on the key dims, not on expanded features: expected f = 0 (q, k dk wide), "
             "got f={} ({}, dk={})", kernel, s.f, to_string(s.expansion), s.dk);
  LASP_CHECK(ws.floats >= need && (need == 0 || ws.data != nullptr),
             "{}: workspace of {} floats needed for dk={} dv={} block={} on {} threads, got {}", kernel, need, s.dk,
             s.dv, s.block, s.threads, ws.floats);
}

// Vectors of kLanes floats in GCC's vector extensions: one AVX-512 register, or one AVX2 register (and two
// halves below that); the products contract to FMA where the target has it.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
using Vec = float __attribute__((vector_size(4 * kLanes)));
using Vec8 = float __attribute__((vector_size(32)));
using Vec4 = float __attribute__((vector_size(16)));

inline Vec load(const float* p) {
  Vec x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
inline void store(float* p, Vec x) { std::memcpy(p, &x, sizeof x); }

inline float horizontal_sum(Vec x) {
#if defined(__AVX512F__)
  const Vec8 x8 = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  const Vec8 x8 = x;
#endif
  Vec4 h = __builtin_shufflevector(x8, x8, 0, 1, 2, 3) + __builtin_shufflevector(x8, x8, 4, 5, 6, 7);
  h += __builtin_shufflevector(h, h, 2, 3, 0, 1);
  h += __builtin_shufflevector(h, h, 1, 0, 3, 2);
  return h[0];
}

// a . b, vectorized (a serial chain of scalar adds here cost 3/4 of the forward).
float dot(const float* a, const float* b, int n) {
  Vec acc{};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += load(a + i) * load(b + i);
  float sum = horizontal_sum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// One thread's scratch: a group of heads of one batch row, one block of one head at a time.
// Keys (q, k, g and the state's rows) are dk wide, values (v, o and the state's columns) dv.
struct Scratch {
  float *state, *dstate;         // (heads, dk, dv): each head's running S, and dS (backward)
  float* run;                    // (heads, dk): each head's running sum of dg (backward)
  float *st, *vt;                // (dv, dk) S or dS transposed; (dv, blk) V transposed (product_bt)
  // (heads, blk, width) the group's block, every head: inputs, and what goes out (o; dq, dk, dv, dg)
  float *in_q, *in_k, *in_g, *out_b, *out_d;  // keys: q, k, g; dk, dg
  float *in_v, *in_do, *out_c;                // values: v, dO; dv
  float* out_a;                               // o (values) forward, dq (keys) backward
  float *q, *k, *v, *g, *o;      // (blk, width) one head's rows in those; o: dO in the backward
  float *eg, *qf, *kf;           // (blk, dk) each token's gate exp(g); their products over [0, t] and (u, last]
  float *qg, *kg;                // (blk, dk) q_t qf_t, k_u kf_u
  float *dq, *dk, *dv;           // one head's contributions (backward), in out_a, out_b, out_c
  float *a, *da;                 // (blk, blk) intra-block scores and their gradient
  float *e, *ke, *qe;            // (dk) one pair's gate product, k_u e, q_t e
};

// Each thread takes one batch row and a contiguous group of heads and walks the blocks, all its heads per block,
// so that it reads the (N, H, width) rows in runs of heads x width floats rather than width floats 2 KB apart.
struct HeadGroups {
  int count, max_heads;
  HeadGroups(const LinearAttentionShape& s) {
    count = int(std::clamp((long(s.threads) + s.B - 1) / s.B, 1L, long(s.H)));
    max_heads = (s.H + count - 1) / count;
  }
  int begin(int g, int H) const { return int(long(g) * H / count); }
};

Scratch carve(Carver& c, const LinearAttentionShape& s, bool backward) {
  const size_t bk = size_t(s.block) * s.dk, bv = size_t(s.block) * s.dv, kv = size_t(s.dk) * s.dv;
  const size_t heads = HeadGroups(s).max_heads;
  Scratch w{};
  w.state = c.take(heads * kv);
  for (float** part : {&w.in_q, &w.in_k, &w.in_g}) *part = c.take(heads * bk);
  w.in_v = c.take(heads * bv);
  w.out_a = c.take(heads * std::max(bk, bv));
  for (float** part : {&w.eg, &w.qf, &w.kf, &w.qg, &w.kg}) *part = c.take(bk);
  w.a = c.take(size_t(s.block) * s.block);
  for (float** part : {&w.e, &w.ke}) *part = c.take(s.dk);
  if (backward) {
    w.dstate = c.take(heads * kv);
    w.run = c.take(heads * s.dk);
    w.st = c.take(kv);
    w.vt = c.take(bv);
    for (float** part : {&w.out_b, &w.out_d}) *part = c.take(heads * bk);
    for (float** part : {&w.in_do, &w.out_c}) *part = c.take(heads * bv);
    w.da = c.take(size_t(s.block) * s.block);
    w.qe = c.take(s.dk);
  }
  return w;
}

size_t stride(const LinearAttentionShape& s, bool backward) {
  Carver counter{nullptr};
  carve(counter, s, backward);
  return counter.used;
}

size_t workspace(const LinearAttentionShape& s, bool backward) { return stride(s, backward) * size_t(s.threads); }

// Rows [t0, t0 + rows) of heads [h0, h0 + heads) of batch row b of a (B, N, H, width) tensor (width dk for
// keys, dv for values), moved to and from packed (heads, rows, width) buffers a whole row of the group at a
// time: contiguous runs of heads x width floats (one head's floats every H width would alias in L1 and wait on
// memory).
struct Group {
  const LinearAttentionShape& s;
  int b, h0, heads, t0, rows;
  // The block's document-start flags (kernel's starts), or null.
  const uint8_t* flags(const uint8_t* starts) const { return starts ? starts + long(b) * s.N + t0 : nullptr; }
  static float* head(float* packed, int j, int rows, int width) { return packed + long(j) * rows * width; }
  float* key_head(float* packed, int j) const { return head(packed, j, rows, s.dk); }
  float* value_head(float* packed, int j) const { return head(packed, j, rows, s.dv); }
  template <class F>
  void each(int width, F f) const {
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < heads; ++j)
        f(((long(b) * s.N + t0 + r) * s.H + h0 + j) * width, (long(j) * rows + r) * width);
  }
  void gather(int width, float* packed, const float* x) const {
    each(width, [&](long xi, long pi) {
#pragma omp simd
      for (int i = 0; i < width; ++i) packed[pi + i] = x[xi + i];
    });
  }
  void scatter(int width, float* x, const float* packed) const {
    each(width, [&](long xi, long pi) {
#pragma omp simd
      for (int i = 0; i < width; ++i) x[xi + i] = packed[pi + i];
    });
  }
  void scatter_add(int width, float* x, const float* packed) const {
    each(width, [&](long xi, long pi) {
#pragma omp simd
      for (int i = 0; i < width; ++i) x[xi + i] += packed[pi + i];
    });
  }
  // The block's q, k, v and log-gates, every head.
  void gather_inputs(Scratch& w, const float* q, const float* k, const float* v, const float* g) const {
    gather(s.dk, w.in_q, q), gather(s.dk, w.in_k, k), gather(s.dv, w.in_v, v), gather(s.dk, w.in_g, g);
  }
};


// Points w at head j's block (q, k, v, log-gates) and computes its factors (gla_gate_products): eg, qf over
// [0, t], kf over (u, last]; qg = q qf, kg = k kf. A product over at most `block` gates costs a few ulp, where a
// difference of cumulative log-gates would lose the precision of its larger terms.
void load_block(Scratch& w, const Group& group, int j, const uint8_t* starts) {
  const int d = group.s.dk, n = group.rows;
  w.q = group.key_head(w.in_q, j), w.k = group.key_head(w.in_k, j), w.g = group.key_head(w.in_g, j);
  w.v = group.value_head(w.in_v, j);
  gla_gate_products(w.eg, w.qf, w.kf, w.g, d, n, d, group.flags(starts));
  const long nd = long(n) * d;
#pragma omp simd
  for (long x = 0; x < nd; ++x) w.qg[x] = w.q[x] * w.qf[x], w.kg[x] = w.k[x] * w.kf[x];
}

// Walks the keys u = t, t-1, ..., 0 of query t with e = the product of the gates over (u, t] (<= 1), one factor
// more at each step. The generic form (any d); pairs_forward / pairs_backward below are the fast ones.
template <class F>
void for_each_key(Scratch& w, int t, int d, F f) {
  std::fill(w.e, w.e + d, 1.f);
  for (int u = t; u >= 0; --u) {
    f(u);
    const float* eg = w.eg + u * d;
#pragma omp simd
    for (int i = 0; i < d; ++i) w.e[i] = gla_gate_product(w.e[i], eg[i]);
  }
}

inline Vec gate_product(Vec x, Vec y) {
  const Vec p = x * y;
  return p >= 1e-30f ? p : Vec{};
}

// The intra-block pairs u <= t with d = kLanes V, in registers: a[t][u] = sum_i q_t,i k_u,i e_i (forward).
template <int V>
void pairs_forward(float* a, const Scratch& w, int n) {
  constexpr int d = kLanes * V;
  for (int t = 0; t < n; ++t) {
    Vec qt[V], e[V];
    for (int x = 0; x < V; ++x) qt[x] = load(w.q + t * d + kLanes * x), e[x] = Vec{} + 1.f;
    for (int u = t; u >= 0; --u) {
      Vec acc{};
      for (int x = 0; x < V; ++x) {
        acc += qt[x] * (load(w.k + u * d + kLanes * x) * e[x]);
        e[x] = gate_product(e[x], load(w.eg + u * d + kLanes * x));
      }
      a[t * n + u] = horizontal_sum(acc);
    }
    std::fill(a + t * n + t + 1, a + (t + 1) * n, 0.f);
  }
}

// Backward: also dq_t += sum_u da[t][u] k_u e and dk_u += da[t][u] q_t e (into w.dq, w.dk).
template <int V>
void pairs_backward(float* a, const Scratch& w, int n) {
  constexpr int d = kLanes * V;
  for (int t = 0; t < n; ++t) {
    Vec qt[V], e[V], dqt[V];
    for (int x = 0; x < V; ++x) qt[x] = load(w.q + t * d + kLanes * x), e[x] = Vec{} + 1.f, dqt[x] = Vec{};
    for (int u = t; u >= 0; --u) {
      const float da = w.da[t * n + u];
      Vec acc{};
      for (int x = 0; x < V; ++x) {
        const Vec ke = load(w.k + u * d + kLanes * x) * e[x];
        acc += qt[x] * ke;
        dqt[x] += da * ke;
        float* dku = w.dk + u * d + kLanes * x;
        store(dku, load(dku) + da * (qt[x] * e[x]));
        e[x] = gate_product(e[x], load(w.eg + u * d + kLanes * x));
      }
      a[t * n + u] = horizontal_sum(acc);
    }
    for (int x = 0; x < V; ++x) {
      float* dq = w.dq + t * d + kLanes * x;
      store(dq, load(dq) + dqt[x]);
    }
    std::fill(a + t * n + t + 1, a + (t + 1) * n, 0.f);
  }
}

// The fast form for d a multiple of kLanes up to 128 (beyond, the rows of q and e outgrow the registers), or false.
bool fast_pairs(float* a, const Scratch& w, int n, int d, bool backward) {
  if (d % kLanes != 0 || d > 128) return false;
  switch (d / kLanes) {
#define LASP_GLA_PAIRS(V) \
  case V: backward ? pairs_backward<V>(a, w, n) : pairs_forward<V>(a, w, n); return true;
    LASP_GLA_PAIRS(1) LASP_GLA_PAIRS(2) LASP_GLA_PAIRS(3) LASP_GLA_PAIRS(4)
    LASP_GLA_PAIRS(5) LASP_GLA_PAIRS(6) LASP_GLA_PAIRS(7) LASP_GLA_PAIRS(8)
#if !defined(__AVX512F__)
    LASP_GLA_PAIRS(9) LASP_GLA_PAIRS(10) LASP_GLA_PAIRS(11) LASP_GLA_PAIRS(12)
    LASP_GLA_PAIRS(13) LASP_GLA_PAIRS(14) LASP_GLA_PAIRS(15) LASP_GLA_PAIRS(16)
#endif
#undef LASP_GLA_PAIRS
  }
  return false;
}

// C (M x N) = A B^T for A (M x K) and B (N x K), both dense. The small register-blocked kernel reads B only as
// stored, so B goes through tmp (K x N) transposed; oneDNN (CPUs without that kernel) reads B^T in place.
void product_bt(int M, int N, int K, const float* A, const float* B, float* tmp, float* C) {
  if (!gemm_small_available()) return gemm(false, true, M, N, K, 1.f, A, K, B, K, 0.f, C, N);
  transpose(tmp, N, B, K, N, K);
  gemm(false, false, M, N, K, 1.f, A, K, tmp, N, 0.f, C, N);
}

// S = diag(f) S + kg^T v with f = qf_last, the block's whole gate product: the state (dk x dv) after the block.
void advance_state(float* S, const Scratch& w, int n, int dk, int dv) {
  const float* f = w.qf + (n - 1) * dk;
  for (int i = 0; i < dk; ++i)
#pragma omp simd
    for (int j = 0; j < dv; ++j) S[i * dv + j] *= f[i];
  gemm(true, false, dk, dv, n, 1.f, w.kg, dk, w.v, dv, 1.f, S, dv);
}

// f(scratch, b, first head, heads) for every (batch row, head group), in parallel.
template <class F>
void for_each_group(const LinearAttentionShape& s, Workspace ws, bool backward, F f) {
  const size_t per_thread = stride(s, backward);
  const HeadGroups groups(s);
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int item = 0; item < s.B * groups.count; ++item) {
    Carver c{ws.data + per_thread * size_t(omp_get_thread_num())};
    Scratch w = carve(c, s, backward);
    const int b = item / groups.count, g = item % groups.count, h0 = groups.begin(g, s.H);
    f(w, b, h0, groups.begin(g + 1, s.H) - h0);
  }
}

}  // namespace

void gla_gate_products(float* gates, float* before, float* after, const float* g, long ld, int n, int d,
                       const uint8_t* flags) {
  for (int t = 0; t < n; ++t) {
    float* e = gates + long(t) * d;
    const float* gt = g + t * ld;
#pragma omp simd
    for (int i = 0; i < d; ++i) e[i] = vec_exp(gt[i]);
    if (flags && flags[t]) std::fill(e, e + d, 0.f);
  }
#pragma omp simd
  for (int i = 0; i < d; ++i) before[i] = gates[i], after[long(n - 1) * d + i] = 1.f;
  for (long t = 1; t < n; ++t)
#pragma omp simd
    for (int i = 0; i < d; ++i) before[t * d + i] = gla_gate_product(before[(t - 1) * d + i], gates[t * d + i]);
  for (long t = n - 2; t >= 0; --t)
#pragma omp simd
    for (int i = 0; i < d; ++i) after[t * d + i] = gla_gate_product(after[(t + 1) * d + i], gates[(t + 1) * d + i]);
}

size_t gla_forward_workspace_floats(const LinearAttentionShape& s) { return workspace(s, false); }
size_t gla_backward_workspace_floats(const LinearAttentionShape& s) { return workspace(s, true); }

void gla_forward(float* o, float* state_out, const float* q, const float* k, const float* v, const float* g,
                 const float* state_in, const uint8_t* starts, const LinearAttentionShape& s, Workspace ws) {
  check("gla_forward", s, ws, gla_forward_workspace_floats(s));
  const int dk = s.dk, dv = s.dv, blk = s.block;
  const size_t kv = size_t(dk) * dv;
  for_each_group(s, ws, false, [&](Scratch& w, int b, int h0, int heads) {
    for (int j = 0; j < heads; ++j) {
      float* S = w.state + j * kv;
      if (state_in) std::memcpy(S, state_in + (size_t(b) * s.H + h0 + j) * kv, sizeof(float) * kv);
      else std::fill(S, S + kv, 0.f);
    }
    for (int t0 = 0; t0 < s.N; t0 += blk) {
      const int n = std::min(blk, s.N - t0);
      const Group group{s, b, h0, heads, t0, n};
      group.gather_inputs(w, q, k, v, g);
      for (int j = 0; j < heads; ++j) {
        float* S = w.state + j * kv;
        load_block(w, group, j, starts);
        w.o = group.value_head(w.out_a, j);
        // a[t][u] = sum_i q_t,i k_u,i (the gates' product over (u, t]), u <= t
        if (!fast_pairs(w.a, w, n, dk, false))
          for (int t = 0; t < n; ++t) {
            std::fill(w.a + t * n + t + 1, w.a + (t + 1) * n, 0.f);
            for_each_key(w, t, dk, [&](int u) {
#pragma omp simd
              for (int i = 0; i < dk; ++i) w.ke[i] = w.k[u * dk + i] * w.e[i];
              w.a[t * n + u] = dot(w.q + t * dk, w.ke, dk);
            });
          }
        gemm(false, false, n, dv, dk, 1.f, w.qg, dk, S, dv, 0.f, w.o, dv);  // o = qg S + a v
        gemm(false, false, n, dv, n, 1.f, w.a, n, w.v, dv, 1.f, w.o, dv);
        advance_state(S, w, n, dk, dv);
      }
      group.scatter(dv, o, w.out_a);
    }
    if (state_out)
      for (int j = 0; j < heads; ++j)
        std::memcpy(state_out + (size_t(b) * s.H + h0 + j) * kv, w.state + j * kv, sizeof(float) * kv);
  });
}

void gla_backward(float* dq, float* dk, float* dv, float* dg, float* dstate_in, const float* dout,
                  const float* dstate_out, const float* q, const float* k, const float* v, const float* g,
                  const float* state_in, const uint8_t* starts, const LinearAttentionShape& s, Workspace ws) {
  check("gla_backward", s, ws, gla_backward_workspace_floats(s));
  const int dkey = s.dk, dval = s.dv, blk = s.block;
  const size_t kv = size_t(dkey) * dval;
  for_each_group(s, ws, true, [&](Scratch& w, int b, int h0, int heads) {
    auto at = [&](int j) { return (size_t(b) * s.H + h0 + j) * kv; };
    // Pass 1, forward: the terms that need the running state S (dq) or only the block (the intra-block ones).
    // dg holds q dq - k dk of these terms until pass 2 sums it from the end.
    for (int j = 0; j < heads; ++j) {
      float* S = w.state + j * kv;
      if (state_in) std::memcpy(S, state_in + at(j), sizeof(float) * kv);
      else std::fill(S, S + kv, 0.f);
    }
    for (int t0 = 0; t0 < s.N; t0 += blk) {
      const int n = std::min(blk, s.N - t0);
      const Group group{s, b, h0, heads, t0, n};
      group.gather_inputs(w, q, k, v, g);
      group.gather(dval, w.in_do, dout);
      for (int j = 0; j < heads; ++j) {
        float* S = w.state + j * kv;
        load_block(w, group, j, starts);
        w.o = group.value_head(w.in_do, j);
        w.dq = group.key_head(w.out_a, j), w.dk = group.key_head(w.out_b, j), w.dv = group.value_head(w.out_c, j);
        product_bt(n, dkey, dval, w.o, S, w.st, w.dq);  // dq = (dO S^T) qf
#pragma omp simd
        for (long x = 0; x < long(n) * dkey; ++x) w.dq[x] *= w.qf[x];
        product_bt(n, n, dval, w.o, w.v, w.vt, w.da);  // dA = dO V^T
        std::fill(w.dk, w.dk + size_t(n) * dkey, 0.f);
        // the pairs u <= t: a, and dq, dk through the gates' product over (u, t]
        if (!fast_pairs(w.a, w, n, dkey, true))
          for (int t = 0; t < n; ++t) {
            std::fill(w.a + t * n + t + 1, w.a + (t + 1) * n, 0.f);
            const float* qt = w.q + t * dkey;
            float* dqt = w.dq + t * dkey;
            for_each_key(w, t, dkey, [&](int u) {
              const float* ku = w.k + u * dkey;
#pragma omp simd
              for (int i = 0; i < dkey; ++i) w.ke[i] = ku[i] * w.e[i], w.qe[i] = qt[i] * w.e[i];
              w.a[t * n + u] = dot(qt, w.ke, dkey);
              const float da = w.da[t * n + u];
              float* dku = w.dk + u * dkey;
#pragma omp simd
              for (int i = 0; i < dkey; ++i) dqt[i] += da * w.ke[i], dku[i] += da * w.qe[i];
            });
          }
        gemm(true, false, n, dval, n, 1.f, w.a, n, w.o, dval, 0.f, w.dv, dval);  // dv = A^T dO
        if (dg) {
          float* partial = group.key_head(w.out_d, j);
#pragma omp simd
          for (long x = 0; x < long(n) * dkey; ++x) partial[x] = w.q[x] * w.dq[x] - w.k[x] * w.dk[x];
        }
        advance_state(S, w, n, dkey, dval);
      }
      group.scatter_add(dkey, dq, w.out_a), group.scatter_add(dkey, dk, w.out_b), group.scatter_add(dval, dv, w.out_c);
      if (dg) group.scatter(dkey, dg, w.out_d);
    }
    // Pass 2, backward: the state gradient dS from the end, the terms that need it (dk, dv), and dg's sum.
    // run = the running sum of q dq - k dk from the end, plus rowsum(S_last .* dstate_out): the final state
    // depends on every gate.
    for (int j = 0; j < heads; ++j) {
      float *dS = w.dstate + j * kv, *r = w.run + j * dkey;
      std::fill(r, r + dkey, 0.f);
      if (dstate_out) {
        std::memcpy(dS, dstate_out + at(j), sizeof(float) * kv);
        for (int i = 0; i < dkey; ++i) r[i] = dot(w.state + j * kv + i * dval, dS + i * dval, dval);
      } else {
        std::fill(dS, dS + kv, 0.f);
      }
    }
    const int blocks = (s.N + blk - 1) / blk;
    for (int blkno = blocks - 1; blkno >= 0; --blkno) {
      const int t0 = blkno * blk, n = std::min(blk, s.N - t0);
      const Group group{s, b, h0, heads, t0, n};
      group.gather_inputs(w, q, k, v, g);
      group.gather(dval, w.in_do, dout);
      if (dg) group.gather(dkey, w.out_d, dg);  // pass 1's q dq - k dk
      for (int j = 0; j < heads; ++j) {
        float *dS = w.dstate + j * kv, *r = w.run + j * dkey;
        load_block(w, group, j, starts);
        w.o = group.value_head(w.in_do, j);
        w.dk = group.key_head(w.out_b, j), w.dv = group.value_head(w.out_c, j);
        const float* last = w.qf + (n - 1) * dkey;
        product_bt(n, dkey, dval, w.v, dS, w.st, w.dk);  // dk = (V dS^T) kf
#pragma omp simd
        for (long x = 0; x < long(n) * dkey; ++x) w.dk[x] *= w.kf[x];
        gemm(false, false, n, dval, dkey, 1.f, w.kg, dkey, dS, dval, 0.f, w.dv, dval);  // dv = kg dS
        for (int i = 0; i < dkey; ++i)  // dS = diag(qf_last) dS + qg^T dO
#pragma omp simd
          for (int c = 0; c < dval; ++c) dS[i * dval + c] *= last[i];
        gemm(true, false, dkey, dval, n, 1.f, w.qg, dkey, w.o, dval, 1.f, dS, dval);
        if (dg) {
          float* sum = group.key_head(w.out_d, j);  // pass 1's q dq - k dk, summed from the end in place
          const uint8_t* flags = group.flags(starts);
          for (int t = n - 1; t >= 0; --t) {
#pragma omp simd
            for (int i = 0; i < dkey; ++i) {
              r[i] += sum[t * dkey + i] - w.k[t * dkey + i] * w.dk[t * dkey + i];
              sum[t * dkey + i] = r[i];
            }
            if (flags && flags[t]) {  // a start's gate is 0 whatever g: no gradient; before it, none of the sums
              std::fill(sum + t * dkey, sum + (t + 1) * dkey, 0.f);
              std::fill(r, r + dkey, 0.f);
            }
          }
        }
      }
      group.scatter_add(dkey, dk, w.out_b), group.scatter_add(dval, dv, w.out_c);
      if (dg) group.scatter(dkey, dg, w.out_d);
    }
    if (dstate_in)
      for (int j = 0; j < heads; ++j)
        for (size_t x = 0; x < kv; ++x) dstate_in[at(j) + x] += w.dstate[j * kv + x];
  });
}

}  // namespace lasp
