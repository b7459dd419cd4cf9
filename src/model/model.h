// The Linear-Llama3 / hybrid model of MODEL.md on this rank's tokens. The forward is the list of layers,
// the backward the same list reversed; token mixing goes through the Attention seam (model/attention.h).
// Parameters, gradients and activations each live in one buffer laid out by a table; with `recompute`
// only each layer's input is kept and the layer is recomputed during the backward.
#pragma once
#include <vector>

#include "core/huge_pages.h"
#include "kernels/rope.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/params.h"

namespace lasp {

class Model {
 public:
  // B rows of N tokens per call (this rank's slice under sequence parallelism).
  Model(const ModelConfig& config, int B, int N, Attention& attention, bool recompute = false);

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  int batch() const { return B_; }
  int seq_len() const { return N_; }
  // The flat buffers (ParamLayout order). Write their elements; never resize them.
  std::vector<float>& params() { return params_; }
  std::vector<float>& grads() { return grads_; }
  const std::vector<float>& params() const { return params_; }
  const std::vector<float>& grads() const { return grads_; }
  void zero_grads();

  // Forward on inputs (B, N). With targets (B, N; -1 = no target) it returns the SUM of the next-token
  // cross-entropies and keeps what the backward needs; without, it only computes the logits.
  double forward(const int* inputs, const int* targets);
  // Gradients of (sum of losses) * dloss, accumulated into grads(); dloss = 1 / (targets in the global batch).
  void backward(float dloss);
  const float* logits() const { return logits_; }  // (B*N, V) of the last forward

 private:
  struct LayerActs {
    float *xn, *rstd_in;          // (T, D), (T)
    float *qp, *kp;               // linear layers: (T, E) projections before the feature map
    float *q, *k, *v;             // (T, E), (T, Ekv), (T, Ekv): what attention consumed
    float *o, *lse;               // (T, E) attention output; softmax layers: (B, H, N)
    float *on, *rstd_o;           // output_norm: (T, E), (T * H)
    float *gp, *og;               // output_gate: (T, E) gate projection, (T, E) gated output
    float *h, *hn, *rstd_post;    // (T, D), (T, D), (T)
    float *g, *u, *m;             // (T, F) gate, up, silu(gate) * up
  };
  struct Scratch {  // backward buffers shared by all layers
    float *dres, *dxn, *dhn, *da, *dq, *dk, *dv, *dqp, *dkp, *dgp, *dg, *du, *dm, *dlogits;
  };

  ModelConfig config_;
  ParamLayout layout_;
  int B_, N_, T_;
  Attention& attention_;
  bool recompute_;
  RopeTable rope_;  // the softmax layers' angles at attention_.positions()
  std::vector<float> params_, grads_;  // never resized after construction: w_ and g_ point into them
  Weights w_, g_;
  std::vector<float, HugePageAllocator<float>> arena_;  // activations and scratch
  std::vector<std::vector<float>> lambdas_;  // per layer: decay of each head (linear layers)
  std::vector<float*> x_;                    // (L + 1) residual stream entering each layer, (T, D)
  std::vector<LayerActs> acts_;              // per layer, or one shared set when recomputing
  Scratch s_{};
  float *xf_, *rstd_f_, *logits_;            // final norm output, its rstd, logits (T, V)
  std::vector<int> inputs_, targets_;
  bool has_targets_ = false;

  LayerActs& acts(int layer) { return acts_[recompute_ ? 0 : layer]; }
  // Computes layer l from x_[l]; writes x_[l + 1] when write_output.
  void forward_layer(int l, bool write_output);
  // From s_.dres = dL/dx_[l + 1] to s_.dres = dL/dx_[l], accumulating the layer's weight gradients.
  void backward_layer(int l);
};

}  // namespace lasp
