#pragma once
// Internal: the loop bodies behind adam_kernels.h, included by adam_kernels.cpp and
// adam_kernels_avx2.cpp only, each compiling them with its own instruction set. Everything
// here has internal linkage so that the two compilations never meet at link time.
// The arithmetic is specified in optim/adamw8bit.h (bitsandbytes) and optim/adamw.h (torch).
#include <algorithm>
#include <cmath>
#include <limits>

#include "optim/adam_kernels.h"

namespace qlora::adam_kernels {
namespace {

// cvttss2si: out of range and NaN give INT32_MIN, as in quantize_8bit_blockwise_ref.
inline int32_t cvtt_f32_i32(float f) {
  if (!(f > -2147483904.0f && f < 2147483648.0f)) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(f);
}

// One block of quantize_8bit_blockwise_ref (libbitsandbytes_cpu), returning its absmax.
inline float quantize_block(const float* x, int len, const uint8_t* lut, uint8_t* q) {
  float am = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < len; ++i) {
    const float a = std::fabs(x[i]);
    am = a > am ? a : am;  // a NaN never wins
  }
  if (!(am > 0.0f)) am = 0.0f;
  if (am == 0.0f) {
    for (int i = 0; i < len; ++i) q[i] = 0;
    return 0.0f;
  }
  const float inv = 1.0f / am;
  for (int i = 0; i < len; ++i) {
    float v = x[i] * inv;
    v = -1.0f > v ? -1.0f : v;
    v = v > 1.0f ? 1.0f : v;
    const float t = (v + 1.0f) * 0.5f;
    // The reference fuses 65535·t + 0.5; for t in [0, 1] (and NaN) the truncated result is
    // the same separately rounded (quant/blockwise_ref.cpp checked every float).
    q[i] = lut[static_cast<uint16_t>(cvtt_f32_i32(65535.0f * t + 0.5f))];
  }
  return am;
}

void adam8bit_blocks_impl(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1,
                          float* absmax2, const Adam8bitStepScalars& s, int64_t b0, int64_t b1) {
  const Adam8bitTables& tb = adam8bit_tables();
  const float* code1 = tb.code1;
  const float* code2 = tb.code2;
  alignas(64) float m[kAdam8bitBlocksize], v[kAdam8bitBlocksize];
  const float beta1 = s.beta1, omb1 = s.one_minus_beta1, beta2 = s.beta2, omb2 = s.one_minus_beta2;
  const float c2 = s.correction2, eps = s.eps, step = s.step_size, decay = s.decay;
  const bool do_decay = s.do_decay;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i0 = b * kAdam8bitBlocksize;
    const int len = static_cast<int>(std::min<int64_t>(kAdam8bitBlocksize, n - i0));
    const float am1 = absmax1[b], am2 = absmax2[b];
    float* pb = p + i0;
    const float* gb = g + i0;
    const uint8_t* c1 = q1 + i0;
    const uint8_t* c2s = q2 + i0;
    for (int j = 0; j < len; ++j) {
      const float gi = gb[j];
      const float mi = std::fma(gi, omb1, (code1[c1[j]] * am1) * beta1);
      const float vi = std::fma(omb2 * gi, gi, (code2[c2s[j]] * am2) * beta2);
      const float denom = std::sqrt(vi) / c2 + eps;
      float pi = pb[j];
      if (do_decay) pi = pi * decay;
      pb[j] = pi + step * mi / denom;
      m[j] = mi;
      v[j] = vi;
    }
    absmax1[b] = quantize_block(m, len, tb.lut1.data(), q1 + i0);
    absmax2[b] = quantize_block(v, len, tb.lut2.data(), q2 + i0);
  }
}

void adam32bnb_impl(float* p, const float* g, int64_t n, float* m, float* v, const Adam8bitStepScalars& s) {
  const float beta1 = s.beta1, omb1 = s.one_minus_beta1, beta2 = s.beta2, omb2 = s.one_minus_beta2;
  const float eps32 = s.eps32, step32 = s.step_size32, decay = s.decay;
  const bool do_decay = s.do_decay;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = std::fma(gi, omb1, m[i] * beta1);
    const float vi = std::fma(omb2 * gi, gi, v[i] * beta2);
    float pi = p[i];
    if (do_decay) pi = pi * decay;
    p[i] = std::fma(mi / (std::sqrt(vi) + eps32), step32, pi);  // add_(update, alpha=step_size)
    m[i] = mi;
    v[i] = vi;
  }
}

void torch_adamw_impl(float* p, const float* g, float* m, float* v, int64_t n, const TorchAdamWScalars& s) {
  const float w1 = s.w1, w1m1 = s.w1 - 1.f, b2 = s.b2, omb2 = s.one_minus_b2, decay = s.decay;
  const float nss = s.neg_step_size, bc2 = s.bc2_sqrt, eps = s.eps;
  const bool do_decay = s.do_decay, w1_small = s.w1_small;
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    if (do_decay) pi = pi * decay;
    const float gi = g[i];
    // torch's vectorized lerp: fmadd(weight, end - start, start) for weight < 0.5.
    const float diff = gi - m[i];
    const float mi = w1_small ? std::fma(w1, diff, m[i]) : std::fma(w1m1, diff, gi);
    // addcmul, contracted to fma(value * t1, t2, self) in torch's CPU kernels.
    const float vi = std::fma(omb2 * gi, gi, v[i] * b2);
    const float denom = std::sqrt(vi) / bc2 + eps;
    p[i] = pi + nss * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace
}  // namespace qlora::adam_kernels
