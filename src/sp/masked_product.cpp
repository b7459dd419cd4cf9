#include "sp/masked_product.h"

#include <omp.h>

#include <algorithm>

#include "kernels/gemm.h"

namespace lasp {

namespace {

constexpr int kTile = 64;  // keys per score tile

// lambda^k for k = 0..n (0 below 1e-30).
std::vector<float> powers(double lambda, int n) {
  std::vector<float> pw(size_t(n) + 1);
  double p = 1.0;
  for (int k = 0; k <= n; ++k, p *= lambda) pw[k] = p < 1e-30 ? 0.f : float(p);
  return pw;
}

// a (rows x T) .*= Psi.
void mask_tile(float* a, int rows, int T, const int* q_pos, const int* k_pos, const std::vector<float>& pw) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < T; ++j) {
      const int delta = q_pos[i] - k_pos[j];
      a[long(i) * T + j] *= delta >= 0 && delta < int(pw.size()) ? pw[delta] : 0.f;
    }
}

int max_position(const int* pos, int n) { return *std::max_element(pos, pos + n); }

}  // namespace

size_t masked_product_scratch_floats(int Nq) { return size_t(omp_get_max_threads()) * 2 * Nq * kTile; }

void masked_product_forward(float* o, const float* q, const float* k, const float* v, const int* q_pos,
                            const int* k_pos, int B, int Nq, int Nk, int H, int d, const float* lambda,
                            std::vector<float>& scratch) {
  scratch.resize(masked_product_scratch_floats(Nq));
  const int ld = H * d, span = max_position(q_pos, Nq) + 1, q_max = span - 1;
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const std::vector<float> pw = powers(lambda ? lambda[h] : 1.0, span);
    float* A = scratch.data() + size_t(omp_get_thread_num()) * 2 * Nq * kTile;
    const long qo = long(b) * Nq * ld + long(h) * d;
    for (int j0 = 0; j0 < Nk; j0 += kTile) {
      const int T = std::min(kTile, Nk - j0);
      if (*std::min_element(k_pos + j0, k_pos + j0 + T) > q_max) continue;  // every key after every query
      const long ko = (long(b) * Nk + j0) * ld + long(h) * d;
      gemm(false, true, Nq, T, d, 1.f, q + qo, ld, k + ko, ld, 0.f, A, T);
      mask_tile(A, Nq, T, q_pos, k_pos + j0, pw);
      gemm(false, false, Nq, d, T, 1.f, A, T, v + ko, ld, 1.f, o + qo, ld);
    }
  }
}

void masked_product_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const int* q_pos, const int* k_pos, int B, int Nq, int Nk, int H, int d,
                             const float* lambda, std::vector<float>& scratch) {
  scratch.resize(masked_product_scratch_floats(Nq));
  const int ld = H * d, span = max_position(q_pos, Nq) + 1, q_max = span - 1;
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < B * H; ++bh) {  // each (b, h) owns its columns of dq, dk, dv: no races
    const int b = bh / H, h = bh % H;
    const std::vector<float> pw = powers(lambda ? lambda[h] : 1.0, span);
    float* A = scratch.data() + size_t(omp_get_thread_num()) * 2 * Nq * kTile;
    float* dA = A + size_t(Nq) * kTile;
    const long qo = long(b) * Nq * ld + long(h) * d;
    for (int j0 = 0; j0 < Nk; j0 += kTile) {
      const int T = std::min(kTile, Nk - j0);
      if (*std::min_element(k_pos + j0, k_pos + j0 + T) > q_max) continue;
      const long ko = (long(b) * Nk + j0) * ld + long(h) * d;
      gemm(false, true, Nq, T, d, 1.f, q + qo, ld, k + ko, ld, 0.f, A, T);        // A = (Q K^T) .* Psi
      mask_tile(A, Nq, T, q_pos, k_pos + j0, pw);
      gemm(false, true, Nq, T, d, 1.f, dout + qo, ld, v + ko, ld, 0.f, dA, T);    // dA = (dO V^T) .* Psi
      mask_tile(dA, Nq, T, q_pos, k_pos + j0, pw);
      gemm(false, false, Nq, d, T, 1.f, dA, T, k + ko, ld, 1.f, dq + qo, ld);     // dQ += dA K
      gemm(true, false, T, d, Nq, 1.f, dA, T, q + qo, ld, 1.f, dk + ko, ld);      // dK += dA^T Q
      gemm(true, false, T, d, Nq, 1.f, A, T, dout + qo, ld, 1.f, dv + ko, ld);    // dV += A^T dO
    }
  }
}

}  // namespace lasp
