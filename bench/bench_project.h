// `lasp bench project`: an alpha-beta model of a cluster, fed with compute rates measured on this machine,
// projecting the training tokens/s of each sequence-parallel method for 16-256 ranks and sequences up to
// 8M tokens on the paper's Linear-Llama3-1B (16 layers, hidden 2048, 16 heads of 128, MLP 8192, pure
// linear attention without decay), next to the paper's published LASP-2 ratios. A model, not a measurement:
// it shows how the methods' communication scales once it crosses a real network.
#pragma once

namespace lasp {

struct ProjectOptions {
  double link_gbit = 200;       // inter-node bandwidth per rank (InfiniBand HDR)
  double intra_gbit = 2400;     // intra-node bandwidth (NVLink class)
  double latency_us = 5;        // per message, inter-node
  int ranks_per_node = 8;
  double accelerator_speedup = 100;  // a second projection with compute this much faster than here
};

void bench_project(const ProjectOptions& options);

}  // namespace lasp
