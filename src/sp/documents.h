// Documents under sequence parallelism (Attention::set_documents): each rank knows the start flags of its own
// tokens only, but where a query's document begins may lie on any earlier rank, and a state passed on from a
// piece must hold only what follows the piece's last start. So every rank's flags are gathered once per
// step, before any layer (ONE AllGather of B x N_local values: one float per token, small beside any
// layer's exchange), and each rank derives what its methods need from the whole sequence's flags.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "comm/comm.h"
#include "model/documents.h"
#include "sp/grid.h"

namespace lasp {

struct SpDocuments {
  Documents local;             // this rank's tokens, in its local order (empty: no documents)
  std::vector<uint8_t> all;    // (B, N): the whole sequence's flags in position order
  int B = 0, N = 0;
  bool empty() const { return local.empty(); }
  // Whether positions [begin, begin + length) of row b hold a document start.
  bool any_start(int b, int begin, int length) const;
  // The first and the last start among this rank's local tokens [offset, offset + length) of row b, relative
  // to offset: (length, 0) when there is none (or no documents), so that rows [first, length) are the ones
  // after a start and rows [0, last) the ones before the last start.
  std::pair<int, int> starts_in(int b, int offset, int length) const;
  // LASP-2's piece scan (sp/piece_states.h): (pieces, B) whether global piece p ([p L, p L + L)) of row b holds
  // a start; empty without documents.
  std::vector<uint8_t> piece_cuts(int pieces, int piece_len) const;
  // The local flags of row b from token `offset` on, or null without documents.
  const uint8_t* flags(int b, int offset) const {
    return empty() ? nullptr : local.starts.data() + size_t(b) * (local.starts.size() / B) + offset;
  }
};

// Gathers every rank's flags (starts: (B, N_local) of this rank, or null on every rank for none).
SpDocuments gather_documents(Comm& sp, const uint8_t* starts, int B, int N_local, int global_N, SpLayout layout);

}  // namespace lasp
