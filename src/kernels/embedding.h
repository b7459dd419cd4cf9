// Token embedding lookup: out[t] = table[tokens[t]].
#pragma once

namespace lasp {

// out (T,D), tokens (T) each in [0, V), table (V,D).
void embedding_forward(float* out, const int* tokens, const float* table, int T, int D, int V);

// Accumulates: dtable[tokens[t]] += dout[t] for every t (race-free: threads own column ranges).
void embedding_backward(float* dtable, const float* dout, const int* tokens, int T, int D, int V);

}  // namespace lasp
