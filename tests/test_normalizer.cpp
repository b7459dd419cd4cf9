// The normalizer column of Based and Rebased (kernels/normalizer.h) against its definition in double and finite
// differences: o = n / (s + eps) of Y = [n | s].
#include <gtest/gtest.h>

#include <vector>

#include "kernels/normalizer.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

TEST(Normalizer, ColumnOfOnesDivisionAndItsGradient) {
  for (int d : {1, 5, 64})
    for (size_t rows : {size_t(1), size_t(7), size_t(5000)}) {  // 5000: the threaded loops
      const float eps = 1e-3f;
      auto v = random_vector(rows * d, 1), dout = random_vector(rows * d, 2), y = random_vector(rows * (d + 1), 3);
      for (size_t r = 0; r < rows; ++r) y[r * (d + 1) + d] = 1.f + std::abs(y[r * (d + 1) + d]);  // s > 0, as Based's
      std::vector<float> vt(rows * (d + 1)), o(rows * d), dy(rows * (d + 1));
      normalizer_append_ones(vt.data(), v.data(), rows, d);
      normalizer_forward(o.data(), y.data(), rows, d, eps);
      normalizer_backward(dy.data(), dout.data(), o.data(), y.data(), rows, d, eps);
      std::vector<double> rvt(vt.size()), ro(o.size()), rdy(dy.size());
      for (size_t r = 0; r < rows; ++r) {
        const double s = double(y[r * (d + 1) + d]) + eps;
        double dot = 0;
        for (int i = 0; i < d; ++i) {
          rvt[r * (d + 1) + i] = v[r * d + i];
          ro[r * d + i] = y[r * (d + 1) + i] / s;
          rdy[r * (d + 1) + i] = dout[r * d + i] / s;
          dot += double(dout[r * d + i]) * y[r * (d + 1) + i] / s;
        }
        rvt[r * (d + 1) + d] = 1.0;
        rdy[r * (d + 1) + d] = -dot / s;
      }
      EXPECT_EQ(normalized_error(rvt, vt), 0.0);
      EXPECT_LE(normalized_error(ro, o), kFp32Tolerance) << d << " " << rows;
      EXPECT_LE(normalized_error(rdy, dy), kFp32Tolerance) << d << " " << rows;
      const std::vector<float> before = dy;
      normalizer_drop_column(dy.data(), dy.data(), rows, d);  // in place
      for (size_t r = 0; r < rows; ++r)
        for (int i = 0; i < d; ++i) ASSERT_EQ(dy[r * d + i], before[r * (d + 1) + i]);
    }
  // the gradient of L = sum(o * w) against finite differences of the double form
  const int d = 3;
  const size_t rows = 4;
  auto y = to_double(random_vector(rows * (d + 1), 4)), w = to_double(random_vector(rows * d, 5));
  for (size_t r = 0; r < rows; ++r) y[r * (d + 1) + d] = 1.5 + std::abs(y[r * (d + 1) + d]);
  auto loss = [&](const std::vector<double>& yy) {
    double L = 0;
    for (size_t r = 0; r < rows; ++r)
      for (int i = 0; i < d; ++i) L += yy[r * (d + 1) + i] / (yy[r * (d + 1) + d] + 1e-3) * w[r * d + i];
    return L;
  };
  const std::vector<double> fd = finite_difference(loss, y);
  std::vector<float> yf(y.begin(), y.end()), wf(w.begin(), w.end()), o(rows * d), dy(rows * (d + 1));
  normalizer_forward(o.data(), yf.data(), rows, d, 1e-3f);
  normalizer_backward(dy.data(), wf.data(), o.data(), yf.data(), rows, d, 1e-3f);
  EXPECT_LE(normalized_error(fd, dy), kFp32Tolerance);
}
