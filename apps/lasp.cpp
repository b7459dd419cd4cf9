// lasp: one binary, subcommands. Errors print "lasp: error: ..." and exit non-zero.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "bench_kernels.h"
#include "core/check.h"
#include "kernels/gemm.h"

namespace {

void print_kernel_bench_text(const nlohmann::ordered_json& r) {
  std::printf("FP32 FMA peak: %.1f GFLOP/s (1 thread), %.1f GFLOP/s (%d threads)\n",
              r["peak_fp32_gflops"]["1"].get<double>(), r["peak_fp32_gflops"]["all"].get<double>(),
              r["config"]["threads_all"].get<int>());
  for (const char* kernel : {"linear_attention", "softmax_attention"})
    for (const char* t : {"1", "all"})
      std::printf("%-18s %-3s threads: %8.1f GFLOP/s  %10.0f tokens/s\n", kernel, t,
                  r[kernel][t]["gflops"].get<double>(), r[kernel][t]["tokens_per_s"].get<double>());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lasp: linear-attention and hybrid language models on long sequences, sequence-parallel (LASP-2)"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "OpenMP threads (0 = every core)")->default_val(0)->check(CLI::NonNegativeNumber);

  auto* info = app.add_subcommand("info", "version, BLAS, CPU features, threads");

  auto* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  auto* bench_kernels_cmd = bench->add_subcommand("kernels", "attention kernels vs the FP32 FMA peak");
  lasp::KernelBenchOptions kopt;
  bool json = false, quick = false;
  bench_kernels_cmd->add_flag("--json", json, "print one JSON object");
  bench_kernels_cmd->add_flag("--quick", quick, "small sizes (N=1024, 1 repeat): a smoke test");
  bench_kernels_cmd->add_option("--seq-len", kopt.N, "sequence length N")->default_val(kopt.N)->check(CLI::PositiveNumber);
  bench_kernels_cmd->add_option("--heads", kopt.H, "heads H")->default_val(kopt.H)->check(CLI::PositiveNumber);
  bench_kernels_cmd->add_option("--head-dim", kopt.d, "head dim d")->default_val(kopt.d)->check(CLI::PositiveNumber);
  bench_kernels_cmd->add_option("--block", kopt.linear_block, "linear attention block size")
      ->default_val(kopt.linear_block)->check(CLI::PositiveNumber);
  bench_kernels_cmd->add_option("--repeats", kopt.repeats, "runs per measurement (median)")
      ->default_val(kopt.repeats)->check(CLI::PositiveNumber);

  CLI11_PARSE(app, argc, argv);
  try {
    if (threads > 0) omp_set_num_threads(threads);
    if (*info) {
      std::printf("lasp %s\nBLAS: %s\nthreads: %d of %d cores\n", LASP_VERSION, lasp::blas_config(),
                  omp_get_max_threads(), omp_get_num_procs());
    } else if (*bench_kernels_cmd) {
      if (quick) kopt.N = 1024, kopt.repeats = 1;
      kopt.threads = threads;
      const nlohmann::ordered_json r = lasp::bench_kernels(kopt);
      if (json) std::cout << r.dump() << std::endl;
      else print_kernel_bench_text(r);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lasp: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
