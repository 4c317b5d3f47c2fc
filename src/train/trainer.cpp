#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/progress.h"
#include "lora/peft_adapter.h"
#include "optim/grad_clip.h"

namespace qlora {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

TrainResult train(LoraModel& lora, const TextDataset& data, const TrainerOptions& opt,
                  const std::function<void(const TrainStepLog&)>& on_step) {
  using Clock = std::chrono::steady_clock;
  if (opt.max_steps < 1) fail("--max-steps", "must be >= 1");
  if (opt.batch_size < 1) fail("--batch-size", "must be >= 1");
  if (opt.grad_accum < 1) fail("--grad-accum", "must be >= 1");
  if (data.num_chunks() < 1) fail("train", "the dataset has no chunks");

  std::vector<AdamWParam> params;
  std::vector<std::span<float>> grads;
  for (LoraLayer& l : lora.layers()) {
    params.push_back({l.module_path + ".lora_A.weight", l.A, l.dA});
    params.push_back({l.module_path + ".lora_B.weight", l.B, l.dB});
    grads.emplace_back(l.dA);
    grads.emplace_back(l.dB);
  }
  AdamW optimizer(std::move(params), opt.adamw);
  LrSchedule sched;
  sched.kind = opt.schedule;
  sched.base_lr = opt.adamw.lr;
  sched.total_steps = opt.max_steps;
  sched.warmup_steps = warmup_steps_from_ratio(opt.max_steps, opt.warmup_ratio);

  std::ofstream metrics;
  if (!opt.out_dir.empty()) {
    std::filesystem::create_directories(opt.out_dir);
    const std::string mpath = opt.out_dir + "/metrics.jsonl";
    metrics.open(mpath, std::ios::trunc);
    if (!metrics) fail(mpath, "cannot write the metrics file");
  }

  // Data order: a permutation of the chunks per epoch.
  LoraRng data_rng(opt.seed);
  LoraRng dropout_rng(opt.seed ^ 0xD50F00Dull);
  std::vector<int64_t> order;
  size_t next = 0;
  auto next_chunk = [&]() {
    if (next == order.size()) {
      order.resize(static_cast<size_t>(data.num_chunks()));
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[data_rng.next_u64() % i]);
      next = 0;
    }
    return order[next++];
  };

  TrainWorkspace ws;
  TrainStepOptions sopt;
  sopt.checkpointing = opt.checkpointing;
  sopt.training = true;
  const int64_t micro = opt.batch_size * opt.grad_accum;
  sopt.grad_scale = 1.f / static_cast<float>(micro);

  TrainResult res;
  std::unique_ptr<ProgressBar> bar;
  if (opt.progress) bar = std::make_unique<ProgressBar>(opt.max_steps, "train", "steps");
  const auto t0 = Clock::now();
  for (int64_t step = 0; step < opt.max_steps; ++step) {
    lora.zero_grad();
    double loss_sum = 0;
    int64_t tokens = 0;
    for (int64_t i = 0; i < micro; ++i) {
      const int64_t c = next_chunk();
      loss_sum += forward_backward(lora, ws, data.inputs(c), data.targets(c), sopt, &dropout_rng);
      tokens += data.chunk_len(c);
    }
    TrainStepLog log;
    log.step = step + 1;
    log.loss = static_cast<float>(loss_sum / static_cast<double>(micro));
    log.lr = sched.lr(step);
    log.tokens = tokens;
    log.grad_norm = opt.max_grad_norm > 0 ? clip_grad_norm(grads, opt.max_grad_norm) : global_grad_norm(grads);
    log.skipped = !std::isfinite(log.grad_norm);
    if (!log.skipped) optimizer.step(log.lr);
    res.tokens += tokens;
    log.elapsed_s = std::chrono::duration<double>(Clock::now() - t0).count();
    log.tokens_per_s = log.elapsed_s > 0 ? static_cast<double>(res.tokens) / log.elapsed_s : 0;
    res.steps.push_back(log);
    if (metrics.is_open()) {
      nlohmann::json j = {{"step", log.step},         {"loss", log.loss},   {"lr", log.lr},
                          {"grad_norm", log.grad_norm}, {"tokens", log.tokens}, {"tokens_per_s", log.tokens_per_s},
                          {"elapsed_s", log.elapsed_s}, {"skipped", log.skipped}};
      metrics << j.dump() << "\n";
      metrics.flush();
    }
    const std::string status = "loss " + fmt("%.4f", log.loss) + " lr " + fmt("%.2e", log.lr) + " " +
                               fmt("%.0f", log.tokens_per_s) + " tok/s";
    if (bar) bar->update(step + 1, status);
    if (on_step) on_step(log);
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (bar) bar->finish();
  if (!opt.out_dir.empty())
    save_peft_adapter(opt.out_dir, lora.config(), opt.base_model_name, lora.layers());
  return res;
}

}  // namespace qlora
