#include "generate/decoder.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/memory.h"
#include "kernels/delta_rule.h"
#include "kernels/feature_map.h"
#include "kernels/gemm.h"
#include "kernels/l2_norm.h"
#include "kernels/normalizer.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/short_conv.h"
#include "kernels/state_algebra.h"
#include "kernels/swiglu.h"
#include "model/attention.h"
#include "model/memory_plan.h"
#include "model/model.h"
#include "sp/methods.h"

namespace lasp {

namespace {

std::vector<float> rmsnorm(const std::vector<float>& x, const float* weight, int rows, int width, float eps) {
  std::vector<float> out(x.size()), rstd(rows);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), weight, rows, width, eps);
  return out;
}

}  // namespace

std::vector<float> Decoder::project(const float* W, const std::vector<float>& x, int out) const {
  const int in = int(x.size());
  std::vector<float> y(out);
  if (precision_ == Precision::fp32) {
    gemm(false, true, 1, out, in, 1.f, x.data(), in, W, in, 0.f, y.data(), out);
    return y;
  }
  std::vector<bf16> xb(x.size());
  to_bf16(xb.data(), x.data(), x.size());
  gemm_bf16(false, true, 1, out, in, 1.f, xb.data(), in, params_bf16_.data() + (W - params_.data()), in, 0.f, y.data(),
            out);
  return y;
}

Decoder::Decoder(const ModelConfig& config, const std::vector<float>& params, int max_tokens, Precision precision)
    : config_(config), layout_(config), params_(params), max_tokens_(max_tokens), precision_(precision) {
  config_.validate();
  LASP_CHECK(params.size() >= layout_.total(), "decoder: {} parameters given, the model has {}", params.size(),
             layout_.total());
  weights_ = layout_.bind(const_cast<float*>(params_.data()));  // bound once; only read
  LASP_CHECK(max_tokens > 0, "decoder: max_tokens must be positive, got {}", max_tokens);
  threads_ = omp_get_max_threads();
  const int L = config.num_hidden_layers, H = config.num_attention_heads;
  const double softmax_layers = double(std::count(config.layer_types.begin(), config.layer_types.end(), 'N'));
  check_fits_in_memory(softmax_layers * 2 * 4.0 * max_tokens * config.num_key_value_heads * config.head_dim(),
                       fmt::format("generation of up to {} tokens (the keys and values of the softmax layers)", max_tokens));
  state_.resize(L);
  conv_cache_.resize(L);
  k_cache_.resize(L);
  v_cache_.resize(L);
  lambda_.resize(L);
  for (int l = 0; l < L; ++l) {
    lambda_[l].resize(H);
    linear_attention_decays(lambda_[l].data(), H, config.linear.decay);
  }
  if (precision_ == Precision::bf16) {
    params_bf16_.resize(layout_.total());
    to_bf16(params_bf16_.data(), params_.data(), layout_.total());
  }
}

std::vector<float> Decoder::prefill(const std::vector<int>& prompt) {
  const int n = int(prompt.size());
  LASP_CHECK(n > 0 && n <= max_tokens_, "decoder: the prompt must hold 1 to {} tokens, got {}", max_tokens_, n);
  const ModelConfig& c = config_;
  const AttentionShape shape = attention_shape(c, 1, n, kLinearBlock, threads_);
  MemoryRequest request;
  request.precision = precision_;
  const MemoryPlan plan = plan_memory(c, shape, nullptr, request, false);
  const std::unique_ptr<Attention> attention = planned_attention(plan, c, shape, nullptr);
  std::vector<int> positions(n);
  std::iota(positions.begin(), positions.end(), 0);
  return prefill(prompt, *attention, positions, n, plan.model);
}

std::vector<float> Decoder::prefill(const std::vector<int>& prompt, Attention& attention,
                                    const std::vector<int>& positions, int prefix, ModelPlan plan, Comm* sp) {
  const int n = int(prompt.size());
  LASP_CHECK(n > 0 && n <= max_tokens_, "decoder: the prompt must hold 1 to {} tokens, got {}", max_tokens_, n);
  LASP_CHECK(prefix > 0 && prefix <= n && !positions.empty(),
             "decoder: the parallel prefix must hold 1 to {} tokens and this rank some of them, got {} and {}", n,
             prefix, positions.size());
  const ModelConfig& c = config_;
  const int V = c.vocab_size;
  const int Nl = int(positions.size());
  attention.keep_decode_state(true);
  plan.precision = precision_;
  Model model(c, 1, Nl, attention, plan);
  const bool conv = c.linear.decay == Decay::gdn && c.linear.conv_size > 0;
  model.keep_conv_tails(conv);
  std::copy(params_.begin(), params_.begin() + long(layout_.total()), model.params().begin());
  if (doc_start_ >= 0) model.set_document_start(doc_start_);
  std::vector<int> inputs;
  for (int p : positions) {
    LASP_CHECK(p >= 0 && p < prefix, "decoder: position {} outside the prefix of {} tokens", p, prefix);
    inputs.push_back(prompt[p]);
  }
  model.forward(inputs.data(), nullptr);
  const bool last = positions.back() == prefix - 1;  // this rank ran the prefix's last token
  const size_t row = size_t(c.num_key_value_heads) * c.head_dim();
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (c.layer_types[l] == 'L') {
      state_[l] = attention.final_state(l);
      if (conv) {
        conv_cache_[l] = model.conv_tail(l);
        if (sp) {  // from the rank that ran the last token: the others add zeros
          if (!last) std::fill(conv_cache_[l].begin(), conv_cache_[l].end(), 0.f);
          sp->all_reduce(conv_cache_[l].data(), conv_cache_[l].size());
        }
      }
    } else {
      const std::vector<float> keys = attention.keys_in_order(l, false), values = attention.keys_in_order(l, true);
      k_cache_[l].assign(size_t(max_tokens_) * row, 0.f);
      v_cache_[l].assign(size_t(max_tokens_) * row, 0.f);
      std::copy(keys.begin(), keys.end(), k_cache_[l].begin());
      std::copy(values.begin(), values.end(), v_cache_[l].begin());
    }
  }
  pos_ = prefix;
  doc_begin_ = 0;  // the softmax layers' keys from the last document start on (the linear states hold no more)
  for (int p = 0; p < prefix; ++p)
    if (prompt[p] == doc_start_) doc_begin_ = p;
  if (prefix == n && last)  // this rank ran the last token: its logits are the answer
    return std::vector<float>(model.logits() + size_t(model.logits_rows() - 1) * V,
                              model.logits() + size_t(model.logits_rows()) * V);
  std::vector<float> logits;
  for (int i = prefix; i < n; ++i) logits = step(prompt[i]);  // the rest of the prompt, on every rank alike
  return logits;
}

std::vector<float> prefill_sequence_parallel(Decoder& decoder, const ModelConfig& c, const std::vector<int>& prompt,
                                             Comm& sp, SpLayout layout) {
  const int n = int(prompt.size()), W = sp.size(), unit = layout == SpLayout::zigzag ? 2 * W : W;
  const int m = n > 0 ? (n - 1) / unit * unit : 0;  // the sequence-parallel prefix; at least the last token stays
  // decay gdn: each piece needs the conv_size - 1 rows its short convolutions read from the piece before it
  const bool short_pieces = c.linear.decay == Decay::gdn && m / unit < c.linear.conv_size - 1;
  if (W == 1 || m == 0 || short_pieces) return decoder.prefill(prompt);
  const std::vector<int> positions = sp_positions(m, W, sp.rank(), layout);
  const AttentionShape shape = attention_shape(c, 1, int(positions.size()), kLinearBlock, decoder.threads());
  check_sp_method(find_sp_method(""), {linear_transition(c.linear.decay), /*decoding=*/true});
  const std::unique_ptr<Attention> attention = make_sp_attention("", sp, shape, m, layout, c.num_hidden_layers);
  return decoder.prefill(prompt, *attention, positions, m, {}, &sp);
}

void Decoder::gdn_step(int l, const std::vector<float>& xn, std::vector<float>& attn) {
  const ModelConfig& c = config_;
  const LayerWeights& lw = weights_.layers[l];
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const int H = c.num_attention_heads, HV = c.linear_value_heads(), dk = c.linear_key_width();
  const int dv = c.linear_value_width(), K = c.linear.conv_size;
  // q, k, v: projection, convolution over [cache | this row] (the cache moves on), silu; q and k L2-normed
  std::vector<float> x[3] = {project(lw.wq, xn, e.q), project(lw.wk, xn, e.k), project(lw.wv, xn, e.v)};
  const float* conv_w[3] = {lw.q_conv, lw.k_conv, lw.v_conv};
  const int width[3] = {e.q, e.k, e.v};
  float* cache = conv_cache_[l].data();
  for (int j = 0; j < 3; ++j) {
    std::vector<float> pre = x[j];
    if (K > 0) {
      short_conv_step(pre.data(), cache, x[j].data(), conv_w[j], 1, width[j], K);
      cache += size_t(K - 1) * width[j];
    }
    feature_map_forward(x[j].data(), pre.data(), width[j], FeatureMap::silu);
  }
  std::vector<float> rstd(H);
  l2_norm_forward(x[0].data(), rstd.data(), x[0].data(), H, dk, kL2NormEps, 1.f / std::sqrt(float(dk)), 1);
  l2_norm_forward(x[1].data(), rstd.data(), x[1].data(), H, dk, kL2NormEps, 1.f, 1);
  const std::vector<float> b = project(lw.wb, xn, HV), z = project(lw.wa, xn, HV);
  // per value head: S <- alpha S; S <- S + beta k (v - S^T k)^T; o = S^T q
  std::vector<float> u(dv);
  for (int hv = 0; hv < HV; ++hv) {
    float* S = state_[l].data() + size_t(hv) * dk * dv;
    const float *q = x[0].data() + hv / (HV / H) * dk, *k = x[1].data() + hv / (HV / H) * dk;
    const float* v = x[2].data() + size_t(hv) * dv;
    const float alpha = std::exp(gdn_log_gate(z[hv] + lw.dt_bias[hv], lw.a_log[hv])), beta = gdn_beta(b[hv]);
    for (size_t i = 0; i < size_t(dk) * dv; ++i) S[i] *= alpha;
    for (int col = 0; col < dv; ++col) {
      float pred = 0.f;
      for (int r = 0; r < dk; ++r) pred += S[r * dv + col] * k[r];
      u[col] = beta * (v[col] - pred);
    }
    for (int r = 0; r < dk; ++r)
      for (int col = 0; col < dv; ++col) S[r * dv + col] += k[r] * u[col];
    for (int col = 0; col < dv; ++col) {
      float acc = 0.f;
      for (int r = 0; r < dk; ++r) acc += S[r * dv + col] * q[r];
      attn[size_t(hv) * dv + col] = acc;
    }
  }
}

std::vector<float> Decoder::step(int token) {
  const ModelConfig& c = config_;
  LASP_CHECK(pos_ > 0, "decoder: prefill a prompt before decoding");
  LASP_CHECK(pos_ < max_tokens_, "decoder: reached max_tokens = {}", max_tokens_);
  LASP_CHECK(token >= 0 && token < c.vocab_size, "decoder: token {} outside the vocabulary [0, {})", token, c.vocab_size);
  const int D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, d = c.head_dim();
  const int dk = c.linear_key_width(), dv = c.linear_value_width(), Hkv = c.num_key_value_heads, V = c.vocab_size;
  const float eps = c.rms_norm_eps;
  const Weights& w = weights_;
  const int pos = pos_;
  if (token == doc_start_) {  // a new document: nothing before it is seen again
    doc_begin_ = pos;
    for (auto& S : state_) std::fill(S.begin(), S.end(), 0.f);
    for (auto& cache : conv_cache_) std::fill(cache.begin(), cache.end(), 0.f);
  }

  std::vector<float> x(w.embed + size_t(token) * D, w.embed + size_t(token + 1) * D);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::vector<float> xn = rmsnorm(x, lw.input_norm, 1, D, eps);
    const ModelConfig::AttentionWidths e = c.attention_widths(l);
    std::vector<float> attn(e.o, 0.f);
    if (c.layer_types[l] == 'L' && c.linear.decay == Decay::gdn) {
      gdn_step(l, xn, attn);
    } else if (c.layer_types[l] == 'L') {
      std::vector<float> q(e.q), k(e.k);
      const std::vector<float> qp = project(lw.wq, xn, e.q), kp = project(lw.wk, xn, e.k);
      std::vector<float> v = project(lw.wv, xn, e.v);
      if (c.linear.expanded == ExpandedKind::rebased) {
        rebased_norm_forward(q.data(), qp.data(), lw.fm_gamma, lw.fm_beta, H, dk, dk, dk);
        rebased_norm_forward(k.data(), kp.data(), lw.fm_gamma, lw.fm_beta, H, dk, dk, dk);
      } else {
        feature_map_forward(q.data(), qp.data(), e.q, c.linear.feature_map);
        feature_map_forward(k.data(), kp.data(), e.k, c.linear.feature_map);
      }
      // An expanded map: its features phi(q), phi(k) (D' per head) and v~ = [v | 1]; the state is D' x (d + 1) and
      // o = n / (s + eps) of [n | s] = phi(q) S (FEATURE_MAPS.md, Decoding).
      int sk = dk, sv = dv;  // the state's rows and columns
      if (c.linear.expanded) {
        sk = c.linear_state_rows(), sv = dv + 1;
        std::vector<float> fq(size_t(H) * sk), fk(size_t(H) * sk), vt(size_t(H) * sv);
        expanded_phi_forward(fq.data(), q.data(), H, dk, dk, *c.linear.expanded);
        expanded_phi_forward(fk.data(), k.data(), H, dk, dk, *c.linear.expanded);
        normalizer_append_ones(vt.data(), v.data(), H, dv);
        q = std::move(fq), k = std::move(fk), v = std::move(vt);
      }
      // o = q (S + k^T v); then S = lambda (S + k^T v): the state keeps dk x dv per head, whatever the length.
      // GLA: S = diag(exp(g)) S + k^T v first, with this token's gates g (GATES.md); then o = q S.
      std::vector<float> gate;
      if (c.linear.decay == Decay::gla) {
        const std::vector<float> z = project(lw.wgk2, project(lw.wgk1, xn, c.linear.gate_low_rank), e.k);
        gate.resize(e.k);
        for (int j = 0; j < e.k; ++j) gate[j] = std::exp(gla_log_gate(z[j] + lw.bgk[j], c.linear.gate_normalizer));
      }
      // The token moves each head's state through the state algebra: GLA's transition (its gates) before the
      // token's own k^T v, a fixed decay's after it (the state kept is the one entering the next token).
      const StateForm form{gate.empty() ? Transition::scalar : Transition::diagonal, sk, sv};
      std::vector<float> y(sv);
      for (int h = 0; h < H; ++h) {
        float* S = state_[l].data() + size_t(h) * form.state_floats();
        const float *qh = q.data() + h * sk, *kh = k.data() + h * sk, *vh = v.data() + h * sv;
        if (!gate.empty()) apply_transition(form, S, gate.data() + h * sk, S, false, nullptr);
        for (int r = 0; r < sk; ++r)
          for (int col = 0; col < sv; ++col) S[r * sv + col] += kh[r] * vh[col];
        for (int col = 0; col < sv; ++col) {
          float acc = 0.f;
          for (int r = 0; r < sk; ++r) acc += qh[r] * S[r * sv + col];
          y[col] = acc;
        }
        if (c.linear.expanded) normalizer_forward(attn.data() + h * dv, y.data(), 1, dv, c.linear.normalizer_eps);
        else std::copy(y.begin(), y.end(), attn.begin() + h * dv);
        const float lam = lambda_[l][h];
        if (gate.empty() && lam != 1.f) apply_transition(form, S, &lam, S, false, nullptr);
      }
    }
    if (c.layer_types[l] == 'L') {
      if (c.linear.output_norm) attn = rmsnorm(attn, lw.o_norm, c.linear_value_heads(), dv, eps);
      if (c.linear.output_gate) {
        const std::vector<float> gp = project(lw.wg, xn, e.o);
        std::vector<float> gated(e.o);
        swiglu_forward(gated.data(), gp.data(), attn.data(), e.o);
        attn = gated;
      }
    } else {
      const int Ekv = e.k;
      std::vector<float> q = project(lw.wq, xn, e.q), k = project(lw.wk, xn, Ekv);
      const std::vector<float> v = project(lw.wv, xn, Ekv);
      rope_forward(q.data(), q.data(), &pos, 1, 1, H, d, c.rope_theta);
      rope_forward(k.data(), k.data(), &pos, 1, 1, Hkv, d, c.rope_theta);
      std::copy(k.begin(), k.end(), k_cache_[l].begin() + size_t(pos) * Ekv);
      std::copy(v.begin(), v.end(), v_cache_[l].begin() + size_t(pos) * Ekv);
      const float scale = softmax_scale(d);
      std::vector<double> p(pos + 1);
      for (int h = 0; h < H; ++h) {
        const int kv = h / (H / Hkv);
        double m = -INFINITY, sum = 0;
        for (int j = doc_begin_; j <= pos; ++j) {
          const float* kj = k_cache_[l].data() + size_t(j) * Ekv + kv * d;
          double s = 0;
          for (int i = 0; i < d; ++i) s += double(q[h * d + i]) * kj[i];
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        for (int j = doc_begin_; j <= pos; ++j) sum += p[j] = std::exp(p[j] - m);
        for (int j = doc_begin_; j <= pos; ++j) {
          const float* vj = v_cache_[l].data() + size_t(j) * Ekv + kv * d;
          for (int i = 0; i < d; ++i) attn[h * d + i] += float(p[j] / sum * vj[i]);
        }
      }
    }
    // h = x + o_proj(attn); x = h + down(silu(gate(hn)) * up(hn))
    const std::vector<float> y = project(lw.wo, attn, D);
    for (int i = 0; i < D; ++i) x[i] += y[i];
    const std::vector<float> hn = rmsnorm(x, lw.post_norm, 1, D, eps);
    std::vector<float> g = project(lw.w_gate, hn, F), u = project(lw.w_up, hn, F);
    if (precision_ == Precision::bf16)  // as the bf16 forward's products write them
      for (std::vector<float>* t : {&g, &u})
        for (float& v : *t) v = from_bf16(to_bf16(v));
    std::vector<float> m(F);
    swiglu_forward(m.data(), g.data(), u.data(), F);
    const std::vector<float> z = project(lw.w_down, m, D);
    for (int i = 0; i < D; ++i) x[i] += z[i];
  }
  ++pos_;
  return project(w.lm_head, rmsnorm(x, w.final_norm, 1, D, eps), V);
}

int sample_token(const std::vector<float>& logits, float temperature, int top_k, uint64_t& rng_state) {
  const int V = int(logits.size());
  LASP_CHECK(V > 0, "sample_token: empty logits");
  if (temperature <= 0.f) return int(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  const int k = top_k > 0 ? std::min(top_k, V) : V;
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::vector<double> p(k);
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += p[i] = std::exp((double(logits[order[i]]) - logits[order[0]]) / temperature);
  // splitmix64: a uniform double in [0, 1) from the caller's generator state
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  double u = double(z >> 11) * 0x1.0p-53 * sum;
  for (int i = 0; i < k; ++i)
    if ((u -= p[i]) < 0) return order[i];
  return order[k - 1];
}

}  // namespace lasp
