#include "sp/allgather.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/gemm.h"

namespace lasp {

namespace {

constexpr int kTile = 64;  // keys per score tile

// a (rows x T) .*= Psi: lambda^(q_pos[i] - k_pos[j]) where the key is not after the query, else 0.
void mask_tile(float* a, int rows, int T, const int* q_pos, const int* k_pos, const std::vector<float>& pw) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < T; ++j) {
      const int delta = q_pos[i] - k_pos[j];
      a[long(i) * T + j] *= delta >= 0 ? pw[delta] : 0.f;
    }
}

// lambda^k for k = 0..n (0 below 1e-30).
std::vector<float> powers(double lambda, int n) {
  std::vector<float> pw(size_t(n) + 1);
  double p = 1.0;
  for (int k = 0; k <= n; ++k, p *= lambda) pw[k] = p < 1e-30 ? 0.f : float(p);
  return pw;
}

}  // namespace

AllGatherAttention::AllGatherAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                       int layers)
    : Lasp2Attention(sp, shape, global_N, layout, layers),
      s_(shape),
      scratch_(size_t(omp_get_max_threads()) * 2 * shape.N * kTile) {}

void AllGatherAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                        const float* lambda) {
  const int B = s_.B, Nl = s_.N, H = s_.H, d = s_.d, N = global_length(), ld = H * d;
  const float* kv = gather_kv(layer, k, v, H);
  const float *K = kv, *V = kv + size_t(B) * N * ld;
  const int* k_pos = gathered_positions();
  const int* q_pos = positions();
  const int q_max = *std::max_element(q_pos, q_pos + Nl);
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const std::vector<float> pw = powers(lambda ? lambda[h] : 1.0, N);
    float* A = scratch_.data() + size_t(omp_get_thread_num()) * 2 * Nl * kTile;
    const long qo = long(b) * Nl * ld + long(h) * d;
    bool first = true;
    for (int j0 = 0; j0 < N; j0 += kTile) {
      const int T = std::min(kTile, N - j0);
      if (*std::min_element(k_pos + j0, k_pos + j0 + T) > q_max) continue;  // every key after every query
      const long ko = (long(b) * N + j0) * ld + long(h) * d;
      gemm(false, true, Nl, T, d, 1.f, q + qo, ld, K + ko, ld, 0.f, A, T);
      mask_tile(A, Nl, T, q_pos, k_pos + j0, pw);
      gemm(false, false, Nl, d, T, 1.f, A, T, V + ko, ld, first ? 0.f : 1.f, o + qo, ld);
      first = false;
    }
    if (first)  // no visible key at all (cannot happen for causal self-attention, kept for safety)
      for (int i = 0; i < Nl; ++i) std::fill(o + qo + long(i) * ld, o + qo + long(i) * ld + d, 0.f);
  }
}

void AllGatherAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                         const float* q, const float*, const float*, const float* lambda) {
  const int B = s_.B, Nl = s_.N, H = s_.H, d = s_.d, N = global_length(), ld = H * d;
  const float* kv = gathered_kv(layer);
  const float *K = kv, *V = kv + size_t(B) * N * ld;
  float* dkv = zeroed_dkv(H);
  float *dK = dkv, *dV = dkv + size_t(B) * N * ld;
  const int* k_pos = gathered_positions();
  const int* q_pos = positions();
  const int q_max = *std::max_element(q_pos, q_pos + Nl);
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < B * H; ++bh) {  // each (b, h) owns its columns of dK, dV: no races
    const int b = bh / H, h = bh % H;
    const std::vector<float> pw = powers(lambda ? lambda[h] : 1.0, N);
    float* A = scratch_.data() + size_t(omp_get_thread_num()) * 2 * Nl * kTile;
    float* dA = A + size_t(Nl) * kTile;
    const long qo = long(b) * Nl * ld + long(h) * d;
    for (int j0 = 0; j0 < N; j0 += kTile) {
      const int T = std::min(kTile, N - j0);
      if (*std::min_element(k_pos + j0, k_pos + j0 + T) > q_max) continue;
      const long ko = (long(b) * N + j0) * ld + long(h) * d;
      gemm(false, true, Nl, T, d, 1.f, q + qo, ld, K + ko, ld, 0.f, A, T);  // A = (Q K^T) .* Psi
      mask_tile(A, Nl, T, q_pos, k_pos + j0, pw);
      gemm(false, true, Nl, T, d, 1.f, dout + qo, ld, V + ko, ld, 0.f, dA, T);  // dA = (dO V^T) .* Psi
      mask_tile(dA, Nl, T, q_pos, k_pos + j0, pw);
      gemm(false, false, Nl, d, T, 1.f, dA, T, K + ko, ld, 1.f, dq + qo, ld);    // dQ += dA K
      gemm(true, false, T, d, Nl, 1.f, dA, T, q + qo, ld, 1.f, dK + ko, ld);     // dK += dA^T Q
      gemm(true, false, T, d, Nl, 1.f, A, T, dout + qo, ld, 1.f, dV + ko, ld);   // dV += A^T dO
    }
  }
  scatter_dkv(dk, dv, H);
}

}  // namespace lasp
