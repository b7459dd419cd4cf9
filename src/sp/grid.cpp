#include "sp/grid.h"

#include "core/check.h"

namespace lasp {

SpLayout sp_layout_from_string(const std::string& name) {
  if (name == "contiguous") return SpLayout::contiguous;
  if (name == "zigzag") return SpLayout::zigzag;
  throw Error("unknown --sp-layout '" + name + "': expected contiguous or zigzag");
}

const char* to_string(SpLayout layout) { return layout == SpLayout::zigzag ? "zigzag" : "contiguous"; }

Grid make_grid(Comm& world, int sp_size, int dp_size) {
  LASP_CHECK(sp_size > 0 && dp_size > 0 && sp_size * dp_size == world.size(),
             "--sp-size {} x --dp-size {} = {} must equal the number of ranks, {}", sp_size, dp_size,
             sp_size * dp_size, world.size());
  Grid g;
  g.world = &world;
  g.sp_size = sp_size;
  g.dp_size = dp_size;
  g.sp_rank = world.rank() % sp_size;
  g.dp_rank = world.rank() / sp_size;
  g.sp = world.split(g.dp_rank, g.sp_rank);
  g.dp = world.split(g.sp_rank, g.dp_rank);
  return g;
}

std::vector<Piece> sp_pieces(int N, int W, int rank, SpLayout layout) {
  LASP_CHECK(W > 0 && rank >= 0 && rank < W, "sp_pieces: rank {} of {} ranks", rank, W);
  if (layout == SpLayout::contiguous) {
    LASP_CHECK(N % W == 0, "sequence length {} must be divisible by the sp size {} (contiguous layout)", N, W);
    const int C = N / W;
    return {{rank, rank * C, 0, C}};
  }
  LASP_CHECK(N % (2 * W) == 0, "sequence length {} must be divisible by 2 x sp size = {} (zigzag layout)", N, 2 * W);
  const int P = N / (2 * W), second = 2 * W - 1 - rank;
  return {{rank, rank * P, 0, P}, {second, second * P, P, P}};
}

std::vector<int> sp_positions(int N, int W, int rank, SpLayout layout) {
  std::vector<int> pos;
  for (const Piece& p : sp_pieces(N, W, rank, layout))
    for (int i = 0; i < p.length; ++i) pos.push_back(p.begin + i);
  return pos;
}

std::vector<std::pair<int, int>> sp_piece_owners(int N, int W, SpLayout layout) {
  std::vector<std::pair<int, int>> owners;
  for (int r = 0; r < W; ++r) {
    const std::vector<Piece> pieces = sp_pieces(N, W, r, layout);
    owners.resize(size_t(W) * pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) owners[pieces[i].index] = {r, int(i)};
  }
  return owners;
}

}  // namespace lasp
