#include "kernels/linear_attention.h"
#include "kernels/state_algebra.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "core/check.h"
#include "core/parse.h"
#include "kernels/gemm.h"
#include "kernels/transpose.h"

namespace lasp {

Decay decay_from_string(const std::string& name) {
  if (name == "none") return Decay::none;
  if (name == "lightning") return Decay::lightning;
  if (name == "retention") return Decay::retention;
  if (name == "gla") return Decay::gla;
  if (name == "gdn") return Decay::gdn;
  throw Error("unknown decay '" + name + "': expected one of none, lightning, retention, gla, gdn");
}

const char* to_string(Decay decay) {
  switch (decay) {
    case Decay::none: return "none";
    case Decay::lightning: return "lightning";
    case Decay::retention: return "retention";
    case Decay::gla: return "gla";
    case Decay::gdn: return "gdn";
  }
  return "?";
}

namespace {

// The ALiBi slope of head h of H, as the paper's code builds them (MODEL.md): with c the largest power of two
// <= H, 2^(-8 (h+1) / c) for the first c heads; the rest take the slopes of 2c heads at even indices.
double alibi_slope(int h, int H) {
  int c = 1;
  while (2 * c <= H) c *= 2;
  return h < c ? std::exp2(-8.0 * (h + 1) / c) : alibi_slope(2 * (h - c), 2 * c);
}

}  // namespace

void linear_attention_decays(float* lambda, int H, Decay decay) {
  for (int h = 0; h < H; ++h) {
    double l = 1.0;
    if (decay == Decay::lightning) l = std::exp(-alibi_slope(h, H));
    if (decay == Decay::retention) l = 1.0 - std::exp2(-5.0 - h);
    lambda[h] = float(l);
  }
}
float decay_power(double lambda, long n) {
  const double x = std::pow(lambda, double(n));
  return x < 1e-30 ? 0.f : float(x);
}

void decay_powers(float* pw, double lambda, int n, long first) {
  double p = first == 0 ? 1.0 : std::pow(lambda, double(first));
  for (int k = 0; k <= n; ++k, p *= lambda) pw[k] = p < 1e-30 ? 0.f : float(p);
}

namespace {

void check_shape(const char* kernel, const LinearAttentionShape& s) {
  LASP_CHECK(s.B > 0 && s.N > 0 && s.H > 0 && s.dk > 0 && s.dv > 0 && s.block > 0 && s.threads > 0,
             "{}: sizes must be positive, got B={} N={} H={} dk={} dv={} block={} threads={}", kernel, s.B, s.N, s.H,
             s.dk, s.dv, s.block, s.threads);
  LASP_CHECK(s.f >= 0, "{}: the raw width f of expanded q, k must be >= 0 (0: not expanded), got f={}", kernel, s.f);
  if (s.f > 0) {
    LASP_CHECK(s.expansion == ExpandedKind::based || s.expansion == ExpandedKind::rebased,
               "{}: invalid ExpandedKind value {} with f={}", kernel, int(s.expansion), s.f);
    const long features = expanded_features(s.f, s.expansion);
    LASP_CHECK(s.dk == features, "{}: with f={} ({} features), dk must be expanded_features(f) = {}, got dk={}", kernel,
               s.f, to_string(s.expansion), features, s.dk);
  }
  checked_product({s.B, s.N, s.H, std::max({s.dk, s.dv, s.f})}, kernel);  // elements are addressed with 64-bit offsets
  LASP_CHECK(int64_t(s.B) * s.H <= INT_MAX, "{}: B x H = {} x {} (batch rows x heads) must fit an int", kernel, s.B,
             s.H);
}

// The kernels that take q and k as they are (bidirectional, GLA) refuse expanded features.
void check_not_expanded(const char* kernel, const LinearAttentionShape& s) {
  LASP_CHECK(s.f == 0, "{}: expanded features are not supported here: expected f = 0 (q, k used as they are, dk wide), "
             "got f={} ({}, dk={})", kernel, s.f, to_string(s.expansion), s.dk);
}

void check_workspace(const char* kernel, Workspace ws, size_t need, const LinearAttentionShape& s) {
  LASP_CHECK(ws.floats >= need && (need == 0 || ws.data != nullptr),
             "{}: workspace of {} floats needed for B={} N={} H={} dk={} dv={} f={} block={} on {} threads, got {}",
             kernel, need, s.B, s.N, s.H, s.dk, s.dv, s.f, s.block, s.threads, ws.floats);
}

int num_blocks(const LinearAttentionShape& s) { return (s.N + s.block - 1) / s.block; }

// The flags of block `blkno` of batch row b, or null without documents.
const uint8_t* block_starts(const uint8_t* starts, const LinearAttentionShape& s, int b, int blkno) {
  return starts ? starts + long(b) * s.N + long(blkno) * s.block : nullptr;
}

// Each thread takes one batch row and a contiguous group of heads and walks the blocks in order, all its
// heads per block, so that it reads long contiguous runs of the (N, H, width) rows.
struct HeadGroups {
  int count, max_heads;
  HeadGroups(const LinearAttentionShape& s, int threads) {
    count = int(std::clamp((long(threads) + s.B - 1) / s.B, 1L, long(s.H)));
    max_heads = (s.H + count - 1) / count;
  }
  int begin(int g, int H) const { return int(long(g) * H / count); }
};

// With more threads than (batch row, head group) items, each sequence is also cut into `pieces` runs of
// blocks, chained by their states as the ranks of LASP-2 are: every piece's local state (and, backward, its
// local state gradient) first, in parallel; then the short serial carry across pieces; then every piece with
// its incoming state, in parallel. The extra state pass costs ~10-25%; it pays when threads would idle.
struct Plan {
  HeadGroups groups;
  int pieces;
  Plan(const LinearAttentionShape& s, int threads) : groups(s, threads) {
    const int items = s.B * groups.count;
    pieces = items < threads ? std::max(1, std::min(num_blocks(s), threads / items)) : 1;
  }
  int first_block(int piece, int nb) const { return int(long(piece) * nb / pieces); }
};

// The serial carry across pieces, per (batch row, head): states (pieces, B, H, dk, dv).
//   forward:  slot 0 = `first` (or 0); slot p holds piece p-1's local state on entry, the state entering
//             piece p on exit: slot p = lambda^len(p-1) slot p-1 + slot p.
//   backward: slot P-1 = `last` (or 0); slot p holds piece p+1's local gradient on entry, the gradient of
//             the state leaving piece p on exit: slot p = lambda^len(p+1) slot p+1 + slot p.
void carry_states(float* slots, const float* edge, bool forward, const LinearAttentionShape& s, const Plan& plan,
                  const float* lambda, const uint8_t* starts) {
  const int P = plan.pieces, nb = num_blocks(s);
  const StateForm form{Transition::scalar, s.dk, s.dv};
  const size_t dd = form.state_floats(), per_piece = size_t(s.B) * s.H * dd;
  auto first_token = [&](int piece) { return std::min<long>(s.N, long(plan.first_block(piece, nb)) * s.block); };
  auto tokens = [&](int piece) { return first_token(piece + 1) - first_token(piece); };
  // A piece holding a document start passes on nothing from before it.
  auto cut = [&](int b, int piece) {
    return starts && std::any_of(starts + long(b) * s.N + first_token(piece), starts + long(b) * s.N + first_token(piece + 1),
                                 [](uint8_t x) { return x != 0; });
  };
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      const size_t at = (size_t(b) * s.H + h) * dd;
      float* end = slots + (forward ? 0 : size_t(P - 1) * per_piece) + at;
      if (edge) std::memcpy(end, edge + at, sizeof(float) * dd);
      else std::fill(end, end + dd, 0.f);
      for (int i = 1; i < P; ++i) {
        const int piece = forward ? i : P - 1 - i;        // the slot written
        const int from = forward ? piece - 1 : piece + 1;  // the slot carried, whose piece's length decays it
        // The slot holds the piece's own state B; the carried one arrives through the piece's transition.
        const float f = cut(b, from) ? 0.f : decay_power(lambda ? lambda[h] : 1.0, tokens(from));
        apply_transition(form, slots + size_t(piece) * per_piece + at, &f, slots + size_t(from) * per_piece + at,
                         /*accumulate=*/true, nullptr);
      }
    }
}

// Decay powers of one head: pw[k] = lambda^k and rev[m] = lambda^(blk - m), k, m = 0..blk.
void fill_powers(float* pw, float* rev, double lambda, int blk) {
  decay_powers(pw, lambda, blk);
  for (int k = 0; k <= blk; ++k) rev[blk - k] = pw[k];
}

// The factors of one block (rows [0, rows)) of one head: q[i] weighs query i against the state entering the
// block (lambda^i), k[j] key j in the state leaving it (lambda^(rows-j)), `decay` the entering state in the
// leaving one (lambda^rows). A document start at row t (GLA's gate of 0) cuts what lies before it:
// q[i] = 0 from the block's first start on, k[j] = 0 before its last start, decay = 0. `plain`: every factor
// is 1 (no decay, no start), so the products may read Q and K unscaled. `starts`: the block's rows of the
// kernel's flags, or null; qf and kf (blk floats) hold the factors when a start cuts them.
struct Factors {
  const float *q, *k;
  float decay;
  bool plain;
  const uint8_t* starts;  // the block's flags when it holds a start (the scores need mask_documents), else null
};
Factors block_factors(const float* pw, const float* rev, int blk, int rows, const uint8_t* starts, float* qf,
                      float* kf) {
  Factors f{pw, rev + blk - rows, pw[rows], pw[1] == 1.f, nullptr};
  int first = -1, last = -1;
  for (int i = 0; starts && i < rows; ++i)
    if (starts[i]) last = i, first = first < 0 ? i : first;
  if (first < 0) return f;
  for (int i = 0; i < rows; ++i) {
    qf[i] = i < first ? pw[i] : 0.f;
    kf[i] = i >= last ? f.k[i] : 0.f;
  }
  return {qf, kf, 0.f, false, starts};
}

// Scores a (rows x rows) of a block holding document starts: a[i][j] = 0 where a start lies in (j, i].
void mask_documents(float* a, const uint8_t* starts, int rows) {
  int opened = 0;  // the last start at or before row i
  for (int i = 0; i < rows; ++i) {
    if (starts[i]) opened = i;
    std::fill(a + long(i) * rows, a + long(i) * rows + opened, 0.f);
  }
}

// a (rows x rows) .*= psi with psi[i][j] = lambda^(i-j) = rev[blk - i + j] for j <= i, else 0.
void mask_decay(float* a, const float* rev, int blk, int rows) {
#if defined(__AVX512F__)
  // Rows in vectors of 16: keep (and scale) columns j <= i, zero the rest; no decay: only zero.
  const bool decay = rev[blk - 1] != 1.f;
  for (int i = 0; i < rows; ++i) {
    float* row = a + long(i) * rows;
    const float* f = rev + blk - i;
    for (int j = 0; j < rows; j += 16) {
      const int n = rows - j < 16 ? rows - j : 16, keep = i - j + 1;  // columns of this vector to keep
      const __mmask16 in = __mmask16((1u << n) - 1);
      const __mmask16 kept = keep <= 0 ? 0 : keep >= 16 ? in : __mmask16(((1u << keep) - 1) & in);
      __m512 x = _mm512_maskz_loadu_ps(kept, row + j);
      if (decay) x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(kept, f + j));
      _mm512_mask_storeu_ps(row + j, in, x);
    }
  }
#else
  for (int i = 0; i < rows; ++i) {
    float* row = a + long(i) * rows;
    const float* f = rev + blk - i;
    for (int j = 0; j <= i; ++j) row[j] *= f[j];
    for (int j = i + 1; j < rows; ++j) row[j] = 0.f;
  }
#endif
}

// dst (rows x n) = diag(scale) src, dense; src rows lds apart (n when not given).
void scale_rows(float* dst, const float* src, const float* scale, int rows, int n, long lds = -1) {
  if (lds < 0) lds = n;
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < n; ++i) dst[long(r) * n + i] = scale[r] * src[r * lds + i];
}

// dst[0, n) = src[0, n): inline, for the short rows (one head, d floats) that memcpy pays a call for.
inline void copy_row(float* dst, const float* src, int n) {
#if defined(__AVX512F__)
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
  }
#else
  std::memcpy(dst, src, sizeof(float) * n);
#endif
}

// One block (rows [0, rows)) of `heads` consecutive heads from h0, moved between a (B, N, H, width) tensor
// and packed buffers (heads, rows, width), for several tensors of one width at once (keys are dk wide,
// values dv). Packed operands matter: one head's rows are 256 B every 2 KB, which read in place by the
// products thrash L1. The causal kernels walk the blocks with all heads of their group, prefetching the
// whole next block (whole 2 KB rows, the pattern memory serves best) during the current one, and gather each
// head just before its products, so that its operands are in L1 for them (measured: 5-7% faster than
// gathering all heads of the block up front).
struct BlockIo {
  long token;  // b N + the block's first token
  int H, h0, rows, heads;

  // The offset of the block's first head in a tensor of this width.
  long at(int width) const { return (token * H + h0) * long(width); }
  BlockIo head(int j) const { return {token, H, h0 + j, rows, 1}; }

  void gather(int width, std::initializer_list<std::pair<float*, const float*>> parts) const {
    const long ld = long(H) * width, a = at(width);
    for (int r = 0; r < rows; ++r)
      for (auto [packed, x] : parts)
        for (int j = 0; j < heads; ++j)
          copy_row(packed + (long(j) * rows + r) * width, x + a + r * ld + long(j) * width, width);
  }

  // x = packed
  void scatter(int width, std::initializer_list<std::pair<float*, const float*>> parts) const {
    const long ld = long(H) * width, a = at(width);
    for (int r = 0; r < rows; ++r)
      for (auto [x, packed] : parts)
        for (int j = 0; j < heads; ++j)
          copy_row(x + a + r * ld + long(j) * width, packed + (long(j) * rows + r) * width, width);
  }
};

// Per-thread scratch of the causal kernels, carved from the workspace in parts of whole cache lines.
// The products are NN or TN (A transposed), the fast forms; K and V are transposed where they are the
// B operand.
struct Scratch {
  float *pw, *rev;              // (heads, blk + 1) decay powers of each head of the group
  float* state;                 // (heads, dk, dv) running S (forward) or dS (backward) of each head
  float *q, *k;                 // (heads, blk, dk) gathered rows: one head's in the main loops, every head's
  float *v, *o;                 // (heads, blk, dv) in the pieces' local passes; o holds dO in backward
  float *kt, *vt;               // (dk, blk), (dv, blk) one head's K, V transposed
  float *qs, *ks;               // (blk, dk) one head's rows scaled by the decay factors
  float *vs, *douts;            // (blk, dv)
  float *a, *da;                // (blk, blk) intra-block scores and their gradient
  float *qf, *kf;               // (blk) one head's block factors where a document start cuts them
  float* dstate_t;              // (dv, dk)
  // Expanded features (s.f > 0), one head's block in columns (transposed, so that the map's loops run along the
  // rows): q and k hold phi(Q_b)^T and phi(K_b)^T (dk, rows); qs and ks phi(Q_b), phi(K_b) (rows, dk) where a
  // product needs the rows (transposed back); state holds S^T and dS^T (dv, dk), so that no big product has the
  // value width as its output columns (Based's d + 1: the 65th column costs the small-product kernel a quarter of
  // the 64 before it).
  float *uq, *uk;               // (f, blk) the raw rows Q_b^T, K_b^T
  float* yt;                    // (dv, blk) the state's part of O_b (forward) or dV_b (backward), transposed
  float* t;                     // (blk, blk) backward: the raw dot products Q_b K_b^T
  float* dphi;                  // (dk, blk) backward: d phi(Q_b)^T or d phi(K_b)^T
  float* du;                    // (f, blk) backward: their gradient in the raw rows
  float *qp, *kp;               // (blk, f) backward: the raw rows, packed
};

Scratch carve(Carver& c, const LinearAttentionShape& s, int heads, bool backward) {
  const size_t blk = s.block, bk = blk * s.dk, bv = blk * s.dv, kv = size_t(s.dk) * s.dv, p = blk + 1;
  Scratch w{};
  w.pw = c.take(heads * p);
  w.rev = c.take(heads * p);
  w.state = c.take(heads * kv);
  for (float** part : {&w.q, &w.k}) *part = c.take(heads * bk);
  for (float** part : {&w.v, &w.o}) *part = c.take(heads * bv);
  for (float** part : {&w.kt, &w.qs, &w.ks}) *part = c.take(bk);
  w.a = c.take(blk * blk);
  w.qf = c.take(blk);
  w.kf = c.take(blk);
  const size_t bf = blk * std::max(s.f, 0);
  if (s.f > 0) w.uq = c.take(bf), w.uk = c.take(bf), w.yt = c.take(bv);
  if (backward) {
    for (float** part : {&w.vt, &w.vs, &w.douts}) *part = c.take(bv);
    w.da = c.take(blk * blk);
    w.dstate_t = c.take(kv);
    if (s.f > 0) {
      w.t = c.take(blk * blk);
      w.dphi = c.take(bk);
      w.du = c.take(bf);
      w.qp = c.take(bf);
      w.kp = c.take(bf);
    }
  }
  return w;
}

size_t scratch_stride(const LinearAttentionShape& s, int heads, bool backward) {
  Carver counter{nullptr};
  carve(counter, s, heads, backward);
  return counter.used;
}

Scratch thread_scratch(Workspace ws, const LinearAttentionShape& s, int heads, bool backward) {
  Carver c{ws.data + scratch_stride(s, heads, backward) * size_t(omp_get_thread_num())};
  return carve(c, s, heads, backward);
}

// ---- expanded features (s.f > 0), one head's block of `rows` rows in columns ----

// ut (f, rows) = the raw rows x (rows at stride ld) transposed; phit (dk, rows) = phi(X)^T.
void expand_block(float* phit, float* ut, const float* x, int rows, int ld, const LinearAttentionShape& s) {
  transpose(ut, rows, x, ld, rows, s.f);
  expanded_phi_forward_columns(phit, rows, ut, rows, rows, s.f, s.expansion);
}

// x (n, cols; rows ld apart) .*= c[col]: the decay factors of a block's rows, on a block in columns.
void scale_columns(float* x, const float* c, int n, int cols, int ld) {
  for (int i = 0; i < n; ++i) {
    float* row = x + long(i) * ld;
#pragma omp simd
    for (int r = 0; r < cols; ++r) row[r] *= c[r];
  }
}

// y (rows at stride ld) += x (rows, cols), dense.
void add_rows(float* y, int ld, const float* x, int rows, int cols) {
  for (int r = 0; r < rows; ++r) {
    float* yr = y + long(r) * ld;
    const float* xr = x + long(r) * cols;
#pragma omp simd
    for (int i = 0; i < cols; ++i) yr[i] += xr[i];
  }
}

// dx (rows at stride ld) += dut^T, dut (f, rows).
void add_columns(float* dx, int ld, const float* dut, int rows, int f) {
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < f; ++i) dx[long(r) * ld + i] += dut[long(i) * rows + r];
}

// The intra-block scores from the raw rows, never expanded (B^2 f work): the lower triangle (diagonal included)
// of a (rows, rows) = kernel(Q_b K_b^T) = phi(Q_b) phi(K_b)^T, for q the raw rows (stride ld) and ukt = K_b^T
// (f, rows); the upper triangle is left as it was (mask_decay clears it). t: null, or (rows, rows) to keep the
// raw dot products in (their lower triangle), for the backward.
void expanded_scores(float* a, float* t, const float* q, int ld, const float* ukt, int rows, const LinearAttentionShape& s,
                     PrefetchStream* pf) {
  float* dots = t ? t : a;
  gemm(false, false, rows, rows, s.f, 1.f, q, ld, ukt, rows, 0.f, dots, rows, pf, Skip::c_upper);
  for (int i = 0; i < rows; ++i) {
    float* row = a + long(i) * rows;
    if (t) std::copy(t + long(i) * rows, t + long(i) * rows + i + 1, row);
    expanded_kernel_of_dots(row, i + 1, s.f, s.expansion);
  }
}

// The gradient dut (f, rows) of the raw rows (columns ut) from that of phi^T (dphit (dk, rows)), added to the
// rows at x (stride ld).
void expanded_rows_backward(float* dx, int ld, float* dut, const float* dphit, const float* ut, int rows,
                            const LinearAttentionShape& s) {
  std::fill(dut, dut + long(s.f) * rows, 0.f);
  expanded_phi_backward_columns(dut, dphit, rows, ut, rows, rows, s.f, s.expansion);
  add_columns(dx, ld, dut, rows, s.f);
}

// A piece's local state, for the pieces across threads: the state after blocks [begin, end) of batch row b,
// heads h0.., from none (S = lambda^rows S + K_b^T diag(lambda^(rows-j)) V_b), into out (B, H, dk, dv).
void piece_state(float* out, const float* k, const float* v, const float* lambda, const uint8_t* starts,
                 const LinearAttentionShape& s, const Scratch& w, int b, int h0, int heads, int begin, int end) {
  const int N = s.N, dkey = s.dk, dval = s.dv, blk = s.block, qk = s.qk_width(), ldk = s.H * qk;
  const size_t kv = size_t(dkey) * dval, p = blk + 1;
  for (int j = 0; j < heads; ++j) {
    fill_powers(w.pw + j * p, w.rev + j * p, lambda ? lambda[h0 + j] : 1.0, blk);
    std::fill(w.state + j * kv, w.state + (j + 1) * kv, 0.f);
  }
  for (int blkno = begin; blkno < end; ++blkno) {
    const int rows = std::min(blk, N - blkno * blk);
    for (int j = 0; j < heads; ++j) {
      const float *pw = w.pw + j * p, *rev = w.rev + j * p;
      const BlockIo one{long(b) * N + long(blkno) * blk, s.H, h0 + j, rows, 1};
      one.gather(dval, {{w.v, v}});  // V is the B operand; K is read in place
      const Factors f = block_factors(pw, rev, blk, rows, block_starts(starts, s, b, blkno), w.qf, w.kf);
      if (s.f > 0) {  // S = l^rows S + phi(K_b)^T diag(l^(rows-j)) V_b, phi(K_b)^T in w.k
        expand_block(w.k, w.uk, k + one.at(qk), rows, ldk, s);
        if (!f.plain) scale_columns(w.k, f.k, dkey, rows, rows);
        gemm(false, false, dkey, dval, rows, 1.f, w.k, rows, w.v, dval, f.decay, w.state + j * kv, dval);
        continue;
      }
      const float* ks = k + one.at(qk);
      int ksld = ldk;
      if (!f.plain) scale_rows(w.ks, ks, f.k, rows, dkey, ldk), ks = w.ks, ksld = dkey;
      gemm(true, false, dkey, dval, rows, 1.f, ks, ksld, w.v, dval, f.decay, w.state + j * kv, dval);
    }
  }
  for (int j = 0; j < heads; ++j)
    std::memcpy(out + (size_t(b) * s.H + h0 + j) * kv, w.state + j * kv, sizeof(float) * kv);
}

size_t workspace_floats(const LinearAttentionShape& s, int threads, bool backward) {
  const Plan plan(s, threads);
  const size_t slots = plan.pieces > 1 ? (backward ? 2 : 1) * size_t(plan.pieces) * s.B * s.H * s.dk * s.dv : 0;
  return scratch_stride(s, plan.groups.max_heads, backward) * size_t(threads) + slots;
}

// The (pieces, B, H, dk, dv) state slots after the per-thread scratch.
float* state_slots(Workspace ws, const LinearAttentionShape& s, int threads, bool backward) {
  return ws.data + scratch_stride(s, Plan(s, threads).groups.max_heads, backward) * size_t(threads);
}

}  // namespace

size_t linear_attention_forward_workspace_floats(const LinearAttentionShape& s) {
  return workspace_floats(s, s.threads, false);
}

size_t linear_attention_backward_workspace_floats(const LinearAttentionShape& s) {
  return workspace_floats(s, s.threads, true);
}

void linear_attention_forward(float* o, float* state_out, const float* q, const float* k, const float* v,
                              const float* state_in, const float* lambda, const uint8_t* starts,
                              const LinearAttentionShape& s, Workspace ws) {
  const char* kernel = "linear_attention_forward";
  check_shape(kernel, s);
  LASP_CHECK(o && q && k && v, "{}: o, q, k and v must not be null", kernel);
  const int threads = s.threads;
  check_workspace(kernel, ws, workspace_floats(s, threads, false), s);

  const int N = s.N, H = s.H, dkey = s.dk, dval = s.dv, blk = s.block, nb = num_blocks(s);
  const int qk = s.qk_width(), ldk = H * qk, ldv = H * dval;  // q, k per head as passed; row strides of q, k and v, o
  const size_t kv = size_t(dkey) * dval, p = blk + 1;
  const Plan plan(s, threads);
  const HeadGroups& groups = plan.groups;

  // Blocks [begin, end) of batch row b, heads of group g: o, and the state after `end` into out (B, H, dk, dv)
  // when not null; `in` (B, H, dk, dv) is the state entering `begin`, or null for none.
  auto run = [&](int b, int g, int begin, int end, const float* in, float* out) {
    const int h0 = groups.begin(g, H), heads = groups.begin(g + 1, H) - h0;
    Scratch w = thread_scratch(ws, s, groups.max_heads, false);
    PrefetchStream pf;  // the next block, fetched during this one's products
    // Expanded: S is kept as S^T (dv x dk), so that the big products have dk or the block's rows as their
    // output columns, never dv (see Scratch).
    for (int j = 0; j < heads; ++j) {
      fill_powers(w.pw + j * p, w.rev + j * p, lambda ? lambda[h0 + j] : 1.0, blk);
      float* S = w.state + j * kv;
      if (in && s.f > 0) transpose(S, dkey, in + (size_t(b) * H + h0 + j) * kv, dval, dkey, dval);
      else if (in) std::memcpy(S, in + (size_t(b) * H + h0 + j) * kv, sizeof(float) * kv);
      else std::fill(S, S + kv, 0.f);
    }
    for (int blkno = begin; blkno < end; ++blkno) {
      const int rows = std::min(blk, N - blkno * blk);
      const BlockIo io{long(b) * N + long(blkno) * blk, H, h0, rows, heads};
      pf.clear();
      if (blkno + 1 < end) {
        const int next = std::min(blk, N - (blkno + 1) * blk);
        for (const float* x : {q, k}) pf.add(x + io.at(qk) + long(blk) * ldk, next, heads * qk, ldk);
        for (const float* x : {v, (const float*)o}) pf.add(x + io.at(dval) + long(blk) * ldv, next, heads * dval, ldv);
      }
      for (int j = 0; j < heads; ++j) {
        const float *pw = w.pw + j * p, *rev = w.rev + j * p;
        const BlockIo one = io.head(j);  // this head's rows, gathered into L1
        // V is a B operand and is packed; Q and K are read as A operands or transposed, from their rows.
        one.gather(dval, {{w.v, v}});
        const float *qb = q + one.at(qk), *kb = k + one.at(qk), *vb = w.v;
        float* ob = w.o;
        float* S = w.state + j * kv;  // the state entering this block
        const Factors f = block_factors(pw, rev, blk, rows, block_starts(starts, s, b, blkno), w.qf, w.kf);
        if (s.f > 0) {
          // Expanded, with phi(Q_b)^T, phi(K_b)^T (dk, rows) in w.q, w.k, the scores from the raw rows, and S^T:
          //   O_b = A V_b + (S^T diag(l^i) phi(Q_b)^T)^T;  S^T = l^rows S^T + V_b^T diag(l^(rows-j)) phi(K_b)
          expand_block(w.q, w.uq, qb, rows, ldk, s);
          expand_block(w.k, w.uk, kb, rows, ldk, s);
          expanded_scores(w.a, nullptr, qb, ldk, w.uk, rows, s, &pf);
          mask_decay(w.a, rev, blk, rows);
          if (f.starts) mask_documents(w.a, f.starts, rows);
          if (!f.plain) scale_columns(w.q, f.q, dkey, rows, rows), scale_columns(w.k, f.k, dkey, rows, rows);
          gemm(false, false, dval, rows, dkey, 1.f, S, dkey, w.q, rows, 0.f, w.yt, rows, &pf);
          transpose(ob, dval, w.yt, rows, dval, rows);
          gemm(false, false, rows, dval, rows, 1.f, w.a, rows, vb, dval, 1.f, ob, dval, &pf, Skip::a_upper);
          transpose(w.ks, dkey, w.k, rows, dkey, rows);  // phi(K_b), its rows scaled
          gemm(true, false, dval, dkey, rows, 1.f, vb, dval, w.ks, dkey, f.decay, S, dkey, &pf);
          one.scatter(dval, {{o, w.o}});
          continue;
        }
        transpose(w.kt, rows, kb, ldk, rows, dkey);
        // intra: O_b = ((Q_b K_b^T) .* psi) V_b
        gemm(false, false, rows, rows, dkey, 1.f, qb, ldk, w.kt, rows, 0.f, w.a, rows, &pf, Skip::c_upper);
        mask_decay(w.a, rev, blk, rows);
        if (f.starts) mask_documents(w.a, f.starts, rows);
        // inter, in the same pass: O_b += diag(lambda^i) Q_b S_b
        const float* qs = qb;
        int qsld = ldk;
        if (!f.plain) scale_rows(w.qs, qb, f.q, rows, dkey, ldk), qs = w.qs, qsld = dkey;
        gemm_sum(rows, dval, {false, rows, w.a, rows, vb, dval, Skip::a_upper}, {false, dkey, qs, qsld, S, dval}, 1.f, 0.f,
                 ob, dval, &pf);
        // S = lambda^rows S + K_b^T diag(lambda^(rows-j)) V_b
        if (!f.plain) {
          scale_rows(w.ks, kb, f.k, rows, dkey, ldk);
          gemm(true, false, dkey, dval, rows, 1.f, w.ks, dkey, vb, dval, f.decay, S, dval, &pf);
        } else {
          gemm(false, false, dkey, dval, rows, 1.f, w.kt, rows, vb, dval, 1.f, S, dval, &pf);
        }
        one.scatter(dval, {{o, w.o}});
      }
    }
    if (out)
      for (int j = 0; j < heads; ++j) {
        float* to = out + (size_t(b) * H + h0 + j) * kv;
        if (s.f > 0) transpose(to, dval, w.state + j * kv, dkey, dval, dkey);
        else std::memcpy(to, w.state + j * kv, sizeof(float) * kv);
      }
  };

  const int P = plan.pieces, items = s.B * groups.count;
  if (P == 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
    for (int item = 0; item < items; ++item)
      run(item / groups.count, item % groups.count, 0, nb, state_in, state_out);
    return;
  }
  float* slots = state_slots(ws, s, threads, false);  // (P, B, H, dk, dv)
  const size_t per_piece = size_t(s.B) * H * kv;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int item = 0; item < items * (P - 1); ++item) {  // local states of pieces 0..P-2 into slots 1..P-1
    const int piece = item / items, bg = item % items, g = bg % groups.count, h0 = groups.begin(g, H);
    piece_state(slots + size_t(piece + 1) * per_piece, k, v, lambda, starts, s, thread_scratch(ws, s, groups.max_heads, false),
                bg / groups.count, h0, groups.begin(g + 1, H) - h0, plan.first_block(piece, nb),
                plan.first_block(piece + 1, nb));
  }
  carry_states(slots, state_in, true, s, plan, lambda, starts);
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int item = 0; item < items * P; ++item) {
    const int piece = item / items, bg = item % items;
    run(bg / groups.count, bg % groups.count, plan.first_block(piece, nb), plan.first_block(piece + 1, nb),
        slots + size_t(piece) * per_piece, piece == P - 1 ? state_out : nullptr);
  }
}

void linear_attention_backward(float* dq, float* dk, float* dv, float* dstate_in, const float* dout,
                               const float* dstate_out, const float* q, const float* k, const float* v,
                               const float* state_in, const float* lambda, const uint8_t* starts,
                               const LinearAttentionShape& s, Workspace ws) {
  const char* kernel = "linear_attention_backward";
  check_shape(kernel, s);
  LASP_CHECK(dq && dk && dv && dout && q && k && v, "{}: dq, dk, dv, dout, q, k and v must not be null",
             kernel);
  const int threads = s.threads;
  check_workspace(kernel, ws, workspace_floats(s, threads, true), s);

  const int N = s.N, H = s.H, dkey = s.dk, dval = s.dv, blk = s.block, nb = num_blocks(s);
  const int qk = s.qk_width(), ldk = H * qk, ldv = H * dval;  // q, k per head as passed; row strides
  const size_t kv = size_t(dkey) * dval, p = blk + 1;
  const bool expanded = s.f > 0;
  const Plan plan(s, threads);
  const HeadGroups& groups = plan.groups;
  auto block_io = [&](int b, int h0, int heads, int blkno) {
    return BlockIo{long(b) * N + long(blkno) * blk, H, h0, std::min(blk, N - blkno * blk), heads};
  };

  // A piece's local state gradient: the gradient of the state entering block `begin` from blocks
  // [begin, end) alone (dS from zero, walked backwards: dS = l^rows dS + Q_b^T diag(l^i) dO_b), into out.
  auto local_dstate = [&](int b, int g, int begin, int end, float* out) {
    const int h0 = groups.begin(g, H), heads = groups.begin(g + 1, H) - h0;
    Scratch w = thread_scratch(ws, s, groups.max_heads, true);
    for (int j = 0; j < heads; ++j) {
      fill_powers(w.pw + j * p, w.rev + j * p, lambda ? lambda[h0 + j] : 1.0, blk);
      std::fill(w.state + j * kv, w.state + (j + 1) * kv, 0.f);
    }
    for (int blkno = end - 1; blkno >= begin; --blkno) {
      const BlockIo io = block_io(b, h0, heads, blkno);
      if (!expanded) io.gather(dkey, {{w.q, q}});
      io.gather(dval, {{w.o, dout}});
      for (int j = 0; j < heads; ++j) {
        const float *pw = w.pw + j * p, *rev = w.rev + j * p;
        const Factors f = block_factors(pw, rev, blk, io.rows, block_starts(starts, s, b, blkno), w.qf, w.kf);
        const float* douts = w.o + long(j) * io.rows * dval;
        if (!f.plain) scale_rows(w.douts, douts, f.q, io.rows, dval), douts = w.douts;
        if (expanded) {  // phi(Q_b)^T (dk, rows) in w.q
          expand_block(w.q, w.uq, q + io.head(j).at(qk), io.rows, ldk, s);
          gemm(false, false, dkey, dval, io.rows, 1.f, w.q, io.rows, douts, dval, f.decay, w.state + j * kv, dval);
          continue;
        }
        gemm(true, false, dkey, dval, io.rows, 1.f, w.q + long(j) * io.rows * dkey, dkey, douts, dval, f.decay,
             w.state + j * kv, dval);
      }
    }
    for (int j = 0; j < heads; ++j)
      std::memcpy(out + (size_t(b) * H + h0 + j) * kv, w.state + j * kv, sizeof(float) * kv);
  };

  // Blocks [begin, end) of batch row b, heads of group g, with `in` the state entering `begin` and `dout_state`
  // the gradient of the state leaving `end - 1` ((B, H, dk, dv) or null for none); the gradient of `in` is
  // added to `din` when not null.
  auto run = [&](int b, int g, int begin, int end, const float* in, const float* dout_state, float* din) {
    const int h0 = groups.begin(g, H), heads = groups.begin(g + 1, H) - h0;
    Scratch w = thread_scratch(ws, s, groups.max_heads, true);
    PrefetchStream pf;  // the next block, fetched during this one's products
    // Queues block `blkno` of the tensors (keys dk wide, values dv) for the products.
    auto prefetch_block = [&](int blkno, std::initializer_list<const float*> keys,
                              std::initializer_list<const float*> values) {
      pf.clear();
      if (blkno < begin || blkno >= end) return;
      const BlockIo io = block_io(b, h0, heads, blkno);
      for (const float* x : keys) pf.add(x + io.at(qk), io.rows, heads * qk, ldk);
      for (const float* x : values) pf.add(x + io.at(dval), io.rows, heads * dval, ldv);
    };

    // Pass 1, forward order, for dQ; S (kept as S^T, dv x dk) is the state entering the current block:
    //   dQ_b += (dA_b K_b) + diag(l^i) dO_b S_b^T, dA = (dO V^T) .* psi;  S^T = l^rows S^T + V_b^T diag(l^(rows-j)) K_b
    // The gradients accumulate straight into the (N, H, width) tensors: each is read and written once per pass.
    // Expanded: pass 1 gives only dQ's inter part, d phi(Q_b)^T = S_b (dO_b)^T diag(l^i), brought back to the
    // raw rows; the intra part of dQ comes with dK's in pass 2.
    for (int j = 0; j < heads; ++j) {
      fill_powers(w.pw + j * p, w.rev + j * p, lambda ? lambda[h0 + j] : 1.0, blk);
      float* S = w.state + j * kv;
      if (in) transpose(S, dkey, in + (size_t(b) * H + h0 + j) * kv, dval, dkey, dval);
      else std::fill(S, S + kv, 0.f);
    }
    for (int blkno = begin; blkno < end; ++blkno) {
      const BlockIo io = block_io(b, h0, heads, blkno);
      const int rows = io.rows;
      prefetch_block(blkno + 1, {k, dq}, {v, dout});
      for (int j = 0; j < heads; ++j) {
        const float *pw = w.pw + j * p, *rev = w.rev + j * p;
        const BlockIo one = io.head(j);  // this head's rows, gathered into L1
        const float *vb = v + one.at(dval), *dob = dout + one.at(dval);
        float *dqb = dq + one.at(qk), *S = w.state + j * kv;
        const Factors f = block_factors(pw, rev, blk, rows, block_starts(starts, s, b, blkno), w.qf, w.kf);
        if (expanded) {
          transpose(w.vt, rows, dob, ldv, rows, dval);  // dO_b^T
          gemm(true, false, dkey, rows, dval, 1.f, S, dkey, w.vt, rows, 0.f, w.dphi, rows, &pf);
          if (!f.plain) scale_columns(w.dphi, f.q, dkey, rows, rows);
          transpose(w.uq, rows, q + one.at(qk), ldk, rows, s.f);
          expanded_rows_backward(dqb, ldk, w.du, w.dphi, w.uq, rows, s);
          if (blkno + 1 == end) continue;
          // S^T = l^rows S^T + V_b^T diag(l^(rows-j)) phi(K_b)
          expand_block(w.k, w.uk, k + one.at(qk), rows, ldk, s);
          if (!f.plain) scale_columns(w.k, f.k, dkey, rows, rows);
          transpose(w.ks, dkey, w.k, rows, dkey, rows);
          gemm(true, false, dval, dkey, rows, 1.f, vb, ldv, w.ks, dkey, f.decay, S, dkey, &pf);
          continue;
        }
        // dQ += diag(l^i) dO S_b^T (its intra part dA K comes with dK's in pass 2, where dA is computed anyway)
        const float* douts = dob;
        int dold = ldv;
        if (!f.plain) scale_rows(w.douts, dob, f.q, rows, dval, ldv), douts = w.douts, dold = dval;
        gemm(false, false, rows, dkey, dval, 1.f, douts, dold, S, dkey, 1.f, dqb, ldk, &pf);
        if (blkno + 1 == end) continue;
        // K is a B operand and is packed; V is read transposed, from its rows.
        one.gather(dkey, {{w.k, k}});
        const float* kb = w.k;
        const float* ks = kb;
        if (!f.plain) scale_rows(w.ks, kb, f.k, rows, dkey), ks = w.ks;
        gemm(true, false, dval, dkey, rows, 1.f, vb, ldv, ks, dkey, f.decay, S, dkey,
             &pf);  // S^T = l^rows S^T + V^T diag(l^(rows-j)) K
      }
    }

    // Pass 2, reverse order, for dK, dV and dQ's intra part; dS (dk x dv) is the gradient of the state leaving the
    // current block:
    //   dK_b += dA^T Q + diag(l^(rows-j)) V dS^T,  dV_b += A^T dO + diag(l^(rows-j)) K dS,  dQ_b += dA K,
    //   A = (Q K^T) .* psi;  dS = l^rows dS + Q_b^T diag(l^i) dO_b
    // Expanded: dS is kept as dS^T (dv x dk), as the forward keeps S.
    for (int j = 0; j < heads; ++j) {
      float* dS = w.state + j * kv;
      const float* given = dout_state ? dout_state + (size_t(b) * H + h0 + j) * kv : nullptr;
      if (given && expanded) transpose(dS, dkey, given, dval, dkey, dval);
      else if (given) std::memcpy(dS, given, sizeof(float) * kv);
      else std::fill(dS, dS + kv, 0.f);
    }
    for (int blkno = end - 1; blkno >= begin; --blkno) {
      const BlockIo io = block_io(b, h0, heads, blkno);
      const int rows = io.rows;
      prefetch_block(blkno - 1, {q, k, dk, dq}, {v, dout, dv});
      for (int j = 0; j < heads; ++j) {
        const float *pw = w.pw + j * p, *rev = w.rev + j * p;
        const BlockIo one = io.head(j);  // this head's rows, gathered into L1
        if (expanded) {
          one.gather(dval, {{w.o, dout}});
          const float *qr = q + one.at(qk), *kr = k + one.at(qk), *dob = w.o, *vb = v + one.at(dval);
          float *dkb = dk + one.at(qk), *dvb = dv + one.at(dval), *dS = w.state + j * kv;
          const Factors f = block_factors(pw, rev, blk, rows, block_starts(starts, s, b, blkno), w.qf, w.kf);
          expand_block(w.q, w.uq, qr, rows, ldk, s);  // phi(Q_b)^T, phi(K_b)^T (dk, rows)
          expand_block(w.k, w.uk, kr, rows, ldk, s);
          transpose(w.vt, rows, vb, ldv, rows, dval);
          expanded_scores(w.a, w.t, qr, ldk, w.uk, rows, s, &pf);  // A, and the raw dots T in w.t
          gemm(false, false, rows, rows, dval, 1.f, dob, dval, w.vt, rows, 0.f, w.da, rows, &pf, Skip::c_upper);
          mask_decay(w.a, rev, blk, rows);
          mask_decay(w.da, rev, blk, rows);
          if (f.starts) mask_documents(w.a, f.starts, rows), mask_documents(w.da, f.starts, rows);
          // The intra part of dQ and dK through the kernel of the raw rows: W = dA .* kernel'(T) (lower
          // triangular, as dA), dQ += W K_b, dK += W^T Q_b, with the raw rows packed.
          for (int i = 0; i < rows; ++i)
            expanded_kernel_of_dots_backward(w.da + long(i) * rows, w.da + long(i) * rows, w.t + long(i) * rows, i + 1,
                                             s.f, s.expansion);
          one.gather(qk, {{w.qp, q}, {w.kp, k}});
          gemm(false, false, rows, s.f, rows, 1.f, w.da, rows, w.kp, s.f, 1.f, dq + one.at(qk), ldk, &pf, Skip::a_upper);
          gemm(true, false, rows, s.f, rows, 1.f, w.da, rows, w.qp, s.f, 1.f, dkb, ldk, &pf, Skip::a_lower);
          if (!f.plain) scale_columns(w.q, f.q, dkey, rows, rows), scale_columns(w.k, f.k, dkey, rows, rows);
          // dV_b += A^T dO_b + (dS^T phi(K_b)^T diag(l^(rows-j)))^T
          gemm(false, false, dval, rows, dkey, 1.f, dS, dkey, w.k, rows, 0.f, w.yt, rows, &pf);
          transpose(w.douts, dval, w.yt, rows, dval, rows);
          gemm(true, false, rows, dval, rows, 1.f, w.a, rows, dob, dval, 1.f, w.douts, dval, &pf, Skip::a_lower);
          add_rows(dvb, ldv, w.douts, rows, dval);
          // d phi(K_b)^T = dS V_b^T diag(l^(rows-j)), brought back to the raw rows
          gemm(true, false, dkey, rows, dval, 1.f, dS, dkey, w.vt, rows, 0.f, w.dphi, rows, &pf);
          if (!f.plain) scale_columns(w.dphi, f.k, dkey, rows, rows);
          expanded_rows_backward(dkb, ldk, w.du, w.dphi, w.uk, rows, s);
          // dS^T = l^rows dS^T + dO_b^T diag(l^i) phi(Q_b)
          transpose(w.qs, dkey, w.q, rows, dkey, rows);
          gemm(true, false, dval, dkey, rows, 1.f, dob, dval, w.qs, dkey, f.decay, dS, dkey, &pf);
          continue;
        }
        // Q, K and dO are B operands somewhere below and are packed; V is only read transposed or as an A operand
        // (broadcast rows), which strided rows serve as well.
        one.gather(dkey, {{w.q, q}, {w.k, k}});
        one.gather(dval, {{w.o, dout}});
        const float *qb = w.q, *dob = w.o, *kb = w.k, *vb = v + one.at(dval);
        float *dkb = dk + one.at(qk), *dvb = dv + one.at(dval), *dS = w.state + j * kv;
        const Factors f = block_factors(pw, rev, blk, rows, block_starts(starts, s, b, blkno), w.qf, w.kf);
        transpose(w.kt, rows, kb, dkey, rows, dkey);
        transpose(w.vt, rows, vb, ldv, rows, dval);
        const float *ks = kb, *vs = vb, *douts = dob;
        int ksld = dkey, vsld = ldv;  // row strides of ks and vs
        if (!f.plain) {
          scale_rows(w.ks, kb, f.k, rows, dkey), ks = w.ks;  // lambda^(rows-j)
          scale_rows(w.vs, vb, f.k, rows, dval, ldv), vs = w.vs, vsld = dval;
          scale_rows(w.douts, dob, f.q, rows, dval), douts = w.douts;
        }
        // (A and dA are lower triangular: the products skip the zero halves.)
        gemm(false, false, rows, rows, dkey, 1.f, qb, dkey, w.kt, rows, 0.f, w.a, rows, &pf, Skip::c_upper);
        mask_decay(w.a, rev, blk, rows);
        gemm(false, false, rows, rows, dval, 1.f, dob, dval, w.vt, rows, 0.f, w.da, rows, &pf, Skip::c_upper);
        mask_decay(w.da, rev, blk, rows);
        if (f.starts) mask_documents(w.a, f.starts, rows), mask_documents(w.da, f.starts, rows);
        transpose(w.dstate_t, dkey, dS, dval, dkey, dval);
        gemm_sum(rows, dkey, {true, rows, w.da, rows, qb, dkey, Skip::a_lower}, {false, dval, vs, vsld, w.dstate_t, dkey},
                 1.f, 1.f, dkb, ldk, &pf);  // dK += dA^T Q + diag(l^(rows-j)) V dS^T
        gemm_sum(rows, dval, {true, rows, w.a, rows, dob, dval, Skip::a_lower}, {false, dkey, ks, ksld, dS, dval}, 1.f,
                 1.f, dvb, ldv, &pf);  // dV += A^T dO + diag(l^(rows-j)) K dS
        gemm(false, false, rows, dkey, rows, 1.f, w.da, rows, w.k, dkey, 1.f, dq + one.at(qk), ldk, &pf,
             Skip::a_upper);  // dQ += dA K
        gemm(true, false, dkey, dval, rows, 1.f, qb, dkey, douts, dval, f.decay, dS, dval,
             &pf);  // dS = l^rows dS + Q^T diag(l^i) dO
      }
    }
    if (din)
      for (int j = 0; j < heads; ++j) {
        float* out = din + (size_t(b) * H + h0 + j) * kv;
        const float* dS = w.state + j * kv;
        if (expanded) transpose(w.dstate_t, dval, dS, dkey, dval, dkey), dS = w.dstate_t;  // dS^T -> dS
        for (size_t i = 0; i < kv; ++i) out[i] += dS[i];
      }
  };

  const int P = plan.pieces, items = s.B * groups.count;
  if (P == 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
    for (int item = 0; item < items; ++item)
      run(item / groups.count, item % groups.count, 0, nb, state_in, dstate_out, dstate_in);
    return;
  }
  // Slots (P, B, H, dk, dv): the states entering each piece, then the gradients of the states leaving each.
  const size_t per_piece = size_t(s.B) * H * kv;
  float* const states = state_slots(ws, s, threads, true);
  float* const dstates = states + size_t(P) * per_piece;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int item = 0; item < items * (P - 1); ++item) {
    const int piece = item / items, bg = item % items, b = bg / groups.count, g = bg % groups.count;
    const int begin = plan.first_block(piece, nb), end = plan.first_block(piece + 1, nb);
    const int h0 = groups.begin(g, H), heads = groups.begin(g + 1, H) - h0;
    piece_state(states + size_t(piece + 1) * per_piece, k, v, lambda, starts, s,  // piece's local state
                thread_scratch(ws, s, groups.max_heads, true), b, h0, heads, begin, end);
    const int later = piece + 1;                                                  // and piece+1's local gradient
    local_dstate(b, g, plan.first_block(later, nb), plan.first_block(later + 1, nb), dstates + size_t(piece) * per_piece);
  }
  carry_states(states, state_in, true, s, plan, lambda, starts);
  carry_states(dstates, dstate_out, false, s, plan, lambda, starts);
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int item = 0; item < items * P; ++item) {
    const int piece = item / items, bg = item % items;
    run(bg / groups.count, bg % groups.count, plan.first_block(piece, nb), plan.first_block(piece + 1, nb),
        states + size_t(piece) * per_piece, dstates + size_t(piece) * per_piece, piece == 0 ? dstate_in : nullptr);
  }
}

namespace {

// A span walks its rows in runs of kSpanRows, each scaled by its decay factors in the thread's buffer.
constexpr int kSpanRows = 256;

// Per thread: the factors (kSpanRows), rows scaled by them (kSpanRows, max(dk, dv)), and with expanded features a
// run in columns as the kernel takes its blocks: the raw rows and their gradient (f, kSpanRows each), phi^T and
// its gradient (dk, kSpanRows each).
size_t span_thread_floats(const LinearAttentionShape& s) {
  return kSpanRows * size_t(1 + std::max(s.dk, s.dv) + (s.f > 0 ? 2 * (s.dk + s.f) : 0));
}

// A thread's span buffers.
struct SpanScratch {
  float *f, *tmp;     // factors, scaled rows
  float *ut, *dut;    // expanded: the run's raw rows transposed (f, m), their gradient
  float *phi, *dphi;  // expanded: phi^T (dk, m), its gradient
};

// The rows of a span of n tokens that a document start leaves to each side: the queries before its first start
// reach the state entering it, the keys from its last start on the state it passes on.
struct SpanCut {
  long first, last;  // n and 0 without a start
};
SpanCut span_cut(const uint8_t* starts, long n) {
  SpanCut c{n, 0};
  for (long t = 0; starts && t < n; ++t)
    if (starts[t]) c.last = t, c.first = std::min(c.first, t);
  return c;
}

// f[r] = scale lambda^e for rows r of the run [r0, r0 + rows): e = r0 + r (head: queries) or n - r0 - r (tail:
// keys); false where every factor is 1 (the rows are then read as they are).
bool span_factors(float* f, double lambda, long n, long r0, int rows, bool tail, float scale) {
  if (lambda == 1.0 && scale == 1.f) return false;
  decay_powers(f, lambda, rows - 1, tail ? n - r0 - (rows - 1) : r0);
  if (tail) std::reverse(f, f + rows);
  for (int r = 0; r < rows; ++r) f[r] *= scale;
  return true;
}

// f(head, its thread's SpanScratch) for every head, in parallel; `kernel` names the caller in errors.
template <class F>
void for_each_span_head(const char* kernel, const LinearAttentionShape& s, Workspace ws, F f) {
  check_shape(kernel, s);
  LASP_CHECK(s.B == 1, "{}: a span is one batch row, got B={}", kernel, s.B);
  check_workspace(kernel, ws, linear_attention_span_workspace_floats(s), s);
  const size_t per = span_thread_floats(s), wide = kSpanRows * size_t(std::max(s.dk, s.dv));
  const size_t raw = kSpanRows * size_t(std::max(s.f, 0)), feat = kSpanRows * size_t(s.dk);
#pragma omp parallel for schedule(static) num_threads(std::min(s.threads, s.H))
  for (int h = 0; h < s.H; ++h) {
    float* w = ws.data + per * size_t(omp_get_thread_num());
    float* ut = w + kSpanRows + wide;
    f(h, SpanScratch{w, w + kSpanRows, ut, ut + raw, ut + 2 * raw, ut + 2 * raw + feat});
  }
}

// Expanded: phi^T (dk, m) of run [r0, r0 + m) of head h of q or k (rows ld apart) into w.phi, its raw rows
// transposed into w.ut; the columns scaled by the factors f when `decays`.
void span_expand(SpanScratch w, const float* x, long r0, int m, int h, long ld, bool decays, const LinearAttentionShape& s) {
  transpose(w.ut, m, x + r0 * ld + long(h) * s.f, int(ld), m, s.f);
  expanded_phi_forward_columns(w.phi, m, w.ut, m, m, s.f, s.expansion);
  if (decays) scale_columns(w.phi, w.f, s.dk, m, m);
}

// Expanded: the raw rows' gradient (at dx, rows ld apart) += that of phi^T (w.dphi (dk, m)), columns scaled by the
// factors when `decays`; w.ut holds the raw rows.
void span_expand_backward(SpanScratch w, float* dx, long r0, int m, int h, long ld, bool decays,
                          const LinearAttentionShape& s) {
  if (decays) scale_columns(w.dphi, w.f, s.dk, m, m);
  std::fill(w.dut, w.dut + long(s.f) * m, 0.f);
  expanded_phi_backward_columns(w.dut, w.dphi, m, w.ut, m, m, s.f, s.expansion);
  add_columns(dx + r0 * ld + long(h) * s.f, int(ld), w.dut, m, s.f);
}

// Runs of at most kSpanRows rows over [begin, end): g(first row, rows).
template <class G>
void for_each_run(long begin, long end, G g) {
  for (long r0 = begin; r0 < end; r0 += kSpanRows) g(r0, int(std::min<long>(kSpanRows, end - r0)));
}

}  // namespace

size_t linear_attention_span_workspace_floats(const LinearAttentionShape& s) {
  return span_thread_floats(s) * size_t(std::min(s.threads, s.H));
}

void linear_attention_span_state(float* M, const float* k, const float* v, const float* lambda, const uint8_t* starts,
                                 SpanRows rows, const LinearAttentionShape& s, Workspace ws) {
  const int dk = s.dk, dv = s.dv;
  const long n = s.N, last = span_cut(starts, n).last;
  for_each_span_head("linear_attention_span_state", s, ws, [&](int h, SpanScratch w) {
    float* Mh = M + size_t(h) * dk * dv;
    std::fill(Mh, Mh + size_t(dk) * dv, 0.f);
    for_each_run(last, n, [&](long r0, int m) {  // M += K^T diag(lambda^(n-j)) V   (K: phi(K) when expanded)
      const bool decays = span_factors(w.f, lambda ? lambda[h] : 1.0, n, r0, m, true, 1.f);
      const float* vr = v + r0 * rows.ldv + long(h) * dv;
      if (s.f > 0) {
        span_expand(w, k, r0, m, h, rows.ldk, decays, s);
        gemm(false, false, dk, dv, m, 1.f, w.phi, m, vr, int(rows.ldv), 1.f, Mh, dv);
        return;
      }
      const float* a = k + r0 * rows.ldk + long(h) * dk;
      int lda = int(rows.ldk);
      if (decays) scale_rows(w.tmp, a, w.f, m, dk, lda), a = w.tmp, lda = dk;
      gemm(true, false, dk, dv, m, 1.f, a, lda, vr, int(rows.ldv), 1.f, Mh, dv);
    });
  });
}

void linear_attention_span_apply(float* o, const float* q, const float* P, const float* lambda, const uint8_t* starts,
                                 SpanRows rows, const LinearAttentionShape& s, Workspace ws) {
  const int dk = s.dk, dv = s.dv;
  const long n = s.N, first = span_cut(starts, n).first;
  for_each_span_head("linear_attention_span_apply", s, ws, [&](int h, SpanScratch w) {
    const float* Ph = P + size_t(h) * dk * dv;
    for_each_run(0, first, [&](long r0, int m) {  // O += diag(lambda^i) Q P   (Q: phi(Q) when expanded)
      const bool decays = span_factors(w.f, lambda ? lambda[h] : 1.0, n, r0, m, false, 1.f);
      float* orow = o + r0 * rows.ldv + long(h) * dv;
      if (s.f > 0) {
        span_expand(w, q, r0, m, h, rows.ldk, decays, s);
        gemm(true, false, m, dv, dk, 1.f, w.phi, m, Ph, dv, 1.f, orow, int(rows.ldv));
        return;
      }
      const float* a = q + r0 * rows.ldk + long(h) * dk;
      int lda = int(rows.ldk);
      if (decays) scale_rows(w.tmp, a, w.f, m, dk, lda), a = w.tmp, lda = dk;
      gemm(false, false, m, dv, dk, 1.f, a, lda, Ph, dv, 1.f, orow, int(rows.ldv));
    });
  });
}

void linear_attention_span_apply_backward(float* dq, float* dP, const float* dout, const float* q, const float* P,
                                          const float* lambda, const uint8_t* starts, SpanRows rows,
                                          const LinearAttentionShape& s, Workspace ws) {
  const int dk = s.dk, dv = s.dv;
  const long n = s.N, first = span_cut(starts, n).first;
  LASP_CHECK(!dq || P, "linear_attention_span_apply_backward: dq needs the state P");
  for_each_span_head("linear_attention_span_apply_backward", s, ws, [&](int h, SpanScratch w) {
    const size_t at = size_t(h) * dk * dv;
    if (dP) std::fill(dP + at, dP + at + size_t(dk) * dv, 0.f);
    for_each_run(0, first, [&](long r0, int m) {
      const bool decays = span_factors(w.f, lambda ? lambda[h] : 1.0, n, r0, m, false, 1.f);
      const float* dor = dout + r0 * rows.ldv + long(h) * dv;
      if (s.f > 0) {
        span_expand(w, q, r0, m, h, rows.ldk, decays, s);  // phi(Q)^T diag(lambda^i)
        if (dP) gemm(false, false, dk, dv, m, 1.f, w.phi, m, dor, int(rows.ldv), 1.f, dP + at, dv);
        if (dq) {  // d phi(Q)^T = P dO^T diag(lambda^i), then to the raw rows
          gemm(false, true, dk, m, dv, 1.f, P + at, dv, dor, int(rows.ldv), 0.f, w.dphi, m);
          span_expand_backward(w, dq, r0, m, h, rows.ldk, decays, s);
        }
        return;
      }
      const float* qr = q + r0 * rows.ldk + long(h) * dk;
      if (dq) {  // dQ += diag(lambda^i) dO P^T
        const float* a = dor;
        int lda = int(rows.ldv);
        if (decays) scale_rows(w.tmp, dor, w.f, m, dv, rows.ldv), a = w.tmp, lda = dv;
        gemm(false, true, m, dk, dv, 1.f, a, lda, P + at, dv, 1.f, dq + r0 * rows.ldk + long(h) * dk, int(rows.ldk));
      }
      if (dP) {  // dP += Q^T diag(lambda^i) dO
        const float* a = qr;
        int lda = int(rows.ldk);
        if (decays) scale_rows(w.tmp, qr, w.f, m, dk, rows.ldk), a = w.tmp, lda = dk;
        gemm(true, false, dk, dv, m, 1.f, a, lda, dor, int(rows.ldv), 1.f, dP + at, dv);
      }
    });
  });
}

void linear_attention_span_state_backward(float* dk, float* dv, const float* G, const float* k, const float* v,
                                          const float* lambda, const uint8_t* starts, const float* scale, SpanRows rows,
                                          const LinearAttentionShape& s, Workspace ws) {
  const int kw = s.dk, vw = s.dv;
  const long n = s.N, last = span_cut(starts, n).last;
  for_each_span_head("linear_attention_span_state_backward", s, ws, [&](int h, SpanScratch w) {
    const float* Gh = G + size_t(h) * kw * vw;
    for_each_run(last, n, [&](long r0, int m) {
      const bool decays = span_factors(w.f, lambda ? lambda[h] : 1.0, n, r0, m, true, scale ? scale[h] : 1.f);
      const float* vr = v + r0 * rows.ldv + long(h) * vw;
      float* dvr = dv + r0 * rows.ldv + long(h) * vw;
      if (s.f > 0) {
        span_expand(w, k, r0, m, h, rows.ldk, decays, s);  // phi(K)^T diag(scale lambda^(n-j))
        gemm(true, false, m, vw, kw, 1.f, w.phi, m, Gh, vw, 1.f, dvr, int(rows.ldv));  // dV += diag(..) phi(K) G
        // d phi(K)^T = G V^T diag(scale lambda^(n-j)), then to the raw rows
        gemm(false, true, kw, m, vw, 1.f, Gh, vw, vr, int(rows.ldv), 0.f, w.dphi, m);
        span_expand_backward(w, dk, r0, m, h, rows.ldk, decays, s);
        return;
      }
      const float* kr = k + r0 * rows.ldk + long(h) * kw;
      const float* a = vr;  // dK += diag(scale lambda^(n-j)) V G^T
      int lda = int(rows.ldv);
      if (decays) scale_rows(w.tmp, vr, w.f, m, vw, rows.ldv), a = w.tmp, lda = vw;
      gemm(false, true, m, kw, vw, 1.f, a, lda, Gh, vw, 1.f, dk + r0 * rows.ldk + long(h) * kw, int(rows.ldk));
      a = kr, lda = int(rows.ldk);  // dV += diag(scale lambda^(n-j)) K G
      if (decays) scale_rows(w.tmp, kr, w.f, m, kw, rows.ldk), a = w.tmp, lda = kw;
      gemm(false, false, m, vw, kw, 1.f, a, lda, Gh, vw, 1.f, dvr, int(rows.ldv));
    });
  });
}

size_t linear_attention_bidirectional_workspace_floats(const LinearAttentionShape& s) {
  return 2 * size_t(s.dk) * s.dv * size_t(s.threads);
}

void linear_attention_bidirectional_forward(float* o, float* state_out, const float* q, const float* k,
                                            const float* v, const float* state_in,
                                            const LinearAttentionShape& s, Workspace ws) {
  const char* kernel = "linear_attention_bidirectional_forward";
  check_shape(kernel, s);
  check_not_expanded(kernel, s);
  LASP_CHECK(o && q && k && v, "{}: o, q, k and v must not be null", kernel);
  check_workspace(kernel, ws, linear_attention_bidirectional_workspace_floats(s), s);
  const int N = s.N, H = s.H, dkey = s.dk, dval = s.dv, ldk = H * dkey, ldv = H * dval;
  const size_t kv = size_t(dkey) * dval;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int bh = 0; bh < s.B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const long row = long(b) * N * H + h, keys = row * dkey, values = row * dval;
    float* M = ws.data + 2 * kv * size_t(omp_get_thread_num());
    gemm(true, false, dkey, dval, N, 1.f, k + keys, ldk, v + values, ldv, 0.f, M, dval);  // M = K^T V
    if (state_out) std::memcpy(state_out + size_t(bh) * kv, M, sizeof(float) * kv);
    if (state_in)
      for (size_t i = 0; i < kv; ++i) M[i] += state_in[size_t(bh) * kv + i];
    gemm(false, false, N, dval, dkey, 1.f, q + keys, ldk, M, dval, 0.f, o + values, ldv);  // O = Q (M + P)
  }
}

void linear_attention_bidirectional_backward(float* dq, float* dk, float* dv, float* dstate_in,
                                             const float* dout, const float* dstate_out, const float* q,
                                             const float* k, const float* v, const float* state_in,
                                             const LinearAttentionShape& s, Workspace ws) {
  const char* kernel = "linear_attention_bidirectional_backward";
  check_shape(kernel, s);
  check_not_expanded(kernel, s);
  LASP_CHECK(dq && dk && dv && dout && q && k && v, "{}: dq, dk, dv, dout, q, k and v must not be null",
             kernel);
  check_workspace(kernel, ws, linear_attention_bidirectional_workspace_floats(s), s);
  const int N = s.N, H = s.H, dkey = s.dk, dval = s.dv, ldk = H * dkey, ldv = H * dval;
  const size_t kv = size_t(dkey) * dval;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s.threads)
  for (int bh = 0; bh < s.B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const long row = long(b) * N * H + h, keys = row * dkey, values = row * dval;
    float* M = ws.data + 2 * kv * size_t(omp_get_thread_num());
    float* dM = M + kv;
    gemm(true, false, dkey, dval, N, 1.f, k + keys, ldk, v + values, ldv, 0.f, M, dval);
    if (state_in)
      for (size_t i = 0; i < kv; ++i) M[i] += state_in[size_t(bh) * kv + i];
    gemm(false, true, N, dkey, dval, 1.f, dout + values, ldv, M, dval, 1.f, dq + keys, ldk);  // dQ += dO (M + P)^T
    gemm(true, false, dkey, dval, N, 1.f, q + keys, ldk, dout + values, ldv, 0.f, dM, dval);  // Q^T dO
    if (dstate_in)
      for (size_t i = 0; i < kv; ++i) dstate_in[size_t(bh) * kv + i] += dM[i];
    if (dstate_out)
      for (size_t i = 0; i < kv; ++i) dM[i] += dstate_out[size_t(bh) * kv + i];
    gemm(false, true, N, dkey, dval, 1.f, v + values, ldv, dM, dval, 1.f, dk + keys, ldk);   // dK += V dM^T
    gemm(false, false, N, dval, dkey, 1.f, k + keys, ldk, dM, dval, 1.f, dv + values, ldv);  // dV += K dM
  }
}

}  // namespace lasp
