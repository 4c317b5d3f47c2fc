#include "optim/adamw8bit.h"

#include <cmath>
#include <cstring>
#include <set>

#include "base/error.h"
#include "base/parallel.h"
#include "formats/safetensors.h"
#include "optim/adam_kernels.h"
#include "quant/blockwise.h"
#include "quant/codebook.h"

namespace qlora {

Adam8bitStepScalars Adam8bitStepScalars::make(const AdamWConfig& cfg, double lr, int64_t t) {
  Adam8bitStepScalars s;
  const double td = static_cast<double>(t);
  // Python: correction1 = 1.0 - beta1**step; correction2 = math.sqrt(1.0 - beta2**step).
  const double correction1 = 1.0 - std::pow(cfg.beta1, td);
  const double correction2 = std::sqrt(1.0 - std::pow(cfg.beta2, td));
  s.beta1 = static_cast<float>(cfg.beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - cfg.beta1);
  s.beta2 = static_cast<float>(cfg.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - cfg.beta2);
  s.do_decay = cfg.weight_decay > 0.0;
  s.decay = static_cast<float>(1.0 - lr * cfg.weight_decay);
  s.correction2 = static_cast<float>(correction2);
  s.eps = static_cast<float>(cfg.eps);
  s.step_size = static_cast<float>(-lr / correction1);
  s.eps32 = static_cast<float>(cfg.eps * correction2);
  s.step_size32 = static_cast<float>(-lr * correction2 / correction1 * 1.0);  // * update_scale (1.0)
  return s;
}

namespace {

// The scalar reference's arithmetic (torch: mul_ then add_(alpha) / addcmul_; the fast
// kernels restate it in adam_kernels_impl.h).
inline float update_m(float m, float g, const Adam8bitStepScalars& s) {
  return std::fma(g, s.one_minus_beta1, m * s.beta1);
}
inline float update_v(float v, float g, const Adam8bitStepScalars& s) {
  return std::fma(s.one_minus_beta2 * g, g, v * s.beta2);
}
// The parameter update of the 8-bit variant, given the new moments.
inline float update_p8(float p, float m, float v, const Adam8bitStepScalars& s) {
  const float denom = std::sqrt(v) / s.correction2 + s.eps;
  if (s.do_decay) p = p * s.decay;
  return p + s.step_size * m / denom;
}

}  // namespace

void adam8bit_update_ref(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1,
                         float* absmax2, const Adam8bitStepScalars& s) {
  if (n <= 0) return;
  const float* code1 = dynamic_map_8bit(true).data();
  const float* code2 = dynamic_map_8bit(false).data();
  std::vector<float> m(static_cast<size_t>(n)), v(static_cast<size_t>(n));
  dequantize_8bit_blockwise_ref(q1, absmax1, n, kAdam8bitBlocksize, code1, m.data());
  dequantize_8bit_blockwise_ref(q2, absmax2, n, kAdam8bitBlocksize, code2, v.data());
  for (int64_t i = 0; i < n; ++i) {
    m[i] = update_m(m[i], g[i], s);
    v[i] = update_v(v[i], g[i], s);
  }
  for (int64_t i = 0; i < n; ++i) p[i] = update_p8(p[i], m[i], v[i], s);
  quantize_8bit_blockwise_ref(m.data(), n, kAdam8bitBlocksize, code1, q1, absmax1);
  quantize_8bit_blockwise_ref(v.data(), n, kAdam8bitBlocksize, code2, q2, absmax2);
}

void adam8bit_update(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1, float* absmax2,
                     const Adam8bitStepScalars& s) {
  if (n <= 0) return;
  // ~32 blocks (8K elements, a few microseconds) per thread at least: below that starting
  // threads costs more than it saves.
  const auto& k = adam_kernels::active_kernels();
  parallel_for_range(num_blocks(n, kAdam8bitBlocksize), 32, [&](int64_t b0, int64_t b1) {
    k.adam8bit_blocks(p, g, n, q1, q2, absmax1, absmax2, s, b0, b1);
  });
}

void adam32bnb_update_ref(float* p, const float* g, int64_t n, float* m, float* v, const Adam8bitStepScalars& s) {
  for (int64_t i = 0; i < n; ++i) {
    const float mi = update_m(m[i], g[i], s);
    const float vi = update_v(v[i], g[i], s);
    float pi = p[i];
    if (s.do_decay) pi = pi * s.decay;
    const float upd = mi / (std::sqrt(vi) + s.eps32);
    p[i] = std::fma(upd, s.step_size32, pi);  // add_(update, alpha=step_size): an fmadd
    m[i] = mi;
    v[i] = vi;
  }
}

void adam32bnb_update(float* p, const float* g, int64_t n, float* m, float* v, const Adam8bitStepScalars& s) {
  adam_kernels::active_kernels().adam32bnb(p, g, n, m, v, s);
}

// ---- shared helpers ----------------------------------------------------------------

void validate_adamw_params(const std::vector<AdamWParam>& params, const AdamWConfig& cfg, std::string_view who) {
  check(cfg.lr >= 0.0, who, "learning rate must be >= 0");
  check(cfg.beta1 >= 0.0 && cfg.beta1 < 1.0, who, "beta1 must be in [0, 1)");
  check(cfg.beta2 >= 0.0 && cfg.beta2 < 1.0, who, "beta2 must be in [0, 1)");
  check(cfg.eps >= 0.0, who, "eps must be >= 0");
  check(cfg.weight_decay >= 0.0, who, "weight_decay must be >= 0");
  std::set<std::string> names;
  for (const auto& p : params) {
    check(names.insert(p.name).second, who, "two parameters named '" + p.name + "'");
    check(p.value.size() == p.grad.size(), who, "parameter '" + p.name + "': value and grad sizes differ");
  }
}


// ---- AdamW8bit ----------------------------------------------------------------------

AdamW8bit::AdamW8bit(std::vector<AdamWParam> params, AdamWConfig cfg, std::optional<std::string> paged_dir)
    : params_(std::move(params)), cfg_(cfg) {
  validate_adamw_params(params_, cfg_, paged_dir ? "PagedAdamW8bit" : "AdamW8bit");
  StateLayout layout;
  for (const auto& p : params_) {
    Slot s;
    s.n = static_cast<int64_t>(p.value.size());
    s.is_8bit = adam8bit_uses_8bit(s.n);
    if (s.is_8bit) {
      s.blocks = num_blocks(s.n, kAdam8bitBlocksize);
      s.off1 = layout.add(static_cast<size_t>(s.n));
      s.off2 = layout.add(static_cast<size_t>(s.n));
      s.off_absmax1 = layout.add(static_cast<size_t>(s.blocks) * sizeof(float));
      s.off_absmax2 = layout.add(static_cast<size_t>(s.blocks) * sizeof(float));
      state_bytes_ += 2 * static_cast<size_t>(s.n) + 2 * static_cast<size_t>(s.blocks) * sizeof(float);
    } else {
      s.off1 = layout.add(static_cast<size_t>(s.n) * sizeof(float));
      s.off2 = layout.add(static_cast<size_t>(s.n) * sizeof(float));
      state_bytes_ += 2 * static_cast<size_t>(s.n) * sizeof(float);
    }
    slots_.push_back(s);
  }
  // Zero codes with zero absmax is bnb's initial state (torch.zeros for both).
  buf_ = paged_dir ? StateBuffer::paged(layout.total(), *paged_dir) : StateBuffer::anonymous(layout.total());
}

std::span<const uint8_t> AdamW8bit::codes1(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.is_8bit ? buf_.span<const uint8_t>(s.off1, static_cast<size_t>(s.n)) : std::span<const uint8_t>{};
}
std::span<const uint8_t> AdamW8bit::codes2(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.is_8bit ? buf_.span<const uint8_t>(s.off2, static_cast<size_t>(s.n)) : std::span<const uint8_t>{};
}
std::span<const float> AdamW8bit::absmax1(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.is_8bit ? buf_.span<const float>(s.off_absmax1, static_cast<size_t>(s.blocks)) : std::span<const float>{};
}
std::span<const float> AdamW8bit::absmax2(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.is_8bit ? buf_.span<const float>(s.off_absmax2, static_cast<size_t>(s.blocks)) : std::span<const float>{};
}
std::span<const float> AdamW8bit::state1_f32(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.is_8bit ? std::span<const float>{} : buf_.span<const float>(s.off1, static_cast<size_t>(s.n));
}
std::span<const float> AdamW8bit::state2_f32(size_t i) const {
  const Slot& s = slots_.at(i);
  return s.is_8bit ? std::span<const float>{} : buf_.span<const float>(s.off2, static_cast<size_t>(s.n));
}

void AdamW8bit::step(double lr) {
  ++step_;
  const Adam8bitStepScalars sc = Adam8bitStepScalars::make(cfg_, lr, step_);
  for (size_t k = 0; k < params_.size(); ++k) {
    const Slot& s = slots_[k];
    float* p = params_[k].value.data();
    const float* g = params_[k].grad.data();
    if (s.is_8bit) {
      adam8bit_update(p, g, s.n, buf_.span<uint8_t>(s.off1, 0).data(), buf_.span<uint8_t>(s.off2, 0).data(),
                      buf_.span<float>(s.off_absmax1, 0).data(), buf_.span<float>(s.off_absmax2, 0).data(), sc);
    } else {
      // Below min_8bit_size: at most 4095 elements, not worth threads.
      adam32bnb_update(p, g, s.n, buf_.span<float>(s.off1, 0).data(), buf_.span<float>(s.off2, 0).data(), sc);
    }
  }
}

namespace {

std::span<const uint8_t> as_bytes_of(const StateBuffer& b, size_t off, size_t bytes) {
  return {b.data() + off, bytes};
}

}  // namespace

void AdamW8bit::save_state(SafeTensorsWriter& w, std::string_view prefix) const {
  for (size_t k = 0; k < params_.size(); ++k) {
    const Slot& s = slots_[k];
    const std::string base = std::string(prefix) + params_[k].name;
    const size_t n = static_cast<size_t>(s.n);
    if (s.is_8bit) {
      const size_t nb = static_cast<size_t>(s.blocks);
      w.add(base + ".state1", DType::U8, {s.n}, as_bytes_of(buf_, s.off1, n));
      w.add(base + ".state2", DType::U8, {s.n}, as_bytes_of(buf_, s.off2, n));
      w.add(base + ".absmax1", DType::F32, {s.blocks}, as_bytes_of(buf_, s.off_absmax1, nb * sizeof(float)));
      w.add(base + ".absmax2", DType::F32, {s.blocks}, as_bytes_of(buf_, s.off_absmax2, nb * sizeof(float)));
    } else {
      w.add(base + ".state1", DType::F32, {s.n}, as_bytes_of(buf_, s.off1, n * sizeof(float)));
      w.add(base + ".state2", DType::F32, {s.n}, as_bytes_of(buf_, s.off2, n * sizeof(float)));
    }
  }
  w.set_metadata(std::string(prefix) + "step", std::to_string(step_));
}

void AdamW8bit::load_state(const SafeTensorsFile& f, std::string_view prefix) {
  const int64_t step = read_step_metadata(f, prefix);
  struct Copy {
    const SafeTensorInfo* t;
    size_t off, bytes;
  };
  std::vector<Copy> copies;
  auto want = [&](const std::string& key, DType dtype, int64_t numel, size_t off) {
    const SafeTensorInfo& t = read_state_tensor(f, key, dtype, numel);
    copies.push_back({&t, off, static_cast<size_t>(numel) * dtype_size(dtype)});
  };
  for (size_t k = 0; k < params_.size(); ++k) {
    const Slot& s = slots_[k];
    const std::string base = std::string(prefix) + params_[k].name;
    if (s.is_8bit) {
      want(base + ".state1", DType::U8, s.n, s.off1);
      want(base + ".state2", DType::U8, s.n, s.off2);
      want(base + ".absmax1", DType::F32, s.blocks, s.off_absmax1);
      want(base + ".absmax2", DType::F32, s.blocks, s.off_absmax2);
    } else {
      want(base + ".state1", DType::F32, s.n, s.off1);
      want(base + ".state2", DType::F32, s.n, s.off2);
    }
  }
  // Everything checked: now overwrite.
  for (const Copy& c : copies)
    if (c.bytes) std::memcpy(buf_.data() + c.off, f.data(*c.t).data(), c.bytes);
  step_ = step;
}

}  // namespace qlora
