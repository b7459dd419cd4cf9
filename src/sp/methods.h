// The registry of sequence-parallel methods: each method's name is written here once, with what its linear
// and its softmax layers do, the layout it runs on by default, what it needs, and how to build it. The
// trainer, the CLI (choices, help, `lasp info`), `lasp bench sp` and the tests all read this table.
// On a single SP rank every method is the local kernels.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "kernels/state_algebra.h"
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

// One linear layer of a pure linear-attention model on W ranks, forward + backward, in the alpha-beta model of
// `lasp bench project`: what a method's projection needs to know of the machine and the sizes.
struct LayerCostInputs {
  double W, N, C;         // ranks, tokens, tokens per rank (N / W)
  double H, dk, dv;       // heads, key and value widths per head (the state is dk x dv)
  double alpha, beta;     // seconds per message, bytes per second of the slowest link
  double chunked;         // seconds of the chunkwise kernel on C tokens, forward + backward
  double masked_block;    // seconds of the masked left product of one C x C block, forward + backward
  // decay gdn (a full d_k x d_k transition): the pair (A_r, B_r) travels where the state alone does otherwise, and
  // the methods that pass pairs first summarize their piece (its end state from nothing and A_r, then their
  // adjoints in the backward): `summary` seconds more. 0 and false for the fixed decays.
  bool delta = false;
  double summary = 0;
};

struct SpMethod {
  std::string name;     // --sp-method
  std::string linear;   // what its linear-attention layers do
  std::string softmax;  // what its softmax-attention layers do
  LayoutRule layout;
  bool heads_over_ranks;  // the attention heads must divide evenly over the SP ranks (head sharding)
  // What it runs, checked once before anything runs (check_sp_method):
  std::vector<Transition> transitions;  // the linear layers' state transitions (kernels/state_algebra.h): scalar
                                        // for the fixed decays, diagonal for GLA's gates
  bool decoding;                        // keeps the state generation continues from (the SP prefill)
  bool bidirectional;                   // non-causal linear layers
  std::unique_ptr<Attention> (*make)(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                     int layers, int scan_slices);
  // The same method in chunks for the layer-major memory plan (LayerMajorAttention); null: none.
  std::unique_ptr<Attention> (*make_layer_major)(Comm& sp, const AttentionShape& shape, int global_N,
                                                 SpLayout layout, int layers, int chunk) = nullptr;
  // Seconds of one linear layer (LayerCostInputs), what `lasp bench project` projects.
  double (*layer_seconds)(const LayerCostInputs&) = nullptr;
  // Published when: LASP-2 (2025) and what came before it, or the state scans that followed (ZeCO, 2025).
  bool state_scan = false;
  // Based and Rebased (expanded feature maps): the methods whose linear layers run the chunkwise kernel and its
  // spans, which expand q and k block by block.
  bool expanded_maps = true;

  bool runs(Transition t) const;
  bool layer_major() const { return make_layer_major != nullptr; }
};

// What a run asks of its method.
struct SpNeeds {
  Transition transition = Transition::scalar;
  bool decoding = false, bidirectional = false, layer_major = false, expanded_maps = false;
};
// The transition of a model's linear layers: scalar for the fixed decays (none, lightning, retention, and the
// document cuts), diagonal for GLA.
Transition linear_transition(Decay decay);
// Throws, naming the method, what it lacks and the methods that have it, unless it does everything asked.
void check_sp_method(const SpMethod& method, const SpNeeds& needs);

// What the papers measured, which `lasp bench project` sets beside its projection: `method` against `versus`
// (empty: the best method without state_scan) at W ranks and N tokens.
struct PaperClaim {
  std::string method, versus;
  double W, N, percent;
  std::string source;
};
const std::vector<PaperClaim>& sp_paper_claims();

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

// The method's Attention for this rank (LocalAttention on one rank), after check_sp_method for the shape's linear
// transition. Throws naming the method and the ones there are, or what it lacks.
// scan_slices: All-Scan's K (the other methods ignore it).
std::unique_ptr<Attention> make_sp_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                             int global_N, SpLayout layout, int layers,
                                             int scan_slices = kAllScanSlices);

}  // namespace lasp
