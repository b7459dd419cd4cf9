#include "sp/lasp2h.h"

#include <cstring>

#include "core/check.h"

namespace lasp {

Lasp2H::Lasp2H(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers)
    : sp_(sp), s_(shape), global_N_(global_N), W_(sp.size()), layout_(layout), positions_(sp_positions(global_N, W_, sp.rank(), layout)),
      kv_all_(layers) {
  LASP_CHECK(shape.N * W_ == global_N, "LASP-2H: {} tokens per rank x {} ranks != sequence length {}", shape.N, W_,
             global_N);
  for (int r = 0; r < W_; ++r)
    for (int p : sp_positions(global_N, W_, r, layout)) k_pos_.push_back(p);
  ws_.storage.resize(softmax_attention_workspace_floats(shape.N, global_N, shape.d, shape.threads));
}

void Lasp2H::forward(int layer, float* o, float* lse, const float* q, const float* k, const float* v, bool reuse) {
  const float* kv = reuse && !kv_all_.at(layer).empty() ? kv_all_[layer].data() : gather_kv(layer, k, v, s_.H_kv);
  const size_t all = size_t(s_.B) * global_N_ * s_.H_kv * s_.d;
  softmax_attention_forward(o, lse, q, kv, kv + all, positions_.data(), k_pos_.data(), docs_.local.first_positions(),
                            s_.softmax_kernel(s_.B, s_.N, global_N_, s_.H, s_.H_kv), ws_.view());
}

void Lasp2H::backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* o, const float* lse,
                      const float* q) {
  const size_t all = size_t(s_.B) * global_N_ * s_.H_kv * s_.d;
  const float* kv = gathered_kv(layer);
  float* dkv = zeroed_dkv(s_.H_kv);
  softmax_attention_backward(dq, dkv, dkv + all, dout, o, lse, q, kv, kv + all, positions_.data(), k_pos_.data(),
                             docs_.local.first_positions(),
                             s_.softmax_kernel(s_.B, s_.N, global_N_, s_.H, s_.H_kv), ws_.view());
  scatter_dkv(dk, dv, s_.H_kv);
}

double Lasp2H::memory_floats(int layers, int heads) const {
  if (layers == 0) return 0;
  const double global = double(s_.B) * global_N_ * heads * s_.d, local = double(s_.B) * s_.N * heads * s_.d;
  return double(ws_.storage.size()) + layers * 2 * global + 6 * global + 4 * local;
}

std::vector<float> Lasp2H::keys_in_order(int layer, bool values) const {
  const int B = s_.B;
  const size_t row = size_t(s_.H_kv) * s_.d;
  const float* src = kv_all_.at(layer).data() + (values ? size_t(B) * global_N_ * row : 0);
  std::vector<float> out(size_t(B) * global_N_ * row);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < global_N_; ++i)  // gathered key i sits at global position k_pos_[i]
      std::memcpy(out.data() + (size_t(b) * global_N_ + k_pos_[i]) * row, src + (size_t(b) * global_N_ + i) * row, sizeof(float) * row);
  return out;
}

const float* Lasp2H::gather_kv(int layer, const float* k, const float* v, int heads) {
  const int B = s_.B, Nl = s_.N;
  const size_t row = size_t(heads) * s_.d, local = size_t(B) * Nl * row;
  // ONE all-gather of [K | V]
  kv_send_.resize(2 * local);
  std::memcpy(kv_send_.data(), k, sizeof(float) * local);
  std::memcpy(kv_send_.data() + local, v, sizeof(float) * local);
  kv_recv_.resize(2 * local * W_);
  sp_.all_gather(kv_send_.data(), kv_recv_.data(), 2 * local);
  // (W, 2, B, Nl, heads, d) -> (2, B, N, heads, d) with the keys in rank order (k_pos_ says where they sit)
  auto& kv = kv_all_.at(layer);
  kv.resize(2 * size_t(B) * global_N_ * row);
  for (int r = 0; r < W_; ++r)
    for (int part = 0; part < 2; ++part)
      for (int b = 0; b < B; ++b)
        std::memcpy(kv.data() + ((size_t(part) * B + b) * global_N_ + size_t(r) * Nl) * row,
                    kv_recv_.data() + ((size_t(r) * 2 + part) * B + b) * Nl * row, sizeof(float) * Nl * row);
  return kv.data();
}

float* Lasp2H::zeroed_dkv(int heads) {
  dkv_all_.assign(2 * size_t(s_.B) * global_N_ * heads * s_.d, 0.f);
  return dkv_all_.data();
}

void Lasp2H::scatter_dkv(float* dk, float* dv, int heads) {
  const int B = s_.B, Nl = s_.N;
  const size_t row = size_t(heads) * s_.d, local = size_t(B) * Nl * row;
  // (2, B, N, heads, d) -> (W, 2, B, Nl, heads, d), then ONE reduce-scatter to the owners
  dkv_send_.resize(2 * local * W_);
  for (int r = 0; r < W_; ++r)
    for (int part = 0; part < 2; ++part)
      for (int b = 0; b < B; ++b)
        std::memcpy(dkv_send_.data() + ((size_t(r) * 2 + part) * B + b) * Nl * row,
                    dkv_all_.data() + ((size_t(part) * B + b) * global_N_ + size_t(r) * Nl) * row, sizeof(float) * Nl * row);
  dkv_recv_.resize(2 * local);
  sp_.reduce_scatter(dkv_send_.data(), dkv_recv_.data(), 2 * local);
  for (size_t i = 0; i < local; ++i) {
    dk[i] += dkv_recv_[i];
    dv[i] += dkv_recv_[local + i];
  }
}

}  // namespace lasp
