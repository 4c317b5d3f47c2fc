// QLoRA training end to end on stories260K (llama2.c, 5 layers, hidden 64, vocab 512):
//  (1) whole-model LoRA gradients (r = 2 on all-linear, B random so A gets gradients too)
//      against central finite differences of the loss, dense and NF4 base weights, and
//      gradient checkpointing giving bit-identical gradients;
//  (2) packed sequences compute exactly what their examples give alone.
// The trainer (data order, checkpoints, resume, the CLI) is tested in test_trainer.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;

namespace {

struct Loaded {
  ModelFiles files;
  Model model;
};

Loaded load(bool nf4) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = nf4;
  o.quant.double_quant = nf4;
  Model m = Model::load(f.spec, *f.tensors, o);
  return {std::move(f), std::move(m)};
}

LoraConfig grad_check_config() {
  LoraConfig c;
  c.r = 2;
  c.alpha = 4.0;  // scaling 2
  c.dropout = 0.0;
  c.all_linear = true;
  c.seed = 7;
  return c;
}

// All gradients of all LoRA layers, concatenated.
std::vector<float> all_grads(const LoraModel& lm) {
  std::vector<float> g;
  for (const LoraLayer& l : lm.layers()) {
    g.insert(g.end(), l.dA.begin(), l.dA.end());
    g.insert(g.end(), l.dB.begin(), l.dB.end());
  }
  return g;
}

void gradient_check(bool nf4) {
  Loaded L = load(nf4);
  LoraModel lm(L.model, grad_check_config());
  ASSERT_EQ(lm.layers().size(), 35u);  // 5 blocks x 7 Linear layers
  LoraRng brng(123);
  for (LoraLayer& l : lm.layers())
    for (float& b : l.B) b = 0.05f * (2.f * brng.next_float() - 1.f);

  const auto ids = L.files.tokenizer->encode("The purple whale sang loudly in the library of clouds.");
  ASSERT_GE(ids.size(), 9u);
  const std::vector<int> inputs(ids.begin(), ids.begin() + 8), targets(ids.begin() + 1, ids.begin() + 9);

  TrainWorkspace ws;
  TrainStepOptions opt;
  opt.training = false;
  opt.checkpointing = true;
  lm.zero_grad();
  const float loss_ckpt = forward_backward(lm, ws, inputs, targets, opt, nullptr);
  const std::vector<float> g_ckpt = all_grads(lm);
  opt.checkpointing = false;
  lm.zero_grad();
  const float loss_full = forward_backward(lm, ws, inputs, targets, opt, nullptr);
  const std::vector<float> g_full = all_grads(lm);
  EXPECT_EQ(loss_ckpt, loss_full);
  ASSERT_EQ(g_ckpt.size(), g_full.size());
  EXPECT_EQ(0, std::memcmp(g_ckpt.data(), g_full.data(), g_ckpt.size() * sizeof(float)))
      << "checkpointing changed the gradients";
  EXPECT_EQ(loss_full, forward_loss(lm, ws, inputs, targets));

  // Central differences in float32, h = 1e-2. Two error sources: (a) the float32 loss
  // (~2.7 here) carries rounding noise of ~1e-6 from a few hundred accumulated ops, which
  // becomes ~1e-4 on a difference quotient (measured: with h = 3e-3 small entries err by
  // up to 1.8e-4, so noise dominates there); (b) truncation, h²/6·f''', which measured at
  // ~0.1-0.3% of the largest gradients (~1). Hence |fd - analytic| <= 2e-4 + 2% |analytic|.
  const float h = 1e-2f;
  auto fd = [&](float& p) {
    const float saved = p;
    p = saved + h;
    const double lp = forward_loss(lm, ws, inputs, targets);
    p = saved - h;
    const double lm_ = forward_loss(lm, ws, inputs, targets);
    p = saved;
    return (lp - lm_) / (2.0 * h);
  };
  double max_abs_err = 0, max_grad = 0, max_rel_top = 0;
  int checked = 0;
  LoraRng pick(99);
  for (LoraLayer& l : lm.layers()) {
    for (int which = 0; which < 2; ++which) {
      std::vector<float>& P = which == 0 ? l.A : l.B;
      const std::vector<float>& G = which == 0 ? l.dA : l.dB;
      const size_t imax = static_cast<size_t>(std::max_element(G.begin(), G.end(), [](float a, float b) {
                            return std::fabs(a) < std::fabs(b);
                          }) - G.begin());
      const size_t irand = static_cast<size_t>(pick.next_u64() % G.size());
      for (size_t i : {imax, irand}) {
        const double num = fd(P[i]);
        const double err = std::fabs(num - G[i]);
        max_abs_err = std::max(max_abs_err, err);
        max_grad = std::max(max_grad, std::fabs(double(G[i])));
        if (i == imax) max_rel_top = std::max(max_rel_top, err / std::fabs(double(G[i])));
        EXPECT_LE(err, 2e-4 + 0.02 * std::fabs(G[i]))
            << l.module_path << (which == 0 ? ".A[" : ".B[") << i << "] analytic " << G[i] << " numeric " << num;
        ++checked;
      }
    }
  }
  // Directional derivative per layer along its own gradient: d/de L(θ + e·g/|g|) = |g|.
  double max_rel_dir = 0;
  for (LoraLayer& l : lm.layers()) {
    double n2 = 0;
    for (float g : l.dA) n2 += double(g) * g;
    for (float g : l.dB) n2 += double(g) * g;
    const double norm = std::sqrt(n2);
    ASSERT_GT(norm, 0) << l.module_path << ": no gradient";
    const std::vector<float> A0 = l.A, B0 = l.B;
    auto shift = [&](double e) {
      for (size_t i = 0; i < A0.size(); ++i) l.A[i] = static_cast<float>(A0[i] + e * l.dA[i] / norm);
      for (size_t i = 0; i < B0.size(); ++i) l.B[i] = static_cast<float>(B0[i] + e * l.dB[i] / norm);
      return static_cast<double>(forward_loss(lm, ws, inputs, targets));
    };
    const double num = (shift(h) - shift(-h)) / (2.0 * h);
    l.A = A0;
    l.B = B0;
    max_rel_dir = std::max(max_rel_dir, std::fabs(num - norm) / norm);
    EXPECT_LE(std::fabs(num - norm), 2e-4 + 0.02 * norm) << l.module_path << " |g| " << norm << " numeric " << num;
  }
  // With dropout, the recomputed blocks must draw the same masks as the first forward.
  for (LoraLayer& l : lm.layers()) l.dropout = 0.1f;
  TrainStepOptions dopt;
  dopt.training = true;
  std::vector<float> g_drop[2];
  float loss_drop[2];
  for (int ck = 0; ck < 2; ++ck) {
    dopt.checkpointing = ck == 1;
    LoraRng rng(5);
    lm.zero_grad();
    loss_drop[ck] = forward_backward(lm, ws, inputs, targets, dopt, &rng);
    g_drop[ck] = all_grads(lm);
  }
  EXPECT_EQ(loss_drop[0], loss_drop[1]);
  EXPECT_NE(loss_drop[0], loss_full);  // dropout changed something
  EXPECT_EQ(0, std::memcmp(g_drop[0].data(), g_drop[1].data(), g_drop[0].size() * sizeof(float)))
      << "checkpointing with dropout changed the gradients";
  EXPECT_THROW(forward_backward(lm, ws, inputs, targets, dopt, nullptr), std::exception);  // dropout needs an rng

  std::printf("[%s] loss %.6f, %d entries checked: max |fd - analytic| %.3g (max |grad| %.3g), "
              "max rel err on each tensor's largest entry %.3g; directional max rel err %.3g\n",
              nf4 ? "nf4+dq" : "dense", loss_full, checked, max_abs_err, max_grad, max_rel_top, max_rel_dir);
}

}  // namespace

TEST(TrainModel, GradientCheckDense) { gradient_check(false); }
TEST(TrainModel, GradientCheckNF4) { gradient_check(true); }

// A packed sequence [A; B] with positions restarting at B must compute exactly what A and
// B give alone: loss = token-weighted mean, gradients = token-weighted sum (no leakage:
// if B could attend A, B's loss and every gradient would change).
TEST(TrainModel, PackedSequenceEqualsSeparateExamples) {
  Loaded L = load(true);
  LoraModel lm(L.model, grad_check_config());
  LoraRng brng(99);
  for (LoraLayer& l : lm.layers())
    for (float& b : l.B) b = 0.05f * (2.f * brng.next_float() - 1.f);
  const auto a = L.files.tokenizer->encode("Once upon a time there was a cat.");
  const auto b = L.files.tokenizer->encode("The dog ran to the big park and played.");
  const std::vector<int> ia(a.begin(), a.end() - 1), ta(a.begin() + 1, a.end());
  std::vector<int> ib(b.begin(), b.end() - 1), tb(b.begin() + 1, b.end());
  tb[1] = -100;  // an ignored position inside B
  const double na = static_cast<double>(ta.size()), nb = static_cast<double>(tb.size()) - 1;

  TrainWorkspace ws;
  TrainStepOptions opt;
  opt.training = false;
  lm.zero_grad();
  const float la = forward_backward(lm, ws, ia, ta, opt, nullptr);
  const std::vector<float> ga = all_grads(lm);
  lm.zero_grad();
  const float lb = forward_backward(lm, ws, ib, tb, opt, nullptr);
  const std::vector<float> gb = all_grads(lm);

  std::vector<int> ip(ia), tp(ta);
  ip.insert(ip.end(), ib.begin(), ib.end());
  tp.insert(tp.end(), tb.begin(), tb.end());
  std::vector<int32_t> pos;
  for (size_t t = 0; t < ia.size(); ++t) pos.push_back(static_cast<int32_t>(t));
  for (size_t t = 0; t < ib.size(); ++t) pos.push_back(static_cast<int32_t>(t));
  for (bool ckpt : {true, false}) {
    opt.checkpointing = ckpt;
    lm.zero_grad();
    const float lp = forward_backward(lm, ws, ip, tp, opt, nullptr, pos);
    const std::vector<float> gp = all_grads(lm);
    const double want = (na * la + nb * lb) / (na + nb);
    EXPECT_NEAR(lp, want, 2e-6 * std::fabs(want)) << "checkpointing " << ckpt;
    EXPECT_NEAR(forward_loss(lm, ws, ip, tp, pos), lp, 1e-6 * std::fabs(lp));
    double worst = 0, scale = 0;
    for (size_t i = 0; i < gp.size(); ++i) {
      const double w = (na * ga[i] + nb * gb[i]) / (na + nb);
      worst = std::max(worst, std::fabs(gp[i] - w));
      scale = std::max(scale, std::fabs(w));
    }
    EXPECT_LT(worst, 1e-4 * scale) << "checkpointing " << ckpt;
  }
  // Without positions the same tokens give a different (leaking) result: the test can fail.
  lm.zero_grad();
  const float leak = forward_backward(lm, ws, ip, tp, opt, nullptr);
  EXPECT_GT(std::fabs(leak - (na * la + nb * lb) / (na + nb)), 1e-4);
  // Malformed positions are refused.
  std::vector<int32_t> bad(pos);
  bad[3] = 7;
  EXPECT_THROW(forward_backward(lm, ws, ip, tp, opt, nullptr, bad), Error);
}

// A micro-batch in one pass (forward_backward_batch: the sequences laid end to end through
// every Linear, attention per sequence) computes what one pass per sequence gives: loss =
// target-weighted mean, gradients = target-weighted sum. Three sequences of different
// lengths, one of them packed (two examples) and one with ignored targets; with and without
// checkpointing, dense and NF4.
TEST(TrainModel, BatchInOnePassEqualsOneSequenceAtATime) {
  for (bool nf4 : {false, true}) {
    Loaded L = load(nf4);
    LoraModel lm(L.model, grad_check_config());
    LoraRng brng(5);
    for (LoraLayer& l : lm.layers())
      for (float& b : l.B) b = 0.05f * (2.f * brng.next_float() - 1.f);
    auto seq = [&](const char* text) { return L.files.tokenizer->encode(text); };
    const auto a = seq("Once upon a time there was a cat."), b = seq("The dog ran to the big park and played."),
               c = seq("Lily saw a bird.");
    std::vector<std::vector<int>> in, tg;
    std::vector<std::vector<int32_t>> pos;
    auto add = [&](const std::vector<int>& x) {
      in.emplace_back(x.begin(), x.end() - 1);
      tg.emplace_back(x.begin() + 1, x.end());
      pos.emplace_back();
    };
    add(a);
    add(b);
    tg[1][2] = tg[1][3] = -100;
    add(c);  // then packed with a: positions restart
    for (size_t t = 0; t < in[2].size(); ++t) pos[2].push_back(static_cast<int32_t>(t));
    in[2].insert(in[2].end(), in[0].begin(), in[0].end());
    tg[2].insert(tg[2].end(), tg[0].begin(), tg[0].end());
    for (size_t t = 0; t < in[0].size(); ++t) pos[2].push_back(static_cast<int32_t>(t));

    TrainWorkspace ws;
    TrainStepOptions opt;
    opt.training = false;
    double n_all = 0, want_loss = 0;
    std::vector<double> n(3), want_g;
    for (size_t i = 0; i < 3; ++i) n[i] = static_cast<double>(std::count_if(tg[i].begin(), tg[i].end(), [](int t) { return t != -100; })), n_all += n[i];
    for (size_t i = 0; i < 3; ++i) {
      lm.zero_grad();
      const float l = forward_backward(lm, ws, in[i], tg[i], opt, nullptr, pos[i]);
      want_loss += n[i] / n_all * l;
      const std::vector<float> g = all_grads(lm);
      want_g.resize(g.size(), 0.0);
      for (size_t k = 0; k < g.size(); ++k) want_g[k] += n[i] / n_all * g[k];
    }
    std::vector<TrainSequenceRef> batch;
    for (size_t i = 0; i < 3; ++i) batch.push_back({in[i], tg[i], pos[i]});
    for (bool ckpt : {true, false}) {
      opt.checkpointing = ckpt;
      lm.zero_grad();
      const float lb = forward_backward_batch(lm, ws, batch, opt, nullptr);
      EXPECT_NEAR(lb, want_loss, 2e-6 * std::fabs(want_loss)) << "nf4 " << nf4 << " checkpointing " << ckpt;
      const std::vector<float> g = all_grads(lm);
      double worst = 0, scale = 0;
      for (size_t k = 0; k < g.size(); ++k) {
        worst = std::max(worst, std::fabs(g[k] - want_g[k]));
        scale = std::max(scale, std::fabs(want_g[k]));
      }
      EXPECT_LT(worst, 1e-4 * scale) << "nf4 " << nf4 << " checkpointing " << ckpt;
    }
    // Laid end to end WITHOUT the per-sequence attention, the result differs (the test can fail).
    std::vector<int> cat_in, cat_tg;
    for (size_t i = 0; i < 3; ++i) {
      cat_in.insert(cat_in.end(), in[i].begin(), in[i].end());
      cat_tg.insert(cat_tg.end(), tg[i].begin(), tg[i].end());
    }
    lm.zero_grad();
    EXPECT_GT(std::fabs(forward_backward(lm, ws, cat_in, cat_tg, opt, nullptr) - want_loss), 1e-4);
    EXPECT_THROW(forward_backward_batch(lm, ws, {}, opt, nullptr), Error);
  }
}

// bf16 / fp16 compute (activations rounded where torch's half-precision forward rounds
// them; LoRA weights, gradients and the backward stay float32): the loss and the LoRA
// gradients stay close to float32's, and the optimizer sees the same direction.
TEST(TrainModel, HalfPrecisionComputeTracksFloat32) {
  ModelFiles f = open_model_files(stories_bin());
  auto load_as = [&](ComputeDType dt) {
    ModelLoadOptions o;
    o.quant.quantize = true;
    o.compute_dtype = dt;
    return Model::load(f.spec, *f.tensors, o);
  };
  const Model m32 = load_as(ComputeDType::F32);
  const auto ids = f.tokenizer->encode("Once upon a time, there was a little girl named Lily. She loved to play.");
  const std::vector<int> in(ids.begin(), ids.end() - 1), tg(ids.begin() + 1, ids.end());
  auto run = [&](const Model& m, float* loss) {
    LoraModel lm(m, grad_check_config());
    LoraRng brng(5);
    for (LoraLayer& l : lm.layers())
      for (float& b : l.B) b = 0.05f * (2.f * brng.next_float() - 1.f);
    TrainWorkspace ws;
    TrainStepOptions opt;
    opt.training = false;
    *loss = forward_backward(lm, ws, in, tg, opt, nullptr);
    return all_grads(lm);
  };
  float l32 = 0;
  const std::vector<float> g32 = run(m32, &l32);
  for (ComputeDType dt : {ComputeDType::BF16, ComputeDType::F16}) {
    const Model m = load_as(dt);
    float l = 0;
    const std::vector<float> g = run(m, &l);
    double dot = 0, n1 = 0, n2 = 0;
    for (size_t i = 0; i < g.size(); ++i) dot += g[i] * g32[i], n1 += g[i] * g[i], n2 += g32[i] * g32[i];
    const double cosine = dot / std::sqrt(n1 * n2);
    std::printf("%s: loss %.5f vs fp32 %.5f, gradient cosine %.5f\n", dt == ComputeDType::BF16 ? "bf16" : "fp16", l,
                l32, cosine);
    EXPECT_NEAR(l, l32, 0.01 * l32);
    EXPECT_GT(cosine, 0.99);
    EXPECT_NE(l, l32);  // the rounding really happened
  }
}
