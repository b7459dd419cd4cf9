#include "bench_kernels.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/gemm.h"
#include "kernels/delta_rule.h"
#include "kernels/gla.h"
#include "kernels/l2_norm.h"
#include "kernels/linear_attention.h"
#include "kernels/bf16_tile.h"
#include "kernels/softmax_attention.h"
#include "peak.h"

namespace lasp {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<float> random_values(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Runs `step` (forward + backward) `repeats` times after one warm-up; returns the median seconds.
double time_median(int repeats, const std::function<void()>& step) {
  step();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    t.push_back(seconds_since(t0));
  }
  return median(t);
}

nlohmann::ordered_json rate(double flops, double tokens, double seconds) {
  return {{"gflops", flops / seconds / 1e9}, {"tokens_per_s", tokens / seconds}, {"seconds", seconds}};
}

// decay: none (the kernel's plainest form) or lightning (issue 13's yardstick for GLA).
nlohmann::ordered_json bench_linear(const KernelBenchOptions& o, int threads, Decay decay = Decay::none) {
  omp_set_num_threads(threads);
  const size_t n = size_t(o.B) * o.N * o.H * o.d;
  // Inputs as a feature map would give them: small and mostly positive, so nothing overflows.
  auto q = random_values(n, 1, 0.1f), k = random_values(n, 2, 0.1f), v = random_values(n, 3, 1.f),
       g = random_values(n, 4, 1.f);
  std::vector<float> out(n), dq(n), dk(n), dv(n);
  const LinearAttentionShape s{o.B, o.N, o.H, o.d, o.d, o.linear_block, threads};
  WorkspaceBuffer wf(linear_attention_forward_workspace_floats(s));
  WorkspaceBuffer wb(linear_attention_backward_workspace_floats(s));
  std::vector<float> lambda(o.H);
  linear_attention_decays(lambda.data(), o.H, decay);
  const float* l = decay == Decay::none ? nullptr : lambda.data();
  const double sec = time_median(o.repeats, [&] {
    linear_attention_forward(out.data(), nullptr, q.data(), k.data(), v.data(), nullptr, l, nullptr, s, wf.view());
    linear_attention_backward(dq.data(), dk.data(), dv.data(), nullptr, g.data(), nullptr, q.data(), k.data(),
                              v.data(), nullptr, l, nullptr, s, wb.view());
  });
  const double fwd = 4.0 * o.N * o.d * (64.0 + o.d) * o.H * o.B;
  return rate(3 * fwd, double(o.B) * o.N, sec);
}

// Based or Rebased (expanded features, FEATURE_MAPS.md) beside it: q, k of feature_dim f raw values per head, the
// kernel expanding them to D' features block by block, values d + 1 wide (v with the normalizer's ones column);
// no decay, as neither kind decays. q, k uniform in [-0.5, 0.5] (Based) or [-1, 1] (Rebased's rows after its
// LayerNorm, the caller's step).
nlohmann::ordered_json bench_expanded(const KernelBenchOptions& o, int threads, ExpandedKind kind, int f) {
  omp_set_num_threads(threads);
  const int D = int(expanded_features(f, kind)), dv = o.d + 1;
  const size_t nk = size_t(o.B) * o.N * o.H * f, nv = size_t(o.B) * o.N * o.H * dv;
  const float scale = kind == ExpandedKind::based ? 0.5f : 1.f;
  auto q = random_values(nk, 1, scale), k = random_values(nk, 2, scale), v = random_values(nv, 3, 1.f),
       g = random_values(nv, 4, 1.f);
  std::vector<float> out(nv), dq(nk), dk(nk), dv_(nv);
  const LinearAttentionShape s{o.B, o.N, o.H, D, dv, o.linear_block, threads, f, kind};
  WorkspaceBuffer wf(linear_attention_forward_workspace_floats(s));
  WorkspaceBuffer wb(linear_attention_backward_workspace_floats(s));
  const double sec = time_median(o.repeats, [&] {
    linear_attention_forward(out.data(), nullptr, q.data(), k.data(), v.data(), nullptr, nullptr, nullptr, s, wf.view());
    linear_attention_backward(dq.data(), dk.data(), dv_.data(), nullptr, g.data(), nullptr, q.data(), k.data(),
                              v.data(), nullptr, nullptr, nullptr, s, wb.view());
  });
  // The linear kernel's count with key width D' and value width d + 1, the intra-block scores at width f:
  // 2 N H (2 D' (d+1) + 64 (f + d + 1)) forward, twice that backward.
  const double fwd = 2.0 * o.N * o.H * o.B * (2.0 * D * dv + 64.0 * (f + dv));
  nlohmann::ordered_json r = rate(3 * fwd, double(o.B) * o.N, sec);
  r["feature_dim"] = f;
  r["features"] = D;
  r["value_width"] = dv;
  return r;
}

// GLA on the same shape, log-gates as logsigmoid(x) / 16 gives them for x ~ N(0, 1) (kGlaBlock).
nlohmann::ordered_json bench_gla(const KernelBenchOptions& o, int threads) {
  omp_set_num_threads(threads);
  const size_t n = size_t(o.B) * o.N * o.H * o.d;
  auto q = random_values(n, 1, 0.1f), k = random_values(n, 2, 0.1f), v = random_values(n, 3, 1.f),
       dout = random_values(n, 4, 1.f), x = random_values(n, 5, 1.f);
  std::vector<float> gates(n), out(n), dq(n), dk(n), dv(n), dg(n);
  for (size_t i = 0; i < n; ++i) gates[i] = -std::log1p(std::exp(-x[i])) / 16;
  const LinearAttentionShape s{o.B, o.N, o.H, o.d, o.d, kGlaBlock, threads};
  WorkspaceBuffer wf(gla_forward_workspace_floats(s)), wb(gla_backward_workspace_floats(s));
  const double sec = time_median(o.repeats, [&] {
    gla_forward(out.data(), nullptr, q.data(), k.data(), v.data(), gates.data(), nullptr, nullptr, s, wf.view());
    gla_backward(dq.data(), dk.data(), dv.data(), dg.data(), nullptr, dout.data(), nullptr, q.data(), k.data(),
                 v.data(), gates.data(), nullptr, nullptr, s, wb.view());
  });
  const double fwd = 4.0 * o.N * o.d * (64.0 + o.d) * o.H * o.B;  // counted as the linear kernel's, for the ratio
  return rate(3 * fwd, double(o.B) * o.N, sec);
}

// The gated delta rule (Gated DeltaNet, DELTA.md) on the same shape, HV = H, d_k = d_v = d, chunks of 64: q, k
// L2-normed rows (q scaled by 1 / sqrt(d)), beta in (0, 1), log-gates -exp(A_log) softplus(z) as FLA's init
// gives them (A_log ~ log 8, dt ~ 0.01).
nlohmann::ordered_json bench_gdn(const KernelBenchOptions& o, int threads) {
  omp_set_num_threads(threads);
  const size_t n = size_t(o.B) * o.N * o.H * o.d, rows = size_t(o.B) * o.N * o.H;
  auto q = random_values(n, 1, 1.f), k = random_values(n, 2, 1.f), v = random_values(n, 3, 1.f),
       dout = random_values(n, 4, 1.f), b = random_values(rows, 5, 1.f);
  std::vector<float> rstd(rows), beta(rows), g(rows), out(n), dq(n), dk(n), dv(n), dbeta(rows), dg(rows);
  l2_norm_forward(q.data(), rstd.data(), q.data(), long(rows), o.d, kL2NormEps, 1.f / std::sqrt(float(o.d)), threads);
  l2_norm_forward(k.data(), rstd.data(), k.data(), long(rows), o.d, kL2NormEps, 1.f, threads);
  for (size_t i = 0; i < rows; ++i) beta[i] = gdn_beta(b[i]), g[i] = gdn_log_gate(std::log(std::expm1(0.01f)), std::log(8.f));
  const DeltaRuleShape s{o.B, o.N, o.H, o.H, o.d, o.d, kDeltaBlock, threads};
  WorkspaceBuffer wf(delta_rule_forward_workspace_floats(s)), wb(delta_rule_backward_workspace_floats(s));
  const double sec = time_median(o.repeats, [&] {
    delta_rule_forward(out.data(), nullptr, q.data(), k.data(), v.data(), beta.data(), g.data(), nullptr, nullptr, s,
                       wf.view());
    delta_rule_backward(dq.data(), dk.data(), dv.data(), dbeta.data(), dg.data(), nullptr, dout.data(), nullptr,
                        q.data(), k.data(), v.data(), beta.data(), g.data(), nullptr, nullptr, s, wb.view());
  });
  const double fwd = 4.0 * o.N * o.d * (64.0 + o.d) * o.H * o.B;  // counted as the linear kernel's, for the ratio
  return rate(3 * fwd, double(o.B) * o.N, sec);
}

nlohmann::ordered_json bench_softmax(const KernelBenchOptions& o, int threads) {
  omp_set_num_threads(threads);
  const size_t n = size_t(o.B) * o.N * o.H * o.d;
  auto q = random_values(n, 1, 1.f), k = random_values(n, 2, 1.f), v = random_values(n, 3, 1.f),
       g = random_values(n, 4, 1.f);
  std::vector<float> out(n), dq(n), dk(n), dv(n), lse(size_t(o.B) * o.H * o.N);
  std::vector<int> pos(o.N);
  std::iota(pos.begin(), pos.end(), 0);
  const SoftmaxAttentionShape s = softmax_shape(o.B, o.N, o.N, o.H, o.H, o.d, threads);
  WorkspaceBuffer w(softmax_attention_workspace_floats(o.N, o.N, o.d, threads));
  const auto step_seconds = [&](const SoftmaxAttentionShape& shape) {
    return time_median(o.repeats, [&] {
      softmax_attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), pos.data(), pos.data(), nullptr,
                                shape, w.view());
      softmax_attention_backward(dq.data(), dk.data(), dv.data(), g.data(), out.data(), lse.data(), q.data(),
                                 k.data(), v.data(), pos.data(), pos.data(), nullptr, shape, w.view());
    });
  };
  const double fwd = 2.0 * o.N * o.N * o.d * o.H * o.B;
  nlohmann::ordered_json r = rate(3.5 * fwd, double(o.B) * o.N, step_seconds(s));
  // The forward alone (two causal products: fwd counted flops), fp32 and, where the CPU has them, bf16 products
  // (with the forward and backward of those too).
  const auto forward_gflops = [&](const SoftmaxAttentionShape& shape) {
    return fwd / time_median(o.repeats, [&] {
      softmax_attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), pos.data(), pos.data(), nullptr,
                                shape, w.view());
    }) / 1e9;
  };
  r["forward_gflops"] = forward_gflops(s);
  if (bf16_tiles_available()) {
    SoftmaxAttentionShape bf = s;
    bf.bf16 = true;
    r["forward_bf16_gflops"] = forward_gflops(bf);
    r["bf16_gflops"] = 3.5 * fwd / step_seconds(bf) / 1e9;
  }
  return r;
}

// A projection of the model (tokens x 256 -> 768, as the MLP's gate and up), fp32 and bf16 operands.
nlohmann::ordered_json bench_projection(const KernelBenchOptions& o, int threads) {
  omp_set_num_threads(threads);
  const int T = 4096, in = 256, out = 768;
  const auto x = random_values(size_t(T) * in, 1, 1.f), w = random_values(size_t(out) * in, 2, 0.1f);
  std::vector<float> y(size_t(T) * out);
  const double flops = 2.0 * T * in * out;
  nlohmann::ordered_json r;
  r["fp32_gflops"] = flops / time_median(o.repeats, [&] {
    gemm(false, true, T, out, in, 1.f, x.data(), in, w.data(), in, 0.f, y.data(), out);
  }) / 1e9;
  if (std::string(bf16_path()) != "none") {
    std::vector<bf16> xb(x.size()), wb(w.size());
    to_bf16(xb.data(), x.data(), x.size());
    to_bf16(wb.data(), w.data(), w.size());
    r["bf16_gflops"] = flops / time_median(o.repeats, [&] {
      gemm_bf16(false, true, T, out, in, 1.f, xb.data(), in, wb.data(), in, 0.f, y.data(), out);
    }) / 1e9;
    // With the activation converted first, as a step that keeps fp32 activations would.
    r["bf16_with_conversion_gflops"] = flops / time_median(o.repeats, [&] {
      to_bf16(xb.data(), x.data(), x.size());
      gemm_bf16(false, true, T, out, in, 1.f, xb.data(), in, wb.data(), in, 0.f, y.data(), out);
    }) / 1e9;
  }
  return r;
}

}  // namespace

nlohmann::ordered_json bench_kernels(const KernelBenchOptions& o) {
  const int all = o.threads > 0 ? o.threads : omp_get_num_procs();
  const int saved = omp_get_max_threads();
  nlohmann::ordered_json result = {{"peak_fp32_gflops", {}}, {"linear_attention", {}}, {"softmax_attention", {}}};
  for (int t : {1, all}) {
    const std::string key = t == 1 ? "1" : "all";
    result["peak_fp32_gflops"][key] = fma_peak_gflops(t);
    result["linear_attention"][key] = bench_linear(o, t);
    result["linear_attention_lightning"][key] = bench_linear(o, t, Decay::lightning);
    result["gla"][key] = bench_gla(o, t);
    result["gla"]["tokens_vs_lightning_" + key] =
        result["gla"][key]["tokens_per_s"].get<double>() / result["linear_attention_lightning"][key]["tokens_per_s"].get<double>();
    result["gdn"][key] = bench_gdn(o, t);
    result["gdn"]["tokens_vs_lightning_" + key] =
        result["gdn"][key]["tokens_per_s"].get<double>() / result["linear_attention_lightning"][key]["tokens_per_s"].get<double>();
    for (ExpandedKind kind : {ExpandedKind::based, ExpandedKind::rebased}) {
      const char* name = to_string(kind);
      result[name][key] = bench_expanded(o, t, kind, o.feature_dim);
      result[name]["tokens_vs_lightning_" + key] =
          result[name][key]["tokens_per_s"].get<double>() / result["linear_attention_lightning"][key]["tokens_per_s"].get<double>();
    }
    result["softmax_attention"][key] = bench_softmax(o, t);
    result["projection_4096x256x768"][key] = bench_projection(o, t);
  }
  result["bf16_path"] = bf16_path();
  for (const char* kernel : {"linear_attention", "softmax_attention"})
    result[kernel]["fraction_of_peak_1_thread"] =
        result[kernel]["1"]["gflops"].get<double>() / result["peak_fp32_gflops"]["1"].get<double>();
  result["config"] = {{"B", o.B}, {"H", o.H}, {"H_kv", o.H}, {"d", o.d}, {"N", o.N},
                      {"linear_block", o.linear_block}, {"feature_dim", o.feature_dim}, {"repeats", o.repeats},
                      {"threads_all", all}};
  omp_set_num_threads(saved);
  return result;
}

}  // namespace lasp
