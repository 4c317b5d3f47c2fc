#include "optim/adamw.h"

#include <cmath>
#include <cstring>
#include <set>

#include "base/error.h"
#include "base/parallel.h"
#include "formats/safetensors.h"

namespace qlora {

AdamW::AdamW(std::vector<AdamWParam> params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  check(cfg_.lr >= 0.0, "AdamW", "learning rate must be >= 0");
  check(cfg_.beta1 >= 0.0 && cfg_.beta1 < 1.0, "AdamW", "beta1 must be in [0, 1)");
  check(cfg_.beta2 >= 0.0 && cfg_.beta2 < 1.0, "AdamW", "beta2 must be in [0, 1)");
  check(cfg_.eps >= 0.0, "AdamW", "eps must be >= 0");
  check(cfg_.weight_decay >= 0.0, "AdamW", "weight_decay must be >= 0");
  std::set<std::string> names;
  for (const auto& p : params_) {
    check(names.insert(p.name).second, "AdamW", "two parameters named '" + p.name + "'");
    check(p.value.size() == p.grad.size(), "AdamW", "parameter '" + p.name + "': value and grad sizes differ");
    m_.emplace_back(p.value.size(), 0.f);
    v_.emplace_back(p.value.size(), 0.f);
  }
}

void AdamW::step(double lr) {
  ++step_;
  const double t = static_cast<double>(step_);
  const float decay = static_cast<float>(1.0 - lr * cfg_.weight_decay);
  const bool do_decay = cfg_.weight_decay != 0.0;
  const float w1 = static_cast<float>(1.0 - cfg_.beta1);  // lerp weight
  const bool w1_small = std::fabs(w1) < 0.5f;
  const float b2 = static_cast<float>(cfg_.beta2);
  const float one_minus_b2 = static_cast<float>(1.0 - cfg_.beta2);
  const double bc1 = 1.0 - std::pow(cfg_.beta1, t);
  const double bc2 = 1.0 - std::pow(cfg_.beta2, t);
  const float neg_step_size = static_cast<float>(-(lr / bc1));
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float eps = static_cast<float>(cfg_.eps);
  for (size_t k = 0; k < params_.size(); ++k) {
    float* p = params_[k].value.data();
    const float* g = params_[k].grad.data();
    float* m = m_[k].data();
    float* v = v_[k].data();
    const int64_t n = static_cast<int64_t>(params_[k].value.size());
    parallel_for_range(n, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float pi = p[i];
        if (do_decay) pi = pi * decay;
        const float gi = g[i];
        // torch's vectorized lerp: fmadd(weight, end - start, start) for weight < 0.5.
        const float diff = gi - m[i];
        const float mi = w1_small ? std::fma(w1, diff, m[i]) : std::fma(w1 - 1.f, diff, gi);
        // torch's addcmul: self + value * t1 * t2, contracted to fma(value * t1, t2, self)
        // in its (GCC, FMA-enabled) CPU kernels.
        const float vi = std::fma(one_minus_b2 * gi, gi, v[i] * b2);
        const float denom = std::sqrt(vi) / bc2_sqrt + eps;
        pi = pi + neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
      }
    });
  }
}

void AdamW::save_state(SafeTensorsWriter& w, std::string_view prefix) const {
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string base = std::string(prefix) + params_[k].name;
    const int64_t n = static_cast<int64_t>(m_[k].size());
    w.add(base + ".exp_avg", DType::F32, {n},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m_[k].data()), m_[k].size() * sizeof(float)));
    w.add(base + ".exp_avg_sq", DType::F32, {n},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v_[k].data()), v_[k].size() * sizeof(float)));
  }
  w.set_metadata(std::string(prefix) + "step", std::to_string(step_));
}

int64_t read_step_metadata(const SafeTensorsFile& f, std::string_view prefix) {
  const std::string step_key = std::string(prefix) + "step";
  auto it = f.metadata().find(step_key);
  check(it != f.metadata().end(), f.path(), "missing metadata '" + step_key + "'");
  int64_t step = -1;
  try {
    size_t used = 0;
    step = std::stoll(it->second, &used);
    if (used != it->second.size()) step = -1;
  } catch (const std::exception&) {
    step = -1;
  }
  check(step >= 0, f.path(), "metadata '" + step_key + "' is not a step count: '" + it->second + "'");
  return step;
}

const SafeTensorInfo& read_state_tensor(const SafeTensorsFile& f, const std::string& key, DType dtype, int64_t numel) {
  const SafeTensorInfo& t = f.at(key);
  check(t.dtype == dtype, f.path(),
        "key '" + key + "' must be " + std::string(dtype_name(dtype)) + ", not " + std::string(dtype_name(t.dtype)));
  check(t.numel() == numel, f.path(),
        "key '" + key + "' has " + std::to_string(t.numel()) + " elements, expected " + std::to_string(numel));
  return t;
}

void AdamW::load_state(const SafeTensorsFile& f, std::string_view prefix) {
  const int64_t step = read_step_metadata(f, prefix);
  std::vector<std::vector<float>> m(params_.size()), v(params_.size());
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string base = std::string(prefix) + params_[k].name;
    for (int which = 0; which < 2; ++which) {
      const std::string key = base + (which == 0 ? ".exp_avg" : ".exp_avg_sq");
      const SafeTensorInfo& t =
          read_state_tensor(f, key, DType::F32, static_cast<int64_t>(params_[k].value.size()));
      auto bytes = f.data(t);
      std::vector<float>& dst = which == 0 ? m[k] : v[k];
      dst.resize(static_cast<size_t>(t.numel()));
      if (!dst.empty()) std::memcpy(dst.data(), bytes.data(), dst.size() * sizeof(float));
    }
  }
  m_ = std::move(m);
  v_ = std::move(v);
  step_ = step;
}

}  // namespace qlora
