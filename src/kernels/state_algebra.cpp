#include "kernels/state_algebra.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace lasp {

const char* to_string(Transition t) {
  switch (t) {
    case Transition::identity: return "identity";
    case Transition::scalar: return "scalar";
    case Transition::diagonal: return "diagonal";
    case Transition::full: return "full";
  }
  return "?";
}

size_t StateForm::transition_floats() const {
  switch (transition) {
    case Transition::identity: return 0;
    case Transition::scalar: return 1;
    case Transition::diagonal: return size_t(dk);
    case Transition::full: return size_t(dk) * size_t(dk);
  }
  return 0;
}

size_t StateForm::scratch_floats() const {
  return transition == Transition::full ? size_t(dk) * size_t(std::max(dk, dv)) : 0;
}

void pair_identity(const StateForm& f, float* pair) {
  const size_t a = f.transition_floats();
  std::fill(pair, pair + f.pair_floats(), 0.f);
  if (f.transition == Transition::scalar) pair[0] = 1.f;
  if (f.transition == Transition::diagonal) std::fill(pair, pair + a, 1.f);
  if (f.transition == Transition::full)
    for (int i = 0; i < f.dk; ++i) pair[size_t(i) * f.dk + i] = 1.f;
}

void pair_cut(const StateForm& f, float* pair) {
  LASP_CHECK(f.transition != Transition::identity, "pair_cut: an identity transition cannot be cut (a document "
             "start needs a transition of its own: scalar 1 for no decay)");
  std::fill(pair, pair + f.transition_floats(), 0.f);
}

namespace {

// out (n x m) = A (n x n) X (n x m), row-major, out distinct from A and X.
void square_times(float* out, const float* A, const float* X, int n, int m) {
  for (int i = 0; i < n; ++i) {
    float* row = out + size_t(i) * m;
    std::fill(row, row + m, 0.f);
    for (int k = 0; k < n; ++k) {
      const float a = A[size_t(i) * n + k];
      if (a == 0.f) continue;
      const float* x = X + size_t(k) * m;
      for (int j = 0; j < m; ++j) row[j] += a * x[j];
    }
  }
}

}  // namespace

void apply_transition(const StateForm& f, float* out, const float* A, const float* S, bool accumulate,
                      float* scratch) {
  const int dk = f.dk, dv = f.dv;
  const size_t n = f.state_floats();
  switch (f.transition) {
    case Transition::identity:
      for (size_t x = 0; x < n; ++x) out[x] = accumulate ? out[x] + S[x] : S[x];
      return;
    case Transition::scalar:
      for (size_t x = 0; x < n; ++x) out[x] = accumulate ? out[x] + A[0] * S[x] : A[0] * S[x];
      return;
    case Transition::diagonal:
      for (int i = 0; i < dk; ++i)
        for (int j = 0; j < dv; ++j) {
          const size_t x = size_t(i) * dv + j;
          out[x] = accumulate ? out[x] + A[i] * S[x] : A[i] * S[x];
        }
      return;
    case Transition::full:
      square_times(scratch, A, S, dk, dv);  // out may be S
      for (size_t x = 0; x < n; ++x) out[x] = accumulate ? out[x] + scratch[x] : scratch[x];
      return;
  }
}

void advance_state(const StateForm& f, float* S, const float* A, const float* B, float* scratch) {
  apply_transition(f, S, A, S, false, scratch);
  for (size_t x = 0; x < f.state_floats(); ++x) S[x] += B[x];
}

void advance_state(const StateForm& f, float* S, const float* pair, float* scratch) {
  advance_state(f, S, pair, pair + f.transition_floats(), scratch);
}

void compose_pairs(const StateForm& f, const float* first, float* then, float* scratch) {
  const size_t a = f.transition_floats();
  float* At = then;
  // B: A_t B_f + B_t, with the later pair's transition before it changes.
  apply_transition(f, then + a, At, first + a, true, scratch);
  switch (f.transition) {
    case Transition::identity: return;
    case Transition::scalar: At[0] *= first[0]; return;
    case Transition::diagonal:
      for (size_t i = 0; i < a; ++i) At[i] *= first[i];
      return;
    case Transition::full:
      square_times(scratch, At, first, f.dk, f.dk);
      std::memcpy(At, scratch, sizeof(float) * a);
      return;
  }
}

void transpose_transition(const StateForm& f, float* A) {
  if (f.transition != Transition::full) return;
  for (int i = 0; i < f.dk; ++i)
    for (int j = i + 1; j < f.dk; ++j) std::swap(A[size_t(i) * f.dk + j], A[size_t(j) * f.dk + i]);
}

void add_transition_gradient(const StateForm& f, float* dA, const float* G, const float* S) {
  const int dk = f.dk, dv = f.dv;
  switch (f.transition) {
    case Transition::identity: return;
    case Transition::scalar: {
      double s = 0;
      for (size_t x = 0; x < f.state_floats(); ++x) s += double(G[x]) * S[x];
      dA[0] += float(s);
      return;
    }
    case Transition::diagonal:
      for (int i = 0; i < dk; ++i) {
        double s = 0;
        for (int j = 0; j < dv; ++j) s += double(G[size_t(i) * dv + j]) * S[size_t(i) * dv + j];
        dA[i] += float(s);
      }
      return;
    case Transition::full:
      for (int i = 0; i < dk; ++i)
        for (int k = 0; k < dk; ++k) {
          double s = 0;
          for (int j = 0; j < dv; ++j) s += double(G[size_t(i) * dv + j]) * S[size_t(k) * dv + j];
          dA[size_t(i) * dk + k] += float(s);
        }
      return;
  }
}

}  // namespace lasp
