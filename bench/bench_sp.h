// `lasp bench sp`: every sequence-parallel method on the same models, sequence lengths and world (the
// ranks of the current mpirun), several repeats each: tokens/s (median), forward and backward time, time in
// communication vs compute, bytes sent/received per rank per attention layer (the busiest rank), peak
// resident memory per rank, and what a linear layer's state is (H x dk x dv floats, each way under LASP-2). Rank 0 writes PREFIX.csv and PREFIX.json and draws PREFIX_tokens.png (tokens/s vs N per method)
// and PREFIX_bytes.png (bytes per rank vs N, log axis) with gnuplot.
#pragma once
#include <string>
#include <vector>

#include "comm/comm.h"
#include "sp/methods.h"

namespace lasp {

struct SpBenchOptions {
  std::vector<std::string> methods;  // names of sp/methods.h; empty: every method
  std::vector<int> seq_lens = {4096, 16384};
  std::vector<std::string> models = {"LLLL", "LLLN"};  // pure linear and the 1/4 hybrid
  int repeats = 3;
  int scan_slices = kAllScanSlices;  // allscan's K
  std::string decay = "none";         // the linear layers' decay (gla: GATES.md's gates)
  std::string feature_map;            // empty: the default; based | rebased: expanded rows (FEATURE_MAPS.md)
  int feature_dim = 16;               // based | rebased: q and k values per head
  std::string out_prefix = "bench_sp";
};

void bench_sp(const SpBenchOptions& options, Comm& world);

}  // namespace lasp
