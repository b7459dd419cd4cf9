// Gated DeltaNet's inputs to the delta rule (../shared/design/DELTA.md "Forward, per token"), per linear layer:
//   q = l2(silu(conv_q(W_q xn))) / sqrt(d_k),  k = l2(silu(conv_k(W_k xn))),  v = silu(conv_v(W_v xn)),
//   beta = sigmoid(W_b xn),  g = -exp(A_log) softplus(W_a xn + dt_bias)   (per value head and token)
// and their backward. The convolutions restart at every document start; the rest of the layer (the delta rule
// through the Attention seam, the output norm and gate, o_proj) is the linear layer's.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/delta_rule.h"
#include "kernels/feature_map.h"
#include "kernels/l2_norm.h"
#include "kernels/short_conv.h"
#include "model/model.h"

namespace lasp {

// y = silu(conv(x)) of one input (conv_size 0: y = silu(x)); the conv output (silu's input) into c, the rows before
// each run (from the attention: another rank's or chunk's) into halo.
void Model::conv_silu_forward(int conv, float* y, float* c, float* halo, float* tail, const float* x, const float* w,
                              int C) {
  const int K = config_.linear.conv_size;
  const float* pre = x;
  if (K > 0) {
    const Attention::ConvRuns given = attention_.conv_halo(conv, halo, x, C, K);
    LASP_CHECK(given.count <= Attention::kMaxConvRuns && (given.count < 2 || (given.split > 0 && given.split < N_)),
               "model: the attention's convolution halos are for {} runs, the second from token {} of {}; expected at "
               "most {} runs inside the tokens", given.count, given.split, N_, Attention::kMaxConvRuns);
    conv_runs_ = given.count == 2 ? std::vector<int>{0, given.split, N_} : std::vector<int>{0, N_};
    const int R = int(conv_runs_.size()) - 1;
    if (given.count == 0) std::fill_n(halo, size_t(B_) * (K - 1) * C, 0.f);
    const uint8_t* flags = document_flags();
    for (int b = 0; b < B_; ++b)
      for (int r = 0; r < R; ++r) {
        const size_t at = size_t(b) * N_ + conv_runs_[r];
        const float* run_halo = halo + (size_t(b) * R + r) * (K - 1) * C;
        const uint8_t* run_flags = flags ? flags + at : nullptr;
        const int n = conv_runs_[r + 1] - conv_runs_[r];
        short_conv_forward(c + at * C, x + at * C, w, run_halo, run_flags, 1, n, C, K, omp_get_max_threads());
        if (tail && r == R - 1)  // from each row's last run
          short_conv_tail(tail + size_t(b) * (K - 1) * C, x + at * C, run_halo, run_flags, 1, n, C, K);
      }
    pre = c;
  }
  feature_map_forward(y, pre, long(T_) * C, FeatureMap::silu);
}

// From dy, the gradient of silu(conv(x)), to dx (written; the halo's share handed back through the attention) and
// dw (+=); dc: scratch for the conv output's.
void Model::conv_silu_backward(int conv, float* dx, float* dw, const float* dy, float* dc, const float* c,
                               const float* halo, const float* x, const float* w, int C) {
  const int K = config_.linear.conv_size;
  const size_t n = size_t(T_) * C;
  if (K == 0) {
    feature_map_backward(dx, dy, x, long(n), FeatureMap::silu, GradStore::overwrite);
    return;
  }
  feature_map_backward(dc, dy, c, long(n), FeatureMap::silu, GradStore::overwrite);
  std::fill_n(dx, n, 0.f);
  const int R = int(conv_runs_.size()) - 1;
  std::fill_n(s_.dhalo, size_t(B_) * R * (K - 1) * C, 0.f);
  const uint8_t* flags = document_flags();
  for (int b = 0; b < B_; ++b)
    for (int r = 0; r < R; ++r) {
      const size_t at = size_t(b) * N_ + conv_runs_[r], h = (size_t(b) * R + r) * (K - 1) * C;
      short_conv_backward(dx + at * C, dw, s_.dhalo + h, dc + at * C, x + at * C, w, halo + h, flags ? flags + at : nullptr,
                          1, conv_runs_[r + 1] - conv_runs_[r], C, K, omp_get_max_threads());
    }
  attention_.conv_halo_backward(conv, dx, s_.dhalo, C, K);
}

void Model::gdn_forward(int l, Input xn, bool queries) {
  const ModelConfig& c = config_;
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const int D = c.hidden_size, H = c.num_attention_heads, HV = c.linear_value_heads(), dk = c.linear_key_width();
  const int K = c.linear.conv_size, threads = omp_get_max_threads();
  const LayerWeights& w = w_.layers[l];
  LayerActs& a = acts(l);
  const size_t halo = Attention::kMaxConvRuns * size_t(B_) * std::max(K - 1, 0) * c.widest_attention();  // one conv's
  if (queries) project(a.qp, xn, w.wq, D, e.q);
  project(a.kp, xn, w.wk, D, e.k);
  project(a.vp, xn, w.wv, D, e.v);
  float* tail = nullptr;  // the q, k and v tails one after the other
  if (keep_conv_tails_ && K > 0) {
    if (int(conv_tails_.size()) <= l) conv_tails_.resize(l + 1);
    conv_tails_[l].resize(size_t(B_) * (K - 1) * (e.q + e.k + e.v));
    tail = conv_tails_[l].data();
  }
  const size_t tq = size_t(B_) * std::max(K - 1, 0) * e.q, tk = size_t(B_) * std::max(K - 1, 0) * e.k;
  if (queries) conv_silu_forward(3 * l, a.q, a.qc, a.halo, tail, a.qp, w.q_conv, e.q);
  conv_silu_forward(3 * l + 1, a.k, a.kc, a.halo + halo, tail ? tail + tq : nullptr, a.kp, w.k_conv, e.k);
  conv_silu_forward(3 * l + 2, a.v, a.vc, a.halo + 2 * halo, tail ? tail + tq + tk : nullptr, a.vp, w.v_conv, e.v);
  if (queries) l2_norm_forward(a.q, a.rq, a.q, long(T_) * H, dk, kL2NormEps, 1.f / std::sqrt(float(dk)), threads);
  l2_norm_forward(a.k, a.rk, a.k, long(T_) * H, dk, kL2NormEps, 1.f, threads);
  project(a.beta, xn, w.wb, D, HV);
  project(a.gz, xn, w.wa, D, HV);
  for (size_t t = 0; t < size_t(T_); ++t)
    for (int h = 0; h < HV; ++h) {
      const size_t i = t * HV + h;
      a.beta[i] = gdn_beta(a.beta[i]);
      a.gz[i] += w.dt_bias[h];
      a.glog[i] = gdn_log_gate(a.gz[i], w.a_log[h]);
    }
}

void Model::gdn_backward(int l, Input xn, bool dxn_fresh, bool queries) {
  const ModelConfig& c = config_;
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const int D = c.hidden_size, H = c.num_attention_heads, HV = c.linear_value_heads(), dk = c.linear_key_width();
  const int K = c.linear.conv_size, threads = omp_get_max_threads();
  const LayerWeights& w = w_.layers[l];
  const LayerWeights& g = g_.layers[l];
  LayerActs& a = acts(l);
  const size_t T = T_, halo = Attention::kMaxConvRuns * size_t(B_) * std::max(K - 1, 0) * c.widest_attention();
  // s_.dq, s_.dk, s_.dv hold the delta rule's input gradients; s_.da, s_.dqp, s_.dkp are free. Each of q and k:
  // silu(conv) again into s_.da (l2's input), l2's backward, then silu's and the conv's into its projection's
  // (s_.da their scratch); v: silu's and the conv's into s_.dqp.
  if (queries) {
    const float* silu_in_q = K > 0 ? a.qc : a.qp;
    feature_map_forward(s_.da, silu_in_q, long(T * e.q), FeatureMap::silu);
    l2_norm_backward(s_.dqp, s_.dq, s_.da, a.rq, long(T) * H, dk, 1.f / std::sqrt(float(dk)), threads,
                     GradStore::overwrite);
    conv_silu_backward(3 * l, s_.dq, g.q_conv, s_.dqp, s_.da, a.qc, a.halo, a.qp, w.q_conv, e.q);
    project_backward(s_.dxn, g.wq, s_.dq, xn, w.wq, D, e.q, dxn_fresh);
    dxn_fresh = false;
  }

  const float* silu_in_k = K > 0 ? a.kc : a.kp;
  feature_map_forward(s_.da, silu_in_k, long(T * e.k), FeatureMap::silu);
  l2_norm_backward(s_.dkp, s_.dk, s_.da, a.rk, long(T) * H, dk, 1.f, threads, GradStore::overwrite);
  conv_silu_backward(3 * l + 1, s_.dk, g.k_conv, s_.dkp, s_.da, a.kc, a.halo + halo, a.kp, w.k_conv, e.k);
  project_backward(s_.dxn, g.wk, s_.dk, xn, w.wk, D, e.k, dxn_fresh);

  conv_silu_backward(3 * l + 2, s_.dqp, g.v_conv, s_.dv, s_.da, a.vc, a.halo + 2 * halo, a.vp, w.v_conv, e.v);
  project_backward(s_.dxn, g.wv, s_.dqp, xn, w.wv, D, e.v);

  // beta = sigmoid(b): db = dbeta beta (1 - beta). g = -exp(A_log) softplus(z): dA_log += dg g,
  // dz = dg (-exp(A_log)) sigmoid(z), ddt_bias += dz.
  for (size_t t = 0; t < T; ++t)
    for (int h = 0; h < HV; ++h) {
      const size_t i = t * HV + h;
      s_.dbeta[i] *= a.beta[i] * (1.f - a.beta[i]);
      g.a_log[h] += s_.dglog[i] * a.glog[i];
      s_.dglog[i] *= gdn_log_gate_derivative(a.gz[i], w.a_log[h]);
      g.dt_bias[h] += s_.dglog[i];
    }
  project_backward(s_.dxn, g.wb, s_.dbeta, xn, w.wb, D, HV);
  project_backward(s_.dxn, g.wa, s_.dglog, xn, w.wa, D, HV);
}

}  // namespace lasp
