#include "bench_sp.h"

#include <sys/resource.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "core/check.h"
#include "core/file.h"
#include "model/model.h"
#include "sp/grid.h"
#include "sp/methods.h"
#include "train/optimizer.h"
#include "train/plot.h"

namespace lasp {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

long peak_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

}  // namespace

void bench_sp(const SpBenchOptions& options, Comm& world) {
  SpBenchOptions o = options;
  if (o.methods.empty())
    for (const SpMethod& m : sp_methods()) o.methods.push_back(m.name);
  for (const std::string& m : o.methods) find_sp_method(m);  // an unknown name fails now, not after the others ran
  const int W = world.size();
  const bool rank0 = world.rank() == 0;
  if (rank0) check_can_create(o.out_prefix + ".csv");  // before the runs, not after them
  nlohmann::ordered_json results = nlohmann::ordered_json::array();
  const int total = int(o.models.size() * o.seq_lens.size() * o.methods.size());
  int done = 0;
  std::string state_line;
  for (const std::string& types : o.models)
    for (int N : o.seq_lens)
      for (const std::string& method : o.methods) {
        ++done;
        ModelConfig c;  // the default small hybrid, with the layer pattern of this run
        c.layer_types = types;
        c.num_hidden_layers = int(types.size());
        c.linear.decay = decay_from_string(o.decay);
        LASP_CHECK(o.feature_map.empty() || c.linear.set_feature_map(o.feature_map),
                   "bench sp --feature-map: expected one of silu, elu1, relu, identity, based, rebased, got '{}'",
                   o.feature_map);
        if (c.linear.expanded) c.linear.feature_dim = o.feature_dim;
        c.validate();
        const SpLayout layout = sp_method_layout(method, "", c, W);
        const int unit = layout == SpLayout::zigzag ? 2 * W : W;
        std::string skip;
        if (N % unit) skip = "N not divisible by " + std::to_string(unit);
        if (find_sp_method(method).heads_over_ranks && c.num_attention_heads % W) skip = "heads not divisible by W";
        if (c.linear.decay == Decay::gla && !find_sp_method(method).runs(Transition::diagonal) && W > 1) skip = "no GLA form";
        if (c.linear.decay == Decay::gdn && !find_sp_method(method).runs(Transition::full) && W > 1) skip = "no gdn form";
        if (c.linear.expanded && !find_sp_method(method).expanded_maps && W > 1) skip = "no expanded feature maps";
        if (rank0)  // progress: redrawn in place on a terminal, a line each otherwise
          std::fprintf(stderr, isatty(fileno(stderr)) ? "\r[%d/%d] %s N=%d %s ...\033[K" : "[%d/%d] %s N=%d %s ...\n", done,
                       total, types.c_str(), N, method.c_str());
        nlohmann::ordered_json row{{"model", types}, {"method", method}, {"N", N}, {"ranks", W},
                                   {"layout", to_string(layout)}};
        if (!skip.empty()) {
          row["skipped"] = skip;
          results.push_back(row);
          continue;
        }
        const int Nl = N / W;
        const std::vector<int> pos = sp_positions(N, W, world.rank(), layout);
        const AttentionShape shape = attention_shape(c, 1, Nl, kLinearBlock, omp_get_max_threads());
        // what LASP-2's AllGather moves per linear layer (forward, and again backward)
        if (state_line.empty() && shape.delta)
          state_line = fmt::format("a gdn layer's (transition, state) pair: HV x dk x (dk + dv) = {} x {} x ({} + {}) "
                                   "floats = {} bytes per rank each way under lasp2, and the convolutions' halo, "
                                   "(K - 1) x (2 H dk + HV dv) = {} floats, to the next rank (forward and backward: "
                                   "twice that per layer, received from W - 1 ranks)",
                                   shape.value_heads(), shape.dk, shape.dk, shape.dv,
                                   size_t(shape.value_heads()) * shape.dk * (shape.dk + shape.dv) * sizeof(float),
                                   (c.linear.conv_size - 1) * (2 * shape.H * shape.dk + shape.value_heads() * shape.dv));
        if (state_line.empty())
          state_line = fmt::format("a linear layer's state ({}): H x dk x dv = {} x {} x {} floats = {} bytes per rank "
                                   "each way under lasp2 (forward and backward: twice that received per layer)",
                                   c.linear.feature_map_name(), shape.H, shape.dk, shape.dv,
                                   shape.H * shape.state_floats() * sizeof(float));
        auto attention = make_sp_attention(method, world, shape, N, layout, c.num_hidden_layers, o.scan_slices);
        Model model(c, 1, Nl, *attention);
        init_weights(model.layout(), model.params(), 1);
        std::mt19937 rng(3);
        std::vector<int> inputs(Nl), targets(Nl);
        for (int i = 0; i < Nl; ++i) inputs[i] = int(rng() % 256), targets[i] = int(rng() % 256);
        std::vector<double> fwd, bwd, comm;
        uint64_t sent = 0, received = 0;
        for (int r = 0; r <= o.repeats; ++r) {  // r = 0 warms up
          world.barrier();
          world.reset_stats();
          model.zero_grads();
          const double t0 = now();
          model.forward(inputs.data(), targets.data());
          const double t1 = now();
          model.backward(1.f / float(N));
          const double t2 = now();
          if (r == 0) continue;
          fwd.push_back(t1 - t0);
          bwd.push_back(t2 - t1);
          comm.push_back(world.stats().seconds);
          sent = world.stats().total_sent();
          received = world.stats().total_received();
        }
        // the slowest rank sets the pace: take the max over ranks of each median; bytes: the busiest rank's
        constexpr int kStats = 5;
        double m[kStats] = {median(fwd), median(bwd), median(comm), double(sent), double(received)};
        std::vector<double> all(kStats * size_t(W), 0.0);
        std::copy(m, m + kStats, all.begin() + kStats * world.rank());
        world.all_reduce(all.data(), all.size());
        for (int k = 0; k < kStats; ++k)
          for (int r = 0; r < W; ++r) m[k] = std::max(m[k], all[kStats * size_t(r) + k]);
        const double step = m[0] + m[1];
        row["tokens_per_s"] = N / step;
        row["forward_s"] = m[0];
        row["backward_s"] = m[1];
        row["communication_s"] = m[2];
        row["compute_s"] = std::max(0.0, step - m[2]);
        row["bytes_sent_per_rank_per_layer"] = m[3] / c.num_hidden_layers;
        row["bytes_received_per_rank_per_layer"] = m[4] / c.num_hidden_layers;
        row["peak_rss_mb"] = peak_rss_kb() / 1024.0;
        results.push_back(row);
      }
  if (!rank0) return;
  if (isatty(fileno(stderr))) std::fprintf(stderr, "\r[%d/%d] done\033[K\n", total, total);
  write_file_atomic(o.out_prefix + ".json", results.dump(2) + "\n");
  std::string csv = "model,method,N,ranks,layout,tokens_per_s,forward_s,backward_s,communication_s,compute_s,"
                    "bytes_sent_per_rank_per_layer,bytes_received_per_rank_per_layer,peak_rss_mb,skipped\n";
  for (const auto& r : results) {
    csv += r["model"].get<std::string>() + ',' + r["method"].get<std::string>() + ',' + r["N"].dump() + ',' +
           r["ranks"].dump() + ',' + r["layout"].get<std::string>();
    for (const char* k : {"tokens_per_s", "forward_s", "backward_s", "communication_s", "compute_s",
                          "bytes_sent_per_rank_per_layer", "bytes_received_per_rank_per_layer", "peak_rss_mb"})
      csv += ',' + (r.contains(k) ? r[k].dump() : "");
    csv += ',' + (r.contains("skipped") ? r["skipped"].get<std::string>() : "") + '\n';
  }
  write_file_atomic(o.out_prefix + ".csv", csv);
  std::printf("%-6s %-12s %8s %12s %10s %10s %10s %14s %10s\n", "model", "method", "N", "tokens/s", "fwd s", "bwd s",
              "comm s", "recv MB/layer", "RSS MB");
  for (const auto& r : results) {
    if (r.contains("skipped")) {
      std::printf("%-6s %-12s %8d   skipped: %s\n", r["model"].get<std::string>().c_str(),
                  r["method"].get<std::string>().c_str(), r["N"].get<int>(), r["skipped"].get<std::string>().c_str());
      continue;
    }
    std::printf("%-6s %-12s %8d %12.0f %10.3f %10.3f %10.3f %14.2f %10.0f\n", r["model"].get<std::string>().c_str(),
                r["method"].get<std::string>().c_str(), r["N"].get<int>(), r["tokens_per_s"].get<double>(),
                r["forward_s"].get<double>(), r["backward_s"].get<double>(), r["communication_s"].get<double>(),
                r["bytes_received_per_rank_per_layer"].get<double>() / 1e6, r["peak_rss_mb"].get<double>());
  }
  std::printf("%s\n", state_line.c_str());
  // Charts: one data block per (model, method), columns N, tokens/s, received bytes.
  const std::string data = o.out_prefix + ".dat";
  std::string dat, tokens_plot, bytes_plot;
  int index = 0;
  for (const std::string& types : o.models)
    for (const std::string& method : o.methods) {
      for (const auto& r : results)
        if (r["model"] == types && r["method"] == method && !r.contains("skipped"))
          dat += r["N"].dump() + ' ' + r["tokens_per_s"].dump() + ' ' +
                 std::to_string(std::max(1.0, r["bytes_received_per_rank_per_layer"].get<double>())) + '\n';
      dat += "\n\n";
      const std::string title = types + " " + method;
      tokens_plot += std::string(tokens_plot.empty() ? "plot " : ", ") + "'" + data + "' index " + std::to_string(index) +
                     " using 1:2 with linespoints lw 2 title '" + title + "'";
      bytes_plot += std::string(bytes_plot.empty() ? "plot " : ", ") + "'" + data + "' index " + std::to_string(index) +
                    " using 1:3 with linespoints lw 2 title '" + title + "'";
      ++index;
    }
  write_file_atomic(data, dat);
  const std::string common = "set terminal png size 1000,600\nset grid\nset logscale x 2\nset xlabel 'sequence length N'\n"
                             "set key outside right\n";
  try {
    gnuplot_png(common + "set output '" + o.out_prefix + "_tokens.png'\nset ylabel 'tokens/s'\nset title 'lasp bench sp, " +
                    std::to_string(W) + " ranks'\n" + tokens_plot + "\n",
                o.out_prefix + "_tokens.png");
    gnuplot_png(common + "set output '" + o.out_prefix + "_bytes.png'\nset logscale y\nset ylabel 'bytes received per "
                    "rank per layer'\nset title 'communication per rank, " + std::to_string(W) + " ranks'\n" + bytes_plot + "\n",
                o.out_prefix + "_bytes.png");
  } catch (...) {
    std::remove(data.c_str());
    throw;
  }
  std::remove(data.c_str());
  std::printf("wrote %s.csv, %s.json, %s_tokens.png, %s_bytes.png\n", o.out_prefix.c_str(), o.out_prefix.c_str(),
              o.out_prefix.c_str(), o.out_prefix.c_str());
}

}  // namespace lasp
