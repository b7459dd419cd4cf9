// Layer-major chunked runs (ModelPlan::layer_major): the memory plan of several SP ranks. What ranks
// exchange for a layer (LASP-2's d x d piece states, LASP-2H's keys and values) depends on the whole piece,
// so every chunk goes through one layer before the next layer starts, in two passes around the attention's
// exchange (LayerMajorAttention says what each pass hands it). Kept for the whole piece: the residual
// stream entering each layer, (L + 1) x B x N x D floats, the last of which turns into the gradient stream
// of the backward. Everything else is the size of one chunk: the backward runs each layer's forward again,
// chunk by chunk.
#include <cstring>

#include "core/check.h"
#include "kernels/embedding.h"
#include "kernels/feature_map.h"
#include "kernels/normalizer.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "model/model.h"

namespace lasp {

void Model::load(float* chunk, const float* stream) const {
  const size_t D = config_.hidden_size, row = size_t(N_) * D;
  for (int b = 0; b < B_; ++b)
    std::memcpy(chunk + b * row, stream + (size_t(b) * seq_len_ + begin_) * D, sizeof(float) * row);
}

void Model::store(float* stream, const float* chunk) const {
  const size_t D = config_.hidden_size, row = size_t(N_) * D;
  for (int b = 0; b < B_; ++b)
    std::memcpy(stream + (size_t(b) * seq_len_ + begin_) * D, chunk + b * row, sizeof(float) * row);
}

void Model::layer_keys(int l) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size;
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const LayerWeights& w = w_.layers[l];
  LayerActs& a = acts(l);
  rmsnorm_forward(a.xn, a.rstd_in, x_[l], w.input_norm, T_, D, c.rms_norm_eps);
  const Input xn = keep(a.xn, a.xn16, size_t(T_) * D);
  if (c.layer_types[l] == 'L' && c.linear.decay == Decay::gdn) {
    gdn_forward(l, xn, false);  // the exchange and the keys' gradients need no queries
  } else if (c.layer_types[l] == 'L') {
    project(a.kp, xn, w.wk, D, e.k);
    linear_features(l, false);
    if (c.linear.expanded) {  // v~ = [v | 1], through a.o (kernels/normalizer.h)
      project(a.o, xn, w.wv, D, e.v);
      normalizer_append_ones(a.v, a.o, size_t(T_) * c.num_attention_heads, c.head_dim());
    } else {
      project(a.v, xn, w.wv, D, e.v);
    }
    if (c.linear.decay == Decay::gla) gate_forward(l, xn);
  } else {
    project(a.k, xn, w.wk, D, e.k);
    rope_forward(a.k, a.k, rope(), B_, c.num_key_value_heads);
    project(a.v, xn, w.wv, D, e.v);
  }
}

void Model::key_gradients_backward(int l) {
  const ModelConfig& c = config_;
  const int D = c.hidden_size;
  const ModelConfig::AttentionWidths e = c.attention_widths(l);
  const LayerWeights& w = w_.layers[l];
  const LayerWeights& g = g_.layers[l];
  LayerActs& a = acts(l);
  layer_keys(l);
  const size_t value_rows = size_t(T_) * c.num_attention_heads;  // v~ has a column more under an expanded map
  std::fill_n(s_.dk, size_t(T_) * e.k, 0.f);
  std::fill_n(s_.dv, c.linear.expanded && c.layer_types[l] == 'L' ? value_rows * (c.head_dim() + 1) : size_t(T_) * e.v, 0.f);
  const bool linear = c.layer_types[l] == 'L', gla = linear && c.linear.decay == Decay::gla;
  const bool gdn = linear && c.linear.decay == Decay::gdn;
  if (gla) std::fill_n(s_.dglog, size_t(T_) * e.k, 0.f);
  if (gdn) {  // the gates' gradients accumulate
    std::fill_n(s_.dbeta, size_t(T_) * c.linear_value_heads(), 0.f);
    std::fill_n(s_.dglog, size_t(T_) * c.linear_value_heads(), 0.f);
  }
  if (linear ? !layer_major_attention_->linear_key_gradients(l, s_.dk, s_.dv, a.k, a.v, linear_gates(l, true))
             : !layer_major_attention_->softmax_key_gradients(l, s_.dk, s_.dv))
    return;
  if (gdn) {
    gdn_backward(l, kept(a.xn, a.xn16), true, false);
  } else {
    if (linear && c.linear.expanded) normalizer_drop_column(s_.dv, s_.dv, value_rows, c.head_dim());
    if (linear)
      linear_features_backward(l, nullptr, s_.dk, nullptr, s_.dkp);
    else
      rope_backward(s_.dkp, s_.dk, rope(), B_, c.num_key_value_heads, GradStore::overwrite);
    project_backward(s_.dxn, g.wk, s_.dkp, kept(a.xn, a.xn16), w.wk, D, e.k, true);
    project_backward(s_.dxn, g.wv, s_.dv, kept(a.xn, a.xn16), w.wv, D, e.v);
    if (gla) gate_backward(l, kept(a.xn, a.xn16));  // the later pieces' share of the gates' gradient
  }
  float* grad = stream_[c.num_hidden_layers];
  load(s_.dres, grad);
  rmsnorm_backward(s_.dres, g.input_norm, s_.dxn, x_[l], w.input_norm, a.rstd_in, T_, D);
  store(grad, s_.dres);
}

// decay gdn: the rows of x_l whose convolution inputs the next pieces read (LayerMajorAttention::conv_tail_tokens),
// (B, pieces, K-1) rows into rows.x, through the input norm into rows.xn (rstd rows.rstd). Empty where layer l has
// no such rows.
Model::TailRows Model::conv_tail_rows(int l) const {
  const ModelConfig& c = config_;
  const int K = c.linear.conv_size, D = c.hidden_size;
  TailRows rows;
  if (c.layer_types[l] != 'L' || c.linear.decay != Decay::gdn || K <= 1) return rows;
  rows.tokens = layer_major_attention_->conv_tail_tokens(K);
  const size_t n = size_t(B_) * rows.tokens.size();
  rows.x.resize(n * D), rows.xn.resize(n * D), rows.rstd.resize(n);
  for (int b = 0; b < B_; ++b)
    for (size_t j = 0; j < rows.tokens.size(); ++j)
      std::memcpy(rows.x.data() + (b * rows.tokens.size() + j) * D, stream_[l] + (size_t(b) * seq_len_ + rows.tokens[j]) * D,
                  sizeof(float) * D);
  rmsnorm_forward(rows.xn.data(), rows.rstd.data(), rows.x.data(), w_.layers[l].input_norm, int(n), D, c.rms_norm_eps);
  return rows;
}

// Before layer l's passes: those rows' q, k and v projections, the convolutions' inputs, to the attention.
void Model::conv_tails_forward(int l) {
  const TailRows rows = conv_tail_rows(l);
  if (rows.tokens.empty()) return;
  const ModelConfig::AttentionWidths e = config_.attention_widths(l);
  const LayerWeights& w = w_.layers[l];
  const int D = config_.hidden_size, n = B_ * int(rows.tokens.size());
  std::vector<float> tails(size_t(n) * std::max({e.q, e.k, e.v}));
  const std::pair<const float*, int> convs[3] = {{w.wq, e.q}, {w.wk, e.k}, {w.wv, e.v}};
  for (int i = 0; i < 3; ++i) {
    project(tails.data(), Input{rows.xn.data(), nullptr}, convs[i].first, D, convs[i].second, n);
    layer_major_attention_->conv_exchange(3 * l + i, tails.data(), convs[i].second, config_.linear.conv_size);
  }
}

// After layer l's backward: the gradient of those projections, from the pieces after this rank's, back through them
// and the input norm into dL/dx_l.
void Model::conv_tails_backward(int l) {
  const TailRows rows = conv_tail_rows(l);
  if (rows.tokens.empty()) return;
  const ModelConfig::AttentionWidths e = config_.attention_widths(l);
  const LayerWeights& w = w_.layers[l];
  const LayerWeights& g = g_.layers[l];
  const int D = config_.hidden_size, n = B_ * int(rows.tokens.size());
  std::vector<float> dtails(size_t(n) * std::max({e.q, e.k, e.v})), dxn(size_t(n) * D), dx(size_t(n) * D);
  const std::pair<const float*, int> convs[3] = {{w.wq, e.q}, {w.wk, e.k}, {w.wv, e.v}};
  float* dw[3] = {g.wq, g.wk, g.wv};
  for (int i = 0; i < 3; ++i) {
    layer_major_attention_->conv_exchange_backward(3 * l + i, dtails.data(), convs[i].second, config_.linear.conv_size);
    project_backward(dxn.data(), dw[i], dtails.data(), Input{rows.xn.data(), nullptr}, convs[i].first, D,
                     convs[i].second, i == 0, n);
  }
  float* grad = stream_[config_.num_hidden_layers];
  const size_t per_row = rows.tokens.size();
  for (int b = 0; b < B_; ++b)
    for (size_t j = 0; j < per_row; ++j)
      std::memcpy(dx.data() + (b * per_row + j) * D, grad + (size_t(b) * seq_len_ + rows.tokens[j]) * D, sizeof(float) * D);
  rmsnorm_backward(dx.data(), g.input_norm, dxn.data(), rows.x.data(), w.input_norm, rows.rstd.data(), n, D);
  for (int b = 0; b < B_; ++b)
    for (size_t j = 0; j < per_row; ++j)
      std::memcpy(grad + (size_t(b) * seq_len_ + rows.tokens[j]) * D, dx.data() + (b * per_row + j) * D, sizeof(float) * D);
}

void Model::exchange(int l, Attention::Pass pass) {
  if (config_.layer_types[l] == 'L') layer_major_attention_->linear_exchange(l, pass, linear_gates(l, false));
  else layer_major_attention_->softmax_exchange(l, pass);
}

double Model::forward_layer_major(int* predictions) {
  const ModelConfig& c = config_;
  const int L = c.num_hidden_layers;
  using Pass = Attention::Pass;
  for (int k = 0; k < chunks_; ++k) {
    start_chunk(k, Pass::forward);
    embedding_forward(x_[0], in_, w_.embed, T_, c.hidden_size, c.vocab_size);
    store(stream_[0], x_[0]);
  }
  for (int l = 0; l < L; ++l) {
    conv_tails_forward(l);
    for (int k = 0; k < chunks_; ++k) {  // 1. the keys and values that the exchange needs
      start_chunk(k, Pass::forward);
      load(x_[l], stream_[l]);
      layer_keys(l);
      if (c.layer_types[l] == 'L') layer_major_attention_->linear_collect(l, acts(l).k, acts(l).v, linear_gates(l, false));
      else layer_major_attention_->softmax_collect(l, acts(l).k, acts(l).v);
    }
    exchange(l, Pass::forward);
    for (int k = 0; k < chunks_; ++k) {  // 2. the layer
      start_chunk(k, Pass::forward);
      load(x_[l], stream_[l]);
      forward_layer(l, true);
      store(stream_[l + 1], x_[l + 1]);
    }
  }
  double loss = 0;
  for (int k = 0; k < chunks_; ++k) {
    start_chunk(k, Pass::forward);
    load(x_[L], stream_[L]);
    loss += head_forward(predictions);
  }
  return loss;
}

void Model::backward_layer_major(float dloss) {
  const ModelConfig& c = config_;
  const int L = c.num_hidden_layers;
  using Pass = Attention::Pass;
  // dL/dx of the layer being run backward, over the whole piece: it takes the place of x_[L], which only the
  // head reads, chunk by chunk, before its gradient is written there.
  float* grad = stream_[L];
  for (int k = chunks_ - 1; k >= 0; --k) {
    start_chunk(k, Pass::backward);
    load(x_[L], stream_[L]);
    head_forward(nullptr);
    head_backward(dloss);
    store(grad, s_.dres);
  }
  for (int l = L - 1; l >= 0; --l) {
    for (int k = chunks_ - 1; k >= 0; --k) {  // 1. the layer again, and its backward without the exchange
      start_chunk(k, Pass::backward);
      load(x_[l], stream_[l]);
      forward_layer(l, false);
      load(s_.dres, grad);
      backward_layer(l);
      store(grad, s_.dres);
    }
    exchange(l, Pass::backward);
    // 2. what the exchange brought to the keys and values, in reverse (the delta rule carries it chunk to chunk)
    for (int k = chunks_ - 1; k >= 0; --k) {
      start_chunk(k, Pass::backward);
      load(x_[l], stream_[l]);
      key_gradients_backward(l);
    }
    conv_tails_backward(l);
  }
  for (int k = 0; k < chunks_; ++k) {
    start_chunk(k, Pass::backward);
    load(s_.dres, grad);
    embedding_backward(g_.embed, s_.dres, in_, T_, c.hidden_size, c.vocab_size);
  }
}

}  // namespace lasp
