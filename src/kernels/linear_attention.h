// Chunkwise linear attention (LASP2.md section 1), fp32, for H heads with keys of width dk and values of width dv.
//
//   causal:        o_i = sum_{j <= i} lambda_h^(i-j) (q_i . k_j) v_j  +  lambda_h^i q_i P
//   bidirectional: o_i = q_i (sum_j k_j^T v_j + P)                      (no decay)
//
// P (dk x dv per head, rows indexed by the key dim) is an optional incoming state: the contribution of
// tokens before this sequence piece, P = sum_{j < 0} lambda^(-j) k_j^T v_j. The causal outgoing state is
// the same quantity at the end, lambda^N P + sum_j lambda^(N-j) k_j^T v_j: the sequence-parallel methods
// hand it from rank to rank. The bidirectional outgoing state is the local sum K^T V only.
//
// Documents: starts (B, N), or null for one stream per row. starts[b][t] != 0 opens a new document at token t:
// every state before t is cut there (GLA's gate of 0), so a token sees only the tokens of its own document
// (from the last start at or before it), and the incoming state only before the row's first start. The
// outgoing state then holds only what follows the row's last start.
//
// Layouts: q, k and their gradients (B, N, H, dk); v, o and their gradients (B, N, H, dv); states
// (B, H, dk, dv); lambda (H), or null for no decay. Inside, the sequence is cut into blocks of `block` tokens
// (the last one may be shorter).
// Every backward ACCUMULATES (+=) into dq, dk, dv and dstate_in. Optional pointers may be null.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/workspace.h"
#include "kernels/expanded_feature_map.h"

namespace lasp {

// gla: the decay comes from per-token gates (kernels/gla.h, GATES.md), not from a lambda per head; gdn: the gated
// delta rule (kernels/delta_rule.h, DELTA.md), a log-gate per token and value head and a full transition.
enum class Decay { none, lightning, retention, gla, gdn };
Decay decay_from_string(const std::string& name);
const char* to_string(Decay decay);
// lambda_h of MODEL.md for h = 0..H-1 (all 1 for Decay::none, and for gla and gdn, whose gates decay instead).
void linear_attention_decays(float* lambda, int H, Decay decay);

// The decay powers of every part of lasp, with one cut-off: lambda^n, and 0 where that is below 1e-30 (no
// denormals anywhere). decay_power uses pow; decay_powers fills pw[k] = lambda^(first + k), k = 0..n, by
// repeated multiplication in double from pow's lambda^first.
float decay_power(double lambda, long n);
void decay_powers(float* pw, double lambda, int n, long first = 0);

// The block size of the chunkwise kernel wherever lasp does not ask for another (--block).
constexpr int kLinearBlock = 32;

// `threads`: the OpenMP threads a kernel runs on, chosen by the caller (the kernels never ask the OpenMP
// runtime); the workspace is sized for them. There is no default: a shape without it is refused.
struct LinearAttentionShape {
  int B = 1, N = 0, H = 1;
  int dk = 0, dv = 0;  // key width (q, k and the state's rows), value width (v, o and the state's columns)
  int block = kLinearBlock;
  int threads = 0;
  // Expanded features (Based, Rebased: kernels/expanded_feature_map.h, FEATURE_MAPS.md). f > 0: q and k hold f
  // raw values per head (the map's kernel input u), which the kernels expand block by block into
  // dk = expanded_features(f, expansion) features; the intra-block scores come from the raw rows (B^2 f work),
  // and nothing expanded is kept. f = 0: q and k are dk wide and used as they are.
  // With f > 0 the causal kernel and the spans compute exactly the above for phi(q), phi(k) (no normalization:
  // the caller appends the ones column to v and divides), and dq, dk are the gradients of the raw rows
  // (B, N, H, f). The bidirectional kernel and GLA refuse f > 0; a dk other than expanded_features(f) is refused.
  int f = 0;
  ExpandedKind expansion = ExpandedKind::based;
  int qk_width() const { return f > 0 ? f : dk; }  // q, k and their gradients per head, as passed
};

// Floats of workspace the kernels need for s (on s.threads threads).
size_t linear_attention_forward_workspace_floats(const LinearAttentionShape& s);
size_t linear_attention_backward_workspace_floats(const LinearAttentionShape& s);
// (Both are independent of N: the backward recomputes the running state in a forward pass instead of
// storing one per block.)

void linear_attention_forward(float* o, float* state_out, const float* q, const float* k, const float* v,
                              const float* state_in, const float* lambda, const uint8_t* starts,
                              const LinearAttentionShape& s, Workspace ws);
void linear_attention_backward(float* dq, float* dk, float* dv, float* dstate_in, const float* dout,
                               const float* dstate_out, const float* q, const float* k, const float* v,
                               const float* state_in, const float* lambda, const uint8_t* starts,
                               const LinearAttentionShape& s, Workspace ws);

// Spans: what the sequence-parallel methods do with a run of n tokens of one batch row besides running the kernel
// on it (s.B = 1, s.N = n; q, k (n, H, dk) and v, o (n, H, dv) rows of a longer tensor, so with a row stride;
// states (H, dk, dv); starts (n) or null; lambda (H) or null). A start cuts as in the kernel: the span passes on
// only its keys from its last start, and the state entering it reaches only its queries before its first.
//   span_state:  M = sum_j lambda^(n-j) k_j^T v_j                 the span's own state, from none (written)
//   span_apply:  o_i += lambda^i q_i P                             the state P entering the span, in its outputs
// and their adjoints:
//   span_apply_backward: dq_i += lambda^i do_i P^T (dq may be null); dP = sum_i lambda^i q_i^T do_i (written;
//                        may be null)
//   span_state_backward: dk_j += c lambda^(n-j) v_j G^T, dv_j += c lambda^(n-j) k_j G, for G the gradient of
//                        the state the span passes on; c = scale[h], a decay after the span (scale (H) or null: 1)
// Row strides: ldk for q, k and their gradients, ldv for v, o, dO and dv (H qk_width() and H dv for whole rows: with
// expanded features q, k are the raw rows, f per head, expanded run by run).
struct SpanRows {
  long ldk, ldv;
};
size_t linear_attention_span_workspace_floats(const LinearAttentionShape& s);
void linear_attention_span_state(float* M, const float* k, const float* v, const float* lambda, const uint8_t* starts,
                                 SpanRows rows, const LinearAttentionShape& s, Workspace ws);
void linear_attention_span_apply(float* o, const float* q, const float* P, const float* lambda, const uint8_t* starts,
                                 SpanRows rows, const LinearAttentionShape& s, Workspace ws);
void linear_attention_span_apply_backward(float* dq, float* dP, const float* dout, const float* q, const float* P,
                                          const float* lambda, const uint8_t* starts, SpanRows rows,
                                          const LinearAttentionShape& s, Workspace ws);
void linear_attention_span_state_backward(float* dk, float* dv, const float* G, const float* k, const float* v,
                                          const float* lambda, const uint8_t* starts, const float* scale, SpanRows rows,
                                          const LinearAttentionShape& s, Workspace ws);

// Non-causal form. Workspace: linear_attention_bidirectional_workspace_floats.
size_t linear_attention_bidirectional_workspace_floats(const LinearAttentionShape& s);
void linear_attention_bidirectional_forward(float* o, float* state_out, const float* q, const float* k,
                                            const float* v, const float* state_in,
                                            const LinearAttentionShape& s, Workspace ws);
void linear_attention_bidirectional_backward(float* dq, float* dk, float* dv, float* dstate_in,
                                             const float* dout, const float* dstate_out, const float* q,
                                             const float* k, const float* v, const float* state_in,
                                             const LinearAttentionShape& s, Workspace ws);

}  // namespace lasp
