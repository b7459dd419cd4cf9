#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <unistd.h>
#include <fstream>
#include <memory>

#include "core/check.h"
#include <nlohmann/json.hpp>
#include "model/attention.h"
#include "model/model.h"
#include "sp/grid.h"
#include "sp/methods.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/schedule.h"
#include "train/synthetic.h"

namespace lasp {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

SpLayout layout_for(const ModelConfig& c, const ParallelOptions& p) {
  return sp_method_layout(p.sp_method, p.sp_layout, c, p.sp_size);
}

// The attention of this rank: the local kernels on one SP rank, the chosen method across several.
std::unique_ptr<Attention> make_attention(const ModelConfig& c, const Grid& g, int B, int N, SpLayout layout,
                                          int block, const std::string& method) {
  const AttentionShape shape{B, N / g.sp_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim(), block};
  return make_sp_attention(method, *g.sp, shape, N, layout, c.num_hidden_layers);
}

uint64_t traffic(const Comm& c) { return c.stats().total_sent() + c.stats().total_received(); }

}  // namespace

namespace {

// "synthetic" or "synthetic:pairs=P,tokens=T,seed=S": the long-range recall task with episodes of seq-len
// tokens; anything else: a text file or llm.c token shards (auto-detected).
struct TrainingData {
  std::unique_ptr<TokenSource> source;
  bool synthetic = false;
};

TrainingData open_training_data(const std::string& spec, int seq_len, uint64_t seed) {
  if (spec.rfind("synthetic", 0) != 0) return {open_tokens(spec, "auto"), false};
  int64_t pairs = 8, tokens = int64_t(seq_len) * 4096;
  uint64_t data_seed = seed;
  std::string rest = spec.size() > 9 && spec[9] == ':' ? spec.substr(10) : "";
  LASP_CHECK(spec.size() == 9 || spec[9] == ':', "--data {}: expected synthetic or synthetic:pairs=P,tokens=T,seed=S", spec);
  while (!rest.empty()) {
    const size_t comma = rest.find(','), eq = rest.find('=');
    const std::string item = rest.substr(0, comma);
    LASP_CHECK(eq != std::string::npos && eq < item.size(), "--data {}: expected key=value in '{}'", spec, item);
    const std::string key = item.substr(0, eq);
    int64_t value = 0;
    try {
      value = std::stoll(item.substr(eq + 1));
    } catch (const std::exception&) {
      throw Error("--data " + spec + ": '" + item + "' is not key=integer");
    }
    if (key == "pairs") pairs = value;
    else if (key == "tokens") tokens = value;
    else if (key == "seed") data_seed = uint64_t(value);
    else throw Error("--data " + spec + ": unknown key '" + key + "' (pairs, tokens, seed)");
    rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
  }
  return {make_synthetic_recall(tokens, seq_len, int(pairs), data_seed), true};
}

struct Validation {
  double loss = 0;
  double recall_accuracy = -1;  // synthetic data only
};

// Mean loss over `windows` aligned windows of the validation range (window k starts at begin + k N), the
// DP ranks sharing them; every rank returns the same value.
Validation validate(Model& model, const TokenSource& data, bool synthetic, int64_t begin, int windows, int N,
                    const std::vector<int>& positions, const Grid& grid, Comm& world) {
  const int B = model.batch(), Nl = int(positions.size()), V = model.config().vocab_size;
  std::vector<int> inputs(size_t(B) * Nl), targets(inputs.size());
  double sum = 0, score[2] = {0, 0};  // recall: correct, total
  // DP rank g takes windows g, g + dp, ...; its SP group runs them B at a time, padding the last batch.
  std::vector<int> mine;
  for (int k = grid.dp_rank; k < windows; k += grid.dp_size) mine.push_back(k);
  for (size_t first = 0; first < mine.size(); first += B) {
    std::fill(inputs.begin(), inputs.end(), 0);
    std::fill(targets.begin(), targets.end(), -1);
    for (int b = 0; b < B && first + b < mine.size(); ++b)
      read_window_slice(data, begin + int64_t(mine[first + b]) * N, positions, inputs.data() + size_t(b) * Nl,
                        targets.data() + size_t(b) * Nl);
    sum += model.forward(inputs.data(), targets.data());
    if (!synthetic) continue;
    for (int b = 0; b < B && first + b < mine.size(); ++b) {  // the answers among this rank's positions
      std::vector<int> answers = recall_answer_positions(data, begin + int64_t(mine[first + b]) * N, N);
      std::sort(answers.begin(), answers.end());
      std::vector<int> local;
      for (int i = 0; i < Nl; ++i)
        if (std::binary_search(answers.begin(), answers.end(), positions[i])) local.push_back(i);
      const RecallScore r = score_recall(model.logits() + size_t(b) * Nl * V, targets.data() + size_t(b) * Nl, local, V);
      score[0] += double(r.correct);
      score[1] += double(r.total);
    }
  }
  world.all_reduce(&sum, 1);
  world.all_reduce(score, 2);
  return {sum / (double(windows) * N), synthetic && score[1] > 0 ? score[0] / score[1] : -1};
}

}  // namespace

TrainResult train(const ModelConfig& flags_config, const TrainOptions& o, Comm& world) {
  LASP_CHECK(o.steps > 0 && o.batch > 0 && o.seq_len > 0,
             "train: --steps, --batch and --seq-len must be positive, got {}, {}, {}", o.steps, o.batch, o.seq_len);
  const bool resuming = !o.resume_dir.empty();
  const ModelConfig config = resuming ? load_checkpoint_config(o.resume_dir) : flags_config;
  Grid grid = make_grid(world, o.parallel.sp_size, o.parallel.dp_size);
  const SpLayout layout = layout_for(config, o.parallel);
  const std::vector<int> positions = sp_positions(o.seq_len, grid.sp_size, grid.sp_rank, layout);
  const int Nl = int(positions.size()), B = o.batch;
  const bool rank0 = world.rank() == 0;

  const TrainingData training_data = open_training_data(o.data_path, o.seq_len, o.seed);
  const TokenSource* data = training_data.source.get();
  LASP_CHECK(data->vocab_size() <= config.vocab_size, "train: {} holds tokens up to {} but the model's vocab_size is {}",
             o.data_path, data->vocab_size() - 1, config.vocab_size);
  Split split = split_tokens(data->size(), o.val_fraction);
  const int64_t align = training_data.synthetic ? o.seq_len : 1;  // synthetic windows = whole episodes
  if (align > 1) split.train_end = split.val_begin = (split.val_begin + align - 1) / align * align;
  const int val_windows = int(std::min<int64_t>(int64_t(o.eval_batches) * grid.dp_size,
                                                eval_window_count(split.val_end - split.val_begin, o.seq_len)));
  LASP_CHECK(o.eval_every == 0 || val_windows > 0,
             "train: --eval-every needs a validation part of at least --seq-len + 1 = {} tokens; --val-fraction {} of {} "
             "holds {}", o.seq_len + 1, o.val_fraction, o.data_path, split.val_end - split.val_begin);
  // Every rank draws the same windows (same seed); DP rank g trains on rows [g B, g B + B).
  WindowSampler sampler(*data, o.seq_len, B * grid.dp_size, o.seed, split.train_begin, split.train_end, align);

  auto attention = make_attention(config, grid, B, o.seq_len, layout, o.block, o.parallel.sp_method);
  Model model(config, B, Nl, *attention, o.recompute);
  AdamW optimizer(model.layout(), o.adamw);
  int first_step = 1;
  if (resuming) {
    load_checkpoint_weights(o.resume_dir, model.layout(), model.params());
    const nlohmann::json state = load_optimizer_state(o.resume_dir, model.layout(), optimizer.m(), optimizer.v());
    first_step = state.at("step").get<int>() + 1;
    LASP_CHECK(first_step <= o.steps, "--resume {}: the checkpoint is at step {} already; --steps {} is the total, so "
               "there is nothing left to train", o.resume_dir, first_step - 1, o.steps);
    optimizer.set_steps(state.at("step").get<int>());
    const bool same_world = state.at("sp_size") == grid.sp_size && state.at("dp_size") == grid.dp_size &&
                            state.at("batch") == B && state.at("seq_len") == o.seq_len;
    sampler.restore(state.at("sampler").get<std::string>());
    if (rank0)
      std::fprintf(stderr, "lasp: resuming %s at step %d of %d%s\n", o.resume_dir.c_str(), first_step, o.steps,
                   same_world ? "" : " (the sp/dp/batch/seq-len layout differs from the saved run: the weights and "
                                     "optimizer continue, but the data order may differ)");
  } else {
    init_weights(model.layout(), model.params(), o.seed);
  }
  const float min_lr = o.min_lr >= 0 ? o.min_lr : o.lr / 10;
  const int warmup = o.warmup >= 0 ? std::min(o.warmup, o.steps) : o.steps / 10;
  const double global_tokens = double(B) * grid.dp_size * o.seq_len;
  if (rank0 && world.size() > 1)
    std::fprintf(stderr, "lasp: %d ranks = dp %d x sp %d, %s layout, %d tokens per rank per sequence\n", world.size(),
                 grid.dp_size, grid.sp_size, to_string(layout), Nl);

  auto save = [&](int step) {
    if (o.save_dir.empty()) return;
    if (rank0) {
      OptimizerState state{&optimizer.m(), &optimizer.v(),
                           {{"step", step}, {"sampler", sampler.state()}, {"sp_size", grid.sp_size},
                            {"dp_size", grid.dp_size}, {"sp_layout", to_string(layout)}, {"batch", B},
                            {"seq_len", o.seq_len}, {"seed", o.seed}, {"data", o.data_path}}};
      save_checkpoint(o.save_dir, config, model.layout(), model.params(), &state);
    }
    world.barrier();  // the checkpoint exists when any rank goes on
  };

  std::vector<int> inputs(size_t(B) * Nl), targets(inputs.size());
  std::ofstream metrics;
  if (rank0 && !o.metrics_path.empty()) {
    metrics.open(o.metrics_path, std::ios::app);
    LASP_CHECK(metrics.good(), "train: cannot open --metrics file {}", o.metrics_path);
  }
  TrainResult result;
  auto t_start = std::chrono::steady_clock::now();
  const auto run_start = t_start;
  const bool tty = rank0 && isatty(fileno(stderr));
  const int last_step = o.stop_at > 0 ? std::min(o.stop_at, o.steps) : o.steps;
  for (int step = first_step; step <= last_step; ++step) {
    if (step == first_step + 1) t_start = std::chrono::steady_clock::now();  // the first step warms up
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
    nlohmann::ordered_json record{{"step", step},
                                  {"loss", loss},
                                  {"lr", lr},
                                  {"grad_norm", norm},
                                  {"tokens_per_s", global_tokens / step_seconds},
                                  {"attention_bytes", result.attention_bytes_per_step},
                                  {"gradient_bytes", result.gradient_bytes_per_step}};
    if (rank0) {
      const double eta = seconds_since(run_start) / (step - first_step + 1) * (last_step - step);
      // On a terminal the line is redrawn in place; into a file or pipe every step is a line of its own.
      std::fprintf(stderr, "%sstep %d/%d  loss %.4f  lr %.2e  grad-norm %.3f  %.0f tokens/s  comm %.2f MB attention, "
                   "%.2f MB gradients  ETA %.0f s%s", tty ? "\r" : "", step, o.steps, loss, lr, norm,
                   global_tokens / step_seconds, result.attention_bytes_per_step / 1e6,
                   result.gradient_bytes_per_step / 1e6, eta, tty ? "\033[K" : "\n");
      if (tty && step == last_step) std::fputc('\n', stderr);
    }
    if (o.eval_every > 0 && (step == 1 || step % o.eval_every == 0 || step == o.steps)) {
      const Validation val =
          validate(model, *data, training_data.synthetic, split.val_begin, val_windows, o.seq_len, positions, grid, world);
      result.val_losses.push_back({step, val.loss});
      record["val_loss"] = val.loss;
      if (val.recall_accuracy >= 0) record["val_recall_accuracy"] = val.recall_accuracy;
      if (rank0)
        std::fprintf(stderr, "%sstep %d/%d  validation loss %.4f (%d windows)%s\n", tty ? "\n" : "", step, o.steps,
                     val.loss, val_windows,
                     val.recall_accuracy >= 0 ? fmt::format(", recall accuracy {:.3f}", val.recall_accuracy).c_str() : "");
    }
    if (metrics.is_open()) metrics << record.dump() << std::endl;
    if (o.save_every > 0 && step % o.save_every == 0 && step < last_step) save(step);
  }
  if (last_step - first_step >= 1) result.tokens_per_s = global_tokens * (last_step - first_step) / seconds_since(t_start);
  if (last_step >= first_step) save(last_step);
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
  // Synthetic data: other episodes than training's (whose default seed is 1234), unless the spec names a seed.
  const TrainingData eval_data = open_training_data(data_path, N, 0x5eed0e7a1ull);
  const TokenSource* data = eval_data.source.get();
  eval_batch(*data, N, 0, batches);  // checks that the file holds every window (clear error otherwise)

  auto attention = make_attention(config, grid, 1, N, layout, block, parallel.sp_method);
  Model model(config, 1, Nl, *attention);
  load_checkpoint_weights(dir, model.layout(), model.params());
  // Windows k = 0..batches-1 from the start of the data, shared by the DP ranks.
  const Validation v = validate(model, *data, eval_data.synthetic, 0, batches, N, positions, grid, world);
  return {v.loss, int64_t(batches) * N, traffic(*grid.sp), v.recall_accuracy};
}

}  // namespace lasp
