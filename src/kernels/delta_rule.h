// The gated delta rule (Gated DeltaNet, ../shared/design/DELTA.md), fp32, chunkwise in the WY (UT) form. Per value
// head hv of HV, reading the q/k head h = hv / (HV / H) (GVA):
//
//   S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t,    alpha_t = exp(g_t)
//
// S (dk x dv, FLA's [K, V] layout: rows are key dims) starts at state_in (or 0) and leaves as state_out. q and k
// come l2-normalized and q scaled by 1 / sqrt(dk) (the layer does both); beta in (0, 1); g <= 0, the log-gate.
// Inside, the tokens are cut into chunks of `block`; a chunk's decay factors (gamma_i from its start to token i,
// Ld_ij over (j, i], exp(c_end - c_j) from token j to its end) are products of alpha over at most `block` tokens
// flushed to 0 below 1e-30 (GLA's rule), never ratios: no factor exceeds 1 and none is divided by.
// Documents: starts (B, N) or null, as in linear_attention.h. A start token s has alpha_s = 0 (its g is unused and
// its dg is 0), so every factor across it is 0 and S_s = beta_s k_s v_s^T from nothing.
//
// Layouts: q, k and their gradients (B, N, H, dk); v, o and theirs (B, N, HV, dv); beta, g and theirs (B, N, HV);
// states (B, HV, dk, dv); transitions (B, HV, dk, dk). Every backward ACCUMULATES (+=) into its gradients (dq and
// dk over the HV / H value heads that read a q/k head); optional pointers may be null.
//
// Across ranks (DELTA.md): a span of tokens moves the state as S_out = A S_in + B, state_algebra's full transition.
//   A: delta_rule_transition (0 when a start lies in the span),
//   B: delta_rule_forward's state_out with state_in = 0,
//   dP^own (the gradient of the span's own outputs at S_in): delta_rule_backward's dstate_in with dstate_out = 0.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/workspace.h"

namespace lasp {

// The chunk length wherever lasp does not ask for another (FLA's).
constexpr int kDeltaBlock = 64;

// Gated DeltaNet's gates of a token and value head (DELTA.md) from the projections b = W_b x and z = W_a x + dt_bias:
// beta = sigmoid(b), and the log-gate g = -exp(A_log) softplus(z) (softplus without overflow, as FLA's and torch's,
// which return z itself above 20, less than 2.1e-9 away), and dg/dz = -exp(A_log) sigmoid(z).
inline float gdn_beta(float b) { return 1.f / (1.f + std::exp(-b)); }
inline float gdn_log_gate(float z, float a_log) {
  return -std::exp(a_log) * (std::max(z, 0.f) + std::log1p(std::exp(-std::fabs(z))));
}
inline float gdn_log_gate_derivative(float z, float a_log) { return -std::exp(a_log) * gdn_beta(z); }

struct DeltaRuleShape {
  int B = 1, N = 0, H = 1, HV = 1;  // batch, tokens, q/k heads, value heads (a multiple of H)
  int dk = 0, dv = 0;               // key width (q, k, the state's rows), value width (v, o, the state's columns)
  int block = kDeltaBlock;          // chunk length
  int threads = 1;                  // OpenMP threads, over (batch row, head)
};

// Throws lasp::Error naming `kernel`, what was expected and what was found, for a shape no kernel here runs.
void delta_rule_check_shape(const DeltaRuleShape& s, const char* kernel);

size_t delta_rule_forward_workspace_floats(const DeltaRuleShape& s);
// The backward keeps, for one value head per thread, each chunk's incoming state (dk dv floats) and its factors from
// the forward sweep for the reverse one: L_k and T (B floats per token each), W and V' (dk and dv per token).
size_t delta_rule_backward_workspace_floats(const DeltaRuleShape& s);
size_t delta_rule_summary_workspace_floats(const DeltaRuleShape& s);
size_t delta_rule_transition_backward_workspace_floats(const DeltaRuleShape& s);

// o null: state_out only (then q may be null too), the span's B from state_in = 0.
void delta_rule_forward(float* o, float* state_out, const float* q, const float* k, const float* v, const float* beta,
                        const float* g, const float* state_in, const uint8_t* starts, const DeltaRuleShape& s,
                        Workspace ws);
// The chunks' states are recomputed from state_in: nothing is kept between the calls. With dq, dk, dv, dbeta and dg
// all null, only dstate_in: one reverse sweep (it depends on neither state_in nor v).
void delta_rule_backward(float* dq, float* dk, float* dv, float* dbeta, float* dg, float* dstate_in, const float* dout,
                         const float* dstate_out, const float* q, const float* k, const float* v, const float* beta,
                         const float* g, const float* state_in, const uint8_t* starts, const DeltaRuleShape& s,
                         Workspace ws);

// The span's affine pair S_out = A S_in + state_out (written): A (B, HV, dk, dk) = M_{N-1} ... M_0 with
// M_t = alpha_t (I - beta_t k_t k_t^T), 0 for a row holding a document start; state_out (B, HV, dk, dv) the state
// from nothing (delta_rule_forward's), or null (then v may be null). One sweep shares the chunk factors: chunk by
// chunk [S | X] <- gamma_end [S | X] + K~^T ([U | 0] - W [S | X]) from [0 | I].
void delta_rule_summary(float* A, float* state_out, const float* k, const float* v, const float* beta, const float* g,
                        const uint8_t* starts, const DeltaRuleShape& s, Workspace ws);
// Its adjoint: dk, dbeta, dg += the gradients of <dA, A> (nothing for a row holding a start, whose A is 0).
void delta_rule_transition_backward(float* dk, float* dbeta, float* dg, const float* dA, const float* k,
                                    const float* beta, const float* g, const uint8_t* starts,
                                    const DeltaRuleShape& s, Workspace ws);

}  // namespace lasp
