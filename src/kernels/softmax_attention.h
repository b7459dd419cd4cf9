// Causal softmax attention, fp32, tiled with online softmax (never an Nq x Nk matrix), GQA, forward and
// backward. Used by the softmax layers of the hybrid model (LASP-2H: own queries against gathered keys),
// Ring Attention (partial results over disjoint key sets, combined with softmax_attention_merge) and Ulysses.
//
// Layouts (row-major, token-major, heads interleaved):
//   q, o, dq, dout : (B, Nq, H, d)     element (b,n,h,i) at ((b*Nq+n)*H+h)*d+i
//   k, v, dk, dv   : (B, Nk, H_kv, d)
//   lse            : (B, H, Nq)        natural-log log-sum-exp of the scaled scores of each query row
//   q_pos (Nq), k_pos (Nk): global positions, the same for every batch row. Key j is visible to query i iff
//   k_pos[j] <= q_pos[i]. Positions need not be contiguous or monotone (zigzag layouts); tiles whose keys
//   all lie after all their queries are skipped, tiles whose keys all lie before are computed unmasked.
//   q_doc (B, Nq), or null: documents. The global position where each query's document starts; key j is
//   then visible to query i only if also k_pos[j] >= q_doc[b][i] (tiles wholly before are skipped).
// Query head h reads key/value head h / (H / H_kv). A query that sees no key gets o = 0, lse = -inf.
// Kernels never allocate: the caller passes a Workspace of softmax_attention_workspace_floats() floats.
// Parallel with OpenMP: forward over (b, h, query tile); backward over (b, kv head), which is race-free and
// deterministic (each work item owns dk/dv of its kv head and dq of the query heads of its group), so it
// uses at most B * H_kv threads.
#pragma once
#include <cmath>
#include <cstddef>

#include "core/workspace.h"

namespace lasp {

struct SoftmaxAttentionShape {
  int B, Nq, Nk, H, H_kv, d;
  float scale;  // multiplies q.k before the softmax; the model passes softmax_scale(d)
  int threads;  // the OpenMP threads the kernels run on, chosen by the caller; the workspace holds them
  bool bf16 = false;  // the products on bf16 operands (where the CPU has AVX-512-BF16; else fp32)
};

// The model's scale, 1/sqrt(d), and its shape with it: the one place this rule is written.
inline float softmax_scale(int d) { return 1.f / std::sqrt(float(d)); }
inline SoftmaxAttentionShape softmax_shape(int B, int Nq, int Nk, int H, int H_kv, int d, int threads) {
  return {B, Nq, Nk, H, H_kv, d, softmax_scale(d), threads};
}

// Floats of workspace for `threads` threads (forward and backward need the same amount). A kernel throws
// if its workspace holds fewer than s.threads threads' slices.
size_t softmax_attention_workspace_floats(int Nq, int Nk, int d, int threads);

// o = softmax(scale * q k^T, causal by position) v ; lse saved for backward.
void softmax_attention_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                               const int* q_pos, const int* k_pos, const int* q_doc, const SoftmaxAttentionShape& s,
                               Workspace ws);

// ACCUMULATES (+=) into dq, dk, dv. o and lse are the forward's outputs.
void softmax_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* o,
                                const float* lse, const float* q, const float* k, const float* v,
                                const int* q_pos, const int* k_pos, const int* q_doc,
                                const SoftmaxAttentionShape& s, Workspace ws);

// Combines a partial result over a disjoint key set into the accumulator (both normalized, as the forward
// writes them): lse_acc = logaddexp(lse_acc, lse_part), o_acc = weighted sum. -inf (no key seen) is handled.
// o: (B, Nq, H, d), lse: (B, H, Nq).
void softmax_attention_merge(float* o_acc, float* lse_acc, const float* o_part, const float* lse_part, int B,
                             int Nq, int H, int d);

}  // namespace lasp
