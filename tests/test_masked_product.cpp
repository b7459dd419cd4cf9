// kernels/masked_product: the masked left product of linear attention against a naive double computation,
// forward and every gradient, with decay, arbitrary positions (keys after some queries) and awkward sizes.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "core/check.h"
#include "kernels/masked_product.h"
#include "testing.h"

namespace {

using lasp::testing::normalized_error;
using lasp::testing::random_vector;

TEST(MaskedProduct, MatchesNaiveDoubleForwardAndBackward) {
  for (const auto& [B, Nq, Nk, H, d] : {std::tuple{1, 7, 70, 2, 5}, std::tuple{2, 65, 33, 3, 8}}) {
    const int span = Nq + Nk + 3;
    std::vector<int> qp(Nq), kp(Nk);
    for (int i = 0; i < Nq; ++i) qp[i] = (i * 7 + 3) % span;
    for (int j = 0; j < Nk; ++j) kp[j] = (j * 5) % span;
    const std::vector<float> lambda = {0.9f, 1.f, 0.5f};
    const auto q = random_vector(size_t(B) * Nq * H * d, 1), dout = random_vector(q.size(), 4);
    const auto k = random_vector(size_t(B) * Nk * H * d, 2), v = random_vector(k.size(), 3);
    // Naive: o_i = sum_j lambda^(pi - pj) [pj <= pi] (q_i . k_j) v_j, and its gradients.
    std::vector<double> o(q.size()), dq(q.size()), dk(k.size()), dv(k.size());
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < Nq; ++i)
          for (int j = 0; j < Nk; ++j) {
            if (kp[j] > qp[i]) continue;
            const double psi = std::pow(double(lambda[h]), qp[i] - kp[j]);
            const size_t qi = ((size_t(b) * Nq + i) * H + h) * d, kj = ((size_t(b) * Nk + j) * H + h) * d;
            double s = 0, ds = 0;
            for (int x = 0; x < d; ++x) s += double(q[qi + x]) * k[kj + x], ds += double(dout[qi + x]) * v[kj + x];
            for (int x = 0; x < d; ++x) {
              o[qi + x] += psi * s * v[kj + x];
              dv[kj + x] += psi * s * dout[qi + x];
              dq[qi + x] += psi * ds * k[kj + x];
              dk[kj + x] += psi * ds * q[qi + x];
            }
          }
    const int threads = 3;  // the caller's choice, whatever OMP_NUM_THREADS says
    lasp::WorkspaceBuffer ws(lasp::masked_product_workspace_floats(Nq, span, threads));
    std::vector<float> got_o(q.size(), 0.f), got_dq(q.size(), 0.f), got_dk(k.size(), 0.f), got_dv(k.size(), 0.f);
    lasp::masked_product_forward(got_o.data(), q.data(), k.data(), v.data(), qp.data(), kp.data(), nullptr, B, Nq, Nk, H, d, span,
                                 lambda.data(), threads, ws.view());
    lasp::masked_product_backward(got_dq.data(), got_dk.data(), got_dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                  qp.data(), kp.data(), nullptr, B, Nq, Nk, H, d, span, lambda.data(), threads, ws.view());
    EXPECT_LE(normalized_error(o, got_o), lasp::testing::kFp32Tolerance);
    EXPECT_LE(normalized_error(dq, got_dq), lasp::testing::kFp32Tolerance);
    EXPECT_LE(normalized_error(dk, got_dk), lasp::testing::kFp32Tolerance);
    EXPECT_LE(normalized_error(dv, got_dv), lasp::testing::kFp32Tolerance);
    // A workspace too small for the threads, no threads, and positions outside [0, span), are refused.
    lasp::WorkspaceBuffer small(10);
    EXPECT_THROW(lasp::masked_product_forward(got_o.data(), q.data(), k.data(), v.data(), qp.data(), kp.data(), nullptr, B, Nq,
                                              Nk, H, d, span, lambda.data(), 1, small.view()),
                 lasp::Error);
    EXPECT_THROW(lasp::masked_product_forward(got_o.data(), q.data(), k.data(), v.data(), qp.data(), kp.data(), nullptr, B, Nq,
                                              Nk, H, d, span, lambda.data(), threads + 1, ws.view()),
                 lasp::Error);
    EXPECT_THROW(lasp::masked_product_forward(got_o.data(), q.data(), k.data(), v.data(), qp.data(), kp.data(), nullptr, B, Nq,
                                              Nk, H, d, span, lambda.data(), 0, ws.view()),
                 lasp::Error);
    EXPECT_THROW(lasp::masked_product_forward(got_o.data(), q.data(), k.data(), v.data(), qp.data(), kp.data(), nullptr, B, Nq,
                                              Nk, H, d, 2, lambda.data(), threads, ws.view()),
                 lasp::Error);
  }
}

}  // namespace
