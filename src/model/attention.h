// The seam between the model and the sequence-parallel methods. The model computes projections, norms
// and MLPs on this rank's tokens; every token-mixing step goes through an Attention, which knows where
// this rank's tokens sit in the global sequence and which ranks hold the rest. LocalAttention is the
// single-process implementation; the sequence-parallel methods (LASP-2, LASP-2H, Ring, Ulysses...)
// implement the same interface.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "core/workspace.h"
#include "kernels/delta_rule.h"
#include "kernels/gla.h"
#include "kernels/linear_attention.h"
#include "kernels/softmax_attention.h"
#include "model/config.h"
#include "model/documents.h"

namespace lasp {

struct AttentionShape {
  int B, N;      // batch rows, tokens per row on this rank
  int H, H_kv;   // query heads, key/value heads of the softmax layers
  int d;         // head dim of the softmax layers
  int dk, dv;    // the linear layers' key width (q, k and the state's rows) and value width (v, o, its columns)
  int block;     // linear attention block size
  int threads;   // OpenMP threads of the attention kernels, set once by whoever builds the model (trainer,
                 // decoder, bench); every workspace is sized for them
  bool gla = false;  // the linear layers take GLA's gates: the SP methods size their gate scratch up front
  // Expanded features (LinearAttentionShape::f): q and k of the linear layers hold f raw values per head, dk is
  // the expanded width. f = 0: none.
  int f = 0;
  ExpandedKind expansion = ExpandedKind::based;
  // decay gdn: the linear layers run the gated delta rule (kernels/delta_rule.h), v and o with HV value heads.
  bool delta = false;
  int HV = 0;         // the linear layers' value heads (0: H)
  int conv_rows = 0;  // the rows of each short convolution's halo, conv_size - 1 (0: none)
  bool bf16 = false;  // the softmax kernel's forward products on bf16 operands (--precision bf16)

  // The linear kernels' shape for `rows` rows of `tokens` tokens and `heads` heads (GLA takes its own block).
  LinearAttentionShape linear_kernel(int rows, int tokens, int heads) const {
    return {rows, tokens, heads, dk, dv, block, threads, f, expansion};
  }
  LinearAttentionShape gla_kernel(int rows, int tokens, int heads) const {
    return {rows, tokens, heads, dk, dv, kGlaBlock, threads, f, expansion};
  }
  DeltaRuleShape delta_kernel(int rows, int tokens) const {
    return {rows, tokens, H, value_heads(), dk, dv, kDeltaBlock, threads};
  }  // The softmax kernel's shape for queries of `rows` batch rows against keys of theirs (d, threads, bf16 from here).
  SoftmaxAttentionShape softmax_kernel(int rows, int queries, int keys, int heads, int kv_heads) const {
    SoftmaxAttentionShape s = softmax_shape(rows, queries, keys, heads, kv_heads, d, threads);
    s.bf16 = bf16;
    return s;
  }

  size_t state_floats() const { return size_t(dk) * size_t(dv); }  // one head's linear state
  int qk_width() const { return f > 0 ? f : dk; }                   // q and k of a linear layer per head
  int value_heads() const { return HV > 0 ? HV : H; }               // v, o and the states of a linear layer
  SpanRows linear_rows() const { return {long(H) * qk_width(), long(value_heads()) * dv}; }  // strides: q, k; v, o
};

// The shape of config c's attention on B rows of N tokens (this rank's), blocks of `block`, on `threads`.
// An expanded map (based, rebased) runs its linear layers on raw q, k of feature_dim values, a D' x (d + 1) state
// and values with the normalizer's column of ones (FEATURE_MAPS.md).
inline AttentionShape attention_shape(const ModelConfig& c, int B, int N, int block, int threads) {
  const bool expanded = c.linear.expanded.has_value();
  return {B,
          N,
          c.num_attention_heads,
          c.num_key_value_heads,
          c.head_dim(),
          c.linear_state_rows(),
          c.linear_value_width() + (expanded ? 1 : 0),
          block,
          threads,
          c.linear.decay == Decay::gla,
          expanded ? c.linear_key_width() : 0,
          expanded ? *c.linear.expanded : ExpandedKind::based,
          c.linear.decay == Decay::gdn,
          c.linear_value_heads(),
          c.linear.decay == Decay::gdn ? std::max(c.linear.conv_size - 1, 0) : 0};
}

// What decays a causal linear layer's state: a fixed decay per head (MODEL.md), GLA's log-gates per token,
// head and key dim (GATES.md), or the gated delta rule's log-gates and write strengths per token and value head
// (DELTA.md). A bare lambda pointer converts to it.
struct LinearGates {
  LinearGates(const float* lambda = nullptr) : lambda(lambda) {}
  const float* lambda = nullptr;     // (H), or null: no decay
  const float* log_gates = nullptr;  // GLA: (B, N, H, dk) of this rank's tokens, each <= 0; lambda is then unused;
                                     // gdn: (B, N, HV)
  float* d_log_gates = nullptr;      // GLA, gdn, backward: their gradient, written (not accumulated)
  const float* beta = nullptr;       // gdn: (B, N, HV) the delta rule's beta, in (0, 1)
  float* d_beta = nullptr;           // gdn, backward: its gradient, written
  bool gla() const { return log_gates != nullptr && beta == nullptr; }
  bool delta() const { return beta != nullptr; }
};

// The fixed decay of gates for a method without GLA; throws naming the method when the gates are GLA's.
const float* fixed_decay(const LinearGates& gates, const char* method);

class Attention {
 public:
  virtual ~Attention() = default;
  // Global positions of this rank's N tokens (RoPE and the causal mask use them).
  virtual const int* positions() const = 0;

  // The floats this attention holds at its peak during a training step of a model with these layers ('L'
  // linear, 'N' softmax): workspaces, exchange buffers, and what it keeps from the forward for the backward.
  // The memory plan counts them (an estimate: within a few percent, never far below).
  virtual double memory_floats(const std::string& layer_types) const = 0;

  // Documents (MODEL.md) for the forwards and backwards that follow: starts (B, N), non-zero where a document
  // begins among this rank's tokens (in its local order), or null: every row one stream. Linear layers then
  // cut their states at each start, softmax layers mask keys of other documents, on every rank. The
  // attention copies what it needs. A method without documents refuses (the default throws).
  virtual void set_documents(const uint8_t* starts);

  // Causal linear attention of this rank's tokens: o (B, N, H, dv) from q, k (B, N, H, dk) and v (B, N, H, dv),
  // decayed by the gates.
  virtual void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                              const LinearGates& gates) = 0;
  // Accumulates into dq, dk, dv (and writes the GLA gates' gradient).
  virtual void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                               const float* k, const float* v, const LinearGates& gates) = 0;

  // Non-causal linear attention (o_i = q_i sum_j k_j^T v_j over the whole sequence, every rank's tokens);
  // no decay. Not used by the causal language model; for encoders and tests. A method without it refuses
  // (the default throws).
  virtual void linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v);
  virtual void linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                             const float* q, const float* k, const float* v);

  // decay gdn, the short convolutions' halo (DELTA.md): x (B, N, C) is this rank's (or chunk's) input of causal
  // convolution `conv` (3 l + 0, 1, 2: layer l's q, k, v), K wide. These tokens are R runs of consecutive global
  // positions (the rank's pieces: R = 2 in the zigzag layout; a chunk may hold the end of one and the start of the
  // next), at most kMaxConvRuns. conv_halo writes halo (B, R, K-1, C), the K-1 rows before each run (zero before its
  // document's start or the sequence's), and returns R and where the second run starts; R = 0 (halo untouched, read
  // as zeros; one run) where nothing precedes them, as on one process. conv_halo_backward hands dhalo (B, R, K-1, C)
  // back to where those rows came from and adds what comes back for these tokens' own last rows into dx. Under SP,
  // collectives of the SP group: every rank calls them. The default: nothing precedes (the methods that run gdn
  // across ranks or chunks override them).
  static constexpr int kMaxConvRuns = 2;
  struct ConvRuns {
    int count = 0;  // R
    int split = 0;  // R = 2: the second run's first token
  };
  virtual ConvRuns conv_halo(int conv, float* halo, const float* x, int C, int K);
  virtual void conv_halo_backward(int conv, float* dx, const float* dhalo, int C, int K);

  // Causal softmax attention: q (B, N, H, d) against k, v (B, N, H_kv, d) with RoPE applied; lse (B, H, N).
  virtual void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k,
                               const float* v) = 0;
  // Accumulates into dq, dk, dv.
  virtual void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                                const float* lse, const float* q, const float* k, const float* v) = 0;

  // Chunked runs (model/chunked_attention.h): the model takes its sequence as consecutive chunks, each
  // through every layer, in order for the forward pass and in reverse order for the backward pass (where
  // each chunk's forward is run again right before its backward). Before a chunk, the model announces its
  // tokens [begin, begin + length) of each row and the pass; the attention carries what crosses chunk
  // boundaries. A method that runs its whole piece at once refuses (the default throws).
  enum class Pass { forward, backward };
  virtual void begin_chunk(int begin, int length, Pass pass);


  // For generation (src/generate): with keep_decode_state(true), a forward keeps what decoding continues
  // from, whatever rank computed it: each linear layer's state after the WHOLE sequence (B, H, dk, dv), each
  // softmax layer's keys or values of the whole sequence in position order (B, N, H_kv, d). A method that
  // does not keep them refuses (throws) at keep_decode_state.
  virtual void keep_decode_state(bool keep);
  virtual std::vector<float> final_state(int layer) const;
  virtual std::vector<float> keys_in_order(int layer, bool values) const;

  // Set while the backward recomputes a layer's forward (ModelPlan::recompute). A method that holds what that
  // layer's forward exchanged in this step (LASP-2's incoming states, LASP-2H's gathered keys and values)
  // reuses it instead of exchanging again: the recomputed inputs equal the first forward's bit for bit.
  void set_recomputing(bool on) { recomputing_ = on; }
  bool recomputing() const { return recomputing_; }

 private:
  bool recomputing_ = false;
};

// Layer-major chunked runs (several SP ranks; ModelPlan::layer_major): each layer runs over every chunk of this
// rank's piece before the next layer starts, because what ranks exchange (a piece's d x d state, its keys and
// values) needs the whole piece. Each layer therefore takes two passes over the chunks:
//   forward:  1. per chunk, *_collect: the chunk's keys and values (after the feature map or RoPE);
//             *_exchange(forward); 2. per chunk, linear_forward / softmax_forward, complete.
//   backward: 1. per chunk in reverse, the chunk's forward again, then linear_backward / softmax_backward:
//             complete for dq, but dk and dv leave out what arrives from other ranks; *_exchange(backward);
//             2. per chunk in reverse, *_key_gradients adds that part to the chunk's dk and dv (false: nothing to
//             add).
// Chunks are announced by begin_chunk. Only the methods with such a form implement it (the registry's
// make_layer_major, sp/methods.h); the others are plain Attentions.
class LayerMajorAttention : public Attention {
 public:
  virtual void linear_collect(int layer, const float* k, const float* v, const LinearGates& gates) = 0;
  virtual void softmax_collect(int layer, const float* k, const float* v) = 0;
  virtual void linear_exchange(int layer, Pass pass, const LinearGates& gates) = 0;
  virtual void softmax_exchange(int layer, Pass pass) = 0;
  virtual bool linear_key_gradients(int layer, float* dk, float* dv, const float* k, const float* v,
                                    const LinearGates& gates) = 0;
  virtual bool softmax_key_gradients(int layer, float* dk, float* dv) = 0;
  // decay gdn, the short convolutions across ranks: conv_halo serves each chunk from the chunk before it in its
  // piece, or at a piece's start from the piece before it, whose last K-1 convolution inputs (conv_tail_tokens:
  // the local tokens, pieces x (K-1)) the model hands over as tails (B, pieces, K-1, C) before the layer's first
  // pass (conv_exchange). Backward: after pass 2, conv_exchange_backward writes the gradient of those tails, from
  // the tokens of the pieces after them (the model takes it back through the rows' projections and norm).
  virtual std::vector<int> conv_tail_tokens(int K) const = 0;
  virtual void conv_exchange(int conv, const float* tails, int C, int K) = 0;
  virtual void conv_exchange_backward(int conv, float* dtails, int C, int K) = 0;
};

// One process holds the whole sequence.
class LocalAttention : public Attention {
 public:
  explicit LocalAttention(const AttentionShape& shape);
  static double floats_needed(const AttentionShape& shape);  // memory_floats before constructing one
  const int* positions() const override { return positions_.data(); }
  double memory_floats(const std::string&) const override { return floats_needed(shape_); }
  void linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                      const LinearGates& gates) override;
  void linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                       const float* k, const float* v, const LinearGates& gates) override;
  void linear_bidirectional_forward(int layer, float* o, const float* q, const float* k, const float* v) override;
  void linear_bidirectional_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v) override;
  void softmax_forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v) override;
  void softmax_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o,
                        const float* lse, const float* q, const float* k, const float* v) override;

  void set_documents(const uint8_t* starts) override;

  void keep_decode_state(bool keep) override { keep_ = keep; }
  std::vector<float> final_state(int layer) const override { return final_states_.at(layer); }
  std::vector<float> keys_in_order(int layer, bool values) const override {
    return (values ? values_ : keys_).at(layer);
  }

 private:
  AttentionShape shape_;
  Documents docs_;
  bool keep_ = false;
  std::vector<std::vector<float>> final_states_, keys_, values_;  // by layer, when keep_
  std::vector<int> positions_;
  WorkspaceBuffer workspace_;
  LinearAttentionShape linear_shape() const;
  LinearAttentionShape gla_shape() const;
  SoftmaxAttentionShape softmax_shape() const;
};

}  // namespace lasp
