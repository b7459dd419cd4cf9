#include "sp/piece_states.h"

#include <algorithm>
#include <cstring>

#include "kernels/linear_attention.h"

namespace lasp {

void decayed_rows(float* dst, const float* src, int ld, const float* pw, bool tail, int n, int d, float scale) {
  for (int i = 0; i < n; ++i) {
    const float f = scale * pw[tail ? n - i : i];
    for (int x = 0; x < d; ++x) dst[long(i) * d + x] = f * src[long(i) * ld + x];
  }
}

std::vector<std::vector<float>> head_powers(const float* lambda, int H, int n) {
  std::vector<std::vector<float>> pw(H, std::vector<float>(size_t(n) + 1));
  for (int h = 0; h < H; ++h) decay_powers(pw[h].data(), lambda ? double(lambda[h]) : 1.0, n);
  return pw;
}

void scan_piece_states(float* out, const float* gathered, const std::vector<std::pair<int, int>>& owner, int rank,
                       int B, int H, int d, const float* lambda, int piece_len, bool forward, const uint8_t* cut) {
  const size_t dd = size_t(d) * d;
  const int pieces = int(owner.size()), W = std::max_element(owner.begin(), owner.end())->first + 1;
  const size_t per_rank = size_t(pieces / W) * B * H * dd;
  auto at = [&](int piece, int b, int h) { return ((size_t(piece) * B + b) * H + h) * dd; };
  std::vector<float> acc(dd);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const float decay = decay_power(lambda ? double(lambda[h]) : 1.0, piece_len);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int step = 0; step < pieces; ++step) {
        const int p = forward ? step : pieces - 1 - step;
        const auto [r, i] = owner[p];
        if (r == rank) std::memcpy(out + at(i, b, h), acc.data(), sizeof(float) * dd);
        const float* m = gathered + size_t(r) * per_rank + at(i, b, h);
        const float f = cut && cut[size_t(p) * B + b] ? 0.f : decay;
        for (size_t x = 0; x < dd; ++x) acc[x] = f * acc[x] + m[x];
      }
    }
}

void gated_rows(float* dst, const float* src, int ld, const float* f, int n, int d) {
  for (int t = 0; t < n; ++t)
    for (int x = 0; x < d; ++x) dst[t * d + x] = src[long(t) * ld + x] * f[t * d + x];
}

}  // namespace lasp
