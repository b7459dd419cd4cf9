#include "sp/allgather.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/masked_product.h"

namespace lasp {

AllGatherAttention::AllGatherAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                       int layers)
    : s_(shape),
      kv_(sp, shape, global_N, layout, layers),
      ws_(masked_product_workspace_floats(shape.N, global_N, shape.threads)) {}

double AllGatherAttention::memory_floats(const std::string& layer_types) const {
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear;
  return double(ws_.storage.size()) + kv_.memory_floats(int(linear), s_.H) + kv_.memory_floats(int(softmax), s_.H_kv);
}

void AllGatherAttention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                        const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "allgather");
  const int B = s_.B, Nl = s_.N, H = s_.H, d = s_.d, N = kv_.global_length();
  const float* kv = kv_.gather_kv(layer, k, v, H);
  std::fill(o, o + size_t(B) * Nl * H * d, 0.f);
  masked_product_forward(o, q, kv, kv + size_t(B) * N * H * d, positions(), kv_.gathered_positions(),
                         kv_.documents().local.first_positions(), B, Nl, N, H, d, N,
                         lambda, s_.threads, ws_.view());
}

void AllGatherAttention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout,
                                         const float* q, const float*, const float*, const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "allgather");
  const int B = s_.B, Nl = s_.N, H = s_.H, d = s_.d, N = kv_.global_length();
  const float* kv = kv_.gathered_kv(layer);
  float* dkv = kv_.zeroed_dkv(H);
  const size_t all = size_t(B) * N * H * d;
  masked_product_backward(dq, dkv, dkv + all, dout, q, kv, kv + all, positions(), kv_.gathered_positions(),
                          kv_.documents().local.first_positions(), B, Nl, N, H,
                          d, N, lambda, s_.threads, ws_.view());
  kv_.scatter_dkv(dk, dv, H);
}

}  // namespace lasp
