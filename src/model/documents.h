// Documents (MODEL.md): a document-start token opens a new document, and attention never crosses documents.
// The kernels take them in two forms: the linear kernels the start flags of a contiguous run of tokens (a
// state is cut at each start), the softmax and masked-product kernels the position where each query's
// document begins (keys before it are masked), which also works for gathered keys in any order.
#pragma once
#include <cstdint>
#include <vector>

namespace lasp {

struct Documents {
  std::vector<uint8_t> starts;  // (B, n): non-zero where a document begins
  std::vector<int> first;       // (B, n): the global position where each token's document begins
  bool empty() const { return starts.empty(); }
  const uint8_t* start_flags() const { return empty() ? nullptr : starts.data(); }
  const int* first_positions() const { return empty() ? nullptr : first.data(); }
};

// flags[i] = tokens[i] == start_id, for n tokens.
void document_starts(uint8_t* flags, const int* tokens, long n, int start_id);

// The documents of the n tokens at `positions` (global positions, in this rank's order) of B rows, from the
// start flags of the whole sequence (B, N) in position order. A row's first document begins at 0.
Documents documents_at(const uint8_t* all_starts, int B, int N, const int* positions, int n);

// Bidirectional (non-causal) linear attention knows no documents: throws when there are some.
void refuse_documents_bidirectional(bool documents);

// Tokens [begin, begin + length) of every row of `docs` (n tokens per row), as Documents of their own.
Documents documents_slice(const Documents& docs, int n, int begin, int length);

}  // namespace lasp
