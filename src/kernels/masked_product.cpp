#include "kernels/masked_product.h"

#include <omp.h>

#include <algorithm>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/linear_attention.h"

namespace lasp {

namespace {

constexpr int kTile = 64;  // keys per score tile

// Per thread: two score tiles (Nq x kTile) and the decay powers lambda^0 .. lambda^span.
size_t per_thread(int Nq, int span) { return 2 * size_t(Nq) * kTile + size_t(span) + 1; }

// a (rows x T) .*= Psi; pw holds lambda^0 .. lambda^span (positions lie in [0, span)); q_doc: the queries'
// documents (null: none).
void mask_tile(float* a, int rows, int T, const int* q_pos, const int* k_pos, const int* q_doc, const float* pw) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < T; ++j) {
      const int delta = q_pos[i] - k_pos[j];
      a[long(i) * T + j] *= delta >= 0 && (!q_doc || k_pos[j] >= q_doc[i]) ? pw[delta] : 0.f;
    }
}

void check_workspace(Workspace ws, int Nq, int span, int threads, const char* kernel) {
  LASP_CHECK(threads > 0, "{}: threads must be positive, got {}", kernel, threads);
  const size_t held = ws.data ? ws.floats / per_thread(Nq, span) : 0;
  LASP_CHECK(held >= size_t(threads), "{}: workspace of {} floats holds {} of the {} threads' {} floats each (Nq={} span={})",
             kernel, ws.floats, held, threads, per_thread(Nq, span), Nq, span);
}

void check_positions(const int* pos, int n, int span, const char* kernel) {
  for (int i = 0; i < n; ++i)
    LASP_CHECK(pos[i] >= 0 && pos[i] < span, "{}: position {} outside [0, {})", kernel, pos[i], span);
}

}  // namespace

size_t masked_product_workspace_floats(int Nq, int span, int threads) { return size_t(threads) * per_thread(Nq, span); }

void masked_product_forward(float* o, const float* q, const float* k, const float* v, const int* q_pos,
                            const int* k_pos, const int* q_doc, int B, int Nq, int Nk, int H, int d, int span, const float* lambda,
                            int threads, Workspace ws) {
  check_workspace(ws, Nq, span, threads, "masked_product_forward");
  check_positions(q_pos, Nq, span, "masked_product_forward");
  check_positions(k_pos, Nk, span, "masked_product_forward");
  const int ld = H * d, q_max = *std::max_element(q_pos, q_pos + Nq);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    float* A = ws.data + size_t(omp_get_thread_num()) * per_thread(Nq, span);
    float* pw = A + 2 * size_t(Nq) * kTile;
    decay_powers(pw, lambda ? lambda[h] : 1.0, span);
    const long qo = long(b) * Nq * ld + long(h) * d;
    for (int j0 = 0; j0 < Nk; j0 += kTile) {
      const int T = std::min(kTile, Nk - j0);
      if (*std::min_element(k_pos + j0, k_pos + j0 + T) > q_max) continue;  // every key after every query
      const long ko = (long(b) * Nk + j0) * ld + long(h) * d;
      gemm(false, true, Nq, T, d, 1.f, q + qo, ld, k + ko, ld, 0.f, A, T);
      mask_tile(A, Nq, T, q_pos, k_pos + j0, q_doc ? q_doc + long(b) * Nq : nullptr, pw);
      gemm(false, false, Nq, d, T, 1.f, A, T, v + ko, ld, 1.f, o + qo, ld);
    }
  }
}

void masked_product_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const int* q_pos, const int* k_pos, const int* q_doc, int B, int Nq, int Nk, int H, int d,
                             int span, const float* lambda, int threads, Workspace ws) {
  check_workspace(ws, Nq, span, threads, "masked_product_backward");
  check_positions(q_pos, Nq, span, "masked_product_backward");
  check_positions(k_pos, Nk, span, "masked_product_backward");
  const int ld = H * d, q_max = *std::max_element(q_pos, q_pos + Nq);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int bh = 0; bh < B * H; ++bh) {  // each (b, h) owns its columns of dq, dk, dv: no races
    const int b = bh / H, h = bh % H;
    float* A = ws.data + size_t(omp_get_thread_num()) * per_thread(Nq, span);
    float* dA = A + size_t(Nq) * kTile;
    float* pw = A + 2 * size_t(Nq) * kTile;
    decay_powers(pw, lambda ? lambda[h] : 1.0, span);
    const long qo = long(b) * Nq * ld + long(h) * d;
    for (int j0 = 0; j0 < Nk; j0 += kTile) {
      const int T = std::min(kTile, Nk - j0);
      if (*std::min_element(k_pos + j0, k_pos + j0 + T) > q_max) continue;
      const long ko = (long(b) * Nk + j0) * ld + long(h) * d;
      gemm(false, true, Nq, T, d, 1.f, q + qo, ld, k + ko, ld, 0.f, A, T);        // A = (Q K^T) .* Psi
      const int* qd = q_doc ? q_doc + long(b) * Nq : nullptr;
      mask_tile(A, Nq, T, q_pos, k_pos + j0, qd, pw);
      gemm(false, true, Nq, T, d, 1.f, dout + qo, ld, v + ko, ld, 0.f, dA, T);    // dA = (dO V^T) .* Psi
      mask_tile(dA, Nq, T, q_pos, k_pos + j0, qd, pw);
      gemm(false, false, Nq, d, T, 1.f, dA, T, k + ko, ld, 1.f, dq + qo, ld);     // dQ += dA K
      gemm(true, false, T, d, Nq, 1.f, dA, T, q + qo, ld, 1.f, dk + ko, ld);      // dK += dA^T Q
      gemm(true, false, T, d, Nq, 1.f, A, T, dout + qo, ld, 1.f, dv + ko, ld);    // dV += A^T dO
    }
  }
}

}  // namespace lasp
