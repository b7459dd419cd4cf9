#include "sp/lasp1.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace lasp {

Lasp1Attention::Lasp1Attention(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers)
    : sp_(sp),
      s_(shape),
      mine_(sp_pieces(global_N, sp.size(), sp.rank(), layout)),
      owner_(sp_piece_owners(global_N, sp.size(), layout)),
      incoming_(layers),
      softmax_(sp, shape, global_N, layout, layers),
      halo_(shape.delta ? std::make_unique<ConvHalo>(sp, shape.B, shape.N, layout) : nullptr) {
  const LinearAttentionShape piece = s_.linear_kernel(1, mine_[0].length, s_.H);
  const LinearAttentionShape gla = s_.gla_kernel(1, mine_[0].length, s_.H);
  const DeltaRuleShape delta = s_.delta_kernel(1, mine_[0].length);
  ws_.storage.resize(std::max({linear_attention_forward_workspace_floats(piece),
                               linear_attention_backward_workspace_floats(piece), gla_forward_workspace_floats(gla),
                               gla_backward_workspace_floats(gla),
                               s_.delta ? delta_rule_forward_workspace_floats(delta) : size_t(0),
                               s_.delta ? delta_rule_backward_workspace_floats(delta) : size_t(0)}));
}

Attention::ConvRuns Lasp1Attention::conv_halo(int, float* halo, const float* x, int C, int K) {
  LASP_CHECK(halo_, "LASP-1: a convolution halo asked of an attention made without the gated delta rule");
  return halo_->forward(halo, x, local_starts(), C, K);
}

void Lasp1Attention::conv_halo_backward(int, float* dx, const float* dhalo, int C, int K) {
  halo_->backward(dx, dhalo, local_starts(), C, K);
}

void Lasp1Attention::linear_forward(int layer, float* o, const float* q, const float* k, const float* v,
                                    const LinearGates& gates) {
  const int H = s_.H, HV = s_.value_heads(), pieces = int(owner_.size()), me = sp_.rank();
  const size_t S = state_floats(), row_state = size_t(HV) * s_.state_floats();  // all pieces', one row's
  auto& incoming = incoming_[layer];
  incoming.assign(mine_.size() * S, 0.f);
  std::vector<float> out(S);
  for (int p = 0; p < pieces; ++p) {
    const auto [r, i] = owner_[p];
    if (r != me) continue;
    float* P = incoming.data() + size_t(i) * S;
    if (p > 0) {  // wait for the state from the previous piece's holder (the serial chain)
      const auto [prev_rank, prev_i] = owner_[p - 1];
      if (prev_rank != me) sp_.send_recv(nullptr, 0, -1, P, S, prev_rank);
      else std::memcpy(P, out.data(), sizeof(float) * S);  // our own previous piece
    }
    const Piece& piece = mine_[i];
    for (int b = 0; b < s_.B; ++b) {
      const long token = long(b) * s_.N + piece.offset, kr = token * H * s_.qk_width(), vr = token * HV * s_.dv;
      const uint8_t* flags = softmax_.documents().flags(b, piece.offset);
      const float* state_in = p > 0 ? P + size_t(b) * row_state : nullptr;
      float* state_out = out.data() + size_t(b) * row_state;
      if (gates.delta())  // the delta rule's state passes on as it is: no transition travels
        delta_rule_forward(o + vr, state_out, q + kr, k + kr, v + vr, gates.beta + token * HV,
                           gates.log_gates + token * HV, state_in, flags, s_.delta_kernel(1, piece.length), ws_.view());
      else if (gates.gla())  // the same chain: GLA's state passes on with the piece's gates applied by the kernel
        gla_forward(o + vr, state_out, q + kr, k + kr, v + vr, gates.log_gates + kr, state_in, flags,
                    s_.gla_kernel(1, piece.length, H), ws_.view());
      else
        linear_attention_forward(o + vr, state_out, q + kr, k + kr, v + vr, state_in, gates.lambda, flags,
                                 s_.linear_kernel(1, piece.length, H), ws_.view());
    }
    if (p + 1 < pieces && owner_[p + 1].first != me) sp_.send_recv(out.data(), S, owner_[p + 1].first, nullptr, 0, -1);
  }
}

double Lasp1Attention::memory_floats(const std::string& layer_types) const {
  const double linear = double(std::count(layer_types.begin(), layer_types.end(), 'L'));
  const double softmax = double(layer_types.size()) - linear;
  const double states = double(state_floats());
  return double(ws_.storage.size()) + 4 * states + linear * double(mine_.size()) * states +
         softmax_.memory_floats(int(softmax), s_.H_kv);
}

void Lasp1Attention::linear_backward(int layer, float* dq, float* dk, float* dv, const float* dout, const float* q,
                                     const float* k, const float* v, const LinearGates& gates) {
  const int H = s_.H, HV = s_.value_heads(), pieces = int(owner_.size()), me = sp_.rank();
  const size_t S = state_floats(), row_state = size_t(HV) * s_.state_floats();
  const auto& incoming = incoming_[layer];
  std::vector<float> dstate_out(S), dstate_in(S);
  if (gates.delta()) {  // the kernel accumulates its gates' gradients; the seam writes them
    const size_t n = size_t(s_.B) * s_.N * HV;
    std::fill(gates.d_beta, gates.d_beta + n, 0.f);
    std::fill(gates.d_log_gates, gates.d_log_gates + n, 0.f);
  }
  for (int p = pieces - 1; p >= 0; --p) {
    const auto [r, i] = owner_[p];
    if (r != me) continue;
    if (p + 1 < pieces) {  // the gradient of the state leaving this piece, from the next piece's holder
      const int next_rank = owner_[p + 1].first;
      if (next_rank != me) sp_.send_recv(nullptr, 0, -1, dstate_out.data(), S, next_rank);
      else dstate_out = dstate_in;
    }
    std::fill(dstate_in.begin(), dstate_in.end(), 0.f);
    const Piece& piece = mine_[i];
    const float* P = incoming.data() + size_t(i) * S;
    for (int b = 0; b < s_.B; ++b) {
      const long token = long(b) * s_.N + piece.offset, kr = token * H * s_.qk_width(), vr = token * HV * s_.dv;
      float* dstate = p > 0 ? dstate_in.data() + size_t(b) * row_state : nullptr;
      const float* dleaving = p + 1 < pieces ? dstate_out.data() + size_t(b) * row_state : nullptr;
      const float* state_in = p > 0 ? P + size_t(b) * row_state : nullptr;
      const uint8_t* flags = softmax_.documents().flags(b, piece.offset);
      if (gates.delta())
        delta_rule_backward(dq + kr, dk + kr, dv + vr, gates.d_beta + token * HV, gates.d_log_gates + token * HV, dstate,
                            dout + vr, dleaving, q + kr, k + kr, v + vr, gates.beta + token * HV,
                            gates.log_gates + token * HV, state_in, flags, s_.delta_kernel(1, piece.length), ws_.view());
      else if (gates.gla())  // the piece's whole gate gradient: what follows reaches it through dleaving
        gla_backward(dq + kr, dk + kr, dv + vr, gates.d_log_gates + kr, dstate, dout + vr, dleaving, q + kr, k + kr,
                     v + vr, gates.log_gates + kr, state_in, flags, s_.gla_kernel(1, piece.length, H), ws_.view());
      else
        linear_attention_backward(dq + kr, dk + kr, dv + vr, dstate, dout + vr, dleaving, q + kr, k + kr, v + vr,
                                  state_in, gates.lambda, flags, s_.linear_kernel(1, piece.length, H), ws_.view());
    }
    if (p > 0 && owner_[p - 1].first != me) sp_.send_recv(dstate_in.data(), S, owner_[p - 1].first, nullptr, 0, -1);
  }
}

}  // namespace lasp
