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

// The paper's LASP-2: every piece's state reaches every rank, which folds them in piece order. With GLA's
// per-row gates each piece's gates travel with its state: (gate, state row) pairs, d + d^2 floats per head.
class GatherPassing final : public StatePassing {
 public:
  GatherPassing(Comm& sp, const PassingShape& shape)
      : sp_(sp), s_(shape), rows_(size_t(shape.B) * shape.H * shape.d),
        recv_(size_t(sp.size()) * shape.mine.size() * shape.piece_floats()) {}

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    gates_ = gates;
    forward_ = forward;
    if (!gates.rows) return sp_.all_gather_start(own, recv_.data(), s_.mine.size() * s_.piece_floats());
    const int d = s_.d;
    const size_t pair = rows_ * (1 + d);
    send_pairs_.resize(s_.mine.size() * pair);
    recv_pairs_.resize(size_t(sp_.size()) * send_pairs_.size());
    for (size_t i = 0; i < s_.mine.size(); ++i)
      for (size_t x = 0; x < rows_; ++x) {
        float* row = send_pairs_.data() + i * pair + x * (1 + d);
        row[0] = gates.row(int(i), s_.mine[i].index, x);
        std::memcpy(row + 1, own + i * s_.piece_floats() + x * d, sizeof(float) * d);
      }
    return sp_.all_gather_start(send_pairs_.data(), recv_pairs_.data(), send_pairs_.size());
  }

  void finish(float* out) override {
    if (!gates_.rows) {
      scan_piece_states(out, recv_.data(), s_.owner, sp_.rank(), s_.B, s_.H, s_.d, gates_.lambda, gates_.piece_len,
                        forward_, gates_.cut);
      return;
    }
    fold_pairs(out, nullptr);
  }

  void final_state(float* out) override {  // every rank has every piece: fold them all
    if (gates_.rows) return fold_pairs(nullptr, out);
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

  size_t memory_floats() const override { return recv_.size() + send_pairs_.size() + recv_pairs_.size(); }

 private:
  // The gathered pairs folded in piece order (backward: reversed): into out, the fold before each of this
  // rank's pieces; into all (after a forward), the fold of every piece.
  void fold_pairs(float* out, float* all) const {
    const int d = s_.d, pieces = int(s_.owner.size());
    const size_t pair = rows_ * (1 + d), per_rank = s_.mine.size() * pair;
    std::vector<float> acc(rows_ * d, 0.f);
    for (int step = 0; step < pieces; ++step) {
      const int p = forward_ || all ? step : pieces - 1 - step;
      const auto [r, i] = s_.owner[p];
      if (out && r == sp_.rank()) std::memcpy(out + size_t(i) * s_.piece_floats(), acc.data(), sizeof(float) * acc.size());
      const float* rows = recv_pairs_.data() + size_t(r) * per_rank + size_t(i) * pair;
      for (size_t x = 0; x < rows_; ++x)
        for (int j = 0; j < d; ++j) acc[x * d + j] = rows[x * (1 + d)] * acc[x * d + j] + rows[x * (1 + d) + 1 + j];
    }
    if (all) std::memcpy(all, acc.data(), sizeof(float) * acc.size());
  }

  Comm& sp_;
  PassingShape s_;
  size_t rows_;
  std::vector<float> recv_;  // (W, pieces, B, H, d, d)
  std::vector<float> send_pairs_, recv_pairs_;  // GLA: (pieces, B, H, d, 1 + d), and (W, ...) gathered
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
