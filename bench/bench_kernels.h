// `lasp bench kernels`: times forward + backward of the attention kernels (median of several runs) on one
// thread and on all threads, next to the machine's FP32 FMA peak measured in the same run.
// FLOPs are counted by fixed formulas whatever block size the kernels use:
//   linear attention  4 N d (64 + d) H forward, twice that backward;
//   softmax attention 2 N^2 d H forward (causal), 2.5 times that backward.
#pragma once
#include <nlohmann/json.hpp>

#include "kernels/linear_attention.h"

namespace lasp {

struct KernelBenchOptions {
  int B = 1, H = 8, d = 64, N = 16384;
  int linear_block = kLinearBlock;  // block size of the chunkwise linear attention
  int repeats = 3;        // runs per measurement; the median is reported
  int threads = 0;        // "all": 0 means every core
};

nlohmann::ordered_json bench_kernels(const KernelBenchOptions& options);

}  // namespace lasp
