// One place that turns a method name into its Attention: lasp2 (LASP-2 + LASP-2H), lasp1, ring,
// ring-zigzag, ulysses, allgather. On a single SP rank every method is the local kernels.
#pragma once
#include <memory>
#include <string>

#include "comm/comm.h"
#include "model/attention.h"
#include "model/config.h"
#include "sp/grid.h"

namespace lasp {

// The layout a method runs on: ring-zigzag always zigzag, ring contiguous unless `requested` says
// otherwise; the others `requested`, else zigzag when the model has a softmax layer and several ranks.
SpLayout sp_method_layout(const std::string& method, const std::string& requested, const ModelConfig& config,
                          int sp_size);

// Throws naming the method and the ones there are.
std::unique_ptr<Attention> make_sp_attention(const std::string& method, Comm& sp, const AttentionShape& shape,
                                             int global_N, SpLayout layout, int layers);

}  // namespace lasp
