// AdamW, LR schedules and gradient clipping against torch / transformers reference values
// (tests/fixtures/peft/adamw_reference.json, made by tools/make_peft_fixtures.py).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/safetensors.h"
#include "optim/adamw.h"
#include "optim/grad_clip.h"
#include "optim/lr_schedule.h"

using namespace qlora;
using nlohmann::json;

namespace {

const json& reference() {
  static const json j = [] {
    std::ifstream f(std::string(QLORA_FIXTURE_DIR) + "/peft/adamw_reference.json");
    std::stringstream ss;
    ss << f.rdbuf();
    return json::parse(ss.str());
  }();
  return j;
}

std::vector<float> floats(const json& bits) {
  std::vector<float> v;
  for (const auto& b : bits) v.push_back(std::bit_cast<float>(b.get<uint32_t>()));
  return v;
}

// Overwrites in place: the optimizer borrows the buffers, so they must not be replaced.
void assign(std::vector<float>& dst, const std::vector<float>& src) {
  ASSERT_EQ(dst.size(), src.size());
  std::copy(src.begin(), src.end(), dst.begin());
}

int64_t ulp_distance(float a, float b) {
  int32_t ia = std::bit_cast<int32_t>(a), ib = std::bit_cast<int32_t>(b);
  if (ia < 0) ia = INT32_MIN - ia;
  if (ib < 0) ib = INT32_MIN - ib;
  return std::llabs(static_cast<int64_t>(ia) - ib);
}

struct Params {
  std::vector<std::vector<float>> values, grads;
  std::vector<AdamWParam> refs() {
    std::vector<AdamWParam> r;
    for (size_t i = 0; i < values.size(); ++i) {
      std::string name = "p";
      name += std::to_string(i);
      r.push_back({name, values[i], grads[i]});
    }
    return r;
  }
};

Params make_params(const json& a) {
  Params p;
  for (const auto& v : a["params0"]) p.values.push_back(floats(v));
  for (const auto& v : p.values) p.grads.emplace_back(v.size(), 0.f);
  return p;
}

AdamWConfig config_of(const json& a) {
  AdamWConfig c;
  c.lr = a["lr"];
  c.beta1 = a["beta1"];
  c.beta2 = a["beta2"];
  c.eps = a["eps"];
  c.weight_decay = a["weight_decay"];
  return c;
}

}  // namespace

TEST(AdamW, MatchesTorchTenSteps) {
  const json& a = reference()["adamw"];
  Params p = make_params(a);
  AdamW opt(p.refs(), config_of(a));
  int64_t max_ulp = 0;
  const int steps = static_cast<int>(a["grads"].size());
  for (int s = 0; s < steps; ++s) {
    for (size_t i = 0; i < p.grads.size(); ++i) assign(p.grads[i], floats(a["grads"][s][i]));
    opt.step();
    for (size_t i = 0; i < p.values.size(); ++i) {
      std::vector<float> want = floats(a["params_after_step"][s][i]);
      ASSERT_EQ(want.size(), p.values[i].size());
      for (size_t k = 0; k < want.size(); ++k) max_ulp = std::max(max_ulp, ulp_distance(want[k], p.values[i][k]));
    }
  }
  EXPECT_EQ(opt.steps_taken(), a["step"].get<int64_t>());
  // Bit-exact with torch's CPU kernels (FMA in lerp and addcmul, see adamw.h).
  EXPECT_EQ(max_ulp, 0) << "max ulp distance from torch after " << steps << " steps";
  for (size_t i = 0; i < p.values.size(); ++i) {
    std::vector<float> m = floats(a["exp_avg"][i]), v = floats(a["exp_avg_sq"][i]);
    for (size_t k = 0; k < m.size(); ++k) {
      EXPECT_EQ(ulp_distance(m[k], opt.exp_avg(i)[k]), 0) << i << "," << k;
      EXPECT_EQ(ulp_distance(v[k], opt.exp_avg_sq(i)[k]), 0) << i << "," << k;
    }
  }
  std::printf("AdamW vs torch: max ulp distance %lld over %d steps\n", static_cast<long long>(max_ulp), steps);
}

TEST(AdamW, WeightDecayIsDecoupledAndFirst) {
  // One element, g = 0: m = v = 0, so the update is only p·(1 - lr·wd) (denominator eps).
  std::vector<float> p{2.0f}, g{0.0f};
  AdamWConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.5;
  AdamW opt({{"x", p, g}}, c);
  opt.step();
  EXPECT_EQ(p[0], 2.0f * static_cast<float>(1.0 - 0.1 * 0.5));
}

TEST(AdamW, StateSaveRestoreContinuesIdentically) {
  const json& a = reference()["adamw"];
  Params p1 = make_params(a), p2 = make_params(a);
  AdamW o1(p1.refs(), config_of(a));
  for (int s = 0; s < 4; ++s) {
    for (size_t i = 0; i < p1.grads.size(); ++i) assign(p1.grads[i], floats(a["grads"][s][i]));
    o1.step();
  }
  const std::string path =
      (std::filesystem::temp_directory_path() / ("qlora_adamw_state_" + std::to_string(::getpid()) + ".safetensors")).string();
  {
    SafeTensorsWriter w;
    o1.save_state(w);
    w.write(path);
  }
  for (size_t i = 0; i < p1.values.size(); ++i) assign(p2.values[i], p1.values[i]);
  AdamW o2(p2.refs(), config_of(a));
  {
    SafeTensorsFile f(path);
    o2.load_state(f);
  }
  EXPECT_EQ(o2.steps_taken(), 4);
  for (int s = 4; s < 10; ++s) {
    for (size_t i = 0; i < p1.grads.size(); ++i) {
      assign(p1.grads[i], floats(a["grads"][s][i]));
      assign(p2.grads[i], floats(a["grads"][s][i]));
    }
    o1.step();
    o2.step();
  }
  for (size_t i = 0; i < p1.values.size(); ++i)
    for (size_t k = 0; k < p1.values[i].size(); ++k)
      EXPECT_EQ(std::bit_cast<uint32_t>(p1.values[i][k]), std::bit_cast<uint32_t>(p2.values[i][k]));
  std::filesystem::remove(path);
}

TEST(AdamW, LoadStateRejectsMismatch) {
  std::vector<float> p(5, 1.f), g(5, 0.1f), q(6, 1.f), h(6, 0.f);
  AdamW o1({{"w", p, g}}, AdamWConfig{});
  o1.step();
  const std::string path =
      (std::filesystem::temp_directory_path() / ("qlora_adamw_bad_" + std::to_string(::getpid()) + ".safetensors")).string();
  SafeTensorsWriter w;
  o1.save_state(w);
  w.write(path);
  SafeTensorsFile f(path);
  AdamW wrong_size({{"w", q, h}}, AdamWConfig{});
  EXPECT_THROW(wrong_size.load_state(f), Error);
  AdamW wrong_name({{"other", p, g}}, AdamWConfig{});
  try {
    wrong_name.load_state(f);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.other.exp_avg"), std::string::npos) << e.what();
  }
  EXPECT_THROW(wrong_size.load_state(f, "nothing."), Error);
  std::filesystem::remove(path);
}

TEST(AdamW, RejectsBadParams) {
  std::vector<float> p(3), g(4);
  EXPECT_THROW(AdamW({{"a", p, g}}, AdamWConfig{}), Error);
  std::vector<float> g3(3);
  EXPECT_THROW(AdamW({{"a", p, g3}, {"a", p, g3}}, AdamWConfig{}), Error);
  AdamWConfig bad;
  bad.beta2 = 1.0;
  EXPECT_THROW(AdamW({{"a", p, g3}}, bad), Error);
}

TEST(LrSchedule, MatchesTransformers) {
  const json& s = reference()["schedules"];
  const double base = s["base_lr"];
  const int64_t total = s["total"], warmup = s["warmup"];
  struct Case { const char* key; LrScheduleKind kind; double cycles; };
  const Case cases[] = {{"constant_with_warmup", LrScheduleKind::ConstantWithWarmup, 0.5},
                        {"linear", LrScheduleKind::Linear, 0.5},
                        {"cosine", LrScheduleKind::Cosine, 0.5},
                        {"cosine_1.5_cycles", LrScheduleKind::Cosine, 1.5}};
  for (const auto& c : cases) {
    LrSchedule sch{c.kind, base, warmup, total, c.cycles};
    const auto& want = s[c.key];
    ASSERT_EQ(static_cast<int64_t>(want.size()), total + 1);
    for (int64_t step = 0; step <= total; ++step) {
      const double w = want[step];
      EXPECT_NEAR(sch.lr(step), w, 1e-15 * base + 1e-12 * std::fabs(w)) << c.key << " step " << step;
    }
  }
}

TEST(LrSchedule, NamesAndWarmupRatio) {
  EXPECT_EQ(lr_schedule_kind_from_string("cosine"), LrScheduleKind::Cosine);
  EXPECT_EQ(lr_schedule_kind_from_string("constant_with_warmup"), LrScheduleKind::ConstantWithWarmup);
  EXPECT_THROW(lr_schedule_kind_from_string("cosine_with_restarts"), Error);
  EXPECT_EQ(warmup_steps_from_ratio(1000, 0.03), 30);
  EXPECT_EQ(warmup_steps_from_ratio(10, 0.03), 1);
  LrSchedule constant{LrScheduleKind::Constant, 1e-3, 5, 10, 0.5};
  EXPECT_EQ(constant.lr(0), 1e-3);
}

TEST(GradClip, MatchesTorch) {
  const json& c = reference()["clip"];
  for (const auto& cs : c["cases"]) {
    std::vector<std::vector<float>> g;
    for (const auto& x : cs["grads"]) g.push_back(floats(x));
    std::vector<std::span<float>> spans(g.begin(), g.end());
    const float want_norm = std::bit_cast<float>(cs["total_norm"].get<uint32_t>());
    const float norm = clip_grad_norm(spans, cs["max_norm"].get<float>());
    EXPECT_LE(ulp_distance(norm, want_norm), 1) << norm << " vs " << want_norm;
    int64_t max_ulp = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      std::vector<float> want = floats(cs["clipped"][i]);
      for (size_t k = 0; k < want.size(); ++k) max_ulp = std::max(max_ulp, ulp_distance(want[k], g[i][k]));
    }
    EXPECT_LE(max_ulp, 2) << "max_norm " << cs["max_norm"].get<double>();
  }
}

TEST(GradClip, NonFiniteNormLeavesGradients) {
  std::vector<float> a{1.f, NAN};
  std::vector<std::span<float>> s{a};
  EXPECT_TRUE(std::isnan(clip_grad_norm(s, 1.0f)));
  EXPECT_EQ(a[0], 1.f);
}
