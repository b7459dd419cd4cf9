// exscan (sp/state_passing.h): each piece's affine pairs folded over the pieces before it (or after it,
// backward) by MPI_Iexscan, with the state algebra's composition as the operator (Comm::exscan_start). The
// pairs travel in diagonal form, d_k gates per head (a fixed decay's scalar repeated): one wire format for
// the fixed decays and GLA; the delta rule's in full form, d_k^2 per head.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "sp/state_passing.h"

namespace lasp {

namespace {

// The state algebra's composition of pairs, head by head, as an exscan operator.
class PairComposition final : public ScanOperator {
 public:
  explicit PairComposition(const StateForm& f) : f_(f), scratch_(f.scratch_floats()) {}
  size_t floats() const override { return f_.pair_floats(); }
  void identity(float* e) const override { pair_identity(f_, e); }
  void compose(const float* first, float* then) const override { compose_pairs(f_, first, then, scratch_.data()); }

 private:
  StateForm f_;
  mutable std::vector<float> scratch_;
};

class ExscanPassing final : public StatePassing {
 public:
  ExscanPassing(Comm& sp, const PassingShape& shape)
      : sp_(sp),
        reversed_(sp.split(0, sp.size() - 1 - sp.rank())),
        s_(shape) {
    use_form({Transition::diagonal, shape.dk, shape.dv});
    const int W = sp.size(), pieces = int(shape.owner.size());
    LASP_CHECK(pieces == W || pieces == 2 * W, "exscan: {} pieces over {} ranks: expected one or two per rank",
               pieces, W);
  }

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    const int W = sp_.size(), pieces = int(s_.owner.size()), me = sp_.rank();
    first_.reset(), second_.reset();
    use_form({gates.transition() == Transition::full ? Transition::full : Transition::diagonal, s_.dk, s_.dv});
    for (int i = 0; i < int(s_.mine.size()); ++i)  // the pairs (transition, state) of every piece, head by head
      for (size_t x = 0; x < s_.heads(); ++x) {
        float* p = pair(i) + x * f_.pair_floats();
        gates.transition_of(f_, p, i, s_.mine[i].index, x, !forward);  // backward: the adjoint pair's
        std::memcpy(p + f_.transition_floats(), own + size_t(i) * s_.piece_floats() + x * f_.state_floats(),
                    sizeof(float) * f_.state_floats());
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
    sp_.take_stats(*reversed_);  // the waits' time
    for (int leg = 0; leg < legs_; ++leg) states_of(result(leg), out + size_t(piece_[leg]) * s_.piece_floats());
  }

  void final_state(float* out) override {  // the last piece's holder folds it on; the others add zeros
    std::fill(out, out + s_.piece_floats(), 0.f);
    if (last_piece_ >= 0) {
      const int leg = piece_[0] == last_piece_ ? 0 : 1;
      std::vector<float> after(pair(last_piece_), pair(last_piece_) + piece_pairs_floats());
      compose_all(result(leg), after.data());
      states_of(after.data(), out);
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

  size_t piece_pairs_floats() const { return s_.heads() * f_.pair_floats(); }
  // The pairs' form on the wire, and buffers for it (between passes only: never while a scan is in flight).
  void use_form(const StateForm& f) {
    if (op_ && f.transition == f_.transition) return;
    f_ = f;
    op_ = std::make_unique<PairComposition>(f);
    pairs_.assign(s_.mine.size() * piece_pairs_floats(), 0.f);
    scanned_.assign(pairs_.size(), 0.f);
    total_.assign(piece_pairs_floats(), 0.f);
    lead_.assign(total_.size(), 0.f);
  }
  float* pair(int i) { return pairs_.data() + size_t(i) * piece_pairs_floats(); }
  float* scanned(int i) { return scanned_.data() + size_t(i) * piece_pairs_floats(); }
  std::unique_ptr<CommRequest> scan(int leg, const float* send) {
    return comm_[leg]->exscan_start(send, scanned(piece_[leg]), s_.heads(), *op_);
  }
  // then <- first followed by then, for every head of a piece.
  void compose_all(const float* first, float* then) const {
    for (size_t x = 0; x < s_.heads(); ++x) op_->compose(first + x * f_.pair_floats(), then + x * f_.pair_floats());
  }
  // A piece's pairs applied to no state: their states (the fold of everything before, from nothing).
  void states_of(const float* pairs, float* out) const {
    for (size_t x = 0; x < s_.heads(); ++x)
      std::memcpy(out + x * f_.state_floats(), pairs + x * f_.pair_floats() + f_.transition_floats(),
                  sizeof(float) * f_.state_floats());
  }
  // The fold before this rank's piece on a leg. The pivot's second-leg piece follows its first-leg piece, so
  // it gets the first leg's total (its second scan, where it comes first, gives the identity).
  const float* result(int leg) { return pivot_ && leg == 1 ? total_.data() : scanned(piece_[leg]); }

  // The pivot: the first leg's total = its scan then its piece; it opens the second leg with total then its
  // second piece.
  void start_pivot() {
    if (!pivot_ || second_) return;
    std::memcpy(total_.data(), pair(piece_[0]), sizeof(float) * total_.size());
    compose_all(scanned(piece_[0]), total_.data());
    std::memcpy(lead_.data(), pair(piece_[1]), sizeof(float) * lead_.size());
    compose_all(total_.data(), lead_.data());
    second_ = scan(1, lead_.data());
    sp_.take_stats(*reversed_);
  }

  Comm& sp_;
  std::unique_ptr<Comm> reversed_;  // the SP group in reverse rank order; its counts go to the SP group's
  PassingShape s_;
  StateForm f_;                      // each head's pair on the wire
  std::unique_ptr<PairComposition> op_;
  std::vector<float> pairs_, scanned_, total_, lead_;  // (pieces,) B, H pairs
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
