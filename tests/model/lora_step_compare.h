#pragma once
// One LoRA training step (r 4, alpha 8, no dropout, all linears; targets: the prompt shifted by
// one, then token 2) on two models that hold the same weight values in different forms: their
// losses agree to 1e-5 and their LoRA B gradients to 1e-4 of the largest (a fresh adapter's B
// is 0, so dA is 0). What the tests of a weight form use to show training goes through it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "lora/lora_model.h"
#include "model/model.h"
#include "train/train_model.h"

namespace qlora::test {

inline void expect_same_lora_step(const Model& a, const Model& b, const std::vector<int>& prompt) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0;
  c.all_linear = true;
  LoraModel ma(a, c), mb(b, c);
  std::vector<int> targets(prompt.begin() + 1, prompt.end());
  targets.push_back(2);
  TrainWorkspace wa, wb;
  TrainStepOptions opt;
  const float loss_a = forward_backward(ma, wa, prompt, targets, opt, nullptr);
  const float loss_b = forward_backward(mb, wb, prompt, targets, opt, nullptr);
  EXPECT_NEAR(loss_a, loss_b, 1e-5 * std::fabs(loss_b));
  double gpeak = 0, gworst = 0;
  for (size_t l = 0; l < ma.layers().size(); ++l)
    for (size_t i = 0; i < ma.layers()[l].dB.size(); ++i) {
      gpeak = std::max(gpeak, std::fabs(static_cast<double>(mb.layers()[l].dB[i])));
      gworst = std::max(gworst, std::fabs(static_cast<double>(ma.layers()[l].dB[i]) - mb.layers()[l].dB[i]));
    }
  ASSERT_GT(gpeak, 0.0);
  EXPECT_LT(gworst, 1e-4 * gpeak) << "LoRA B gradients";
}

}  // namespace qlora::test
