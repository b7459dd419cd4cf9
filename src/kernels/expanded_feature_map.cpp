#include "kernels/expanded_feature_map.h"

#include <cmath>

#include "core/check.h"

namespace lasp {

namespace {

// Where each part of a phi row starts and what it is scaled by (FEATURE_MAPS.md, "Forward").
struct Layout {
  bool affine;      // based: the constant 1 and the linear part x / f^(1/4) come first
  long diag, pairs; // offsets of the squares u_i^2 and of the products u_i u_j (i < j)
  float lin, sq, pair;
};

Layout layout(int f, ExpandedKind kind) {
  const double fd = f;
  if (kind == ExpandedKind::based)
    return {true, 1 + long(f), 1 + 2 * long(f), float(std::pow(fd, -0.25)), float(1 / std::sqrt(2 * fd)),
            float(1 / std::sqrt(fd))};
  return {false, 0, long(f), 0.f, float(1 / std::sqrt(fd)), float(std::sqrt(2 / fd))};
}

bool valid(ExpandedKind kind) { return kind == ExpandedKind::based || kind == ExpandedKind::rebased; }

void check_sizes(const char* fn, long n, int f, ExpandedKind kind) {
  LASP_CHECK(valid(kind), "{}: invalid ExpandedKind value {}", fn, (int)kind);
  LASP_CHECK(f >= 1, "{}: feature_dim f must be >= 1, got {}", fn, f);
  LASP_CHECK(n >= 0, "{}: the number of rows must be >= 0, got {}", fn, n);
}

void check_stride(const char* fn, const char* what, long stride, int f) {
  LASP_CHECK(stride >= f, "{}: the row stride of {} must be >= f = {}, got {}", fn, what, f, stride);
}

// phi (D') from one row u (f).
void phi_row(float* phi, const float* u, int f, const Layout& L) {
  if (L.affine) {
    phi[0] = 1.f;
    for (int i = 0; i < f; ++i) phi[1 + i] = L.lin * u[i];
  }
  for (int i = 0; i < f; ++i) phi[L.diag + i] = L.sq * u[i] * u[i];
  float* p = phi + L.pairs;
  for (int i = 0; i < f - 1; ++i) {
    const float ui = L.pair * u[i];
    const int m = f - 1 - i;  // the pairs (i, j > i) lie next to each other
    for (int j = 0; j < m; ++j) p[j] = ui * u[i + 1 + j];
    p += m;
  }
}

// du (f) += g . dphi/du for one row: du = g_lin * lin + A u with A symmetric, A_ii = 2 sq g_ii,
// A_ij = A_ji = pair g_ij; A is not built, the loop over pairs adds both of its halves.
void phi_backward_row(float* du, const float* g, const float* u, int f, const Layout& L) {
  if (L.affine)
    for (int i = 0; i < f; ++i) du[i] += L.lin * g[1 + i];
  for (int i = 0; i < f; ++i) du[i] += 2 * L.sq * g[L.diag + i] * u[i];
  const float* p = g + L.pairs;
  for (int i = 0; i < f - 1; ++i) {
    const int m = f - 1 - i;
    const float* uj = u + i + 1;
    float* duj = du + i + 1;
    const float ui = L.pair * u[i];
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int j = 0; j < m; ++j) {
      acc += p[j] * uj[j];
      duj[j] += ui * p[j];
    }
    du[i] += L.pair * acc;
    p += m;
  }
}

// mean and 1 / sqrt(var + eps) of one row (two passes: the variance is not a difference of large sums).
void norm_stats(float& mean, float& rstd, const float* x, int f) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < f; ++i) s += x[i];
  mean = s / f;
  float v = 0.f;
#pragma omp simd reduction(+ : v)
  for (int i = 0; i < f; ++i) v += (x[i] - mean) * (x[i] - mean);
  rstd = 1.f / std::sqrt(v / f + kRebasedNormEps);
}

void norm_row(float* y, const float* x, const float* gamma, const float* beta, int f) {
  float mean, rstd;
  norm_stats(mean, rstd, x, f);
  for (int i = 0; i < f; ++i) y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
}

// LayerNorm's backward for one row, xh = (x - mean) rstd, dxh = dy gamma:
// dx += rstd (dxh - mean(dxh) - xh mean(dxh xh)), dgamma += dy xh, dbeta += dy.
void norm_backward_row(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* gamma,
                       int f) {
  float mean, rstd;
  norm_stats(mean, rstd, x, f);
  float m1 = 0.f, m2 = 0.f;
#pragma omp simd reduction(+ : m1, m2)
  for (int i = 0; i < f; ++i) {
    const float dxh = dy[i] * gamma[i], xh = (x[i] - mean) * rstd;
    m1 += dxh;
    m2 += dxh * xh;
  }
  m1 /= f;
  m2 /= f;
  for (int i = 0; i < f; ++i) {
    const float xh = (x[i] - mean) * rstd;
    dx[i] += rstd * (dy[i] * gamma[i] - m1 - xh * m2);
    dgamma[i] += dy[i] * xh;
    dbeta[i] += dy[i];
  }
}

float dot(const float* a, const float* b, int f) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < f; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

ExpandedKind expanded_kind_from_string(const std::string& name) {
  if (name == "based") return ExpandedKind::based;
  if (name == "rebased") return ExpandedKind::rebased;
  LASP_CHECK(false, "expanded_kind_from_string: unknown expanded feature map '{}', expected one of based, rebased",
             name);
  return ExpandedKind::based;  // unreachable
}

const char* to_string(ExpandedKind kind) {
  switch (kind) {
    case ExpandedKind::based: return "based";
    case ExpandedKind::rebased: return "rebased";
  }
  return "unknown";
}

long expanded_features(int f, ExpandedKind kind) {
  check_sizes("expanded_features", 0, f, kind);
  const long quadratic = long(f) * (f + 1) / 2;
  return kind == ExpandedKind::based ? 1 + long(f) + quadratic : quadratic;
}

size_t expanded_map_workspace_floats(int f, ExpandedKind kind) {
  check_sizes("expanded_map_workspace_floats", 0, f, kind);
  return kind == ExpandedKind::rebased ? 2 * size_t(f) : 0;
}

void expanded_map_forward(float* phi, const float* x, const float* gamma, const float* beta, long n, long x_stride,
                          int f, ExpandedKind kind, Workspace ws) {
  const char* fn = "expanded_map_forward";
  check_sizes(fn, n, f, kind);
  if (n == 0) return;
  check_stride(fn, "x", x_stride, f);
  LASP_CHECK(phi && x, "{}: null pointer (phi={}, x={})", fn, (const void*)phi, (const void*)x);
  if (kind == ExpandedKind::based) {
    expanded_phi_forward(phi, x, n, x_stride, f, kind);
    return;
  }
  LASP_CHECK(gamma && beta, "{}: rebased needs gamma and beta (gamma={}, beta={})", fn, (const void*)gamma,
             (const void*)beta);
  LASP_CHECK(ws.data && ws.floats >= expanded_map_workspace_floats(f, kind),
             "{}: workspace of {} floats, rebased with f = {} needs {}", fn, ws.data ? ws.floats : 0, f,
             expanded_map_workspace_floats(f, kind));
  const Layout L = layout(f, kind);
  const long Dp = expanded_features(f, kind);
  float* y = ws.data;
  for (long r = 0; r < n; ++r) {
    norm_row(y, x + r * x_stride, gamma, beta, f);
    phi_row(phi + r * Dp, y, f, L);
  }
}

void expanded_map_backward(float* dx, float* dgamma, float* dbeta, const float* g, const float* x,
                           const float* gamma, const float* beta, long n, long x_stride, int f, ExpandedKind kind,
                           Workspace ws) {
  const char* fn = "expanded_map_backward";
  check_sizes(fn, n, f, kind);
  if (n == 0) return;
  check_stride(fn, "x", x_stride, f);
  LASP_CHECK(dx && g && x, "{}: null pointer (dx={}, g={}, x={})", fn, (const void*)dx, (const void*)g,
             (const void*)x);
  if (kind == ExpandedKind::based) {
    expanded_phi_backward(dx, g, x, n, x_stride, f, kind);
    return;
  }
  LASP_CHECK(gamma && beta && dgamma && dbeta,
             "{}: rebased needs gamma, beta, dgamma and dbeta (gamma={}, beta={}, dgamma={}, dbeta={})", fn,
             (const void*)gamma, (const void*)beta, (const void*)dgamma, (const void*)dbeta);
  LASP_CHECK(ws.data && ws.floats >= expanded_map_workspace_floats(f, kind),
             "{}: workspace of {} floats, rebased with f = {} needs {}", fn, ws.data ? ws.floats : 0, f,
             expanded_map_workspace_floats(f, kind));
  const Layout L = layout(f, kind);
  const long Dp = expanded_features(f, kind);
  float *y = ws.data, *dy = ws.data + f;
  for (long r = 0; r < n; ++r) {
    const float* xr = x + r * x_stride;
    norm_row(y, xr, gamma, beta, f);  // recomputed: callers keep raw x, not y or phi
    for (int i = 0; i < f; ++i) dy[i] = 0.f;
    phi_backward_row(dy, g + r * Dp, y, f, L);
    norm_backward_row(dx + r * x_stride, dgamma, dbeta, dy, xr, gamma, f);
  }
}

void rebased_norm_forward(float* y, const float* x, const float* gamma, const float* beta, long n, long x_stride,
                          long y_stride, int f) {
  const char* fn = "rebased_norm_forward";
  check_sizes(fn, n, f, ExpandedKind::rebased);
  if (n == 0) return;
  check_stride(fn, "x", x_stride, f);
  check_stride(fn, "y", y_stride, f);
  LASP_CHECK(y && x && gamma && beta, "{}: null pointer (y={}, x={}, gamma={}, beta={})", fn, (const void*)y,
             (const void*)x, (const void*)gamma, (const void*)beta);
  LASP_CHECK(y != x || x_stride == y_stride, "{}: y may equal x only with the same stride ({} vs {})", fn, y_stride,
             x_stride);
  for (long r = 0; r < n; ++r) norm_row(y + r * y_stride, x + r * x_stride, gamma, beta, f);
}

void rebased_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                           const float* gamma, long n, long x_stride, long y_stride, int f) {
  const char* fn = "rebased_norm_backward";
  check_sizes(fn, n, f, ExpandedKind::rebased);
  if (n == 0) return;
  check_stride(fn, "x", x_stride, f);
  check_stride(fn, "dy", y_stride, f);
  LASP_CHECK(dx && dgamma && dbeta && dy && x && gamma,
             "{}: null pointer (dx={}, dgamma={}, dbeta={}, dy={}, x={}, gamma={})", fn, (const void*)dx,
             (const void*)dgamma, (const void*)dbeta, (const void*)dy, (const void*)x, (const void*)gamma);
  for (long r = 0; r < n; ++r)
    norm_backward_row(dx + r * x_stride, dgamma, dbeta, dy + r * y_stride, x + r * x_stride, gamma, f);
}

void expanded_phi_forward(float* phi, const float* u, long n, long u_stride, int f, ExpandedKind kind) {
  const char* fn = "expanded_phi_forward";
  check_sizes(fn, n, f, kind);
  if (n == 0) return;
  check_stride(fn, "u", u_stride, f);
  LASP_CHECK(phi && u, "{}: null pointer (phi={}, u={})", fn, (const void*)phi, (const void*)u);
  const Layout L = layout(f, kind);
  const long Dp = expanded_features(f, kind);
  for (long r = 0; r < n; ++r) phi_row(phi + r * Dp, u + r * u_stride, f, L);
}

void expanded_phi_backward(float* du, const float* g, const float* u, long n, long u_stride, int f,
                           ExpandedKind kind) {
  const char* fn = "expanded_phi_backward";
  check_sizes(fn, n, f, kind);
  if (n == 0) return;
  check_stride(fn, "u", u_stride, f);
  LASP_CHECK(du && g && u, "{}: null pointer (du={}, g={}, u={})", fn, (const void*)du, (const void*)g,
             (const void*)u);
  LASP_CHECK(du != u, "{}: du must differ from u", fn);
  const Layout L = layout(f, kind);
  const long Dp = expanded_features(f, kind);
  for (long r = 0; r < n; ++r) phi_backward_row(du + r * u_stride, g + r * Dp, u + r * u_stride, f, L);
}

void expanded_kernel_forward(float* scores, const float* a, const float* b, long na, long nb, long a_stride,
                             long b_stride, int f, ExpandedKind kind) {
  const char* fn = "expanded_kernel_forward";
  check_sizes(fn, na, f, kind);
  check_sizes(fn, nb, f, kind);
  if (na == 0 || nb == 0) return;
  check_stride(fn, "a", a_stride, f);
  check_stride(fn, "b", b_stride, f);
  LASP_CHECK(scores && a && b, "{}: null pointer (scores={}, a={}, b={})", fn, (const void*)scores, (const void*)a,
             (const void*)b);
  const float inv_f = 1.f / f, inv_sqrt_f = float(1 / std::sqrt(double(f)));
  for (long i = 0; i < na; ++i) {
    const float* ai = a + i * a_stride;
    float* row = scores + i * nb;
    if (kind == ExpandedKind::based) {
      for (long j = 0; j < nb; ++j) {
        const float s = dot(ai, b + j * b_stride, f) * inv_sqrt_f;
        row[j] = 1.f + s + 0.5f * s * s;
      }
    } else {
      for (long j = 0; j < nb; ++j) {
        const float t = dot(ai, b + j * b_stride, f);
        row[j] = t * t * inv_f;
      }
    }
  }
}

void expanded_kernel_backward(float* da, float* db, const float* dscores, const float* a, const float* b, long na,
                              long nb, long a_stride, long b_stride, int f, ExpandedKind kind) {
  const char* fn = "expanded_kernel_backward";
  check_sizes(fn, na, f, kind);
  check_sizes(fn, nb, f, kind);
  if (na == 0 || nb == 0) return;
  check_stride(fn, "a", a_stride, f);
  check_stride(fn, "b", b_stride, f);
  LASP_CHECK(da && db && dscores && a && b, "{}: null pointer (da={}, db={}, dscores={}, a={}, b={})", fn,
             (const void*)da, (const void*)db, (const void*)dscores, (const void*)a, (const void*)b);
  LASP_CHECK(da != a && da != b && db != a && db != b, "{}: the gradients must not alias a or b", fn);
  const float inv_f = 1.f / f, inv_sqrt_f = float(1 / std::sqrt(double(f)));
  for (long i = 0; i < na; ++i) {
    const float* ai = a + i * a_stride;
    float* dai = da + i * a_stride;
    for (long j = 0; j < nb; ++j) {
      const float* bj = b + j * b_stride;
      float* dbj = db + j * b_stride;
      const float t = dot(ai, bj, f);
      // dscore / d(a_i . b_j): based (1 + s) / sqrt(f), rebased 2 t / f.
      const float w = dscores[i * nb + j] *
                      (kind == ExpandedKind::based ? (1.f + t * inv_sqrt_f) * inv_sqrt_f : 2.f * t * inv_f);
      for (int c = 0; c < f; ++c) dai[c] += w * bj[c];
      for (int c = 0; c < f; ++c) dbj[c] += w * ai[c];
    }
  }
}

void expanded_phi_forward_columns(float* phit, long ldp, const float* ut, long ldu, long n, int f, ExpandedKind kind) {
  const char* fn = "expanded_phi_forward_columns";
  check_sizes(fn, n, f, kind);
  if (n == 0) return;
  LASP_CHECK(ldu >= n && ldp >= n, "{}: the row strides must be >= n = {}, got ldu={} ldp={}", fn, n, ldu, ldp);
  LASP_CHECK(phit && ut, "{}: null pointer (phit={}, ut={})", fn, (const void*)phit, (const void*)ut);
  const Layout L = layout(f, kind);
  if (L.affine) {
    for (long r = 0; r < n; ++r) phit[r] = 1.f;
    for (int i = 0; i < f; ++i) {
      float* out = phit + (1 + i) * ldp;
      const float* u = ut + i * ldu;
#pragma omp simd
      for (long r = 0; r < n; ++r) out[r] = L.lin * u[r];
    }
  }
  for (int i = 0; i < f; ++i) {
    float* out = phit + (L.diag + i) * ldp;
    const float* u = ut + i * ldu;
#pragma omp simd
    for (long r = 0; r < n; ++r) out[r] = L.sq * u[r] * u[r];
  }
  long p = L.pairs;
  for (int i = 0; i < f - 1; ++i) {
    const float* ui = ut + i * ldu;
    for (int j = i + 1; j < f; ++j, ++p) {
      float* out = phit + p * ldp;
      const float* uj = ut + j * ldu;
#pragma omp simd
      for (long r = 0; r < n; ++r) out[r] = L.pair * ui[r] * uj[r];
    }
  }
}

void expanded_phi_backward_columns(float* dut, const float* gt, long ldg, const float* ut, long ldu, long n, int f,
                                   ExpandedKind kind) {
  const char* fn = "expanded_phi_backward_columns";
  check_sizes(fn, n, f, kind);
  if (n == 0) return;
  LASP_CHECK(ldu >= n && ldg >= n, "{}: the row strides must be >= n = {}, got ldu={} ldg={}", fn, n, ldu, ldg);
  LASP_CHECK(dut && gt && ut, "{}: null pointer (dut={}, gt={}, ut={})", fn, (const void*)dut, (const void*)gt,
             (const void*)ut);
  LASP_CHECK(dut != ut && dut != gt, "{}: dut must differ from ut and gt", fn);
  const Layout L = layout(f, kind);
  // du_i = lin g_lin,i + 2 sq g_ii u_i + pair sum_{j != i} g_ij u_j   (g_ij: the pair feature of i < j)
  for (int i = 0; i < f; ++i) {
    float* du = dut + i * ldu;
    const float *u = ut + i * ldu, *gd = gt + (L.diag + i) * ldg;
    const float two_sq = 2 * L.sq;
#pragma omp simd
    for (long r = 0; r < n; ++r) du[r] += two_sq * gd[r] * u[r];
    if (L.affine) {
      const float* gl = gt + (1 + i) * ldg;
#pragma omp simd
      for (long r = 0; r < n; ++r) du[r] += L.lin * gl[r];
    }
  }
  long p = L.pairs;
  for (int i = 0; i < f - 1; ++i) {
    const float* ui = ut + i * ldu;
    float* dui = dut + i * ldu;
    for (int j = i + 1; j < f; ++j, ++p) {
      const float *uj = ut + j * ldu, *g = gt + p * ldg;
      float* duj = dut + j * ldu;
#pragma omp simd
      for (long r = 0; r < n; ++r) {
        const float gp = L.pair * g[r];
        dui[r] += gp * uj[r];
        duj[r] += gp * ui[r];
      }
    }
  }
}

void expanded_kernel_of_dots(float* x, long n, int f, ExpandedKind kind) {
  check_sizes("expanded_kernel_of_dots", n, f, kind);
  const float inv_f = 1.f / f, inv_sqrt_f = float(1 / std::sqrt(double(f)));
  if (kind == ExpandedKind::based) {
#pragma omp simd
    for (long i = 0; i < n; ++i) {
      const float s = x[i] * inv_sqrt_f;
      x[i] = 1.f + s + 0.5f * s * s;
    }
  } else {
#pragma omp simd
    for (long i = 0; i < n; ++i) x[i] = x[i] * x[i] * inv_f;
  }
}

void expanded_kernel_of_dots_backward(float* w, const float* ds, const float* t, long n, int f, ExpandedKind kind) {
  check_sizes("expanded_kernel_of_dots_backward", n, f, kind);
  const float inv_f = 1.f / f, inv_sqrt_f = float(1 / std::sqrt(double(f)));
  if (kind == ExpandedKind::based) {
#pragma omp simd
    for (long i = 0; i < n; ++i) w[i] = ds[i] * (1.f + t[i] * inv_sqrt_f) * inv_sqrt_f;
  } else {
    const float two_f = 2.f * inv_f;
#pragma omp simd
    for (long i = 0; i < n; ++i) w[i] = ds[i] * t[i] * two_f;
  }
}

}  // namespace lasp
