#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora {

double LrSchedule::factor(int64_t s) const {
  const int64_t w = warmup_steps, N = total_steps;
  if (kind == LrScheduleKind::Constant) return 1.0;
  if (s < w) return static_cast<double>(s) / static_cast<double>(std::max<int64_t>(1, w));
  switch (kind) {
    case LrScheduleKind::ConstantWithWarmup:
      return 1.0;
    case LrScheduleKind::Linear:
      return std::max(0.0, static_cast<double>(N - s) / static_cast<double>(std::max<int64_t>(1, N - w)));
    case LrScheduleKind::Cosine: {
      const double progress = static_cast<double>(s - w) / static_cast<double>(std::max<int64_t>(1, N - w));
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
    }
    default:
      return 1.0;
  }
}

LrScheduleKind lr_schedule_kind_from_string(std::string_view s) {
  if (s == "constant") return LrScheduleKind::Constant;
  if (s == "constant_with_warmup") return LrScheduleKind::ConstantWithWarmup;
  if (s == "linear") return LrScheduleKind::Linear;
  if (s == "cosine") return LrScheduleKind::Cosine;
  fail("--lr-scheduler", "unknown schedule " + excerpt(s) + " (constant, constant_with_warmup, linear, cosine)");
}

int64_t warmup_steps_from_ratio(int64_t total_steps, double ratio) {
  check(ratio >= 0.0 && ratio <= 1.0, "--warmup-ratio", "must be in [0, 1]");
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * ratio));
}

}  // namespace qlora
