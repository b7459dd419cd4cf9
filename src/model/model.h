// The Linear-Llama3 / hybrid model of MODEL.md on this rank's tokens. The forward is the list of layers,
// the backward the same list reversed; token mixing goes through the Attention seam (model/attention.h).
// Parameters, gradients and activations each live in one buffer laid out by a table. The memory plan
// (ModelPlan) says how much of the activations to keep: with `recompute` only each layer's input, the layer
// being recomputed during the backward; with a `chunk` the sequence runs as chunks of that many tokens per
// row through every layer, so that activations scale with the chunk, not with N (the attention must be a
// ChunkedAttention of that chunk; the backward recomputes each chunk's forward, the last one excepted).
// With `layer_major` too (several SP ranks), each layer runs over every chunk before the next layer, in two
// passes around the attention's exchange (LayerMajorAttention): only the residual stream entering each
// layer is kept for the whole piece, everything else for one chunk.
#pragma once
#include <initializer_list>
#include <string>
#include <vector>

#include "core/huge_pages.h"
#include "kernels/bf16.h"
#include "kernels/rope.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/params.h"

namespace lasp {

enum class Precision { fp32, bf16 };
Precision precision_from_string(const std::string& name);  // "fp32" | "bf16"
const char* to_string(Precision precision);

struct ModelPlan {
  bool recompute = false;
  int chunk = 0;  // tokens per row in one chunk; 0 (or >= N): the whole sequence at once
  // bf16: every projection (and the LM head) multiplies bf16 operands with fp32 accumulation (kernels/bf16.h)
  // against a bf16 copy of the weights made once per forward; weights, gradients, norms, attention and the
  // loss stay fp32.
  Precision precision = Precision::fp32;
  // With recompute, the MLP runs over this many tokens at a time, in the forward and again in the backward,
  // so that none of its buffers holds N x intermediate_size values.
  int mlp_tokens = 4096;
  // With a chunk: layer by layer rather than chunk by chunk (implies recompute; the attention must have
  // LayerMajorAttention).
  bool layer_major = false;
};

class Model {
 public:
  // B rows of N tokens per call (this rank's slice under sequence parallelism).
  Model(const ModelConfig& config, int B, int N, Attention& attention, ModelPlan plan = {});

  // B x N tokens in this process; throws when the product does not fit an int (the kernels index with ints).
  static int token_count(int B, int N);
  // The floats of activations and scratch a model of this shape and plan allocates (the plan's estimate).
  static double activation_floats(const ModelConfig& config, int B, int N, ModelPlan plan);

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  int batch() const { return B_; }
  int seq_len() const { return seq_len_; }
  int chunk() const { return chunk_; }  // tokens per row in one chunk (seq_len() when unchunked)
  // The flat buffers (ParamLayout order). Write their elements; never resize them.
  std::vector<float>& params() { return params_; }
  std::vector<float>& grads() { return grads_; }
  const std::vector<float>& params() const { return params_; }
  const std::vector<float>& grads() const { return grads_; }
  void zero_grads();

  // Forward on inputs (B, N). With targets (B, N; -1 = no target) it returns the SUM of the next-token
  // cross-entropies and keeps what the backward needs; without, it only computes the logits. predictions,
  // if not null, receives the argmax token of each position (B, N). The model reads inputs and targets in
  // place (no copy of a long window): they must stay as they are until the backward.
  double forward(const int* inputs, const int* targets, int* predictions = nullptr);
  // Gradients of (sum of losses) * dloss, accumulated into grads(); dloss = 1 / (targets in the global batch).
  void backward(float dloss);
  // Documents (MODEL.md): from the next forward on, `token` in the inputs opens a new document, which
  // attention never crosses (Attention::set_documents); -1: none, every row one stream.
  void set_document_start(int token);
  int document_start() const { return doc_start_; }
  // decay gdn, for decoding: with keep_conv_tails(true), each forward keeps, per gdn layer, the rows the next
  // token's short convolutions read after this rank's last token: (B, K-1, C) of the q, k and v projections one
  // after the other (C: their widths), zero before each row's last document start (short_conv_tail).
  void keep_conv_tails(bool keep) { keep_conv_tails_ = keep; }
  const std::vector<float>& conv_tail(int layer) const { return conv_tails_.at(layer); }
  const float* logits() const { return logits_; }  // (B, logits_rows(), V) of the last forward
  int logits_rows() const { return N_; }            // N, or the last chunk's tokens per row when chunked

 private:
  struct LayerActs {
    float *xn, *rstd_in;          // (T, D), (T)
    // Widths per token: the layer's attention_widths q, k, v, o (config.h); the buffers hold the widest.
    float *qp, *kp;               // linear layers: (T, q), (T, k) projections before the feature map
    float *q, *k, *v;             // (T, q), (T, k), (T, v): what attention consumed
    float *o, *lse;               // (T, o) attention output; softmax layers: (B, H, N)
    float* y;                     // expanded maps (based, rebased): (T, H (d + 1)) the attention's [n | s]; o
                                  // is then n / (s + eps), and v holds [v | 1] (kernels/normalizer.h)
    float *on, *rstd_o;           // output_norm: (T, o), (T * HV)
    float *gp, *og;               // output_gate: (T, o) gate projection, (T, o) gated output
    float *gk1, *gz, *glog;       // decay gla: (T, r) low-rank gate input, (T, k) its projection, the log-gates;
                                  // gdn: gz (T, HV) W_a xn + dt_bias, glog (T, HV) the log-gates g
    float *vp, *qc, *kc, *vc;     // gdn: (T, v) the v projection; the convolutions' outputs (conv_size > 0)
    float *rq, *rk, *beta;        // gdn: (T * H) the l2 norms' 1 / norm of q and k; (T, HV) beta
    float* halo;                  // gdn: (3, B, R, K-1, E) the rows before each run of this rank's tokens (R, at most
                                  // Attention::kMaxConvRuns) of the q, k, v convolutions
    float *h, *hn, *rstd_post;    // (T, D), (T, D), (T)
    float *g, *u, *m;             // (T, F) gate, up, silu(gate) * up (precision fp32)
    // precision bf16: the projections' inputs as they were multiplied, kept for the weights' gradients in
    // place of xn, hn and the output gate's product (whose fp32 buffers all layers then share), and the MLP's
    // g, u and m in bf16 alone (g and u as their products wrote them, as autocast keeps them):
    bf16 *xn16, *hn16, *m16, *ao16;  // (T, D), (T, D), (T, F), (T, o): ao16 what o_proj read
    bf16 *g16, *u16;                 // (T, F)
  };
  // A projection's input (or output gradient): fp32, and under precision bf16 its bf16 copy when one is kept (else
  // a projection converts it on the spot), or the bf16 form alone where nothing reads an fp32 one.
  struct Input {
    Input(const float* f32 = nullptr, const bf16* b16 = nullptr) : f32(f32), b16(b16) {}
    const float* f32;
    const bf16* b16;
    Input rows_from(size_t offset) const { return {f32 ? f32 + offset : nullptr, b16 ? b16 + offset : nullptr}; }
  };
  struct Scratch {  // backward buffers shared by all layers
    float *dres, *dxn, *dhn, *da, *dq, *dk, *dv, *dqp, *dkp, *dgp, *dg, *du, *dm, *dlogits;
    float *dglog, *dgk1;  // decay gla: (T, k) the log-gates' gradient, (T, r); gdn: dglog (T, HV)
    float* dbeta;         // gdn: (T, HV)
    float* dhalo;         // gdn: (B, R, K-1, E) one convolution's halo gradient
  };

  ModelConfig config_;
  ParamLayout layout_;
  int B_, seq_len_, chunk_, chunks_;  // rows; tokens per row; per chunk; chunks per row
  int N_, T_;                         // the running chunk: tokens per row, B x N_
  Attention& attention_;
  LayerMajorAttention* layer_major_attention_ = nullptr;  // the same attention, under a layer-major plan
  bool recompute_, layer_major_;
  int mlp_rows_;  // the MLP's rows per pass (mlp_rows)
  RopeTable rope_;  // the softmax layers' angles at attention_.positions(), made by rope() when stale
  bool rope_stale_ = true;
  std::vector<float> params_, grads_;  // never resized after construction: w_ and g_ point into them
  Weights w_, g_;
  std::vector<float, HugePageAllocator<float>> arena_;  // activations and scratch
  std::vector<std::vector<float>> lambdas_;  // per layer: decay of each head (linear layers)
  std::vector<float*> x_;                    // (L + 1) residual stream entering each layer, (T, D)
  std::vector<float*> stream_;               // layer_major: (L + 1) x_ of the whole piece, (B, seq_len, D); the
                                             // last one becomes dL/dx of the layer being run backward
  std::vector<LayerActs> acts_;              // per layer, or one shared set when recomputing
  Scratch s_{};
  float *xf_, *rstd_f_, *logits_;            // final norm output, its rstd, logits (T, V)
  Precision precision_;
  std::vector<bf16> weights_bf16_;           // precision bf16: the weights of the last forward, ParamLayout order
  std::vector<bf16> x_bf16_, dy_bf16_;       // precision bf16: a projection's input and output gradient
  const int *inputs_ = nullptr, *targets_ = nullptr;  // (B, seq_len) of the last forward, the caller's
  std::vector<int> chunk_inputs_, chunk_targets_;  // (B, N_) of the running chunk, when chunked
  const int *in_ = nullptr, *tg_ = nullptr;       // the running chunk's inputs and targets
  int begin_ = 0, live_chunk_ = -1;               // the running chunk's first token; the chunk the activations hold
  bool has_targets_ = false;
  int doc_start_ = -1;                            // set_document_start
  std::vector<uint8_t> doc_flags_;                // (B, seq_len) of the last forward, when doc_start_ >= 0
  std::vector<uint8_t> chunk_flags_;              // (B, N_) of the running chunk, when chunked with documents
  bool keep_conv_tails_ = false;
  std::vector<int> conv_runs_;  // the runs of the attention's last conv_halo: where each starts, then N_
  std::vector<std::vector<float>> conv_tails_;    // keep_conv_tails: per layer

  // Lays out the activations of B x chunk tokens: counts them when the carver has no base.
  static void carve(Carver& cv, const ModelConfig& c, int B, int N, const ModelPlan& plan, std::vector<float*>& x,
                    std::vector<float*>& stream, std::vector<LayerActs>& acts, Scratch& s, float*& xf,
                    float*& rstd_f, float*& logits);
  // The MLP's rows per pass: all of them, or plan.mlp_tokens with recompute.
  static size_t mlp_rows(const ModelPlan& plan, size_t T);
  LayerActs& acts(int layer) { return acts_[recompute_ ? 0 : layer]; }
  // Y (T x out) = X (T x in) W^T, W in the nn.Linear layout (out x in), W one of the model's weights.
  // rows: of X and Y (default: every token of the running chunk).
  void project(float* Y, Input X, const float* W, int in, int out, int rows = -1);
  void project(bf16* Y, Input X, const float* W, int in, int out, int rows = -1);  // precision bf16: Y rounded
  const float* gate_forward(int l, Input xn);  // decay gla: the log-gates of layer l
  void gate_backward(int l, Input xn);
  // Layer l's gates for the attention: its fixed decay, or GLA's log-gates of the running chunk (computed by
  // gate_forward) and, in the backward, the buffer of their gradient.
  LinearGates linear_gates(int l, bool backward);
  // Gated DeltaNet (model/model_gdn.cpp): layer l's q, k, v, beta and log-gates from xn, and back to s_.dxn (+=,
  // or = when dxn_fresh) from the delta rule's input gradients in s_.dq, s_.dk, s_.dv, s_.dbeta, s_.dglog.
  // Without queries: all but q, and back from all but s_.dq (the layer-major passes around the exchange).
  void gdn_forward(int l, Input xn, bool queries = true);
  void gdn_backward(int l, Input xn, bool dxn_fresh, bool queries = true);
  // conv: 3 l + 0, 1, 2 (Attention::conv_halo); tail: where the rows the next token reads go (keep_conv_tails), or
  // null.
  void conv_silu_forward(int conv, float* y, float* c, float* halo, float* tail, const float* x, const float* w, int C);
  void conv_silu_backward(int conv, float* dx, float* dw, const float* dy, float* dc, const float* c,
                          const float* halo, const float* x, const float* w, int C);
  // The running chunk's document-start flags (B, N_), or null without documents.
  const uint8_t* document_flags() const {
    return doc_start_ < 0 ? nullptr : chunks_ == 1 ? doc_flags_.data() : chunk_flags_.data();
  }
  void linear_features(int l, bool queries);
  void linear_features_backward(int l, const float* dq, const float* dk, float* dqp, float* dkp);
  // dX += dY W (dX = dY W when dx_fresh), dW += dY^T X.
  void project_backward(float* dX, float* dW, Input dY, Input X, const float* W, int in, int out,
                        bool dx_fresh = false, int rows = -1);
  // One of several projections of the same input X (q, k, v): its weight's gradient, output gradient (fp32),
  // weight and output width.
  struct ProjectionGrad {
    float* dW;
    const float* dY;
    const float* W;
    int out;
  };
  // project_backward of each, the first with dx_fresh. Under precision bf16, with the weights adjacent (as
  // ParamLayout lays q, k, v), the output gradients go into one (T, sum of out) bf16 operand and the products
  // run once for all: fewer, larger products, and dX is written once instead of accumulated once per weight.
  void project_backward(float* dX, std::initializer_list<ProjectionGrad> terms, Input X, int in, bool dx_fresh);
  // The input x (n values) with, under precision bf16, its bf16 copy made now into `copy`; kept(): the same
  // input later, from the copy made then.
  Input keep(const float* x, bf16* copy, size_t n);
  Input kept(const float* x, const bf16* copy) const { return {x, precision_ == Precision::bf16 ? copy : nullptr}; }
  // The MLP of layer l over rows [r, r + rows): g, u, m of the pass from hn.
  void mlp_forward(int l, int r, int rows);
  const bf16* bf16_weight(const float* W) const { return weights_bf16_.data() + (W - params_.data()); }
  // Makes chunk `index` the running one: its tokens, positions (RoPE) and inputs; announces it when chunked.
  void start_chunk(int index, Attention::Pass pass);
  const RopeTable& rope();
  // The running chunk through every layer and the head; the sum of its losses.
  double forward_chunk(int* predictions);
  void backward_chunk(float dloss);
  // Final norm, logits, predictions and the sum of the losses from x_[L]; backward: s_.dres = dL/dx_[L].
  double head_forward(int* predictions);
  void head_backward(float dloss);
  // Layer-major runs (model/model_layer_major.cpp): every chunk through one layer before the next.
  double forward_layer_major(int* predictions);
  void backward_layer_major(float dloss);
  // The running chunk's rows of a (B, seq_len, D) stream: into a (T, D) chunk buffer, or back.
  void load(float* chunk, const float* stream) const;
  void store(float* stream, const float* chunk) const;
  // Layer l's keys and values of the running chunk from x_[l] (the input norm, k and v projections, the
  // feature map or RoPE), into acts(l).
  void layer_keys(int l);
  // The keys' and values' gradients from other ranks (Attention::key_gradients) back to s_.dres += dL/dx_[l].
  void key_gradients_backward(int l);
  void exchange(int l, Attention::Pass pass);  // the attention's, for layer l's kind
  // decay gdn across ranks: the short convolutions' tails before layer l's passes, and their gradient after.
  struct TailRows {
    std::vector<int> tokens;
    std::vector<float> x, xn, rstd;
  };
  TailRows conv_tail_rows(int l) const;
  void conv_tails_forward(int l);
  void conv_tails_backward(int l);
  // Computes layer l from x_[l]; writes x_[l + 1] when write_output.
  void forward_layer(int l, bool write_output);
  // From s_.dres = dL/dx_[l + 1] to s_.dres = dL/dx_[l], accumulating the layer's weight gradients.
  void backward_layer(int l);
};

}  // namespace lasp
