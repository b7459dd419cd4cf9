// The BLAS seam: every matrix product in lasp goes through gemm(). Row-major, like the tensors.
// C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, op = transpose when trans_* is true.
// Small cache-resident products go to our register-blocked kernel (gemm_small.h), the rest to oneDNN's sgemm.
// Called inside an OpenMP parallel region it runs on one thread (oneDNN detects the region); called outside,
// it uses the OpenMP threads.
#pragma once
#include <initializer_list>

namespace lasp {

// Cache lines to fetch while a product computes: up to 8 regions of `rows` rows of `row_bytes` bytes,
// `stride` bytes apart. A kernel that streams blocks through one thread (the linear attention) would
// otherwise wait on memory for every block it gathers; the small-block product issues one of these
// prefetches every other step of its inner loop, which keeps memory busy without stalling the core.
struct PrefetchStream {
  struct Region {
    const char* base;
    long rows, row_bytes, stride;
  };
  Region regions[8];
  int count = 0, region = 0;
  long row = 0, offset = 0;

  void clear() { count = region = 0, row = offset = 0; }
  void add(const float* base, long rows, long row_floats, long stride_floats) {
    if (count < 8 && rows > 0) regions[count++] = {reinterpret_cast<const char*>(base), rows, row_floats * 4, stride_floats * 4};
  }
  void next() {
    if (region >= count) return;
    const Region& r = regions[region];
    __builtin_prefetch(r.base + row * r.stride + offset, 0, 2);  // into L2: a whole block outgrows L1
    if ((offset += 64) >= r.row_bytes) {
      offset = 0;
      if (++row == r.rows) row = 0, ++region;
    }
  }
};

// Work a product may skip because the caller's operands are triangular (the causal blocks of the attention
// kernels). Where the skipped work would not contribute zeros, the result is as without the hint.
enum class Skip {
  none,
  c_upper,  // entries of C above the diagonal (column > row) are not needed: they may be left as they were
  a_upper,  // op(A) is lower triangular (entries with k > row are zero)
  a_lower,  // op(A) is upper triangular (entries with k < row are zero)
};

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc, PrefetchStream* prefetch = nullptr,
          Skip skip = Skip::none);

// One term op(A) B of a sum of products: op(A) M x K, B row-major K x N (not transposed).
struct Product {
  bool trans_a;
  int K;
  const float* A;
  int lda;
  const float* B;
  int ldb;
  Skip skip = Skip::none;  // a_upper or a_lower (c_upper is for single products)
};

// C (M x N) = alpha * (op(A1) B1 + op(A2) B2) + beta * C, in one pass over C where it can: when C is a large
// strided tensor (the attention gradients), its rows are then read and written once instead of twice.
void gemm_sum(int M, int N, const Product& t1, const Product& t2, float alpha, float beta, float* C, int ldc,
              PrefetchStream* prefetch = nullptr);

// The library behind the seam and its version, for `lasp info`.
const char* blas_config();

}  // namespace lasp
