// Shared helpers for kernel tests: deterministic random inputs, double-precision copies, the normalized
// error of ggml (mse(a, b) / mse(a, 0)), central finite differences and the expected lasp::Error.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <sys/wait.h>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/check.h"
#include "core/file.h"

namespace lasp::testing {

inline std::vector<float> random_vector(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// f() throws a lasp::Error whose message contains needle (a test failure otherwise).
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected lasp::Error containing '" << needle << "', nothing was thrown";
  } catch (const lasp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' lacks '" << needle << "'";
  }
}

// Central differences of L = sum_r f(r, row r) where x holds `rows` rows of `cols`: perturbing an element
// changes only its own row's term, so only that term is recomputed.
inline std::vector<double> rowwise_fd(const std::function<double(long, const double*)>& f, std::vector<double> x,
                                      long rows, long cols, double h = 1e-5) {
  std::vector<double> g(x.size());
  for (long r = 0; r < rows; ++r) {
    double* row = x.data() + r * cols;
    for (long i = 0; i < cols; ++i) {
      const double keep = row[i];
      row[i] = keep + h;
      const double fp = f(r, row);
      row[i] = keep - h;
      const double fm = f(r, row);
      row[i] = keep;
      g[r * cols + i] = (fp - fm) / (2 * h);
    }
  }
  return g;
}

// mse(ref, got) / mse(ref, 0); 0 when both are all zero. ref is the trusted (double) value.
template <class A, class B>
double normalized_error(const std::vector<A>& ref, const std::vector<B>& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double r = double(ref[i]), g = double(got[i]);
    num += (r - g) * (r - g);
    den += r * r;
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return num / den;
}

// Central finite differences of a scalar function f(x) in double precision, for every element of x.
inline std::vector<double> finite_difference(const std::function<double(const std::vector<double>&)>& f,
                                             std::vector<double> x, double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double keep = x[i];
    x[i] = keep + h;
    double fp = f(x);
    x[i] = keep - h;
    double fm = f(x);
    x[i] = keep;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// The same in the values of one member of a problem p (the others fixed): loss(p) as a function of p.*member.
template <class P, class F>
std::vector<double> member_finite_difference(const F& loss, const P& p, std::vector<double> P::*member) {
  return finite_difference(
      [&](const std::vector<double>& x) {
        P moved = p;
        moved.*member = x;
        return loss(moved);
      },
      p.*member);
}

// Runs a shell command; its exit status (128 + signal if killed) and its stdout and stderr together.
struct CommandResult {
  int status;
  std::string output;
};
inline CommandResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed: " + command);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// The tests' temporary folders are core/file.h's.
using lasp::TempDir;

// fp32 results against a double reference: mse(a,b)/mse(a,0) must stay within this.
constexpr double kFp32Tolerance = 1e-10;

// Runs `backward` into zeroed gradients (compared with the finite differences `fd`: 1e-8 normalized, an fp32
// backward against the double reference's) and into pre-filled ones (which must equal prefill + the zero-run
// result: the backward accumulates).
inline void check_backward(const std::vector<std::vector<double>>& fd,
                           const std::function<void(std::vector<std::vector<float>>&)>& backward,
                           const std::string& label) {
  std::vector<std::vector<float>> zero, prefill;
  for (size_t k = 0; k < fd.size(); ++k) {
    zero.emplace_back(fd[k].size(), 0.f);
    prefill.push_back(random_vector(fd[k].size(), 1000 + (uint32_t)k));
  }
  auto filled = prefill;
  backward(zero);
  backward(filled);
  for (size_t k = 0; k < fd.size(); ++k) {
    EXPECT_LE(normalized_error(fd[k], zero[k]), 1e-8) << label << ", gradient " << k << " vs FD";
    std::vector<double> expected(fd[k].size());
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = (double)prefill[k][i] + zero[k][i];
    EXPECT_LE(normalized_error(expected, filled[k]), kFp32Tolerance) << label << ", gradient " << k << " accumulates";
  }
}

}  // namespace lasp::testing
