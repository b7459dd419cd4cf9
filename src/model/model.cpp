#include "model/model.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "core/check.h"
#include "core/memory.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/feature_map.h"
#include "kernels/expanded_feature_map.h"
#include "kernels/gemm.h"
#include "kernels/normalizer.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace lasp {
namespace {

// The widest side of any projection (hidden, MLP, vocabulary, attention width): the bf16 scratch per token.
size_t widest_projection(const ModelConfig& c) {
  // (and q, k, v's output gradients side by side: the grouped project_backward)
  int qkv = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const ModelConfig::AttentionWidths e = c.attention_widths(l);
    qkv = std::max(qkv, e.q + e.k + e.v);
  }
  return size_t(std::max({c.hidden_size, c.intermediate_size, c.vocab_size, c.widest_attention(), qkv}));
}

// Tokens per row in one chunk of a plan (N: the whole sequence at once).
int chunk_length(const ModelPlan& plan, int N) { return plan.chunk > 0 ? std::min(plan.chunk, N) : N; }

// The plan as it runs: layer-major only with more than one chunk, and then with recompute.
ModelPlan as_run(ModelPlan plan, int N) {
  plan.layer_major = plan.layer_major && chunk_length(plan, N) < N;
  plan.recompute = plan.recompute || plan.layer_major;
  return plan;
}

// Parallel: a serial pass here would leave the other cores idle (measured: ~4% of a training step).
void zero(float* p, size_t n) {
#pragma omp parallel for simd if (n > 32768)
  for (size_t i = 0; i < n; ++i) p[i] = 0.f;
}

// dst += src.
void add_into(float* dst, const float* src, size_t n) {
#pragma omp parallel for simd if (n > 32768)
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

}  // namespace

Precision precision_from_string(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  throw Error("unknown precision '" + name + "': expected fp32 or bf16");
}

const char* to_string(Precision precision) { return precision == Precision::bf16 ? "bf16" : "fp32"; }

Model::Input Model::keep(const float* x, bf16* copy, size_t n) {
  if (precision_ == Precision::fp32) return {x};
  to_bf16(copy, x, n);
  return {x, copy};
}

void Model::project(float* Y, Input X, const float* W, int in, int out, int rows) {
  const int T = rows < 0 ? T_ : rows;
  if (precision_ == Precision::fp32) {
    gemm(false, true, T, out, in, 1.f, X.f32, in, W, in, 0.f, Y, out);
    return;
  }
  if (!X.b16) X = keep(X.f32, x_bf16_.data(), size_t(T) * in);
  gemm_bf16(false, true, T, out, in, 1.f, X.b16, in, bf16_weight(W), in, 0.f, Y, out);
}

void Model::project(bf16* Y, Input X, const float* W, int in, int out, int rows) {
  const int T = rows < 0 ? T_ : rows;
  if (!X.b16) X = keep(X.f32, x_bf16_.data(), size_t(T) * in);
  gemm_bf16(false, true, T, out, in, 1.f, X.b16, in, bf16_weight(W), in, Y, out);
}

void Model::project_backward(float* dX, float* dW, Input dY, Input X, const float* W, int in, int out,
                             bool dx_fresh, int rows) {
  const int T = rows < 0 ? T_ : rows;
  if (precision_ == Precision::fp32) {
    gemm(false, false, T, in, out, 1.f, dY.f32, out, W, in, dx_fresh ? 0.f : 1.f, dX, in);
    gemm(true, false, out, in, T, 1.f, dY.f32, out, X.f32, in, 1.f, dW, in);
    return;
  }
  if (!dY.b16) to_bf16(dy_bf16_.data(), dY.f32, size_t(T) * out), dY.b16 = dy_bf16_.data();
  if (!X.b16) X = keep(X.f32, x_bf16_.data(), size_t(T) * in);
  gemm_bf16(false, false, T, in, out, 1.f, dY.b16, out, bf16_weight(W), in, dx_fresh ? 0.f : 1.f, dX, in);
  gemm_bf16(true, false, out, in, T, 1.f, dY.b16, out, X.b16, in, 1.f, dW, in);
}

void Model::project_backward(float* dX, std::initializer_list<ProjectionGrad> terms, Input X, int in,
                             bool dx_fresh) {
  const ProjectionGrad& first = *terms.begin();
  int total = 0;
  bool adjacent = true;
  for (const ProjectionGrad& t : terms) {
    adjacent = adjacent && t.W == first.W + size_t(total) * in && t.dW == first.dW + size_t(total) * in;
    total += t.out;
  }
  if (precision_ == Precision::fp32 || !adjacent) {
    for (const ProjectionGrad& t : terms)
      project_backward(dX, t.dW, {t.dY}, X, t.W, in, t.out, dx_fresh && &t == &first);
    return;
  }
  bf16* dy = dy_bf16_.data();  // (T, total): row t holds each term's row t in turn
  const long T = T_;
#pragma omp parallel for schedule(static)
  for (long t = 0; t < T; ++t) {
    int at = 0;
    for (const ProjectionGrad& g : terms)
      to_bf16_serial(dy + t * total + at, g.dY + t * g.out, size_t(g.out)), at += g.out;
  }
  project_backward(dX, first.dW, {nullptr, dy}, X, first.W, in, total, dx_fresh);
}

size_t Model::mlp_rows(const ModelPlan& plan, size_t T) {
  return plan.recompute ? std::min(T, size_t(std::max(1, plan.mlp_tokens))) : T;
}

void Model::mlp_forward(int l, int r, int rows) {
  const int D = config_.hidden_size, F = config_.intermediate_size;
  const LayerWeights& w = w_.layers[l];
  LayerActs& a = acts(l);
  const Input hn = kept(a.hn, a.hn16).rows_from(size_t(r) * D);
  if (precision_ == Precision::bf16) {  // every form bf16: m is read only by the down projection and its gradient
    project(a.g16, hn, w.w_gate, D, F, rows);
    project(a.u16, hn, w.w_up, D, F, rows);
    swiglu_forward_bf16(a.m16, a.g16, a.u16, long(rows) * F);
    return;
  }
  project(a.g, hn, w.w_gate, D, F, rows);
  project(a.u, hn, w.w_up, D, F, rows);
  swiglu_forward(a.m, a.g, a.u, long(rows) * F);
}

void Model::carve(Carver& cv, const ModelConfig& c, int B, int N, const ModelPlan& plan, std::vector<float*>& x,
                  std::vector<float*>& stream, std::vector<LayerActs>& acts, Scratch& s, float*& xf, float*& rstd_f,
                  float*& logits) {
  const bool recompute = plan.recompute;
  const int chunk = chunk_length(plan, N);
  const int L = c.num_hidden_layers, D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  // E: the widest attention tensor per token (every layer's q, k, v and o fit it).
  const int H = c.num_attention_heads, E = c.widest_attention();
  const size_t T = size_t(B) * chunk, TF = mlp_rows(plan, T) * F;  // TF: the MLP's values per pass
  const bool b16 = plan.precision == Precision::bf16;
  auto take_bf16 = [&](size_t n) { return reinterpret_cast<bf16*>(cv.take((n + 1) / 2)); };
  x.assign(L + 1, nullptr);
  for (int l = 0; l <= L; ++l) x[l] = cv.take(T * D);
  stream.assign(plan.layer_major ? L + 1 : 0, nullptr);
  for (float*& p : stream) p = cv.take(size_t(B) * N * D);
  acts.assign(recompute ? 1 : L, LayerActs{});
  // Under bf16 the layers keep bf16 copies of xn, hn and the gated output (their fp32 forms are shared) and the
  // MLP's g, u and m in bf16 alone.
  const bool shared = b16 && acts.size() > 1, gated = c.linear.output_gate && c.layer_types.find('L') != std::string::npos;
  float *xn = nullptr, *hn = nullptr, *og = nullptr;  // null also while the carver only counts
  if (shared) xn = cv.take(T * D), hn = cv.take(T * D), og = gated ? cv.take(T * E) : nullptr;
  for (size_t i = 0; i < acts.size(); ++i) {
    // With recompute the shared set must fit either kind of layer.
    const bool any_linear = recompute ? c.layer_types.find('L') != std::string::npos : c.layer_types[i] == 'L';
    const bool any_softmax = recompute ? c.has_softmax_layer() : c.layer_types[i] == 'N';
    LayerActs& a = acts[i];
    a.xn = shared ? xn : cv.take(T * D);
    a.rstd_in = cv.take(T);
    a.q = cv.take(T * E);
    a.k = cv.take(T * E);
    a.v = cv.take(T * E);
    a.o = cv.take(T * E);
    if (any_linear) {
      if (c.linear.expanded) a.y = cv.take(T * E);
      a.qp = cv.take(T * E);
      a.kp = cv.take(T * E);
      if (c.linear.output_norm) a.on = cv.take(T * E), a.rstd_o = cv.take(T * c.linear_value_heads());
      if (c.linear.output_gate) a.gp = cv.take(T * E), a.og = shared ? og : cv.take(T * E);
      if (c.linear.decay == Decay::gla)
        a.gk1 = cv.take(T * c.linear.gate_low_rank), a.gz = cv.take(T * E), a.glog = cv.take(T * E);
      if (c.linear.decay == Decay::gdn) {
        const size_t HV = c.linear_value_heads();
        a.vp = cv.take(T * E), a.gz = cv.take(T * HV), a.glog = cv.take(T * HV), a.beta = cv.take(T * HV);
        a.rq = cv.take(T * H), a.rk = cv.take(T * H);
        if (c.linear.conv_size > 0) {
          a.qc = cv.take(T * E), a.kc = cv.take(T * E), a.vc = cv.take(T * E);
          a.halo = cv.take(3 * Attention::kMaxConvRuns * size_t(B) * (c.linear.conv_size - 1) * E);
        }
      }
    }
    if (any_softmax) a.lse = cv.take(T * H);
    a.h = cv.take(T * D);
    a.hn = shared ? hn : cv.take(T * D);
    a.rstd_post = cv.take(T);
    if (b16) {  // the MLP's g, u and m only in bf16
      a.xn16 = take_bf16(T * D), a.hn16 = take_bf16(T * D), a.ao16 = take_bf16(T * E);
      a.g16 = take_bf16(TF), a.u16 = take_bf16(TF), a.m16 = take_bf16(TF);
    } else {
      a.g = cv.take(TF), a.u = cv.take(TF), a.m = cv.take(TF);
    }
  }
  s.dres = cv.take(T * D);
  s.dxn = cv.take(T * D);
  s.dhn = cv.take(T * D);
  s.da = cv.take(T * E);
  s.dq = cv.take(T * E);
  s.dk = cv.take(T * E);
  s.dv = cv.take(T * E);
  s.dqp = cv.take(T * E);
  s.dkp = cv.take(T * E);
  s.dgp = cv.take(T * E);
  s.dg = cv.take(TF);
  s.du = cv.take(TF);
  s.dm = cv.take(TF);
  s.dlogits = cv.take(T * V);
  if (c.linear.decay == Decay::gla && c.layer_types.find('L') != std::string::npos) s.dglog = cv.take(T * E), s.dgk1 = cv.take(T * c.linear.gate_low_rank);
  if (c.linear.decay == Decay::gdn && c.layer_types.find('L') != std::string::npos)
    s.dglog = cv.take(T * c.linear_value_heads()), s.dbeta = cv.take(T * c.linear_value_heads()),
    s.dhalo = cv.take(Attention::kMaxConvRuns * size_t(B) * std::max(c.linear.conv_size - 1, 0) * E);
  xf = cv.take(T * D);
  rstd_f = cv.take(T);
  logits = cv.take(T * V);
}

int Model::token_count(int B, int N) {
  LASP_CHECK(B > 0 && N > 0, "model: batch and sequence length must be positive, got B={} N={}", B, N);
  LASP_CHECK(int64_t(B) * N <= INT_MAX, "model: batch x sequence length = {} x {} = {} tokens per process; at most "
             "{} are supported", B, N, int64_t(B) * N, INT_MAX);
  return B * N;
}

double Model::activation_floats(const ModelConfig& config, int B, int N, ModelPlan plan) {
  Carver counter{nullptr};
  std::vector<float*> x, stream;
  std::vector<LayerActs> acts;
  Scratch s{};
  float *xf, *rstd_f, *logits;
  plan = as_run(plan, N);
  const int chunk = chunk_length(plan, N);
  carve(counter, config, B, N, plan, x, stream, acts, s, xf, rstd_f, logits);
  double bf16_values = 0;  // the weights' bf16 copy, a projection's input and output gradient
  if (plan.precision == Precision::bf16)
    bf16_values = double(ParamLayout(config).total()) + 2.0 * B * chunk * widest_projection(config);
  return double(counter.used) + bf16_values / 2;
}

Model::Model(const ModelConfig& config, int B, int N, Attention& attention, ModelPlan plan)
    : config_(config), layout_(config), B_(B), seq_len_(N), attention_(attention), precision_(plan.precision) {
  config_.validate();
  token_count(B, N);
  LASP_CHECK(plan.chunk >= 0, "model: the chunk must be >= 0 tokens, got {}", plan.chunk);
  plan = as_run(plan, N);
  recompute_ = plan.recompute, layer_major_ = plan.layer_major;
  layer_major_attention_ = layer_major_ ? dynamic_cast<LayerMajorAttention*>(&attention) : nullptr;
  LASP_CHECK(!layer_major_ || layer_major_attention_,
             "model: a layer-major plan needs an attention with a layer-major mode (lasp2 across SP ranks)");
  chunk_ = chunk_length(plan, N);
  chunks_ = (N + chunk_ - 1) / chunk_;
  N_ = chunk_, T_ = token_count(B, chunk_);
  mlp_rows_ = int(mlp_rows(plan, size_t(T_)));

  const ModelConfig& c = config_;
  const int L = c.num_hidden_layers, H = c.num_attention_heads;
  lambdas_.resize(L);
  for (int l = 0; l < L; ++l) {
    lambdas_[l].resize(H);
    linear_attention_decays(lambdas_[l].data(), H, c.linear.decay);
  }

  // Two passes over the same carving: count, then assign.
  Carver counter{nullptr};
  carve(counter, c, B, N, plan, x_, stream_, acts_, s_, xf_, rstd_f_, logits_);
  check_fits_in_memory(4.0 * (2.0 * double(layout_.total()) + double(counter.used)),
                       fmt::format("the model's weights, gradients and activations for B={} N={} ({} parameters)", B,
                                   chunk_, layout_.total()));
  params_.assign(layout_.total(), 0.f);
  grads_.assign(layout_.total(), 0.f);
  w_ = layout_.bind(params_.data());  // bound once: the buffers are never resized
  g_ = layout_.bind(grads_.data());
  if (precision_ == Precision::bf16) {
    const size_t widest = widest_projection(c);
    weights_bf16_.resize(layout_.total());
    // (and the short convolutions' tail rows under a layer-major plan, at most kMaxConvRuns (K-1) per batch row)
    const size_t rows = std::max(size_t(T_), size_t(B_) * Attention::kMaxConvRuns * std::max(c.linear.conv_size - 1, 0));
    x_bf16_.resize(rows * widest);
    dy_bf16_.resize(rows * widest);
  }
  arena_.assign(counter.used, 0.f);
  Carver assign{arena_.data()};
  carve(assign, c, B, N, plan, x_, stream_, acts_, s_, xf_, rstd_f_, logits_);
}

void Model::zero_grads() { zero(grads_.data(), grads_.size()); }

void Model::set_document_start(int token) {
  LASP_CHECK(token >= -1 && token < config_.vocab_size,
             "the document-start token must be in the vocabulary [0, {}) (or -1 for no documents), got {}",
             config_.vocab_size, token);
  if (token < 0 && doc_start_ >= 0) attention_.set_documents(nullptr);
  doc_start_ = token;
}

void Model::start_chunk(int index, Attention::Pass pass) {
  begin_ = index * chunk_;
  N_ = std::min(chunk_, seq_len_ - begin_), T_ = B_ * N_;
  if (chunks_ == 1) {  // the whole sequence: nothing to copy or announce
    in_ = inputs_, tg_ = targets_;
    return;
  }
  rope_stale_ = true;
  attention_.begin_chunk(begin_, N_, pass);
  chunk_inputs_.resize(size_t(T_));
  chunk_targets_.resize(size_t(T_));
  if (doc_start_ >= 0) chunk_flags_.resize(size_t(T_));
  for (int b = 0; b < B_; ++b) {
    const size_t from = size_t(b) * seq_len_ + begin_, to = size_t(b) * N_;
    std::copy_n(inputs_ + from, N_, chunk_inputs_.begin() + to);
    if (targets_) std::copy_n(targets_ + from, N_, chunk_targets_.begin() + to);
    if (doc_start_ >= 0) std::copy_n(doc_flags_.begin() + long(from), N_, chunk_flags_.begin() + long(to));
  }
  in_ = chunk_inputs_.data(), tg_ = has_targets_ ? chunk_targets_.data() : nullptr;
}

const RopeTable& Model::rope() {
  if (rope_stale_) rope_ = rope_table(attention_.positions(), N_, config_.head_dim(), config_.rope_theta);
  rope_stale_ = false;
  return rope_;
}

double Model::forward(const int* inputs, const int* targets, int* predictions) {
  inputs_ = inputs, targets_ = targets;
  has_targets_ = targets != nullptr;
  if (doc_start_ >= 0) {  // the documents of this window, before any layer runs
    doc_flags_.resize(size_t(B_) * seq_len_);
    document_starts(doc_flags_.data(), inputs, long(doc_flags_.size()), doc_start_);
    attention_.set_documents(doc_flags_.data());
  }
  if (precision_ == Precision::bf16) to_bf16(weights_bf16_.data(), params_.data(), params_.size());  // once per step
  if (layer_major_) return forward_layer_major(predictions);
  double loss = 0;
  for (int c = 0; c < chunks_; ++c) {
    start_chunk(c, Attention::Pass::forward);
    loss += forward_chunk(predictions);
    live_chunk_ = c;
  }
  return loss;
}

double Model::forward_chunk(int* predictions) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, V = c.vocab_size;
  const Weights& w = w_;
  embedding_forward(x_[0], in_, w.embed, T_, D, V);
  for (int l = 0; l < c.num_hidden_layers; ++l) forward_layer(l, true);
  return head_forward(predictions);
}

double Model::head_forward(int* predictions) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, V = c.vocab_size;
  rmsnorm_forward(xf_, rstd_f_, x_[c.num_hidden_layers], w_.final_norm, T_, D, c.rms_norm_eps);
  project(logits_, {xf_}, w_.lm_head, D, V);
  if (predictions)
    for (int b = 0; b < B_; ++b)
      for (int i = 0; i < N_; ++i) {
        const float* row = logits_ + (size_t(b) * N_ + i) * V;
        predictions[size_t(b) * seq_len_ + begin_ + i] = int(std::max_element(row, row + V) - row);
      }
  return tg_ ? cross_entropy_forward(nullptr, logits_, tg_, T_, V) : 0.0;
}

void Model::forward_layer(int l, bool write_output) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const float eps = c.rms_norm_eps;
  const LayerWeights& w = w_.layers[l];
  LayerActs& a = acts(l);
  const size_t T = T_;

  rmsnorm_forward(a.xn, a.rstd_in, x_[l], w.input_norm, T_, D, eps);
  const Input xn = keep(a.xn, a.xn16, T * D);
  const float* attn_out;  // what o_proj reads
  Input o_in;             // the same as o_proj's operand, when a bf16 form is written at once
  if (c.layer_types[l] == 'L') {
    if (c.linear.decay == Decay::gdn) {
      gdn_forward(l, xn);
    } else {
      project(a.qp, xn, w.wq, D, e.q);
      project(a.kp, xn, w.wk, D, e.k);
      linear_features(l, true);
      if (c.linear.expanded) {  // the normalizer's column: v~ = [v | 1] (the projection goes through a.o)
        project(a.o, xn, w.wv, D, e.v);
        normalizer_append_ones(a.v, a.o, T * H, c.head_dim());
      } else {
        project(a.v, xn, w.wv, D, e.v);
      }
    }
    if (c.linear.decay == Decay::gla) gate_forward(l, xn);
    if (c.linear.expanded) {  // Y = [n | s]; o = n / (s + eps)
      attention_.linear_forward(l, a.y, a.q, a.k, a.v, linear_gates(l, false));
      normalizer_forward(a.o, a.y, T * H, c.head_dim(), c.linear.normalizer_eps);
    } else {
      attention_.linear_forward(l, a.o, a.q, a.k, a.v, linear_gates(l, false));
    }
    attn_out = a.o;
    if (c.linear.output_norm) {  // per-head RMSNorm: T*HV rows of dv, one weight shared by the heads
      rmsnorm_forward(a.on, a.rstd_o, a.o, w.o_norm, T_ * c.linear_value_heads(), c.linear_value_width(), eps);
      attn_out = a.on;
    }
    if (c.linear.output_gate) {  // o * silu(W_g x); under bf16 only o_proj's bf16 operand is read
      project(a.gp, xn, w.wg, D, e.o);
      if (precision_ == Precision::bf16) swiglu_forward_bf16(a.ao16, a.gp, attn_out, long(T * e.o)), o_in = {nullptr, a.ao16};
      else swiglu_forward(a.og, a.gp, attn_out, long(T * e.o));
      attn_out = a.og;
    }
  } else {
    project(a.q, xn, w.wq, D, e.q);
    project(a.k, xn, w.wk, D, e.k);
    project(a.v, xn, w.wv, D, e.v);
    rope_forward(a.q, a.q, rope(), B_, H);
    rope_forward(a.k, a.k, rope(), B_, Hkv);
    attention_.softmax_forward(l, a.o, a.lse, a.q, a.k, a.v);
    attn_out = a.o;
  }
  // h = x + o_proj(attention); out = h + down(silu(gate(hn)) * up(hn)), hn = RMSNorm(h)
  if (!o_in.b16) o_in = keep(attn_out, a.ao16, T * e.o);
  project(a.h, o_in, w.wo, e.o, D);
  residual_rmsnorm_forward(a.h, a.hn, a.rstd_post, x_[l], w.post_norm, T_, D, eps);
  keep(a.hn, a.hn16, T * D);
  if (!write_output && recompute_) return;  // the backward runs the MLP again, pass by pass
  for (int r = 0; r < T_; r += mlp_rows_) {  // one pass unless recompute
    const int rows = std::min(mlp_rows_, T_ - r);
    mlp_forward(l, r, rows);
    if (write_output) project(x_[l + 1] + size_t(r) * D, kept(a.m, a.m16), w.w_down, F, D, rows);
  }
  if (write_output) add_into(x_[l + 1], a.h, T * D);
}

// The k (and q, with queries) the linear attention of layer l reads, from their projections: the element-wise
// feature map, or an expanded map's kernel input (based: the projection itself; rebased: its LayerNorm with
// gamma and beta).
void Model::linear_features(int l, bool queries) {
  const ModelConfig& c = config_;
  LayerActs& a = acts(l);
  const size_t n = size_t(T_) * c.attention_widths(l).q;
  if (c.linear.expanded == ExpandedKind::rebased) {
    const LayerWeights& w = w_.layers[l];
    const int f = c.linear_key_width();
    const long rows = long(T_) * c.num_attention_heads;
    if (queries) rebased_norm_forward(a.q, a.qp, w.fm_gamma, w.fm_beta, rows, f, f, f);
    rebased_norm_forward(a.k, a.kp, w.fm_gamma, w.fm_beta, rows, f, f, f);
  } else {
    if (queries) feature_map_forward(a.q, a.qp, long(n), c.linear.feature_map);
    feature_map_forward(a.k, a.kp, long(n), c.linear.feature_map);
  }
}

// Their backward: dqp, dkp (overwritten) from dq, dk; rebased's gamma and beta gradients accumulate.
void Model::linear_features_backward(int l, const float* dq, const float* dk, float* dqp, float* dkp) {
  const ModelConfig& c = config_;
  const LayerActs& a = acts(l);
  const size_t n = size_t(T_) * c.attention_widths(l).q;
  if (c.linear.expanded == ExpandedKind::rebased) {
    const LayerWeights& w = w_.layers[l];
    const LayerWeights& g = g_.layers[l];
    const int f = c.linear_key_width();
    const long rows = long(T_) * c.num_attention_heads;
    for (float* x : {dqp, dkp})
      if (x) zero(x, n);
    if (dqp) rebased_norm_backward(dqp, g.fm_gamma, g.fm_beta, dq, a.qp, w.fm_gamma, rows, f, f, f);
    if (dkp) rebased_norm_backward(dkp, g.fm_gamma, g.fm_beta, dk, a.kp, w.fm_gamma, rows, f, f, f);
  } else {
    if (dqp) feature_map_backward(dqp, dq, a.qp, long(n), c.linear.feature_map, GradStore::overwrite);
    if (dkp) feature_map_backward(dkp, dk, a.kp, long(n), c.linear.feature_map, GradStore::overwrite);
  }
}

LinearGates Model::linear_gates(int l, bool backward) {
  LinearGates gates(lambdas_[l].data());
  if (config_.linear.decay == Decay::gla) gates.log_gates = acts(l).glog, gates.d_log_gates = backward ? s_.dglog : nullptr;
  if (config_.linear.decay == Decay::gdn) {
    gates.log_gates = acts(l).glog, gates.beta = acts(l).beta;
    if (backward) gates.d_log_gates = s_.dglog, gates.d_beta = s_.dbeta;
  }
  return gates;
}

// GLA's log-gates of layer l (GATES.md): g = logsigmoid(W_gk2 (W_gk1 xn) + b_gk) / gate_normalizer, into a.glog.
const float* Model::gate_forward(int l, Input xn) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, E = c.attention_widths(l).k, r = c.linear.gate_low_rank;  // a gate per key dim
  const LayerWeights& w = w_.layers[l];
  LayerActs& a = acts(l);
  project(a.gk1, xn, w.wgk1, D, r);
  project(a.gz, {a.gk1}, w.wgk2, r, E);
  const float normalizer = c.linear.gate_normalizer, *bias = w.bgk;
#pragma omp parallel for schedule(static)
  for (long t = 0; t < long(T_); ++t) {
    float *z = a.gz + t * E, *out = a.glog + t * E;
#pragma omp simd
    for (int j = 0; j < E; ++j) {
      z[j] += bias[j];
      out[j] = gla_log_gate(z[j], normalizer);
    }
  }
  return a.glog;
}

// The gate projection's gradients from the log-gates' (s_.dglog): dz = dg sigmoid(-z) / gate_normalizer; adds
// the input's gradient into s_.dxn.
void Model::gate_backward(int l, Input xn) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, E = c.attention_widths(l).k, r = c.linear.gate_low_rank;
  const LayerWeights& w = w_.layers[l];
  const LayerWeights& g = g_.layers[l];
  const LayerActs& a = acts(l);
  float* dz = s_.dglog;
  const float normalizer = c.linear.gate_normalizer;
#pragma omp parallel for schedule(static)
  for (long t = 0; t < long(T_); ++t) {
    float* d = dz + t * E;
    const float* z = a.gz + t * E;
#pragma omp simd
    for (int j = 0; j < E; ++j) d[j] *= gla_log_gate_derivative(z[j], normalizer);
  }
  for (long t = 0; t < long(T_); ++t)  // the bias's gradient, summed in token order
#pragma omp simd
    for (int j = 0; j < E; ++j) g.bgk[j] += dz[t * E + j];
  project_backward(s_.dgk1, g.wgk2, dz, {a.gk1}, w.wgk2, r, E, true);
  project_backward(s_.dxn, g.wgk1, s_.dgk1, xn, w.wgk1, D, r);
}

void Model::backward(float dloss) {
  LASP_CHECK(has_targets_, "model: backward needs a forward with targets");
  if (layer_major_) return backward_layer_major(dloss);
  for (int c = chunks_ - 1; c >= 0; --c) {
    start_chunk(c, Attention::Pass::backward);
    if (c != live_chunk_) forward_chunk(nullptr);  // the activations hold the last chunk only
    live_chunk_ = c;
    backward_chunk(dloss);
  }
}

void Model::head_backward(float dloss) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  zero(s_.dlogits, size_t(T_) * V);
  cross_entropy_backward(s_.dlogits, logits_, tg_, T_, V, dloss);
  project_backward(s_.dxn, g_.lm_head, s_.dlogits, {xf_}, w_.lm_head, D, V, true);
  rmsnorm_backward(s_.dres, g_.final_norm, s_.dxn, x_[L], w_.final_norm, rstd_f_, T_, D, GradStore::overwrite);
}

void Model::backward_chunk(float dloss) {
  const ModelConfig& c = config_;
  head_backward(dloss);
  for (int l = c.num_hidden_layers - 1; l >= 0; --l) {
    if (recompute_) {
      attention_.set_recomputing(true);
      forward_layer(l, false);
      attention_.set_recomputing(false);
    }
    backward_layer(l);
  }
  embedding_backward(g_.embed, s_.dres, in_, T_, c.hidden_size, c.vocab_size);
}

void Model::backward_layer(int l) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const LayerWeights& w = w_.layers[l];
  const LayerWeights& g = g_.layers[l];
  LayerActs& a = acts(l);
  const size_t T = T_;

  // MLP: out = h + down(m); s_.dres holds dL/dout, and becomes dL/dh. With recompute, pass by pass, each
  // pass's g, u, m computed again first.
  for (int r = 0; r < T_; r += mlp_rows_) {
    const int rows = std::min(mlp_rows_, T_ - r);
    if (recompute_) mlp_forward(l, r, rows);
    const size_t at = size_t(r) * D;
    project_backward(s_.dm, g.w_down, s_.dres + at, kept(a.m, a.m16), w.w_down, F, D, true, rows);
    Input dg = s_.dg, du = s_.du;
    bool joint = false;  // one product pair for gate and up
    if (precision_ == Precision::bf16) {
      // The gradients only as the products' bf16 operands, in s_.dg's room. With gate and up side by side in
      // the weights (ParamLayout's order), each row holds its dgate then its dup.
      joint = w.w_up == w.w_gate + size_t(F) * D && g.w_up == g.w_gate + size_t(F) * D;
      bf16* dg16 = reinterpret_cast<bf16*>(s_.dg);
      bf16* du16 = joint ? dg16 + F : reinterpret_cast<bf16*>(s_.du);
      swiglu_backward_bf16(dg16, du16, joint ? 2 * F : F, s_.dm, a.g16, a.u16, rows, F);
      dg = {nullptr, dg16}, du = {nullptr, du16};
    } else {
      swiglu_backward(s_.dg, s_.du, s_.dm, a.g, a.u, long(rows) * F, GradStore::overwrite);
    }
    const Input hn = kept(a.hn, a.hn16).rows_from(at);
    if (joint) {
      project_backward(s_.dhn + at, g.w_gate, dg, hn, w.w_gate, D, 2 * F, true, rows);
    } else {
      project_backward(s_.dhn + at, g.w_gate, dg, hn, w.w_gate, D, F, true, rows);
      project_backward(s_.dhn + at, g.w_up, du, hn, w.w_up, D, F, false, rows);
    }
  }
  rmsnorm_backward(s_.dres, g.post_norm, s_.dhn, a.h, w.post_norm, a.rstd_post, T_, D);

  // Attention: h = x + o_proj(attn_out); s_.dres = dL/dh is also dL/d(o_proj output).
  // The first product into dxn overwrites it (the rest accumulate): the output gate's, or the query's.
  const bool gated = c.layer_types[l] == 'L' && c.linear.output_gate;
  if (c.layer_types[l] == 'L') {
    const float* normed = c.linear.output_norm ? a.on : a.o;
    const float* attn_out = c.linear.output_gate ? a.og : normed;
    project_backward(s_.da, g.wo, s_.dres, kept(attn_out, a.ao16), w.wo, e.o, D, true);
    float* d_normed = s_.da;  // gradient w.r.t. the (normed) attention output
    if (c.linear.output_gate) {
      swiglu_backward(s_.dgp, s_.dqp, s_.da, a.gp, normed, long(T * e.o), GradStore::overwrite);  // dqp: d(normed)
      project_backward(s_.dxn, g.wg, s_.dgp, kept(a.xn, a.xn16), w.wg, D, e.o, true);
      d_normed = s_.dqp;
    }
    float* d_o = d_normed;
    if (c.linear.output_norm) {
      float* target = d_normed == s_.da ? s_.dqp : s_.da;
      rmsnorm_backward(target, g.o_norm, d_normed, a.o, w.o_norm, a.rstd_o, T_ * c.linear_value_heads(),
                       c.linear_value_width(), GradStore::overwrite);
      d_o = target;
    }
    zero(s_.dq, T * e.q);
    zero(s_.dk, T * e.k);
    if (c.linear.expanded) {  // through o = n / (s + eps) to dY, the attention's; v~'s gradient loses its column
      float* dy = d_o == s_.da ? s_.dqp : s_.da;
      const size_t rows = T * c.num_attention_heads;
      normalizer_backward(dy, d_o, a.o, a.y, rows, c.head_dim(), c.linear.normalizer_eps);
      zero(s_.dv, rows * (c.head_dim() + 1));
      attention_.linear_backward(l, s_.dq, s_.dk, s_.dv, dy, a.q, a.k, a.v, linear_gates(l, true));
      normalizer_drop_column(s_.dv, s_.dv, rows, c.head_dim());
    } else {
      zero(s_.dv, T * e.v);
      attention_.linear_backward(l, s_.dq, s_.dk, s_.dv, d_o, a.q, a.k, a.v, linear_gates(l, true));
    }
    const Input xn = kept(a.xn, a.xn16);
    if (c.linear.decay == Decay::gdn) {
      gdn_backward(l, xn, !gated);
    } else {
      linear_features_backward(l, s_.dq, s_.dk, s_.dqp, s_.dkp);
      project_backward(s_.dxn, {{g.wq, s_.dqp, w.wq, e.q}, {g.wk, s_.dkp, w.wk, e.k}, {g.wv, s_.dv, w.wv, e.v}}, xn, D,
                       !gated);
    }
    if (c.linear.decay == Decay::gla) gate_backward(l, xn);
  } else {
    project_backward(s_.da, g.wo, s_.dres, kept(a.o, a.ao16), w.wo, e.o, D, true);
    zero(s_.dq, T * e.q);
    zero(s_.dk, T * e.k);
    zero(s_.dv, T * e.v);
    attention_.softmax_backward(l, s_.dq, s_.dk, s_.dv, s_.da, a.o, a.lse, a.q, a.k, a.v);
    rope_backward(s_.dqp, s_.dq, rope(), B_, H, GradStore::overwrite);
    rope_backward(s_.dkp, s_.dk, rope(), B_, Hkv, GradStore::overwrite);
    const Input xn = kept(a.xn, a.xn16);
    project_backward(s_.dxn, {{g.wq, s_.dqp, w.wq, e.q}, {g.wk, s_.dkp, w.wk, e.k}, {g.wv, s_.dv, w.wv, e.v}}, xn, D,
                     true);
  }
  rmsnorm_backward(s_.dres, g.input_norm, s_.dxn, x_[l], w.input_norm, a.rstd_in, T_, D);
}

}  // namespace lasp
