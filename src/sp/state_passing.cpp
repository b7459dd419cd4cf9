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

namespace {

// The paper's LASP-2: every piece's state reaches every rank, which folds them in piece order.
class GatherPassing final : public StatePassing {
 public:
  GatherPassing(Comm& sp, const PassingShape& shape)
      : sp_(sp), s_(shape), recv_(size_t(sp.size()) * shape.mine.size() * shape.piece_floats()) {}

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    gates_ = gates;
    forward_ = forward;
    return sp_.all_gather_start(own, recv_.data(), s_.mine.size() * s_.piece_floats());
  }

  void finish(float* out) override {
    scan_piece_states(out, recv_.data(), s_.owner, sp_.rank(), s_.B, s_.H, s_.d, gates_.lambda, gates_.piece_len,
                      forward_, gates_.cut);
  }

  void final_state(float* out) override {  // every rank has every piece: fold them all
    const size_t dd = size_t(s_.d) * s_.d, per_rank = s_.mine.size() * s_.piece_floats();
    std::fill(out, out + size_t(s_.B) * s_.H * dd, 0.f);
    for (int p = 0; p < int(s_.owner.size()); ++p) {
      const auto [r, i] = s_.owner[p];
      for (int b = 0; b < s_.B; ++b)
        for (int h = 0; h < s_.H; ++h) {
          const float f = gates_.at(p, b, h);
          const size_t at = (size_t(b) * s_.H + h) * dd;
          const float* m = recv_.data() + size_t(r) * per_rank + size_t(i) * s_.piece_floats() + at;
          for (size_t x = 0; x < dd; ++x) out[at + x] = f * out[at + x] + m[x];
        }
    }
  }

  size_t memory_floats() const override { return recv_.size(); }

 private:
  Comm& sp_;
  PassingShape s_;
  std::vector<float> recv_;  // (W, pieces, B, H, d, d)
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
