#include "lora/lora.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

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
  if (!target_regex.empty()) {
    // (compiled per call: asked once per module when an adapter is built)
    const std::regex re(target_regex, std::regex::ECMAScript);
    return std::regex_match(module_path.begin(), module_path.end(), re);
  }
  for (const auto& t : target_modules)
    if (lora_module_matches(module_path, t)) return true;
  return false;
}

bool LoraConfig::targets_parameter(std::string_view param_path) const {
  for (const auto& t : target_parameters)
    if (lora_module_matches(param_path, t)) return true;
  return false;
}

void LoraConfig::validate(std::string_view where) const {
  check(r >= 1, where, "LoRA rank r must be >= 1, got " + std::to_string(r));
  check(std::isfinite(alpha), where, "lora_alpha must be a finite number");
  check(dropout >= 0.0 && dropout < 1.0, where, "lora_dropout must be in [0, 1), got " + std::to_string(dropout));
  if (!target_regex.empty()) {
    try {
      const std::regex re(target_regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      fail(where, "target_modules '" + target_regex + "' is not a regular expression qlora can read (" + e.what() +
                      "; Python-only syntax such as (?P<name>...) or inline flags is not supported)");
    }
  }
  check(all_linear || !target_modules.empty() || !target_regex.empty() || !target_parameters.empty(), where,
        "no target modules (give names or \"all-linear\")");
  check(target_parameters.empty() || dropout == 0.0, where,
        "LoRA on parameters (target_parameters: a mixture-of-experts model's experts and router) cannot use "
        "dropout, as in PEFT (lora.ParamWrapper): set lora_dropout to 0 (--lora-dropout 0)");
  check(gate_up_r >= 0 && std::isfinite(gate_up_alpha), where, "the gate_up_proj rank / alpha pattern is invalid");
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

void LoraLayer::init_peft_swapped(uint64_t seed) {
  // PEFT's A of the swapped form is (r, out): drawn in that order, then stored as our B (out, r).
  LoraRng rng(seed);
  const double bound = kaiming_uniform_bound(out, std::sqrt(5.0));
  const float fb = static_cast<float>(bound);
  for (int64_t k = 0; k < r; ++k)
    for (int64_t o = 0; o < out; ++o) {
      float f = static_cast<float>(rng.next_double(-bound, bound));
      if (f > fb) f = fb;
      if (f < -fb) f = -fb;
      B[static_cast<size_t>(o * r + k)] = f;
    }
  std::fill(A.begin(), A.end(), 0.f);
  peft_swapped = true;
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
  return {T * r, dropout ? T * in : 0, dropout ? T * lora_mask_words(in) : 0};
}

LoraCacheStorage::LoraCacheStorage(int64_t T, int64_t in, int64_t r, bool dropout, bool packed) {
  const LoraCacheFloats f = lora_cache_floats(T, in, r, dropout);
  h.resize(static_cast<size_t>(f.h));
  cache.h = h.data();
  if (dropout && packed) {
    mask_bits.resize(static_cast<size_t>(f.mask_words));
    cache.mask_bits = mask_bits.data();
  } else if (dropout) {
    mask.resize(static_cast<size_t>(f.mask));
    cache.mask = mask.data();
  }
}

LoraScratchStorage::LoraScratchStorage(const LoraScratchFloats& f)
    : x(static_cast<size_t>(f.x)), y(static_cast<size_t>(f.y)), drop(static_cast<size_t>(f.drop)),
      h(static_cast<size_t>(f.h)) {}

// --- forward / backward -------------------------------------------------------------

namespace {
// Threads for a LoRA product over T tokens of width `in`: one for a few kilobytes of work
// (decode), else all of them.
int lora_threads(int64_t T, int64_t in) {
  return static_cast<int>(std::clamp<int64_t>(T * in / 16384, 1, max_threads()));
}
// This thread's share [b, e) of n items, out of the region's threads.
void share(int64_t n, int64_t& b, int64_t& e) {
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
  b = n * t / nt;
  e = n * (t + 1) / nt;
}
}  // namespace

// Each call is ONE parallel region: the threads split the tokens (the forward, dh and dx) or
// the outputs (dA's input columns, dB's rows), and every GEMM runs on its thread's share
// (model/gemm.h: single-threaded inside a region). A region per product and per elementwise
// pass cost ~10 passive-wait wake-ups per LoRA layer (bench/bench_lora, Llama 1.1B's shapes
// with dropout: q_proj's forward + backward 1.82 -> 1.27 ms, a block's seven 16.0 -> 11.6 ms;
// bench/RESULTS.md session 13).
void lora_forward(float* y, LoraCache* cache, const LoraLayer& L, const float* x, int64_t T, bool training,
                  LoraRng* rng, const LoraScratch& scratch) {
  const int64_t in = L.in, out = L.out, r = L.r;
  const bool drop = training && L.dropout > 0.f;
  if (cache) cache->masked = drop;
  uint64_t call_seed = 0;
  if (drop) {
    check(rng != nullptr, L.module_path, "LoRA dropout in training needs a random generator");
    check(cache != nullptr && (cache->mask != nullptr || cache->mask_bits != nullptr), L.module_path,
          "LoRA dropout in training needs a cache with room for its mask");
    // One draw from the caller's generator seeds this call; each row (token) then has its
    // own generator seeded from (that draw, row), so rows fill in parallel and the masks
    // depend only on the generator state (the checkpoint recompute restores it and gets
    // the same masks). Two masks per 64-bit draw, 24 bits each (next_float()'s resolution).
    call_seed = rng->next_u64();
  }
  const float p = L.dropout, keep_scale = 1.f / (1.f - p);
  // h (T, r), overwritten by the first product; kept in the cache when training.
  float* h = cache ? cache->h : scratch.h;
  uint32_t* bits = drop ? cache->mask_bits : nullptr;      // every element is drawn below
  float* mk = drop && !bits ? cache->mask : nullptr;       // (lora/dropout_mask.h)
  float* xd = scratch.x;  // dropout(x) (T, in), only when dropout is on
  const int64_t words = lora_mask_words(in);
  float* tmp = scratch.y;
  const float s = L.scaling;
#pragma omp parallel num_threads(lora_threads(T, in))
  {
    int64_t t0, t1;
    share(T, t0, t1);
    if (t0 < t1) {
      const float* xin = x;
      if (drop && bits) {  // the multipliers drawn into xd's rows, kept as bits, then applied
        fill_dropout_mask(xd, t0, t1, in, call_seed, p, keep_scale);
        for (int64_t t = t0; t < t1; ++t) {
          float* row = xd + t * in;
          const float* xr = x + t * in;
          uint32_t* w = bits + t * words;
          for (int64_t j = 0; j < words; ++j) w[j] = 0;
          for (int64_t i = 0; i < in; ++i) {
            w[i / 32] |= static_cast<uint32_t>(row[i] != 0.0f) << (i % 32);
            row[i] = xr[i] * row[i];
          }
        }
        xin = xd;
      } else if (drop) {
        fill_dropout_mask(mk, t0, t1, in, call_seed, p, keep_scale);
        for (int64_t k = t0 * in; k < t1 * in; ++k) xd[k] = x[k] * mk[k];
        xin = xd;
      }
      // h = xd Aᵀ;  tmp = h Bᵀ;  y += tmp · scaling  (PEFT: B(A(x)) * scaling), these rows.
      sgemm_nt(t1 - t0, r, in, xin + t0 * in, in, L.A.data(), in, h + t0 * r, r, /*accumulate=*/false);
      sgemm_nt(t1 - t0, out, r, h + t0 * r, r, L.B.data(), r, tmp + t0 * out, out, /*accumulate=*/false);
      for (int64_t k = t0 * out; k < t1 * out; ++k) y[k] += tmp[k] * s;
    }
  }
}

void lora_backward(float* dx, LoraLayer& L, const float* dy, const float* x, const LoraCache& cache, int64_t T,
                   const LoraScratch& scratch) {
  const int64_t in = L.in, out = L.out, r = L.r;
  const bool drop = cache.masked;
  check(cache.h != nullptr, L.module_path, "lora_backward: no cache from the forward");
  const float s = L.scaling;
  // The scaling is applied to the small (T, r) and (out, r) results rather than to dy, which
  // equals scaling · dy up to float rounding.
  float* dh = scratch.x;                     // (T, r)
  float* db = scratch.y;                     // (out, r)
  float* xd = drop ? scratch.drop : nullptr;  // dropout(x), then dh A
  const float* xin = drop ? xd : x;
  const float* mk = cache.mask;
  const uint32_t* bits = cache.mask_bits;  // (when set: the multipliers, a bit each)
  check(!drop || mk || bits, L.module_path, "lora_backward: the forward's dropout mask is missing");
  const float keep_scale = 1.f / (1.f - L.dropout);  // (as lora_forward draws it)
  const int64_t words = lora_mask_words(in);
  // y[k] (+)= v[k] * multiplier(k) over rows [t0, t1), v and y (T, in).
  auto apply_mask = [&](float* y, const float* v, int64_t t0, int64_t t1, bool add) {
    if (bits) {
      for (int64_t t = t0; t < t1; ++t) {
        const uint32_t* w = bits + t * words;
        for (int64_t i = 0; i < in; ++i) {
          const float m = (w[i / 32] >> (i % 32)) & 1u ? keep_scale : 0.0f;
          const int64_t k = t * in + i;
          y[k] = add ? y[k] + v[k] * m : v[k] * m;
        }
      }
    } else {
      for (int64_t k = t0 * in; k < t1 * in; ++k) y[k] = add ? y[k] + v[k] * mk[k] : v[k] * mk[k];
    }
  };
#pragma omp parallel num_threads(lora_threads(T, std::max(in, out)))
  {
    int64_t t0, t1;
    share(T, t0, t1);
    // dh = scaling · dy B and dropout(x), these tokens.
    if (t0 < t1) {
      sgemm_nn(t1 - t0, r, out, dy + t0 * out, out, L.B.data(), r, dh + t0 * r, r, /*accumulate=*/false);
      for (int64_t k = t0 * r; k < t1 * r; ++k) dh[k] *= s;
      if (drop) apply_mask(xd, x, t0, t1, /*add=*/false);
    }
#pragma omp barrier
    // dB (out, r) += scaling · dyᵀ h, these output rows; dA (r, in) += dhᵀ dropout(x), these
    // input columns (sums over all tokens: each element by one thread).
    int64_t o0, o1, c0, c1;
    share(out, o0, o1);
    share(in, c0, c1);
    if (o0 < o1) {
      sgemm_tn(o1 - o0, r, T, dy + o0, out, cache.h, r, db + o0 * r, r, /*accumulate=*/false);
      for (int64_t k = o0 * r; k < o1 * r; ++k) L.dB[static_cast<size_t>(k)] += db[k] * s;
    }
    if (c0 < c1) sgemm_tn(r, c1 - c0, T, dh, r, xin + c0, in, L.dA.data() + c0, in, /*accumulate=*/true);
#pragma omp barrier
    // dx (T, in) += mask ⊙ (dh A), these tokens (dropout(x) is no longer needed: its rows
    // take dh A).
    if (dx && t0 < t1) {
      if (!drop) {
        sgemm_nn(t1 - t0, in, r, dh + t0 * r, r, L.A.data(), in, dx + t0 * in, in, /*accumulate=*/true);
      } else {
        sgemm_nn(t1 - t0, in, r, dh + t0 * r, r, L.A.data(), in, xd + t0 * in, in, /*accumulate=*/false);
        apply_mask(dx, xd, t0, t1, /*add=*/true);
      }
    }
  }
}

}  // namespace qlora
