// The memory plan: how much of a step's activations this rank keeps, chosen by lasp from the model, its
// piece of the sequence and a memory limit, and the Attention that goes with it.
//   keep       every activation of the whole piece (the fast path; short sequences);
//   chunks     one SP rank: the piece runs as chunks through every layer, only the linear states at chunk
//              boundaries (and softmax layers' keys and values) kept across chunks, each chunk's forward run
//              again before its backward (model/chunked_attention.h); the largest chunk that fits;
//   recompute  several SP ranks: each layer's input kept, the layer recomputed in the backward;
//   layer-major chunks  several SP ranks, where the method has them (LayerMajorAttention): the same
//              inputs kept, everything else for one chunk at a time, layer by layer; the largest that fits.
// Each plan's peak is estimated from the same layout the model and the attention allocate, plus the
// weights, gradients, AdamW moments, the tokens and a fixed overhead measured on this machine kind.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "model/attention.h"
#include "model/config.h"
#include "model/model.h"

namespace lasp {

struct MemoryRequest {
  double limit_gib = 0;  // 0: default_memory_limit()
  bool recompute = false;  // --recompute: this plan, whatever fits
  int chunk = 0;           // --chunk: chunks of this many tokens, whatever fits
  Precision precision = Precision::fp32;  // --precision: every candidate plan computes so (its memory counts)
};

struct MemoryPlan {
  ModelPlan model;
  double bytes = 0;  // estimated peak of this rank
  double limit = 0;  // the limit it was chosen under, bytes
  std::string kept() const;      // what is kept and recomputed, in words
  std::string describe() const;  // one line: kept(), the estimate, the limit
};

// The default limit per rank: 90% of the memory available on this node, shared by its ranks (Open MPI's
// OMPI_COMM_WORLD_LOCAL_SIZE; 1 without mpirun).
double default_memory_limit();

// The SP method's attention in chunks of that many tokens per row (a LayerMajorAttention); empty: none.
using LayerMajorFactory = std::function<std::unique_ptr<Attention>(int chunk)>;

// The plan for B rows of this rank's piece (shape.N tokens each) of a global_N sequence; sp_attention: the
// SP method's attention when the piece is one of several (null on one SP rank), layer_major its chunked
// form if it has one. Throws, naming the smallest limit that would do, when even the leanest plan does not
// fit. training: weights, gradients and AdamW moments (else weights and gradients only).
MemoryPlan plan_memory(const ModelConfig& config, const AttentionShape& shape, const Attention* sp_attention,
                       const MemoryRequest& request, bool training, const LayerMajorFactory& layer_major = {});

// The attention of this rank under the plan: sp_attention (or its layer-major form) when there is one, else
// the chunked or the local attention.
std::unique_ptr<Attention> planned_attention(const MemoryPlan& plan, const ModelConfig& config,
                                             const AttentionShape& shape, std::unique_ptr<Attention> sp_attention,
                                             const LayerMajorFactory& layer_major = {});

}  // namespace lasp
