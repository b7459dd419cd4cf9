// Sequence parallelism equals the single process, on EVERY rank, forward and backward: LASP-2 (linear
// layers, every decay) and LASP-2H (softmax layers, GQA), contiguous and zigzag layouts, for the attention
// alone (outputs and the gradients of q, k, v) and for whole models (logits, loss, every parameter
// gradient), with sequence lengths that are not powers of two. Runs under mpirun with any world size;
// when the world has 4 ranks it also checks dp 2 x sp 2.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <random>

#include "comm/comm.h"
#include "core/check.h"
#include "model/attention.h"
#include "generate/decoder.h"
#include "model/model.h"
#include "sp/grid.h"
#include "sp/allgather.h"
#include "sp/lasp1.h"
#include "sp/ring.h"
#include "sp/ulysses.h"
#include "sp/lasp2.h"
#include "sp/methods.h"
#include "sp/state_passing.h"
#include "testing.h"
#include "train/optimizer.h"

using namespace lasp;

namespace {

Comm& world() { return comm_world(); }

// The attention kernels' threads: more than one, so that every parallel path runs, whatever the ranks share.
constexpr int kThreads = 2;

std::vector<float> random_values(size_t n, uint32_t seed) { return lasp::testing::random_vector(n, seed, -1.f, 1.f); }

// Rows of a (B, N, width) tensor at the given positions -> (B, positions, width).
std::vector<float> take_rows(const std::vector<float>& full, int B, int N, int width, const std::vector<int>& pos) {
  std::vector<float> out;
  for (int b = 0; b < B; ++b)
    for (int p : pos) out.insert(out.end(), full.begin() + (size_t(b) * N + p) * width,
                                 full.begin() + (size_t(b) * N + p + 1) * width);
  return out;
}

void expect_close(const std::vector<float>& ref, const std::vector<float>& got, const std::string& what) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  const double err = lasp::testing::normalized_error(ref, got);
  EXPECT_LE(err, 1e-10) << what << " on rank " << world().rank() << ": normalized error " << err;
}

struct AttnCase {
  bool linear;
  Decay decay;
  SpLayout layout;
  int N;
  StatePassingKind passing = StatePassingKind::gather;  // how LASP-2 passes its linear layers' states
  int slices = 1;                                       // All-Scan's K
  int value_width = 16;                                 // linear layers' dv (their dk is 16)
  int feature_dim = 0;                                  // > 0: q, k raw rows of an expanded map (Based, Rebased)
  ExpandedKind expansion = ExpandedKind::based;
};

class SpAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(SpAttention, EqualsSingleProcessOnEveryRank) {
  const AttnCase c = GetParam();
  const int W = world().size(), B = 2, H = 4, Hkv = c.linear ? 4 : 2, d = 16, block = 16;
  ASSERT_EQ(c.N % (c.layout == SpLayout::zigzag ? 2 * W : W), 0) << "the cases are sized for worlds of 1 to 4 ranks";
  const int dv = c.linear ? c.value_width : d;  // keys are d wide, or feature_dim raw values under an expansion
  const int f = c.feature_dim, rows = f > 0 ? int(expanded_features(f, c.expansion)) : d, qk = f > 0 ? f : d;
  // widths per token: queries and keys; values and the output
  const int width = H * qk, kvw = Hkv * qk, vw = c.linear ? H * dv : kvw, ow = c.linear ? H * dv : width;
  auto q = random_values(size_t(B) * c.N * width, 1), k = random_values(size_t(B) * c.N * kvw, 2),
       v = random_values(size_t(B) * c.N * vw, 3), g = random_values(size_t(B) * c.N * ow, 4);
  if (c.linear)  // positive features, as a feature map would give
    for (auto* x : {&q, &k})
      for (float& e : *x) e = 0.5f * (e + 1.1f);
  std::vector<float> lambda(H);
  linear_attention_decays(lambda.data(), H, c.decay);

  // single process on the whole sequence
  LocalAttention local({B, c.N, H, Hkv, d, rows, dv, block, kThreads, false, f, c.expansion});
  std::vector<float> o(g.size()), lse(size_t(B) * H * c.N), dq(q.size(), 0.f), dk(k.size(), 0.f),
      dvs(v.size(), 0.f);
  if (c.linear) {
    local.linear_forward(0, o.data(), q.data(), k.data(), v.data(), lambda.data());
    local.linear_backward(0, dq.data(), dk.data(), dvs.data(), g.data(), q.data(), k.data(), v.data(), lambda.data());
  } else {
    local.softmax_forward(0, o.data(), lse.data(), q.data(), k.data(), v.data());
    local.softmax_backward(0, dq.data(), dk.data(), dvs.data(), g.data(), o.data(), lse.data(), q.data(), k.data(),
                           v.data());
  }

  // this rank's slice under LASP-2 / LASP-2H
  const std::vector<int> pos = sp_positions(c.N, W, world().rank(), c.layout);
  const int Nl = int(pos.size());
  Lasp2Attention sp(world(), {B, Nl, H, Hkv, d, rows, dv, block, kThreads, false, f, c.expansion}, c.N, c.layout, 1,
                    c.passing, c.slices);
  auto ql = take_rows(q, B, c.N, width, pos), kl = take_rows(k, B, c.N, kvw, pos),
       vl = take_rows(v, B, c.N, vw, pos), gl = take_rows(g, B, c.N, ow, pos);
  std::vector<float> ol(gl.size()), lsel(size_t(B) * H * Nl), dql(ql.size(), 0.f), dkl(kl.size(), 0.f),
      dvl(vl.size(), 0.f);
  if (c.linear) {
    sp.linear_forward(0, ol.data(), ql.data(), kl.data(), vl.data(), lambda.data());
    sp.linear_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ql.data(), kl.data(), vl.data(),
                       lambda.data());
  } else {
    sp.softmax_forward(0, ol.data(), lsel.data(), ql.data(), kl.data(), vl.data());
    sp.softmax_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ol.data(), lsel.data(), ql.data(),
                        kl.data(), vl.data());
  }
  expect_close(take_rows(o, B, c.N, ow, pos), ol, "o");
  expect_close(take_rows(dq, B, c.N, width, pos), dql, "dq");
  expect_close(take_rows(dk, B, c.N, kvw, pos), dkl, "dk");
  expect_close(take_rows(dvs, B, c.N, vw, pos), dvl, "dv");
}

std::vector<AttnCase> attention_cases() {
  std::vector<AttnCase> cases;
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag})
    for (int N : {24, 72, 120}) {
      for (Decay decay : {Decay::none, Decay::lightning, Decay::retention}) {
        cases.push_back({true, decay, layout, N});
        cases.push_back({true, decay, layout, N, StatePassingKind::exscan});
        // K: slices of unequal rows; one slice, and more slices than rows (B H d = 128: clamped)
        cases.push_back({true, decay, layout, N, StatePassingKind::allscan, 3});
        if (N == 24)
          for (int slices : {1, 500}) cases.push_back({true, decay, layout, N, StatePassingKind::allscan, slices});
      }
      cases.push_back({false, Decay::none, layout, N});
    }
  // Based and Rebased's expanded features (raw q, k of f values; the state D' x dv), documents aside: every
  // transport, both layouts.
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag})
    for (ExpandedKind kind : {ExpandedKind::based, ExpandedKind::rebased})
      for (StatePassingKind passing : {StatePassingKind::gather, StatePassingKind::exscan, StatePassingKind::allscan})
        cases.push_back({true, Decay::none, layout, 72, passing, 3, 9, 4, kind});
  // Keys and values of different widths (dk 16): every transport, both layouts.
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag})
    for (int dv : {5, 33}) {
      cases.push_back({true, Decay::lightning, layout, 72, StatePassingKind::gather, 1, dv});
      cases.push_back({true, Decay::lightning, layout, 72, StatePassingKind::exscan, 1, dv});
      cases.push_back({true, Decay::lightning, layout, 72, StatePassingKind::allscan, 3, dv});
    }
  return cases;
}

const char* to_string(StatePassingKind kind) {
  return kind == StatePassingKind::gather ? "gather" : kind == StatePassingKind::exscan ? "exscan" : "allscan";
}

INSTANTIATE_TEST_SUITE_P(Cases, SpAttention, ::testing::ValuesIn(attention_cases()), [](const auto& info) {
  const AttnCase& c = info.param;
  return std::string(c.linear ? "linear_" : "softmax_") + (c.linear ? to_string(c.decay) : "gqa") + "_" +
         to_string(c.layout) + "_N" + std::to_string(c.N) + "_" + to_string(c.passing) +
         (c.passing == StatePassingKind::allscan ? std::to_string(c.slices) : "") +
         (c.linear && c.value_width != 16 ? "_dv" + std::to_string(c.value_width) : "") +
         (c.feature_dim > 0 ? std::string("_") + to_string(c.expansion) + std::to_string(c.feature_dim) : "");
});

// The baselines give the same results for linear layers, both layouts, every decay: LASP-1 (the serial
// chain of states) and AllGather (K, V gathered, masked left product); with their own traffic.
TEST(SpBaselines, EqualsSingleProcessOnEveryRank) {
  const int W = world().size(), B = 2, H = 4, d = 16, N = 24 * W, width = H * d;
  for (const std::string method : {"lasp1", "allgather", "ring"})
    for (Decay decay : {Decay::none, Decay::lightning, Decay::retention})
      for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
        auto q = random_values(size_t(B) * N * width, 1), k = random_values(q.size(), 2),
             v = random_values(q.size(), 3), g = random_values(q.size(), 4);
        for (auto* x : {&q, &k})
          for (float& e : *x) e = 0.5f * (e + 1.1f);
        std::vector<float> lambda(H);
        linear_attention_decays(lambda.data(), H, decay);
        LocalAttention local({B, N, H, H, d, d, d, 16, kThreads});
        std::vector<float> o(q.size()), dq(q.size(), 0.f), dk(q.size(), 0.f), dv(q.size(), 0.f);
        local.linear_forward(0, o.data(), q.data(), k.data(), v.data(), lambda.data());
        local.linear_backward(0, dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(),
                              lambda.data());
        const std::vector<Piece> mine = sp_pieces(N, W, world().rank(), layout);
        const std::vector<int> pos = sp_positions(N, W, world().rank(), layout);
        const int Nl = int(pos.size());
        const AttentionShape shape{B, Nl, H, H, d, d, d, 16, kThreads};
        std::unique_ptr<Attention> sp;
        if (method == "lasp1") sp = std::make_unique<Lasp1Attention>(world(), shape, N, layout, 1);
        else if (method == "ring") sp = std::make_unique<RingAttention>(world(), shape, N, layout, 1);
        else sp = std::make_unique<AllGatherAttention>(world(), shape, N, layout, 1);
        auto ql = take_rows(q, B, N, width, pos), kl = take_rows(k, B, N, width, pos),
             vl = take_rows(v, B, N, width, pos), gl = take_rows(g, B, N, width, pos);
        std::vector<float> ol(ql.size()), dql(ql.size(), 0.f), dkl(ql.size(), 0.f), dvl(ql.size(), 0.f);
        world().reset_stats();
        sp->linear_forward(0, ol.data(), ql.data(), kl.data(), vl.data(), lambda.data());
        const CommStats& st = world().stats();
        if (method == "lasp1") {  // each piece whose predecessor sits on another rank receives one state
          int hops = 0;
          for (const Piece& p : mine) {
            bool own_previous = false;
            for (const Piece& other : mine) own_previous = own_previous || other.index == p.index - 1;
            hops += p.index > 0 && !own_previous ? 1 : 0;
          }
          EXPECT_EQ(st.bytes_received[int(CommKind::send_recv)], uint64_t(hops) * B * H * d * d * sizeof(float));
        } else if (method == "ring") {  // W-1 hops of this rank-sized K, V block
          EXPECT_EQ(st.calls[int(CommKind::send_recv)], uint64_t(W - 1));
          EXPECT_EQ(st.bytes_received[int(CommKind::send_recv)], uint64_t(W - 1) * 2 * B * Nl * width * sizeof(float));
        } else {  // K and V of every other rank
          EXPECT_EQ(st.calls[int(CommKind::all_gather)], 1u);
          EXPECT_EQ(st.bytes_received[int(CommKind::all_gather)], uint64_t(W - 1) * 2 * B * Nl * width * sizeof(float));
        }
        sp->linear_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ql.data(), kl.data(), vl.data(),
                            lambda.data());
        const std::string what = method + " " + to_string(decay) + " " + to_string(layout);
        expect_close(take_rows(o, B, N, width, pos), ol, what + " o");
        expect_close(take_rows(dq, B, N, width, pos), dql, what + " dq");
        expect_close(take_rows(dk, B, N, width, pos), dkl, what + " dk");
        expect_close(take_rows(dv, B, N, width, pos), dvl, what + " dv");
      }
}

// Ring Attention for softmax layers (GQA): log-sum-exp merge forward, travelling dK, dV backward.
TEST(SpRingSoftmax, EqualsSingleProcessOnEveryRank) {
  const int W = world().size(), B = 2, H = 4, Hkv = 2, d = 8, N = 24 * W, width = H * d, kvw = Hkv * d;
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
    auto q = random_values(size_t(B) * N * width, 1), k = random_values(size_t(B) * N * kvw, 2),
         v = random_values(size_t(B) * N * kvw, 3), g = random_values(size_t(B) * N * width, 4);
    LocalAttention local({B, N, H, Hkv, d, d, d, 16, kThreads});
    std::vector<float> o(q.size()), lse(size_t(B) * H * N), dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
    local.softmax_forward(0, o.data(), lse.data(), q.data(), k.data(), v.data());
    local.softmax_backward(0, dq.data(), dk.data(), dv.data(), g.data(), o.data(), lse.data(), q.data(), k.data(),
                           v.data());
    const std::vector<int> pos = sp_positions(N, W, world().rank(), layout);
    const int Nl = int(pos.size());
    RingAttention sp(world(), {B, Nl, H, Hkv, d, d, d, 16, kThreads}, N, layout, 1);
    auto ql = take_rows(q, B, N, width, pos), kl = take_rows(k, B, N, kvw, pos), vl = take_rows(v, B, N, kvw, pos),
         gl = take_rows(g, B, N, width, pos);
    std::vector<float> ol(ql.size()), lsel(size_t(B) * H * Nl), dql(ql.size(), 0.f), dkl(kl.size(), 0.f),
        dvl(vl.size(), 0.f);
    sp.softmax_forward(0, ol.data(), lsel.data(), ql.data(), kl.data(), vl.data());
    sp.softmax_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ol.data(), lsel.data(), ql.data(), kl.data(),
                        vl.data());
    const std::string what = std::string("ring softmax ") + to_string(layout);
    expect_close(take_rows(o, B, N, width, pos), ol, what + " o");
    expect_close(take_rows(dq, B, N, width, pos), dql, what + " dq");
    expect_close(take_rows(dk, B, N, kvw, pos), dkl, what + " dk");
    expect_close(take_rows(dv, B, N, kvw, pos), dvl, what + " dv");
  }
}

// Ulysses: all-to-all to head sharding and back, for linear (every decay) and softmax (GQA, the key/value
// heads replicated) layers; a head count the world does not divide is a clear error.
TEST(SpUlysses, EqualsSingleProcessOnEveryRankOrRefusesClearly) {
  const int W = world().size(), B = 2, H = 4, Hkv = 2, d = 8, N = 24 * W;
  if (H % W != 0) {
    try {
      UlyssesAttention sp(world(), {B, N / W, H, Hkv, d, d, d, 16, kThreads}, N, SpLayout::contiguous, 1);
      ADD_FAILURE() << "no error for H = " << H << " over " << W << " ranks";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ulysses"), std::string::npos) << e.what();
    }
    return;
  }
  for (bool linear : {true, false})
    for (Decay decay : {Decay::none, Decay::lightning})
      for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
        const int width = H * d, kvw = (linear ? H : Hkv) * d;
        auto q = random_values(size_t(B) * N * width, 1), k = random_values(size_t(B) * N * kvw, 2),
             v = random_values(size_t(B) * N * kvw, 3), g = random_values(size_t(B) * N * width, 4);
        if (linear)
          for (auto* x : {&q, &k})
            for (float& e : *x) e = 0.5f * (e + 1.1f);
        std::vector<float> lambda(H);
        linear_attention_decays(lambda.data(), H, decay);
        LocalAttention local({B, N, H, Hkv, d, d, d, 16, kThreads});
        std::vector<float> o(q.size()), lse(size_t(B) * H * N), dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
        const std::vector<int> pos = sp_positions(N, W, world().rank(), layout);
        const int Nl = int(pos.size());
        UlyssesAttention sp(world(), {B, Nl, H, Hkv, d, d, d, 16, kThreads}, N, layout, 1);
        auto ql = take_rows(q, B, N, width, pos), kl = take_rows(k, B, N, kvw, pos), vl = take_rows(v, B, N, kvw, pos),
             gl = take_rows(g, B, N, width, pos);
        std::vector<float> ol(ql.size()), lsel(size_t(B) * H * Nl), dql(ql.size(), 0.f), dkl(kl.size(), 0.f),
            dvl(vl.size(), 0.f);
        if (linear) {
          local.linear_forward(0, o.data(), q.data(), k.data(), v.data(), lambda.data());
          local.linear_backward(0, dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data(), lambda.data());
          world().reset_stats();
          sp.linear_forward(0, ol.data(), ql.data(), kl.data(), vl.data(), lambda.data());
          // q, k, v to head sharding and o back: 4 all-to-alls of (W-1) C (H/W) d floats received each
          const CommStats& st = world().stats();
          EXPECT_EQ(st.calls[int(CommKind::all_to_all)], 4u);
          EXPECT_EQ(st.bytes_received[int(CommKind::all_to_all)],
                    4 * uint64_t(W - 1) * B * Nl * (H / W) * d * sizeof(float));
          sp.linear_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ql.data(), kl.data(), vl.data(),
                             lambda.data());
        } else {
          if (decay != Decay::none) continue;
          local.softmax_forward(0, o.data(), lse.data(), q.data(), k.data(), v.data());
          local.softmax_backward(0, dq.data(), dk.data(), dv.data(), g.data(), o.data(), lse.data(), q.data(), k.data(),
                                 v.data());
          sp.softmax_forward(0, ol.data(), lsel.data(), ql.data(), kl.data(), vl.data());
          sp.softmax_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ol.data(), lsel.data(), ql.data(),
                              kl.data(), vl.data());
        }
        const std::string what = std::string(linear ? "linear " : "softmax ") + to_string(decay) + " " + to_string(layout);
        expect_close(take_rows(o, B, N, width, pos), ol, "ulysses o " + what);
        expect_close(take_rows(dq, B, N, width, pos), dql, "ulysses dq " + what);
        expect_close(take_rows(dk, B, N, kvw, pos), dkl, "ulysses dk " + what);
        expect_close(take_rows(dv, B, N, kvw, pos), dvl, "ulysses dv " + what);
      }
}

// Bidirectional linear attention: every rank's queries against the total state of all ranks.
TEST(SpBidirectional, EqualsSingleProcessOnEveryRank) {
  const int W = world().size(), B = 2, H = 3, d = 8, N = 12 * W, width = H * d;
  auto q = random_values(size_t(B) * N * width, 1), k = random_values(q.size(), 2), v = random_values(q.size(), 3),
       g = random_values(q.size(), 4);
  LocalAttention local({B, N, H, H, d, d, d, 16, kThreads});
  std::vector<float> o(q.size()), dq(q.size(), 0.f), dk(q.size(), 0.f), dv(q.size(), 0.f);
  local.linear_bidirectional_forward(0, o.data(), q.data(), k.data(), v.data());
  local.linear_bidirectional_backward(0, dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(), v.data());
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
    const std::vector<int> pos = sp_positions(N, W, world().rank(), layout);
    const int Nl = int(pos.size());
    Lasp2Attention sp(world(), {B, Nl, H, H, d, d, d, 16, kThreads}, N, layout, 1);
    auto ql = take_rows(q, B, N, width, pos), kl = take_rows(k, B, N, width, pos), vl = take_rows(v, B, N, width, pos),
         gl = take_rows(g, B, N, width, pos);
    std::vector<float> ol(ql.size()), dql(ql.size(), 0.f), dkl(ql.size(), 0.f), dvl(ql.size(), 0.f);
    sp.linear_bidirectional_forward(0, ol.data(), ql.data(), kl.data(), vl.data());
    sp.linear_bidirectional_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ql.data(), kl.data(), vl.data());
    expect_close(take_rows(o, B, N, width, pos), ol, "o");
    expect_close(take_rows(dq, B, N, width, pos), dql, "dq");
    expect_close(take_rows(dk, B, N, width, pos), dkl, "dk");
    expect_close(take_rows(dv, B, N, width, pos), dvl, "dv");
  }
}

// Generation with a sequence-parallel prefill (linear layers hand over their final state, softmax layers
// their keys and values, Gated DeltaNet's layers their state and the last rank's convolution cache) decodes
// exactly like the single-process decoder, on every rank.
TEST(SpGenerate, PrefillAndDecodeEqualSingleProcess) {
  for (const std::string types : {"LLLN", "NLNL", "LNLL"})
    for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag})
    for (bool documents : {false, true}) {
      ModelConfig c;
      c.vocab_size = 64;
      c.hidden_size = 32;
      c.intermediate_size = 64;
      c.num_attention_heads = 4;
      c.num_key_value_heads = 2;
      c.layer_types = types;
      c.linear.decay = types == "NLNL" ? Decay::lightning : types == "LNLL" ? Decay::gdn : Decay::none;
      c.validate();
      ParamLayout layout_table(c);
      std::vector<float> params(layout_table.total());
      init_weights(layout_table, params, 3, 0.2f);
      std::vector<int> prompt(37);
      for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int(i * 7 % 64);  // token 5 at 19
      Decoder single(c, params, 64), parallel(c, params, 64);
      if (documents) {  // token 5 opens documents: the prompt's last one begins at 30
        prompt[9] = prompt[30] = 5;
        single.set_document_start(5), parallel.set_document_start(5);
      }
      std::vector<float> a = single.prefill(prompt), b = prefill_sequence_parallel(parallel, c, prompt, world(), layout);
      expect_close(a, b, types + " prefill logits");
      uint64_t state = 0;
      for (int i = 0; i < 5; ++i) {
        const int ta = sample_token(a, 0.f, 0, state), tb = sample_token(b, 0.f, 0, state);
        EXPECT_EQ(ta, tb) << types << " token " << i;
        a = single.step(ta);
        b = parallel.step(ta);
        expect_close(a, b, types + " decode logits");
      }
    }
}

// LASP-2 moves ONE all-gather of the d x d states per linear layer forward and one backward, the same
// bytes whatever the sequence length; LASP-2H one all-gather of K, V forward and one reduce-scatter back.
TEST(SpCommunication, OneCollectiveEachWayAndBytesIndependentOfN) {
  const int W = world().size(), B = 1, H = 4, d = 16, Hkv = 2;
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
    const int pieces = layout == SpLayout::zigzag ? 2 : 1;
    uint64_t bytes_at[2] = {};
    for (int twice = 0; twice < 2; ++twice) {
      const int N = (twice + 1) * 48 * W;
      const std::vector<int> pos = sp_positions(N, W, world().rank(), layout);
      const int Nl = int(pos.size());
      Lasp2Attention sp(world(), {B, Nl, H, Hkv, d, d, d, 16, kThreads}, N, layout, 2);
      auto q = random_values(size_t(B) * Nl * H * d, 1), k = random_values(q.size(), 2), v = random_values(q.size(), 3);
      std::vector<float> o(q.size()), dq(q.size()), dk(q.size()), dv(q.size());
      world().reset_stats();
      sp.linear_forward(0, o.data(), q.data(), k.data(), v.data(), nullptr);
      const CommStats fwd = world().stats();
      const int ag = int(CommKind::all_gather);
      EXPECT_EQ(fwd.calls[ag], 1u);
      EXPECT_EQ(fwd.total_sent() + fwd.total_received(), fwd.bytes_sent[ag] + fwd.bytes_received[ag]);
      const uint64_t expected = uint64_t(W - 1) * pieces * B * H * d * d * sizeof(float);  // LASP2.md table
      EXPECT_EQ(fwd.bytes_received[ag], expected);
      EXPECT_EQ(fwd.bytes_sent[ag], expected);
      world().reset_stats();
      sp.linear_backward(0, dq.data(), dk.data(), dv.data(), o.data(), q.data(), k.data(), v.data(), nullptr);
      EXPECT_EQ(world().stats().calls[ag], 1u);
      EXPECT_EQ(world().stats().bytes_received[ag], expected);
      bytes_at[twice] = fwd.bytes_received[ag];

      // the softmax layer: one all-gather of K and V, one reduce-scatter; 2 (W-1) C H_kv d floats
      std::vector<float> kk(size_t(B) * Nl * Hkv * d, 0.1f), vv(kk.size(), 0.2f), lse(size_t(B) * H * Nl),
          dkk(kk.size()), dvv(kk.size());
      world().reset_stats();
      sp.softmax_forward(1, o.data(), lse.data(), q.data(), kk.data(), vv.data());
      sp.softmax_backward(1, dq.data(), dkk.data(), dvv.data(), o.data(), o.data(), lse.data(), q.data(), kk.data(),
                          vv.data());
      const CommStats s = world().stats();
      const int rs = int(CommKind::reduce_scatter);
      EXPECT_EQ(s.calls[ag], 1u);
      EXPECT_EQ(s.calls[rs], 1u);
      EXPECT_EQ(s.bytes_received[ag], uint64_t(W - 1) * 2 * B * Nl * Hkv * d * sizeof(float));
      EXPECT_EQ(s.bytes_received[rs], uint64_t(W - 1) * 2 * B * Nl * Hkv * d * sizeof(float));
    }
    EXPECT_EQ(bytes_at[0], bytes_at[1]) << "LASP-2 bytes must not grow with N";
  }
}

// Based (feature_dim 16, d 16): LASP-2's one all-gather each way moves H D' (d + 1) floats per piece, the
// expanded state with the normalizer's column (FEATURE_MAPS.md), not H d^2.
TEST(SpCommunication, ExpandedStatesAreDPrimeByDPlusOne) {
  const int W = world().size(), B = 1, H = 2, d = 16, f = 16, N = 40 * W;
  const int Dp = int(expanded_features(f, ExpandedKind::based));
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
    const int pieces = layout == SpLayout::zigzag ? 2 : 1;
    const int Nl = int(sp_positions(N, W, world().rank(), layout).size());
    Lasp2Attention sp(world(), {B, Nl, H, H, d, Dp, d + 1, 16, kThreads, false, f, ExpandedKind::based}, N, layout, 1);
    auto q = random_values(size_t(B) * Nl * H * f, 1), k = random_values(q.size(), 2),
         v = random_values(size_t(B) * Nl * H * (d + 1), 3);
    std::vector<float> o(v.size()), dq(q.size()), dk(q.size()), dv(v.size());
    world().reset_stats();
    sp.linear_forward(0, o.data(), q.data(), k.data(), v.data(), nullptr);
    const int ag = int(CommKind::all_gather);
    const uint64_t expected = uint64_t(W - 1) * pieces * B * H * Dp * (d + 1) * sizeof(float);
    EXPECT_EQ(world().stats().calls[ag], 1u);
    EXPECT_EQ(world().stats().bytes_received[ag], expected);
    world().reset_stats();
    sp.linear_backward(0, dq.data(), dk.data(), dv.data(), o.data(), q.data(), k.data(), v.data(), nullptr);
    EXPECT_EQ(world().stats().calls[ag], 1u);
    EXPECT_EQ(world().stats().bytes_received[ag], expected);
  }
}

// The scans pass one state per piece in and one out whatever W (exscan: (gate, state) rows, one scan per leg
// of the fold; allscan: the state alone, in K slices), nothing else; and the state after the whole sequence
// (kept for decoding) equals the AllGather's on every rank.
TEST(SpCommunication, ScansPassOneStatePerPieceWhateverW) {
  const int W = world().size(), me = world().rank(), B = 2, H = 4, d = 16, Hkv = 4, slices = 3;
  const uint64_t state = uint64_t(B) * H * d * d * sizeof(float), pair = uint64_t(B) * H * d * (1 + d) * sizeof(float);
  std::vector<float> lambda(H);
  linear_attention_decays(lambda.data(), H, Decay::retention);
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
    const int N = 48 * W;
    const std::vector<int> pos = sp_positions(N, W, me, layout);
    const int Nl = int(pos.size());
    auto q = random_values(size_t(B) * Nl * H * d, 1), k = random_values(q.size(), 2), v = random_values(q.size(), 3);
    for (auto* x : {&q, &k})
      for (float& e : *x) e = 0.5f * (e + 1.1f);
    std::vector<float> o(q.size()), dq(q.size()), dk(q.size()), dv(q.size());
    Lasp2Attention gather(world(), {B, Nl, H, Hkv, d, d, d, 16, kThreads}, N, layout, 1);
    gather.keep_decode_state(true);
    gather.linear_forward(0, o.data(), q.data(), k.data(), v.data(), lambda.data());
    // Pieces whose neighbour in the fold sits on another rank: forward the previous piece, backward the next.
    const std::vector<Piece> mine = sp_pieces(N, W, me, layout);
    const auto owner = sp_piece_owners(N, W, layout);
    int from_before = 0, from_after = 0;
    for (const Piece& p : mine) {
      from_before += p.index > 0 && owner[p.index - 1].first != me;
      from_after += p.index + 1 < int(owner.size()) && owner[p.index + 1].first != me;
    }
    for (StatePassingKind kind : {StatePassingKind::exscan, StatePassingKind::allscan}) {
      const std::string what = std::string(to_string(kind)) + " " + to_string(layout);
      Lasp2Attention sp(world(), {B, Nl, H, Hkv, d, d, d, 16, kThreads}, N, layout, 1, kind, slices);
      sp.keep_decode_state(true);
      for (bool forward : {true, false}) {
        world().reset_stats();
        if (forward) sp.linear_forward(0, o.data(), q.data(), k.data(), v.data(), lambda.data());
        else sp.linear_backward(0, dq.data(), dk.data(), dv.data(), o.data(), q.data(), k.data(), v.data(), lambda.data());
        CommStats st = world().stats();
        if (forward) {  // the final state is shared by one all-reduce, for decoding only: not part of the pass
          const int ar = int(CommKind::all_reduce);
          EXPECT_EQ(st.calls[ar], 1u) << what;
          st.bytes_sent[ar] = st.bytes_received[ar] = 0;
        }
        const int received_from = forward ? from_before : from_after, sent_to = forward ? from_after : from_before;
        if (kind == StatePassingKind::exscan) {  // one scan per leg (the zigzag fold visits the ranks twice)
          const int sc = int(CommKind::scan);
          EXPECT_EQ(st.calls[sc], uint64_t(mine.size())) << what;
          EXPECT_EQ(st.bytes_received[sc], uint64_t(received_from) * pair) << what;
          EXPECT_EQ(st.bytes_sent[sc], uint64_t(sent_to) * pair) << what;
        } else {
          const int sr = int(CommKind::send_recv);
          EXPECT_EQ(st.calls[sr], uint64_t(received_from + sent_to) * slices) << what;
          EXPECT_EQ(st.bytes_received[sr], uint64_t(received_from) * state) << what;
          EXPECT_EQ(st.bytes_sent[sr], uint64_t(sent_to) * state) << what;
        }
        EXPECT_LE(st.total_received(), 2 * pair) << what << ": at most two pieces' pairs, whatever W";
      }
      expect_close(gather.final_state(0), sp.final_state(0), what + " final state");
    }
  }
}

// GLA's gates under the SP methods that do not support them (SpMethod::gla false: ring, allgather): a clear
// error on every rank, before any communication (so no rank waits for another).
TEST(SpGla, MethodsWithoutGlaRefuseItOnEveryRank) {
  const int W = world().size(), B = 1, H = 4, d = 8, N = 16 * W;
  const std::vector<float> x(size_t(B) * (N / W) * H * d, 0.5f), g(x.size(), -0.1f);
  std::vector<float> o(x.size());
  LinearGates gates;
  gates.log_gates = g.data();
  if (W == 1) {  // one rank: every method is the local kernels, which run GLA
    for (const SpMethod& m : sp_methods())
      make_sp_attention(m.name, world(), {B, N, H, H, d, d, d, 16, kThreads}, N, SpLayout::contiguous, 1)
          ->linear_forward(0, o.data(), x.data(), x.data(), x.data(), gates);
    return;
  }
  for (const SpMethod& m : sp_methods()) {
    if (m.heads_over_ranks && H % W) continue;
    if (m.runs(Transition::diagonal)) continue;
    const SpLayout layout = m.layout == LayoutRule::zigzag ? SpLayout::zigzag : SpLayout::contiguous;
    auto attention = make_sp_attention(m.name, world(), {B, N / W, H, H, d, d, d, 16, kThreads}, N, layout, 1);
    EXPECT_THROW(attention->linear_forward(0, o.data(), x.data(), x.data(), x.data(), gates), Error) << m.name;
  }
}

// What a method runs is declared in the registry and checked once, when its attention is made: a shape with GLA's
// gates is refused by the methods without diagonal transitions before anything runs, naming the method, what
// it lacks and the methods that have it; decoding and the layer-major form likewise.
TEST(SpGla, TheRegistryRefusesWhatAMethodLacksBeforeAnythingRuns) {
  const int W = world().size(), H = 4, d = 8, N = 16 * W;
  AttentionShape shape{1, N / W, H, H, d, d, d, 16, kThreads};
  shape.gla = true;
  for (const SpMethod& m : sp_methods()) {
    if (W == 1 || (m.heads_over_ranks && H % W)) continue;
    const SpLayout layout = m.layout == LayoutRule::zigzag ? SpLayout::zigzag : SpLayout::contiguous;
    if (m.runs(Transition::diagonal)) {
      EXPECT_NO_THROW(make_sp_attention(m.name, world(), shape, N, layout, 1)) << m.name;
      continue;
    }
    try {
      make_sp_attention(m.name, world(), shape, N, layout, 1);
      ADD_FAILURE() << m.name << " made a GLA attention";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("--sp-method " + m.name + " has no GLA"), std::string::npos) << what;
      EXPECT_NE(what.find("lasp2, exscan, allscan, lasp1"), std::string::npos) << what;
    }
  }
  EXPECT_THROW(check_sp_method(find_sp_method("ring"), {Transition::scalar, /*decoding=*/true}), Error);
  EXPECT_THROW(check_sp_method(find_sp_method("exscan"), {Transition::scalar, false, false, /*layer_major=*/true}), Error);
  EXPECT_NO_THROW(check_sp_method(find_sp_method("lasp2"), {Transition::diagonal, true, true, true}));
}

// Based and Rebased (expanded features) under every method that declares them, against one process on every
// rank, forward and backward; the others (ring, allgather) refuse before anything runs, naming what they lack.
TEST(SpExpanded, EveryMethodWithExpandedMapsEqualsOneProcess) {
  const int W = world().size(), B = 2, H = 4, f = 3, dv = 6, N = 24 * W;
  for (ExpandedKind kind : {ExpandedKind::based, ExpandedKind::rebased}) {
    const int rows = int(expanded_features(f, kind));
    auto q = random_values(size_t(B) * N * H * f, 11), k = random_values(q.size(), 12),
         v = random_values(size_t(B) * N * H * dv, 13), g = random_values(v.size(), 14);
    for (float& x : v) x = 0.5f * (x + 1.5f);  // the normalizer's column of ones is any positive value here
    LocalAttention local({B, N, H, H, 8, rows, dv, 16, kThreads, false, f, kind});
    std::vector<float> o(v.size()), dq(q.size(), 0.f), dk(k.size(), 0.f), dvs(v.size(), 0.f);
    local.linear_forward(0, o.data(), q.data(), k.data(), v.data(), nullptr);
    local.linear_backward(0, dq.data(), dk.data(), dvs.data(), g.data(), q.data(), k.data(), v.data(), nullptr);
    for (const SpMethod& m : sp_methods()) {
      if (m.heads_over_ranks && H % W) continue;
      const SpLayout layout = m.layout == LayoutRule::zigzag ? SpLayout::zigzag : SpLayout::contiguous;
      const std::vector<int> pos = sp_positions(N, W, world().rank(), layout);
      const AttentionShape shape{B, int(pos.size()), H, H, 8, rows, dv, 16, kThreads, false, f, kind};
      if (!m.expanded_maps && W > 1) {
        try {
          make_sp_attention(m.name, world(), shape, N, layout, 1);
          ADD_FAILURE() << m.name << " made an attention of expanded features";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("--sp-method " + m.name + " has no Based or Rebased"), std::string::npos)
              << e.what();
        }
        continue;
      }
      auto sp = make_sp_attention(m.name, world(), shape, N, layout, 1);
      const auto ql = take_rows(q, B, N, H * f, pos), kl = take_rows(k, B, N, H * f, pos),
                 vl = take_rows(v, B, N, H * dv, pos), gl = take_rows(g, B, N, H * dv, pos);
      std::vector<float> ol(vl.size()), dql(ql.size(), 0.f), dkl(kl.size(), 0.f), dvl(vl.size(), 0.f);
      sp->linear_forward(0, ol.data(), ql.data(), kl.data(), vl.data(), nullptr);
      sp->linear_backward(0, dql.data(), dkl.data(), dvl.data(), gl.data(), ql.data(), kl.data(), vl.data(), nullptr);
      const std::string what = m.name + " " + to_string(kind);
      expect_close(take_rows(o, B, N, H * dv, pos), ol, what + " o");
      expect_close(take_rows(dq, B, N, H * f, pos), dql, what + " dq");
      expect_close(take_rows(dk, B, N, H * f, pos), dkl, what + " dk");
      expect_close(take_rows(dvs, B, N, H * dv, pos), dvl, what + " dv");
    }
  }
}

// The memory plan sees LASP-2's GLA scratch: the shape that says GLA adds at least the per-thread gate products
// and cross terms (five (piece, d) buffers per thread) to memory_floats, for every passing.
TEST(SpGla, MemoryCountsTheGateScratch) {
  const int W = world().size(), B = 1, H = 4, d = 8, N = 40 * W;
  if (W == 1) return;  // one rank runs the local kernels: no pieces, no gate scratch
  for (const char* method : {"lasp2", "exscan", "allscan"}) {
    AttentionShape shape{B, N / W, H, H, d, d, d, 16, kThreads};
    auto counted = [&](const char* layer_types) {
      return make_sp_attention(method, world(), shape, N, SpLayout::contiguous, 2)->memory_floats(layer_types);
    };
    const double fixed = counted("LN"), softmax_only = counted("NN");
    shape.gla = true;
    EXPECT_GE(counted("LN") - fixed, 5.0 * (N / W) * d * kThreads) << method;
    EXPECT_EQ(counted("NN"), softmax_only) << method;  // no linear layer, no gates
  }
}

// GLA's pieces carry their rows' gates: LASP-2's AllGather moves (W-1) pieces of (d^2 + d) H floats per batch
// row (GATES.md), the scans one pair (exscan) or one state (allscan: the receiver knows its own gates) per piece.
TEST(SpCommunication, GlaBytes) {
  const int W = world().size(), me = world().rank(), B = 2, H = 4, d = 8, N = 24 * W;
  const std::vector<int> pos = sp_positions(N, W, me, SpLayout::contiguous);
  const int Nl = int(pos.size());
  auto q = random_values(size_t(B) * Nl * H * d, 1), k = random_values(q.size(), 2), v = random_values(q.size(), 3);
  std::vector<float> g(q.size(), -0.05f), o(q.size());
  LinearGates gates;
  gates.log_gates = g.data();
  const uint64_t pair = uint64_t(B) * H * d * (d + 1) * sizeof(float), state = uint64_t(B) * H * d * d * sizeof(float);
  for (StatePassingKind kind : {StatePassingKind::gather, StatePassingKind::exscan, StatePassingKind::allscan}) {
    Lasp2Attention sp(world(), {B, Nl, H, H, d, d, d, 16, kThreads}, N, SpLayout::contiguous, 1, kind, 3);
    world().reset_stats();
    sp.linear_forward(0, o.data(), q.data(), k.data(), v.data(), gates);
    const CommStats& st = world().stats();
    const std::string what = to_string(kind);
    if (kind == StatePassingKind::gather)
      EXPECT_EQ(st.bytes_received[int(CommKind::all_gather)], uint64_t(W - 1) * pair) << what;
    else if (kind == StatePassingKind::exscan)
      EXPECT_EQ(st.bytes_received[int(CommKind::scan)], me > 0 ? pair : 0) << what;
    else
      EXPECT_EQ(st.bytes_received[int(CommKind::send_recv)], me > 0 ? state : 0) << what;
  }
}

// Recompute (ModelPlan::recompute) runs each layer's forward again in the backward: LASP-2 and its scans reuse the
// incoming states, LASP-2H the keys and values, that this step's forward exchanged, so a step moves exactly the
// bytes of the plan that keeps every activation (issue 24: 294,912 against 196,608 bytes before), and gives
// the same gradients.
TEST(SpCommunication, RecomputeExchangesOncePerLayer) {
  const int W = world().size(), B = 2, N = 48;
  ModelConfig config;
  config.vocab_size = 50, config.hidden_size = 32, config.intermediate_size = 48;
  config.num_attention_heads = 4, config.num_key_value_heads = 2;
  config.layer_types = "LLN", config.num_hidden_layers = 3;
  std::vector<int> inputs(size_t(B) * N), targets(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) inputs[i] = int(i * 7 % 50), targets[i] = int(i * 11 % 50);
  for (Decay decay : {Decay::lightning, Decay::gla})
    for (const char* method : {"lasp2", "exscan", "allscan"}) {
      config.linear.decay = decay;
      config.validate();
      const std::vector<int> pos = sp_positions(N, W, world().rank(), SpLayout::zigzag);
      std::vector<int> in_l, tg_l;
      for (int b = 0; b < B; ++b)
        for (int p : pos) in_l.push_back(inputs[size_t(b) * N + p]), tg_l.push_back(targets[size_t(b) * N + p]);
      uint64_t bytes[2] = {};
      std::vector<float> grads[2];
      for (bool recompute : {false, true}) {
        const AttentionShape shape = attention_shape(config, B, int(pos.size()), 16, kThreads);
        auto attention = make_sp_attention(method, world(), shape, N, SpLayout::zigzag, config.num_hidden_layers);
        ModelPlan plan;
        plan.recompute = recompute;
        Model model(config, B, int(pos.size()), *attention, plan);
        init_weights(model.layout(), model.params(), 5, 0.05f);
        world().reset_stats();
        model.forward(in_l.data(), tg_l.data());
        model.backward(1.f / float(B * N));
        bytes[recompute] = world().stats().total_sent() + world().stats().total_received();
        grads[recompute] = model.grads();
      }
      const std::string what = std::string(method) + " " + to_string(decay);
      EXPECT_EQ(bytes[1], bytes[0]) << what;
      if (W > 1) {
        EXPECT_GT(bytes[0], 0u) << what;
      }
      expect_close(grads[0], grads[1], what + ": gradients");
    }
}

// The transports carry any transition: full d_k x d_k ones (the delta rule's, DELTA.md) with d_k != d_v, as
// pairs (lasp2's AllGather, exscan) or kept at home (allscan, whose slices are value columns): the forward (the
// state entering each piece), the backward (adjoint pairs, transposed, from the last piece down) and the final
// state equal a serial fold in double of every rank's pieces, on both layouts, for every slice count.
TEST(SpStatePassing, FullTransitionsTravelEveryWay) {
  const int W = world().size(), me = world().rank(), B = 2, H = 3, dk = 5, dv = 3;
  const size_t heads = size_t(B) * H, state = heads * dk * dv, matrices = heads * dk * dk;
  auto state_of = [&](int p) { return random_values(state, 100 + p); };
  auto matrix_of = [&](int p) {  // 0.8 I + noise: contractive, as the delta rule's are
    std::vector<float> a = random_values(matrices, 200 + p);
    for (size_t x = 0; x < heads; ++x)
      for (int r = 0; r < dk; ++r)
        for (int c = 0; c < dk; ++c) a[(x * dk + r) * dk + c] = (r == c ? 0.8f : 0.f) + 0.1f * a[(x * dk + r) * dk + c];
    return a;
  };
  for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
    const int N = 8 * W;
    const std::vector<Piece> mine = sp_pieces(N, W, me, layout);
    const auto owner = sp_piece_owners(N, W, layout);
    const int pieces = int(owner.size());
    std::vector<float> own, mats;
    for (const Piece& p : mine) {
      const auto m = state_of(p.index), a = matrix_of(p.index);
      own.insert(own.end(), m.begin(), m.end());
      mats.insert(mats.end(), a.begin(), a.end());
    }
    // The serial fold of pieces [from, to) in order (step +1) or reversed (step -1, transposed), in double.
    auto fold = [&](int first, int last, bool forward) {
      std::vector<double> S(state, 0.0);
      for (int t = 0; t < last - first; ++t) {
        const int p = forward ? first + t : last - 1 - t;
        const auto m = state_of(p), a = matrix_of(p);
        std::vector<double> next(state, 0.0);
        for (size_t x = 0; x < heads; ++x)
          for (int r = 0; r < dk; ++r)
            for (int c = 0; c < dv; ++c) {
              double acc = m[(x * dk + r) * dv + c];
              for (int j = 0; j < dk; ++j)
                acc += double(forward ? a[(x * dk + r) * dk + j] : a[(x * dk + j) * dk + r]) * S[(x * dk + j) * dv + c];
              next[(x * dk + r) * dv + c] = acc;
            }
        S = next;
      }
      return std::vector<float>(S.begin(), S.end());
    };
    for (StatePassingKind kind : {StatePassingKind::gather, StatePassingKind::exscan, StatePassingKind::allscan})
      for (int slices : {1, 2, 3}) {
        if (kind != StatePassingKind::allscan && slices > 1) continue;
        const std::string what = std::string(to_string(kind)) + " " + to_string(layout) + " K " + std::to_string(slices);
        auto passing = make_state_passing(kind, world(), {B, H, dk, dv, mine, owner}, slices);
        PieceGates gates;
        gates.B = B, gates.H = H, gates.dk = dk, gates.piece_len = N / pieces, gates.matrices = mats.data();
        for (bool forward : {true, false}) {
          passing->start(own.data(), gates, forward)->wait();
          std::vector<float> out(mine.size() * state);
          passing->finish(out.data());
          for (size_t i = 0; i < mine.size(); ++i) {
            const int p = mine[i].index;
            const std::vector<float> want = forward ? fold(0, p, true) : fold(p + 1, pieces, false);
            expect_close(want, std::vector<float>(out.begin() + long(i * state), out.begin() + long((i + 1) * state)),
                         what + (forward ? " forward" : " backward") + " piece " + std::to_string(p));
          }
          if (forward) {
            std::vector<float> total(state);
            passing->final_state(total.data());
            expect_close(fold(0, pieces, true), total, what + " final state");
          }
        }
      }
  }
}

// ---- whole models ----
struct ModelCase {
  std::string layer_types;
  Decay decay;
  SpLayout layout;
  int dp;  // dp x sp = world
  std::string method = "lasp2";
  int chunk = 0;  // > 0: the layer-major plan in chunks of this many tokens per row (one SP rank: none)
  bool documents = false;  // kDocStart opens documents, placed on piece boundaries, inside pieces and at both ends
};

class SpModel : public ::testing::TestWithParam<ModelCase> {};
// The document-start token. (Token 0 at position 0 of row 0 makes these weights ill-conditioned enough that
// LASP-2 in chunks of 5 moves some gradients by 1.2e-10 normalized, documents or not.)
constexpr int kDocStart = 3;

TEST_P(SpModel, LogitsLossAndGradientsEqualSingleProcess) {
  const ModelCase c = GetParam();
  const int Wt = world().size();
  if (Wt % c.dp != 0) {  // a world dp cannot divide: the grid refuses it with a clear error
    EXPECT_THROW(make_grid(world(), 1, c.dp), Error);
    return;
  }
  const int sp_size = Wt / c.dp, B = 2, N = 48;
  ASSERT_EQ(N % (c.layout == SpLayout::zigzag ? 2 * sp_size : sp_size), 0) << "N is sized for 1 to 4 ranks";
  ASSERT_EQ(B % c.dp, 0);
  ModelConfig config;
  config.vocab_size = 50;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.layer_types = c.layer_types;
  config.num_hidden_layers = int(c.layer_types.size());
  config.linear.decay = c.decay;
  if (c.decay == Decay::gdn) config.linear.num_v_heads = 8, config.linear.head_v_dim = 6;  // GVA, d_k 8 != d_v
  config.validate();
  const int V = config.vocab_size;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> tok(0, V - 1);
  std::vector<int> inputs(size_t(B) * N), targets(inputs.size());
  for (auto& t : inputs) t = tok(rng);
  for (auto& t : targets) t = tok(rng);
  if (c.documents) {
    // Pieces of 48 tokens over 1-4 ranks, contiguous or zigzag, begin at multiples of 6, 8, 12, 16 or 24.
    for (auto& t : inputs) t = t == kDocStart ? kDocStart + 1 : t;
    for (int p : {0, 8, 12, 17, 24, 30, 47}) inputs[p] = kDocStart;
    for (int p : {6, 16, 23, 36, 41}) inputs[N + p] = kDocStart;
  }

  // single process, all rows
  LocalAttention local(attention_shape(config, B, N, 16, kThreads));
  Model ref(config, B, N, local);
  if (c.documents) ref.set_document_start(kDocStart);
  // Weights at std 0.05: at 0.2 the NLNL model is so ill-conditioned that splitting the batch over two DP
  // ranks without any SP (only the BLAS's blocking changes) already moves its gradients by 1e-9.
  init_weights(ref.layout(), ref.params(), 5, 0.05f);
  const double count = double(B) * N;
  const double ref_loss = ref.forward(inputs.data(), targets.data()) / count;
  ref.backward(float(1.0 / count));

  // dp x sp: DP rank g takes rows [g B/dp, (g+1) B/dp); SP rank its positions
  Grid grid = make_grid(world(), sp_size, c.dp);
  const std::vector<int> pos = sp_positions(N, sp_size, grid.sp_rank, c.layout);
  const int Nl = int(pos.size()), Bl = B / c.dp;
  std::vector<int> in_l, tg_l;
  for (int b = grid.dp_rank * Bl; b < (grid.dp_rank + 1) * Bl; ++b)
    for (int p : pos) in_l.push_back(inputs[size_t(b) * N + p]), tg_l.push_back(targets[size_t(b) * N + p]);
  const AttentionShape shape = attention_shape(config, Bl, Nl, 16, kThreads);  // GLA's scratch sized up front
  // The gated delta rule runs under the methods with full transitions; elsewhere a clear error, on every rank,
  // before anything runs.
  if (c.decay == Decay::gdn && sp_size > 1 && !find_sp_method(c.method).runs(Transition::full)) {
    EXPECT_THROW(make_sp_attention(c.method, *grid.sp, shape, N, c.layout, config.num_hidden_layers), Error);
    return;
  }
  if (c.method == "ulysses" && 4 % sp_size != 0) {  // 4 heads over 3 ranks: a clear error (also in SpUlysses)
    EXPECT_THROW(make_sp_attention(c.method, *grid.sp, shape, N, c.layout, config.num_hidden_layers), Error);
    return;
  }
  ModelPlan plan;
  std::unique_ptr<Attention> attention =
      c.chunk > 0 ? make_layer_major_attention(c.method, *grid.sp, shape, N, c.layout, config.num_hidden_layers, c.chunk)
                  : nullptr;
  // One SP rank has no layer-major form (the chunked plan there is model/chunked_attention.h): the case then
  // checks that and runs whole.
  if (c.chunk > 0) {
    EXPECT_EQ(attention == nullptr, grid.sp_size == 1);
  }
  if (attention) plan.recompute = plan.layer_major = true, plan.chunk = c.chunk;
  else attention = make_sp_attention(c.method, *grid.sp, shape, N, c.layout, config.num_hidden_layers);
  Model model(config, Bl, Nl, *attention, plan);
  if (c.documents) model.set_document_start(kDocStart);
  model.params() = ref.params();
  double loss = model.forward(in_l.data(), tg_l.data());
  const int rows = model.logits_rows();  // in chunks: the last chunk's, until the backward runs chunks again
  const std::vector<float> logits(model.logits(), model.logits() + size_t(Bl) * rows * V);
  model.backward(float(1.0 / count));
  world().all_reduce(&loss, 1);
  world().all_reduce(model.grads().data(), model.grads().size());
  EXPECT_NEAR(loss / count, ref_loss, 1e-6 * ref_loss);

  // logits of this rank's rows and positions (in chunks: of the last chunk)
  std::vector<float> ref_logits;
  for (int b = grid.dp_rank * Bl; b < (grid.dp_rank + 1) * Bl; ++b)
    for (int i = Nl - rows; i < Nl; ++i) {
      const int p = pos[i];
      ref_logits.insert(ref_logits.end(), ref.logits() + (size_t(b) * N + p) * V, ref.logits() + (size_t(b) * N + p + 1) * V);
    }
  expect_close(ref_logits, logits, "logits");
  for (const TensorSpec& t : model.layout().specs())
    expect_close(std::vector<float>(ref.grads().begin() + t.offset, ref.grads().begin() + t.offset + t.size),
                 std::vector<float>(model.grads().begin() + t.offset, model.grads().begin() + t.offset + t.size),
                 "grad." + t.name);
}

std::vector<ModelCase> model_cases() {
  std::vector<ModelCase> cases;
  for (int dp : {1, 2})
    for (SpLayout layout : {SpLayout::contiguous, SpLayout::zigzag}) {
      for (Decay decay : {Decay::none, Decay::lightning, Decay::retention}) cases.push_back({"LLLL", decay, layout, dp});
      cases.push_back({"LLLN", Decay::retention, layout, dp});
      cases.push_back({"NLNL", Decay::lightning, layout, dp});
      // LASP-2 in chunks (layer-major): 5 tokens straddle the zigzag pieces (6, 8 or 12 tokens) and divide none
      // (dp 1 here: memory_plan_test.sh runs them on 2 SP x 2 DP ranks)
      if (dp == 1) {
        for (Decay decay : {Decay::none, Decay::lightning, Decay::retention})
          cases.push_back({"LLLL", decay, layout, dp, "lasp2", 5});
        cases.push_back({"LLLN", Decay::retention, layout, dp, "lasp2", 5});
        cases.push_back({"NLNL", Decay::lightning, layout, dp, "lasp2", 7});
      }
      for (const char* method : {"exscan", "allscan", "lasp1", "ring", "ulysses", "allgather"}) {
        if (dp > 1 && std::string(method).find("scan") != std::string::npos) continue;  // DP does not touch them
        cases.push_back({"LLLL", Decay::lightning, layout, dp, method});
        cases.push_back({"LLLN", Decay::retention, layout, dp, method});
      }
      // documents: under every method (with DP too for lasp2), and in LASP-2's layer-major chunks
      for (const char* method : {"lasp2", "exscan", "allscan", "lasp1", "ring", "ulysses", "allgather"}) {
        if (dp > 1 && std::string(method) != "lasp2") continue;
        cases.push_back({"LLLL", Decay::retention, layout, dp, method, 0, true});
        cases.push_back({"NLNL", Decay::lightning, layout, dp, method, 0, true});
      }
      cases.push_back({"LLLN", Decay::none, layout, dp, "lasp2", 0, true});
      // GLA (GATES.md): the LASP-2 family passes (Gamma, state) pairs, LASP-1 the state, Ulysses the gates; with
      // documents too
      if (dp == 1) {
        for (const char* method : {"lasp2", "exscan", "allscan", "lasp1", "ulysses"}) {
          cases.push_back({"LLLL", Decay::gla, layout, dp, method});
          cases.push_back({"LLLN", Decay::gla, layout, dp, method, 0, true});
        }
        // and in LASP-2's layer-major chunks (A, the gates after a chunk, and the state leaving it)
        cases.push_back({"LLLL", Decay::gla, layout, dp, "lasp2", 5});
        cases.push_back({"NLNL", Decay::gla, layout, dp, "lasp2", 7, true});
        cases.push_back({"LLLN", Decay::gla, layout, dp, "lasp2", 5, true});
      }
      if (dp == 1) {
        cases.push_back({"LLLL", Decay::lightning, layout, dp, "lasp2", 5, true});
        cases.push_back({"LLLN", Decay::retention, layout, dp, "lasp2", 7, true});
      }
      // The gated delta rule (DELTA.md): (A_r, B_r) pairs (the LASP-2 family), the state's chain (LASP-1) or whole
      // heads (Ulysses), and the convolutions' halo (a halo per piece: zigzag's two come from opposite sides), GVA;
      // documents on piece boundaries and inside pieces. The methods without full transitions (ring, allgather)
      // refuse it.
      cases.push_back({"LLLL", Decay::gdn, layout, dp, "lasp2"});
      cases.push_back({"LLLN", Decay::gdn, layout, dp, "lasp2", 0, true});
      // and in LASP-2's layer-major chunks: pairs folded chunk by chunk, the later pieces' share in reverse, the
      // halos from the chunk before or the piece before (chunks of 5 or 7 hold 1-token runs, shorter than K-1)
      if (dp == 1) {
        cases.push_back({"LLLL", Decay::gdn, layout, dp, "lasp2", 5});
        cases.push_back({"LLLN", Decay::gdn, layout, dp, "lasp2", 5, true});
        cases.push_back({"NLNL", Decay::gdn, layout, dp, "lasp2", 7, true});
      }
      if (dp == 1)
        for (const char* method : {"exscan", "allscan", "lasp1", "ulysses", "ring", "allgather"}) {
          cases.push_back({"LLLL", Decay::gdn, layout, dp, method, 0, true});
          cases.push_back({"NLNL", Decay::gdn, layout, dp, method});
        }
    }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, SpModel, ::testing::ValuesIn(model_cases()), [](const auto& info) {
  const ModelCase& c = info.param;
  return c.method + (c.chunk ? "_chunk" + std::to_string(c.chunk) : "") + (c.documents ? "_docs" : "") + "_" + c.layer_types + "_" + to_string(c.decay) + "_" + to_string(c.layout) + "_dp" +
         std::to_string(c.dp);
});

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  comm_world();
  int failed = RUN_ALL_TESTS() != 0;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return failed;
}
