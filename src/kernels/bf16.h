// bfloat16: the upper 16 bits of an fp32 (8 exponent bits, 7 mantissa bits), rounded to nearest even. Matrix
// products on bf16 operands accumulate in fp32 through oneDNN's matmul: AMX tiles where the CPU has them,
// AVX-512-BF16 instructions otherwise. Everything else in lasp stays fp32.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lasp {

using bf16 = uint16_t;

// Round to nearest even; NaN stays NaN (quieted), infinities stay infinite, a finite value that rounds past
// the largest bf16 becomes infinity, as IEEE rounding does.
bf16 to_bf16(float x);
float from_bf16(bf16 x);
void to_bf16(bf16* dst, const float* src, size_t n);  // AVX-512 when the CPU has it, in parallel for long runs
void to_bf16_serial(bf16* dst, const float* src, size_t n);  // on the calling thread (a block of a parallel loop)
void from_bf16(float* dst, const bf16* src, size_t n);

// C (M x N, fp32) = alpha * op(A) op(B) + beta * C with A and B in bf16, row-major, as gemm() (kernels/gemm.h).
// Throws where the CPU has no bf16 products (bf16_path() says "none").
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda, const bf16* B,
               int ldb, float beta, float* C, int ldc);
// The same with C = alpha op(A) op(B) written rounded to bf16 (to nearest even), for a product whose output is only
// read as bf16 or rounded right after (half the bytes to write and to read back).
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const bf16* A, int lda, const bf16* B,
               int ldb, bf16* C, int ldc);

// The path gemm_bf16 takes on this CPU: "AMX", "AVX-512-BF16" or "none" (for `lasp info` and the errors).
const char* bf16_path();

}  // namespace lasp
