#include "kernels/embedding.h"

#include <omp.h>

#include "core/check.h"

namespace lasp {

namespace {

void embedding_check(const char* name, const void* out, const int* tokens, const void* in, int T, int D, int V) {
  LASP_CHECK(T >= 0, "{}: T must be >= 0, got {}", name, T);
  LASP_CHECK(D > 0, "{}: D must be > 0, got {}", name, D);
  LASP_CHECK(V > 0, "{}: V must be > 0, got {}", name, V);
  if (T == 0) return;
  LASP_CHECK(out && tokens && in, "{}: null pointer", name);
  for (int t = 0; t < T; ++t)
    LASP_CHECK(tokens[t] >= 0 && tokens[t] < V, "{}: token at position {} must be in [0, {}), got {}", name, t, V,
               tokens[t]);
}

}  // namespace

void embedding_forward(float* out, const int* tokens, const float* table, int T, int D, int V) {
  embedding_check("embedding_forward", out, tokens, table, T, D, V);
#pragma omp parallel for if ((long)T * D > 16384)
  for (int t = 0; t < T; ++t) {
    const float* row = table + (long)tokens[t] * D;
    float* o = out + (long)t * D;
    for (int i = 0; i < D; ++i) o[i] = row[i];
  }
}

void embedding_backward(float* dtable, const float* dout, const int* tokens, int T, int D, int V) {
  embedding_check("embedding_backward", dtable, tokens, dout, T, D, V);
  if (T == 0) return;
  // Tokens repeat, so rows of dtable collide: each thread owns a contiguous range of columns instead.
#pragma omp parallel if ((long)T * D > 16384)
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int i0 = (int)((long)D * id / nt), i1 = (int)((long)D * (id + 1) / nt);
    if (i1 > i0) {
      for (int t = 0; t < T; ++t) {
        float* dst = dtable + (long)tokens[t] * D;
        const float* src = dout + (long)t * D;
        for (int i = i0; i < i1; ++i) dst[i] += src[i];
      }
    }
  }
}

}  // namespace lasp
