// QLoRA training parity with transformers + PEFT + torch.optim.AdamW, and adapter interop
// in both directions, on stories260K (always present) and SmolLM2-135M-Instruct (skipped
// when models/SmolLM2-135M-Instruct.Q4_1.gguf is absent). References in
// tests/fixtures/train_parity/, made by tools/make_train_parity_fixtures.py, which runs
// PEFT on the same NF4 weights we compute with (bitsandbytes quantize_4bit, blocksize 64,
// no double quantization, dequantized to float32; our NF4 bytes equal bitsandbytes').
//
//  (1) Training: the model loaded as `qlora train --quant nf4` loads it, a LoraModel with
//      PEFT's initial adapter (B non-zero), a batch of 2 sequences with -100 labels:
//      the batch loss, every LoRA gradient, and 20 AdamW steps (lr 1e-3, wd 0) on it.
//  (2) PEFT -> qlora: PEFT's adapter directory loaded by load_peft_adapter and applied by
//      the inference forward (Model::set_adapter) gives PeftModel's logits.
//  (3) qlora -> PEFT: an adapter written by `qlora train` gives, in PeftModel, the logits
//      our forward gives with it.
//
// Batch loss: transformers' ForCausalLMLoss flattens the batch and takes the mean over
// ALL non-ignored shifted targets of both sequences (token-weighted, not the mean of the
// per-sequence means). forward_backward returns one sequence's mean and accumulates
// grad_scale · its gradient, so sequence s gets grad_scale = n_s / (n_0 + n_1) and the
// loss is Σ n_s · loss_s / Σ n_s. transformers shifts labels inside (the prediction at t
// is scored against labels[t + 1], the last position against nothing), so our targets
// are labels[1..T-1] followed by -100 for the same T inputs.
//
// Tolerances: see the block of constants below. Both sides compute in float32 with
// different summation orders, so bit equality is not expected; the fixture also holds the
// same computation in float64, and each bound is a multiple of torch float32's own distance
// from float64 on that quantity. Gradient errors are per tensor, relative to the tensor's
// largest entry (max |ours - ref| / max |ref|): an element-wise relative error means
// nothing for entries near zero. Each test prints what it observed next to torch's own.
//
// A mismatch can be looked at closer: QLORA_PARITY_DUMP_DIR=DIR writes our initial
// gradients as DIR/<model>_grads.safetensors with the fixture's keys;
// QLORA_PARITY_SMOLLM2_STEPS=N runs only the first N of SmolLM2's 20 AdamW steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "lora/lora.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "optim/adamw.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

std::string fixture(const std::string& rel) { return std::string(QLORA_FIXTURE_DIR) + "/train_parity/" + rel; }

// --- tolerances ------------------------------------------------------------------------
// The fixture holds, besides torch's float32 results, the same computation in float64
// (model, adapter, loss and optimizer; RMSNorm too, which transformers would run in
// float32). How far torch's float32 is from float64 on this model and batch is the
// measured size of float32 rounding here; an equally careful float32 implementation
// differs from float64 by about as much, in other directions. So, per quantity, with
// torch_err = |torch - fp64| measured on the fixture files themselves:
//   |ours - fp64|  <= 2 · torch_err + floor      (2: other summation orders, other luck)
//   |ours - torch| <= 3 · torch_err + floor      (triangle inequality on the above)
// Measured (stories260K / SmolLM2): torch_err on gradients (max over tensors of max |Δ| /
// max |fp64|) 1.3e-5 / 3.2e-4; ours 5e-6..7e-6 / 4.5e-5..3.8e-4 (the range: two versions
// of our matmul kernels). On the whole gradient vector (L2) torch 3.8e-6 / 5.6e-5, ours
// 2e-6..3e-6 / 1.2e-5..5.6e-5. SmolLM2's float32 gradients are that noisy in both
// implementations (with the older kernels, per-tensor errors correlated 0.79 with torch's:
// the same ill-conditioned tensors). The floors stop a lucky, tiny torch_err from making a
// bound meaningless.
constexpr double kLossFloor = 2e-7;   // relative; a float32 loss is rounded at 6e-8
constexpr double kGradFloor = 1e-5;   // relative to each tensor's largest entry
constexpr double kCurveFloor = 1e-6;  // relative per step
// The parameters after 20 steps (stories260K) are compared as the whole update,
// ||Δours - Δtorch||₂ / ||Δtorch||₂ with Δ = final - initial. Not entry by entry: Adam's
// first step moves every entry by lr · sign(g) (m / sqrt(v) = g / |g|), so an entry whose
// gradient is within float32 noise of zero moves by ±lr depending on rounding, in torch
// float32 against float64 too (max |Δ| 5e-4 there). Measured 1e-4 to 9e-4 as our kernels
// changed; a wrong bias correction or beta would be off by percents to hundreds of percent.
constexpr double kFinalDeltaRel = 1e-2;
// Logits, absolute, PEFT's against ours. stories260K: logits up to ~±15, measured 2.3e-5.
// SmolLM2: transformers' own float32 logits are 2-5e-5 from float64
// (tests/fixtures/logits/smollm2_logits.json), ours likewise, so up to ~1e-4 apart.
constexpr double kLogitAbsStories = 1e-4;
constexpr double kLogitAbsSmol = 2e-4;


json read_json(const std::string& path) { return json::parse(read_file(path)); }

struct Loaded {
  ModelFiles files;
  std::unique_ptr<Model> model;
};

// As `qlora train --quant nf4 --blocksize 64 --requantize-gguf` loads it (no double
// quantization: the reference dequantizes bitsandbytes' plain NF4; a GGUF's Q4_1 weights
// re-quantized to NF4 from their values, as transformers + bitsandbytes load that file).
Loaded load_nf4(const std::string& path) {
  Loaded L;
  L.files = open_model_files(path);
  ModelLoadOptions o;
  o.quant.quantize = true;
  o.quant.type = QuantType::NF4;
  o.quant.blocksize = 64;
  o.quant.double_quant = false;
  o.keep_gguf_weights = false;
  L.model = std::make_unique<Model>(Model::load(L.files.spec, *L.files.tensors, o));
  L.files.tensors.reset();
  return L;
}

// A LoraModel holding the weights of PEFT adapter `dir` (its config: r, alpha, targets).
std::unique_ptr<LoraModel> lora_from_adapter(const Model& model, const std::string& dir) {
  const PeftAdapter a = load_peft_adapter(dir);
  auto lm = std::make_unique<LoraModel>(model, a.config);
  a.apply_to(lm->layers());
  return lm;
}

// The fixture's batch in forward_backward's form.
struct Batch {
  std::vector<std::vector<int>> inputs, targets;
  std::vector<int64_t> counts;  // non-ignored targets per sequence
  int64_t total = 0;
};

Batch batch_of(const json& ref) {
  Batch b;
  const auto ids = ref.at("ids").get<std::vector<std::vector<int>>>();
  const auto labels = ref.at("labels").get<std::vector<std::vector<int>>>();
  for (size_t s = 0; s < ids.size(); ++s) {
    std::vector<int> t(labels[s].begin() + 1, labels[s].end());
    t.push_back(-100);  // the last position predicts nothing (transformers pads the shift with -100)
    b.counts.push_back(std::count_if(t.begin(), t.end(), [](int x) { return x != -100; }));
    b.total += b.counts.back();
    b.inputs.push_back(ids[s]);
    b.targets.push_back(std::move(t));
  }
  return b;
}

// Loss of the whole batch as transformers computes it; accumulates its gradient (after
// zero_grad) when `backward`.
double batch_loss(LoraModel& lm, TrainWorkspace& ws, const Batch& b, bool backward) {
  if (backward) lm.zero_grad();
  double sum = 0;
  for (size_t s = 0; s < b.inputs.size(); ++s) {
    const double w = static_cast<double>(b.counts[s]) / static_cast<double>(b.total);
    TrainStepOptions opt;
    opt.training = true;  // dropout is 0: training and eval compute the same
    // Checkpointing gives bit-identical gradients (test_train_model.cpp); off, it saves
    // the recomputation.
    opt.checkpointing = false;
    opt.grad_scale = static_cast<float>(w);
    const float l = backward ? forward_backward(lm, ws, b.inputs[s], b.targets[s], opt, nullptr)
                             : forward_loss(lm, ws, b.inputs[s], b.targets[s]);
    sum += w * l;
  }
  return sum;
}

// max |ours - ref| / max |ref| of one tensor.
double tensor_rel(const std::vector<float>& ours, const std::vector<float>& ref, double* max_abs) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num = std::max(num, std::fabs(double(ours[i]) - ref[i]));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  if (max_abs) *max_abs = std::max(*max_abs, num);
  return den > 0 ? num / den : num;
}

// Per-tensor comparison of the LoRA gradients (or parameters) of `lm` with a fixture file.
struct Compare {
  double max_rel = 0, max_abs = 0, l2_rel = 0;
  std::string worst;
};

Compare compare_grads(const LoraModel& lm, const SafeTensorsFile& f, double tol_rel, const char* what) {
  Compare c;
  double diff2 = 0, ref2 = 0;
  EXPECT_EQ(f.tensors().size(), 2 * lm.layers().size()) << f.path() << ": the fixture's LoRA modules differ from ours";
  for (const LoraLayer& l : lm.layers()) {
    for (char which : {'A', 'B'}) {
      const std::string key = peft_lora_key(l.module_path, which);
      const std::vector<float> want = f.to_float(f.at(key));
      const std::vector<float>& got = which == 'A' ? l.dA : l.dB;
      EXPECT_EQ(got.size(), want.size()) << key;
      if (got.size() != want.size()) continue;
      const double rel = tensor_rel(got, want, &c.max_abs);
      EXPECT_LE(rel, tol_rel) << key << " against " << what;
      if (rel > c.max_rel) c.max_rel = rel, c.worst = key;
      for (size_t i = 0; i < want.size(); ++i) {
        diff2 += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        ref2 += double(want[i]) * want[i];
      }
    }
  }
  c.l2_rel = std::sqrt(diff2 / ref2);
  return c;
}

// torch's float32 distance from float64, measured on the fixture files: max over tensors
// of max |Δ| / max |fp64|, and ||Δ||₂ / ||fp64||₂ over all.
struct TorchErr {
  double max_rel = 0, l2_rel = 0;
};
TorchErr torch_grad_error(const SafeTensorsFile& torch32, const SafeTensorsFile& fp64) {
  TorchErr e;
  double d2 = 0, r2 = 0;
  for (const SafeTensorInfo& t : fp64.tensors()) {
    const std::vector<float> want = fp64.to_float(t), got = torch32.to_float(torch32.at(t.name));
    e.max_rel = std::max(e.max_rel, tensor_rel(got, want, nullptr));
    for (size_t i = 0; i < want.size(); ++i) {
      d2 += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
      r2 += double(want[i]) * want[i];
    }
  }
  e.l2_rel = std::sqrt(d2 / r2);
  return e;
}

// All of the fixture's steps, or fewer for SmolLM2 when QLORA_PARITY_SMOLLM2_STEPS=N says
// so (each of its steps is ~0.6 CPU-seconds: 2 x 48 tokens forward and backward through the
// 4-bit 135M model and its 49152-row head).
int steps_to_run(const std::string& name, int fixture_steps) {
  const char* cap = std::getenv("QLORA_PARITY_SMOLLM2_STEPS");
  if (name != "smollm2" || !cap || !*cap) return fixture_steps;
  return std::clamp(std::atoi(cap), 1, fixture_steps);
}

// Runs the whole training comparison of fixture `name` on `model`.
void check_training(const Model& model, const std::string& name) {
  const auto t0 = std::chrono::steady_clock::now();
  const json ref = read_json(fixture(name + "/reference.json"));
  const json& torch_err = ref.at("torch_fp32_vs_fp64");
  std::unique_ptr<LoraModel> lm = lora_from_adapter(model, fixture(name + "/initial_adapter"));
  const LoraConfig& cfg = lm->config();
  ASSERT_EQ(cfg.r, ref.at("r").get<int>());
  ASSERT_EQ(cfg.alpha, ref.at("lora_alpha").get<double>());
  ASSERT_EQ(cfg.dropout, 0.0);
  const Batch batch = batch_of(ref);
  ASSERT_EQ(batch.total, ref.at("num_targets").get<int64_t>());
  std::vector<std::vector<float>> initial;
  for (const LoraLayer& l : lm->layers()) initial.push_back(l.A), initial.push_back(l.B);

  // (a) loss and gradients at the initial adapter.
  TrainWorkspace ws;
  const double loss = batch_loss(*lm, ws, batch, true);
  const double want_loss = ref.at("loss").get<double>(), want_loss64 = ref.at("loss_fp64").get<double>();
  const double loss_rel = std::fabs(loss - want_loss) / want_loss;
  const double loss_rel64 = std::fabs(loss - want_loss64) / want_loss64;
  const double torch_loss_err = std::fabs(want_loss - want_loss64) / want_loss64;
  EXPECT_LE(loss_rel, 3 * torch_loss_err + kLossFloor) << "loss " << loss << " torch " << want_loss;
  EXPECT_LE(loss_rel64, 2 * torch_loss_err + kLossFloor) << "loss " << loss << " float64 " << want_loss64;

  const SafeTensorsFile grads(fixture(name + "/grads.safetensors"));
  const SafeTensorsFile grads64(fixture(name + "/grads_fp64.safetensors"));
  const TorchErr te = torch_grad_error(grads, grads64);
  // Cross-check with what the fixture script measured before rounding fp64 to float32.
  EXPECT_NEAR(te.max_rel, torch_err.at("grads_max_rel").get<double>(), 1e-6);
  const Compare g = compare_grads(*lm, grads, 3 * te.max_rel + kGradFloor, "torch float32");
  const Compare g64 = compare_grads(*lm, grads64, 2 * te.max_rel + kGradFloor, "float64");
  EXPECT_LE(g.l2_rel, 3 * te.l2_rel + kGradFloor) << "whole gradient against torch float32";
  EXPECT_LE(g64.l2_rel, 2 * te.l2_rel + kGradFloor) << "whole gradient against float64";
  // For a closer look at a mismatch: our gradients, keyed like the fixture's.
  if (const char* dump = std::getenv("QLORA_PARITY_DUMP_DIR"); dump && *dump) {
    SafeTensorsWriter w;
    for (const LoraLayer& l : lm->layers()) {
      w.add_vector(peft_lora_key(l.module_path, 'A'), DType::F32, {l.r, l.in}, l.dA);
      w.add_vector(peft_lora_key(l.module_path, 'B'), DType::F32, {l.out, l.r}, l.dB);
    }
    w.write(std::string(dump) + "/" + name + "_grads.safetensors");
  }

  // (b) AdamW steps on the same batch, as torch.optim.AdamW(lr 1e-3, weight_decay 0).
  const json& hp = ref.at("adamw");
  AdamWConfig ac;
  ac.lr = hp.at("lr").get<double>();
  ac.beta1 = hp.at("betas")[0].get<double>();
  ac.beta2 = hp.at("betas")[1].get<double>();
  ac.eps = hp.at("eps").get<double>();
  ac.weight_decay = hp.at("weight_decay").get<double>();
  std::vector<AdamWParam> params;
  for (LoraLayer& l : lm->layers()) {
    params.push_back({peft_lora_key(l.module_path, 'A'), l.A, l.dA});
    params.push_back({peft_lora_key(l.module_path, 'B'), l.B, l.dB});
  }
  AdamW opt(std::move(params), ac);
  const auto want_curve = ref.at("losses").get<std::vector<double>>();
  const auto want_curve64 = ref.at("losses_fp64").get<std::vector<double>>();
  const int fixture_steps = hp.at("steps").get<int>();
  ASSERT_EQ(static_cast<int>(want_curve.size()), fixture_steps);
  ASSERT_EQ(static_cast<int>(want_curve64.size()), fixture_steps);
  const int steps = steps_to_run(name, fixture_steps);
  double curve_rel = 0, curve_rel64 = 0, torch_curve_err = 0;
  for (int i = 0; i < fixture_steps; ++i)
    torch_curve_err = std::max(torch_curve_err, std::fabs(want_curve[i] - want_curve64[i]) / want_curve64[i]);
  auto check_point = [&](double l, double want, double want64, const std::string& where) {
    const double rel = std::fabs(l - want) / want, rel64 = std::fabs(l - want64) / want64;
    curve_rel = std::max(curve_rel, rel);
    curve_rel64 = std::max(curve_rel64, rel64);
    const double torch_err_here = std::max(torch_curve_err, std::fabs(want - want64) / want64);
    EXPECT_LE(rel, 3 * torch_err_here + kCurveFloor) << where << ": loss " << l << " torch " << want;
    EXPECT_LE(rel64, 2 * torch_err_here + kCurveFloor) << where << ": loss " << l << " float64 " << want64;
  };
  double last = loss;
  for (int step = 0; step < steps; ++step) {
    // Step 1's loss is the one checked above (same parameters): recomputing it also
    // checks that forward_backward is repeatable.
    last = batch_loss(*lm, ws, batch, true);
    if (step == 0) {
      EXPECT_EQ(last, loss);
    }
    opt.step();
    check_point(last, want_curve[step], want_curve64[step], "step " + std::to_string(step + 1));
  }
  std::string final_msg = "";
  if (steps == fixture_steps) {
    const double final_loss = batch_loss(*lm, ws, batch, false);
    check_point(final_loss, ref.at("final_loss").get<double>(), ref.at("final_loss_fp64").get<double>(),
                "after the last step");
    // The training did something: the curve falls far more than the tolerance.
    EXPECT_LT(final_loss, 0.8 * want_curve.front());
    last = final_loss;
    if (std::filesystem::exists(fixture(name + "/final_adapter.safetensors"))) {
      const SafeTensorsFile fin(fixture(name + "/final_adapter.safetensors"));
      double param_abs = 0, d2 = 0, ref2 = 0;
      size_t i = 0;
      for (const LoraLayer& l : lm->layers()) {
        for (char which : {'A', 'B'}) {
          const std::string key = peft_lora_key(l.module_path, which);
          const std::vector<float>& got = which == 'A' ? l.A : l.B;
          const std::vector<float> want = fin.to_float(fin.at(key));
          const std::vector<float>& init = initial[i++];
          tensor_rel(got, want, &param_abs);
          for (size_t j = 0; j < want.size(); ++j) {
            const double dw = double(want[j]) - init[j], dg = double(got[j]) - init[j];
            d2 += (dg - dw) * (dg - dw);
            ref2 += dw * dw;
          }
        }
      }
      const double delta_rel = std::sqrt(d2 / ref2);
      EXPECT_LE(delta_rel, kFinalDeltaRel);
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "; final params max abs err %.2e (torch fp32 vs fp64 %.2e), update rel L2 err %.2e", param_abs,
                    torch_err.at("final_params_max_abs").get<double>(), delta_rel);
      final_msg = buf;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[%s] %zu LoRA tensors, %lld targets; loss %.7f: rel err %.2e vs torch %.7f, %.2e vs fp64 %.7f "
              "(torch vs fp64 %.2e)\n"
              "  grads, max per-tensor rel err: %.2e vs torch (%s), %.2e vs fp64 (%s), torch vs fp64 %.2e; "
              "whole-vector L2 rel err %.2e vs torch, %.2e vs fp64, torch vs fp64 %.2e\n"
              "  %d of %d AdamW steps (loss %.5f -> %.5f): curve max rel err %.2e vs torch, %.2e vs fp64 "
              "(torch vs fp64 %.2e)%s; %.2f s\n",
              name.c_str(), 2 * lm->layers().size(), static_cast<long long>(batch.total), loss, loss_rel, want_loss,
              loss_rel64, want_loss64, torch_loss_err, g.max_rel, g.worst.c_str(), g64.max_rel, g64.worst.c_str(),
              te.max_rel, g.l2_rel, g64.l2_rel, te.l2_rel, steps, fixture_steps, loss, last, curve_rel, curve_rel64,
              torch_curve_err, final_msg.c_str(), secs);
}

std::vector<float> logits_of(const Model& m, const std::vector<int>& ids, bool last_only) {
  InferenceState st(m.spec(), static_cast<int64_t>(ids.size()));
  const size_t V = static_cast<size_t>(m.spec().vocab);
  std::vector<float> out(last_only ? V : ids.size() * V);
  forward(m, st, ids, out.data(), /*all_logits=*/!last_only);
  return out;
}

// Our logits with and without the adapter at `adapter_dir` against the fixture's
// (PeftModel's and the plain base's). Returns max |ours - PEFT| with the adapter.
double check_logits(Model& model, const std::string& adapter_dir, const std::string& logits_file,
                    const std::string& what, double tol) {
  const SafeTensorsFile f(logits_file);
  const auto ids = json::parse(f.metadata().at("ids")).get<std::vector<int>>();
  const bool last_only = f.metadata().count("last_only") && f.metadata().at("last_only") == "true";
  const std::vector<float> want = f.to_float(f.at("logits"));
  const std::vector<float> want_base = f.to_float(f.at("base_logits"));

  const std::unique_ptr<LoraModel> lm = lora_from_adapter(model, adapter_dir);
  model.set_adapter(lm.get());
  const std::vector<float> got = logits_of(model, ids, last_only);
  model.set_adapter(nullptr);
  const std::vector<float> got_base = logits_of(model, ids, last_only);
  EXPECT_EQ(got.size(), want.size());
  EXPECT_EQ(got_base.size(), want_base.size());
  if (got.size() != want.size() || got_base.size() != want_base.size()) return INFINITY;

  double d = 0, d_base = 0, moved = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    d = std::max(d, std::fabs(double(got[i]) - want[i]));
    d_base = std::max(d_base, std::fabs(double(got_base[i]) - want_base[i]));
    moved = std::max(moved, std::fabs(double(want[i]) - want_base[i]));
  }
  EXPECT_LE(d, tol) << what << ": logits with the adapter";
  EXPECT_LE(d_base, tol) << what << ": base logits";
  // The adapter really acts: it moves the logits by far more than the tolerance.
  EXPECT_GT(moved, 1000 * tol) << what;
  std::printf("[%s] %zu ids, %s: max |ours - PEFT| %.2e with the adapter (%.2e without); the adapter moves "
              "logits by up to %.3f\n",
              what.c_str(), ids.size(), last_only ? "last position" : "all positions", d, d_base, moved);
  return d;
}

class Stories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(stories_bin())) loaded_ = new Loaded(load_nf4(stories_bin()));
  }
  static void TearDownTestSuite() {
    delete loaded_;
    loaded_ = nullptr;
  }
  void SetUp() override {
    if (!loaded_) GTEST_SKIP() << stories_bin() << " is absent (QLORA_DATA_DIR)";
  }
  static Loaded* loaded_;
};
Loaded* Stories::loaded_ = nullptr;

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(smollm2_gguf())) loaded_ = new Loaded(load_nf4(smollm2_gguf()));
  }
  static void TearDownTestSuite() {
    delete loaded_;
    loaded_ = nullptr;
  }
  void SetUp() override {
    if (!loaded_) GTEST_SKIP() << smollm2_gguf() << " is absent: run scripts/fetch_model.sh";
  }
  static Loaded* loaded_;
};
Loaded* SmolLM2::loaded_ = nullptr;

}  // namespace

TEST_F(Stories, TrainingMatchesPeft) { check_training(*loaded_->model, "stories260k"); }

TEST_F(Stories, PeftAdapterGivesPeftLogits) {
  check_logits(*loaded_->model, fixture("stories260k/initial_adapter"),
               fixture("stories260k/peft_logits.safetensors"), "stories260k PEFT -> qlora", kLogitAbsStories);
}

TEST_F(Stories, QloraAdapterGivesPeftLogits) {
  // Written by `qlora train` (see tools/make_train_parity_fixtures.py --qlora): our own
  // files, read by PeftModel.from_pretrained for the reference logits.
  const PeftAdapter a = load_peft_adapter(fixture("qlora_adapter"));
  EXPECT_EQ(a.modules.size(), 35u);  // all-linear on 5 blocks
  check_logits(*loaded_->model, fixture("qlora_adapter"), fixture("qlora_adapter_logits.safetensors"),
               "stories260k qlora -> PEFT", kLogitAbsStories);
}

TEST_F(SmolLM2, TrainingMatchesPeft) { check_training(*loaded_->model, "smollm2"); }

TEST_F(SmolLM2, PeftAdapterGivesPeftLogits) {
  check_logits(*loaded_->model, fixture("smollm2/initial_adapter"), fixture("smollm2/peft_logits.safetensors"),
               "smollm2 PEFT -> qlora", kLogitAbsSmol);
}

