// The algebra of a linear-attention state, the one contract between the kernels and everything that passes
// states on: thread pieces, memory-plan chunks, LASP-2's pieces and their transports, LASP-1's chain, decoding.
//
// A head's state S is d_k x d_v (rows: key dims, columns: value dims). Every linear-attention kind moves it
// through a span of tokens as an affine map S_out = A S_in + B, the span's PAIR (A, B), where B is the state
// the span builds from nothing and A its transition, of one of four forms:
//   identity   A = I                                     (no decay; 0 floats)
//   scalar     A = a I                                   (lightning, retention: lambda^L per head; 1 float)
//   diagonal   A = diag(a), a (d_k)                      (GLA: the gate product of each key dim; d_k floats)
//   full       A (d_k x d_k, row-major)                  (the delta rule: DELTA.md; d_k^2 floats)
// A document start inside a span is a zero transition: nothing from before it passes (pair_cut).
// Pairs compose in order, (A_1, B_1) then (A_2, B_2) = (A_2 A_1, A_2 B_1 + B_2): associative, not commutative,
// identity (I, 0). The backward runs the same algebra on adjoint pairs (A^T, dM) from the last span down:
// G_in = A^T G_out + dM, and the transition's own gradient is the projection of G_out S_in^T onto A's form.
//
// A pair is stored as A (transition_floats) followed by B (d_k x d_v, row-major): pair_floats in all. The
// functions here are for one head; the kernels keep their hot loops specialized per form.
#pragma once
#include <cstddef>

namespace lasp {

enum class Transition { identity, scalar, diagonal, full };
const char* to_string(Transition t);

struct StateForm {
  Transition transition = Transition::scalar;
  int dk = 0, dv = 0;
  size_t transition_floats() const;  // 0, 1, d_k or d_k^2
  size_t state_floats() const { return size_t(dk) * size_t(dv); }
  size_t pair_floats() const { return transition_floats() + state_floats(); }
  // Scratch floats the functions below need (full transitions: one d_k x max(d_k, d_v) product).
  size_t scratch_floats() const;
};

// A is the identity (I, scalar 1, ones; nothing for identity) and B = 0.
void pair_identity(const StateForm& f, float* pair);
// The transition of a pair becomes 0 (a document start in the span); B stays. Not for the identity form, which
// cannot hold a cut: spans with documents and no decay take the scalar form (1, or 0 across a start).
void pair_cut(const StateForm& f, float* pair);
// then <- first followed by then: (A_t A_f, A_t B_f + B_t). first and then must not overlap.
void compose_pairs(const StateForm& f, const float* first, float* then, float* scratch);

// S <- A S + B with the pair's (A, B): the state leaving the span from the state entering it. (Adjoint: the
// gradient entering the span, G <- A^T G + dM, is the same call on the adjoint pair.)
void advance_state(const StateForm& f, float* S, const float* pair, float* scratch);
// The same with A and B apart (B must not overlap S).
void advance_state(const StateForm& f, float* S, const float* A, const float* B, float* scratch);
// out (d_k x d_v) = A S, or out += A S (accumulate). A: the transition part of a pair.
void apply_transition(const StateForm& f, float* out, const float* A, const float* S, bool accumulate,
                      float* scratch);
// A^T in place (full transitions; the others are symmetric): a forward pair's transition becomes its adjoint's.
void transpose_transition(const StateForm& f, float* A);
// dA += d<G, A S>/dA projected onto A's form: scalar sum(G .* S), diagonal rowsum(G .* S), full G S^T.
void add_transition_gradient(const StateForm& f, float* dA, const float* G, const float* S);

}  // namespace lasp
