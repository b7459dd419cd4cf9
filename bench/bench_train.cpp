#include "bench_train.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>

#include "core/check.h"
#include "core/file.h"
#include "model/attention.h"
#include "model/model.h"
#include "train/optimizer.h"

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

}  // namespace

nlohmann::ordered_json bench_train(const ModelConfig& config, const TrainBenchOptions& o) {
  const int B = o.batch, N = o.seq_len;
  LocalAttention attention({B, N, config.num_attention_heads, config.num_key_value_heads, config.head_dim(), kLinearBlock,
                            omp_get_max_threads()});
  Model model(config, B, N, attention);
  init_weights(model.layout(), model.params(), 1);
  AdamW optimizer(model.layout(), AdamWConfig{});
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> token(0, config.vocab_size - 1);
  std::vector<int> inputs(size_t(B) * N), targets(inputs.size());
  for (auto& t : inputs) t = token(rng);
  for (auto& t : targets) t = token(rng);

  std::vector<double> seconds;
  for (int step = 0; step <= o.steps; ++step) {  // step 0 warms up
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
                              {"seconds_per_step", median},
                              {"tokens_per_s", B * N / median}};
  if (o.compare_pytorch) {
    // The config for reference.py, in a folder of its own (concurrent runs must not share a file).
    const TempDir folder("lasp_bench_train");
    const std::string config_path = folder.file("config.json");
    config.save(config_path);
    const std::string out = run_command("/usr/bin/python3 " + o.reference_script + " time-step --config " +
                                        config_path + " --seq-len " + std::to_string(N) + " --batch " +
                                        std::to_string(B) + " --repeats " + std::to_string(o.steps));
    const size_t json_at = out.find('{');
    LASP_CHECK(json_at != std::string::npos, "bench train: reference.py printed no JSON:\n{}", out);
    const nlohmann::json torch = nlohmann::json::parse(out.substr(json_at));
    r["pytorch"] = torch;
    r["speedup_vs_pytorch"] = r["tokens_per_s"].get<double>() / torch["tokens_per_s"].get<double>();
  }
  return r;
}

}  // namespace lasp
