#include "bench_project.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/linear_attention.h"
#include "kernels/masked_product.h"

namespace lasp {

namespace {

double seconds(const std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best-of-3 rate in FLOP/s of a call doing `flops`.
template <class F>
double rate(double flops, F f) {
  f();
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, seconds(t0));
  }
  return flops / best;
}

struct Rates {
  double gemm, linear, masked;  // FLOP/s: projections, chunkwise linear attention (counted), masked product
};

Rates measure() {
  Rates r{};
  {  // the dense products of a layer: (T x D) x (D x D)
    const int T = 2048, D = 1024;
    std::vector<float> a(size_t(T) * D, 0.01f), b(size_t(D) * D, 0.02f), c(size_t(T) * D);
    r.gemm = rate(2.0 * T * D * D, [&] { gemm(false, true, T, D, D, 1.f, a.data(), D, b.data(), D, 0.f, c.data(), D); });
  }
  const int H = 16, d = 128, C = 2048, threads = omp_get_max_threads();
  std::vector<float> q(size_t(C) * H * d, 0.01f), k(q.size(), 0.02f), v(q.size(), 0.1f), o(q.size()), g(q.size(), 0.1f),
      dq(q.size()), dk(q.size()), dv(q.size());
  {
    const LinearAttentionShape s{1, C, H, d, kLinearBlock, threads};
    WorkspaceBuffer wf(linear_attention_forward_workspace_floats(s)), wb(linear_attention_backward_workspace_floats(s));
    r.linear = rate(3 * 4.0 * C * d * (64 + d) * H, [&] {
      linear_attention_forward(o.data(), nullptr, q.data(), k.data(), v.data(), nullptr, nullptr, nullptr, s, wf.view());
      linear_attention_backward(dq.data(), dk.data(), dv.data(), nullptr, g.data(), nullptr, q.data(), k.data(),
                                v.data(), nullptr, nullptr, nullptr, s, wb.view());
    });
  }
  {  // all keys visible (positions 0 for the keys, C for the queries): the full (C x C) product, fwd + bwd
    std::vector<int> qp(C, C), kp(C, 0);
    WorkspaceBuffer ws(masked_product_workspace_floats(C, C + 1, threads));
    r.masked = rate(7 * 2.0 * C * C * d * H, [&] {
      masked_product_forward(o.data(), q.data(), k.data(), v.data(), qp.data(), kp.data(), nullptr, 1, C, C, H, d, C + 1, nullptr,
                             threads, ws.view());
      masked_product_backward(dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(), qp.data(),
                              kp.data(), nullptr, 1, C, C, H, d, C + 1, nullptr, threads, ws.view());
    });
  }
  return r;
}

}  // namespace

void bench_project(const ProjectOptions& o) {
  std::printf("measuring this machine's compute rates ...\n");
  const Rates r = measure();
  std::printf("  projections (GEMM) %.1f GFLOP/s, chunkwise linear attention %.1f, masked left product %.1f\n\n",
              r.gemm / 1e9, r.linear / 1e9, r.masked / 1e9);
  // Linear-Llama3-1B of the paper.
  const double L = 16, D = 2048, H = 16, d = 128, F = 8192, V = 128256;
  const double dense_flops_per_token = 3 * (L * (2 * D * 4 * D + 2 * 3 * D * F) + 2 * D * V);  // fwd + bwd
  const char* methods[] = {"lasp2", "exscan", "allscan", "lasp1", "ring", "ulysses", "allgather"};

  double speed = 1;  // compute rates multiplied by this (an accelerator-class device)
  auto tokens_per_s = [&](const std::string& m, double W, double N) {
    const double C = N / W;
    const bool crosses = W > o.ranks_per_node;
    const double beta = (crosses ? o.link_gbit : o.intra_gbit) * 1e9 / 8;  // bytes/s of the slowest ring link
    const double alpha = (crosses ? o.latency_us : 1.0) * 1e-6;
    const double dense = C * dense_flops_per_token / (r.gemm * speed);
    const double chunked = 3 * 4.0 * C * d * (64 + d) * H / (r.linear * speed);  // per layer, fwd + bwd
    const double state = H * d * d * 4, kv = 2 * C * H * d * 4;        // bytes
    double layer = 0;
    // LASP-2 and its scans pass states each way, overlapped with the intra-chunk half of the compute.
    auto overlapped = [&](double pass) { return chunked + 2 * std::max(0.0, pass - 0.5 * chunked / 2); };
    if (m == "lasp2") {  // one all-gather of states
      layer = overlapped((W - 1) * (alpha + state / beta));
    } else if (m == "exscan") {  // recursive doubling (comm/mpi_comm.cpp): log2 W rounds of one (gate, state) pair
      layer = overlapped(std::ceil(std::log2(W)) * (alpha + state * (d + 1) / d / beta));
    } else if (m == "allscan") {  // W-1+K slice hops, K chosen best for W (--scan-slices)
      double best = 1e30;
      for (double K = 1; K <= 256; K *= 2) best = std::min(best, (W - 1 + K) * (alpha + state / K / beta));
      layer = overlapped(best);
    } else if (m == "lasp1") {  // 2 (W-1) dependent hops, nothing overlaps them
      layer = chunked + 2 * (W - 1) * (alpha + state / beta);
    } else if (m == "ring") {  // W steps bounded by the rank that sees every block; hops overlap its compute
      const double block = 7 * 2.0 * C * C * d * H / (r.masked * speed);  // fwd + bwd of one full block
      layer = W * std::max(block, alpha + kv / beta) + (W - 1) * (alpha + 2 * kv / beta);  // + dK,dV going home
    } else if (m == "ulysses") {  // 4 all-to-alls each way; the chunked kernel on H/W heads of the whole sequence
      const double a2a = (W - 1) * (alpha + C * H * d * 4 / W / beta);
      layer = chunked + 8 * a2a;
    } else {  // allgather: K, V of everyone, then the masked product over all earlier keys (last rank: all N)
      const double gather = (W - 1) * (alpha + kv / beta);
      layer = 2 * gather + 7 * 2.0 * C * N * d * H / (r.masked * speed);
    }
    return N / (dense + L * layer);
  };

  for (double scale : {1.0, o.accelerator_speedup}) {
    speed = scale;
    std::printf("\n== compute at %s ==\n", scale == 1 ? "this machine's measured rates"
                                                     : ("the measured rates x " + std::to_string(int(scale)) +
                                                        " (an accelerator-class device)").c_str());
    std::printf("projected training tokens/s of Linear-Llama3-1B, pure linear attention, batch 1\n");
    std::printf("(links: %.0f Gbit/s between nodes, %.0f Gbit/s inside, %.0f us latency, %d ranks per node)\n\n",
                o.link_gbit, o.intra_gbit, o.latency_us, o.ranks_per_node);
    std::printf("%6s %9s", "ranks", "N");
    for (const char* m : methods) std::printf(" %12s", m);
    std::printf("\n");
    for (double W : {16.0, 32.0, 64.0, 128.0, 256.0})
      for (double N : {65536.0, 524288.0, 2097152.0, 8388608.0}) {
        std::printf("%6.0f %8.0fK", W, N / 1024);
        for (const char* m : methods) std::printf(" %12.0f", tokens_per_s(m, W, N));
        std::printf("\n");
      }
    std::printf("\nLASP-2 speed-up at 64 ranks          projected    paper (64 A100, Linear-Llama3-1B)\n");
    for (double N : {524288.0, 2097152.0}) {
      const double l2 = tokens_per_s("lasp2", 64, N);
      const bool big = N > 1e6;
      std::printf("  vs LASP-1, N=%4.0fK                 %+8.1f%%    %+5.1f%%\n", N / 1024,
                  100 * (l2 / tokens_per_s("lasp1", 64, N) - 1), big ? 15.2 : 7.3);
      std::printf("  vs Ring Attention, N=%4.0fK         %+8.1f%%    %+5.1f%%\n", N / 1024,
                  100 * (l2 / tokens_per_s("ring", 64, N) - 1), big ? 36.6 : 17.8);
    }
  }
  // ZeCO (arXiv 2507.01004) reports All-Scan 60% faster than the best earlier SP at 256 GPUs and 8M tokens (GLA).
  for (double scale : {1.0, o.accelerator_speedup}) {
    speed = scale;
    const double W = 256, N = 8388608;
    double best_earlier = 0;
    std::string which;
    for (const char* m : {"lasp2", "lasp1", "ring", "ulysses", "allgather"})
      if (tokens_per_s(m, W, N) > best_earlier) best_earlier = tokens_per_s(m, W, N), which = m;
    std::printf("\nAll-Scan vs the best earlier method (%s) at 256 ranks, 8M tokens, compute x%.0f: %+.1f%% "
                "(ZeCO: +60%% on GLA, 256 GPUs)\n", which.c_str(), scale,
                100 * (tokens_per_s("allscan", W, N) / best_earlier - 1));
  }
  std::printf("\nRing and AllGather use the masked left product (no right-product trick, as in the paper's\n"
              "baseline), so their compute grows with N; the paper's GPUs narrow that gap with far higher FLOP/s.\n");
}

}  // namespace lasp
