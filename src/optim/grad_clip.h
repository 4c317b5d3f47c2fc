#pragma once
// Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_(norm_type=2):
//   total = ‖(‖g_1‖, ‖g_2‖, ...)‖  (float32 result; accumulated in double here)
//   coef  = min(1, max_norm · (1 / (total + 1e-6)))   (float32, torch's order of operations)
//   g_i  *= coef                                       (always, also when coef == 1)
#include <span>
#include <vector>

namespace qlora {

// L2 norm over all gradients, rounded to float32.
float global_grad_norm(std::span<const std::span<float>> grads);

// Scales the gradients in place; returns the total norm before clipping (what torch
// returns and what trainers log). A non-finite norm leaves the gradients untouched
// (torch would multiply them by NaN); the caller should skip that step.
float clip_grad_norm(std::span<const std::span<float>> grads, float max_norm);

}  // namespace qlora
