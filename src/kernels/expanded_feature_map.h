// The row feature maps of Based and Rebased (../shared/design/FEATURE_MAPS.md): each head's f raw values x
// (a query or key row) become D' features phi(x), in Linear-MoE's order:
//   based:   [ 1 | x / f^(1/4) | x_i^2 / sqrt(2f) (i = 0..f-1) | x_i x_j / sqrt(f) (i < j, row-major) ]
//            D' = 1 + f + f(f+1)/2;  phi(q).phi(k) = 1 + s + s^2/2,  s = q.k / sqrt(f)
//   rebased: y = (x - mean(x)) / sqrt(var(x) + 1e-6) * gamma + beta   (biased variance; gamma, beta (f) shared
//            by q, k and every head), then [ y_i^2 / sqrt(f) | sqrt(2/f) y_i y_j (i < j, row-major) ]
//            D' = f(f+1)/2;          phi(q).phi(k) = (y_q . y_k)^2 / f
// The compact form folds the f^2 outer product's x_i x_j and x_j x_i into one feature (times sqrt 2): the
// same kernel with about half the features.
//
// Every function here is also split at the map's "kernel input" u: u = x for based, u = y (rebased's
// LayerNorm of x) for rebased. phi depends on u alone, and so does the kernel phi(a).phi(b), which a chunked
// kernel computes from the raw u rows (B^2 f work) instead of expanding (B^2 D'). A rebased caller
// normalizes with rebased_norm_forward, works on y, and brings dy back to dx, dgamma, dbeta with
// rebased_norm_backward; expanded_map_forward/backward do both steps for whole rows of x.
//
// Layouts: rows of f values at a row stride (so one head's columns of a [N, H*f] tensor can be passed
// directly); gradients share their input's stride; phi rows are D' floats apart, scores nb floats apart.
// All fp32, serial (callers parallelize over heads and blocks), no allocation; backwards accumulate (+=).
#pragma once
#include <cstddef>
#include <string>

#include "core/workspace.h"

namespace lasp {

enum class ExpandedKind { based, rebased };

// "based", "rebased"; anything else throws lasp::Error listing the allowed values.
ExpandedKind expanded_kind_from_string(const std::string& name);
const char* to_string(ExpandedKind kind);

constexpr float kRebasedNormEps = 1e-6f;  // Linear-MoE's layer_norm_fn in RebasedFeatureMap

// D': based 1 + f + f(f+1)/2, rebased f(f+1)/2. f must be >= 1.
long expanded_features(int f, ExpandedKind kind);

// ---------------------------------------------------------------------------------------------------------
// The whole map on rows of raw x (rebased: LayerNorm included). gamma, beta (f): rebased only (null for based).

// Floats of workspace for expanded_map_forward/backward: 2f for rebased (one row's y and dy), 0 for based.
size_t expanded_map_workspace_floats(int f, ExpandedKind kind);

// phi (n, D') = phi(x); x (n rows at x_stride >= f).
void expanded_map_forward(float* phi, const float* x, const float* gamma, const float* beta, long n, long x_stride,
                          int f, ExpandedKind kind, Workspace ws);

// The vector-Jacobian product: given g = dL/dphi (n, D'), dx (rows at x_stride) += dL/dx; rebased also
// dgamma (f) += dL/dgamma, dbeta (f) += dL/dbeta, summed over the n rows (null for based).
void expanded_map_backward(float* dx, float* dgamma, float* dbeta, const float* g, const float* x,
                           const float* gamma, const float* beta, long n, long x_stride, int f, ExpandedKind kind,
                           Workspace ws);

// ---------------------------------------------------------------------------------------------------------
// The pieces.

// Rebased's LayerNorm: y (n rows at y_stride) = (x - mean) / sqrt(var + 1e-6) * gamma + beta, per row of x.
// y may equal x when the strides match.
void rebased_norm_forward(float* y, const float* x, const float* gamma, const float* beta, long n, long x_stride,
                          long y_stride, int f);
// dx (rows at x_stride) += dL/dx, dgamma (f) += dL/dgamma, dbeta (f) += dL/dbeta, given dy (rows at y_stride).
void rebased_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                           const float* gamma, long n, long x_stride, long y_stride, int f);

// phi (n, D') from the kernel input u (n rows at u_stride): based's whole map, or rebased's after its norm.
void expanded_phi_forward(float* phi, const float* u, long n, long u_stride, int f, ExpandedKind kind);
// du (rows at u_stride) += g . dphi/du, g (n, D'). du must not alias u or g.
void expanded_phi_backward(float* du, const float* g, const float* u, long n, long u_stride, int f,
                           ExpandedKind kind);

// The kernel of raw rows, never expanded: scores (na, nb; row-major) = phi(a_i) . phi(b_j) for kernel inputs
// a (na rows at a_stride) and b (nb rows at b_stride): based 1 + s + s^2/2 with s = a_i.b_j / sqrt(f),
// rebased (a_i.b_j)^2 / f. B^2 f work.
void expanded_kernel_forward(float* scores, const float* a, const float* b, long na, long nb, long a_stride,
                             long b_stride, int f, ExpandedKind kind);
// Given dscores (na, nb): da (rows at a_stride) += dL/da, db (rows at b_stride) += dL/db. a and b may be the
// same rows (da and db then the same buffer, too: both contributions add up); the gradients must not alias
// a, b or dscores.
void expanded_kernel_backward(float* da, float* db, const float* dscores, const float* a, const float* b, long na,
                              long nb, long a_stride, long b_stride, int f, ExpandedKind kind);

// ---------------------------------------------------------------------------------------------------------
// Column forms, for chunked kernels: a block's rows are the columns (rows of a matrix transposed), so that every
// loop runs along the block's rows and vectorizes over them, and phi^T is the operand the products want.

// phit (D', n; its rows ldp apart) = phi of the n kernel inputs given as columns ut (f, n; rows ldu apart).
void expanded_phi_forward_columns(float* phit, long ldp, const float* ut, long ldu, long n, int f, ExpandedKind kind);
// dut (f, n; rows ldu apart) += the gradient of the inputs ut, given gt = dL/dphi (D', n; rows ldg apart).
// dut must not alias ut or gt.
void expanded_phi_backward_columns(float* dut, const float* gt, long ldg, const float* ut, long ldu, long n, int f,
                                   ExpandedKind kind);

// The kernel as a function of the raw dot product t = a.b (what a product of raw rows gives, B^2 f work):
// x[i] = based 1 + t/sqrt(f) + t^2/(2f), rebased t^2/f, in place on n values.
void expanded_kernel_of_dots(float* x, long n, int f, ExpandedKind kind);
// Its derivative times the scores' gradient: w[i] = ds[i] * dkernel/dt(t[i]) (based (1 + t/sqrt f)/sqrt f,
// rebased 2t/f), n values; w may equal ds.
void expanded_kernel_of_dots_backward(float* w, const float* ds, const float* t, long n, int f, ExpandedKind kind);

}  // namespace lasp
