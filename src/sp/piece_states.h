// What LASP-2 does with the d_k x d_v states of pieces (LASP2.md section 2), shared by its whole-piece and its
// chunked forms (sp/lasp2.h, sp/lasp2_chunked.h). A piece's state M = K^T diag(lambda^(L-j)) V (L its
// tokens, j = 0..L-1; the kernel's span_state) is what the piece adds to the state it passes on; the state
// entering piece p is the prefix P_p = sum_{s<p} lambda^(L(p-1-s)) M_s over global piece order, and the gradient
// of the state leaving it the suffix G_p = sum_{s>p} lambda^(L(s-p-1)) dM_s.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/state_algebra.h"

namespace lasp {

// dst (n x d, dense) = src (rows ld apart) .* f (n x d, dense): GLA's rows times their gate products.
void gated_rows(float* dst, const float* src, int ld, const float* f, int n, int d);

// Every piece's pairs (kernels/state_algebra.h) in global piece order: head x of piece p has its transition at
// a[p] + x * a_stride and its state at b[p] + x * b_stride.
struct PiecePairs {
  std::vector<const float*> a, b;
  size_t a_stride = 0, b_stride = 0;
};

// The fold of piece pairs over global piece order (LASP-2's scan; one rule for every transport that holds all
// pieces): into out (this rank's pieces, heads, d_k x d_v), the state entering each of this rank's pieces
// (forward) or, backward (pairs folded from the last piece down, transitions already transposed), the gradient
// of the state leaving it; into total (heads, d_k x d_v), if not null, the fold of every piece.
void fold_piece_pairs(const StateForm& f, const PiecePairs& pairs, const std::vector<std::pair<int, int>>& owner,
                      int rank, size_t heads, bool forward, float* out, float* total);

}  // namespace lasp
