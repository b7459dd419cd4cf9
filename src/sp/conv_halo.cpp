#include "sp/conv_halo.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/short_conv.h"

namespace lasp {

ConvHalo::ConvHalo(Comm& sp, int B, int N, SpLayout layout)
    : sp_(sp),
      B_(B),
      N_(N),
      rank_(sp.rank()),
      mine_(sp_pieces(N * sp.size(), sp.size(), sp.rank(), layout)),
      owner_(sp_piece_owners(N * sp.size(), sp.size(), layout)) {}

std::pair<int, int> ConvHalo::before(int i) const {
  const int p = mine_[i].index;
  return p > 0 ? owner_[p - 1] : std::pair{-1, -1};
}

std::pair<int, int> ConvHalo::after(int i) const {
  const int p = mine_[i].index;
  return p + 1 < int(owner_.size()) ? owner_[p + 1] : std::pair{-1, -1};
}

std::vector<int> ConvHalo::tail_tokens(int K) const {
  const int L = N_ / pieces();
  LASP_CHECK(L >= K - 1, "decay gdn: each piece of a rank's tokens needs at least conv_size - 1 = {} tokens for the "
             "short convolutions' halo, found {} (a longer --seq-len, or a smaller conv_size)", K - 1, L);
  std::vector<int> tokens;
  for (int i = 0; i < pieces(); ++i)
    for (int j = 0; j < K - 1; ++j) tokens.push_back(i * L + L - (K - 1) + j);
  return tokens;
}

Attention::ConvRuns ConvHalo::forward(float* halo, const float* x, const uint8_t* starts, int C, int K) {
  const int S = pieces(), L = N_ / S;
  tail_tokens(K);  // checks the pieces' length
  tails_.resize(size_t(B_) * S * (K - 1) * C);
  short_conv_tail(tails_.data(), x, nullptr, starts, B_ * S, L, C, K);  // a piece's rows are rows of B * S
  exchange(halo, tails_.data(), C, K);
  return {S, L};
}

void ConvHalo::backward(float* dx, const float* dhalo, const uint8_t* starts, int C, int K) {
  const int S = pieces(), L = N_ / S;
  tails_.resize(size_t(B_) * S * (K - 1) * C);
  exchange_backward(tails_.data(), dhalo, C, K);
  short_conv_tail_backward(dx, nullptr, tails_.data(), starts, B_ * S, L, C, K);
}

// Step i passes the tail of this rank's piece i on to the holder of the piece after it and takes the halo of piece
// i from the holder of the piece before it. Every rank holds as many pieces, and the piece after rank r's piece i
// is another rank's piece i (or r's own), so the steps pair up across ranks.
void ConvHalo::exchange(float* halo, const float* tails, int C, int K) {
  const int S = pieces();
  const size_t rows = size_t(K - 1) * C, n = size_t(B_) * rows;
  auto at = [&](auto* all, int i, int b) { return all + (size_t(b) * S + i) * rows; };
  buffer_.resize(2 * n);
  float *send = buffer_.data(), *recv = send + n;
  for (int i = 0; i < S; ++i) {
    const auto [from, from_i] = before(i);
    const auto [to, to_i] = after(i);
    const bool sends = to >= 0 && to != rank_, receives = from >= 0 && from != rank_;
    if (sends)
      for (int b = 0; b < B_; ++b) std::copy_n(at(tails, i, b), rows, send + b * rows);
    sp_.send_recv(sends ? send : nullptr, sends ? n : 0, sends ? to : -1, receives ? recv : nullptr,
                  receives ? n : 0, receives ? from : -1);
    for (int b = 0; b < B_; ++b) {
      float* h = at(halo, i, b);
      if (receives) std::copy_n(recv + b * rows, rows, h);
      else if (from == rank_) std::copy_n(at(tails, from_i, b), rows, h);
      else std::fill_n(h, rows, 0.f);
    }
  }
}

void ConvHalo::exchange_backward(float* dtails, const float* dhalo, int C, int K) {
  const int S = pieces();
  const size_t rows = size_t(K - 1) * C, n = size_t(B_) * rows;
  auto at = [&](auto* all, int i, int b) { return all + (size_t(b) * S + i) * rows; };
  std::fill_n(dtails, S * n, 0.f);  // each piece's tail gradient, from the holder of the piece after it
  buffer_.resize(2 * n);
  float *send = buffer_.data(), *recv = send + n;
  for (int i = 0; i < S; ++i) {
    const auto [from, from_i] = before(i);
    const auto [to, to_i] = after(i);
    const bool sends = from >= 0 && from != rank_, receives = to >= 0 && to != rank_;
    for (int b = 0; b < B_; ++b) {
      const float* g = at(dhalo, i, b);
      if (sends) std::copy_n(g, rows, send + b * rows);
      else if (from == rank_) std::transform(g, g + rows, at(dtails, from_i, b), at(dtails, from_i, b),
                                             [](float a, float t) { return a + t; });
    }
    sp_.send_recv(sends ? send : nullptr, sends ? n : 0, sends ? from : -1, receives ? recv : nullptr,
                  receives ? n : 0, receives ? to : -1);
    if (receives)
      for (int b = 0; b < B_; ++b) std::copy_n(recv + b * rows, rows, at(dtails, i, b));
  }
}

}  // namespace lasp
