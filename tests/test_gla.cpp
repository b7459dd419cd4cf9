// The GLA kernel (kernels/gla.h) against the naive recurrence in double precision, whose own gradients are
// checked against finite differences: forward, every gradient (the log-gates' too), with and without incoming
// state and outgoing-state gradient, awkward sizes, gates from ~1 (g ~ 0) to ~0 (forgetting at once).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/gla.h"
#include "model/attention.h"
#include "testing.h"

namespace lasp {
namespace {

using Vec = std::vector<double>;

struct Problem {
  int B, N, H, dk, dv;       // key width (q, k, g), value width (v, o)
  Vec q, k, v, g, state_in;  // state_in empty: none
  std::vector<uint8_t> starts;  // (B, N) document starts, or empty: none
  bool start(int b, int t) const { return !starts.empty() && starts[size_t(b) * N + t]; }
};

struct Result {
  Vec o, state_out, dq, dk, dv, dg, dstate_in;
};

// The recurrence S_t = diag(f_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t with f_t = exp(g_t), or 0 at a document
// start (which then depends on no gate), and its reverse-mode gradients given dO and the gradient of the final
// state (empty: none).
Result reference(const Problem& p, const Vec& dout, const Vec& dstate_out) {
  const int B = p.B, N = p.N, H = p.H, dk = p.dk, dv = p.dv;
  const size_t dd = size_t(dk) * dv;
  Result r;
  r.o.assign(size_t(B) * N * H * dv, 0.0);
  r.dv = r.o;
  r.dq.assign(size_t(B) * N * H * dk, 0.0);
  r.dk = r.dg = r.dq;
  r.state_out.assign(size_t(B) * H * dd, 0.0);
  r.dstate_in = r.state_out;
  // Token t's first key element (x) and first value element (y).
  auto at = [&](int b, int t, int h) { return ((size_t(b) * N + t) * H + h) * dk; };
  auto vat = [&](int b, int t, int h) { return ((size_t(b) * N + t) * H + h) * dv; };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t sh = (size_t(b) * H + h) * dd;
      std::vector<Vec> S(N + 1, Vec(dd, 0.0));  // S[t + 1] = S_t; S[0] = the incoming state
      if (!p.state_in.empty()) S[0].assign(p.state_in.begin() + sh, p.state_in.begin() + sh + dd);
      auto f = [&](int t, size_t x) { return p.start(b, t) ? 0.0 : std::exp(p.g[x]); };
      for (int t = 0; t < N; ++t) {
        const size_t x = at(b, t, h), y = vat(b, t, h);
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j)
            S[t + 1][i * dv + j] = f(t, x + i) * S[t][i * dv + j] + p.k[x + i] * p.v[y + j];
        for (int j = 0; j < dv; ++j)
          for (int i = 0; i < dk; ++i) r.o[y + j] += p.q[x + i] * S[t + 1][i * dv + j];
      }
      std::copy(S[N].begin(), S[N].end(), r.state_out.begin() + sh);
      Vec dS(dd, 0.0);
      if (!dstate_out.empty()) dS.assign(dstate_out.begin() + sh, dstate_out.begin() + sh + dd);
      for (int t = N - 1; t >= 0; --t) {
        const size_t x = at(b, t, h), y = vat(b, t, h);
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j) dS[i * dv + j] += p.q[x + i] * dout[y + j];
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j) {
            r.dq[x + i] += S[t + 1][i * dv + j] * dout[y + j];
            r.dk[x + i] += dS[i * dv + j] * p.v[y + j];
            r.dv[y + j] += p.k[x + i] * dS[i * dv + j];
            r.dg[x + i] += f(t, x + i) * S[t][i * dv + j] * dS[i * dv + j];
          }
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j) dS[i * dv + j] *= f(t, x + i);
      }
      std::copy(dS.begin(), dS.end(), r.dstate_in.begin() + sh);
    }
  return r;
}

// Normalized error, or where the reference is exactly zero (a gate gradient with nothing before it) the
// largest value found, which must then be rounding.
void expect_close(const Vec& ref, const std::vector<float>& got, double tolerance, const std::string& what) {
  double den = 0, largest = 0;
  for (size_t i = 0; i < ref.size(); ++i) den += ref[i] * ref[i], largest = std::max(largest, double(std::fabs(got[i])));
  if (den == 0) EXPECT_LE(largest, 1e-6) << what;
  else EXPECT_LE(testing::normalized_error(ref, got), tolerance) << what;
}

Vec doubles(const std::vector<float>& x) { return Vec(x.begin(), x.end()); }
std::vector<float> floats(const Vec& x) { return std::vector<float>(x.begin(), x.end()); }

// Log-gates of one strength: g = -strength * u, u uniform in (0.05, 1]; strength < 0: a mix over many
// orders of magnitude per element (as logsigmoid(x) / 16 gives), from ~0 to forgetting at once.
Vec log_gates(size_t n, double strength, uint32_t seed) {
  const std::vector<float> u = testing::random_vector(n, seed, 0.05f, 1.f);
  Vec g(n);
  for (size_t i = 0; i < n; ++i) g[i] = strength >= 0 ? -strength * u[i] : -std::pow(10.0, 8.0 * u[i] - 5.0);
  return g;
}

// dv 0: values as wide as keys.
Problem make_problem(int B, int N, int H, int dk, double strength, bool with_state, uint32_t seed, int dv = 0) {
  dv = dv ? dv : dk;
  const size_t n = size_t(B) * N * H * dk;
  Problem p{B, N, H, dk, dv, {}, {}, {}, {}, {}, {}};
  p.q = doubles(testing::random_vector(n, seed, 0.f, 1.f));  // non-negative, as a feature map gives
  p.k = doubles(testing::random_vector(n, seed + 1, 0.f, 1.f));
  p.v = doubles(testing::random_vector(size_t(B) * N * H * dv, seed + 2));
  p.g = log_gates(n, strength, seed + 3);
  if (with_state) p.state_in = doubles(testing::random_vector(size_t(B) * H * dk * dv, seed + 4));
  for (Vec* x : {&p.q, &p.k, &p.v, &p.g, &p.state_in})  // the values the float kernel sees
    for (double& e : *x) e = double(float(e));
  return p;
}

TEST(GlaReference, GradientsMatchFiniteDifferences) {
  for (int dv : {3, 2})
  for (bool with_state : {false, true}) {
    Problem p = make_problem(1, 6, 2, 3, -1, with_state, 7, dv);
    if (with_state) p.starts = {0, 0, 1, 0, 0, 1};  // documents: the gradients stop at their starts
    const size_t n = p.v.size(), states = size_t(p.B) * p.H * p.dk * p.dv;
    const Vec w_o = doubles(testing::random_vector(n, 20)), w_s = doubles(testing::random_vector(states, 21));
    // loss = sum(o .* w_o) + sum(S_last .* w_s): dO = w_o, dstate_out = w_s
    auto loss = [&](const Problem& x) {
      const Result r = reference(x, w_o, w_s);
      double l = 0;
      for (size_t i = 0; i < n; ++i) l += r.o[i] * w_o[i];
      for (size_t i = 0; i < states; ++i) l += r.state_out[i] * w_s[i];
      return l;
    };
    const Result r = reference(p, w_o, w_s);
    const std::pair<Vec Problem::*, const Vec*> inputs[] = {
        {&Problem::q, &r.dq}, {&Problem::k, &r.dk}, {&Problem::v, &r.dv}, {&Problem::g, &r.dg}};
    for (const auto& [member, grad] : inputs)
      EXPECT_LE(testing::normalized_error(testing::member_finite_difference(loss, p, member), *grad), 1e-14);
    if (with_state) {
      const Vec fd = testing::finite_difference(
          [&](const Vec& x) {
            Problem moved = p;
            moved.state_in = x;
            return loss(moved);
          },
          p.state_in);
      EXPECT_LE(testing::normalized_error(fd, r.dstate_in), 1e-14);
    }
  }
}

struct GlaCase {
  int B, N, H, dk, block;
  double strength;  // < 0: mixed
  int value_width = 0;  // dv; 0: dk
};

class GlaKernel : public ::testing::TestWithParam<GlaCase> {};

// Documents: starts at the first token, on block edges, inside blocks and at the last token of row 0; row 1
// (when there is one) has one inside.
std::vector<uint8_t> document_starts(int B, int N, int block) {
  std::vector<uint8_t> starts(size_t(B) * N, 0);
  for (int t : {0, block, block + 3, 2 * block - 1, N / 2, N - 1})
    if (t < N) starts[t] = 1;
  if (B > 1) starts[N + N / 3] = 1;
  return starts;
}

TEST_P(GlaKernel, MatchesDoubleRecurrence) {
  const GlaCase c = GetParam();
  for (bool documents : {false, true})
  for (bool with_state : {false, true})
    for (bool with_dstate : {false, true}) {
      Problem p = make_problem(c.B, c.N, c.H, c.dk, c.strength, with_state, 3, c.value_width);
      if (documents) p.starts = document_starts(c.B, c.N, c.block);
      const uint8_t* starts = documents ? p.starts.data() : nullptr;
      const size_t n = p.q.size(), nv = p.v.size(), states = size_t(c.B) * c.H * p.dk * p.dv;
      const Vec dout = doubles(testing::random_vector(nv, 11));
      const Vec dstate = with_dstate ? doubles(testing::random_vector(states, 12)) : Vec{};
      const Result ref = reference(p, dout, dstate);

      const LinearAttentionShape s{c.B, c.N, c.H, p.dk, p.dv, c.block, 2};
      const auto q = floats(p.q), k = floats(p.k), v = floats(p.v), g = floats(p.g), sin = floats(p.state_in),
                 dof = floats(dout), dsf = floats(dstate);
      std::vector<float> o(nv), sout(states);
      WorkspaceBuffer wf(gla_forward_workspace_floats(s)), wb(gla_backward_workspace_floats(s));
      gla_forward(o.data(), sout.data(), q.data(), k.data(), v.data(), g.data(), with_state ? sin.data() : nullptr,
                  starts, s, wf.view());
      // dq, dk, dv, dstate_in accumulate onto what they hold (a second call doubles them); dg is written over
      std::vector<float> dq(n, 0.f), dk(n, 0.f), dv(nv, 0.f), dg(n, 1e9f), dsin(states, 0.f);
      auto backward = [&] {
        gla_backward(dq.data(), dk.data(), dv.data(), dg.data(), dsin.data(), dof.data(),
                     with_dstate ? dsf.data() : nullptr, q.data(), k.data(), v.data(), g.data(),
                     with_state ? sin.data() : nullptr, starts, s, wb.view());
      };
      backward();
      const std::string what = "documents " + std::to_string(documents) + " state " + std::to_string(with_state) +
                               " dstate " + std::to_string(with_dstate);
      expect_close(ref.o, o, 1e-10, what + " o");
      expect_close(ref.state_out, sout, 1e-10, what + " state_out");
      expect_close(ref.dq, dq, 1e-10, what + " dq");
      expect_close(ref.dk, dk, 1e-10, what + " dk");
      expect_close(ref.dv, dv, 1e-10, what + " dv");
      expect_close(ref.dstate_in, dsin, 1e-10, what + " dstate_in");
      // The gate gradient is summed from q dq - k dk (gla.h), so its rounding is that of those terms: where the
      // gates forget (exp(g) ~ 0) its true value is tiny and the error is measured against their scale.
      double scale = 0, err = 0;
      for (size_t i = 0; i < n; ++i) {
        const double qdq = p.q[i] * ref.dq[i], kdk = p.k[i] * ref.dk[i];
        scale += ref.dg[i] * ref.dg[i] + qdq * qdq + kdk * kdk;
        err += (ref.dg[i] - dg[i]) * (ref.dg[i] - dg[i]);
      }
      EXPECT_LE(err, 1e-10 * scale) << what << " dg";
      const auto once = std::vector<std::vector<float>>{dq, dk, dv, dsin};
      backward();
      const auto twice = std::vector<std::vector<float>>{dq, dk, dv, dsin};
      for (size_t x = 0; x < once.size(); ++x) {
        std::vector<float> doubled(once[x]);
        for (float& e : doubled) e *= 2;
        EXPECT_LE(testing::normalized_error(doubled, twice[x]), 1e-12) << what << " accumulates";
      }
    }
}

std::vector<GlaCase> gla_cases() {
  std::vector<GlaCase> cases;
  for (double strength : {1e-4, 0.1, 1.0, 60.0, -1.0}) {
    cases.push_back({1, 1, 1, 8, 16, strength});
    cases.push_back({2, 17, 3, 16, 16, strength});
    cases.push_back({1, 50, 2, 13, 7, strength});
    cases.push_back({1, 100, 2, 64, 16, strength});
    cases.push_back({2, 33, 1, 32, 32, strength});
    cases.push_back({1, 25, 4, 8, 16, strength});
    // the vector paths' other widths: 3 vectors of 8 (AVX2; AVX-512 takes the generic path), and the widest
    cases.push_back({1, 21, 1, 24, 16, strength});
    cases.push_back({1, 18, 1, 128, 16, strength});
    // keys and values of different widths, on the fast pairs (dk a multiple of the lanes) and the generic ones
    cases.push_back({2, 40, 2, 16, 16, strength, 5});
    cases.push_back({1, 40, 2, 13, 16, strength, 32});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Sizes, GlaKernel, ::testing::ValuesIn(gla_cases()), [](const auto& info) {
  const GlaCase& c = info.param;
  const std::string strength = c.strength < 0 ? "mixed" : c.strength < 1e-3 ? "weak" : c.strength < 1 ? "mild"
                               : c.strength < 10 ? "strong" : "forgetting";
  return "B" + std::to_string(c.B) + "_N" + std::to_string(c.N) + "_H" + std::to_string(c.H) + "_dk" +
         std::to_string(c.dk) + (c.value_width ? "_dv" + std::to_string(c.value_width) : "") + "_blk" + std::to_string(c.block) + "_" + strength;
});

}  // namespace
}  // namespace lasp

namespace lasp {
namespace {

// The single-process attention runs GLA through the kernel (kGlaBlock), with its documents, keeps the final
// state for decoding and writes the gates' gradient.
TEST(GlaAttention, LocalAttentionRunsTheKernel) {
  const int B = 2, N = 37, H = 3, d = 16;
  const Problem p = make_problem(B, N, H, d, -1, false, 5);
  const size_t n = p.q.size();
  const auto q = floats(p.q), k = floats(p.k), v = floats(p.v), g = floats(p.g);
  const auto dout = testing::random_vector(n, 9);
  const LinearAttentionShape s{B, N, H, d, d, kGlaBlock, 2};
  std::vector<float> o(n), state(size_t(B) * H * d * d), dq(n), dk(n), dv(n), dg(n);
  WorkspaceBuffer wf(gla_forward_workspace_floats(s)), wb(gla_backward_workspace_floats(s));
  std::vector<uint8_t> starts(size_t(B) * N, 0);
  starts[5] = starts[N + 20] = 1;
  gla_forward(o.data(), state.data(), q.data(), k.data(), v.data(), g.data(), nullptr, starts.data(), s, wf.view());
  gla_backward(dq.data(), dk.data(), dv.data(), dg.data(), nullptr, dout.data(), nullptr, q.data(), k.data(), v.data(),
               g.data(), nullptr, starts.data(), s, wb.view());

  LocalAttention local({B, N, H, H, d, d, d, 32, 2});
  local.keep_decode_state(true);
  local.set_documents(starts.data());
  LinearGates gates;
  gates.log_gates = g.data();
  std::vector<float> o2(n), dq2(n), dk2(n), dv2(n), dg2(n, 7.f);
  gates.d_log_gates = dg2.data();
  local.linear_forward(0, o2.data(), q.data(), k.data(), v.data(), gates);
  local.linear_backward(0, dq2.data(), dk2.data(), dv2.data(), dout.data(), q.data(), k.data(), v.data(), gates);
  EXPECT_EQ(o, o2);
  EXPECT_EQ(state, local.final_state(0));
  EXPECT_EQ(dq, dq2);
  EXPECT_EQ(dk, dk2);
  EXPECT_EQ(dv, dv2);
  EXPECT_EQ(dg, dg2);
}

}  // namespace
}  // namespace lasp
