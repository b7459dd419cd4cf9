// The gated delta rule kernel (kernels/delta_rule.h) against the token-by-token recurrence in double precision
// (DELTA.md "Forward, per token"), whose hand-written adjoint is checked against finite differences: forward, every
// gradient, the span's transition and its adjoint, the sequence-parallel summaries (A, B, dP^own), awkward sizes,
// GVA, documents, bad shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/delta_rule.h"
#include "testing.h"

namespace lasp {
namespace {

using Vec = std::vector<double>;

Vec doubles(const std::vector<float>& x) { return Vec(x.begin(), x.end()); }
std::vector<float> floats(const Vec& x) { return std::vector<float>(x.begin(), x.end()); }

struct Problem {
  int B, N, H, HV, dk, dv;
  Vec q, k, v, beta, g, state_in;  // state_in empty: none
  std::vector<uint8_t> starts;     // (B, N), or empty: none
  bool start(int b, int t) const { return !starts.empty() && starts[size_t(b) * N + t]; }
  size_t key(int b, int t, int hv) const { return ((size_t(b) * N + t) * H + hv / (HV / H)) * dk; }
  size_t value(int b, int t, int hv) const { return ((size_t(b) * N + t) * HV + hv) * dv; }
  size_t gate(int b, int t, int hv) const { return (size_t(b) * N + t) * HV + hv; }
  size_t states() const { return size_t(B) * HV * dk * dv; }
};

struct Result {
  Vec o, state_out, dq, dk, dv, dbeta, dg, dstate_in;
};

// S' = alpha S (alpha = exp(g), 0 at a start), S_t = S' + beta k (v - S'^T k)^T, o_t = S_t^T q, and the reverse-mode
// gradients of <dout, o> + <dstate_out, S_N> (dstate_out empty: none).
Result reference(const Problem& p, const Vec& dout, const Vec& dstate_out) {
  const int dk = p.dk, dv = p.dv;
  const size_t dd = size_t(dk) * dv;
  Result r;
  r.o.assign(p.v.size(), 0.0), r.dv = r.o;
  r.dq.assign(p.q.size(), 0.0), r.dk = r.dq;
  r.dbeta.assign(p.beta.size(), 0.0), r.dg = r.dbeta;
  r.state_out.assign(p.states(), 0.0), r.dstate_in = r.state_out;
  for (int b = 0; b < p.B; ++b)
    for (int hv = 0; hv < p.HV; ++hv) {
      const size_t sh = (size_t(b) * p.HV + hv) * dd;
      auto alpha = [&](int t) { return p.start(b, t) ? 0.0 : std::exp(p.g[p.gate(b, t, hv)]); };
      std::vector<Vec> S(p.N + 1, Vec(dd, 0.0));  // S[t + 1] = S_t, S[0] the incoming state
      if (!p.state_in.empty()) S[0].assign(p.state_in.begin() + sh, p.state_in.begin() + sh + dd);
      for (int t = 0; t < p.N; ++t) {
        const double* k = &p.k[p.key(b, t, hv)];
        const double *q = &p.q[p.key(b, t, hv)], *v = &p.v[p.value(b, t, hv)], beta = p.beta[p.gate(b, t, hv)];
        const double a = alpha(t);
        for (int j = 0; j < dv; ++j) {
          double u = 0;  // (S'^T k)_j
          for (int i = 0; i < dk; ++i) u += a * S[t][i * dv + j] * k[i];
          for (int i = 0; i < dk; ++i) S[t + 1][i * dv + j] = a * S[t][i * dv + j] + beta * k[i] * (v[j] - u);
        }
        for (int j = 0; j < dv; ++j)
          for (int i = 0; i < dk; ++i) r.o[p.value(b, t, hv) + j] += S[t + 1][i * dv + j] * q[i];
      }
      std::copy(S[p.N].begin(), S[p.N].end(), r.state_out.begin() + sh);
      Vec dS(dd, 0.0), dSp(dd), u(dv), du(dv);
      if (!dstate_out.empty()) dS.assign(dstate_out.begin() + sh, dstate_out.begin() + sh + dd);
      for (int t = p.N - 1; t >= 0; --t) {
        const size_t x = p.key(b, t, hv), y = p.value(b, t, hv), z = p.gate(b, t, hv);
        const double *q = &p.q[x], *k = &p.k[x], *v = &p.v[y], *dO = &dout[y], beta = p.beta[z];
        const double a = alpha(t);
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j) {
            dS[i * dv + j] += q[i] * dO[j];
            r.dq[x + i] += S[t + 1][i * dv + j] * dO[j];
          }
        for (int j = 0; j < dv; ++j) {
          u[j] = 0;
          for (int i = 0; i < dk; ++i) u[j] += a * S[t][i * dv + j] * k[i];
        }
        // S_t = S' + beta k e^T, e = v - u, u = S'^T k
        for (int j = 0; j < dv; ++j) {
          double de = 0;
          for (int i = 0; i < dk; ++i) de += beta * dS[i * dv + j] * k[i];
          r.dv[y + j] += de, du[j] = -de;
        }
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j) {
            const double e = v[j] - u[j];
            r.dbeta[z] += k[i] * dS[i * dv + j] * e;
            r.dk[x + i] += beta * dS[i * dv + j] * e + a * S[t][i * dv + j] * du[j];
            dSp[i * dv + j] = dS[i * dv + j] + k[i] * du[j];
          }
        double da = 0;
        for (size_t e = 0; e < dd; ++e) da += S[t][e] * dSp[e], dS[e] = a * dSp[e];
        r.dg[z] += a * da;  // 0 at a start
      }
      std::copy(dS.begin(), dS.end(), r.dstate_in.begin() + sh);
    }
  return r;
}

// A (B, HV, dk, dk) = M_{N-1} ... M_0, M_t = alpha_t (I - beta_t k_t k_t^T).
Vec reference_transition(const Problem& p) {
  const int dk = p.dk;
  Vec A(size_t(p.B) * p.HV * dk * dk);
  for (int b = 0; b < p.B; ++b)
    for (int hv = 0; hv < p.HV; ++hv) {
      double* X = &A[(size_t(b) * p.HV + hv) * dk * dk];
      for (int i = 0; i < dk; ++i)
        for (int j = 0; j < dk; ++j) X[i * dk + j] = i == j;
      for (int t = 0; t < p.N; ++t) {
        const double* k = &p.k[p.key(b, t, hv)];
        const double a = p.start(b, t) ? 0.0 : std::exp(p.g[p.gate(b, t, hv)]), beta = p.beta[p.gate(b, t, hv)];
        for (int j = 0; j < dk; ++j) {
          double kx = 0;
          for (int i = 0; i < dk; ++i) kx += k[i] * X[i * dk + j];
          for (int i = 0; i < dk; ++i) X[i * dk + j] = a * (X[i * dk + j] - beta * k[i] * kx);
        }
      }
    }
  return A;
}

// Rows of `width` scaled to unit norm (the layer's l2 norm), then by `scale`.
void normalize_rows(Vec& x, int width, double scale) {
  for (size_t r = 0; r < x.size(); r += width) {
    double n = 0;
    for (int i = 0; i < width; ++i) n += x[r + i] * x[r + i];
    for (int i = 0; i < width; ++i) x[r + i] *= scale / std::sqrt(n);
  }
}

// q and k l2-normalized (q also by 1 / sqrt(dk)), beta in (0.05, 0.95), g = -strength u with u in (0.05, 1].
Problem make_problem(int B, int N, int H, int HV, int dk, int dv, double strength, bool with_state, uint32_t seed) {
  Problem p{B, N, H, HV, dk, dv, {}, {}, {}, {}, {}, {}, {}};
  const size_t keys = size_t(B) * N * H * dk, gates = size_t(B) * N * HV;
  p.q = doubles(testing::random_vector(keys, seed));
  p.k = doubles(testing::random_vector(keys, seed + 1));
  normalize_rows(p.q, dk, 1 / std::sqrt(double(dk)));
  normalize_rows(p.k, dk, 1);
  p.v = doubles(testing::random_vector(size_t(B) * N * HV * dv, seed + 2));
  p.beta = doubles(testing::random_vector(gates, seed + 3, 0.05f, 0.95f));
  p.g = doubles(testing::random_vector(gates, seed + 4, 0.05f, 1.f));
  for (double& x : p.g) x *= -strength;
  if (with_state) p.state_in = doubles(testing::random_vector(p.states(), seed + 5));
  for (Vec* x : {&p.q, &p.k, &p.v, &p.beta, &p.g, &p.state_in})  // the values the float kernel sees
    for (double& e : *x) e = double(float(e));
  return p;
}

// Documents: row 0 starts at token 0, at both edges of the second block, inside it, twice in a row and at the last
// token; row 1 twice in a row inside.
std::vector<uint8_t> document_starts(int B, int N, int block) {
  std::vector<uint8_t> starts(size_t(B) * N, 0);
  for (int t : {0, block - 1, block, block + 2, block + 3, N / 2, N - 1})
    if (t < N) starts[t] = 1;
  if (B > 1)
    for (int t : {N / 3, N / 3 + 1})
      if (t < N) starts[N + t] = 1;
  return starts;
}

TEST(DeltaRuleReference, GradientsMatchFiniteDifferences) {
  for (bool documents : {false, true}) {
    Problem p = make_problem(2, 7, 1, 2, 3, 2, 0.7, true, 5);  // two value heads read one q/k head
    if (documents) p.starts = document_starts(2, 7, 3);
    const Vec dout = doubles(testing::random_vector(p.v.size(), 20));
    const Vec dstate = doubles(testing::random_vector(p.states(), 21));
    auto loss = [&](const Problem& x) {
      const Result r = reference(x, dout, dstate);
      double l = 0;
      for (size_t i = 0; i < r.o.size(); ++i) l += r.o[i] * dout[i];
      for (size_t i = 0; i < r.state_out.size(); ++i) l += r.state_out[i] * dstate[i];
      return l;
    };
    const Result r = reference(p, dout, dstate);
    const std::pair<Vec Problem::*, const Vec*> inputs[] = {{&Problem::q, &r.dq},       {&Problem::k, &r.dk},
                                                            {&Problem::v, &r.dv},       {&Problem::beta, &r.dbeta},
                                                            {&Problem::g, &r.dg},       {&Problem::state_in, &r.dstate_in}};
    for (const auto& [member, grad] : inputs)
      EXPECT_LE(testing::normalized_error(testing::member_finite_difference(loss, p, member), *grad), 1e-14)
          << "documents " << documents;
  }
}

void expect_close(const Vec& ref, const std::vector<float>& got, double tolerance, const std::string& what) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  double den = 0, largest = 0;
  for (size_t i = 0; i < ref.size(); ++i) den += ref[i] * ref[i], largest = std::max(largest, double(std::fabs(got[i])));
  if (den == 0) EXPECT_LE(largest, 1e-6) << what;
  else EXPECT_LE(testing::normalized_error(ref, got), tolerance) << what;
}

struct DeltaCase {
  int B, N, H, HV, dk, dv, block;
  double strength;  // g = -strength u, u in (0.05, 1]
};

class DeltaRuleKernel : public ::testing::TestWithParam<DeltaCase> {};

TEST_P(DeltaRuleKernel, MatchesDoubleRecurrence) {
  const DeltaCase c = GetParam();
  for (bool documents : {false, true})
    for (bool with_state : {false, true})
      for (bool with_dstate : {false, true}) {
        Problem p = make_problem(c.B, c.N, c.H, c.HV, c.dk, c.dv, c.strength, with_state, 3);
        if (documents) p.starts = document_starts(c.B, c.N, c.block);
        const uint8_t* starts = documents ? p.starts.data() : nullptr;
        const Vec dout = doubles(testing::random_vector(p.v.size(), 11));
        const Vec dstate = with_dstate ? doubles(testing::random_vector(p.states(), 12)) : Vec{};
        const Result ref = reference(p, dout, dstate);

        const DeltaRuleShape s{c.B, c.N, c.H, c.HV, c.dk, c.dv, c.block, 2};
        const auto q = floats(p.q), k = floats(p.k), v = floats(p.v), beta = floats(p.beta), g = floats(p.g),
                   sin = floats(p.state_in), dof = floats(dout), dsf = floats(dstate);
        const float* state_in = with_state ? sin.data() : nullptr;
        std::vector<float> o(p.v.size()), sout(p.states());
        WorkspaceBuffer wf(delta_rule_forward_workspace_floats(s)), wb(delta_rule_backward_workspace_floats(s));
        delta_rule_forward(o.data(), sout.data(), q.data(), k.data(), v.data(), beta.data(), g.data(), state_in,
                           starts, s, wf.view());
        std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f), dbeta(beta.size(), 0.f),
            dg(g.size(), 0.f), dsin(p.states(), 0.f);
        auto backward = [&] {
          delta_rule_backward(dq.data(), dk.data(), dv.data(), dbeta.data(), dg.data(), dsin.data(), dof.data(),
                              with_dstate ? dsf.data() : nullptr, q.data(), k.data(), v.data(), beta.data(), g.data(),
                              state_in, starts, s, wb.view());
        };
        backward();
        const std::string what = "documents " + std::to_string(documents) + " state " + std::to_string(with_state) +
                                 " dstate " + std::to_string(with_dstate);
        expect_close(ref.o, o, testing::kFp32Tolerance, what + " o");
        expect_close(ref.state_out, sout, testing::kFp32Tolerance, what + " state_out");
        expect_close(ref.dq, dq, testing::kFp32Tolerance, what + " dq");
        expect_close(ref.dk, dk, testing::kFp32Tolerance, what + " dk");
        expect_close(ref.dv, dv, testing::kFp32Tolerance, what + " dv");
        expect_close(ref.dbeta, dbeta, testing::kFp32Tolerance, what + " dbeta");
        expect_close(ref.dg, dg, testing::kFp32Tolerance, what + " dg");
        expect_close(ref.dstate_in, dsin, testing::kFp32Tolerance, what + " dstate_in");
        for (size_t i = 0; i < p.starts.size(); ++i)
          for (int hv = 0; hv < c.HV; ++hv)
            if (p.starts[i]) {
              EXPECT_EQ(dg[i * c.HV + hv], 0.f) << what << " a start's dg, token " << i;
            }
        const std::vector<std::vector<float>> once{dq, dk, dv, dbeta, dg, dsin};
        backward();
        const std::vector<std::vector<float>> twice{dq, dk, dv, dbeta, dg, dsin};
        for (size_t x = 0; x < once.size(); ++x) {
          std::vector<float> doubled(once[x]);
          for (float& e : doubled) e *= 2;
          EXPECT_LE(testing::normalized_error(doubled, twice[x]), 1e-12) << what << " accumulates, gradient " << x;
        }
      }
}

std::vector<DeltaCase> delta_cases() {
  return {
      {2, 1, 1, 2, 5, 3, 64, 0.5},   {2, 3, 2, 2, 8, 16, 4, 0.5},  {1, 7, 1, 2, 5, 3, 4, 0.05},
      {2, 64, 2, 4, 8, 16, 64, 0.1}, {1, 65, 1, 1, 16, 16, 64, 1}, {2, 130, 1, 2, 5, 3, 16, 0.3},
      {1, 130, 2, 2, 16, 8, 64, 0.02}, {2, 65, 1, 2, 32, 32, 16, 3}, {1, 130, 1, 1, 64, 64, 64, 0.1},
      {1, 130, 1, 1, 64, 64, 64, 8},
  };
}

INSTANTIATE_TEST_SUITE_P(DeltaRule, DeltaRuleKernel, ::testing::ValuesIn(delta_cases()), [](const auto& info) {
  const DeltaCase& c = info.param;
  return "B" + std::to_string(c.B) + "_N" + std::to_string(c.N) + "_H" + std::to_string(c.H) + "_HV" +
         std::to_string(c.HV) + "_dk" + std::to_string(c.dk) + "_dv" + std::to_string(c.dv) + "_blk" +
         std::to_string(c.block) + "_g" + std::to_string(int(c.strength * 100));
});

// Row 0 without a start, row 1 with one inside: the transition of row 1 is 0, its state_out only what follows.
TEST(DeltaRuleSummaries, TransitionAndOwnStateComposeToTheForward) {
  const DeltaCase cases[] = {{2, 1, 1, 2, 5, 3, 64, 0.5}, {2, 7, 1, 2, 5, 3, 4, 0.3}, {2, 65, 2, 4, 16, 8, 16, 0.1},
                             {2, 130, 1, 2, 8, 16, 64, 0.05}, {2, 130, 1, 1, 64, 64, 64, 0.02}};
  for (const DeltaCase& c : cases) {
    Problem p = make_problem(c.B, c.N, c.H, c.HV, c.dk, c.dv, c.strength, true, 9);
    p.starts.assign(size_t(c.B) * c.N, 0);
    p.starts[c.N + c.N / 2] = 1;
    const std::string what = "N " + std::to_string(c.N) + " dk " + std::to_string(c.dk);
    const DeltaRuleShape s{c.B, c.N, c.H, c.HV, c.dk, c.dv, c.block, 2};
    const auto q = floats(p.q), k = floats(p.k), v = floats(p.v), beta = floats(p.beta), g = floats(p.g),
               sin = floats(p.state_in);
    const size_t kk = size_t(c.dk) * c.dk, kv = size_t(c.dk) * c.dv;
    std::vector<float> A(size_t(c.B) * c.HV * kk, 7.f), Bstate(p.states()), sout(p.states()), o(v.size());
    WorkspaceBuffer wt(delta_rule_summary_workspace_floats(s)), wf(delta_rule_forward_workspace_floats(s));
    delta_rule_summary(A.data(), nullptr, k.data(), nullptr, beta.data(), g.data(), p.starts.data(), s, wt.view());
    const Vec ref = reference_transition(p);
    const size_t row = size_t(c.HV) * kk;
    // Every partial product has norm <= 1, so A's rounding is absolute: a long span contracts A itself far below 1.
    auto check_A = [&](const std::vector<float>& A, const std::string& how) {
      double worst = 0;
      for (size_t x = 0; x < row; ++x) worst = std::max(worst, std::fabs(ref[x] - A[x]));
      EXPECT_LE(worst, 1e-6) << what << how << " A";
      for (size_t x = row; x < A.size(); ++x) ASSERT_EQ(A[x], 0.f) << what << how << " A of a row holding a start";
    };
    check_A(A, " (A alone)");
    // A and B in one sweep: B the span's state from none; then state_out(P) = A P + B
    std::fill(A.begin(), A.end(), 7.f);
    delta_rule_summary(A.data(), Bstate.data(), k.data(), v.data(), beta.data(), g.data(), p.starts.data(), s,
                       wt.view());
    check_A(A, " (with B)");
    std::vector<float> own(p.states());
    delta_rule_forward(nullptr, own.data(), nullptr, k.data(), v.data(), beta.data(), g.data(), nullptr,
                       p.starts.data(), s, wf.view());
    expect_close(doubles(own), Bstate, testing::kFp32Tolerance, what + " B (the forward's state from none)");
    delta_rule_forward(o.data(), sout.data(), q.data(), k.data(), v.data(), beta.data(), g.data(), sin.data(),
                       p.starts.data(), s, wf.view());
    Vec composed(p.states());
    for (int bh = 0; bh < c.B * c.HV; ++bh)
      for (int i = 0; i < c.dk; ++i)
        for (int j = 0; j < c.dv; ++j) {
          double x = Bstate[bh * kv + i * c.dv + j];
          for (int m = 0; m < c.dk; ++m) x += double(A[bh * kk + i * c.dk + m]) * sin[bh * kv + m * c.dv + j];
          composed[bh * kv + i * c.dv + j] = x;
        }
    expect_close(composed, sout, testing::kFp32Tolerance, what + " A P + B");
  }
}

// dP^own = sum_t F_t^T q_t do_t^T with F_t = M_t ... M_0: the backward's dstate_in without an outgoing gradient.
TEST(DeltaRuleSummaries, OwnStateGradientTransportsTheQueries) {
  for (bool documents : {false, true}) {
    const int B = 2, N = 70, H = 1, HV = 2, dk = 8, dv = 5, block = 16;
    Problem p = make_problem(B, N, H, HV, dk, dv, 0.05, false, 13);
    if (documents) p.starts = document_starts(B, N, block);
    const Vec dout = doubles(testing::random_vector(p.v.size(), 14));
    Vec dP(p.states(), 0.0);
    for (int b = 0; b < B; ++b)
      for (int hv = 0; hv < HV; ++hv) {
        Problem one = p;  // the span [0, t] of row b
        one.B = 1;
        Vec F, Fq(dk);
        for (int t = 0; t < N; ++t) {
          one.N = t + 1;
          one.k.assign(p.k.begin() + p.key(b, 0, 0), p.k.begin() + p.key(b, t + 1, 0));
          one.beta.assign(p.beta.begin() + p.gate(b, 0, 0), p.beta.begin() + p.gate(b, t + 1, 0));
          one.g.assign(p.g.begin() + p.gate(b, 0, 0), p.g.begin() + p.gate(b, t + 1, 0));
          one.starts = p.starts.empty() ? p.starts : std::vector<uint8_t>(p.starts.begin() + b * N,
                                                                         p.starts.begin() + b * N + t + 1);
          F = reference_transition(one);
          const double* Fh = &F[size_t(hv) * dk * dk];
          const double *q = &p.q[p.key(b, t, hv)], *dO = &dout[p.value(b, t, hv)];
          for (int i = 0; i < dk; ++i) {
            Fq[i] = 0;
            for (int m = 0; m < dk; ++m) Fq[i] += Fh[m * dk + i] * q[m];
          }
          for (int i = 0; i < dk; ++i)
            for (int j = 0; j < dv; ++j) dP[(size_t(b) * HV + hv) * dk * dv + i * dv + j] += Fq[i] * dO[j];
        }
      }
    const DeltaRuleShape s{B, N, H, HV, dk, dv, block, 2};
    const auto q = floats(p.q), k = floats(p.k), v = floats(p.v), beta = floats(p.beta), g = floats(p.g),
               dof = floats(dout);
    std::vector<float> dsin(p.states(), 0.f);
    WorkspaceBuffer wb(delta_rule_backward_workspace_floats(s));
    delta_rule_backward(nullptr, nullptr, nullptr, nullptr, nullptr, dsin.data(), dof.data(), nullptr, q.data(),
                        k.data(), v.data(), beta.data(), g.data(), nullptr, documents ? p.starts.data() : nullptr, s,
                        wb.view());
    expect_close(dP, dsin, testing::kFp32Tolerance, "documents " + std::to_string(documents) + " dP^own");
  }
}

// The state's gradient alone (one reverse sweep, no forward) equals the full backward's, with an outgoing gradient
// and documents.
TEST(DeltaRuleSummaries, StateGradientAloneEqualsTheFullBackward) {
  const int B = 2, N = 70, H = 2, HV = 4, dk = 8, dv = 5, block = 16;
  Problem p = make_problem(B, N, H, HV, dk, dv, 0.1, true, 21);
  p.starts = document_starts(B, N, block);
  const DeltaRuleShape s{B, N, H, HV, dk, dv, block, 2};
  const auto q = floats(p.q), k = floats(p.k), v = floats(p.v), beta = floats(p.beta), g = floats(p.g),
             sin = floats(p.state_in), dout = testing::random_vector(p.v.size(), 22),
             dsout = testing::random_vector(p.states(), 23);
  std::vector<float> dq(q.size()), dk_(k.size()), dv_(v.size()), db(beta.size()), dg(g.size()), full(p.states(), 0.f),
      alone(p.states(), 0.f);
  WorkspaceBuffer wb(delta_rule_backward_workspace_floats(s));
  delta_rule_backward(dq.data(), dk_.data(), dv_.data(), db.data(), dg.data(), full.data(), dout.data(), dsout.data(),
                      q.data(), k.data(), v.data(), beta.data(), g.data(), sin.data(), p.starts.data(), s, wb.view());
  delta_rule_backward(nullptr, nullptr, nullptr, nullptr, nullptr, alone.data(), dout.data(), dsout.data(), q.data(),
                      k.data(), v.data(), beta.data(), g.data(), sin.data(), p.starts.data(), s, wb.view());
  expect_close(doubles(full), alone, testing::kFp32Tolerance, "dstate_in alone");
}

// The transition's adjoint against finite differences of <dA, A> on the double product; row 1 holds a start.
TEST(DeltaRuleSummaries, TransitionGradientsMatchFiniteDifferences) {
  const int B = 2, N = 11, H = 1, HV = 2, dk = 4, block = 4;
  Problem p = make_problem(B, N, H, HV, dk, 1, 0.3, false, 17);
  p.starts.assign(size_t(B) * N, 0);
  p.starts[N + 5] = 1;
  const Vec dA = doubles(testing::random_vector(size_t(B) * HV * dk * dk, 18));
  auto loss = [&](const Problem& x) {
    const Vec A = reference_transition(x);
    double l = 0;
    for (size_t i = 0; i < A.size(); ++i) l += A[i] * dA[i];
    return l;
  };
  const DeltaRuleShape s{B, N, H, HV, dk, 1, block, 2};
  const auto k = floats(p.k), beta = floats(p.beta), g = floats(p.g), dAf = floats(dA);
  std::vector<float> dk_(k.size(), 0.f), dbeta(beta.size(), 0.f), dg(g.size(), 0.f);
  WorkspaceBuffer wb(delta_rule_transition_backward_workspace_floats(s));
  delta_rule_transition_backward(dk_.data(), dbeta.data(), dg.data(), dAf.data(), k.data(), beta.data(), g.data(),
                                 p.starts.data(), s, wb.view());
  const std::pair<Vec Problem::*, const std::vector<float>*> inputs[] = {
      {&Problem::k, &dk_}, {&Problem::beta, &dbeta}, {&Problem::g, &dg}};
  for (const auto& [member, grad] : inputs)
    expect_close(testing::member_finite_difference(loss, p, member), *grad, testing::kFp32Tolerance,
                 "transition gradient");
}

TEST(DeltaRuleShapes, BadShapesAreRefused) {
  const DeltaRuleShape good{1, 8, 2, 4, 8, 8, 4, 1};
  std::vector<float> x(4096, 0.1f), out(4096);
  auto forward = [&](const DeltaRuleShape& s, size_t floats) {
    delta_rule_forward(out.data(), out.data(), x.data(), x.data(), x.data(), x.data(), x.data(), nullptr, nullptr, s,
                       {x.data(), floats});
  };
  DeltaRuleShape s = good;
  s.HV = 3;
  testing::expect_error([&] { forward(s, x.size()); }, "multiple of the q/k heads H");
  testing::expect_error([&] { delta_rule_forward_workspace_floats(s); }, "HV=3 H=2");
  s = good, s.block = 0;
  testing::expect_error([&] { forward(s, x.size()); }, "sizes must be positive");
  s = good, s.dk = 0;
  testing::expect_error([&] { delta_rule_summary_workspace_floats(s); }, "dk=0");
  s = good, s.threads = 0;
  testing::expect_error([&] { forward(s, x.size()); }, "threads=0");
  const size_t need = delta_rule_forward_workspace_floats(good);
  testing::expect_error([&] { forward(good, need - 1); }, "workspace of " + std::to_string(need) + " floats");
}

}  // namespace
}  // namespace lasp
