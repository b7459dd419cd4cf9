#include "sp/methods.h"

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

}  // namespace

const std::vector<SpMethod>& sp_methods() {
  static const std::vector<SpMethod> methods = {
      {"lasp2", "LASP-2: one AllGather of the d x d piece states", "LASP-2H: one AllGather of K, V", LayoutRule::balanced,
       false, true, make<Lasp2Attention>, make_chunked<Lasp2ChunkedAttention>},
      {"exscan", "LASP-2 with the states folded by ONE exclusive scan (MPI_Iexscan) of (gate, state) pairs",
       "LASP-2H: one AllGather of K, V", LayoutRule::balanced, false, true, make_exscan},
      {"allscan", "LASP-2 with ZeCO's All-Scan: the state passes rank to rank in K slices, each folded and sent on",
       "LASP-2H: one AllGather of K, V", LayoutRule::balanced, false, true, make_allscan},
      {"lasp1", "LASP-1: the states travel a serial chain of point-to-point hops", "LASP-2H: one AllGather of K, V",
       LayoutRule::balanced, false, true, make<Lasp1Attention>},
      {"ring", "Ring Attention: K, V blocks around the ring, masked left product",
       "Ring Attention: K, V blocks around the ring, online softmax", LayoutRule::contiguous, false, false,
       make<RingAttention>},
      {"ring-zigzag", "Ring Attention on the zigzag layout", "Ring Attention on the zigzag layout", LayoutRule::zigzag,
       false, false, make<RingAttention>},
      {"ulysses", "Ulysses: all-to-all to whole sequences of H/W heads, the local kernel",
       "Ulysses: all-to-all to whole sequences of H/W heads, the local kernel", LayoutRule::balanced, true, true,
       make<UlyssesAttention>},
      {"allgather", "AllGather: one AllGather of K, V, masked left product (O(N^2))", "LASP-2H: one AllGather of K, V",
       LayoutRule::balanced, false, false, make<AllGatherAttention>},
  };
  return methods;
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
  return m.make(sp, shape, global_N, layout, layers, scan_slices);
}

std::unique_ptr<Attention> make_layer_major_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                                      int global_N, SpLayout layout, int layers, int chunk) {
  const SpMethod& m = find_sp_method(method);
  if (sp.size() == 1 || !m.make_layer_major) return nullptr;
  return m.make_layer_major(sp, shape, global_N, layout, layers, chunk);
}

}  // namespace lasp
