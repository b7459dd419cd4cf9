// allscan (sp/state_passing.h), ZeCO's All-Scan: the chain follows global piece order (its reverse backward).
// A piece's incoming state arrives from the previous piece's rank in K slices of value columns (every head's
// d_k rows, columns [c0, c1)); as each slice lands it is folded with the piece's own through the piece's
// transition (A in + own: the state algebra) and sent on to the next piece's rank at once. Value columns, not
// key rows: a full transition (the delta rule) mixes key rows, never value columns (DELTA.md), so the
// transition never leaves its rank, whatever its form.
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
        slices_(std::clamp(slices, 1, std::max(shape.dv, 1))),
        in_(shape.mine.size() * shape.piece_floats()),
        out_(in_.size()),
        arriving_(in_.size()),
        leaving_(in_.size()) {}

  std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) override {
    const int pieces = int(s_.owner.size()), me = sp_.rank();
    own_ = own;
    form_ = {gates.transition(), s_.dk, s_.dv};
    scratch_.resize(form_.scratch_floats());
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
      step.transitions.resize(s_.heads() * form_.transition_floats());
      for (size_t x = 0; x < s_.heads(); ++x)  // backward: the adjoint pair's
        gates.transition_of(form_, step.transitions.data() + x * form_.transition_floats(), i, order(t), x, !forward);
      float* in = in_.data() + size_t(i) * s_.piece_floats();
      if (step.prev < 0) std::fill(in, in + s_.piece_floats(), 0.f);
      else if (step.prev != me)
        for (int k = 0; k < slices_; ++k)
          step.arrivals.push_back(sp_.send_recv_start(nullptr, 0, -1, packed(arriving_, i, k), slice_floats(k), step.prev));
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
    if (last_piece_ >= 0) std::memcpy(out, piece(out_, last_piece_), sizeof(float) * s_.piece_floats());
    else std::fill(out, out + s_.piece_floats(), 0.f);
    sp_.all_reduce(out, s_.piece_floats());
  }

  size_t memory_floats() const override { return in_.size() + out_.size() + arriving_.size() + leaving_.size(); }

 private:
  struct Step {
    int piece = 0, prev = -1, next = -1;  // local piece; ranks before and after it in folding order (-1: none)
    std::vector<float> transitions;       // (B, H) transitions of the piece (the adjoints' backward)
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

  // Slice k: value columns [c0, c1); packed, it is (B, H, d_k, c1 - c0), laid out piece by piece in the packed
  // buffers at the offsets where the slices of a whole state would follow one another.
  std::pair<int, int> columns(int k) const { return {s_.dv * k / slices_, s_.dv * (k + 1) / slices_}; }
  size_t slice_floats(int k) const { return s_.heads() * s_.dk * size_t(columns(k).second - columns(k).first); }
  float* piece(std::vector<float>& v, int i) { return v.data() + size_t(i) * s_.piece_floats(); }
  float* packed(std::vector<float>& v, int i, int k) {
    return piece(v, i) + s_.heads() * s_.dk * size_t(columns(k).first);
  }
  // Slice k of a whole state (B, H, d_k, d_v) into its packed form, and back.
  void pack(const float* whole, float* slice, int k) const {
    const auto [c0, c1] = columns(k);
    const size_t w = size_t(c1 - c0);
    for (size_t r = 0; r < s_.heads() * s_.dk; ++r) std::memcpy(slice + r * w, whole + r * s_.dv + c0, sizeof(float) * w);
  }
  void unpack(const float* slice, float* whole, int k) const {
    const auto [c0, c1] = columns(k);
    const size_t w = size_t(c1 - c0);
    for (size_t r = 0; r < s_.heads() * s_.dk; ++r) std::memcpy(whole + r * s_.dv + c0, slice + r * w, sizeof(float) * w);
  }

  // Slice k of piece i: out = A in + own, head by head, on the slice's columns (a state of d_k x w).
  void fold(const Step& step, int k) {
    const int i = step.piece;
    const auto [c0, c1] = columns(k);
    const StateForm f{form_.transition, s_.dk, c1 - c0};
    float* in = packed(leaving_, i, k);  // the incoming slice, packed, becomes the leaving one
    pack(piece(in_, i), in, k);
    own_slice_.resize(slice_floats(k));
    pack(own_ + size_t(i) * s_.piece_floats(), own_slice_.data(), k);
    for (size_t x = 0; x < s_.heads(); ++x)
      advance_state(f, in + x * f.state_floats(), step.transitions.data() + x * form_.transition_floats(),
                    own_slice_.data() + x * f.state_floats(), scratch_.data());
    unpack(in, piece(out_, i), k);
  }

  // Folds and forwards every slice that has arrived (block: waits for each in turn); true once all are done.
  bool progress(bool block) {
    const int me = sp_.rank();
    bool folded = true;
    for (size_t n = 0; n < steps_.size(); ++n) {
      Step& step = steps_[n];
      for (; step.folded < slices_; ++step.folded) {
        const int k = step.folded;
        if (step.prev == me) {  // the previous piece is ours, one step earlier in this list
          const Step& before = steps_[n - 1];
          if (before.folded <= k) break;
          unpack(packed(leaving_, before.piece, k), piece(in_, step.piece), k);
        } else if (step.prev >= 0) {
          if (block) step.arrivals[k]->wait();
          else if (!step.arrivals[k]->test()) break;
          unpack(packed(arriving_, step.piece, k), piece(in_, step.piece), k);
        }
        fold(step, k);
        if (step.next >= 0 && step.next != me)
          sends_.push_back(sp_.send_recv_start(packed(leaving_, step.piece, k), slice_floats(k), step.next, nullptr, 0, -1));
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
  int slices_;
  StateForm form_;
  std::vector<float> in_, out_;            // per piece: the state entering it (P or G) and the one it passes on
  std::vector<float> arriving_, leaving_;  // per piece, packed slices: as received, and as folded and sent on
  std::vector<float> scratch_, own_slice_;
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
