// --precision bf16 (ModelPlan::precision): the projections on bf16 operands with fp32 accumulation give the
// fp32 model's loss and gradients within what bf16's 8-bit mantissa allows (bounds below, each tensor's
// error printed), in chunks as whole, and refuse clearly where the CPU has no bf16 products.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/bf16.h"
#include "model/attention.h"
#include "model/chunked_attention.h"
#include "model/model.h"
#include "testing.h"
#include "train/optimizer.h"

using namespace lasp;

namespace {

struct Outcome {
  double loss;
  std::vector<float> grads;
};

Outcome step(const ModelConfig& c, int N, ModelPlan plan) {
  std::mt19937 rng(11);
  std::vector<int> inputs(N), targets(N);
  for (int i = 0; i < N; ++i) inputs[i] = int(rng() % c.vocab_size), targets[i] = int(rng() % c.vocab_size);
  const AttentionShape whole = attention_shape(c, 1, N, 16, 2);
  std::unique_ptr<Attention> attention;
  if (plan.chunk > 0) {
    AttentionShape chunk = whole;
    chunk.N = plan.chunk;
    attention = std::make_unique<ChunkedAttention>(chunk, N, c.num_hidden_layers);
  } else {
    attention = std::make_unique<LocalAttention>(whole);
  }
  Model model(c, 1, N, *attention, plan);
  init_weights(model.layout(), model.params(), 2, 0.05f);
  model.zero_grads();
  const double loss = model.forward(inputs.data(), targets.data());
  model.backward(1.f / N);
  return {loss / N, model.grads()};
}

// bf16 against fp32 for config c: the loss and every gradient, whole and in chunks of `chunk` tokens.
void expect_bf16_close_to_fp32(const ModelConfig& c, int N, int chunk) {
  if (std::string(bf16_path()) == "none") {  // then what must hold is a clear refusal
    try {
      step(c, N, {false, 0, Precision::bf16});
      FAIL() << "bf16 ran on a CPU without bf16 products";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("neither AMX nor AVX-512-BF16"), std::string::npos) << e.what();
    }
    return;
  }
  const Outcome fp32 = step(c, N, {}), bf16 = step(c, N, {false, 0, Precision::bf16});
  // The loss: bf16 rounds each operand to 2^-9 relative; over 4 layers the mean loss moves by far less.
  EXPECT_NEAR(bf16.loss, fp32.loss, 5e-4 * fp32.loss);  // measured 5.6e-5
  double worst = 0;
  const ParamLayout layout(c);
  for (const TensorSpec& t : layout.specs()) {
    const std::vector<float> a(fp32.grads.begin() + t.offset, fp32.grads.begin() + t.offset + t.size),
        b(bf16.grads.begin() + t.offset, bf16.grads.begin() + t.offset + t.size);
    const double e = lasp::testing::normalized_error(a, b);
    std::printf("  %-45s normalized error %.2e\n", t.name.c_str(), e);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-2) << t.name;  // measured at most 1.3e-3: a few bf16 roundings (2^-9 each) on its path
  }
  std::printf("bf16 vs fp32: loss %.6f vs %.6f, worst gradient error %.2e\n", bf16.loss, fp32.loss, worst);
  EXPECT_GT(worst, 0.0);  // bf16 did run: the numbers differ

  // In chunks as whole: the same bf16 products, chunk by chunk.
  const Outcome chunked = step(c, N, {false, chunk, Precision::bf16});
  EXPECT_NEAR(chunked.loss, bf16.loss, 1e-5 * bf16.loss);
  EXPECT_LE(lasp::testing::normalized_error(bf16.grads, chunked.grads), 1e-4);
}

TEST(Precision, Bf16ProjectionsStayCloseToFp32) {
  ModelConfig c;
  c.hidden_size = 64, c.intermediate_size = 160, c.num_attention_heads = 4, c.num_key_value_heads = 2;
  c.layer_types = "LLNL", c.num_hidden_layers = 4, c.linear.decay = Decay::lightning;
  expect_bf16_close_to_fp32(c, 200, 64);  // q, k, v and gate, up side by side: one product pair for each group
}

// Widths whose weights ParamLayout pads apart (sizes not multiples of 16 floats): q, k, v and gate, up each
// take their own products.
TEST(Precision, Bf16ProjectionsOfUnpaddedWidths) {
  ModelConfig c;
  c.hidden_size = 10, c.intermediate_size = 14, c.num_attention_heads = 5, c.num_key_value_heads = 1;
  c.layer_types = "LNL", c.num_hidden_layers = 3, c.linear.decay = Decay::retention;
  expect_bf16_close_to_fp32(c, 90, 32);
}

TEST(Precision, Names) {
  EXPECT_EQ(precision_from_string("bf16"), Precision::bf16);
  EXPECT_STREQ(to_string(Precision::fp32), "fp32");
  EXPECT_THROW(precision_from_string("fp16"), Error);
}

}  // namespace
