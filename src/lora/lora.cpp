#include "lora/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "base/parallel.h"
#include "model/linear_kernels.h"

namespace qlora {

double LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

bool lora_module_matches(std::string_view path, std::string_view target) {
  if (target.empty()) return false;
  if (path == target) return true;
  return path.size() > target.size() && path.ends_with(target) && path[path.size() - target.size() - 1] == '.';
}

bool LoraConfig::targets(std::string_view module_path, bool is_output_head) const {
  if (all_linear) return !is_output_head;
  for (const auto& t : target_modules)
    if (lora_module_matches(module_path, t)) return true;
  return false;
}

void LoraConfig::validate(std::string_view where) const {
  check(r >= 1, where, "LoRA rank r must be >= 1, got " + std::to_string(r));
  check(std::isfinite(alpha), where, "lora_alpha must be a finite number");
  check(dropout >= 0.0 && dropout < 1.0, where, "lora_dropout must be in [0, 1), got " + std::to_string(dropout));
  check(all_linear || !target_modules.empty(), where, "no target modules (give names or \"all-linear\")");
}

// --- RNG -------------------------------------------------------------------------
static uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

LoraRng::LoraRng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t LoraRng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

float LoraRng::next_float() { return static_cast<float>(next_u64() >> 40) * 0x1.0p-24f; }

double LoraRng::next_double(double lo, double hi) {
  double u = static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
  return lo + (hi - lo) * u;
}

double kaiming_uniform_bound(int64_t fan_in, double a) {
  double gain = std::sqrt(2.0 / (1.0 + a * a));
  double std_ = gain / std::sqrt(static_cast<double>(fan_in));
  return std::sqrt(3.0) * std_;
}

// --- layer ------------------------------------------------------------------------
LoraLayer::LoraLayer(std::string path, int64_t in_, int64_t out_, const LoraConfig& cfg)
    : module_path(std::move(path)), in(in_), out(out_), r(cfg.r),
      scaling(static_cast<float>(cfg.scaling())), dropout(static_cast<float>(cfg.dropout)) {
  check(in > 0 && out > 0 && r > 0, module_path, "LoRA layer needs positive in, out and r");
  A.assign(static_cast<size_t>(r * in), 0.f);
  B.assign(static_cast<size_t>(out * r), 0.f);
  dA.assign(A.size(), 0.f);
  dB.assign(B.size(), 0.f);
}

void LoraLayer::init(uint64_t seed) {
  LoraRng rng(seed);
  const double bound = kaiming_uniform_bound(in, std::sqrt(5.0));
  // Values strictly inside (-bound, bound) after rounding to float: clamp the rare case
  // where rounding to float lands on the bound's float just outside it.
  const float fb = static_cast<float>(bound);
  for (auto& v : A) {
    float f = static_cast<float>(rng.next_double(-bound, bound));
    if (f > fb) f = fb;
    if (f < -fb) f = -fb;
    v = f;
  }
  std::fill(B.begin(), B.end(), 0.f);
  zero_grad();
}

void LoraLayer::zero_grad() {
  std::fill(dA.begin(), dA.end(), 0.f);
  std::fill(dB.begin(), dB.end(), 0.f);
}

// --- forward / backward -------------------------------------------------------------
void lora_forward(float* y, LoraCache* cache, const LoraLayer& L, const float* x, int64_t T, bool training,
                  LoraRng* rng) {
  const int64_t in = L.in, out = L.out, r = L.r;
  const bool drop = training && L.dropout > 0.f;
  std::vector<float> mask_local;
  std::vector<float>& mask = cache ? cache->mask : mask_local;
  mask.clear();
  if (drop) {
    check(rng != nullptr, L.module_path, "LoRA dropout in training needs a random generator");
    mask.resize(static_cast<size_t>(T * in));
    const float p = L.dropout, keep_scale = 1.f / (1.f - p);
    for (auto& m : mask) m = rng->next_float() < p ? 0.f : keep_scale;
  }
  std::vector<float> h_local;
  std::vector<float>& h = cache ? cache->h : h_local;
  h.assign(static_cast<size_t>(T * r), 0.f);
  const auto& K = kernels::active_linear_kernels();
  // xd (T, in) = dropout(x), materialized only when dropout is on.
  std::vector<float> xd;
  const float* xin = x;
  if (drop) {
    xd.resize(static_cast<size_t>(T * in));
    for (size_t k = 0; k < xd.size(); ++k) xd[k] = x[k] * mask[k];
    xin = xd.data();
  }
  // h (T, r) = xd Aᵀ;  tmp (T, out) = h Bᵀ;  y += tmp · scaling  (PEFT: B(A(x)) * scaling)
  std::vector<float> tmp(static_cast<size_t>(T * out));
  parallel_for_range(T, 2, [&](int64_t t0, int64_t t1) {
    K.gemm_rows(xin + t0 * in, in, t1 - t0, L.A.data(), in, r, in, h.data() + t0 * r, r);
    K.gemm_rows(h.data() + t0 * r, r, t1 - t0, L.B.data(), r, out, r, tmp.data() + t0 * out, out);
    for (int64_t k = t0 * out; k < t1 * out; ++k) y[k] += tmp[k] * L.scaling;
  });
}

void lora_backward(float* dx, LoraLayer& L, const float* dy, const float* x, const LoraCache& cache, int64_t T) {
  const int64_t in = L.in, out = L.out, r = L.r;
  const bool drop = !cache.mask.empty();
  check(static_cast<int64_t>(cache.h.size()) == T * r, L.module_path, "lora_backward: cache does not match T");
  const float s = L.scaling;
  // dh (T, r) = scaling · dy B
  std::vector<float> dh(static_cast<size_t>(T * r), 0.f);
  parallel_for_range(T, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* dyt = dy + t * out;
      float* dht = dh.data() + t * r;
      for (int64_t o = 0; o < out; ++o) {
        const float g = dyt[o] * s;
        const float* b = L.B.data() + o * r;
        for (int64_t j = 0; j < r; ++j) dht[j] += g * b[j];
      }
    }
  });
  // dB (out, r) += scaling · dyᵀ h
  parallel_for_range(out, 8, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      float* db = L.dB.data() + o * r;
      for (int64_t t = 0; t < T; ++t) {
        const float g = dy[t * out + o] * s;
        const float* ht = cache.h.data() + t * r;
        for (int64_t j = 0; j < r; ++j) db[j] += g * ht[j];
      }
    }
  });
  // dA (r, in) += dhᵀ dropout(x)
  parallel_for_range(r, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      float* da = L.dA.data() + j * in;
      for (int64_t t = 0; t < T; ++t) {
        const float g = dh[t * r + j];
        const float* xt = x + t * in;
        if (drop) {
          const float* mt = cache.mask.data() + t * in;
          for (int64_t i = 0; i < in; ++i) da[i] += g * (xt[i] * mt[i]);
        } else {
          for (int64_t i = 0; i < in; ++i) da[i] += g * xt[i];
        }
      }
    }
  });
  // dx (T, in) += mask ⊙ (dh A)
  if (dx) {
    parallel_for_range(T, 4, [&](int64_t t0, int64_t t1) {
      std::vector<float> acc(static_cast<size_t>(in));
      for (int64_t t = t0; t < t1; ++t) {
        std::fill(acc.begin(), acc.end(), 0.f);
        const float* dht = dh.data() + t * r;
        for (int64_t j = 0; j < r; ++j) {
          const float g = dht[j];
          const float* a = L.A.data() + j * in;
          for (int64_t i = 0; i < in; ++i) acc[i] += g * a[i];
        }
        float* dxt = dx + t * in;
        if (drop) {
          const float* mt = cache.mask.data() + t * in;
          for (int64_t i = 0; i < in; ++i) dxt[i] += acc[i] * mt[i];
        } else {
          for (int64_t i = 0; i < in; ++i) dxt[i] += acc[i];
        }
      }
    });
  }
}

}  // namespace qlora
