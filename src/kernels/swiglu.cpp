#include "kernels/swiglu.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/vec_math.h"

namespace lasp {

namespace {

template <GradStore S>
void swiglu_backward_loop(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n) {
#pragma omp parallel for simd if (n > 32768)
  for (long i = 0; i < n; ++i) {
    const float g = gate[i], s = vec_sigmoid(g), go = dout[i];
    store_grad<S>(dgate[i], go * up[i] * s * (1.f + g * (1.f - s)));
    store_grad<S>(dup[i], go * g * s);
  }
}

void check_args(const char* name, long n, const void* a, const void* b, const void* c) {
  LASP_CHECK(n >= 0, "{}: n must be >= 0, got {}", name, n);
  LASP_CHECK(n == 0 || (a && b && c), "{}: null pointer ({}, {}, {})", name, a, b, c);
}

// The bf16 forms: blocks of kBlock values computed into the thread's fp32 buffer (in L1), then rounded out.
constexpr long kBlock = 2048;

}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, long n) {
  check_args("swiglu_forward", n, out, gate, up);
  if (n == 0) return;
#pragma omp parallel for simd if (n > 32768)
  for (long i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g * vec_sigmoid(g) * up[i];
  }
}

namespace {

inline float widen(float x) { return x; }
inline float widen(bf16 x) { return __builtin_bit_cast(float, uint32_t(x) << 16); }

template <typename T>
void forward_bf16(bf16* out, const T* gate, const T* up, long n) {
  check_args("swiglu_forward_bf16", n, out, gate, up);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (long at = 0; at < n; at += kBlock) {
    const long m = std::min(kBlock, n - at);
    float y[kBlock];
#pragma omp simd
    for (long i = 0; i < m; ++i) {
      const float g = widen(gate[at + i]);
      y[i] = g * vec_sigmoid(g) * widen(up[at + i]);
    }
    to_bf16_serial(out + at, y, size_t(m));
  }
}

template <typename T>
void backward_bf16(bf16* dgate, bf16* dup, long ld, const float* dout, const T* gate, const T* up, long rows,
                   long width) {
  check_args("swiglu_backward_bf16", rows * width, dgate, dout, gate);
  LASP_CHECK(rows >= 0 && width >= 0 && ld >= width, "swiglu_backward_bf16: expected rows, width >= 0 and ld >= width, "
             "got rows={} width={} ld={}", rows, width, ld);
  if (rows * width == 0) return;
  LASP_CHECK(up && dup, "swiglu_backward_bf16: null up or dup");
  // dgate's and dup's rows must not overlap: far apart, or interleaved in the rows of one operand
  const long off = dup - dgate, span = (rows - 1) * ld + width, phase = (off % ld + ld) % ld;
  LASP_CHECK(off >= span || -off >= span || (phase >= width && phase <= ld - width),
             "swiglu_backward_bf16: dgate's and dup's rows overlap (rows={} width={} ld={}, dup - dgate = {})", rows,
             width, ld, off);
#pragma omp parallel for schedule(static) if (rows * width > 32768)
  for (long r = 0; r < rows; ++r)
    for (long c = 0; c < width; c += kBlock) {
      const long m = std::min(kBlock, width - c), at = r * width + c;
      float dg[kBlock], du[kBlock];
#pragma omp simd
      for (long i = 0; i < m; ++i) {
        const float g = widen(gate[at + i]), s = vec_sigmoid(g), go = dout[at + i];
        dg[i] = go * widen(up[at + i]) * s * (1.f + g * (1.f - s));
        du[i] = go * g * s;
      }
      to_bf16_serial(dgate + r * ld + c, dg, size_t(m));
      to_bf16_serial(dup + r * ld + c, du, size_t(m));
    }
}

}  // namespace

void swiglu_forward_bf16(bf16* out, const float* gate, const float* up, long n) { forward_bf16(out, gate, up, n); }
void swiglu_forward_bf16(bf16* out, const bf16* gate, const bf16* up, long n) { forward_bf16(out, gate, up, n); }

void swiglu_backward_bf16(bf16* dgate, bf16* dup, long ld, const float* dout, const float* gate, const float* up,
                          long rows, long width) {
  backward_bf16(dgate, dup, ld, dout, gate, up, rows, width);
}
void swiglu_backward_bf16(bf16* dgate, bf16* dup, long ld, const float* dout, const bf16* gate, const bf16* up,
                          long rows, long width) {
  backward_bf16(dgate, dup, ld, dout, gate, up, rows, width);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n,
                     GradStore store) {
  LASP_CHECK(n >= 0, "swiglu_backward: n must be >= 0, got {}", n);
  if (n == 0) return;
  LASP_CHECK(dgate && dup && dout && gate && up,
             "swiglu_backward: null pointer (dgate={}, dup={}, dout={}, gate={}, up={})", (const void*)dgate,
             (const void*)dup, (const void*)dout, (const void*)gate, (const void*)up);
  LASP_CHECK(dgate != dup && dgate != dout && dup != dout && dgate != gate && dgate != up && dup != gate &&
                 dup != up,
             "swiglu_backward: gradients must not alias each other, dout, gate or up");
  if (store == GradStore::add) swiglu_backward_loop<GradStore::add>(dgate, dup, dout, gate, up, n);
  else swiglu_backward_loop<GradStore::overwrite>(dgate, dup, dout, gate, up, n);
}

}  // namespace lasp
