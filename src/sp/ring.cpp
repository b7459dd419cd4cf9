#include "sp/ring.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/masked_product.h"

namespace lasp {

RingAttention::RingAttention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int)
    : sp_(sp), s_(shape), W_(sp.size()), N_(global_N), layout_(layout) {
  for (int r = 0; r < W_; ++r) rank_positions_.push_back(sp_positions(global_N, W_, r, layout));
  const int threads = shape.threads;
  ws_.storage.resize(std::max(softmax_attention_workspace_floats(shape.N, shape.N, shape.d, threads),
                              masked_product_workspace_floats(shape.N, global_N, threads)));
}

// No layer keeps anything: the travelling blocks ([K | V | dK | dV] and the next one) and partial results.
double RingAttention::memory_floats(const std::string&) const {
  const double block = double(s_.B) * s_.N * std::max(s_.H, s_.H_kv) * s_.d;
  return double(ws_.storage.size()) + 8 * block + 2 * double(s_.B) * s_.N * s_.H * s_.d + double(s_.B) * s_.H * s_.N;
}

template <class Step>
void RingAttention::ring(std::vector<float>& block, size_t count, bool home, Step step) {
  const int me = sp_.rank(), to = (me + 1) % W_, from = (me + W_ - 1) % W_;
  next_.resize(count);
  for (int s = 0; s < W_; ++s) {
    const int owner = (me + W_ - s) % W_;
    // Forward: the next block is on its way while this one is computed. With travelling accumulators the
    // block can move only once its gradients are in, so the hop follows the compute.
    std::unique_ptr<CommRequest> hop;
    if (!home && s + 1 < W_) hop = sp_.send_recv_start(block.data(), count, to, next_.data(), count, from);
    step(owner, block.data());
    if (home) sp_.send_recv(block.data(), count, to, next_.data(), count, from);
    if (hop) hop->wait();
    if (home || s + 1 < W_) std::swap(block, next_);
  }
}

void RingAttention::softmax_forward(int, float* o, float* lse, const float* q, const float* k, const float* v) {
  const int B = s_.B, Nl = s_.N, H = s_.H, Hkv = s_.H_kv, d = s_.d;
  const size_t kv = size_t(B) * Nl * Hkv * d;
  cur_.assign(k, k + kv);
  cur_.insert(cur_.end(), v, v + kv);
  std::fill(o, o + size_t(B) * Nl * H * d, 0.f);
  std::fill(lse, lse + size_t(B) * H * Nl, -INFINITY);
  o_part_.resize(size_t(B) * Nl * H * d);
  lse_part_.resize(size_t(B) * H * Nl);
  const SoftmaxAttentionShape shape = s_.softmax_kernel(B, Nl, Nl, H, Hkv);
  ring(cur_, 2 * kv, false, [&](int owner, const float* block) {
    softmax_attention_forward(o_part_.data(), lse_part_.data(), q, block, block + kv, positions(),
                              rank_positions_[owner].data(), docs_.local.first_positions(), shape, ws_.view());
    softmax_attention_merge(o, lse, o_part_.data(), lse_part_.data(), B, Nl, H, d);  // fp32 log-sum-exp merge
  });
}

void RingAttention::softmax_backward(int, float* dq, float* dk, float* dv, const float* dout, const float* o,
                                     const float* lse, const float* q, const float* k, const float* v) {
  const int B = s_.B, Nl = s_.N, H = s_.H, Hkv = s_.H_kv, d = s_.d;
  const size_t kv = size_t(B) * Nl * Hkv * d;
  cur_.assign(k, k + kv);  // [K | V | dK | dV] travel together
  cur_.insert(cur_.end(), v, v + kv);
  cur_.resize(4 * kv, 0.f);
  const SoftmaxAttentionShape shape = s_.softmax_kernel(B, Nl, Nl, H, Hkv);
  ring(cur_, 4 * kv, true, [&](int owner, float* block) {
    softmax_attention_backward(dq, block + 2 * kv, block + 3 * kv, dout, o, lse, q, block, block + kv, positions(),
                               rank_positions_[owner].data(), docs_.local.first_positions(), shape, ws_.view());
  });
  for (size_t i = 0; i < kv; ++i) {  // the local block is home, with every rank's contribution
    dk[i] += cur_[2 * kv + i];
    dv[i] += cur_[3 * kv + i];
  }
}

void RingAttention::linear_forward(int, float* o, const float* q, const float* k, const float* v, const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "ring");
  const int B = s_.B, Nl = s_.N, H = s_.H, d = s_.d;
  const size_t kv = size_t(B) * Nl * H * d;
  cur_.assign(k, k + kv);
  cur_.insert(cur_.end(), v, v + kv);
  std::fill(o, o + kv, 0.f);
  ring(cur_, 2 * kv, false, [&](int owner, const float* block) {
    masked_product_forward(o, q, block, block + kv, positions(), rank_positions_[owner].data(),
                           docs_.local.first_positions(), B, Nl, Nl, H, d, N_,
                           lambda, s_.threads, ws_.view());
  });
}

void RingAttention::linear_backward(int, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                    const float* k, const float* v, const LinearGates& gates) {
  const float* lambda = fixed_decay(gates, "ring");
  const int B = s_.B, Nl = s_.N, H = s_.H, d = s_.d;
  const size_t kv = size_t(B) * Nl * H * d;
  cur_.assign(k, k + kv);
  cur_.insert(cur_.end(), v, v + kv);
  cur_.resize(4 * kv, 0.f);
  ring(cur_, 4 * kv, true, [&](int owner, float* block) {
    masked_product_backward(dq, block + 2 * kv, block + 3 * kv, dout, q, block, block + kv, positions(),
                            rank_positions_[owner].data(), docs_.local.first_positions(), B, Nl, Nl, H, d, N_, lambda,
                            s_.threads, ws_.view());
  });
  for (size_t i = 0; i < kv; ++i) {
    dk[i] += cur_[2 * kv + i];
    dv[i] += cur_[3 * kv + i];
  }
}

}  // namespace lasp
