// The normalizer of Based and Rebased (FEATURE_MAPS.md) as one more value column: the values go in as
// v~ = [v | 1] per head, the linear attention gives Y = [n | s] (numerator and normalizer, one state), and the
// output is o = n / (s + eps), divided only after every part of Y (intra-block, inter-block, other ranks') is in.
// Rows: `rows` head rows (tokens x heads) of d values (v, o) or d + 1 (v~, Y), dense.
#pragma once
#include <cstddef>

namespace lasp {

// vt (rows, d + 1) = [v | 1], v (rows, d).
void normalizer_append_ones(float* vt, const float* v, size_t rows, int d);
// o (rows, d) = Y[:, :d] / (Y[:, d] + eps).
void normalizer_forward(float* o, const float* y, size_t rows, int d, float eps);
// dY (rows, d + 1) = [dO / (s + eps) | -(dO . o) / (s + eps)] with s = Y[:, d] (written).
void normalizer_backward(float* dy, const float* dout, const float* o, const float* y, size_t rows, int d, float eps);
// dst (rows, d) = src (rows, d + 1) without its last column: v~'s gradient to v's. dst may equal src.
void normalizer_drop_column(float* dst, const float* src, size_t rows, int d);

}  // namespace lasp
