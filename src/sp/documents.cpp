#include "sp/documents.h"

#include <algorithm>

namespace lasp {

bool SpDocuments::any_start(int b, int begin, int length) const {
  if (empty()) return false;
  const uint8_t* row = all.data() + size_t(b) * N;
  return std::any_of(row + begin, row + begin + length, [](uint8_t x) { return x != 0; });
}

std::vector<uint8_t> SpDocuments::piece_cuts(int pieces, int piece_len) const {
  std::vector<uint8_t> cut;
  if (empty()) return cut;
  cut.resize(size_t(pieces) * B);
  for (int p = 0; p < pieces; ++p)
    for (int b = 0; b < B; ++b) cut[size_t(p) * B + b] = any_start(b, p * piece_len, piece_len);
  return cut;
}

std::pair<int, int> SpDocuments::starts_in(int b, int offset, int length) const {
  int first = length, last = 0;
  if (const uint8_t* row = flags(b, offset))
    for (int i = 0; i < length; ++i)
      if (row[i]) first = std::min(first, i), last = i;
  return {first, last};
}

SpDocuments gather_documents(Comm& sp, const uint8_t* starts, int B, int N_local, int global_N, SpLayout layout) {
  SpDocuments docs;
  if (!starts) return docs;
  const int W = sp.size();
  const size_t mine = size_t(B) * N_local;
  std::vector<float> send(starts, starts + mine), recv(mine * W);
  sp.all_gather(send.data(), recv.data(), mine);
  docs.B = B, docs.N = global_N;
  docs.all.assign(size_t(B) * global_N, 0);
  for (int r = 0; r < W; ++r) {
    const std::vector<int> pos = sp_positions(global_N, W, r, layout);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < N_local; ++i)
        docs.all[size_t(b) * global_N + pos[i]] = recv[r * mine + size_t(b) * N_local + i] != 0.f;
  }
  const std::vector<int> own = sp_positions(global_N, W, sp.rank(), layout);
  docs.local = documents_at(docs.all.data(), B, global_N, own.data(), N_local);
  return docs;
}

}  // namespace lasp
