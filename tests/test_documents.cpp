// Packed documents (Model::set_document_start): the loss of each document inside a packed sequence, and
// every gradient of it, equal those of the document run alone, on one process whole and in chunks. (Under
// sequence parallelism tests/mpi/test_sp.cpp shows every method equal to this single process with the same
// documents, so packed equals separate there too.) Also the helpers of model/documents.h, and bad input.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "model/chunked_attention.h"
#include "model/documents.h"
#include "model/model.h"
#include "model/params.h"
#include "train/optimizer.h"
#include "testing.h"

namespace lasp {
namespace {

using testing::normalized_error;
constexpr int kThreads = 2, kStart = 1;  // token 1 opens a document

ModelConfig small_config(const std::string& layers, Decay decay) {
  ModelConfig c;
  c.vocab_size = 40;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.layer_types = layers;
  c.num_hidden_layers = int(layers.size());
  c.linear.decay = decay;
  c.validate();
  return c;
}

struct Result {
  double loss;
  std::vector<float> grads;
};

// The summed loss over the targets that are not -1, and its gradients, of B rows of N tokens; chunk > 0 runs
// the chunked plan (ChunkedAttention).
Result run(const ModelConfig& c, const std::vector<float>& params, const std::vector<int>& inputs,
           const std::vector<int>& targets, int B, int N, bool documents, int chunk = 0) {
  const AttentionShape whole = attention_shape(c, B, N, 16, kThreads);
  std::unique_ptr<Attention> attention;
  ModelPlan plan;
  if (chunk > 0 && chunk < N) {
    AttentionShape part = whole;
    part.N = plan.chunk = chunk;
    attention = std::make_unique<ChunkedAttention>(part, N, c.num_hidden_layers);
  } else {
    attention = std::make_unique<LocalAttention>(whole);
  }
  Model model(c, B, N, *attention, plan);
  model.params() = params;
  if (documents) model.set_document_start(kStart);
  model.zero_grads();
  const double loss = model.forward(inputs.data(), targets.data());
  model.backward(1.f);
  return {loss, model.grads()};
}

// Documents of awkward lengths (1 token; a start at the first and at the last token; longer than a block of
// the linear kernel), packed into one row; each one's loss and gradients against running it alone.
TEST(Documents, PackedEqualsSeparate) {
  const std::vector<int> lengths = {5, 1, 23, 2, 37, 9, 1};  // 78 tokens; the last document is its last token
  int N = 0;
  for (int n : lengths) N += n;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> tok(2, 39);
  std::vector<int> inputs(N), targets(N);
  for (int& t : targets) t = tok(rng);
  for (int& t : inputs) t = tok(rng);
  std::vector<int> begin;
  int offset = 0;
  for (int n : lengths) begin.push_back(offset), inputs[offset] = kStart, offset += n;

  for (const auto& [layers, decay] : std::vector<std::pair<std::string, Decay>>{
           {"LLLL", Decay::none}, {"LLLL", Decay::lightning}, {"LLLN", Decay::retention}, {"NLNL", Decay::lightning}}) {
    const ModelConfig c = small_config(layers, decay);
    std::vector<float> params(ParamLayout(c).total());
    init_weights(ParamLayout(c), params, 7, 0.1f);
    for (size_t d = 0; d < lengths.size(); ++d) {
      const int n = lengths[d], at = begin[d];
      const std::string what = layers + " " + to_string(decay) + " document " + std::to_string(d);
      // alone: its own tokens as a sequence of n
      const std::vector<int> in(inputs.begin() + at, inputs.begin() + at + n), tg(targets.begin() + at, targets.begin() + at + n);
      const Result alone = run(c, params, in, tg, 1, n, false);
      // packed: every token, the targets of the other documents masked out
      std::vector<int> masked(N, -1);
      std::copy(tg.begin(), tg.end(), masked.begin() + at);
      for (int chunk : {0, 16}) {
        const Result packed = run(c, params, inputs, masked, 1, N, true, chunk);
        const std::string how = what + (chunk ? " (chunks of 16)" : "");
        EXPECT_NEAR(packed.loss, alone.loss, 1e-5 * alone.loss) << how;
        const double err = normalized_error(testing::to_double(alone.grads), packed.grads);
        EXPECT_LE(err, 1e-5) << how << ": gradients";
      }
    }
    // Without documents the packed sequence is one stream: the same document then sees the others.
    std::vector<int> masked(N, -1);
    std::copy(targets.begin() + begin[4], targets.begin() + begin[4] + lengths[4], masked.begin() + begin[4]);
    const std::vector<int> in(inputs.begin() + begin[4], inputs.begin() + begin[4] + lengths[4]);
    const std::vector<int> tg(targets.begin() + begin[4], targets.begin() + begin[4] + lengths[4]);
    const Result alone = run(c, params, in, tg, 1, lengths[4], false);
    EXPECT_GT(std::abs(run(c, params, inputs, masked, 1, N, false).loss - alone.loss), 1e-4 * alone.loss) << layers;
  }
}

// Two rows with documents in different places: each row keeps its own.
TEST(Documents, RowsHaveTheirOwnDocuments) {
  const ModelConfig c = small_config("LLLN", Decay::lightning);
  std::vector<float> params(ParamLayout(c).total());
  init_weights(ParamLayout(c), params, 9, 0.1f);
  const int N = 40;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> tok(2, 39);
  std::vector<int> inputs(2 * N), targets(2 * N, -1);
  for (int& t : inputs) t = tok(rng);
  inputs[17] = kStart;      // row 0: documents [0, 17) and [17, 40)
  inputs[N + 30] = kStart;  // row 1: [0, 30) and [30, 40)
  for (int i = 17; i < N; ++i) targets[i] = tok(rng);  // the loss of row 0's second document only
  const Result both = run(c, params, inputs, targets, 2, N, true);
  const std::vector<int> in(inputs.begin() + 17, inputs.begin() + N), tg(targets.begin() + 17, targets.begin() + N);
  const Result alone = run(c, params, in, tg, 1, N - 17, false);
  EXPECT_NEAR(both.loss, alone.loss, 1e-5 * alone.loss);
  EXPECT_LE(normalized_error(testing::to_double(alone.grads), both.grads), 1e-5);
}

TEST(Documents, Helpers) {
  const std::vector<int> tokens = {1, 5, 5, 1, 1, 7, 5, 1};
  std::vector<uint8_t> flags(tokens.size());
  document_starts(flags.data(), tokens.data(), long(tokens.size()), 1);
  EXPECT_EQ(flags, (std::vector<uint8_t>{1, 0, 0, 1, 1, 0, 0, 1}));
  // a row that starts inside a document: its first document begins at 0
  const std::vector<uint8_t> row = {0, 0, 1, 0, 0, 1};
  const std::vector<int> positions = {5, 0, 3, 2};  // any order
  const Documents docs = documents_at(row.data(), 1, 6, positions.data(), 4);
  EXPECT_EQ(docs.first, (std::vector<int>{5, 0, 2, 2}));
  EXPECT_EQ(docs.starts, (std::vector<uint8_t>{1, 0, 0, 1}));
  const Documents part = documents_slice(docs, 4, 1, 2);
  EXPECT_EQ(part.first, (std::vector<int>{0, 2}));
}

TEST(Documents, BidirectionalLayersRefuseThem) {
  LocalAttention attention({1, 8, 2, 2, 4, 4, 4, 16, kThreads});
  const uint8_t flags[8] = {1, 0, 0, 1, 0, 0, 0, 0};
  std::vector<float> x(8 * 2 * 4, 0.5f), o(x.size());
  attention.set_documents(flags);
  EXPECT_THROW(attention.linear_bidirectional_forward(0, o.data(), x.data(), x.data(), x.data()), Error);
  attention.set_documents(nullptr);
  EXPECT_NO_THROW(attention.linear_bidirectional_forward(0, o.data(), x.data(), x.data(), x.data()));
}

TEST(Documents, StartOutsideTheVocabularyIsRefused) {
  const ModelConfig c = small_config("LN", Decay::none);
  LocalAttention attention({1, 8, 4, 2, 8, 8, 8, 16, kThreads});
  Model model(c, 1, 8, attention);
  try {
    model.set_document_start(40);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[0, 40)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("got 40"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model.set_document_start(-2), Error);
}

}  // namespace
}  // namespace lasp
