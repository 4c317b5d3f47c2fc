#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "base/error.h"

namespace qlora {

void validate(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    fail("--temperature", "must be a finite number >= 0, got " + std::to_string(p.temperature));
  if (p.top_k < 0) fail("--top-k", "must be >= 0, got " + std::to_string(p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("--top-p", "must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    fail("--repetition-penalty", "must be a finite number > 0, got " + std::to_string(p.repetition_penalty));
}

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
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

float Rng::uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }

void apply_repetition_penalty(std::span<float> logits, std::span<const int> context, float penalty) {
  if (penalty == 1.0f) return;
  std::vector<uint8_t> seen(logits.size(), 0);
  for (int t : context) {
    if (t < 0 || static_cast<size_t>(t) >= logits.size() || seen[t]) continue;
    seen[t] = 1;
    float& l = logits[t];
    l = l < 0.0f ? l * penalty : l / penalty;
  }
}

int argmax(std::span<const float> logits) {
  // The first index of the largest value, NaN never winning (a NaN at 0 wins: nothing
  // compares greater). Two passes (the maximum, then its first index), each a simple loop
  // the compiler vectorizes: it runs once per decoded token over the whole vocabulary.
  if (logits.empty() || std::isnan(logits[0])) return 0;
  float m = logits[0];
  for (const float v : logits) m = v > m ? v : m;
  for (size_t i = 0; i < logits.size(); ++i)
    if (logits[i] == m) return static_cast<int>(i);
  return 0;
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { validate(p); }

int Sampler::sample(std::span<float> logits, std::span<const int> context) {
  apply_repetition_penalty(logits, context, p_.repetition_penalty);
  if (p_.temperature == 0.0f) return argmax(logits);

  const int V = static_cast<int>(logits.size());
  // Candidates, best first (ties: lower id first).
  idx_.resize(V);
  std::iota(idx_.begin(), idx_.end(), 0);
  auto better = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int n = V;
  if (p_.top_k > 0 && p_.top_k < V) {
    std::partial_sort(idx_.begin(), idx_.begin() + p_.top_k, idx_.end(), better);
    // Like transformers, keep every token whose logit equals the k-th largest.
    const float kth = logits[idx_[p_.top_k - 1]];
    n = p_.top_k;
    for (int i = p_.top_k; i < V; ++i)
      if (logits[idx_[i]] == kth) idx_[n++] = idx_[i];
  }
  // Softmax of logits / temperature over the candidates.
  const float inv_t = 1.0f / p_.temperature;
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, logits[idx_[i]] * inv_t);
  probs_.resize(V);
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float e = std::exp(logits[idx_[i]] * inv_t - mx);
    probs_[idx_[i]] = e;
    sum += e;
  }
  for (int i = 0; i < n; ++i) probs_[idx_[i]] /= sum;

  if (p_.top_p < 1.0f) {
    // Only tokens above (1 - p) / (n - 1) can be in the nucleus; sort just those.
    const float cutoff = n > 1 ? (1.0f - p_.top_p) / static_cast<float>(n - 1) : 0.0f;
    int m = 0;
    for (int i = 0; i < n; ++i)
      if (probs_[idx_[i]] >= cutoff) idx_[m++] = idx_[i];
    if (m == 0) m = n;  // cannot happen, but keep a candidate
    std::sort(idx_.begin(), idx_.begin() + m,
              [&](int a, int b) { return probs_[a] > probs_[b] || (probs_[a] == probs_[b] && a < b); });
    float cum = 0.0f;
    int keep = m;
    for (int i = 0; i < m; ++i) {
      cum += probs_[idx_[i]];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  float total = 0.0f;
  for (int i = 0; i < n; ++i) total += probs_[idx_[i]];
  const float r = rng_.uniform() * total;
  float cdf = 0.0f;
  for (int i = 0; i < n; ++i) {
    cdf += probs_[idx_[i]];
    if (r < cdf) return idx_[i];
  }
  return idx_[n - 1];
}

}  // namespace qlora
