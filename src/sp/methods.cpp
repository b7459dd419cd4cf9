#include "sp/methods.h"

#include "core/check.h"
#include "sp/allgather.h"
#include "sp/lasp1.h"
#include "sp/lasp2.h"
#include "sp/ring.h"
#include "sp/ulysses.h"

namespace lasp {

SpLayout sp_method_layout(const std::string& method, const std::string& requested, const ModelConfig& config,
                          int sp_size) {
  if (method == "ring-zigzag") return SpLayout::zigzag;
  if (!requested.empty()) return sp_layout_from_string(requested);
  if (method == "ring" || sp_size == 1) return SpLayout::contiguous;  // one rank: any length works
  return config.has_softmax_layer() ? SpLayout::zigzag : SpLayout::contiguous;
}

std::unique_ptr<Attention> make_sp_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                             int global_N, SpLayout layout, int layers) {
  LASP_CHECK(method == "lasp2" || method == "lasp1" || method == "allgather" || method == "ulysses" ||
                 method == "ring" || method == "ring-zigzag",
             "unknown --sp-method '{}': expected lasp2, lasp1, ring, ring-zigzag, ulysses or allgather", method);
  if (sp.size() == 1) return std::make_unique<LocalAttention>(shape);
  if (method == "lasp1") return std::make_unique<Lasp1Attention>(sp, shape, global_N, layout, layers);
  if (method == "ring" || method == "ring-zigzag") return std::make_unique<RingAttention>(sp, shape, global_N, layout, layers);
  if (method == "ulysses") return std::make_unique<UlyssesAttention>(sp, shape, global_N, layout, layers);
  if (method == "allgather") return std::make_unique<AllGatherAttention>(sp, shape, global_N, layout, layers);
  return std::make_unique<Lasp2Attention>(sp, shape, global_N, layout, layers);
}

}  // namespace lasp
