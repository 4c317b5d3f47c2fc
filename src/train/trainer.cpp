#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/append_file.h"
#include "base/atomic_file.h"
#include "base/error.h"
#include "base/process_memory.h"
#include "base/progress.h"
#include "lora/peft_adapter.h"
#include "optim/grad_clip.h"
#include "optim/paged_buffer.h"
#include "train/checkpoint.h"
#include "train/loss_plot.h"
#include "train/output_dir.h"

namespace qlora {

namespace {

using Clock = std::chrono::steady_clock;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

template <class T>
uint64_t mix(uint64_t h, const T& v) {
  return fnv1a64(&v, sizeof v, h);
}

// What a checkpoint must agree with to be resumed: everything that changes the numbers of
// the run (not checkpointing, threads or progress, which do not).
uint64_t run_fingerprint(const LoraModel& lora, const std::vector<TrainSequence>& data, const TrainerOptions& o,
                         int64_t total_steps) {
  uint64_t h = fnv1a64("qlora-train-v1", 14);
  h = mix(h, total_steps), h = mix(h, o.batch_size), h = mix(h, o.grad_accum), h = mix(h, o.adamw.lr);
  h = mix(h, o.adamw.beta1), h = mix(h, o.adamw.beta2), h = mix(h, o.adamw.eps), h = mix(h, o.adamw.weight_decay);
  h = mix(h, static_cast<int>(o.optim)), h = mix(h, static_cast<int>(o.schedule)), h = mix(h, o.warmup_ratio);
  h = mix(h, o.max_grad_norm), h = mix(h, o.seed);
  const LoraConfig& c = lora.config();
  h = mix(h, c.r), h = mix(h, c.alpha), h = mix(h, c.dropout), h = mix(h, c.use_rslora), h = mix(h, c.seed);
  for (const LoraLayer& l : lora.layers()) h = fnv1a64(l.module_path.data(), l.module_path.size(), h);
  const ModelSpec& s = lora.model().spec();
  h = mix(h, s.hidden), h = mix(h, s.n_layers), h = mix(h, s.vocab), h = mix(h, static_cast<int>(lora.model().compute_dtype()));
  h = mix(h, data.size());
  for (const TrainSequence& q : data) {
    h = fnv1a64(q.inputs.data(), q.inputs.size() * sizeof(int), h);
    h = fnv1a64(q.targets.data(), q.targets.size() * sizeof(int), h);
    h = fnv1a64(q.positions.data(), q.positions.size() * sizeof(int32_t), h);
  }
  return h;
}

// A finite number in [lo, hi]; the message says which option and the range.
void check_range(double v, double lo, double hi, const char* option, const char* why = "") {
  if (!std::isfinite(v) || v < lo || v > hi) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "must be a finite number in [%g, %g], got %g%s", lo, hi, v, why);
    fail(option, buf);
  }
}

void check_options(const TrainerOptions& o, size_t n_train) {
  // Non-finite or absurd settings would train to NaN and save garbage: refuse them up front.
  check_range(o.adamw.lr, 0, 1, "--lr", " (AdamW diverges far below 1; QLoRA uses 1e-4..2e-4)");
  if (!(o.adamw.lr > 0)) fail("--lr", "must be > 0");
  check_range(o.adamw.weight_decay, 0, 1, "--weight-decay");
  check_range(o.adamw.beta1, 0, 0.999999, "adam beta1");
  check_range(o.adamw.beta2, 0, 0.999999999, "adam beta2");
  check_range(o.adamw.eps, 0, 1, "adam epsilon");
  check_range(o.warmup_ratio, 0, 1, "--warmup-ratio");
  check_range(o.max_grad_norm, 0, 1e9, "--max-grad-norm", " (0 turns clipping off)");
  if (o.max_steps <= 0) check_range(o.epochs, 1e-9, 1e6, "--epochs");
  if (o.batch_size < 1) fail("--batch-size", "must be >= 1");
  if (o.grad_accum < 1) fail("--grad-accum", "must be >= 1");
  if (o.max_steps <= 0 && !(o.epochs > 0)) fail("--epochs", "must be > 0 (or give --max-steps)");
  if (o.eval_every < 0) fail("--eval-every", "must be >= 0");
  if (o.save_every < 0) fail("--save-every", "must be >= 0");
  if (o.save_every > 0 && o.out_dir.empty()) fail("--save-every", "needs an output directory");
  if (o.resume && o.out_dir.empty()) fail("--resume", "needs an output directory");
  if (n_train == 0) fail("train", "the training set has no sequences with targets");
}

// metrics.jsonl after a resume from `step`: keep what the stopped run wrote up to that
// step (its steps after the checkpoint are redone and logged again).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() <= step)
      kept += line + "\n";
  }
  in.close();
  write_file_atomic(path, kept);
}

void write_jsonl(LineAppendFile* f, nlohmann::json j, const std::string& model) {
  if (!model.empty()) j["model"] = model;
  if (f) f->append_line(j.dump());
}

// Where the first NaN/inf among the LoRA parameters is ("" when all are finite).
std::string first_nonfinite_parameter(const LoraModel& lora) {
  for (const LoraLayer& l : lora.layers()) {
    for (float v : l.A)
      if (!std::isfinite(v)) return l.module_path + ".lora_A";
    for (float v : l.B)
      if (!std::isfinite(v)) return l.module_path + ".lora_B";
  }
  return "";
}

}  // namespace

double EvalResult::ppl() const { return std::exp(loss); }

int64_t planned_steps(const TrainerOptions& opt, int64_t n_sequences) {
  if (opt.max_steps > 0) return opt.max_steps;
  const double per_step = static_cast<double>(opt.batch_size * opt.grad_accum);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(opt.epochs * static_cast<double>(n_sequences) / per_step)));
}

EvalResult evaluate(const LoraModel& lora, const std::vector<TrainSequence>& data, bool progress) {
  TrainWorkspace ws(lora.model().backend());
  return evaluate(lora, data, ws, progress);
}

EvalResult evaluate(const LoraModel& lora, const std::vector<TrainSequence>& data, TrainWorkspace& ws,
                    bool progress) {
  double sum = 0;
  EvalResult r;
  std::unique_ptr<ProgressBar> bar;
  if (progress) bar = std::make_unique<ProgressBar>(static_cast<int64_t>(data.size()), "eval", "seq");
  for (size_t i = 0; i < data.size(); ++i) {
    const TrainSequence& s = data[i];
    const int64_t n = s.n_targets();
    if (n == 0) continue;
    sum += static_cast<double>(forward_loss(lora, ws, s.inputs, s.targets, s.positions)) * static_cast<double>(n);
    r.tokens += n;
    if (bar) bar->update(static_cast<int64_t>(i + 1), "loss " + fmt("%.4f", sum / static_cast<double>(r.tokens)));
  }
  if (bar) bar->finish();
  r.loss = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : 0.0;
  return r;
}

TrainResult train(LoraModel& lora, const std::vector<TrainSequence>& data, const std::vector<TrainSequence>& eval,
                  const TrainerOptions& opt, const std::function<void(const TrainStepLog&)>& on_step) {
  check_options(opt, data.size());
  const int64_t total_steps = planned_steps(opt, static_cast<int64_t>(data.size()));
  const int64_t micro = opt.batch_size * opt.grad_accum;
  const bool write = !opt.out_dir.empty();
  // The output directory is this run's alone from here on (output_dir.h).
  std::unique_ptr<OutputDirLock> dir_lock;
  if (write) {
    dir_lock = std::make_unique<OutputDirLock>(opt.out_dir);
    prepare_output_dir(opt.out_dir, opt.resume, opt.overwrite_output_dir, opt.progress);
  }

  std::vector<AdamWParam> params;
  std::vector<std::span<float>> grads;
  for (LoraLayer& l : lora.layers()) {
    params.push_back({l.module_path + ".lora_A.weight", l.A, l.dA});
    params.push_back({l.module_path + ".lora_B.weight", l.B, l.dB});
    grads.emplace_back(l.dA);
    grads.emplace_back(l.dB);
  }
  const std::string paged_dir = opt.paged_dir.empty() ? opt.out_dir : opt.paged_dir;
  if (optim_is_paged(opt.optim)) {
    const size_t stale = remove_stale_paged_files(paged_dir);
    if (stale && opt.progress)
      std::fprintf(stderr, "removed %zu optimizer state file(s) left in %s by killed runs\n", stale, paged_dir.c_str());
  }
  std::unique_ptr<Optimizer> optimizer = make_optimizer(opt.optim, std::move(params), opt.adamw, paged_dir);
  if (opt.progress)
    std::fprintf(stderr, "optimizer: %s, state %s%s\n", optim_kind_name(opt.optim),
                 human_bytes(static_cast<double>(optimizer->state_bytes())).c_str(),
                 optim_is_paged(opt.optim) ? (" (paged, file in " + paged_dir + ")").c_str() : "");
  LrSchedule sched;
  sched.kind = opt.schedule;
  sched.base_lr = opt.adamw.lr;
  sched.total_steps = total_steps;
  sched.warmup_steps = warmup_steps_from_ratio(total_steps, opt.warmup_ratio);

  // Run state: what a checkpoint saves.
  TrainerState st;
  st.fingerprint = run_fingerprint(lora, data, opt, total_steps);
  LoraRng data_rng(opt.seed);
  LoraRng dropout_rng(opt.seed ^ 0xD50F00Dull);
  bool resumed = false;
  std::string last_checkpoint;  // the newest complete checkpoint of this run, for messages
  if (opt.resume) {
    std::vector<std::string> incomplete;
    const std::optional<std::string> found = latest_checkpoint(opt.out_dir, &incomplete);
    if (opt.progress)
      for (const std::string& d : incomplete)
        std::fprintf(stderr, "note: %s has no trainer_state.safetensors (not a complete checkpoint): passed over\n",
                     d.c_str());
    if (auto dir = found) {
      try {
        st = load_checkpoint(*dir, lora, *optimizer, st.fingerprint);
      } catch (const Error& e) {
        fail(*dir, std::string("cannot resume from this checkpoint: ") + e.what() +
                       " (remove the directory to resume from an earlier checkpoint, or train into a new --out)");
      }
      data_rng.set_state(st.data_rng);
      dropout_rng.set_state(st.dropout_rng);
      resumed = true;
      last_checkpoint = *dir;
      if (opt.progress) std::fprintf(stderr, "resuming from %s (step %lld)\n", dir->c_str(), static_cast<long long>(st.step));
    }  // else: prepare_output_dir() said so, or refused when that would replace a finished run
  }
  auto next_sequence = [&]() -> const TrainSequence& {
    if (st.next >= static_cast<int64_t>(st.order.size())) {
      st.order.resize(data.size());
      for (size_t i = 0; i < st.order.size(); ++i) st.order[i] = static_cast<int64_t>(i);
      for (size_t i = st.order.size(); i > 1; --i) std::swap(st.order[i - 1], st.order[data_rng.next_u64() % i]);
      st.next = 0;
    }
    ++st.consumed;
    return data[static_cast<size_t>(st.order[static_cast<size_t>(st.next++)])];
  };

  const std::string mpath = opt.out_dir + "/metrics.jsonl";
  const std::string plot_path = opt.out_dir + "/loss.svg";
  const std::string plot_title = "qlora train: " + opt.base_model_name;
  std::unique_ptr<LineAppendFile> metrics;  // every write checked: a full disk stops the run
  if (write) {
    if (resumed) truncate_metrics(mpath, st.step);  // the steps after the checkpoint are redone
    metrics = std::make_unique<LineAppendFile>(mpath, /*truncate=*/!resumed);
  }

  TrainResult res;
  res.first_step = st.step + 1;
  res.total_steps = total_steps;
  TrainWorkspace ws(lora.model().backend());  // shared by the training steps and the evals
  auto run_eval = [&](int64_t step, bool show_progress) {
    if (eval.empty()) return;
    const EvalResult e = evaluate(lora, eval, ws, show_progress);
    if (!std::isfinite(e.loss))
      fail("eval", "the eval loss at step " + std::to_string(step) + " is not finite: the run diverged" +
                       (last_checkpoint.empty() ? std::string() : "; the last good checkpoint is " + last_checkpoint));
    res.evals.emplace_back(step, e);
    write_jsonl(metrics.get(), {{"step", step}, {"eval_loss", e.loss}, {"eval_ppl", e.ppl()}, {"eval_tokens", e.tokens}},
                opt.metrics_model);
    if (opt.progress)
      std::fprintf(stderr, "eval at step %lld: loss %.4f, perplexity %.3f (%lld tokens)\n", static_cast<long long>(step),
                   e.loss, e.ppl(), static_cast<long long>(e.tokens));
  };
  // The first eval shows progress: on a slow model it is the first thing that takes time.
  if (!resumed) run_eval(0, opt.progress);

  TrainStepOptions sopt;
  sopt.checkpointing = opt.checkpointing;
  sopt.training = true;
  std::unique_ptr<ProgressBar> bar;
  if (opt.progress) {
    bar = std::make_unique<ProgressBar>(total_steps, "train", "steps");
    bar->update(st.step, "first step running");  // shown at once, not after the first (slow) step
  }
  int64_t bad_in_a_row = 0;  // consecutive steps skipped for a non-finite loss or gradient
  int64_t applied = 0, nonfinite_steps = 0;  // this run's updates, and its steps skipped for NaN/inf
  const auto t0 = Clock::now();
  std::vector<const TrainSequence*> batch(static_cast<size_t>(micro));
  for (int64_t step = st.step; step < total_steps; ++step) {
    lora.zero_grad();
    int64_t n_targets = 0, tokens = 0;
    for (auto& b : batch) {
      b = &next_sequence();
      n_targets += b->n_targets();
      tokens += static_cast<int64_t>(b->inputs.size());
    }
    // Each micro-batch of batch_size sequences runs as one pass (train_model.h
    // forward_backward_batch), its mean loss weighted by its share of the step's target
    // tokens: the step's loss and gradient are those of the mean over all its target tokens.
    // (Sequences without a target are left out: they add nothing.)
    double loss_sum = 0;
    std::vector<TrainSequenceRef> mb;
    for (size_t i = 0; i < batch.size(); i += static_cast<size_t>(opt.batch_size)) {
      mb.clear();
      int64_t n = 0;
      for (size_t j = i; j < std::min(batch.size(), i + static_cast<size_t>(opt.batch_size)); ++j) {
        const TrainSequence* b = batch[j];
        if (b->n_targets() == 0) continue;
        mb.push_back({b->inputs, b->targets, b->positions});
        n += b->n_targets();
      }
      if (n == 0) continue;
      sopt.grad_scale = static_cast<float>(static_cast<double>(n) / static_cast<double>(n_targets));
      loss_sum += static_cast<double>(forward_backward_batch(lora, ws, mb, sopt, &dropout_rng)) * static_cast<double>(n);
    }
    TrainStepLog log;
    log.step = step + 1;
    log.epoch = static_cast<double>(st.consumed) / static_cast<double>(data.size());
    log.loss = n_targets > 0 ? static_cast<float>(loss_sum / static_cast<double>(n_targets)) : 0.f;
    log.lr = sched.lr(step);
    log.tokens = tokens;
    log.grad_norm = opt.max_grad_norm > 0 ? clip_grad_norm(grads, opt.max_grad_norm) : global_grad_norm(grads);
    log.skipped = !std::isfinite(log.grad_norm) || !std::isfinite(log.loss) || n_targets == 0;
    const bool nonfinite = n_targets > 0 && log.skipped;
    if (!log.skipped) optimizer->step(log.lr), ++applied;
    nonfinite_steps += nonfinite ? 1 : 0;
    st.step = step + 1;
    res.tokens += tokens;
    log.elapsed_s = std::chrono::duration<double>(Clock::now() - t0).count();
    log.tokens_per_s = log.elapsed_s > 0 ? static_cast<double>(res.tokens) / log.elapsed_s : 0;
    log.rss_bytes = current_rss_bytes();
    if (const DeviceRunner* dev = lora.model().runner()) {
      log.gpu_bytes = static_cast<int64_t>(dev->device_memory().peak());
    } else if (const Backend& be = lora.model().backend(); !be.host_addressable()) {
      const Backend::Memory bm = be.memory();
      log.gpu_bytes = static_cast<int64_t>(bm.context + bm.peak);
    }
    res.steps.push_back(log);
    nlohmann::json line = {{"step", log.step},           {"epoch", log.epoch},       {"loss", log.loss},
                           {"lr", log.lr},               {"grad_norm", log.grad_norm}, {"tokens", log.tokens},
                           {"tokens_per_s", log.tokens_per_s}, {"elapsed_s", log.elapsed_s},
                           {"rss_bytes", log.rss_bytes}, {"skipped", log.skipped}};
    if (log.gpu_bytes > 0) line["gpu_peak_bytes"] = log.gpu_bytes;
    write_jsonl(metrics.get(), std::move(line), opt.metrics_model);
    if (bar)
      bar->update(step + 1, "loss " + fmt("%.4f", log.loss) + " lr " + fmt("%.2e", log.lr) + " " +
                                fmt("%.0f", log.tokens_per_s) + " tok/s mem " +
                                human_bytes(static_cast<double>(log.rss_bytes)) +
                                (log.gpu_bytes > 0 ? " gpu " + human_bytes(static_cast<double>(log.gpu_bytes)) : "") +
                                " ep " + fmt("%.2f", log.epoch));
    if (on_step) on_step(log);
    // Divergence stops the run before anything non-finite can be saved; what is on disk
    // (the last checkpoint, metrics so far) stays as it is.
    const std::string keep_note =
        last_checkpoint.empty() ? std::string(" No checkpoint was written (use --save-every N to keep some).")
                                : " The last good checkpoint is " + last_checkpoint + ".";
    bad_in_a_row = nonfinite ? bad_in_a_row + 1 : 0;
    if (bad_in_a_row >= opt.max_nonfinite_steps)
      fail("train", "the loss or gradient was NaN/inf for " + std::to_string(bad_in_a_row) +
                        " steps in a row (up to step " + std::to_string(log.step) +
                        "): the run diverged; lower --lr (now " + fmt("%g", opt.adamw.lr) +
                        ") or check the data and --compute-dtype." + keep_note);
    if (!log.skipped) {
      const std::string bad = first_nonfinite_parameter(lora);
      if (!bad.empty())
        fail("train", "the LoRA parameters became NaN/inf after the update of step " + std::to_string(log.step) +
                          " (first in " + bad + ", lr " + fmt("%g", log.lr) +
                          "): the run diverged; lower --lr or --max-grad-norm." + keep_note);
    }
    const bool last = st.step == total_steps;
    if (opt.eval_every > 0 && st.step % opt.eval_every == 0 && !last) run_eval(st.step, false);
    if (opt.save_every > 0 && st.step % opt.save_every == 0 && !last) {
      st.data_rng = data_rng.state();
      st.dropout_rng = dropout_rng.state();
      metrics->sync();  // the metrics up to a checkpoint are on disk with it
      save_checkpoint(opt.out_dir, lora, opt.base_model_name, *optimizer, st, opt.save_total_limit);
      last_checkpoint = opt.out_dir + "/checkpoint-" + std::to_string(st.step);
      write_loss_plot(mpath, plot_path, plot_title);
    }
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (bar) bar->finish();
  // Not one update, every step NaN/inf (fewer of them than stop a run above): the adapter is
  // its initial one, and saving it as the result would pass for a trained adapter.
  if (applied == 0 && nonfinite_steps > 0)
    fail("train", "the loss or gradient was NaN/inf at every step of this run (" + std::to_string(nonfinite_steps) +
                      "), so nothing was learned and no adapter is saved: the model's weights may hold NaN/inf "
                      "values (check the file), or the activations overflow (try --compute-dtype fp32)");
  run_eval(st.step, false);
  if (write) {
    metrics->sync();
    save_peft_adapter(opt.out_dir, lora.config(), opt.base_model_name, lora.layers());
    write_loss_plot(mpath, plot_path, plot_title);
  }
  return res;
}

}  // namespace qlora
