#include "bench_project.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kernels/delta_rule.h"
#include "kernels/gemm.h"
#include "kernels/linear_attention.h"
#include "kernels/masked_product.h"
#include "sp/methods.h"

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
  double delta, summary;        // seconds per token and head at d_k = d_v = 128: the gated delta rule's kernel
                                // (forward + backward), a piece's summary into (A_r, B_r) and its adjoint
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
    const LinearAttentionShape s{1, C, H, d, d, kLinearBlock, threads};
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
  {  // decay gdn: LASP-2's kernel calls on a piece (sp/lasp2_linear.cpp); beta 0.5, log-gates -0.01
    const DeltaRuleShape s{1, C, H, H, d, d, kDeltaBlock, threads};
    WorkspaceBuffer ws(std::max({delta_rule_forward_workspace_floats(s), delta_rule_backward_workspace_floats(s),
                                 delta_rule_summary_workspace_floats(s)}));
    std::vector<float> beta(size_t(C) * H, 0.5f), lg(beta.size(), -0.01f), db(beta.size()), dg(beta.size()),
        state(size_t(H) * d * d), dstate(state.size()), A(state.size());
    const double per = double(C) * H;
    r.delta = 1 / rate(per, [&] {
      delta_rule_forward(o.data(), nullptr, q.data(), k.data(), v.data(), beta.data(), lg.data(), nullptr, nullptr, s,
                         ws.view());
      delta_rule_backward(dq.data(), dk.data(), dv.data(), db.data(), dg.data(), nullptr, g.data(), nullptr, q.data(),
                          k.data(), v.data(), beta.data(), lg.data(), nullptr, nullptr, s, ws.view());
    });
    r.summary = 1 / rate(per, [&] {
      delta_rule_summary(A.data(), state.data(), k.data(), v.data(), beta.data(), lg.data(), nullptr, s, ws.view());
      delta_rule_backward(nullptr, nullptr, nullptr, nullptr, nullptr, dstate.data(), g.data(), nullptr, q.data(),
                          k.data(), v.data(), beta.data(), lg.data(), state.data(), nullptr, s, ws.view());
    });
  }
  return r;
}

}  // namespace

void bench_project(const ProjectOptions& o) {
  std::printf("measuring this machine's compute rates ...\n");
  const Rates r = measure();
  std::printf("  projections (GEMM) %.1f GFLOP/s, chunkwise linear attention %.1f, masked left product %.1f\n",
              r.gemm / 1e9, r.linear / 1e9, r.masked / 1e9);
  std::printf("  gated delta rule (d_k = d_v = 128): %.2f us per token and head forward + backward, and %.2f more for\n"
              "  a piece's summary into (A_r, B_r) and its adjoint\n\n", r.delta * 1e6, r.summary * 1e6);
  // Linear-Llama3-1B of the paper.
  const double L = 16, D = 2048, H = 16, d = 128, F = 8192, V = 128256;
  const double dense_flops_per_token = 3 * (L * (2 * D * 4 * D + 2 * 3 * D * F) + 2 * D * V);  // fwd + bwd

  double speed = 1;  // compute rates multiplied by this (an accelerator-class device)
  // Every method of the registry (sp/methods.h), each with its own cost of a layer.
  // gdn: the linear layers run the gated delta rule (their extra projections, beta and the log-gates, and the
  // short convolutions are left out of the dense work: under 1% of it).
  auto tokens_per_s = [&](const SpMethod& m, double W, double N, bool gdn = false) {
    const double C = N / W;
    const bool crosses = W > o.ranks_per_node;
    LayerCostInputs in{W, N, C, H, d, d, 0, 0, 0, 0};
    in.beta = (crosses ? o.link_gbit : o.intra_gbit) * 1e9 / 8;  // bytes/s of the slowest ring link
    in.alpha = (crosses ? o.latency_us : 1.0) * 1e-6;
    in.chunked = 3 * 4.0 * C * d * (64 + d) * H / (r.linear * speed);  // per layer, fwd + bwd
    in.masked_block = 7 * 2.0 * C * C * d * H / (r.masked * speed);    // one full C x C block, fwd + bwd
    if (gdn) in.delta = true, in.chunked = C * H * r.delta / speed, in.summary = C * H * r.summary / speed;
    const double dense = C * dense_flops_per_token / (r.gemm * speed);
    return N / (dense + L * m.layer_seconds(in));
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
    for (const SpMethod& m : sp_methods()) std::printf(" %12s", m.name.c_str());
    std::printf("\n");
    for (double W : {16.0, 32.0, 64.0, 128.0, 256.0})
      for (double N : {65536.0, 524288.0, 2097152.0, 8388608.0}) {
        std::printf("%6.0f %8.0fK", W, N / 1024);
        for (const SpMethod& m : sp_methods()) std::printf(" %12.0f", tokens_per_s(m, W, N));
        std::printf("\n");
      }
    std::printf("\nthe same with Gated DeltaNet's linear layers (decay gdn: (A_r, B_r) pairs of 16 x 128 x 256 floats,\n"
                "the summary pass), under the methods with a full transition\n\n%6s %9s", "ranks", "N");
    for (const SpMethod& m : sp_methods())
      if (m.runs(Transition::full)) std::printf(" %12s", m.name.c_str());
    std::printf("\n");
    for (double W : {16.0, 64.0, 256.0})
      for (double N : {524288.0, 2097152.0, 8388608.0}) {
        std::printf("%6.0f %8.0fK", W, N / 1024);
        for (const SpMethod& m : sp_methods())
          if (m.runs(Transition::full)) std::printf(" %12.0f", tokens_per_s(m, W, N, true));
        std::printf("\n");
      }
    // The papers' measurements beside the projection at their sizes.
    std::printf("\n%-58s %10s  %s\n", "speed-up", "projected", "measured by the paper");
    for (const PaperClaim& claim : sp_paper_claims()) {
      const SpMethod* versus = nullptr;
      if (!claim.versus.empty()) versus = &find_sp_method(claim.versus);
      else  // the best method published before the state scans
        for (const SpMethod& m : sp_methods())
          if (!m.state_scan && (!versus || tokens_per_s(m, claim.W, claim.N) > tokens_per_s(*versus, claim.W, claim.N)))
            versus = &m;
      const double ratio = tokens_per_s(find_sp_method(claim.method), claim.W, claim.N) / tokens_per_s(*versus, claim.W, claim.N);
      const std::string what = fmt::format("{} vs {}{}, {:.0f} ranks, N={:.0f}K", claim.method, versus->name,
                                           claim.versus.empty() ? " (the best earlier)" : "", claim.W, claim.N / 1024);
      std::printf("  %-56s %+9.1f%%  %+.1f%% (%s)\n", what.c_str(), 100 * (ratio - 1), claim.percent,
                  claim.source.c_str());
    }
  }
  std::printf("\nRing and AllGather use the masked left product (no right-product trick, as in the paper's\n"
              "baseline), so their compute grows with N; the paper's GPUs narrow that gap with far higher FLOP/s.\n");
}

}  // namespace lasp
