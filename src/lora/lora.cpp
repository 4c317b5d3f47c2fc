#include "lora/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "base/parallel.h"
#include "lora/dropout_mask.h"
#include "model/gemm.h"

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

// --- scratch -------------------------------------------------------------------------

void LoraScratchFloats::cover(int64_t T, int64_t in, int64_t out, int64_t r, bool dropout, bool backward) {
  x = std::max({x, dropout ? T * in : 0, backward ? T * r : 0});
  y = std::max({y, T * out, backward ? out * r : 0});
  if (backward && dropout) drop = std::max(drop, T * in);
  h = std::max(h, T * r);
}

LoraScratchFloats lora_scratch_floats(int64_t T, int64_t in, int64_t out, int64_t r, bool dropout, bool backward) {
  LoraScratchFloats f;
  f.cover(T, in, out, r, dropout, backward);
  return f;
}

LoraCacheFloats lora_cache_floats(int64_t T, int64_t in, int64_t r, bool dropout) {
  return {T * r, dropout ? T * in : 0};
}

LoraCacheStorage::LoraCacheStorage(int64_t T, int64_t in, int64_t r, bool dropout) {
  const LoraCacheFloats f = lora_cache_floats(T, in, r, dropout);
  h.resize(static_cast<size_t>(f.h));
  mask.resize(static_cast<size_t>(f.mask));
  cache.h = h.data();
  cache.mask = dropout ? mask.data() : nullptr;
}

LoraScratchStorage::LoraScratchStorage(const LoraScratchFloats& f)
    : x(static_cast<size_t>(f.x)), y(static_cast<size_t>(f.y)), drop(static_cast<size_t>(f.drop)),
      h(static_cast<size_t>(f.h)) {}

// --- forward / backward -------------------------------------------------------------

void lora_forward(float* y, LoraCache* cache, const LoraLayer& L, const float* x, int64_t T, bool training,
                  LoraRng* rng, const LoraScratch& scratch) {
  const int64_t in = L.in, out = L.out, r = L.r;
  const bool drop = training && L.dropout > 0.f;
  if (cache) cache->masked = drop;
  if (drop) {
    check(rng != nullptr, L.module_path, "LoRA dropout in training needs a random generator");
    check(cache != nullptr && cache->mask != nullptr, L.module_path,
          "LoRA dropout in training needs a cache with room for its mask");
    const float p = L.dropout, keep_scale = 1.f / (1.f - p);
    // One draw from the caller's generator seeds this call; each row (token) then has its
    // own generator seeded from (that draw, row), so rows fill in parallel and the masks
    // depend only on the generator state (the checkpoint recompute restores it and gets
    // the same masks). Two masks per 64-bit draw, 24 bits each (next_float()'s resolution).
    const uint64_t call_seed = rng->next_u64();
    float* mk = cache->mask;  // every element is drawn below (lora/dropout_mask.h)
    parallel_for_range(T, 4, [&](int64_t t0, int64_t t1) { fill_dropout_mask(mk, t0, t1, in, call_seed, p, keep_scale); });
  }
  // h (T, r), overwritten by the first product; kept in the cache when training.
  float* h = cache ? cache->h : scratch.h;
  // xd (T, in) = dropout(x), materialized only when dropout is on.
  const float* xin = x;
  if (drop) {
    float* xd = scratch.x;
    const float* mk = cache->mask;
    parallel_for_range(T * in, 32768, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) xd[k] = x[k] * mk[k];
    });
    xin = xd;
  }
  // h (T, r) = xd Aᵀ;  tmp (T, out) = h Bᵀ;  y += tmp · scaling  (PEFT: B(A(x)) * scaling).
  // Two GEMM calls (model/gemm.h, multi-threaded inside), not a loop over token ranges.
  float* tmp = scratch.y;
  sgemm_nt(T, r, in, xin, in, L.A.data(), in, h, r, /*accumulate=*/false);
  sgemm_nt(T, out, r, h, r, L.B.data(), r, tmp, out, /*accumulate=*/false);
  const float s = L.scaling;
  parallel_for_range(T * out, 32768, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) y[k] += tmp[k] * s;
  });
}

void lora_backward(float* dx, LoraLayer& L, const float* dy, const float* x, const LoraCache& cache, int64_t T,
                   const LoraScratch& scratch) {
  const int64_t in = L.in, out = L.out, r = L.r;
  const bool drop = cache.masked;
  check(cache.h != nullptr, L.module_path, "lora_backward: no cache from the forward");
  const float s = L.scaling;
  // Every product is one GEMM (model/gemm.h); the scaling is applied to the small (T, r) and
  // (out, r) results rather than to dy, which equals scaling · dy up to float rounding.
  // dh (T, r) = scaling · dy B
  float* dh = scratch.x;
  sgemm_nn(T, r, out, dy, out, L.B.data(), r, dh, r, /*accumulate=*/false);
  for (int64_t k = 0; k < T * r; ++k) dh[k] *= s;
  // dB (out, r) += scaling · dyᵀ h
  float* db = scratch.y;
  sgemm_tn(out, r, T, dy, out, cache.h, r, db, r, /*accumulate=*/false);
  for (int64_t k = 0; k < out * r; ++k) L.dB[static_cast<size_t>(k)] += db[k] * s;
  // dA (r, in) += dhᵀ dropout(x)
  float* xd = drop ? scratch.drop : nullptr;  // dropout(x), then reused as dh A
  const float* xin = x;
  if (drop) {
    const float* mk = cache.mask;
    for (int64_t k = 0; k < T * in; ++k) xd[k] = x[k] * mk[k];
    xin = xd;
  }
  sgemm_tn(r, in, T, dh, r, xin, in, L.dA.data(), in, /*accumulate=*/true);
  // dx (T, in) += mask ⊙ (dh A)
  if (dx) {
    if (!drop) {
      sgemm_nn(T, in, r, dh, r, L.A.data(), in, dx, in, /*accumulate=*/true);
    } else {
      sgemm_nn(T, in, r, dh, r, L.A.data(), in, xd, in, /*accumulate=*/false);
      parallel_for_range(T * in, 32768, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) dx[k] += xd[k] * cache.mask[k];
      });
    }
  }
}

}  // namespace qlora
