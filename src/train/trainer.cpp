#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/check.h"
#include "model/attention.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/schedule.h"

namespace lasp {

namespace {
AttentionShape attention_shape(const ModelConfig& c, int B, int N, int block) {
  return {B, N, c.num_attention_heads, c.num_key_value_heads, c.head_dim(), block};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

TrainResult train(const ModelConfig& config, const TrainOptions& o) {
  LASP_CHECK(o.steps > 0 && o.batch > 0 && o.seq_len > 0, "train: --steps, --batch and --seq-len must be positive, got {}, {}, {}",
             o.steps, o.batch, o.seq_len);
  const auto data = open_text_tokens(o.data_path);
  LASP_CHECK(data->vocab_size() <= config.vocab_size,
             "train: {} holds tokens up to {} but the model's vocab_size is {}", o.data_path, data->vocab_size() - 1,
             config.vocab_size);
  WindowSampler sampler(*data, o.seq_len, o.batch, o.seed);

  LocalAttention attention(attention_shape(config, o.batch, o.seq_len, o.block));
  Model model(config, o.batch, o.seq_len, attention, o.recompute);
  init_weights(model.layout(), model.params(), o.seed);
  AdamW optimizer(model.layout(), o.adamw);
  const float min_lr = o.min_lr >= 0 ? o.min_lr : o.lr / 10;
  const int warmup = o.warmup >= 0 ? std::min(o.warmup, o.steps) : o.steps / 10;
  const double tokens_per_step = double(o.batch) * o.seq_len;

  TrainResult result;
  auto t_start = std::chrono::steady_clock::now();
  for (int step = 1; step <= o.steps; ++step) {
    if (step == 2) t_start = std::chrono::steady_clock::now();  // the first step warms caches and pages
    const auto t0 = std::chrono::steady_clock::now();
    const Batch batch = sampler.next();
    model.zero_grads();
    const double loss = model.forward(batch.inputs.data(), batch.targets.data()) / tokens_per_step;
    model.backward(float(1.0 / tokens_per_step));
    const float lr = learning_rate(step, o.steps, o.lr, min_lr, warmup);
    const double norm = optimizer.step(model.params(), model.grads(), lr);
    result.losses.push_back(loss);
    std::fprintf(stderr, "step %d/%d  loss %.4f  lr %.2e  grad-norm %.3f  %.0f tokens/s\n", step, o.steps, loss, lr,
                 norm, tokens_per_step / seconds_since(t0));
  }
  if (o.steps > 1) result.tokens_per_s = tokens_per_step * (o.steps - 1) / seconds_since(t_start);
  if (!o.save_dir.empty()) save_checkpoint(o.save_dir, config, model.layout(), model.params());
  return result;
}

EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data_path, int N, int batches, int block) {
  LASP_CHECK(N > 0 && batches > 0, "eval: --seq-len and --batches must be positive, got {} and {}", N, batches);
  const ModelConfig config = load_checkpoint_config(dir);
  const auto data = open_text_tokens(data_path);
  const int B = std::min(batches, 4);
  LocalAttention attention(attention_shape(config, B, N, block));
  Model model(config, B, N, attention);
  load_checkpoint_weights(dir, model.layout(), model.params());

  double sum = 0;
  for (int first = 0; first < batches; first += B) {
    const int rows = std::min(B, batches - first);
    Batch batch = eval_batch(*data, N, first, rows);
    batch.inputs.resize(size_t(B) * N, 0);    // a short last batch: padding rows
    batch.targets.resize(size_t(B) * N, -1);  // without targets
    sum += model.forward(batch.inputs.data(), batch.targets.data());
  }
  return {sum / (double(batches) * N), int64_t(batches) * N};
}

}  // namespace lasp
