#include "model/documents.h"

#include <algorithm>

#include "core/check.h"

namespace lasp {

void document_starts(uint8_t* flags, const int* tokens, long n, int start_id) {
  for (long i = 0; i < n; ++i) flags[i] = tokens[i] == start_id;
}

Documents documents_at(const uint8_t* all_starts, int B, int N, const int* positions, int n) {
  Documents docs;
  docs.starts.resize(size_t(B) * n);
  docs.first.resize(size_t(B) * n);
  std::vector<int> first(N);  // of one row, by position
  for (int b = 0; b < B; ++b) {
    const uint8_t* row = all_starts + size_t(b) * N;
    for (int p = 0, open = 0; p < N; ++p) first[p] = open = row[p] ? p : open;
    for (int i = 0; i < n; ++i) {
      const int p = positions[i];
      LASP_CHECK(p >= 0 && p < N, "documents: position {} outside the sequence [0, {})", p, N);
      docs.starts[size_t(b) * n + i] = row[p] != 0;
      docs.first[size_t(b) * n + i] = first[p];
    }
  }
  return docs;
}

void refuse_documents_bidirectional(bool documents) {
  LASP_CHECK(!documents, "bidirectional linear attention knows no documents: set none (Attention::set_documents(nullptr))");
}

Documents documents_slice(const Documents& docs, int n, int begin, int length) {
  Documents part;
  if (docs.empty()) return part;
  const size_t B = docs.starts.size() / n;
  part.starts.resize(B * length);
  part.first.resize(B * length);
  for (size_t b = 0; b < B; ++b) {
    std::copy_n(docs.starts.begin() + b * n + begin, length, part.starts.begin() + b * length);
    std::copy_n(docs.first.begin() + b * n + begin, length, part.first.begin() + b * length);
  }
  return part;
}

}  // namespace lasp
