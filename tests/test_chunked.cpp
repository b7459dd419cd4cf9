// The chunked memory plan: the sequence run as chunks through every layer (model/chunked_attention.h) gives
// the loss, the predictions and every gradient of the whole-sequence run, for pure and hybrid models, every
// decay, chunks that do not divide N or the linear block, batch rows, and with per-layer recompute inside
// (whose MLP runs in passes of a few rows).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "model/attention.h"
#include "model/chunked_attention.h"
#include "model/model.h"
#include "testing.h"
#include "train/optimizer.h"

using namespace lasp;

namespace {

constexpr int kThreads = 2, kBlock = 16;

struct Outcome {
  double loss;
  std::vector<int> predictions;
  std::vector<float> grads;
};

ModelConfig small_config(const std::string& types, Decay decay) {
  ModelConfig c;
  c.hidden_size = 32, c.intermediate_size = 48, c.num_attention_heads = 4, c.num_key_value_heads = 2;
  c.vocab_size = 50, c.layer_types = types, c.num_hidden_layers = int(types.size());
  c.linear.decay = decay;
  return c;
}

// Two steps (forward, backward), so that a second pass over the same attention starts clean. doc_start >= 0: that
// token opens documents.
Outcome run(const ModelConfig& c, int B, int N, ModelPlan plan, int doc_start = -1) {
  std::mt19937 rng(5);
  std::vector<int> inputs(size_t(B) * N), targets(inputs.size());
  for (auto& t : inputs) t = int(rng() % c.vocab_size);
  for (auto& t : targets) t = rng() % 7 == 0 ? -1 : int(rng() % c.vocab_size);  // some positions without a target
  const AttentionShape whole = attention_shape(c, B, N, kBlock, kThreads);
  std::unique_ptr<Attention> attention;
  if (plan.chunk > 0 && plan.chunk < N) {
    AttentionShape chunk = whole;
    chunk.N = plan.chunk;
    attention = std::make_unique<ChunkedAttention>(chunk, N, c.num_hidden_layers);
  } else {
    attention = std::make_unique<LocalAttention>(whole);
  }
  Model model(c, B, N, *attention, plan);
  model.set_document_start(doc_start);
  init_weights(model.layout(), model.params(), 3, 0.2f);  // large weights: every path matters
  Outcome r{0, std::vector<int>(inputs.size()), {}};
  for (int step = 0; step < 2; ++step) {
    model.zero_grads();
    r.loss = model.forward(inputs.data(), targets.data(), r.predictions.data());
    model.backward(0.01f);
  }
  r.grads = model.grads();
  return r;
}

void expect_same(const ModelConfig& c, const Outcome& whole, const Outcome& got, const std::string& what) {
  EXPECT_NEAR(got.loss, whole.loss, 2e-6 * std::abs(whole.loss)) << what;
  EXPECT_EQ(got.predictions, whole.predictions) << what;
  const ParamLayout layout(c);
  for (const TensorSpec& t : layout.specs()) {
    const std::vector<float> a(whole.grads.begin() + t.offset, whole.grads.begin() + t.offset + t.size),
        b(got.grads.begin() + t.offset, got.grads.begin() + t.offset + t.size);
    EXPECT_LE(lasp::testing::normalized_error(a, b), 2e-5) << what << " " << t.name;
  }
}

TEST(Chunked, EqualsTheWholeSequence) {
  const int N = 100;
  for (const std::string types : {"LLLL", "LNLN", "NN"})
    for (Decay decay : {Decay::none, Decay::lightning, Decay::retention})
      for (int B : {1, 2}) {
        if (types == "NN" && decay != Decay::none) continue;  // no linear layer: the decay plays no part
        const ModelConfig c = small_config(types, decay);
        const Outcome whole = run(c, B, N, {});
        for (int chunk : {1, 7, 16, 33, 99}) {
          const std::string what = types + " " + to_string(decay) + " B=" + std::to_string(B) + " chunk=" +
                                   std::to_string(chunk);
          expect_same(c, whole, run(c, B, N, {false, chunk}), what);
        }
        expect_same(c, whole, run(c, B, N, {true, 40}), types + " chunk=40 with recompute");
        // Recompute runs the MLP in passes of mlp_tokens rows (here not dividing B x N or the chunk).
        expect_same(c, whole, run(c, B, N, {true, 0, Precision::fp32, 7}), types + " recompute, MLP passes of 7");
        expect_same(c, whole, run(c, B, N, {true, 40, Precision::fp32, 13}), types + " chunk=40, MLP passes of 13");
      }
}

// Gated DeltaNet: the delta rule's state and the short convolutions' tails (a chunk's halo) cross chunks, chunks of
// 1 and 2 tokens shorter than the halo (conv_size 4) included; with documents (token 3, about one token in 50) and
// GVA with d_k != d_v.
TEST(Chunked, GatedDeltaNetEqualsTheWholeSequence) {
  const int N = 100;
  for (const std::string types : {"LLLL", "LNLL"})
    for (int doc_start : {-1, 3}) {
      ModelConfig c = small_config(types, Decay::gdn);
      c.linear.num_v_heads = 8, c.linear.head_v_dim = 6;
      const Outcome whole = run(c, 2, N, {}, doc_start);
      for (int chunk : {1, 2, 7, 33})
        expect_same(c, whole, run(c, 2, N, {false, chunk}, doc_start),
                    types + " gdn docs=" + std::to_string(doc_start) + " chunk=" + std::to_string(chunk));
      expect_same(c, whole, run(c, 2, N, {true, 40}, doc_start), types + " gdn chunk=40 with recompute");
    }
}

TEST(Chunked, AChunkOfTheWholeSequenceIsTheWholeRun) {
  const ModelConfig c = small_config("LLNL", Decay::lightning);
  const Outcome whole = run(c, 1, 64, {});
  expect_same(c, whole, run(c, 1, 64, {false, 64}), "chunk = N");
  expect_same(c, whole, run(c, 1, 64, {false, 500}), "chunk > N");
}

TEST(Chunked, AttentionThatCannotChunkRefuses) {
  const ModelConfig c = small_config("LL", Decay::none);
  LocalAttention local(attention_shape(c, 1, 10, kBlock, kThreads));
  Model model(c, 1, 40, local, {false, 10});
  std::vector<int> tokens(40, 1);
  try {
    model.forward(tokens.data(), tokens.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chunked memory plan needs one sequence-parallel rank"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ChunkedAttention({1, 0, 4, 2, 8, 8, 8, kBlock, kThreads}, 40, 2), Error);
  EXPECT_THROW(ChunkedAttention({1, 50, 4, 2, 8, 8, 8, kBlock, kThreads}, 40, 2), Error);
}

}  // namespace
