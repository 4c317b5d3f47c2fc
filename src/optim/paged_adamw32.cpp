#include "optim/paged_adamw32.h"

#include <cmath>
#include <cstring>

#include "base/error.h"
#include "base/parallel.h"
#include "formats/safetensors.h"
#include "optim/adam_kernels.h"
#include "optim/adamw8bit.h"

namespace qlora {

// The loop body of AdamW::step (optim/adamw.cpp) lives in adam_kernels_impl.h too, restated
// over external storage because AdamW owns its moments in std::vectors. Any change there
// must be made there too; the PagedAdamW32 test compares the two bit for bit every step.
void torch_adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWConfig& cfg, double lr,
                        int64_t t) {
  adam_kernels::active_kernels().torch_adamw(p, g, m, v, n, adam_kernels::TorchAdamWScalars::make(cfg, lr, t));
}

PagedAdamW32::PagedAdamW32(std::vector<AdamWParam> params, AdamWConfig cfg, const std::string& paged_dir)
    : params_(std::move(params)), cfg_(cfg) {
  validate_adamw_params(params_, cfg_, "PagedAdamW32");
  StateLayout layout;
  for (const auto& p : params_) {
    off_m_.push_back(layout.add(p.value.size() * sizeof(float)));
    off_v_.push_back(layout.add(p.value.size() * sizeof(float)));
    state_bytes_ += 2 * p.value.size() * sizeof(float);
  }
  buf_ = StateBuffer::paged(layout.total(), paged_dir);
}

std::span<const float> PagedAdamW32::exp_avg(size_t i) const {
  return buf_.span<const float>(off_m_.at(i), params_.at(i).value.size());
}
std::span<const float> PagedAdamW32::exp_avg_sq(size_t i) const {
  return buf_.span<const float>(off_v_.at(i), params_.at(i).value.size());
}

void PagedAdamW32::step(double lr) {
  ++step_;
  const auto sc = adam_kernels::TorchAdamWScalars::make(cfg_, lr, step_);
  const auto& kern = adam_kernels::active_kernels();
  for (size_t k = 0; k < params_.size(); ++k) {
    float* p = params_[k].value.data();
    const float* g = params_[k].grad.data();
    float* m = buf_.span<float>(off_m_[k], 0).data();
    float* v = buf_.span<float>(off_v_[k], 0).data();
    parallel_for_range(static_cast<int64_t>(params_[k].value.size()), 1 << 15, [&](int64_t b, int64_t e) {
      kern.torch_adamw(p + b, g + b, m + b, v + b, e - b, sc);
    });
  }
}

void PagedAdamW32::save_state(SafeTensorsWriter& w, std::string_view prefix) const {
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string base = std::string(prefix) + params_[k].name;
    const size_t n = params_[k].value.size();
    w.add(base + ".exp_avg", DType::F32, {static_cast<int64_t>(n)}, {buf_.data() + off_m_[k], n * sizeof(float)});
    w.add(base + ".exp_avg_sq", DType::F32, {static_cast<int64_t>(n)}, {buf_.data() + off_v_[k], n * sizeof(float)});
  }
  w.set_metadata(std::string(prefix) + "step", std::to_string(step_));
}

void PagedAdamW32::load_state(const SafeTensorsFile& f, std::string_view prefix) {
  const int64_t step = read_step_metadata(f, prefix);
  std::vector<std::pair<const SafeTensorInfo*, size_t>> copies;
  for (size_t k = 0; k < params_.size(); ++k) {
    const std::string base = std::string(prefix) + params_[k].name;
    for (int which = 0; which < 2; ++which) {
      const std::string key = base + (which == 0 ? ".exp_avg" : ".exp_avg_sq");
      const SafeTensorInfo& t =
          read_state_tensor(f, key, DType::F32, static_cast<int64_t>(params_[k].value.size()));
      copies.emplace_back(&t, which == 0 ? off_m_[k] : off_v_[k]);
    }
  }
  for (const auto& [t, off] : copies) {
    auto bytes = f.data(*t);
    if (!bytes.empty()) std::memcpy(buf_.data() + off, bytes.data(), bytes.size());
  }
  step_ = step;
}

}  // namespace qlora
