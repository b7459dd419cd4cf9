#include "sp/state_passing.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/linear_attention.h"
#include "sp/piece_states.h"

namespace lasp {

float PieceGates::at(int piece, int b, int h) const {
  if (cut && cut[size_t(piece) * B + b]) return 0.f;
  return decay_power(lambda ? double(lambda[h]) : 1.0, piece_len);
}

void PieceGates::transition_of(const StateForm& f, float* A, int local, int piece, size_t x, bool adjoint) const {
  const Transition own = transition();
  LASP_CHECK(own <= f.transition && f.transition != Transition::identity, "state passing: a {} transition cannot "
             "travel as a {} one", to_string(own), to_string(f.transition));
  const size_t head = size_t(local) * B * H + x;
  std::fill(A, A + f.transition_floats(), 0.f);
  if (own == Transition::full) {
    std::copy(matrices + head * dk * dk, matrices + (head + 1) * dk * dk, A);
    if (adjoint) transpose_transition(f, A);
    return;
  }
  for (int r = 0; r < (f.transition == Transition::scalar ? 1 : dk); ++r) {
    const float g = own == Transition::diagonal ? rows[head * dk + r] : at(piece, int(x) / H, int(x) % H);
    A[f.transition == Transition::full ? size_t(r) * dk + r : size_t(r)] = g;
  }
}

namespace {

// The paper's LASP-2: every piece's state reaches every rank, which folds them in piece order. Fixed decays and
// document cuts are known on every rank, so only the states travel; GLA's per-row gates (and the delta rule's
// matrices) travel with their states as pairs (A | M), d_k (d_k^2) + d_k d_v floats per head.
class GatherPassing final : public StatePassing {
 public:
  GatherPassing(Comm& sp, const PassingShape& shape)
      : sp_(sp), s_(shape), recv_(size_t(sp.size()) * shape.mine.size() * shape.piece_floats()) {}

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    gates_ = gates;
    forward_ = forward;
    if (gates.transition() == Transition::scalar)
      return sp_.all_gather_start(own, recv_.data(), s_.mine.size() * s_.piece_floats());
    const StateForm f = form();
    const size_t heads = s_.heads(), pair = f.pair_floats();
    send_pairs_.resize(s_.mine.size() * heads * pair);
    recv_pairs_.resize(size_t(sp_.size()) * send_pairs_.size());
    for (size_t i = 0; i < s_.mine.size(); ++i)
      for (size_t x = 0; x < heads; ++x) {
        float* p = send_pairs_.data() + (i * heads + x) * pair;
        gates.transition_of(f, p, int(i), s_.mine[i].index, x, !forward);  // backward: the adjoint pair's
        std::memcpy(p + f.transition_floats(), own + i * s_.piece_floats() + x * f.state_floats(),
                    sizeof(float) * f.state_floats());
      }
    return sp_.all_gather_start(send_pairs_.data(), recv_pairs_.data(), send_pairs_.size());
  }

  void finish(float* out) override { fold(out, nullptr); }
  void final_state(float* out) override { fold(nullptr, out); }  // every rank has every piece: fold them all

  size_t memory_floats() const override {
    return recv_.size() + send_pairs_.size() + recv_pairs_.size() + transitions_.size();
  }

 private:
  StateForm form() const { return {gates_.transition(), s_.dk, s_.dv}; }

  // The gathered pieces as pairs in global order, folded (backward: from the last piece down).
  void fold(float* out, float* total) {
    const StateForm f = form();
    const int pieces = int(s_.owner.size());
    const size_t heads = s_.heads(), mine = s_.mine.size();
    PiecePairs pairs;
    if (f.transition == Transition::scalar) {  // the transitions from the gates every rank knows
      transitions_.resize(size_t(pieces) * heads);
      pairs.a_stride = 1, pairs.b_stride = f.state_floats();
      for (int p = 0; p < pieces; ++p) {
        const auto [r, i] = s_.owner[p];
        for (size_t x = 0; x < heads; ++x) transitions_[size_t(p) * heads + x] = gates_.at(p, int(x) / s_.H, int(x) % s_.H);
        pairs.a.push_back(transitions_.data() + size_t(p) * heads);
        pairs.b.push_back(recv_.data() + (size_t(r) * mine + i) * s_.piece_floats());
      }
    } else {
      pairs.a_stride = pairs.b_stride = f.pair_floats();
      for (int p = 0; p < pieces; ++p) {
        const auto [r, i] = s_.owner[p];
        pairs.a.push_back(recv_pairs_.data() + (size_t(r) * mine + i) * heads * f.pair_floats());
        pairs.b.push_back(pairs.a.back() + f.transition_floats());
      }
    }
    fold_piece_pairs(f, pairs, s_.owner, sp_.rank(), heads, forward_ || total, out, total);
  }

  Comm& sp_;
  PassingShape s_;
  std::vector<float> recv_;                     // (W, pieces, B, H, d_k, d_v)
  std::vector<float> send_pairs_, recv_pairs_;  // GLA, delta: (pieces, B, H) pairs, and (W, ...) gathered
  std::vector<float> transitions_;              // (all pieces, B, H): fixed decays' scalars
  PieceGates gates_;
  bool forward_ = true;
};

}  // namespace

std::unique_ptr<StatePassing> make_state_passing(StatePassingKind kind, Comm& sp, const PassingShape& shape,
                                                 int slices) {
  switch (kind) {
    case StatePassingKind::gather: return std::make_unique<GatherPassing>(sp, shape);
    case StatePassingKind::exscan: return make_exscan_passing(sp, shape);
    case StatePassingKind::allscan: return make_allscan_passing(sp, shape, slices);
  }
  throw Error("unknown state passing");
}

}  // namespace lasp
