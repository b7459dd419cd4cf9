#include "sp/conv_halo.h"

#include "core/check.h"
#include "kernels/short_conv.h"

namespace lasp {

ConvHalo::ConvHalo(Comm& sp, int B, int N, SpLayout layout)
    : sp_(sp), B_(B), N_(N), prev_(sp.rank() > 0 ? sp.rank() - 1 : -1),
      next_(sp.rank() + 1 < sp.size() ? sp.rank() + 1 : -1) {
  LASP_CHECK(layout == SpLayout::contiguous || sp.size() == 1, "decay gdn across ranks needs the contiguous layout "
             "(--sp-layout contiguous): a zigzag rank's two pieces are not neighbours, and its short convolutions "
             "would need two halos");
}

bool ConvHalo::forward(float* halo, const float* x, const uint8_t* starts, int C, int K) {
  LASP_CHECK(N_ >= K - 1, "decay gdn: each rank needs at least conv_size - 1 = {} tokens for the short "
             "convolutions' halo, found {} (a longer --seq-len, or a smaller conv_size)", K - 1, N_);
  const size_t n = size_t(B_) * (K - 1) * C;
  tail_.resize(n);
  if (next_ >= 0) short_conv_tail(tail_.data(), x, nullptr, starts, B_, N_, C, K);
  sp_.send_recv(next_ >= 0 ? tail_.data() : nullptr, next_ >= 0 ? n : 0, next_, prev_ >= 0 ? halo : nullptr,
                prev_ >= 0 ? n : 0, prev_);
  return prev_ >= 0;
}

void ConvHalo::backward(float* dx, const float* dhalo, const uint8_t* starts, int C, int K) {
  const size_t n = size_t(B_) * (K - 1) * C;
  tail_.resize(n);
  sp_.send_recv(prev_ >= 0 ? dhalo : nullptr, prev_ >= 0 ? n : 0, prev_, next_ >= 0 ? tail_.data() : nullptr,
                next_ >= 0 ? n : 0, next_);
  if (next_ >= 0) short_conv_tail_backward(dx, nullptr, tail_.data(), starts, B_, N_, C, K);
}

}  // namespace lasp
