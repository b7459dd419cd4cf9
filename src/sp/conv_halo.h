// The short convolutions of decay gdn across ranks (../shared/design/DELTA.md "The short convolution across
// ranks"), for the methods that run it. A rank's tokens are its pieces (sp/grid.h: one in the contiguous layout,
// two in the zigzag), each a run of consecutive global positions; the first tokens of piece p read the last K-1
// convolution inputs of piece p-1, zero before their document's start (short_conv_tail), so the reader needs no
// document knowledge of its own for them; the gradient of those rows goes back to piece p-1's holder, which adds
// it into its last rows (short_conv_tail_backward). Point to point, one exchange per piece: (K-1) x C floats per
// batch row and piece each way (a zigzag rank's two pieces pass theirs in opposite directions; the middle rank's
// second piece reads its own first).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "sp/grid.h"

namespace lasp {

class ConvHalo {
 public:
  // B rows of N tokens on this rank; the method's layout.
  ConvHalo(Comm& sp, int B, int N, SpLayout layout);
  // Attention::conv_halo and conv_halo_backward for x (B, N, C) with this rank's document starts (B, N) or null:
  // halo and dhalo (B, pieces, K-1, C), the rows before each piece (zeros before the sequence's first token).
  // forward returns the pieces as runs.
  Attention::ConvRuns forward(float* halo, const float* x, const uint8_t* starts, int C, int K);
  void backward(float* dx, const float* dhalo, const uint8_t* starts, int C, int K);
  // The exchange alone, for tails already cut (short_conv_tail): every piece's halo (B, pieces, K-1, C) from
  // the tails (B, pieces, K-1, C) of this rank's pieces; backward, each piece's tail gradient (written) from its
  // halo gradient.
  void exchange(float* halo, const float* tails, int C, int K);
  void exchange_backward(float* dtails, const float* dhalo, int C, int K);
  // The local tokens of each piece's tail: (pieces, K-1), piece by piece.
  std::vector<int> tail_tokens(int K) const;

 private:
  Comm& sp_;
  int B_, N_, rank_;
  std::vector<Piece> mine_;
  std::vector<std::pair<int, int>> owner_;
  std::vector<float> tails_, buffer_;  // (B, pieces, K-1, C) every piece's tail or its gradient; one piece's rows

  int pieces() const { return int(mine_.size()); }
  // The holder (rank, index) of the piece before / after this rank's piece i; rank -1 where there is none.
  std::pair<int, int> before(int i) const;
  std::pair<int, int> after(int i) const;
};

}  // namespace lasp
