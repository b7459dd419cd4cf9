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
  if (c.layer_types[l] == 'L') {
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
  if (gla) std::fill_n(s_.dglog, size_t(T_) * e.k, 0.f);
  if (linear ? !layer_major_attention_->linear_key_gradients(l, s_.dk, s_.dv, a.k, a.v, linear_gates(l, true))
             : !layer_major_attention_->softmax_key_gradients(l, s_.dk, s_.dv))
    return;
  if (linear && c.linear.expanded) normalizer_drop_column(s_.dv, s_.dv, value_rows, c.head_dim());
  if (linear)
    linear_features_backward(l, nullptr, s_.dk, nullptr, s_.dkp);
  else
    rope_backward(s_.dkp, s_.dk, rope(), B_, c.num_key_value_heads, GradStore::overwrite);
  project_backward(s_.dxn, g.wk, s_.dkp, kept(a.xn, a.xn16), w.wk, D, e.k, true);
  project_backward(s_.dxn, g.wv, s_.dv, kept(a.xn, a.xn16), w.wv, D, e.v);
  if (gla) gate_backward(l, kept(a.xn, a.xn16));  // the later pieces' share of the gates' gradient
  float* grad = stream_[c.num_hidden_layers];
  load(s_.dres, grad);
  rmsnorm_backward(s_.dres, g.input_norm, s_.dxn, x_[l], w.input_norm, a.rstd_in, T_, D);
  store(grad, s_.dres);
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
    for (int k = 0; k < chunks_; ++k) {  // 2. what the exchange brought to the keys and values
      start_chunk(k, Pass::backward);
      load(x_[l], stream_[l]);
      key_gradients_backward(l);
    }
  }
  for (int k = 0; k < chunks_; ++k) {
    start_chunk(k, Pass::backward);
    load(s_.dres, grad);
    embedding_backward(g_.embed, s_.dres, in_, T_, c.hidden_size, c.vocab_size);
  }
}

}  // namespace lasp
