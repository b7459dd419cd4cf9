// The memory plan (model/memory_plan.h): the fastest plan that fits the limit, the largest chunk that fits,
// a clear refusal naming the smallest limit that would do, and the estimates against what is allocated.
#include <gtest/gtest.h>

#include <string>

#include "core/check.h"
#include "model/chunked_attention.h"
#include "model/model.h"
#include "model/memory_plan.h"

using namespace lasp;

namespace {

constexpr double kGiB = double(1ull << 30);

AttentionShape shape_for(const ModelConfig& c, int B, int N) {
  return attention_shape(c, B, N, kLinearBlock, 2);
}

// The estimate of a forced plan, under a limit that holds anything.
double estimate(const ModelConfig& c, const AttentionShape& s, bool recompute, int chunk,
                const Attention* sp = nullptr) {
  return plan_memory(c, s, sp, {1e6, recompute, chunk}, true).bytes;
}

TEST(MemoryPlan, KeepsEverythingWhenItFits) {
  const ModelConfig c;
  const MemoryPlan p = plan_memory(c, shape_for(c, 1, 4096), nullptr, {1000, false, 0}, true);
  EXPECT_FALSE(p.model.recompute);
  EXPECT_EQ(p.model.chunk, 0);
  EXPECT_EQ(p.limit, 1000 * kGiB);
  EXPECT_NE(p.describe().find("every activation kept"), std::string::npos) << p.describe();
}

TEST(MemoryPlan, TheLargestChunkThatFits) {
  ModelConfig c;
  c.layer_types = "LLLL";
  const AttentionShape s = shape_for(c, 2, 50000);
  const double keep = estimate(c, s, false, 0), chunk_16k = estimate(c, s, false, 16384),
               chunk_8k = estimate(c, s, false, 8192);
  ASSERT_LT(chunk_8k, chunk_16k);
  ASSERT_LT(chunk_16k, keep);
  const MemoryPlan p = plan_memory(c, s, nullptr, {(chunk_16k + chunk_8k) / 2 / kGiB, false, 0}, true);
  EXPECT_EQ(p.model.chunk, 8192);
  EXPECT_FALSE(p.model.recompute);
  EXPECT_LE(p.bytes, p.limit);
  EXPECT_NE(p.describe().find("chunks of 8192 tokens"), std::string::npos) << p.describe();
  // Just above the 16K chunk's estimate: that chunk.
  EXPECT_EQ(plan_memory(c, s, nullptr, {chunk_16k * 1.0001 / kGiB, false, 0}, true).model.chunk, 16384);
}

TEST(MemoryPlan, RefusesNamingTheSmallestLimitThatWouldDo) {
  const ModelConfig c;
  try {
    plan_memory(c, shape_for(c, 1, 1 << 20), nullptr, {0.05, false, 0}, true);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("1048576 tokens per row (batch 1) do not fit in the memory limit of 51.2 MiB"), std::string::npos)
        << m;
    EXPECT_NE(m.find("raise --memory-limit to at least"), std::string::npos) << m;
  }
  EXPECT_THROW(plan_memory(c, shape_for(c, 1, 64), nullptr, {-1, false, 0}, true), Error);
}

TEST(MemoryPlan, ForcedPlansAndSeveralRanks) {
  ModelConfig c;
  const AttentionShape s = shape_for(c, 1, 4096);
  const MemoryPlan chunked = plan_memory(c, s, nullptr, {1000, false, 1000}, true);
  EXPECT_EQ(chunked.model.chunk, 1000);
  EXPECT_EQ(plan_memory(c, s, nullptr, {1000, false, 9999}, true).model.chunk, 0);  // a chunk >= N: the whole
  EXPECT_TRUE(plan_memory(c, s, nullptr, {1000, true, 0}, true).model.recompute);
  // A forced plan that does not fit is refused, not run.
  EXPECT_THROW(plan_memory(c, s, nullptr, {0.01, false, 1000}, true), Error);

  // Several SP ranks (any attention stands in for the method's): keep, else recompute; chunks only with the
  // method's layer-major form.
  LocalAttention method(s);
  const double keep = estimate(c, s, false, 0, &method), recompute = estimate(c, s, true, 0, &method);
  ASSERT_LT(recompute, keep);
  const MemoryPlan p = plan_memory(c, s, &method, {(keep + recompute) / 2 / kGiB, false, 0}, true);
  EXPECT_TRUE(p.model.recompute);
  EXPECT_EQ(p.model.chunk, 0);
  try {
    plan_memory(c, s, &method, {1000, false, 512}, true);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--chunk across sequence-parallel ranks needs a method with a chunked form"),
              std::string::npos)
        << e.what();
  }
  try {
    plan_memory(c, s, &method, {recompute * 0.9 / kGiB, false, 0}, true);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("or spread the sequence over more --sp-size ranks"), std::string::npos)
        << e.what();
  }

  // With a layer-major form (a chunked attention stands in for its memory): below recompute's estimate, the
  // largest chunk that fits, layer by layer; --chunk forces one.
  const LayerMajorFactory layer_major = [&](int chunk) -> std::unique_ptr<Attention> {
    AttentionShape cs = s;
    cs.N = chunk;
    return std::make_unique<ChunkedAttention>(cs, s.N, c.num_hidden_layers);
  };
  const MemoryPlan lm = plan_memory(c, s, &method, {recompute * 0.9 / kGiB, false, 0}, true, layer_major);
  EXPECT_TRUE(lm.model.layer_major && lm.model.recompute);
  EXPECT_EQ(lm.model.chunk, 2048);
  EXPECT_LE(lm.bytes, recompute * 0.9);
  EXPECT_NE(lm.describe().find("chunks of 2048 tokens, layer by layer"), std::string::npos) << lm.describe();
  const MemoryPlan forced = plan_memory(c, s, &method, {1000, false, 512}, true, layer_major);
  EXPECT_TRUE(forced.model.layer_major);
  EXPECT_EQ(forced.model.chunk, 512);
  // What a layer-major plan keeps beyond one chunk's recompute plan: the residual stream entering each layer
  // and the last one's output, for the whole piece.
  ModelPlan by_layer{true, 512};
  by_layer.layer_major = true;
  EXPECT_EQ(Model::activation_floats(c, 1, 4096, by_layer) - Model::activation_floats(c, 1, 512, {true}),
            double(c.num_hidden_layers + 1) * 4096 * c.hidden_size);
}

// The estimates count what is allocated: the chunked attention after a forward and backward holds what
// floats_needed says, and the model's activations are the carving the plan counts.
TEST(MemoryPlan, EstimatesMatchWhatIsAllocated) {
  ModelConfig c;
  c.layer_types = "LNLL";
  const int B = 2, N = 300, chunk = 64;
  AttentionShape s = shape_for(c, B, N);
  s.N = chunk;
  ChunkedAttention attention(s, N, c.num_hidden_layers);
  Model model(c, B, N, attention, {false, chunk});
  std::vector<int> tokens(size_t(B) * N, 3);
  model.forward(tokens.data(), tokens.data());
  model.backward(1.f);
  const double d = c.head_dim(), per_state = double(B) * c.num_attention_heads * d * d;
  const double kv = 2.0 * B * N * c.num_key_value_heads * d;
  const double chunks = (N + chunk - 1) / chunk;
  // Three linear layers keep chunks - 1 entering states and one leaving gradient each; one more gradient in
  // flight; one softmax layer keeps K, V and their gradients.
  const double kept = 3 * (chunks - 1 + 1) * per_state + per_state + 2 * kv;
  const double counted = ChunkedAttention::floats_needed(s, N, c.layer_types);
  EXPECT_GE(counted, kept);
  EXPECT_LE(counted, kept + 3 * per_state + 4.0 * 1024 * 1024);  // + the workspace, at most a few MB
  EXPECT_EQ(Model::activation_floats(c, B, N, {false, chunk}), Model::activation_floats(c, B, chunk, {}));
}

}  // namespace
