// The short convolutions of decay gdn across ranks (../shared/design/DELTA.md "The short convolution across
// ranks"), for the methods that run it: in the contiguous layout rank r's first tokens read rank r-1's last K-1
// convolution inputs, zero before their document's start (short_conv_tail), so rank r needs no document
// knowledge of its own for them; the gradient of those rows goes back to rank r-1, which adds it into its last
// rows (short_conv_tail_backward). Point to point: (K-1) x C floats per batch row each way. A zigzag rank's two
// pieces are not neighbours and would need two halos: refused.
#pragma once
#include <cstdint>
#include <vector>

#include "comm/comm.h"
#include "sp/grid.h"

namespace lasp {

class ConvHalo {
 public:
  // B rows of N tokens on this rank; the method's layout.
  ConvHalo(Comm& sp, int B, int N, SpLayout layout);
  // Attention::conv_halo and conv_halo_backward for x (B, N, C) with this rank's document starts (B, N) or null.
  bool forward(float* halo, const float* x, const uint8_t* starts, int C, int K);
  void backward(float* dx, const float* dhalo, const uint8_t* starts, int C, int K);

 private:
  Comm& sp_;
  int B_, N_, prev_, next_;  // neighbours, -1 where none
  std::vector<float> tail_;  // rows on their way
};

}  // namespace lasp
