#include "model/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "core/check.h"
#include "core/memory.h"
#include "core/parse.h"
#include "model/chunked_attention.h"

namespace lasp {

namespace {

// The process itself (libraries, OpenMP and oneDNN pools, MPI): 80 MB measured for the default model at
// N=64, of which 56 MB were its weights and optimizer state; rounded up.
constexpr double kOverheadBytes = 160.0 * (1 << 20);
// Chunks below this spend more on per-chunk overhead and states than they save.
constexpr int kMinChunk = 64;

double estimate(const ModelConfig& c, const AttentionShape& shape, const Attention* sp_attention,
                const LayerMajorFactory& layer_major, ModelPlan plan, bool training) {
  const int B = shape.B, N = shape.N;
  const double params = double(ParamLayout(c).total()) * (training ? 4 : 2);  // weights, grads (AdamW m, v)
  double attention = 0;
  if (plan.layer_major) {
    attention = layer_major(plan.chunk)->memory_floats(c.layer_types);
  } else if (sp_attention) {
    attention = sp_attention->memory_floats(c.layer_types);
  } else if (plan.chunk > 0 && plan.chunk < N) {
    AttentionShape chunk = shape;
    chunk.N = plan.chunk;
    attention = ChunkedAttention::floats_needed(chunk, N, c.layer_types);
  } else {
    attention = LocalAttention::floats_needed(shape);
  }
  const double tokens = 2.0 * B * N * sizeof(int);  // inputs and targets (the model reads the caller's)
  return 4.0 * (params + Model::activation_floats(c, B, N, plan) + attention) + tokens + kOverheadBytes;
}

}  // namespace

std::string MemoryPlan::kept() const {
  if (model.layer_major)
    return fmt::format("chunks of {} tokens, layer by layer (each layer's input kept for the whole piece, each "
                       "layer run again for its backward)",
                       model.chunk);
  if (model.chunk > 0)
    return fmt::format("chunks of {} tokens through every layer (the linear states at chunk boundaries kept, each "
                       "chunk's forward run again for its backward{})",
                       model.chunk, model.recompute ? ", each layer again inside it" : "");
  if (model.recompute) return "each layer's input kept, the layer recomputed in the backward";
  return "every activation kept";
}

std::string MemoryPlan::describe() const {
  return fmt::format("memory plan: {}{}; estimated peak {} of the {} limit", kept(),
                     model.precision == Precision::bf16 ? ", bf16 projections" : "", human_bytes(bytes), human_bytes(limit));
}

double default_memory_limit() {
  int ranks = 1;
  if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) ranks = std::max(1, std::atoi(local));
  return 0.9 * double(available_memory_bytes()) / ranks;
}

MemoryPlan plan_memory(const ModelConfig& c, const AttentionShape& shape, const Attention* sp_attention,
                       const MemoryRequest& request, bool training, const LayerMajorFactory& layer_major) {
  LASP_CHECK(request.limit_gib >= 0 && std::isfinite(request.limit_gib),
             "--memory-limit must be a non-negative number of GiB, got {}", request.limit_gib);
  LASP_CHECK(request.chunk >= 0, "--chunk must be >= 0 tokens, got {}", request.chunk);
  const double limit = request.limit_gib > 0 ? request.limit_gib * double(1ull << 30) : default_memory_limit();
  const int N = shape.N;
  Model::token_count(shape.B, N);
  auto plan = [&](ModelPlan p) {
    p.precision = request.precision;
    return MemoryPlan{p, estimate(c, shape, sp_attention, layer_major, p, training), limit};
  };
  std::vector<int> chunks;  // powers of two below N, largest first
  for (int chunk = 1 << 30; chunk >= kMinChunk; chunk /= 2)
    if (chunk < N) chunks.push_back(chunk);

  // The candidates, fastest first.
  std::vector<ModelPlan> candidates;
  if (request.chunk > 0 || request.recompute) {
    LASP_CHECK(request.chunk == 0 || !sp_attention || layer_major,
               "--chunk across sequence-parallel ranks needs a method with a chunked form (lasp2); with this one use "
               "--recompute or let --memory-limit choose");
    const int chunk = request.chunk < N ? request.chunk : 0;
    ModelPlan p{request.recompute, chunk};
    p.layer_major = sp_attention && chunk > 0;
    candidates.push_back(p);
  } else {
    candidates.push_back({});
    if (sp_attention) {
      candidates.push_back({true, 0});
      if (layer_major)
        for (int chunk : chunks) {
          ModelPlan p{true, chunk};
          p.layer_major = true;
          candidates.push_back(p);
        }
    } else {
      for (bool recompute : {false, true})
        for (int chunk : chunks) candidates.push_back({recompute, chunk});
    }
  }
  MemoryPlan leanest = plan(candidates.front());
  for (const ModelPlan& p : candidates) {
    const MemoryPlan m = plan(p);
    if (m.bytes <= limit) return m;
    if (m.bytes < leanest.bytes) leanest = m;
  }
  throw Error(fmt::format(
      "{} tokens per row (batch {}) do not fit in the memory limit of {} per rank: the leanest plan ({}) needs about "
      "{}; raise --memory-limit to at least {:.2f} GiB{}",
      N, shape.B, human_bytes(limit), leanest.kept(), human_bytes(leanest.bytes),
      std::ceil(leanest.bytes / double(1ull << 30) * 100) / 100,
      sp_attention ? ", or spread the sequence over more --sp-size ranks" : ""));
}

std::unique_ptr<Attention> planned_attention(const MemoryPlan& plan, const ModelConfig& config,
                                             const AttentionShape& shape, std::unique_ptr<Attention> sp_attention,
                                             const LayerMajorFactory& layer_major) {
  if (plan.model.layer_major) return layer_major(plan.model.chunk);
  if (sp_attention) return sp_attention;
  if (plan.model.chunk > 0 && plan.model.chunk < shape.N) {
    AttentionShape chunk = shape;
    chunk.N = plan.model.chunk;
    return std::make_unique<ChunkedAttention>(chunk, shape.N, config.num_hidden_layers);
  }
  return std::make_unique<LocalAttention>(shape);
}

}  // namespace lasp
