#include "optim/grad_clip.h"

#include <cmath>

namespace qlora {

float global_grad_norm(std::span<const std::span<float>> grads) {
  // torch: norms of each tensor in float32, then the norm of the stacked norms.
  double total_sq = 0.0;
  for (const auto& g : grads) {
    double sq = 0.0;
    for (float x : g) sq += static_cast<double>(x) * static_cast<double>(x);
    const float n = static_cast<float>(std::sqrt(sq));
    total_sq += static_cast<double>(n) * static_cast<double>(n);
  }
  return static_cast<float>(std::sqrt(total_sq));
}

float clip_grad_norm(std::span<const std::span<float>> grads, float max_norm) {
  const float total = global_grad_norm(grads);
  if (!std::isfinite(total)) return total;
  // torch: max_norm / (total + 1e-6) is Tensor.__rtruediv__, i.e. reciprocal(...) * max_norm.
  const float denom = total + 1e-6f;
  float coef = (1.0f / denom) * max_norm;
  if (coef > 1.0f) coef = 1.0f;
  for (const auto& g : grads)
    for (float& x : g) x = x * coef;
  return total;
}

}  // namespace qlora
