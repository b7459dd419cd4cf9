// Products of small bf16 tiles with fp32 accumulation on AVX-512-BF16 (vdpbf16ps: each fp32 lane adds two bf16
// products), for the cache-resident tiles of the softmax attention kernel under --precision bf16: twice the fp32
// FMA's products per instruction.
// Operands, K counted in pairs (K2 = K/2, K padded to even with zeros by the packers):
//   A  M x K bf16, row-major (lda even): each row's pair (a[2p], a[2p+1]) is read as one 32-bit word;
//   B  packed in pairs: K2 x N words (ldb words apart), word (p, j) = (b[2p][j], b[2p+1][j]).
// C (M x N, fp32) = alpha A B + beta C.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/bf16.h"

namespace lasp {

// False where this build has no AVX-512-BF16 (the caller then multiplies in fp32).
bool bf16_tiles_available();

void bf16_tile_product(int M, int N, int K2, float alpha, const bf16* A, int lda, const uint32_t* B, int ldb,
                       float beta, float* C, int ldc);

// The packers round to nearest even (as to_bf16, but denormals flush to zero). `rows` rows of `cols` fp32 values, `ld` floats apart:
//   as an A operand: dst (rows x padded) bf16, padded = cols rounded up to even, the pad zero;
//   as a B operand whose K runs along the rows (B = X): dst ((rows + 1) / 2 x cols) words, a pad row of zeros;
//   as a B operand whose K runs along the columns (B = X^T): dst ((cols + 1) / 2 x rows) words; `scratch` holds
//   rows x padded bf16.
void pack_bf16_rows(bf16* dst, const float* src, size_t ld, int rows, int cols);
void pack_bf16_pairs(uint32_t* dst, const float* src, size_t ld, int rows, int cols);
void pack_bf16_pairs_transposed(uint32_t* dst, bf16* scratch, const float* src, size_t ld, int rows, int cols);

}  // namespace lasp
