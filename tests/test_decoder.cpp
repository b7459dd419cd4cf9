// Generation: prefill + token-by-token decoding gives the logits of a full forward over the same tokens
// (linear layers through their d x d state, softmax layers through the key/value cache), so greedy
// decoding picks the same tokens as repeated full forwards.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "core/check.h"
#include "generate/decoder.h"
#include "model/attention.h"
#include "model/chunked_attention.h"
#include "model/model.h"
#include "testing.h"
#include "train/optimizer.h"

using namespace lasp;

namespace {

std::vector<float> last_logits_of_full_forward(const ModelConfig& c, const std::vector<float>& params,
                                               const std::vector<int>& tokens, Precision precision = Precision::fp32,
                                               int doc_start = -1) {
  const int n = int(tokens.size());
  LocalAttention attention(attention_shape(c, 1, n, 16, 2));
  ModelPlan plan;
  plan.precision = precision;
  Model model(c, 1, n, attention, plan);
  model.params() = params;
  model.set_document_start(doc_start);
  model.forward(tokens.data(), nullptr);
  return {model.logits() + size_t(n - 1) * c.vocab_size, model.logits() + size_t(n) * c.vocab_size};
}


class DecoderVsForward : public ::testing::TestWithParam<std::pair<std::string, Decay>> {
 protected:
  // A small model of the case's layers and decay, and its weights (std 0.3; GLA and gdn 0.1) from a seed. GLA's gates
  // at 0.3 make the model ill-conditioned: two fp32 orders (decoder and forward) then differ by 1.6e-10 in the
  // documents case, measured, against 2e-12 at 0.1.
  ModelConfig config() const {
    ModelConfig c;
    c.vocab_size = 64, c.hidden_size = 32, c.intermediate_size = 64, c.num_attention_heads = 4;
    // "LLLN" or "LLLN_based4": layer types, then an expanded map and its feature_dim
    const std::string& p = GetParam().first;
    const size_t cut = p.find('_');
    c.num_key_value_heads = 2, c.layer_types = p.substr(0, cut), c.num_hidden_layers = int(c.layer_types.size());
    c.linear.decay = GetParam().second;
    if (c.linear.decay == Decay::gdn) c.linear.num_v_heads = 8, c.linear.head_v_dim = 6;  // GVA, d_k 8 != d_v
    if (cut != std::string::npos) {
      const std::string map = p.substr(cut + 1), kind = map.substr(0, map.find_first_of("0123456789"));
      EXPECT_TRUE(c.linear.set_feature_map(kind)) << kind;
      c.linear.feature_dim = std::stoi(map.substr(kind.size()));
    }
    c.validate();
    return c;
  }
  static std::vector<float> weights(const ModelConfig& c, uint64_t seed) {
    const ParamLayout layout(c);
    std::vector<float> params(layout.total());
    init_weights(layout, params, seed, c.linear.decay == Decay::gla || c.linear.decay == Decay::gdn ? 0.1f : 0.3f);
    return params;
  }
};

TEST_P(DecoderVsForward, GreedyDecodingMatchesRepeatedFullForwards) {
  const ModelConfig c = config();
  const std::vector<float> params = weights(c, 3);
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> tok(0, c.vocab_size - 1);
  std::vector<int> tokens(21);  // a prompt that is not a multiple of the block size
  for (int& t : tokens) t = tok(rng);

  Decoder decoder(c, params, 64);
  std::vector<float> logits = decoder.prefill(tokens);
  EXPECT_LE(lasp::testing::normalized_error(last_logits_of_full_forward(c, params, tokens), logits), 1e-10);
  uint64_t rng_state = 0;
  for (int i = 0; i < 8; ++i) {
    const int next = sample_token(logits, 0.f, 0, rng_state);
    tokens.push_back(next);
    logits = decoder.step(next);
    const std::vector<float> full = last_logits_of_full_forward(c, params, tokens);
    const double err = lasp::testing::normalized_error(full, logits);
    EXPECT_LE(err, 1e-10) << "token " << i;
    EXPECT_EQ(sample_token(full, 0.f, 0, rng_state), sample_token(logits, 0.f, 0, rng_state)) << "token " << i;
  }
}

// A long prompt is prefilled in chunks (the memory plan's chunked attention): decoding continues from the
// same state and keys as after a whole prefill.
TEST_P(DecoderVsForward, ChunkedPrefillContinuesLikeAWholeOne) {
  const ModelConfig c = config();
  const std::vector<float> params = weights(c, 5);
  std::vector<int> tokens(23);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int(i * 7 % c.vocab_size);
  std::vector<int> positions(tokens.size());
  std::iota(positions.begin(), positions.end(), 0);
  Decoder whole(c, params, 40), chunked(c, params, 40);
  std::vector<float> a = whole.prefill(tokens);
  ChunkedAttention attention(attention_shape(c, 1, 6, 16, 2),
                             int(tokens.size()), c.num_hidden_layers);
  std::vector<float> b = chunked.prefill(tokens, attention, positions, int(tokens.size()), {false, 6});
  for (int i = 0; i < 6; ++i) {
    EXPECT_LE(lasp::testing::normalized_error(a, b), 1e-5) << "token " << i;
    a = whole.step(i + 1);
    b = chunked.step(i + 1);
  }
}

// Documents: with starts in the prompt and among the decoded tokens, each step's logits equal a full forward
// with documents, and after a start they equal those of the new document alone.
TEST_P(DecoderVsForward, DocumentsAreNotCrossed) {
  const ModelConfig c = config();
  const std::vector<float> params = weights(c, 7);
  constexpr int kStart = 1;
  std::vector<int> tokens(19);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 2 + int(i * 5 % (c.vocab_size - 2));
  tokens[6] = tokens[13] = kStart;  // the prompt's last document begins at 13
  Decoder decoder(c, params, 40);
  decoder.set_document_start(kStart);
  std::vector<float> logits = decoder.prefill(tokens);
  // Rebased's normalizer s = (y_q . y_k)^2 / f of a document's first tokens can be near 0 (FEATURE_MAPS.md,
  // Numerics): dividing by it magnifies the rounding of two fp32 summation orders (the decoder's expanded
  // features, the kernel's raw-row scores) to ~1e-5 on the steps right after the decoded start.
  const double tolerance = c.linear.expanded == ExpandedKind::rebased ? 1e-4 : 1e-10;
  for (int i = 0; i < 8; ++i) {
    EXPECT_LE(lasp::testing::normalized_error(last_logits_of_full_forward(c, params, tokens, Precision::fp32, kStart),
                                              logits), i > 3 ? tolerance : 1e-10) << "token " << i;
    const int next = i == 3 ? kStart : 2 + i;  // a document also begins among the decoded tokens
    tokens.push_back(next);
    logits = decoder.step(next);
  }
  // the last document (from the decoded start on) alone
  const std::vector<int> alone(tokens.end() - 5, tokens.end());
  EXPECT_LE(lasp::testing::normalized_error(last_logits_of_full_forward(c, params, alone), logits), std::max(tolerance, 1e-9));
}

INSTANTIATE_TEST_SUITE_P(Models, DecoderVsForward,
                         ::testing::Values(std::make_pair(std::string("LLLN"), Decay::none),
                                           std::make_pair(std::string("NLNL"), Decay::lightning),
                                           std::make_pair(std::string("LLLL"), Decay::retention),
                                           std::make_pair(std::string("LLNL"), Decay::gla),
                                           std::make_pair(std::string("LLLN_based4"), Decay::none),
                                           std::make_pair(std::string("LNLL_rebased8"), Decay::none),
                                           std::make_pair(std::string("LLNL"), Decay::gdn),
                                           std::make_pair(std::string("LLLL"), Decay::gdn)),
                         [](const auto& info) { return info.param.first + "_" + to_string(info.param.second); });

// generate --precision bf16: the decoder's projections round their operands to bf16 as the bf16 forward's do,
// so decoding follows the bf16 model (the summation order of a 1-row product differs: 1e-5, not 1e-10), and
// departs from the fp32 model by bf16 rounding (normalized error ~1e-5..1e-4 here, far above 1e-8).
TEST(DecoderBf16, FollowsTheBf16Forward) {
  ModelConfig c;
  c.vocab_size = 64, c.hidden_size = 64, c.intermediate_size = 128, c.num_attention_heads = 4;
  c.num_key_value_heads = 2, c.layer_types = "LLNL", c.num_hidden_layers = 4;
  c.linear.decay = Decay::lightning;
  ParamLayout layout(c);
  std::vector<float> params(layout.total());
  init_weights(layout, params, 9, 0.3f);
  std::vector<int> tokens(19);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int(i * 5 % c.vocab_size);
  if (std::string(bf16_path()) == "none") {  // no bf16 products on this CPU: a clear refusal
    EXPECT_THROW(Decoder(c, params, 32, Precision::bf16).prefill(tokens), Error);
    return;
  }
  Decoder decoder(c, params, 32, Precision::bf16);
  std::vector<float> logits = decoder.prefill(tokens);
  for (int i = 0; i < 5; ++i) {
    const std::vector<float> bf16 = last_logits_of_full_forward(c, params, tokens, Precision::bf16);
    const std::vector<float> fp32 = last_logits_of_full_forward(c, params, tokens);
    EXPECT_LE(lasp::testing::normalized_error(bf16, logits), 1e-5) << "token " << i;
    EXPECT_GE(lasp::testing::normalized_error(fp32, logits), 1e-8) << "token " << i;
    tokens.push_back(i + 1);
    logits = decoder.step(i + 1);
  }
}

TEST(SampleToken, TemperatureAndTopK) {
  const std::vector<float> logits = {0.f, 5.f, 1.f, 4.f};
  uint64_t state = 1;
  EXPECT_EQ(sample_token(logits, 0.f, 0, state), 1);
  int counts[4] = {};
  for (int i = 0; i < 2000; ++i) ++counts[sample_token(logits, 1.f, 2, state)];
  EXPECT_EQ(counts[0] + counts[2], 0);            // outside the top 2
  EXPECT_GT(counts[1], counts[3]);                // e^5 vs e^4
  EXPECT_GT(counts[3], 300);
}

TEST(Decoder, BadUse) {
  ModelConfig c;
  ParamLayout layout(c);
  std::vector<float> params(layout.total(), 0.01f);
  Decoder decoder(c, params, 4);
  EXPECT_THROW(decoder.step(1), Error);                     // no prompt yet
  EXPECT_THROW(decoder.prefill({}), Error);                 // empty prompt
  EXPECT_THROW(decoder.prefill({1, 2, 3, 4, 5}), Error);    // longer than max_tokens
  decoder.prefill({1, 2, 3});
  EXPECT_THROW(decoder.step(300), Error);                   // outside the vocabulary
  decoder.step(4);
  EXPECT_THROW(decoder.step(5), Error);                     // max_tokens reached
}

}  // namespace
