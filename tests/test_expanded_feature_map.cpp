// Tests of the Based and Rebased row feature maps (kernels/expanded_feature_map.h). The references are
// written here in double from ../shared/design/FEATURE_MAPS.md: the compact map in its feature order, and
// independently the full f^2 outer product, whose dot products must give the same kernel (1 + s + s^2/2,
// (y.y')^2 / f). Each backward is compared with central finite differences of the double reference under
// a random projection loss, once into zeroed gradients and once into pre-filled ones (backward accumulates).
// Sizes are awkward on purpose (f = 1, 3, 4, 16, 17; n = 1, 5, 33) and rows sit at a stride wider than f,
// with NaN in the gap, so that a kernel that reads outside its rows fails. Tolerances: k eps max(|ref|, 1)
// per element (highway's form), eps = FLT_EPSILON, k as small as the fp32 sums allow.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/expanded_feature_map.h"
#include "testing.h"

using namespace lasp;
using namespace lasp::testing;

namespace {

constexpr ExpandedKind kKinds[] = {ExpandedKind::based, ExpandedKind::rebased};
constexpr int kDims[] = {1, 3, 4, 16, 17};
constexpr long kRows[] = {1, 5, 33};
constexpr double kEps = FLT_EPSILON;

// Every |ref - got| <= k eps max(|ref|, 1) amp; reports the worst element. amp (per element, 1 if empty):
// how much the computation amplifies rounding beyond the value's own size (rebased: its norm's rstd).
template <class G>
void expect_close(const std::vector<double>& ref, const std::vector<G>& got, double k, const std::string& label,
                  const std::vector<double>& amp = {}) {
  ASSERT_EQ(ref.size(), got.size()) << label;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double scale = std::max(std::abs(ref[i]), 1.0) * (amp.empty() ? 1.0 : amp[i]);
    const double r = std::abs(ref[i] - double(got[i])) / (kEps * scale);
    if (!(r <= worst)) worst = r, at = i;  // NaN counts as worst
  }
  EXPECT_LE(worst, k) << label << ": element " << at << " ref " << ref[at] << " got " << double(got[at])
                      << " (error in units of eps max(|ref|, 1)" << (amp.empty() ? "" : " amp") << ")";
}

std::string label_of(ExpandedKind kind, int f, long n) {
  return std::string(to_string(kind)) + " f=" + std::to_string(f) + " n=" + std::to_string(n);
}

// n rows of f values at stride f + 2, the gap filled with `gap`.
std::vector<float> strided_rows(long n, int f, uint32_t seed, float gap, float lo = -1.f, float hi = 1.f) {
  const auto v = random_vector(size_t(n) * f, seed, lo, hi);
  std::vector<float> x(size_t(n) * (f + 2), gap);
  for (long r = 0; r < n; ++r)
    for (int i = 0; i < f; ++i) x[r * (f + 2) + i] = v[r * f + i];
  return x;
}

// The f values of each row, packed (drops the gap).
std::vector<double> packed(const std::vector<float>& x, long n, int f) {
  std::vector<double> out(size_t(n) * f);
  for (long r = 0; r < n; ++r)
    for (int i = 0; i < f; ++i) out[r * f + i] = x[r * (f + 2) + i];
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Double references, written from FEATURE_MAPS.md.

// Rebased's LayerNorm: biased variance, eps 1e-6.
std::vector<double> ref_norm(const double* x, const double* gamma, const double* beta, int f) {
  double mean = 0, var = 0;
  for (int i = 0; i < f; ++i) mean += x[i];
  mean /= f;
  for (int i = 0; i < f; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= f;
  std::vector<double> y(f);
  for (int i = 0; i < f; ++i) y[i] = (x[i] - mean) / std::sqrt(var + 1e-6) * gamma[i] + beta[i];
  return y;
}

// Rebased's amplification of rounding: its norm multiplies the errors of x - mean (forward) and of the sums
// of its backward by rstd = 1 / sqrt(var + 1e-6): about 1.7 for a random row, 1000 at f = 1 (variance 0,
// where y = beta and dx = 0 are exact cancellations). 1 for based. One value per row, repeated `per` times.
std::vector<double> ref_amp(const std::vector<double>& x, long n, int f, long per, ExpandedKind kind) {
  std::vector<double> amp;
  for (long r = 0; r < n; ++r) {
    double mean = 0, var = 0;
    for (int i = 0; i < f; ++i) mean += x[r * f + i];
    mean /= f;
    for (int i = 0; i < f; ++i) var += (x[r * f + i] - mean) * (x[r * f + i] - mean);
    const double rstd = 1 / std::sqrt(var / f + 1e-6);
    amp.insert(amp.end(), per, kind == ExpandedKind::rebased ? std::max(rstd, 1.0) : 1.0);
  }
  return amp;
}

// The kernel's input u: x for based, LayerNorm(x) for rebased.
std::vector<double> ref_input(const double* x, const double* gamma, const double* beta, int f, ExpandedKind kind) {
  return kind == ExpandedKind::based ? std::vector<double>(x, x + f) : ref_norm(x, gamma, beta, f);
}

// The compact map in Linear-MoE's order.
std::vector<double> ref_phi(const double* x, const double* gamma, const double* beta, int f, ExpandedKind kind) {
  const auto u = ref_input(x, gamma, beta, f, kind);
  std::vector<double> phi;
  if (kind == ExpandedKind::based) {
    phi.push_back(1);
    for (int i = 0; i < f; ++i) phi.push_back(u[i] / std::pow(f, 0.25));
    for (int i = 0; i < f; ++i) phi.push_back(u[i] * u[i] / std::sqrt(2.0 * f));
    for (int i = 0; i < f; ++i)
      for (int j = i + 1; j < f; ++j) phi.push_back(u[i] * u[j] / std::sqrt(f));
  } else {
    for (int i = 0; i < f; ++i) phi.push_back(u[i] * u[i] / std::sqrt(f));
    for (int i = 0; i < f; ++i)
      for (int j = i + 1; j < f; ++j) phi.push_back(std::sqrt(2.0 / f) * u[i] * u[j]);
  }
  return phi;
}

// The full outer product (HazyResearch/based's form): based [1 | u / f^(1/4) | u_i u_j / sqrt(2f), all i, j],
// rebased [u_i u_j / sqrt(f), all i, j].
std::vector<double> ref_phi_full(const double* x, const double* gamma, const double* beta, int f, ExpandedKind kind) {
  const auto u = ref_input(x, gamma, beta, f, kind);
  std::vector<double> phi;
  const double c = kind == ExpandedKind::based ? 1 / std::sqrt(2.0 * f) : 1 / std::sqrt(f);
  if (kind == ExpandedKind::based) {
    phi.push_back(1);
    for (int i = 0; i < f; ++i) phi.push_back(u[i] / std::pow(f, 0.25));
  }
  for (int i = 0; i < f; ++i)
    for (int j = 0; j < f; ++j) phi.push_back(c * u[i] * u[j]);
  return phi;
}

// The kernel formula on inputs u, u'.
double ref_kernel(const double* a, const double* b, int f, ExpandedKind kind) {
  double t = 0;
  for (int i = 0; i < f; ++i) t += a[i] * b[i];
  if (kind == ExpandedKind::rebased) return t * t / f;
  const double s = t / std::sqrt(f);
  return 1 + s + s * s / 2;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Parameters of rebased's norm (used by based as nulls).
struct Params {
  std::vector<float> gamma, beta;
  std::vector<double> gd, bd;
  Params(int f, uint32_t seed)
      : gamma(random_vector(f, seed, 0.5f, 1.5f)), beta(random_vector(f, seed + 1, -0.5f, 0.5f)),
        gd(to_double(gamma)), bd(to_double(beta)) {}
  const float* g(ExpandedKind kind) const { return kind == ExpandedKind::rebased ? gamma.data() : nullptr; }
  const float* b(ExpandedKind kind) const { return kind == ExpandedKind::rebased ? beta.data() : nullptr; }
};

// ---------------------------------------------------------------------------------------------------------

TEST(ExpandedFeatureMap, FeatureCountsAndNames) {
  // FEATURE_MAPS.md's cost table: f = 16 gives 153 / 136, f = 64 2145 / 2080, f = 128 8385 / 8256.
  EXPECT_EQ(expanded_features(16, ExpandedKind::based), 153);
  EXPECT_EQ(expanded_features(16, ExpandedKind::rebased), 136);
  EXPECT_EQ(expanded_features(64, ExpandedKind::based), 2145);
  EXPECT_EQ(expanded_features(64, ExpandedKind::rebased), 2080);
  EXPECT_EQ(expanded_features(128, ExpandedKind::based), 8385);
  EXPECT_EQ(expanded_features(128, ExpandedKind::rebased), 8256);
  EXPECT_EQ(expanded_features(1, ExpandedKind::based), 3);
  EXPECT_EQ(expanded_features(1, ExpandedKind::rebased), 1);
  for (ExpandedKind kind : kKinds) {
    EXPECT_EQ(expanded_kind_from_string(to_string(kind)), kind);
    for (int f : kDims) {
      const std::vector<double> x(f, 0.5), ones(f, 1.0), zeros(f, 0.0);
      EXPECT_EQ(expanded_features(f, kind), (long)ref_phi(x.data(), ones.data(), zeros.data(), f, kind).size());
    }
  }
  EXPECT_EQ(expanded_map_workspace_floats(16, ExpandedKind::based), 0u);
  EXPECT_EQ(expanded_map_workspace_floats(16, ExpandedKind::rebased), 32u);
  expect_error([] { expanded_kind_from_string("taylor"); }, "unknown expanded feature map 'taylor', expected one of based, rebased");
  expect_error([] { expanded_features(0, ExpandedKind::based); }, "expanded_features: feature_dim f must be >= 1, got 0");
}


// The references agree with each other before anything is compared with them: the compact map's dot products,
// the full outer product's and the kernel formula (double, so to 1e-13).
TEST(ExpandedFeatureMap, ReferenceMapsGiveTheKernelFormula) {
  for (ExpandedKind kind : kKinds)
    for (int f : kDims) {
      const Params p(f, 7 + f);
      const auto a = to_double(random_vector(f, 11 + f)), b = to_double(random_vector(f, 12 + f));
      const auto ua = ref_input(a.data(), p.gd.data(), p.bd.data(), f, kind);
      const auto ub = ref_input(b.data(), p.gd.data(), p.bd.data(), f, kind);
      const double formula = ref_kernel(ua.data(), ub.data(), f, kind);
      const double compact = dot(ref_phi(a.data(), p.gd.data(), p.bd.data(), f, kind),
                                 ref_phi(b.data(), p.gd.data(), p.bd.data(), f, kind));
      const double full = dot(ref_phi_full(a.data(), p.gd.data(), p.bd.data(), f, kind),
                              ref_phi_full(b.data(), p.gd.data(), p.bd.data(), f, kind));
      const std::string label = label_of(kind, f, 1);
      EXPECT_NEAR(compact, formula, 1e-13 * std::max(std::abs(formula), 1.0)) << label;
      EXPECT_NEAR(full, formula, 1e-13 * std::max(std::abs(formula), 1.0)) << label;
      EXPECT_GE(formula, kind == ExpandedKind::based ? 0.5 : 0.0) << label;  // 1 + s + s^2/2 >= 1/2; a square
    }
}

TEST(ExpandedFeatureMap, ForwardMatchesReference) {
  for (ExpandedKind kind : kKinds)
    for (int f : kDims)
      for (long n : kRows) {
        const std::string label = label_of(kind, f, n);
        const long Dp = expanded_features(f, kind);
        const Params p(f, 3 + f);
        const auto x = strided_rows(n, f, 100 + f * 7 + n, NAN);
        const auto xd = packed(x, n, f);
        std::vector<double> ref;
        for (long r = 0; r < n; ++r) {
          const auto row = ref_phi(&xd[r * f], p.gd.data(), p.bd.data(), f, kind);
          ref.insert(ref.end(), row.begin(), row.end());
        }
        WorkspaceBuffer ws(expanded_map_workspace_floats(f, kind));
        std::vector<float> phi(size_t(n) * Dp, NAN);
        expanded_map_forward(phi.data(), x.data(), p.g(kind), p.b(kind), n, f + 2, f, kind, ws.view());
        // based: one or two roundings per feature; rebased: the norm's sums (mean, variance) add about f more.
        expect_close(ref, phi, kind == ExpandedKind::based ? 4 : 4 + f, label, ref_amp(xd, n, f, Dp, kind));

        // The pieces give the same bits: rebased_norm_forward, then expanded_phi_forward on y.
        std::vector<float> phi2(phi.size(), NAN);
        if (kind == ExpandedKind::based) {
          expanded_phi_forward(phi2.data(), x.data(), n, f + 2, f, kind);
        } else {
          std::vector<float> y(size_t(n) * (f + 1), NAN);
          rebased_norm_forward(y.data(), x.data(), p.gamma.data(), p.beta.data(), n, f + 2, f + 1, f);
          expanded_phi_forward(phi2.data(), y.data(), n, f + 1, f, kind);
        }
        EXPECT_EQ(0, std::memcmp(phi.data(), phi2.data(), phi.size() * sizeof(float))) << label;
      }
}

// The kernel of raw rows equals phi(Q) phi(K)^T: against the full outer product of the double reference,
// and against the products of the kernel's own fp32 phi.
TEST(ExpandedFeatureMap, KernelOfRawRowsEqualsExpandedProduct) {
  for (ExpandedKind kind : kKinds)
    for (int f : kDims)
      for (long na : kRows)
        for (long nb : kRows) {
          const std::string label = label_of(kind, f, na) + " nb=" + std::to_string(nb);
          const long Dp = expanded_features(f, kind);
          const Params p(f, 5 + f);
          const auto xa = strided_rows(na, f, 200 + f + na, NAN), xb = strided_rows(nb, f, 300 + f + nb, NAN);
          const auto xad = packed(xa, na, f), xbd = packed(xb, nb, f);
          // The kernel's inputs: x itself (based), y = norm(x) (rebased).
          std::vector<float> ua = xa, ub = xb;
          if (kind == ExpandedKind::rebased) {
            rebased_norm_forward(ua.data(), xa.data(), p.gamma.data(), p.beta.data(), na, f + 2, f + 2, f);
            rebased_norm_forward(ub.data(), xb.data(), p.gamma.data(), p.beta.data(), nb, f + 2, f + 2, f);
          }
          std::vector<float> scores(size_t(na) * nb, NAN);
          expanded_kernel_forward(scores.data(), ua.data(), ub.data(), na, nb, f + 2, f + 2, f, kind);

          std::vector<double> ref(scores.size()), own(scores.size());
          WorkspaceBuffer ws(expanded_map_workspace_floats(f, kind));
          std::vector<float> pa(size_t(na) * Dp), pb(size_t(nb) * Dp);
          expanded_map_forward(pa.data(), xa.data(), p.g(kind), p.b(kind), na, f + 2, f, kind, ws.view());
          expanded_map_forward(pb.data(), xb.data(), p.g(kind), p.b(kind), nb, f + 2, f, kind, ws.view());
          for (long i = 0; i < na; ++i)
            for (long j = 0; j < nb; ++j) {
              ref[i * nb + j] = dot(ref_phi_full(&xad[i * f], p.gd.data(), p.bd.data(), f, kind),
                                    ref_phi_full(&xbd[j * f], p.gd.data(), p.bd.data(), f, kind));
              double s = 0;
              for (long c = 0; c < Dp; ++c) s += double(pa[i * Dp + c]) * pb[j * Dp + c];
              own[i * nb + j] = s;
            }
          const double k = kind == ExpandedKind::based ? 4 + f : 8 + 4 * f;
          expect_close(ref, scores, k, label + " vs double phi(Q) phi(K)^T");
          expect_close(own, scores, k, label + " vs its own fp32 phi(Q) phi(K)^T");
        }
}

// The map's backward: dx, and for rebased dgamma and dbeta, against finite differences of
// L = sum phi(x) .* w in double; once into zeros, once into pre-filled buffers (dx's gap must stay as it was).
TEST(ExpandedFeatureMap, BackwardMatchesFiniteDifferences) {
  for (ExpandedKind kind : kKinds)
    for (int f : kDims)
      for (long n : kRows) {
        const std::string label = label_of(kind, f, n);
        const long Dp = expanded_features(f, kind);
        const Params p(f, 9 + f);
        const auto x = strided_rows(n, f, 400 + f * 3 + n, NAN);
        const auto xd = packed(x, n, f);
        const auto w = random_vector(size_t(n) * Dp, 500 + f + n);
        const auto wd = to_double(w);
        auto row_loss = [&](long r, const double* row, const double* gamma, const double* beta) {
          const auto phi = ref_phi(row, gamma, beta, f, kind);
          double L = 0;
          for (long c = 0; c < Dp; ++c) L += phi[c] * wd[r * Dp + c];
          return L;
        };
        auto total_loss = [&](const double* gamma, const double* beta) {
          double L = 0;
          for (long r = 0; r < n; ++r) L += row_loss(r, &xd[r * f], gamma, beta);
          return L;
        };
        const auto fd_x = rowwise_fd(
            [&](long r, const double* row) { return row_loss(r, row, p.gd.data(), p.bd.data()); }, xd, n, f);
        const auto fd_gamma =
            finite_difference([&](const std::vector<double>& g) { return total_loss(g.data(), p.bd.data()); }, p.gd);
        const auto fd_beta =
            finite_difference([&](const std::vector<double>& b) { return total_loss(p.gd.data(), b.data()); }, p.bd);

        WorkspaceBuffer ws(expanded_map_workspace_floats(f, kind));
        for (bool prefill : {false, true}) {
          std::vector<float> dx = prefill ? strided_rows(n, f, 600 + f, 7.f) : strided_rows(n, f, 0, 7.f, 0.f, 0.f);
          std::vector<float> dgamma = prefill ? random_vector(f, 601) : std::vector<float>(f, 0.f);
          std::vector<float> dbeta = prefill ? random_vector(f, 602) : std::vector<float>(f, 0.f);
          const auto dx0 = dx, dgamma0 = dgamma, dbeta0 = dbeta;
          const bool rb = kind == ExpandedKind::rebased;
          expanded_map_backward(dx.data(), rb ? dgamma.data() : nullptr, rb ? dbeta.data() : nullptr, w.data(),
                                x.data(), p.g(kind), p.b(kind), n, f + 2, f, kind, ws.view());
          const std::string l = label + (prefill ? " (pre-filled)" : "");
          // The expected values: the pre-filled content plus the finite differences.
          std::vector<double> ex = packed(dx0, n, f), eg = to_double(dgamma0), eb = to_double(dbeta0);
          for (size_t i = 0; i < ex.size(); ++i) ex[i] += fd_x[i];
          for (int i = 0; i < f; ++i) eg[i] += rb ? fd_gamma[i] : 0, eb[i] += rb ? fd_beta[i] : 0;
          // dx sums about f products of O(1) terms per element (rebased: through the norm's backward too,
          // amplified by rstd); dgamma, dbeta sum n rows of those (random signs: the error grows slowly).
          const auto amp = ref_amp(xd, n, f, f, kind);
          const std::vector<double> amp_max(f, *std::max_element(amp.begin(), amp.end()));
          expect_close(ex, packed(dx, n, f), 8 + f, l + " dx", amp);
          expect_close(eg, dgamma, 8 + f, l + " dgamma", amp_max);
          expect_close(eb, dbeta, 8 + f, l + " dbeta", amp_max);
          for (long r = 0; r < n; ++r)
            for (int i = f; i < f + 2; ++i) EXPECT_EQ(dx[r * (f + 2) + i], 7.f) << l << ": dx's gap was written";
        }
      }
}

// The kernel's backward, da and db, against finite differences of L = sum dscores .* K(a, b) in double; and
// with a and b the same rows (a block's own keys as queries) into one buffer, which must get both halves.
TEST(ExpandedFeatureMap, KernelBackwardMatchesFiniteDifferences) {
  for (ExpandedKind kind : kKinds)
    for (int f : kDims)
      for (long na : kRows)
        for (long nb : kRows) {
          const std::string label = label_of(kind, f, na) + " nb=" + std::to_string(nb);
          // For rebased the inputs are already normalized rows y; any values serve the kernel.
          const auto a = strided_rows(na, f, 700 + f + na, NAN), b = strided_rows(nb, f, 800 + f + nb, NAN);
          const auto ad = packed(a, na, f), bd = packed(b, nb, f);
          const auto ds = random_vector(size_t(na) * nb, 900 + f);
          const auto dsd = to_double(ds);
          auto loss = [&](const std::vector<double>& av, const std::vector<double>& bv) {
            double L = 0;
            for (long i = 0; i < na; ++i)
              for (long j = 0; j < nb; ++j) L += dsd[i * nb + j] * ref_kernel(&av[i * f], &bv[j * f], f, kind);
            return L;
          };
          const auto fd_a = finite_difference([&](const std::vector<double>& av) { return loss(av, bd); }, ad);
          const auto fd_b = finite_difference([&](const std::vector<double>& bv) { return loss(ad, bv); }, bd);
          for (bool prefill : {false, true}) {
            auto da = prefill ? strided_rows(na, f, 1000, 7.f) : strided_rows(na, f, 0, 7.f, 0.f, 0.f);
            auto db = prefill ? strided_rows(nb, f, 1001, 7.f) : strided_rows(nb, f, 0, 7.f, 0.f, 0.f);
            auto ea = packed(da, na, f), eb = packed(db, nb, f);
            for (size_t i = 0; i < ea.size(); ++i) ea[i] += fd_a[i];
            for (size_t i = 0; i < eb.size(); ++i) eb[i] += fd_b[i];
            expanded_kernel_backward(da.data(), db.data(), ds.data(), a.data(), b.data(), na, nb, f + 2, f + 2, f,
                                     kind);
            const std::string l = label + (prefill ? " (pre-filled)" : "");
            // Each element sums nb (or na) terms, each of an f-long dot product.
            const double k = 8 + f + std::max(na, nb);
            expect_close(ea, packed(da, na, f), k, l + " da");
            expect_close(eb, packed(db, nb, f), k, l + " db");
            for (long r = 0; r < na; ++r)
              for (int i = f; i < f + 2; ++i) EXPECT_EQ(da[r * (f + 2) + i], 7.f) << l << ": da's gap was written";
          }
          if (na != nb) continue;
          // The same rows on both sides, one gradient buffer: d/da of sum dscores_ij K(a_i, a_j).
          const auto fd_same = finite_difference([&](const std::vector<double>& av) { return loss(av, av); }, ad);
          auto dsame = strided_rows(na, f, 0, 7.f, 0.f, 0.f);
          expanded_kernel_backward(dsame.data(), dsame.data(), ds.data(), a.data(), a.data(), na, na, f + 2, f + 2, f,
                                   kind);
          expect_close(fd_same, packed(dsame, na, f), 8 + f + 2 * na, label + " same rows");
        }
}

// The rebased map's backward is rebased_norm_forward, expanded_phi_backward on y, rebased_norm_backward: the
// pieces a chunked kernel calls give the same bits as the whole map.
TEST(ExpandedFeatureMap, RebasedPiecesComposeToTheMap) {
  const ExpandedKind kind = ExpandedKind::rebased;
  for (int f : kDims) {
    const long n = 5, Dp = expanded_features(f, kind);
    const Params p(f, 13 + f);
    const auto x = strided_rows(n, f, 1100 + f, NAN);
    const auto g = random_vector(size_t(n) * Dp, 1200 + f);
    WorkspaceBuffer ws(expanded_map_workspace_floats(f, kind));
    std::vector<float> dx(x.size(), 0.f), dgamma(f, 0.f), dbeta(f, 0.f);
    expanded_map_backward(dx.data(), dgamma.data(), dbeta.data(), g.data(), x.data(), p.gamma.data(),
                          p.beta.data(), n, f + 2, f, kind, ws.view());
    std::vector<float> y(size_t(n) * f), dy(size_t(n) * f, 0.f), dx2(x.size(), 0.f), dgamma2(f, 0.f), dbeta2(f, 0.f);
    rebased_norm_forward(y.data(), x.data(), p.gamma.data(), p.beta.data(), n, f + 2, f, f);
    expanded_phi_backward(dy.data(), g.data(), y.data(), n, f, f, kind);
    rebased_norm_backward(dx2.data(), dgamma2.data(), dbeta2.data(), dy.data(), x.data(), p.gamma.data(), n, f + 2,
                          f, f);
    EXPECT_EQ(dx, dx2) << "f=" << f;
    EXPECT_EQ(dgamma, dgamma2) << "f=" << f;
    EXPECT_EQ(dbeta, dbeta2) << "f=" << f;
  }
}

TEST(ExpandedFeatureMap, RefusesBadArguments) {
  std::vector<float> a(64), b(64), c(64), d(64);
  WorkspaceBuffer ws(8);
  const auto rb = ExpandedKind::rebased, based = ExpandedKind::based;
  expect_error([&] { expanded_map_forward(a.data(), b.data(), c.data(), d.data(), 2, 4, 4, rb, {ws.storage.data(), 7}); },
               "expanded_map_forward: workspace of 7 floats, rebased with f = 4 needs 8");
  expect_error([&] { expanded_map_forward(a.data(), b.data(), nullptr, d.data(), 2, 4, 4, rb, ws.view()); },
               "expanded_map_forward: rebased needs gamma and beta");
  expect_error([&] { expanded_map_forward(a.data(), b.data(), nullptr, nullptr, 2, 3, 4, based, {}); },
               "expanded_map_forward: the row stride of x must be >= f = 4, got 3");
  expect_error([&] { expanded_map_backward(a.data(), nullptr, d.data(), b.data(), c.data(), c.data(), c.data(), 2, 4,
                                           4, rb, ws.view()); },
               "expanded_map_backward: rebased needs gamma, beta, dgamma and dbeta");
  expect_error([&] { expanded_phi_forward(a.data(), b.data(), -1, 4, 4, based); },
               "expanded_phi_forward: the number of rows must be >= 0, got -1");
  expect_error([&] { expanded_phi_backward(a.data(), b.data(), a.data(), 2, 4, 4, based); },
               "expanded_phi_backward: du must differ from u");
  expect_error([&] { expanded_kernel_forward(a.data(), b.data(), c.data(), 2, 2, 4, 4, 0, based); },
               "expanded_kernel_forward: feature_dim f must be >= 1, got 0");
  expect_error([&] { expanded_kernel_backward(a.data(), b.data(), c.data(), a.data(), d.data(), 2, 2, 4, 4, 4, rb); },
               "expanded_kernel_backward: the gradients must not alias a or b");
  expect_error([&] { rebased_norm_forward(a.data(), a.data(), c.data(), d.data(), 2, 4, 5, 4); },
               "rebased_norm_forward: y may equal x only with the same stride");
  expect_error([&] { expanded_kernel_forward(a.data(), b.data(), c.data(), 2, 2, 4, 4, 4, ExpandedKind(7)); },
               "expanded_kernel_forward: invalid ExpandedKind value 7");
  // Nothing to do: no pointer is looked at.
  expanded_map_forward(nullptr, nullptr, nullptr, nullptr, 0, 0, 4, rb, {});
  expanded_kernel_forward(nullptr, nullptr, nullptr, 0, 3, 0, 0, 4, based);
}

}  // namespace
