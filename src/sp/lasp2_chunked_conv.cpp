// Lasp2ChunkedAttention's short convolutions of decay gdn (sp/lasp2_chunked.h): their halos across chunks and ranks.

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/short_conv.h"
#include "sp/lasp2_chunked.h"

namespace lasp {

// The tails of this rank's pieces, cut at their last document start (short_conv_tail), on their way; the halos of its
// pieces back.
void Lasp2ChunkedAttention::conv_exchange(int conv, const float* tails, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), all = size_t(s_.B) * pieces * n;
  for (auto* v : {&piece_halos_, &dpiece_halos_, &conv_tails_, &dtails_})
    if (int(v->size()) <= conv) v->resize(conv + 1);
  if (int(dtail_chunk_.size()) <= conv) dtail_chunk_.resize(conv + 1, -1);
  std::vector<float> cut(all);
  const std::vector<int> tokens = halo_.tail_tokens(K);
  for (int b = 0; b < s_.B; ++b)
    for (size_t i = 0; i < pieces; ++i) {
      const size_t at = (size_t(b) * pieces + i) * n;
      short_conv_tail(cut.data() + at, tails + at, nullptr, docs().flags(b, tokens[i * (K - 1)]), 1, K - 1, C, K);
    }
  halo_.exchange(sized(piece_halos_[conv], all).data(), cut.data(), C, K);
  dpiece_halos_[conv].assign(all, 0.f);
}

// Each segment's halo: the previous piece's tail at a piece's start, else the tail of the chunk before (kept by the
// forward passes, which keep this chunk's too: that of its last segment).
Attention::ConvRuns Lasp2ChunkedAttention::conv_halo(int conv, float* halo, const float* x, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), R = segments().size();
  const ConvRuns runs{int(R), R > 1 ? segments()[1].row : 0};
  if (K == 1) return runs;  // no halo
  LASP_CHECK(int(piece_halos_.size()) > conv && piece_halos_[conv].size() == size_t(s_.B) * pieces * n,
             "LASP-2 in chunks: convolution {}'s halo asked before its exchange", conv);
  float* tails = sized(conv_tails_[conv], size_t(chunks_) * s_.B * n).data();
  for (size_t r = 0; r < R; ++r) {
    const Segment& sg = segments()[r];
    for (int b = 0; b < s_.B; ++b) {
      const float* from = sg.at == 0 ? piece_halos_[conv].data() + (size_t(b) * pieces + sg.piece) * n
                                     : tails + (size_t(index_ - 1) * s_.B + b) * n;
      std::copy_n(from, n, halo + (b * R + r) * n);
    }
  }
  if (pass_ == Pass::forward) {
    const Segment& sg = segments().back();
    for (int b = 0; b < s_.B; ++b)
      short_conv_tail(tails + (size_t(index_) * s_.B + b) * n, x + (long(b) * length_ + sg.row) * C,
                      halo + (b * R + R - 1) * n, docs().flags(b, local_row(sg)), 1, sg.length, C, K);
  }
  return runs;
}

// Chunks come last to first (in both backward passes): the gradient of this chunk's tail, from the chunk after it in
// the piece, reaches its last segment's rows and halo (short_conv_tail_backward); then each segment's halo gradient
// goes to the chunk before, or at a piece's start to the previous piece (sent after pass 2).
void Lasp2ChunkedAttention::conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), R = segments().size();
  if (K == 1) return;
  LASP_CHECK(int(dpiece_halos_.size()) > conv && dpiece_halos_[conv].size() == size_t(s_.B) * pieces * n,
             "LASP-2 in chunks: convolution {}'s halo gradient before its exchange", conv);
  std::copy_n(dhalo, s_.B * R * n, sized(dhalo_, s_.B * R * n).begin());
  std::vector<float>& dtail = sized(dtails_[conv], s_.B * n);
  if (dtail_chunk_[conv] == index_) {
    const Segment& sg = segments().back();
    for (int b = 0; b < s_.B; ++b)
      short_conv_tail_backward(dx + (long(b) * length_ + sg.row) * C, dhalo_.data() + (b * R + R - 1) * n,
                               dtail.data() + b * n, docs().flags(b, local_row(sg)), 1, sg.length, C, K);
  }
  dtail_chunk_[conv] = -1;
  for (size_t r = 0; r < R; ++r) {
    const Segment& sg = segments()[r];
    for (int b = 0; b < s_.B; ++b) {
      const float* g = dhalo_.data() + (b * R + r) * n;
      if (sg.at > 0) {
        std::copy_n(g, n, dtail.data() + b * n);
        dtail_chunk_[conv] = index_ - 1;
      } else if (!linear_.first_piece(sg.piece)) {
        float* to = dpiece_halos_[conv].data() + (size_t(b) * pieces + sg.piece) * n;
        for (size_t e = 0; e < n; ++e) to[e] += g[e];
      }
    }
  }
}

// After pass 2: every piece's halo gradient (both passes') back to the holder of the piece before it; this rank's
// pieces' tails' gradient, through the cut at their last document start.
void Lasp2ChunkedAttention::conv_exchange_backward(int conv, float* dtails, int C, int K) {
  const size_t n = size_t(K - 1) * C, pieces = mine_.size(), all = size_t(s_.B) * pieces * n;
  LASP_CHECK(int(dpiece_halos_.size()) > conv && dpiece_halos_[conv].size() == all,
             "LASP-2 in chunks: convolution {}'s backward exchange before its forward one", conv);
  std::vector<float> cut(all);
  halo_.exchange_backward(cut.data(), dpiece_halos_[conv].data(), C, K);
  std::fill(dpiece_halos_[conv].begin(), dpiece_halos_[conv].end(), 0.f);
  std::fill_n(dtails, all, 0.f);
  const std::vector<int> tokens = halo_.tail_tokens(K);
  for (int b = 0; b < s_.B; ++b)
    for (size_t i = 0; i < pieces; ++i) {
      const size_t at = (size_t(b) * pieces + i) * n;
      short_conv_tail_backward(dtails + at, nullptr, cut.data() + at, docs().flags(b, tokens[i * (K - 1)]), 1, K - 1,
                               C, K);
    }
}

}  // namespace lasp
