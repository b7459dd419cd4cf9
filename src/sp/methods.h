// The registry of sequence-parallel methods: each method's name is written here once, with what its linear
// and its softmax layers do, the layout it runs on by default, what it needs, and how to build it. The
// trainer, the CLI (choices, help, `lasp info`), `lasp bench sp` and the tests all read this table.
// On a single SP rank every method is the local kernels.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "model/attention.h"
#include "model/config.h"
#include "sp/grid.h"

namespace lasp {

// The layout a method runs on when --sp-layout does not say.
enum class LayoutRule {
  balanced,    // zigzag when the model has a softmax layer (its causal work is then even), else contiguous
  contiguous,  // always contiguous unless asked otherwise
  zigzag,      // always zigzag (the method is defined on it)
};

struct SpMethod {
  std::string name;     // --sp-method
  std::string linear;   // what its linear-attention layers do
  std::string softmax;  // what its softmax-attention layers do
  LayoutRule layout;
  bool heads_over_ranks;  // the attention heads must divide evenly over the SP ranks (head sharding)
  bool gla;               // runs GLA's per-token gates (decay gla); the others refuse them
  std::unique_ptr<Attention> (*make)(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                     int layers, int scan_slices);
  // The same method in chunks for the layer-major memory plan (Attention::layer_major); null: none.
  std::unique_ptr<Attention> (*make_layer_major)(Comm& sp, const AttentionShape& shape, int global_N,
                                                 SpLayout layout, int layers, int chunk) = nullptr;
};

// All-Scan's K (--scan-slices): the slices a state is cut into on its way from rank to rank.
constexpr int kAllScanSlices = 4;

// Every method, the default first.
const std::vector<SpMethod>& sp_methods();
// The method of that name (the default, the first, for an empty name); throws naming the ones there are.
const SpMethod& find_sp_method(const std::string& name);
// The names joined by `separator`, in registry order.
std::string sp_method_names(const std::string& separator);

// The layout a method runs on: `requested` if given (and the method allows it), else its rule.
SpLayout sp_method_layout(const std::string& method, const std::string& requested, const ModelConfig& config,
                          int sp_size);

// The method's attention in chunks of `chunk` tokens per row for the layer-major plan, or null where the
// method has no such form (or on one SP rank, where model/chunked_attention.h serves).
std::unique_ptr<Attention> make_layer_major_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                                      int global_N, SpLayout layout, int layers, int chunk);

// The method's Attention for this rank (LocalAttention on one rank). Throws naming the method and the ones there are.
// scan_slices: All-Scan's K (the other methods ignore it).
std::unique_ptr<Attention> make_sp_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                             int global_N, SpLayout layout, int layers,
                                             int scan_slices = kAllScanSlices);

}  // namespace lasp
