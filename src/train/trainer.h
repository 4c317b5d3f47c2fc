#pragma once
// The training loop of `qlora train`: each optimizer step takes batch_size · grad_accum
// chunks of the dataset (shuffled with the seed, reshuffled every epoch), averages the
// loss and gradients over them, clips by global norm, and updates the LoRA parameters
// with AdamW at the learning rate of the schedule (constant with warmup by default, as
// the QLoRA paper). Logs one JSON line per step to <out_dir>/metrics.jsonl and shows a
// progress bar; at the end writes the PEFT adapter into out_dir.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "optim/adamw.h"
#include "optim/lr_schedule.h"
#include "train/text_dataset.h"
#include "train/train_model.h"

namespace qlora {

struct TrainerOptions {
  std::string out_dir;                 // "" = write nothing (no metrics, no adapter)
  std::string base_model_name;         // adapter_config.json base_model_name_or_path
  int64_t max_steps = 100;
  int64_t batch_size = 1;
  int64_t grad_accum = 1;
  AdamWConfig adamw;                   // adamw.lr is the base learning rate
  LrScheduleKind schedule = LrScheduleKind::ConstantWithWarmup;
  double warmup_ratio = 0.03;
  float max_grad_norm = 0.3f;          // <= 0: no clipping
  uint64_t seed = 42;                  // data order and dropout
  bool checkpointing = true;
  bool progress = true;                // progress bar on stderr
};

struct TrainStepLog {
  int64_t step = 0;  // 1-based
  float loss = 0;    // mean over the step's sequences
  float grad_norm = 0;
  double lr = 0;
  int64_t tokens = 0;        // tokens in this step
  double tokens_per_s = 0;   // over the whole run so far
  double elapsed_s = 0;
  bool skipped = false;      // non-finite gradient norm: no update
};

struct TrainResult {
  std::vector<TrainStepLog> steps;
  double seconds = 0;
  int64_t tokens = 0;
  double tokens_per_s() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0; }
};

// Runs the loop on `lora` (its LoRA parameters are updated in place). `on_step` (optional)
// is called after every step. Throws Error on invalid options or I/O failures.
TrainResult train(LoraModel& lora, const TextDataset& data, const TrainerOptions& opt,
                  const std::function<void(const TrainStepLog&)>& on_step = {});

}  // namespace qlora
