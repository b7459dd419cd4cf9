// The short causal depthwise convolution of Gated DeltaNet (../shared/design/DELTA.md), fp32. Per channel c of C,
// width K >= 1, weights w (C, K) row-major (nn.Conv1d's [C, 1, K] with groups = C and padding K-1, first N outputs):
//
//   y_t[c] = sum_{i<K} w[c, i] x_{t-K+1+i}[c]        (the last tap meets token t)
//
// Layouts: x, y and their gradients (B, N, C) rows of C floats; halo and tail (B, K-1, C).
// halo: the K-1 rows before token 0 of each batch row (from the previous rank or chunk; halo row j is position
// j - (K-1)), or null for zeros. Documents: starts (B, N) or null, as in linear_attention.h. Token t reads position
// u only if u >= first(t), the last start at or before t; with no start in [0, t] it reads the halo rows.
//
// Across spans (DELTA.md "The short convolution across ranks"): the sender passes short_conv_tail as the next span's
// halo, with every row before its last start zeroed, so the receiver needs no document knowledge. The receiver's
// dhalo goes back, and the sender adds it through short_conv_tail_backward (which drops the zeroed rows' share and
// passes the share of rows that came from its own halo on into its dhalo).
//
// Threads split channels into blocks: dw sums over batch rows and tokens without races. Every backward
// ACCUMULATES (+=) into its gradients; optional pointers may be null. Nothing is allocated.
#pragma once
#include <cstdint>

namespace lasp {

// y must not alias x or halo.
void short_conv_forward(float* y, const float* x, const float* w, const float* halo, const uint8_t* starts, int B,
                        int N, int C, int K, int threads);

// dx (B, N, C) += dL/dx, dw (C, K) += dL/dw (halo rows included), dhalo (B, K-1, C) += dL/dhalo (null: dropped).
// The gradients must not alias dy, x, w or halo, nor one another.
void short_conv_backward(float* dx, float* dw, float* dhalo, const float* dy, const float* x, const float* w,
                         const float* halo, const uint8_t* starts, int B, int N, int C, int K, int threads);

// tail (B, K-1, C), written: the rows the next span's tokens read as their halo, positions N-K+1 .. N-1 (from
// halo, or zeros if it is null, where N < K-1), every row before the row's last start zeroed. Also the decoder's
// conv cache after a prefill. tail must not alias x or halo.
void short_conv_tail(float* tail, const float* x, const float* halo, const uint8_t* starts, int B, int N, int C,
                     int K);

// The adjoint of short_conv_tail: dx (B, N, C) += dtail's rows from x, dhalo (B, K-1, C) += those from halo (null:
// dropped); the zeroed rows get nothing. dx and dhalo must not alias dtail.
void short_conv_tail_backward(float* dx, float* dhalo, const float* dtail, const uint8_t* starts, int B, int N, int C,
                              int K);

// One decoding token per batch row: y (B, C) = the conv over [cache | x_new], then the cache (B, K-1, C) shifts by
// one row, x_new (B, C) entering last. A document start is the caller's: it zeroes the row's cache first.
// y must not alias cache or x_new.
void short_conv_step(float* y, float* cache, const float* x_new, const float* w, int B, int C, int K);

}  // namespace lasp
