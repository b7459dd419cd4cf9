// allscan (sp/state_passing.h), ZeCO's All-Scan: the chain follows global piece order (its reverse backward).
// A piece's incoming state arrives from the previous piece's rank in K slices of rows; as each slice lands it
// is folded with the piece's own (gate * incoming + own) and sent on to the next piece's rank at once.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "sp/state_passing.h"

namespace lasp {

namespace {

class AllscanPassing final : public StatePassing {
 public:
  AllscanPassing(Comm& sp, const PassingShape& shape, int slices)
      : sp_(sp),
        s_(shape),
        rows_(size_t(shape.B) * shape.H * shape.dk),
        slices_(int(std::clamp<size_t>(size_t(std::max(slices, 1)), 1, rows_))),
        in_(shape.mine.size() * shape.piece_floats()),
        out_(in_.size()) {}

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    const int pieces = int(s_.owner.size()), me = sp_.rank();
    own_ = own;
    steps_.clear();
    sends_.clear();
    auto order = [&](int t) { return forward ? t : pieces - 1 - t; };
    for (int t = 0; t < pieces; ++t) {  // this rank's pieces in folding order, with their neighbours in it
      const auto [r, i] = s_.owner[order(t)];
      if (r != me) continue;
      Step step;
      step.piece = i;
      step.prev = t > 0 ? s_.owner[order(t - 1)].first : -1;
      step.next = t + 1 < pieces ? s_.owner[order(t + 1)].first : -1;
      for (size_t x = 0; x < rows_; ++x) step.gate.push_back(gates.row(i, order(t), x));
      float* in = in_.data() + size_t(i) * s_.piece_floats();
      if (step.prev < 0) std::fill(in, in + s_.piece_floats(), 0.f);
      else if (step.prev != me)
        for (int k = 0; k < slices_; ++k) {
          const auto [begin, end] = slice(k);
          step.arrivals.push_back(sp_.send_recv_start(nullptr, 0, -1, in + begin * s_.dv, (end - begin) * s_.dv, step.prev));
        }
      steps_.push_back(std::move(step));
    }
    if (forward) {
      const auto [r, i] = s_.owner[pieces - 1];
      last_piece_ = r == me ? i : -1;
    }
    progress(false);
    return std::make_unique<Request>(*this);
  }

  void finish(float* out) override { std::memcpy(out, in_.data(), sizeof(float) * in_.size()); }

  void final_state(float* out) override {  // the last piece's holder has it; the others add zeros
    if (last_piece_ >= 0) std::memcpy(out, piece_out(last_piece_), sizeof(float) * s_.piece_floats());
    else std::fill(out, out + s_.piece_floats(), 0.f);
    sp_.all_reduce(out, s_.piece_floats());
  }

  size_t memory_floats() const override { return in_.size() + out_.size(); }

 private:
  struct Step {
    int piece = 0, prev = -1, next = -1;  // local piece; ranks before and after it in folding order (-1: none)
    std::vector<float> gate;              // (B, H, d): each row's gate
    std::vector<std::unique_ptr<CommRequest>> arrivals;  // one per slice, from prev when it is another rank
    int folded = 0;                       // slices folded and sent on so far
  };

  class Request final : public CommRequest {
   public:
    explicit Request(AllscanPassing& p) : p_(p) {}
    bool test() override { return p_.progress(false); }
    void wait() override { p_.progress(true); }

   private:
    AllscanPassing& p_;
  };

  std::pair<size_t, size_t> slice(int k) const { return {rows_ * k / slices_, rows_ * (k + 1) / slices_}; }
  float* piece_in(int i) { return in_.data() + size_t(i) * s_.piece_floats(); }
  float* piece_out(int i) { return out_.data() + size_t(i) * s_.piece_floats(); }

  // Folds and forwards every slice that has arrived (block: waits for each in turn); true once all are done.
  bool progress(bool block) {
    const int d = s_.dv, me = sp_.rank();  // a key row holds d_v values
    bool folded = true;
    for (size_t n = 0; n < steps_.size(); ++n) {
      Step& step = steps_[n];
      float *in = piece_in(step.piece), *out = piece_out(step.piece);
      for (; step.folded < slices_; ++step.folded) {
        const int k = step.folded;
        const auto [begin, end] = slice(k);
        if (step.prev == me) {  // the previous piece is ours, one step earlier in this list
          const Step& before = steps_[n - 1];
          if (before.folded <= k) break;
          std::memcpy(in + begin * d, piece_out(before.piece) + begin * d, sizeof(float) * (end - begin) * d);
        } else if (step.prev >= 0) {
          if (block) step.arrivals[k]->wait();
          else if (!step.arrivals[k]->test()) break;
        }
        const float* own = own_ + size_t(step.piece) * s_.piece_floats();
        for (size_t x = begin; x < end; ++x) {
          const float g = step.gate[x];
          for (int j = 0; j < d; ++j) out[x * d + j] = g * in[x * d + j] + own[x * d + j];
        }
        if (step.next >= 0 && step.next != me)
          sends_.push_back(sp_.send_recv_start(out + begin * d, (end - begin) * d, step.next, nullptr, 0, -1));
      }
      folded = folded && step.folded == slices_;
    }
    if (!folded) return false;
    bool sent = true;
    for (auto& s : sends_) {
      if (block) s->wait();
      else sent = s->test() && sent;
    }
    return sent;
  }

  Comm& sp_;
  PassingShape s_;
  size_t rows_;  // B * H * d_k key rows of d_v floats per piece (rows slice a scalar or diagonal transition)
  int slices_;
  std::vector<float> in_, out_;  // per piece: the state entering it (P or G) and the one it passes on
  const float* own_ = nullptr;
  std::vector<Step> steps_;
  std::vector<std::unique_ptr<CommRequest>> sends_;
  int last_piece_ = -1;
};

}  // namespace

std::unique_ptr<StatePassing> make_allscan_passing(Comm& sp, const PassingShape& shape, int slices) {
  return std::make_unique<AllscanPassing>(sp, shape, slices);
}

}  // namespace lasp
