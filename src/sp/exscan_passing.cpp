// exscan (sp/state_passing.h): each piece's (gate, state) rows folded over the pieces before it (or after it,
// backward) by MPI_Iexscan with the affine op of Comm::exscan_affine_start.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "sp/state_passing.h"

namespace lasp {

namespace {

class ExscanPassing final : public StatePassing {
 public:
  ExscanPassing(Comm& sp, const PassingShape& shape)
      : sp_(sp),
        reversed_(sp.split(0, sp.size() - 1 - sp.rank())),
        s_(shape),
        rows_(size_t(shape.B) * shape.H * shape.d),
        pairs_(shape.mine.size() * rows_ * (1 + shape.d)),
        scanned_(pairs_.size()),
        total_(rows_ * (1 + shape.d)),
        lead_(total_.size()) {
    const int W = sp.size(), pieces = int(shape.owner.size());
    LASP_CHECK(pieces == W || pieces == 2 * W, "exscan: {} pieces over {} ranks: expected one or two per rank",
               pieces, W);
  }

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    const int d = s_.d, W = sp_.size(), pieces = int(s_.owner.size()), me = sp_.rank();
    first_.reset(), second_.reset();
    for (int i = 0; i < int(s_.mine.size()); ++i)  // rows (gate, state row) of every piece
      for (size_t x = 0; x < rows_; ++x) {
        float* row = pair(i) + x * (1 + d);
        row[0] = gates.row(i, s_.mine[i].index, x);
        std::memcpy(row + 1, own + size_t(i) * s_.piece_floats() + x * d, sizeof(float) * d);
      }
    // The pieces in folding order, W at a time: each leg visits every rank once, in rank order (the SP group)
    // or in reverse (the reversed group).
    auto folded = [&](int t) { return forward ? t : pieces - 1 - t; };
    legs_ = pieces / W;
    for (int leg = 0; leg < legs_; ++leg) {
      comm_[leg] = s_.owner[folded(leg * W)].first == 0 ? &sp_ : reversed_.get();
      for (int t = leg * W; t < (leg + 1) * W; ++t)
        if (s_.owner[folded(t)].first == me) piece_[leg] = s_.owner[folded(t)].second;
    }
    pivot_ = legs_ == 2 && s_.owner[folded(W - 1)].first == me;
    first_ = scan(0, pair(piece_[0]));
    if (legs_ == 2 && !pivot_) second_ = scan(1, pair(piece_[1]));
    if (forward) last_piece_ = s_.owner[pieces - 1].first == me ? s_.owner[pieces - 1].second : -1;
    sp_.take_stats(*reversed_);
    return std::make_unique<Request>(*this);
  }

  void finish(float* out) override {
    const int d = s_.d;
    sp_.take_stats(*reversed_);  // the waits' time
    for (int leg = 0; leg < legs_; ++leg) {
      const int i = piece_[leg];
      const float* src = result(leg);
      for (size_t x = 0; x < rows_; ++x)
        std::memcpy(out + size_t(i) * s_.piece_floats() + x * d, src + x * (1 + d) + 1, sizeof(float) * d);
    }
  }

  void final_state(float* out) override {  // the last piece's holder folds it on; the others add zeros
    const int d = s_.d;
    std::fill(out, out + s_.piece_floats(), 0.f);
    if (last_piece_ >= 0) {
      const int leg = piece_[0] == last_piece_ ? 0 : 1;
      std::vector<float> after(pair(last_piece_), pair(last_piece_) + rows_ * (1 + d));
      compose_affine(result(leg), after.data(), rows_, d);
      for (size_t x = 0; x < rows_; ++x) std::memcpy(out + x * d, after.data() + x * (1 + d) + 1, sizeof(float) * d);
    }
    sp_.all_reduce(out, s_.piece_floats());
  }

  size_t memory_floats() const override { return pairs_.size() + scanned_.size() + total_.size() + lead_.size(); }

 private:
  // Completes the first leg's scan and then (on the pivot) starts the second.
  class Request final : public CommRequest {
   public:
    explicit Request(ExscanPassing& p) : p_(p) {}
    bool test() override {
      if (!p_.first_->test()) return false;
      p_.start_pivot();
      return !p_.second_ || p_.second_->test();
    }
    void wait() override {
      p_.first_->wait();
      p_.start_pivot();
      if (p_.second_) p_.second_->wait();
    }

   private:
    ExscanPassing& p_;
  };

  float* pair(int i) { return pairs_.data() + size_t(i) * rows_ * (1 + s_.d); }
  float* scanned(int i) { return scanned_.data() + size_t(i) * rows_ * (1 + s_.d); }
  std::unique_ptr<CommRequest> scan(int leg, const float* send) {
    return comm_[leg]->exscan_affine_start(send, scanned(piece_[leg]), rows_, s_.d);
  }
  // The fold before this rank's piece on a leg. The pivot's second-leg piece follows its first-leg piece, so
  // it gets the first leg's total (its second scan, where it comes first, gives the identity).
  const float* result(int leg) { return pivot_ && leg == 1 ? total_.data() : scanned(piece_[leg]); }

  // The pivot: the first leg's total = its scan then its piece; it opens the second leg with total then its
  // second piece.
  void start_pivot() {
    if (!pivot_ || second_) return;
    std::memcpy(total_.data(), pair(piece_[0]), sizeof(float) * total_.size());
    compose_affine(scanned(piece_[0]), total_.data(), rows_, s_.d);
    std::memcpy(lead_.data(), pair(piece_[1]), sizeof(float) * lead_.size());
    compose_affine(total_.data(), lead_.data(), rows_, s_.d);
    second_ = scan(1, lead_.data());
    sp_.take_stats(*reversed_);
  }

  Comm& sp_;
  std::unique_ptr<Comm> reversed_;  // the SP group in reverse rank order; its counts go to the SP group's
  PassingShape s_;
  size_t rows_;                      // B * H * d rows of 1 + d floats per piece
  std::vector<float> pairs_, scanned_, total_, lead_;
  int legs_ = 1, piece_[2] = {0, 0}, last_piece_ = -1;
  Comm* comm_[2] = {nullptr, nullptr};
  bool pivot_ = false;
  std::unique_ptr<CommRequest> first_, second_;
};

}  // namespace

std::unique_ptr<StatePassing> make_exscan_passing(Comm& sp, const PassingShape& shape) {
  return std::make_unique<ExscanPassing>(sp, shape);
}

}  // namespace lasp
