#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>

#include "core/check.h"
#include <nlohmann/json.hpp>
#include "model/attention.h"
#include "model/model.h"
#include "sp/grid.h"
#include "sp/lasp2.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/schedule.h"

namespace lasp {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

SpLayout layout_for(const ModelConfig& c, const ParallelOptions& p) {
  if (!p.sp_layout.empty()) return sp_layout_from_string(p.sp_layout);
  return c.has_softmax_layer() ? SpLayout::zigzag : SpLayout::contiguous;
}

// The attention of this rank: the local kernels on one SP rank, LASP-2 / LASP-2H across several.
std::unique_ptr<Attention> make_attention(const ModelConfig& c, const Grid& g, int B, int N, SpLayout layout,
                                          int block) {
  const int Nl = N / g.sp_size;
  const AttentionShape shape{B, Nl, c.num_attention_heads, c.num_key_value_heads, c.head_dim(), block};
  if (g.sp_size == 1) return std::make_unique<LocalAttention>(shape);
  return std::make_unique<Lasp2Attention>(*g.sp, shape, N, layout, c.num_hidden_layers);
}

uint64_t traffic(const Comm& c) { return c.stats().total_sent() + c.stats().total_received(); }

}  // namespace

TrainResult train(const ModelConfig& config, const TrainOptions& o, Comm& world) {
  LASP_CHECK(o.steps > 0 && o.batch > 0 && o.seq_len > 0,
             "train: --steps, --batch and --seq-len must be positive, got {}, {}, {}", o.steps, o.batch, o.seq_len);
  Grid grid = make_grid(world, o.parallel.sp_size, o.parallel.dp_size);
  const SpLayout layout = layout_for(config, o.parallel);
  const std::vector<int> positions = sp_positions(o.seq_len, grid.sp_size, grid.sp_rank, layout);
  const int Nl = int(positions.size()), B = o.batch;

  const auto data = open_text_tokens(o.data_path);
  LASP_CHECK(data->vocab_size() <= config.vocab_size, "train: {} holds tokens up to {} but the model's vocab_size is {}",
             o.data_path, data->vocab_size() - 1, config.vocab_size);
  // Every rank draws the same windows (same seed); DP rank g trains on rows [g B, g B + B).
  WindowSampler sampler(*data, o.seq_len, B * grid.dp_size, o.seed);

  auto attention = make_attention(config, grid, B, o.seq_len, layout, o.block);
  Model model(config, B, Nl, *attention, o.recompute);
  init_weights(model.layout(), model.params(), o.seed);
  AdamW optimizer(model.layout(), o.adamw);
  const float min_lr = o.min_lr >= 0 ? o.min_lr : o.lr / 10;
  const int warmup = o.warmup >= 0 ? std::min(o.warmup, o.steps) : o.steps / 10;
  const double global_tokens = double(B) * grid.dp_size * o.seq_len;
  const bool rank0 = world.rank() == 0;
  if (rank0 && world.size() > 1)
    std::fprintf(stderr, "lasp: %d ranks = dp %d x sp %d, %s layout, %d tokens per rank per sequence\n", world.size(),
                 grid.dp_size, grid.sp_size, to_string(layout), Nl);

  std::vector<int> inputs(size_t(B) * Nl), targets(inputs.size());
  std::ofstream metrics;
  if (rank0 && !o.metrics_path.empty()) {
    metrics.open(o.metrics_path, std::ios::app);
    LASP_CHECK(metrics.good(), "train: cannot open --metrics file {}", o.metrics_path);
  }
  TrainResult result;
  auto t_start = std::chrono::steady_clock::now();
  for (int step = 1; step <= o.steps; ++step) {
    if (step == 2) t_start = std::chrono::steady_clock::now();  // the first step warms caches and pages
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t attn0 = traffic(*grid.sp), grad0 = traffic(world);
    const std::vector<int64_t> starts = sampler.next_starts();
    for (int b = 0; b < B; ++b)
      read_window_slice(*data, starts[size_t(grid.dp_rank) * B + b], positions, inputs.data() + size_t(b) * Nl,
                        targets.data() + size_t(b) * Nl);
    model.zero_grads();
    double loss = model.forward(inputs.data(), targets.data());
    model.backward(float(1.0 / global_tokens));
    world.all_reduce(&loss, 1);
    world.all_reduce(model.grads().data(), model.grads().size());
    loss /= global_tokens;
    const float lr = learning_rate(step, o.steps, o.lr, min_lr, warmup);
    const double norm = optimizer.step(model.params(), model.grads(), lr);
    result.losses.push_back(loss);
    result.attention_bytes_per_step = traffic(*grid.sp) - attn0;
    result.gradient_bytes_per_step = traffic(world) - grad0;
    const double step_seconds = seconds_since(t0);
    if (metrics.is_open())
      metrics << nlohmann::ordered_json{{"step", step},
                                        {"loss", loss},
                                        {"lr", lr},
                                        {"grad_norm", norm},
                                        {"tokens_per_s", global_tokens / step_seconds},
                                        {"attention_bytes", result.attention_bytes_per_step},
                                        {"gradient_bytes", result.gradient_bytes_per_step}}
                     .dump()
              << std::endl;
    if (rank0)
      std::fprintf(stderr, "step %d/%d  loss %.4f  lr %.2e  grad-norm %.3f  %.0f tokens/s  comm %.2f MB attention, %.2f MB gradients\n",
                   step, o.steps, loss, lr, norm, global_tokens / step_seconds,
                   result.attention_bytes_per_step / 1e6, result.gradient_bytes_per_step / 1e6);
  }
  if (o.steps > 1) result.tokens_per_s = global_tokens * (o.steps - 1) / seconds_since(t_start);
  if (!o.save_dir.empty() && rank0) save_checkpoint(o.save_dir, config, model.layout(), model.params());
  world.barrier();  // the checkpoint exists when any rank returns
  return result;
}

EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data_path, int N, int batches, Comm& world,
                               const ParallelOptions& parallel, int block) {
  LASP_CHECK(N > 0 && batches > 0, "eval: --seq-len and --batches must be positive, got {} and {}", N, batches);
  Grid grid = make_grid(world, parallel.sp_size, parallel.dp_size);
  const ModelConfig config = load_checkpoint_config(dir);
  const SpLayout layout = layout_for(config, parallel);
  const std::vector<int> positions = sp_positions(N, grid.sp_size, grid.sp_rank, layout);
  const int Nl = int(positions.size());
  const auto data = open_text_tokens(data_path);
  eval_batch(*data, N, 0, batches);  // checks that the file holds every window (clear error otherwise)

  auto attention = make_attention(config, grid, 1, N, layout, block);
  Model model(config, 1, Nl, *attention);
  load_checkpoint_weights(dir, model.layout(), model.params());
  std::vector<int> inputs(Nl), targets(Nl);
  double sum = 0;
  for (int k = grid.dp_rank; k < batches; k += grid.dp_size) {  // DP ranks share the windows
    read_window_slice(*data, int64_t(k) * N, positions, inputs.data(), targets.data());
    sum += model.forward(inputs.data(), targets.data());
  }
  world.all_reduce(&sum, 1);
  return {sum / (double(batches) * N), int64_t(batches) * N, traffic(*grid.sp)};
}

}  // namespace lasp
