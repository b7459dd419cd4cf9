#include "bench_train.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>

#include "core/check.h"
#include "core/file.h"
#include "core/memory.h"
#include "model/attention.h"
#include "model/model.h"
#include "train/optimizer.h"
#include "train/plot.h"

namespace lasp {
namespace {

// Runs a command and returns its standard output; throws if it fails.
std::string run_command(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  LASP_CHECK(pipe, "bench train: cannot run {}", command);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe.get())) out.append(buf.data(), n);
  const int status = pclose(pipe.release());
  LASP_CHECK(status == 0, "bench train: `{}` failed (status {})", command, status);
  return out;
}

// A path or value for the shell: in single quotes.
std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// tools/reference.py, from any folder: --reference if given, else the source tree's (this file's folder at compile
// time, then ..), else the one beside the build folder of this binary (BUILD/lasp -> BUILD/../tools).
std::string find_reference(const std::string& given) {
  if (!given.empty()) return given;
  namespace fs = std::filesystem;
  const fs::path roots[] = {fs::path(__FILE__).parent_path().parent_path(),
                            fs::read_symlink("/proc/self/exe").parent_path().parent_path()};
  for (const fs::path& root : roots)
    if (fs::is_regular_file(root / "tools" / "reference.py")) return (root / "tools" / "reference.py").string();
  throw Error(fmt::format("bench train --compare-pytorch: no tools/reference.py under {} or {}; pass --reference PATH",
                          roots[0].string(), roots[1].string()));
}

// The peer's interpreter: the project's .venv-peer (scripts/setup_peer.sh: current PyTorch) beside tools/, else
// Debian's /usr/bin/python3 (PyTorch 1.13).
std::string peer_python(const std::string& reference) {
  const std::filesystem::path venv =
      std::filesystem::absolute(reference).parent_path().parent_path() / ".venv-peer" / "bin" / "python";
  return access(venv.c_str(), X_OK) == 0 ? venv.string() : "/usr/bin/python3";
}

// The JSON that reference.py printed (after whatever torch wrote before it).
nlohmann::json reference_json(const std::string& out) {
  const size_t at = out.find('{');
  LASP_CHECK(at != std::string::npos, "bench train: reference.py printed no JSON:\n{}", out);
  return nlohmann::json::parse(out.substr(at));
}

}  // namespace

nlohmann::ordered_json bench_train(const ModelConfig& config, const TrainBenchOptions& o) {
  LASP_CHECK(o.seq_lens.size() == 1, "bench train: one length per process, got {}", o.seq_lens.size());
  const std::string reference = o.compare_pytorch ? find_reference(o.reference_script) : "";
  const std::string python = o.compare_pytorch ? peer_python(reference) : "";
  if (o.compare_pytorch) {  // before anything is timed: a comparison against the reference BLAS says nothing
    if (python == "/usr/bin/python3")
      std::fprintf(stderr, "lasp: PyTorch peer: Debian's /usr/bin/python3 (PyTorch 1.13); scripts/setup_peer.sh "
                           "installs current PyTorch into .venv-peer, which --compare-pytorch then takes\n");
    const nlohmann::json blas = reference_json(run_command(quoted(python) + " " + quoted(reference) + " blas"));
    LASP_CHECK(!blas["reference"].get<bool>(),
               "bench train --compare-pytorch: PyTorch would run on the reference BLAS ({}), about 25x slower than an "
               "optimized one, which makes the comparison meaningless; scripts/setup.sh installs OpenBLAS "
               "(libopenblas0-pthread), or point libblas.so.3 at another optimized BLAS with update-alternatives",
               blas["blas"].get<std::string>());
  }
  const int B = o.batch, N = o.seq_lens[0];
  AttentionShape shape = attention_shape(config, B, N, kLinearBlock, omp_get_max_threads());
  shape.bf16 = o.memory.precision == Precision::bf16;
  const MemoryPlan plan = plan_memory(config, shape, nullptr, o.memory, true);
  std::fprintf(stderr, "lasp: N=%d: %s\n", N, plan.describe().c_str());
  const std::unique_ptr<Attention> attention = planned_attention(plan, config, shape, nullptr);
  Model model(config, B, N, *attention, plan.model);
  init_weights(model.layout(), model.params(), 1);
  AdamW optimizer(model.layout(), AdamWConfig{});
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> token(0, config.vocab_size - 1);
  std::vector<int> inputs(size_t(B) * N), targets(inputs.size());
  for (auto& t : inputs) t = token(rng);
  for (auto& t : targets) t = token(rng);
  if (o.doc_every > 0) {  // token 0 opens a document, at random with probability 1 / doc_every
    LASP_CHECK(config.vocab_size > 1, "bench train --doc-every needs a vocabulary of at least 2 tokens");
    std::bernoulli_distribution opens(1.0 / o.doc_every);
    for (auto& t : inputs) t = opens(rng) ? 0 : std::max(t, 1);
    model.set_document_start(0);
  }

  std::vector<double> seconds;
  for (int step = 1 - o.warmup; step <= o.steps; ++step) {  // steps up to 0 warm up
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grads();
    model.forward(inputs.data(), targets.data());
    model.backward(1.f / float(B * N));
    optimizer.step(model.params(), model.grads(), 1e-4f);
    if (step > 0) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  nlohmann::ordered_json r = {{"model", config.to_json()},
                              {"seq_len", N},
                              {"batch", B},
                              {"threads", omp_get_max_threads()},
                              {"precision", to_string(o.memory.precision)},
                              {"doc_every", o.doc_every},
                              {"seconds_per_step", median},
                              {"tokens_per_s", B * N / median},
                              {"memory_plan", plan.kept()},
                              {"chunk", plan.model.chunk},
                              {"recompute", plan.model.recompute},
                              {"memory_limit_bytes", plan.limit},
                              {"estimated_peak_bytes", plan.bytes},
                              {"peak_rss_bytes", peak_rss_bytes()}};
  if (o.compare_pytorch) {
    // The config for reference.py, in a folder of its own (concurrent runs must not share a file).
    const TempDir folder("lasp_bench_train");
    const std::string config_path = folder.file("config.json");
    config.save(config_path);
    // The peer (tools/peer.py): eager, and compiled where its torch has torch.compile; its tokens_per_s is the
    // better of the two, which the speed-up is measured against.
    const std::string out = run_command(quoted(python) + " " + quoted(reference) + " time-step --config " +
                                        quoted(config_path) + " --seq-len " + std::to_string(N) + " --batch " +
                                        std::to_string(B) + " --repeats " + std::to_string(o.steps) + " --threads " +
                                        std::to_string(omp_get_max_threads()) + " --precision " +
                                        to_string(o.memory.precision) + " --profile " +
                                        std::to_string(o.peer_profile));
    const nlohmann::json torch = reference_json(out);
    r["pytorch"] = torch;
    r["pytorch_peer"] = python == "/usr/bin/python3"
                            ? "Debian's PyTorch (/usr/bin/python3): no .venv-peer, see scripts/setup_peer.sh"
                            : "current PyTorch from .venv-peer (scripts/setup_peer.sh)";
    r["speedup_vs_pytorch"] = r["tokens_per_s"].get<double>() / torch["tokens_per_s"].get<double>();
    for (const char* mode : {"eager", "compiled"})
      if (torch.contains(mode))
        r[std::string("speedup_vs_pytorch_") + mode] =
            r["tokens_per_s"].get<double>() / torch[mode]["tokens_per_s"].get<double>();
  }
  return r;
}

nlohmann::ordered_json bench_train_lengths(const ModelConfig& config, const TrainBenchOptions& o, const std::string& self,
                                           int threads) {
  // Checked before the first child runs, so that a bad path costs no benchmark.
  const std::string json_path = o.out_prefix + ".json", png_path = o.out_prefix + ".png", data = o.out_prefix + ".dat";
  check_can_create(json_path);
  const TempDir folder("lasp_bench_train");
  const std::string config_path = folder.file("config.json");
  config.save(config_path);
  std::string flags = " --config " + quoted(config_path) + " --batch " + std::to_string(o.batch) + " --steps " +
                      std::to_string(o.steps) + " --warmup " + std::to_string(o.warmup) + " --json";
  if (o.memory.limit_gib > 0) flags += " --memory-limit " + fmt::format("{}", o.memory.limit_gib);
  if (o.memory.recompute) flags += " --recompute";
  if (o.memory.chunk > 0) flags += " --chunk " + std::to_string(o.memory.chunk);
  flags += std::string(" --precision ") + to_string(o.memory.precision);
  if (o.doc_every > 0) flags += " --doc-every " + std::to_string(o.doc_every);
  if (o.compare_pytorch) flags += " --compare-pytorch --peer-profile " + std::to_string(o.peer_profile);
  if (!o.reference_script.empty()) flags += " --reference " + quoted(o.reference_script);

  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  std::printf("%10s %12s %10s %12s %12s  %s\n", "N", "tokens/s", "peak GiB", "KiB/token", "est. GiB", "plan");
  std::map<int, std::vector<std::pair<double, double>>> by_length;  // N -> (tokens/s, KiB per token) of each run
  for (int N : o.seq_lens) {
    const std::string out = run_command(quoted(self) + " --threads " + std::to_string(threads) + " bench train" + flags +
                                        " --seq-lens " + std::to_string(N));
    const size_t at = out.find('{');
    LASP_CHECK(at != std::string::npos, "bench train: the run of N={} printed no JSON:\n{}", N, out);
    nlohmann::ordered_json r = nlohmann::ordered_json::parse(out.substr(at));
    const double rss = r["peak_rss_bytes"].get<double>(), per_token = rss / (double(N) * o.batch) / 1024;
    r["peak_rss_kib_per_token"] = per_token;
    std::printf("%10d %12.0f %10.2f %12.2f %12.2f  %s\n", N, r["tokens_per_s"].get<double>(), rss / (1 << 30),
                per_token, r["estimated_peak_bytes"].get<double>() / (1 << 30), r["memory_plan"].get<std::string>().c_str());
    std::fflush(stdout);
    by_length[N].push_back({r["tokens_per_s"].get<double>(), per_token});
    rows.push_back(r);
  }
  // One point per length, in increasing order: the median of its runs (a length given twice is one point, not a
  // line drawn back and forth in run order).
  std::string dat;
  for (auto& [N, runs] : by_length) {
    auto median = [&](auto field) {
      std::vector<double> v;
      for (const auto& run : runs) v.push_back(field(run));
      std::sort(v.begin(), v.end());
      return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    };
    dat += fmt::format("{} {} {}\n", N, median([](const auto& r) { return r.first; }),
                       median([](const auto& r) { return r.second; }));
  }
  write_file_atomic(json_path, rows.dump(2) + "\n");
  write_file_atomic(data, "# N tokens/s KiB/token (medians over the runs of each N)\n" + dat);
  gnuplot_png("set terminal png size 1000,600\nset grid\nset logscale x 2\nset format x '%.0s%c'\nset xlabel 'sequence length N (tokens)'\n"
              "set ylabel 'tokens/s'\nset y2label 'peak RSS per token (KiB)'\nset ytics nomirror\nset y2tics\n"
              "set yrange [0:*]\nset y2range [0:*]\nset key top center\nset output '" + png_path + "'\n"
              "set title 'lasp bench train, " + config.layer_types + ", " + std::to_string(threads) + " threads'\n"
              "plot '" + data + "' using 1:2 axes x1y1 with linespoints lw 2 title 'tokens/s', '" + data +
              "' using 1:3 axes x1y2 with linespoints lw 2 title 'KiB per token (peak RSS / N)'\n",
              png_path);
  std::printf("wrote %s, %s (its points: %s)\n", json_path.c_str(), png_path.c_str(), data.c_str());
  return rows;
}

}  // namespace lasp
