#pragma once
// The training loop of `qlora train`. The training sequences (train/sft_dataset.h) form one
// stream, shuffled with the seed and reshuffled at every epoch; each optimizer step takes
// the next batch_size · grad_accum sequences, and its loss is the mean over all their
// target tokens (each sequence weighted by its number of targets, as transformers does
// with num_items_in_batch). Gradients are clipped by global norm and the LoRA parameters
// updated with the chosen optimizer at the schedule's learning rate (constant with warmup
// by default, as the QLoRA paper).
//
// Out of the loop, into out_dir:
//   metrics.jsonl      one JSON line per step ({"step", "loss", "lr", ...}) and per eval
//                      ({"step", "eval_loss", "eval_ppl", ...}); an eval at step 0 first
//   loss.svg           the loss curve (train and eval), redrawn at each checkpoint and at the end
//   checkpoint-<N>/    every save_every steps: the PEFT adapter and trainer_state.safetensors
//                      (optimizer state, schedule position, RNG states, data order and
//                      position), written to a temporary directory and renamed; the last
//                      save_total_limit are kept
//   adapter_config.json, adapter_model.safetensors   the final PEFT adapter
// With resume, the newest complete checkpoint is loaded and the run continues from it; the
// result is bit-identical to a run that was never stopped.
//
// out_dir belongs to the run while it runs (train/output_dir.h: a lock; an earlier run's
// output is refused unless resume or overwrite_output_dir). Every write is checked: a
// failure (disk full) throws Error naming the file, keeping the checkpoints written so far.
// A step whose loss or gradient is NaN/inf is skipped (no update); max_nonfinite_steps of
// them in a row, or a NaN/inf LoRA parameter after an update, throws Error before anything
// non-finite is saved.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "train/sft_dataset.h"
#include "train/train_model.h"

namespace qlora {

struct TrainerOptions {
  std::string out_dir;                 // "" = write nothing (no metrics, no adapter, no checkpoints)
  std::string base_model_name;         // adapter_config.json base_model_name_or_path
  // When set, every metrics.jsonl line carries "model": this. Set for random models
  // ("random:llama-7b"), so that a line read on its own still says its numbers come from
  // random weights; empty (no field) for real models.
  std::string metrics_model;
  int64_t max_steps = -1;              // > 0: exactly this many steps; else `epochs` decides
  double epochs = 1.0;                 // passes over the training sequences (may be fractional)
  int64_t batch_size = 1;
  int64_t grad_accum = 1;
  AdamWConfig adamw;                   // adamw.lr is the base learning rate
  OptimKind optim = OptimKind::AdamW32;
  std::string paged_dir;               // where paged optimizers keep their state file ("" = out_dir)
  LrScheduleKind schedule = LrScheduleKind::ConstantWithWarmup;
  double warmup_ratio = 0.03;
  float max_grad_norm = 0.3f;          // <= 0: no clipping
  uint64_t seed = 42;                  // data order and dropout
  bool checkpointing = true;           // gradient checkpointing
  int64_t eval_every = 0;              // > 0: evaluate every N steps (and always at 0 and the end)
  int64_t save_every = 0;              // > 0: checkpoint every N steps
  int64_t save_total_limit = 2;        // checkpoints kept (older ones removed); <= 0 keeps all
  bool resume = false;                 // continue from the newest checkpoint in out_dir
  bool overwrite_output_dir = false;   // replace an earlier run's output in out_dir (else refused)
  int64_t max_nonfinite_steps = 5;     // this many NaN/inf steps in a row stop the run
  bool progress = true;                // progress bar on stderr
};

struct TrainStepLog {
  int64_t step = 0;  // 1-based
  double epoch = 0;  // sequences consumed / training sequences
  float loss = 0;    // mean over the step's target tokens
  float grad_norm = 0;
  double lr = 0;
  int64_t tokens = 0;        // tokens in this step
  double tokens_per_s = 0;   // over this run so far
  double elapsed_s = 0;
  int64_t rss_bytes = 0;     // resident memory after the step
  int64_t gpu_bytes = 0;     // --device cuda: the GPU's peak so far (CUDA context + buffers); 0 on the CPU
  bool skipped = false;      // non-finite gradient norm: no update
};

struct EvalResult {
  double loss = 0;          // mean over all target tokens
  int64_t tokens = 0;       // target tokens
  double ppl() const;       // exp(loss)
};

struct TrainResult {
  std::vector<TrainStepLog> steps;  // the steps this call ran (after a resume: from there)
  std::vector<std::pair<int64_t, EvalResult>> evals;  // (step, result)
  int64_t first_step = 1;           // > 1 after a resume
  int64_t total_steps = 0;
  double seconds = 0;
  int64_t tokens = 0;
  double tokens_per_s() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0; }
};

// Loss over every target token of `data` (no dropout, no gradients).
EvalResult evaluate(const LoraModel& lora, const std::vector<TrainSequence>& data, bool progress = false);
// The same with the caller's workspace (the trainer evaluates in its own: no second copy).
EvalResult evaluate(const LoraModel& lora, const std::vector<TrainSequence>& data, TrainWorkspace& ws,
                    bool progress = false);

// Steps a run will take: max_steps when > 0, else ceil(epochs · sequences / (batch · accum)).
int64_t planned_steps(const TrainerOptions& opt, int64_t n_sequences);

// Runs the loop on `lora` (its LoRA parameters are updated in place). `eval` may be empty.
// `on_step` (optional) is called after every step. Throws Error on invalid options, I/O
// failures, or (resume) a checkpoint that does not belong to this run's settings and data.
TrainResult train(LoraModel& lora, const std::vector<TrainSequence>& data, const std::vector<TrainSequence>& eval,
                  const TrainerOptions& opt, const std::function<void(const TrainStepLog&)>& on_step = {});

}  // namespace qlora
