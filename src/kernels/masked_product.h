// The masked "left product" of linear attention, o_i = sum_j Psi_ij (q_i . k_j) v_j with
// Psi_ij = lambda^(pos_i - pos_j) for keys not after the query, else 0: O(Nq Nk) work, no state. The
// baselines without the right-product trick use it (AllGather over all keys, Ring over one block at a time).
// Layouts: q, o (B, Nq, H, d); k, v (B, Nk, H, d); positions (all < span) give the mask; q_doc (B, Nq) or
// null: documents, where each query's document starts (keys before it are masked, as in softmax_attention.h). Accumulates (+=)
// into o and into every gradient. Parallel over (b, h) on `threads` threads, chosen by the caller; it throws
// if the workspace holds fewer.
#pragma once
#include <cstddef>

#include "core/workspace.h"

namespace lasp {

// Floats of workspace for `threads` threads, queries Nq, positions in [0, span).
size_t masked_product_workspace_floats(int Nq, int span, int threads);

void masked_product_forward(float* o, const float* q, const float* k, const float* v, const int* q_pos,
                            const int* k_pos, const int* q_doc, int B, int Nq, int Nk, int H, int d, int span, const float* lambda,
                            int threads, Workspace ws);
void masked_product_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const int* q_pos, const int* k_pos, const int* q_doc, int B, int Nq, int Nk, int H, int d,
                             int span, const float* lambda, int threads, Workspace ws);

}  // namespace lasp
