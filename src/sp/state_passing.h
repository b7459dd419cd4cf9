// How LASP-2's piece states reach the pieces that need them (LASP2.md section 2, GATES.md). Forward: each of
// this rank's pieces needs the state entering it, P_{p+1} = gate_p P_p + M_p folded over global piece order;
// backward: the gradient of the state leaving it, G_{p-1} = gate_p G_p + dM_p folded the other way. Three
// ways, each started before the local kernel and finished after it (test() between its segments):
//   gather   ONE AllGather of every piece's state, then each rank folds them itself: the paper's LASP-2; the
//            volume into a rank grows with W.
//   exscan   an exclusive scan (MPI_Iexscan, a user-defined non-commutative op) of (gate, state) rows: log-depth,
//            one pair in and one out per rank whatever W. The zigzag layout runs two scans, rank order then
//            reversed, the pivot (rank W-1 forward) handing the first leg's total to the second.
//   allscan  ZeCO's All-Scan: the state arrives from the previous piece's rank in K slices of rows; each slice
//            is folded with this piece's own and sent on at once: one state in and one out per piece, whatever
//            W, in (W-1+K) slice hops. Any layout: the chain follows global piece order.
// Every way folds the pieces' affine pairs (kernels/state_algebra.h) in fp32, in the same order as a single
// process would, up to rounding: a method decides only how the pairs travel.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "comm/comm.h"
#include "kernels/state_algebra.h"
#include "sp/grid.h"

namespace lasp {

enum class StatePassingKind { gather, exscan, allscan };

// What piece p of batch row b does to the state passing through it (its transition, kernels/state_algebra.h),
// head by head: lambda_h^piece_len (1 without decay), 0 where a document starts inside the piece (it passes on
// only what follows the start): a scalar; or, for GLA, each key dim's own gate product over the piece (GATES.md's
// Gamma): a diagonal; or, for the delta rule, the piece's d_k x d_k transition (DELTA.md's A_r): full. Rows and
// matrices already hold the cuts (0 across a start).
struct PieceGates {
  const float* lambda = nullptr;  // (H) or null
  int piece_len = 0;
  const uint8_t* cut = nullptr;   // (pieces, B) or null
  int B = 0, H = 0, dk = 0;
  const float* rows = nullptr;      // GLA: (this rank's pieces, B, H, d_k), or null
  const float* matrices = nullptr;  // full: (this rank's pieces, B, H, d_k, d_k), or null
  Transition transition() const {
    return matrices ? Transition::full : rows ? Transition::diagonal : Transition::scalar;
  }
  float at(int piece, int b, int h) const;
  // Head x = b H + h of this rank's piece `local` (global `piece`): its transition in form f (f's d_k; a
  // scalar or diagonal one may be asked for in a wider form: a scalar repeated on the diagonal, ...), or the
  // adjoint's (transposed) for a backward.
  void transition_of(const StateForm& f, float* A, int local, int piece, size_t x, bool adjoint) const;
  // The gate of key row x of (B, H, d_k) of this rank's piece `local`, global index `piece`.
  float row(int local, int piece, size_t x) const {
    if (rows) return rows[size_t(local) * B * H * dk + x];
    const int bh = int(x / dk);
    return at(piece, bh / H, bh % H);
  }
};

// This rank's part of the sequence: its pieces and who holds every piece; states are (B, H, d_k, d_v) per piece.
struct PassingShape {
  int B, H, dk, dv;
  std::vector<Piece> mine;
  std::vector<std::pair<int, int>> owner;  // global piece -> (rank, index among that rank's pieces)
  size_t heads() const { return size_t(B) * H; }
  size_t piece_floats() const { return heads() * dk * dv; }
};

class StatePassing {
 public:
  virtual ~StatePassing() = default;
  // Starts passing `own` (this rank's pieces, B, H, d_k, d_v): each piece's own state M (forward) or its
  // contribution to the gradient of the state entering it, dM (backward). own and the gates' arrays must stay
  // valid until finish (and final_state).
  virtual std::unique_ptr<CommRequest> start(const float* own, const PieceGates& gates, bool forward) = 0;
  // Once the request is done: out (this rank's pieces, B, H, d_k, d_v) = P (forward) or G (backward) of each piece.
  virtual void finish(float* out) = 0;
  // After a forward's finish, on every rank (a collective): out (B, H, d_k, d_v) = the state after the last piece.
  virtual void final_state(float* out) = 0;
  virtual size_t memory_floats() const = 0;
};

// slices: allscan's K (clamped to the value columns d_v); ignored by the others. Needs the whole SP group.
std::unique_ptr<StatePassing> make_state_passing(StatePassingKind kind, Comm& sp, const PassingShape& shape,
                                                 int slices);
// The two scans, each in its own file (sp/exscan_passing.cpp, sp/allscan_passing.cpp).
std::unique_ptr<StatePassing> make_exscan_passing(Comm& sp, const PassingShape& shape);
std::unique_ptr<StatePassing> make_allscan_passing(Comm& sp, const PassingShape& shape, int slices);

}  // namespace lasp
