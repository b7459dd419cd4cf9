// What LASP-2 does with the d x d states of pieces (LASP2.md section 2), shared by its whole-piece and its
// chunked forms (sp/lasp2.h, sp/lasp2_chunked.h). A piece's state M = K^T diag(lambda^(L-j)) V (L its
// tokens, j = 0..L-1) is what the piece adds to the state it passes on; the state entering piece p is the
// prefix P_p = sum_{s<p} lambda^(L(p-1-s)) M_s over global piece order, and the gradient of the state
// leaving it the suffix G_p = sum_{s>p} lambda^(L(s-p-1)) dM_s.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace lasp {

// dst (n x d, dense) = scale diag(f) src (rows ld apart) with f[i] = pw[i] (head) or pw[n - i] (tail):
// pw[k] = lambda^k, k = 0..n.
void decayed_rows(float* dst, const float* src, int ld, const float* pw, bool tail, int n, int d, float scale = 1.f);

// dst (n x d, dense) = src (rows ld apart) .* f (n x d, dense): GLA's rows times their gate products.
void gated_rows(float* dst, const float* src, int ld, const float* f, int n, int d);

// pw[h][k] = lambda_h^k, k = 0..n, for every head (lambda (H) or null: 1).
std::vector<std::vector<float>> head_powers(const float* lambda, int H, int n);

// Per-piece states gathered from every rank, (W, pieces per rank, B, H, d, d) in rank order, scanned over
// global piece order: the prefix P (forward) or the suffix G (backward) of each of this rank's pieces into
// out (pieces per rank, B, H, d, d). owner[p] = (rank, index among its pieces); lambda (H) or null. cut
// (pieces, B) or null: documents, non-zero where global piece p of row b holds a document start, which then
// passes on nothing from before it (forward: P_{p+1} = M_p; backward: G_{p-1} = dM_p).
void scan_piece_states(float* out, const float* gathered, const std::vector<std::pair<int, int>>& owner, int rank,
                       int B, int H, int d, const float* lambda, int piece_len, bool forward,
                       const uint8_t* cut = nullptr);

}  // namespace lasp
