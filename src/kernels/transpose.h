// dst (cols x rows, row stride ldd) = src^T (src rows x cols, row stride lds); 16 x 16 tiles in registers.
// The attention kernels transpose small blocks on every step, where scalar strided stores cost as much
// as the products they feed.
#pragma once

namespace lasp {

void transpose(float* dst, int ldd, const float* src, int lds, int rows, int cols);

}  // namespace lasp
