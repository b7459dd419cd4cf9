// `lasp bench kernels`: times forward + backward of the attention kernels (median of several runs) on one
// thread and on all threads, next to the machine's FP32 FMA peak measured in the same run.
// FLOPs are counted by fixed formulas whatever block size the kernels use:
//   linear attention  4 N d (64 + d) H forward, twice that backward;
//   softmax attention 2 N^2 d H forward (causal), 2.5 times that backward;
//   based / rebased   2 N H (2 D' (d+1) + 64 (f + d + 1)) forward, twice that backward (D' expanded features of
//                     f = feature_dim raw ones; values d + 1 wide, the normalizer's ones column), tokens/s also as
//                     a ratio to the lightning kernel's (issue 25: Based at f = 16, d = 64 >= 0.5x).
#pragma once
#include <nlohmann/json.hpp>

#include "kernels/linear_attention.h"

namespace lasp {

struct KernelBenchOptions {
  int B = 1, H = 8, d = 64, N = 16384;
  int linear_block = kLinearBlock;  // block size of the chunkwise linear attention
  int feature_dim = 16;   // Based / Rebased: raw q, k values per head (FLA's and Based's 16), values d + 1 wide
  int repeats = 3;        // runs per measurement; the median is reported
  int threads = 0;        // "all": 0 means every core
};

nlohmann::ordered_json bench_kernels(const KernelBenchOptions& options);

}  // namespace lasp
