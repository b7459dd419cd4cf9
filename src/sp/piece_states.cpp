#include "sp/piece_states.h"

#include <algorithm>
#include <cstring>


namespace lasp {

void fold_piece_pairs(const StateForm& f, const PiecePairs& pairs, const std::vector<std::pair<int, int>>& owner,
                      int rank, size_t heads, bool forward, float* out, float* total) {
  const size_t n = f.state_floats();
  const int pieces = int(owner.size());
  std::vector<float> acc(n), scratch(f.scratch_floats());
  for (size_t x = 0; x < heads; ++x) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int step = 0; step < pieces; ++step) {
      const int p = forward ? step : pieces - 1 - step;
      const auto [r, i] = owner[p];
      if (out && r == rank) std::memcpy(out + (size_t(i) * heads + x) * n, acc.data(), sizeof(float) * n);
      advance_state(f, acc.data(), pairs.a[p] + x * pairs.a_stride, pairs.b[p] + x * pairs.b_stride, scratch.data());
    }
    if (total) std::memcpy(total + x * n, acc.data(), sizeof(float) * n);
  }
}

void gated_rows(float* dst, const float* src, int ld, const float* f, int n, int d) {
  for (int t = 0; t < n; ++t)
    for (int x = 0; x < d; ++x) dst[t * d + x] = src[long(t) * ld + x] * f[t * d + x];
}

}  // namespace lasp
