// The process grid: world = dp x sp. SP groups are consecutive ranks (rank = dp_rank * sp + sp_rank), so
// a sequence's slices sit on neighbouring ranks (the same node when ranks fill nodes in order); DP groups
// take one rank of each SP group.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/comm.h"

namespace lasp {

enum class SpLayout { contiguous, zigzag };
SpLayout sp_layout_from_string(const std::string& name);
const char* to_string(SpLayout layout);

struct Grid {
  Comm* world = nullptr;
  std::unique_ptr<Comm> sp, dp;  // this rank's SP group and DP group
  int sp_size = 1, dp_size = 1, sp_rank = 0, dp_rank = 0;
};

// Throws (naming both sizes and the world size) unless sp_size * dp_size == world.size().
Grid make_grid(Comm& world, int sp_size, int dp_size);

// A contiguous run of one rank's tokens: `length` tokens from global position `begin`, stored at local
// row `offset`. Contiguous layout: one piece per rank; zigzag: pieces r and 2W-1-r.
struct Piece {
  int index;   // global piece index (0 .. pieces-1)
  int begin;   // global position of its first token
  int offset;  // its first row among this rank's tokens
  int length;
};

// The pieces rank `rank` of W holds of a sequence of N tokens. Throws unless N divides evenly (by W, or by
// 2W for zigzag), naming N, W and the layout.
std::vector<Piece> sp_pieces(int N, int W, int rank, SpLayout layout);
// Who holds each piece: owners[p] = (rank, index among that rank's pieces) for every global piece p.
std::vector<std::pair<int, int>> sp_piece_owners(int N, int W, SpLayout layout);
// Global positions of the rank's tokens, in local order.
std::vector<int> sp_positions(int N, int W, int rank, SpLayout layout);

}  // namespace lasp
