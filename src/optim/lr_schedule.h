#pragma once
// Learning-rate schedules as transformers' optimization.py defines them: the learning
// rate at step s (0-based, the step about to be taken) is base_lr · factor(s), in double.
#include <cstdint>
#include <string_view>

namespace qlora {

enum class LrScheduleKind { Constant, ConstantWithWarmup, Linear, Cosine };

struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::ConstantWithWarmup;
  double base_lr = 2e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;   // linear / cosine only
  double num_cycles = 0.5;   // cosine only (transformers' default: half a cosine, down to 0)

  // get_constant_schedule_with_warmup: s < w ? s / max(1, w) : 1
  // get_linear_schedule_with_warmup:   s < w ? s / max(1, w) : max(0, (N - s) / max(1, N - w))
  // get_cosine_schedule_with_warmup:   s < w ? s / max(1, w)
  //   : max(0, 0.5 · (1 + cos(π · num_cycles · 2 · (s - w) / max(1, N - w))))
  double factor(int64_t step) const;
  double lr(int64_t step) const { return base_lr * factor(step); }
};

// "constant", "constant_with_warmup", "linear", "cosine" (transformers' names);
// throws Error naming the option otherwise.
LrScheduleKind lr_schedule_kind_from_string(std::string_view s);

// warmup steps from a ratio of the total, as transformers' get_warmup_steps: ceil(N · ratio).
int64_t warmup_steps_from_ratio(int64_t total_steps, double ratio);

}  // namespace qlora
