#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>
#include <omp.h>
#include <unistd.h>

#include "core/check.h"
#include "core/file.h"
#include "core/memory.h"
#include "core/parse.h"
#include "model/attention.h"
#include "model/model.h"
#include "sp/grid.h"
#include "sp/methods.h"
#include "train/checkpoint.h"
#include "model/memory_plan.h"
#include "train/data.h"
#include "train/schedule.h"
#include "train/synthetic.h"
#include "train/tokenizer.h"

namespace lasp {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The method's layout; an --sp-layout it does not run on is an error (ring-zigzag used to take zigzag silently).
SpLayout layout_for(const ModelConfig& c, const ParallelOptions& p) {
  const SpLayout layout = sp_method_layout(p.sp_method, p.sp_layout, c, p.sp_size);
  LASP_CHECK(p.sp_layout.empty() || p.sp_layout == to_string(layout), "--sp-layout {} contradicts --sp-method {}, "
             "which runs on the {} layout: leave --sp-layout out", p.sp_layout, p.sp_method, to_string(layout));
  return layout;
}

// Documents for the model: --doc-start or the data's default (document_start); rank 0 says which.
int use_documents(Model& model, std::optional<int> requested, const std::string& data_path, bool rank0) {
  std::string why;
  const int start = document_start(requested, data_path, model.config().vocab_size, &why);
  model.set_document_start(start);
  if (rank0 && start >= 0) std::fprintf(stderr, "lasp: documents open at token %d (%s)\n", start, why.c_str());
  return start;
}

struct PlannedRank {
  MemoryPlan plan;
  std::unique_ptr<Attention> attention;
};

// This rank's memory plan and attention: the chosen method across several SP ranks, the local or the
// chunked kernels on one. Rank 0 prints the plan.
PlannedRank plan_rank(const ModelConfig& c, const Grid& g, int B, int N, SpLayout layout, int block,
                      const ParallelOptions& parallel, const MemoryRequest& memory, bool training) {
  const std::string& method = parallel.sp_method;
  // The kernels' threads are those lasp runs with (--threads), fixed here for the run.
  AttentionShape shape = attention_shape(c, B, N / g.sp_size, block, omp_get_max_threads());
  shape.bf16 = memory.precision == Precision::bf16;
  std::unique_ptr<Attention> sp;
  LayerMajorFactory layer_major;
  if (g.sp_size > 1) {
    sp = make_sp_attention(method, *g.sp, shape, N, layout, c.num_hidden_layers, parallel.scan_slices);
    if (find_sp_method(method).make_layer_major)
      layer_major = [&, shape](int chunk) {
        return make_layer_major_attention(method, *g.sp, shape, N, layout, c.num_hidden_layers, chunk);
      };
  }
  const MemoryPlan plan = plan_memory(c, shape, sp.get(), memory, training, layer_major);
  if (g.world->rank() == 0) std::fprintf(stderr, "lasp: %s\n", plan.describe().c_str());
  return {plan, planned_attention(plan, c, shape, std::move(sp), layer_major)};
}

// Refuses, before anything is allocated, a model whose parameters alone do not fit this machine.
void check_model_fits(const ModelConfig& c, size_t bytes_per_parameter) {
  const ParamLayout layout(c);  // throws when the parameter count does not fit in 64 bits
  check_fits_in_memory(double(bytes_per_parameter) * double(layout.total()),
                       fmt::format("the model's {} parameters ({} bytes each)", layout.total(), bytes_per_parameter));
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

TrainingData open_training_data(const std::string& spec, const std::string& format, int seq_len, uint64_t seed) {
  if (spec.rfind("synthetic", 0) != 0) return {open_tokens(spec, format), false};
  LASP_CHECK(format == "auto", "--data {}: the synthetic task has no --data-format (got {})", spec, format);
  int64_t pairs = 8, tokens = int64_t(seq_len) * 4096;
  uint64_t data_seed = seed;
  std::string rest = spec.size() > 9 && spec[9] == ':' ? spec.substr(10) : "";
  LASP_CHECK(spec.size() == 9 || spec[9] == ':', "--data {}: expected synthetic or synthetic:pairs=P,tokens=T,seed=S", spec);
  while (!rest.empty()) {
    const size_t comma = rest.find(','), eq = rest.find('=');
    const std::string item = rest.substr(0, comma);
    LASP_CHECK(eq != std::string::npos && eq < item.size(), "--data {}: expected key=value in '{}'", spec, item);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1), what = "--data " + spec + ": " + key;
    if (key == "pairs") pairs = parse_int(value, what, 1, INT_MAX);
    else if (key == "tokens") tokens = parse_int(value, what, 1, INT64_MAX);
    else if (key == "seed") data_seed = parse_uint(value, what);
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
  const int B = model.batch(), Nl = int(positions.size());
  std::vector<int> inputs(size_t(B) * Nl), targets(inputs.size()), predictions(synthetic ? inputs.size() : 0);
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
    sum += model.forward(inputs.data(), targets.data(), synthetic ? predictions.data() : nullptr);
    if (!synthetic) continue;
    for (int b = 0; b < B && first + b < mine.size(); ++b) {  // the answers among this rank's positions
      std::vector<int> answers = recall_answer_positions(data, begin + int64_t(mine[first + b]) * N, N);
      std::sort(answers.begin(), answers.end());
      std::vector<int> local;
      for (int i = 0; i < Nl; ++i)
        if (std::binary_search(answers.begin(), answers.end(), positions[i])) local.push_back(i);
      const RecallScore r =
          score_predictions(predictions.data() + size_t(b) * Nl, targets.data() + size_t(b) * Nl, local);
      score[0] += double(r.correct);
      score[1] += double(r.total);
    }
  }
  world.all_reduce(&sum, 1);
  world.all_reduce(score, 2);
  return {sum / (double(windows) * N), synthetic && score[1] > 0 ? score[0] / score[1] : -1};
}

}  // namespace

void check_train_options(const TrainOptions& o) {
  auto positive = [](const char* flag, int64_t v) { LASP_CHECK(v > 0, "{} must be >= 1, got {}", flag, v); };
  auto non_negative = [](const char* flag, int64_t v) { LASP_CHECK(v >= 0, "{} must be >= 0, got {}", flag, v); };
  auto finite_at_least = [](const char* flag, double v, double lo, bool open) {
    LASP_CHECK(std::isfinite(v) && (open ? v > lo : v >= lo), "{} must be a finite number {} {}, got {}", flag,
               open ? ">" : ">=", lo, v);
  };
  positive("--steps", o.steps);
  positive("--batch", o.batch);
  positive("--seq-len", o.seq_len);
  positive("--eval-batches", o.eval_batches);
  positive("--block", o.block);
  non_negative("--save-every", o.save_every);
  non_negative("--stop-at", o.stop_at);
  non_negative("--eval-every", o.eval_every);
  finite_at_least("--lr", o.lr, 0, true);
  if (o.min_lr) {
    finite_at_least("--min-lr", *o.min_lr, 0, false);
    LASP_CHECK(*o.min_lr <= o.lr, "--min-lr {} must be <= --lr {} (the cosine decays from --lr to --min-lr)", *o.min_lr,
               o.lr);
  }
  if (o.warmup) non_negative("--warmup", *o.warmup);
  finite_at_least("--grad-clip", o.adamw.grad_clip, 0, false);
  finite_at_least("--weight-decay", o.adamw.weight_decay, 0, false);
  LASP_CHECK(std::isfinite(o.val_fraction) && o.val_fraction >= 0 && o.val_fraction < 1,
             "--val-fraction must be in [0, 1), got {}", o.val_fraction);
}

namespace {

// Saving: at the end, and every save_every steps. Rank 0 writes; every rank waits for it, so that the
// checkpoint exists when any rank goes on. A failed periodic save stops training (the previous checkpoint
// stays intact) unless the user asked to train on; a failed final save is always an error.
class Saver {
 public:
  Saver(const TrainOptions& o, const ModelConfig& config, Model& model, AdamW& optimizer, Comm& world,
        const TokenMeaning& meaning)
      : o_(o), config_(config), model_(model), optimizer_(optimizer), world_(world), meaning_(meaning) {
    // Before any training: a folder that is not a checkpoint, or no room, is found now, not after hours.
    // The folder's lock is held to the end of the run: a second run saving there is refused, naming this one.
    if (enabled() && world.rank() == 0)
      lock_ = check_checkpoint_target(o.save_dir, checkpoint_bytes(model.layout(), true, o.save_bf16));
  }
  bool enabled() const { return !o_.save_dir.empty(); }
  int last_saved() const { return last_saved_; }
  // A run resumed from the folder it saves into: that checkpoint is the one a failure leaves intact.
  void resumed_from(const std::string& dir, int step) {
    std::error_code ec;
    if (enabled() && std::filesystem::equivalent(dir, o_.save_dir, ec)) last_saved_ = step;
  }

  void save(int step, const TrainerState& state, bool final_save) {
    if (!enabled()) return;
    if (world_.rank() == 0) {
      try {
        OptimizerState opt{&optimizer_.m(), &optimizer_.v(), state};
        save_checkpoint(o_.save_dir, config_, model_.layout(), model_.params(), &opt, o_.save_bf16,
                        tokenizer_beside(o_.data_path), meaning_);
        last_saved_ = step;
      } catch (const Error& e) {
        if (final_save || !o_.continue_on_save_error)
          throw Error(fmt::format("step {}: saving the checkpoint failed: {}{}", step, e.what(),
                                  last_saved_ > 0 ? fmt::format(" (the checkpoint of step {} stays intact)", last_saved_)
                                                  : std::string()));
        std::fprintf(stderr, "\nlasp: warning: step %d: saving the checkpoint failed, training goes on "
                     "(--on-save-error continue): %s\n", step, e.what());
      }
    }
    world_.barrier();
  }

 private:
  const TrainOptions& o_;
  const ModelConfig& config_;
  Model& model_;
  AdamW& optimizer_;
  Comm& world_;
  const TokenMeaning meaning_;
  int last_saved_ = 0;
  FolderLock lock_;
};

// A diverged run must not go on nor be saved: the step's update is not applied (AdamW::step skips a non-finite
// gradient) and the error says where it happened and what to try.
void check_finite_step(int step, double loss, double norm, const TrainOptions& o, int last_saved) {
  if (std::isfinite(loss) && std::isfinite(norm)) return;
  std::string saved = !o.save_dir.empty() && last_saved > 0
                          ? fmt::format(" The checkpoint {} of step {} stays as it was.", o.save_dir, last_saved)
                          : std::string();
  throw Error(fmt::format(
      "training diverged at step {}: the loss is {} and the gradient norm {}; the update was not applied and nothing "
      "more is saved.{} Try a lower --lr (now {}){}, or a longer --warmup.", step, loss, norm, saved, o.lr,
      o.adamw.grad_clip > 0 ? "" : ", gradient clipping (--grad-clip 1; now off)"));
}

// The data a run trained on (its --data as saved) and the data given now name the same thing.
bool same_data(const std::string& saved, const std::string& given) {
  std::error_code ec;
  return saved == given || std::filesystem::equivalent(saved, given, ec);
}

// What a resume continues belongs to the saved run: its seed (an explicit --seed that contradicts it is an
// error; absent, the saved one is used), its data (other --data is an error unless --new-data), its step
// (--stop-at at or before it would train nothing). Another --precision is allowed, with a warning. Returns the
// seed of the run.
uint64_t check_resume(const TrainOptions& o, const TrainerState& state, bool rank0) {
  LASP_CHECK(!o.seed_given || o.seed == state.seed, "--resume {}: --seed {} contradicts the saved run's seed {} (its "
             "data order{}); leave --seed out to continue the saved run", o.resume_dir, o.seed, state.seed,
             o.data_path.rfind("synthetic", 0) == 0 ? " and its synthetic data" : "");
  LASP_CHECK(same_data(state.data, o.data_path) || o.new_data, "--resume {}: the saved run trained on --data {}, not {}: "
             "its data position belongs to that data. Give the same --data, or add --new-data to go on training on {} "
             "(its windows drawn anew)", o.resume_dir, state.data, o.data_path, o.data_path);
  LASP_CHECK(o.stop_at == 0 || o.stop_at > state.step, "--resume {}: --stop-at {} is not after the checkpoint's step "
             "{}: the run would train nothing. Give a later --stop-at, or leave it out", o.resume_dir, o.stop_at,
             state.step);
  const std::string precision = to_string(o.memory.precision);
  if (rank0 && !state.precision.empty() && state.precision != precision)
    std::fprintf(stderr, "lasp: warning: --resume %s: the saved run trained in %s, this one goes on in %s "
                 "(--precision): the losses will not be those of an uninterrupted run\n", o.resume_dir.c_str(),
                 state.precision.c_str(), precision.c_str());
  if (rank0 && !same_data(state.data, o.data_path))
    std::fprintf(stderr, "lasp: --resume %s: training goes on on %s (--new-data; the saved run had %s)\n",
                 o.resume_dir.c_str(), o.data_path.c_str(), state.data.c_str());
  return state.seed;
}

// Loads the weights, the AdamW moments and the data position of o.resume_dir; returns the first step to run.
int resume(const TrainOptions& o, const OpenedCheckpoint& checkpoint, const Grid& grid, Model& model, AdamW& optimizer,
           WindowSampler& sampler) {
  load_checkpoint_weights(checkpoint, model.layout(), model.params());
  const TrainerState state =
      load_optimizer_state(checkpoint, model.layout(), optimizer.m(), optimizer.v(), model.params());
  LASP_CHECK(state.step < o.steps, "--resume {}: the checkpoint is at step {} already; --steps {} is the total, so "
             "there is nothing left to train", o.resume_dir, state.step, o.steps);
  optimizer.set_steps(state.step);
  if (same_data(state.data, o.data_path)) sampler.restore(state.sampler);  // else (--new-data) windows drawn anew
  const bool same_world = state.sp_size == grid.sp_size && state.dp_size == grid.dp_size && state.batch == o.batch &&
                          state.seq_len == o.seq_len;
  if (grid.world->rank() == 0)
    std::fprintf(stderr, "lasp: resuming %s at step %d of %d%s\n", o.resume_dir.c_str(), state.step + 1, o.steps,
                 same_world ? "" : " (the sp/dp/batch/seq-len layout differs from the saved run: the weights and "
                                   "optimizer continue, but the data order may differ)");
  return state.step + 1;
}

// One line per step on stderr (rank 0); on a terminal the line is redrawn in place.
void print_progress(const nlohmann::ordered_json& r, int steps, double eta, bool tty, bool last) {
  std::fprintf(stderr, "%sstep %d/%d  loss %.4f  lr %.2e  grad-norm %.3f  %.0f tokens/s  comm %.2f MB attention, "
               "%.2f MB gradients  ETA %.0f s%s", tty ? "\r" : "", r["step"].get<int>(), steps, r["loss"].get<double>(),
               r["lr"].get<double>(), r["grad_norm"].get<double>(), r["tokens_per_s"].get<double>(),
               r["attention_bytes"].get<double>() / 1e6, r["gradient_bytes"].get<double>() / 1e6, eta,
               tty ? "\033[K" : "\n");
  if (tty && last) std::fputc('\n', stderr);
}

}  // namespace

TrainResult train(const ModelConfig& flags_config, const TrainOptions& o, Comm& world) {
  check_train_options(o);
  const bool resuming = !o.resume_dir.empty();
  // Every read of the resumed checkpoint goes through one opened folder: a save swapping another in cannot mix two.
  std::shared_ptr<const OpenedCheckpoint> checkpoint = o.resume_checkpoint;
  if (resuming && !checkpoint) checkpoint = std::make_shared<const OpenedCheckpoint>(o.resume_dir);
  const ModelConfig config = resuming ? load_checkpoint_config(*checkpoint) : flags_config;
  const uint64_t seed = resuming ? check_resume(o, load_trainer_state(*checkpoint), world.rank() == 0) : o.seed;
  check_model_fits(config, 4 * sizeof(float));  // weights, gradients, two AdamW moments
  Grid grid = make_grid(world, o.parallel.sp_size, o.parallel.dp_size);
  const SpLayout layout = layout_for(config, o.parallel);
  const std::vector<int> positions = sp_positions(o.seq_len, grid.sp_size, grid.sp_rank, layout);
  const int Nl = int(positions.size()), B = o.batch;
  const bool rank0 = world.rank() == 0;

  const TrainingData training_data = open_training_data(o.data_path, o.data_format, o.seq_len, seed);
  const TokenSource* data = training_data.source.get();
  if (rank0) std::fprintf(stderr, "lasp: data %s: %s\n", o.data_path.c_str(), data->describe().c_str());
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
  WindowSampler sampler(*data, o.seq_len, B * grid.dp_size, seed, split.train_begin, split.train_end, align);

  const PlannedRank planned = plan_rank(config, grid, B, o.seq_len, layout, o.block, o.parallel, o.memory, true);
  Model model(config, B, Nl, *planned.attention, planned.plan.model);
  // The checkpoint resumed says what its ids mean and where its documents opened: the run must agree.
  const std::optional<TokenMeaning> saved = resuming ? load_token_meaning(*checkpoint) : std::nullopt;
  const std::string vocabulary = vocabulary_of(data->is_bytes(), training_data.synthetic, tokenizer_beside(o.data_path));
  if (resuming) check_vocabulary(o.resume_dir, saved, vocabulary, o.data_path);
  const int doc_start = use_documents(model, resuming ? doc_start_of(o.resume_dir, saved, o.doc_start) : o.doc_start,
                                      o.data_path, rank0);
  AdamW optimizer(model.layout(), o.adamw);
  int first_step = 1;
  if (resuming) first_step = resume(o, *checkpoint, grid, model, optimizer, sampler);
  else init_weights(model.layout(), model.params(), seed);
  Saver saver(o, config, model, optimizer, world, TokenMeaning{vocabulary, doc_start});
  if (resuming) saver.resumed_from(o.resume_dir, first_step - 1);
  const float min_lr = o.min_lr ? *o.min_lr : o.lr / 10;
  const int warmup = o.warmup ? std::min(*o.warmup, o.steps) : o.steps / 10;
  const double global_tokens = double(B) * grid.dp_size * o.seq_len;
  if (rank0 && world.size() > 1)
    std::fprintf(stderr, "lasp: %d ranks = dp %d x sp %d, %s layout, %d tokens per rank per sequence\n", world.size(),
                 grid.dp_size, grid.sp_size, to_string(layout), Nl);
  auto trainer_state = [&](int step) {
    TrainerState t;
    t.step = step;
    t.sampler = sampler.state();
    t.sp_size = grid.sp_size, t.dp_size = grid.dp_size, t.batch = B, t.seq_len = o.seq_len;
    t.sp_layout = to_string(layout), t.seed = seed, t.data = o.data_path;
    t.precision = to_string(o.memory.precision);
    return t;
  };

  std::vector<int> inputs(size_t(B) * Nl), targets(inputs.size());
  std::unique_ptr<AppendFile> metrics;
  if (rank0 && !o.metrics_path.empty()) metrics = std::make_unique<AppendFile>(o.metrics_path);
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
    const double norm = std::isfinite(loss) ? optimizer.step(model.params(), model.grads(), lr) : NAN;
    check_finite_step(step, loss, norm, o, saver.last_saved());
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
    if (rank0)
      print_progress(record, o.steps, seconds_since(run_start) / (step - first_step + 1) * (last_step - step), tty,
                     step == last_step);
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
    if (metrics) metrics->append(record.dump() + "\n");
    if (o.save_every > 0 && step % o.save_every == 0 && step < last_step) saver.save(step, trainer_state(step), false);
  }
  if (last_step - first_step >= 1) result.tokens_per_s = global_tokens * (last_step - first_step) / seconds_since(t_start);
  if (last_step >= first_step) saver.save(last_step, trainer_state(last_step), true);
  return result;
}

EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data_path, int N, int batches, Comm& world,
                               const ParallelOptions& parallel, int block, const std::string& data_format,
                               const MemoryRequest& memory, std::optional<int> doc_start) {
  LASP_CHECK(N > 0 && batches > 0, "eval: --seq-len and --batches must be positive, got {} and {}", N, batches);
  Grid grid = make_grid(world, parallel.sp_size, parallel.dp_size);
  const OpenedCheckpoint checkpoint(dir);  // every read below goes through it: a save swapping another in cannot mix two
  const ModelConfig config = load_checkpoint_config(checkpoint);
  check_model_fits(config, 2 * sizeof(float));  // weights, gradients
  const SpLayout layout = layout_for(config, parallel);
  const std::vector<int> positions = sp_positions(N, grid.sp_size, grid.sp_rank, layout);
  const int Nl = int(positions.size());
  // Synthetic data: other episodes than training's (whose default seed is 1234), unless the spec names a seed.
  const TrainingData eval_data = open_training_data(data_path, data_format, N, 0x5eed0e7a1ull);
  const TokenSource* data = eval_data.source.get();
  eval_batch(*data, N, 0, batches);  // checks that the file holds every window (clear error otherwise)

  const PlannedRank planned = plan_rank(config, grid, 1, N, layout, block, parallel, memory, false);
  Model model(config, 1, Nl, *planned.attention, planned.plan.model);
  const std::optional<TokenMeaning> saved = load_token_meaning(checkpoint);
  check_vocabulary(dir, saved, vocabulary_of(data->is_bytes(), eval_data.synthetic, tokenizer_beside(data_path)),
                   data_path);
  use_documents(model, doc_start_of(dir, saved, doc_start), data_path, world.rank() == 0);
  load_checkpoint_weights(checkpoint, model.layout(), model.params());
  // Windows k = 0..batches-1 from the start of the data, shared by the DP ranks.
  const Validation v = validate(model, *data, eval_data.synthetic, 0, batches, N, positions, grid, world);
  EvalResult r{v.loss, int64_t(batches) * N, traffic(*grid.sp), v.recall_accuracy};
  const double nats = v.loss * double(r.tokens);
  if (data->is_bytes()) {
    r.bytes = r.tokens;
  } else if (!eval_data.synthetic) {
    // The data's own tokenizer says what its tokens are; else the checkpoint's.
    std::optional<Tokenizer> data_tokenizer;
    if (const std::string beside = tokenizer_beside(data_path); !beside.empty()) data_tokenizer = Tokenizer::load(beside);
    else if (checkpoint.has("tokenizer.model"))
      data_tokenizer = Tokenizer::from_bytes(checkpoint.read("tokenizer.model"), checkpoint.shown("tokenizer.model"));
    if (data_tokenizer) {
      const Tokenizer& tok = *data_tokenizer;
      const std::string& tokenizer = tok.path();
      for (int target : eval_batch(*data, N, 0, batches).targets) {
        LASP_CHECK(target >= 0 && target < tok.vocab_size(), "eval: token {} of {} is outside the vocabulary of {} "
                   "({} pieces)", target, data_path, tokenizer, tok.vocab_size());
        r.bytes += tok.bytes_of(target);
      }
    }
  }
  if (r.bytes > 0) r.bits_per_byte = nats / std::log(2.0) / double(r.bytes);
  return r;
}

int document_start(std::optional<int> requested, const std::string& data_path, int vocab_size, std::string* why) {
  if (requested) {
    LASP_CHECK(*requested >= -1 && *requested < vocab_size,
               "--doc-start must be a token of the model's vocabulary [0, {}) or -1 for none, got {}", vocab_size,
               *requested);
    if (why) *why = "--doc-start";
    return *requested;
  }
  const std::string tokenizer = tokenizer_beside(data_path);
  if (tokenizer.empty()) return -1;
  const int bos = Tokenizer::load(tokenizer).bos();
  if (why) *why = "the BOS of " + tokenizer + "; --doc-start -1 for one stream";
  return bos < vocab_size ? bos : -1;
}

}  // namespace lasp
