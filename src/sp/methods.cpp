#include "sp/methods.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "sp/allgather.h"
#include "sp/lasp1.h"
#include "sp/lasp2.h"
#include "sp/lasp2_chunked.h"
#include "sp/ring.h"
#include "sp/ulysses.h"

namespace lasp {

namespace {

template <class Method>
std::unique_ptr<Attention> make(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout, int layers,
                                int /*scan_slices*/) {
  return std::make_unique<Method>(sp, shape, global_N, layout, layers);
}

template <class Method>
std::unique_ptr<Attention> make_chunked(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                        int layers, int chunk) {
  return std::make_unique<Method>(sp, shape, global_N, layout, layers, chunk);
}

// LASP-2 with its states passed by a scan instead of the AllGather (sp/state_passing.h).
std::unique_ptr<Attention> make_exscan(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                       int layers, int /*scan_slices*/) {
  return std::make_unique<Lasp2Attention>(sp, shape, global_N, layout, layers, StatePassingKind::exscan);
}
std::unique_ptr<Attention> make_allscan(Comm& sp, const AttentionShape& shape, int global_N, SpLayout layout,
                                        int layers, int scan_slices) {
  return std::make_unique<Lasp2Attention>(sp, shape, global_N, layout, layers, StatePassingKind::allscan,
                                          scan_slices);
}

// The projection's cost of one linear layer per method (bench project). LASP-2 and its scans pass states each way,
// overlapped with the intra-chunk half of the compute.
double overlapped(const LayerCostInputs& c, double pass) {
  return c.chunked + 2 * std::max(0.0, pass - 0.5 * c.chunked / 2);
}
double state_bytes(const LayerCostInputs& c) { return c.H * c.dk * c.dv * 4; }
double pair_bytes(const LayerCostInputs& c) {  // a state with its transition: (gate, state), or (A_r, B_r)
  return c.delta ? c.H * c.dk * (c.dk + c.dv) * 4 : state_bytes(c) * (c.dv + 1) / c.dv;
}
double kv_bytes(const LayerCostInputs& c) { return c.C * c.H * (c.dk + c.dv) * 4; }

double lasp2_cost(const LayerCostInputs& c) {  // one all-gather of states (gdn: of pairs)
  return c.summary + overlapped(c, (c.W - 1) * (c.alpha + (c.delta ? pair_bytes(c) : state_bytes(c)) / c.beta));
}
double exscan_cost(const LayerCostInputs& c) {  // recursive doubling: log2 W rounds of one pair
  return c.summary + overlapped(c, std::ceil(std::log2(c.W)) * (c.alpha + pair_bytes(c) / c.beta));
}
double allscan_cost(const LayerCostInputs& c) {  // W-1+K slice hops, K chosen best for W (--scan-slices); A_r stays
  double best = 1e30;
  for (double K = 1; K <= 256; K *= 2) best = std::min(best, (c.W - 1 + K) * (c.alpha + state_bytes(c) / K / c.beta));
  return c.summary + overlapped(c, best);
}
double lasp1_cost(const LayerCostInputs& c) {  // 2 (W-1) dependent hops, nothing overlaps them
  return c.chunked + 2 * (c.W - 1) * (c.alpha + state_bytes(c) / c.beta);
}
double ring_cost(const LayerCostInputs& c) {  // W steps bounded by the rank that sees every block; hops overlap it
  return c.W * std::max(c.masked_block, c.alpha + kv_bytes(c) / c.beta) + (c.W - 1) * (c.alpha + 2 * kv_bytes(c) / c.beta);
}
double ring_zigzag_cost(const LayerCostInputs& c) {  // the same hops; each rank's causal work is about half of it
  const double block = c.masked_block * (c.W + 1) / (2 * c.W);
  return c.W * std::max(block, c.alpha + kv_bytes(c) / c.beta) + (c.W - 1) * (c.alpha + 2 * kv_bytes(c) / c.beta);
}
double ulysses_cost(const LayerCostInputs& c) {  // 4 all-to-alls each way; the kernel on H/W heads of N tokens
  return c.chunked + 8 * (c.W - 1) * (c.alpha + c.C * c.H * (c.dk + c.dv) / 2 * 4 / c.W / c.beta);
}
double allgather_cost(const LayerCostInputs& c) {  // K, V of everyone, then the masked product over all N keys
  return 2 * (c.W - 1) * (c.alpha + kv_bytes(c) / c.beta) + c.masked_block * c.W;
}

}  // namespace

const std::vector<PaperClaim>& sp_paper_claims() {
  static const std::vector<PaperClaim> claims = {
      {"lasp2", "lasp1", 64, 524288, 7.3, "LASP-2, 64 A100, Linear-Llama3-1B"},
      {"lasp2", "lasp1", 64, 2097152, 15.2, "LASP-2, 64 A100, Linear-Llama3-1B"},
      {"lasp2", "ring", 64, 524288, 17.8, "LASP-2, 64 A100, Linear-Llama3-1B"},
      {"lasp2", "ring", 64, 2097152, 36.6, "LASP-2, 64 A100, Linear-Llama3-1B"},
      {"allscan", "", 256, 8388608, 60, "ZeCO, 256 GPUs, GLA"},
  };
  return claims;
}

const std::vector<SpMethod>& sp_methods() {
  static const std::vector<SpMethod> methods = {
      {"lasp2", "LASP-2: one AllGather of the d x d piece states", "LASP-2H: one AllGather of K, V", LayoutRule::balanced,
       false, {Transition::scalar, Transition::diagonal, Transition::full}, true, true, make<Lasp2Attention>, make_chunked<Lasp2ChunkedAttention>, lasp2_cost},
      {"exscan", "LASP-2 with the states folded by ONE exclusive scan (MPI_Iexscan) of (gate, state) pairs",
       "LASP-2H: one AllGather of K, V", LayoutRule::balanced, false, {Transition::scalar, Transition::diagonal, Transition::full}, true, true,
       make_exscan, nullptr, exscan_cost, true},
      {"allscan", "LASP-2 with ZeCO's All-Scan: the state passes rank to rank in K slices, each folded and sent on",
       "LASP-2H: one AllGather of K, V", LayoutRule::balanced, false, {Transition::scalar, Transition::diagonal, Transition::full}, true, true,
       make_allscan, nullptr, allscan_cost, true},
      {"lasp1", "LASP-1: the states travel a serial chain of point-to-point hops", "LASP-2H: one AllGather of K, V",
       LayoutRule::balanced, false, {Transition::scalar, Transition::diagonal, Transition::full}, false, false,
       make<Lasp1Attention>, nullptr, lasp1_cost},
      {"ring", "Ring Attention: K, V blocks around the ring, masked left product",
       "Ring Attention: K, V blocks around the ring, online softmax", LayoutRule::contiguous, false, {Transition::scalar}, false,
       false, make<RingAttention>, nullptr, ring_cost, false, false},
      {"ring-zigzag", "Ring Attention on the zigzag layout", "Ring Attention on the zigzag layout", LayoutRule::zigzag,
       false, {Transition::scalar}, false, false, make<RingAttention>, nullptr, ring_zigzag_cost, false, false},
      {"ulysses", "Ulysses: all-to-all to whole sequences of H/W heads, the local kernel",
       "Ulysses: all-to-all to whole sequences of H/W heads, the local kernel", LayoutRule::balanced, true,
       {Transition::scalar, Transition::diagonal, Transition::full}, false, true, make<UlyssesAttention>, nullptr,
       ulysses_cost},
      {"allgather", "AllGather: one AllGather of K, V, masked left product (O(N^2))", "LASP-2H: one AllGather of K, V",
       LayoutRule::balanced, false, {Transition::scalar}, false, false,
       make<AllGatherAttention>, nullptr, allgather_cost, false, false},
  };
  return methods;
}

bool SpMethod::runs(Transition t) const { return std::find(transitions.begin(), transitions.end(), t) != transitions.end(); }

Transition linear_transition(Decay decay) {
  return decay == Decay::gla ? Transition::diagonal : decay == Decay::gdn ? Transition::full : Transition::scalar;
}

void check_sp_method(const SpMethod& m, const SpNeeds& needs) {
  auto missing = [&](const char* what, auto has) {
    std::string others;
    for (const SpMethod& o : sp_methods())
      if (has(o)) others += (others.empty() ? "" : ", ") + o.name;
    throw Error(fmt::format("--sp-method {} has no {} ({})", m.name, what,
                            others.empty() ? "no method has it yet: run it on one process, --sp-size 1"
                                           : "the methods that have: " + others));
  };
  const Transition t = needs.transition;
  if (!m.runs(t))
    missing(t == Transition::diagonal ? "GLA (per-token gates: a diagonal state transition)"
            : t == Transition::full   ? "gated delta rule (decay gdn: a full d_k x d_k state transition)"
                                      : fmt::format("{} state transition", to_string(t)).c_str(),
            [&](const SpMethod& o) { return o.runs(t); });
  if (needs.decoding && !m.decoding)
    missing("sequence-parallel prefill (it keeps no decoding state)", [](const SpMethod& o) { return o.decoding; });
  if (needs.bidirectional && !m.bidirectional)
    missing("bidirectional linear layers", [](const SpMethod& o) { return o.bidirectional; });
  if (needs.layer_major && !m.layer_major())
    missing("layer-major chunked form", [](const SpMethod& o) { return o.layer_major(); });
  if (needs.expanded_maps && !m.expanded_maps)
    missing("Based or Rebased (feature_map based | rebased: expanded features)",
            [](const SpMethod& o) { return o.expanded_maps; });
}

std::string sp_method_names(const std::string& separator) {
  std::string names;
  for (const SpMethod& m : sp_methods()) names += (names.empty() ? "" : separator) + m.name;
  return names;
}

const SpMethod& find_sp_method(const std::string& name) {
  if (name.empty()) return sp_methods().front();
  for (const SpMethod& m : sp_methods())
    if (m.name == name) return m;
  throw Error(fmt::format("unknown --sp-method '{}': expected one of {}", name, sp_method_names(", ")));
}

SpLayout sp_method_layout(const std::string& method, const std::string& requested, const ModelConfig& config,
                          int sp_size) {
  const SpMethod& m = find_sp_method(method);
  if (m.layout == LayoutRule::zigzag) return SpLayout::zigzag;
  if (!requested.empty()) return sp_layout_from_string(requested);
  if (m.layout == LayoutRule::contiguous || sp_size == 1) return SpLayout::contiguous;  // one rank: any length works
  return config.has_softmax_layer() ? SpLayout::zigzag : SpLayout::contiguous;
}

std::unique_ptr<Attention> make_sp_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                             int global_N, SpLayout layout, int layers, int scan_slices) {
  const SpMethod& m = find_sp_method(method);
  LASP_CHECK(scan_slices >= 1, "--scan-slices must be at least 1, got {}", scan_slices);
  if (sp.size() == 1) return std::make_unique<LocalAttention>(shape);
  SpNeeds needs;
  needs.transition = shape.delta ? Transition::full : shape.gla ? Transition::diagonal : Transition::scalar;
  needs.expanded_maps = shape.f > 0;
  check_sp_method(m, needs);
  return m.make(sp, shape, global_N, layout, layers, scan_slices);
}

std::unique_ptr<Attention> make_layer_major_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                                      int global_N, SpLayout layout, int layers, int chunk) {
  const SpMethod& m = find_sp_method(method);
  if (sp.size() == 1 || !m.make_layer_major) return nullptr;
  return m.make_layer_major(sp, shape, global_N, layout, layers, chunk);
}

}  // namespace lasp
