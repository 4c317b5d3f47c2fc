// The Adam loops of adam_kernels_impl.h compiled with AVX2 + FMA (this file's name gives it
// those flags): std::fma becomes vfmadd instead of a libm call. The fused 8-bit update is
// written out with intrinsics, 8 elements at a time, performing exactly the scalar
// kernel's IEEE operations per element (tests compare every level bit for bit).
// Only called when the CPU has AVX2 (adam_kernels.cpp checks).
#include <immintrin.h>

#include "optim/adam_kernels_impl.h"

namespace qlora::adam_kernels {
namespace {

// max over lanes of a vector holding no NaN.
inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// quantize_block of adam_kernels_impl.h for a full block (len a multiple of 8), given its
// absmax. `lut` must have 3 readable bytes past its 65536 entries (32-bit gathers).
inline void quantize_full_block(const float* x, int len, float am, const uint8_t* lut, uint8_t* q) {
  if (am == 0.0f) {
    for (int i = 0; i < len; ++i) q[i] = 0;
    return;
  }
  const __m256 inv = _mm256_set1_ps(1.0f / am), one = _mm256_set1_ps(1.0f), neg_one = _mm256_set1_ps(-1.0f);
  const __m256 half = _mm256_set1_ps(0.5f), k65535 = _mm256_set1_ps(65535.0f);
  const __m256i mask16 = _mm256_set1_epi32(0xffff), mask8 = _mm256_set1_epi32(0xff);
  alignas(32) int32_t codes[8];
  for (int i = 0; i < len; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
    v = _mm256_max_ps(neg_one, v);  // -1 > v ? -1 : v   (NaN stays)
    v = _mm256_min_ps(one, v);      // 1 < v ? 1 : v
    const __m256 t = _mm256_mul_ps(_mm256_add_ps(v, one), half);
    // cvttps gives INT32_MIN for NaN, like the scalar cvtt; then the uint16 cast.
    const __m256i idx = _mm256_and_si256(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(k65535, t), half)), mask16);
    const __m256i c = _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(lut), idx, 1), mask8);
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), c);
    for (int k = 0; k < 8; ++k) q[i + k] = static_cast<uint8_t>(codes[k]);
  }
}

void adam8bit_blocks_avx2(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1,
                          float* absmax2, const Adam8bitStepScalars& s, int64_t b0, int64_t b1) {
  const Adam8bitTables& tb = adam8bit_tables();
  const int64_t full_end = std::min(b1, n / kAdam8bitBlocksize);  // blocks [b0, full_end) are full
  const __m256 beta1 = _mm256_set1_ps(s.beta1), omb1 = _mm256_set1_ps(s.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(s.beta2), omb2 = _mm256_set1_ps(s.one_minus_beta2);
  const __m256 c2 = _mm256_set1_ps(s.correction2), eps = _mm256_set1_ps(s.eps);
  const __m256 step = _mm256_set1_ps(s.step_size), decay = _mm256_set1_ps(s.decay);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  alignas(32) float m[kAdam8bitBlocksize], v[kAdam8bitBlocksize];
  for (int64_t b = b0; b < full_end; ++b) {
    const int64_t i0 = b * kAdam8bitBlocksize;
    const __m256 am1 = _mm256_set1_ps(absmax1[b]), am2 = _mm256_set1_ps(absmax2[b]);
    __m256 mx1 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), mx2 = mx1;
    for (int j = 0; j < kAdam8bitBlocksize; j += 8) {
      const int64_t i = i0 + j;
      const __m128i c1 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q1 + i));
      const __m128i c2i = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q2 + i));
      const __m256 d1 = _mm256_i32gather_ps(tb.code1, _mm256_cvtepu8_epi32(c1), 4);
      const __m256 d2 = _mm256_i32gather_ps(tb.code2, _mm256_cvtepu8_epi32(c2i), 4);
      const __m256 gi = _mm256_loadu_ps(g + i);
      const __m256 mi = _mm256_fmadd_ps(gi, omb1, _mm256_mul_ps(_mm256_mul_ps(d1, am1), beta1));
      const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(omb2, gi), gi, _mm256_mul_ps(_mm256_mul_ps(d2, am2), beta2));
      const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), c2), eps);
      __m256 pi = _mm256_loadu_ps(p + i);
      if (s.do_decay) pi = _mm256_mul_ps(pi, decay);
      pi = _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(step, mi), denom));
      _mm256_storeu_ps(p + i, pi);
      _mm256_store_ps(m + j, mi);
      _mm256_store_ps(v + j, vi);
      // a > max ? a : max, so a NaN never wins (as in the scalar kernel).
      mx1 = _mm256_max_ps(_mm256_andnot_ps(sign, mi), mx1);
      mx2 = _mm256_max_ps(_mm256_andnot_ps(sign, vi), mx2);
    }
    float a1 = hmax(mx1), a2 = hmax(mx2);
    if (!(a1 > 0.0f)) a1 = 0.0f;
    if (!(a2 > 0.0f)) a2 = 0.0f;
    absmax1[b] = a1;
    absmax2[b] = a2;
    quantize_full_block(m, kAdam8bitBlocksize, a1, tb.lut1.data(), q1 + i0);
    quantize_full_block(v, kAdam8bitBlocksize, a2, tb.lut2.data(), q2 + i0);
  }
  // The partial last block, if it is ours.
  if (full_end < b1) adam8bit_blocks_impl(p, g, n, q1, q2, absmax1, absmax2, s, std::max(full_end, b0), b1);
}

}  // namespace

const AdamKernels& avx2_kernels() {
  static const AdamKernels k = {adam8bit_blocks_avx2, adam32bnb_impl, torch_adamw_impl};
  return k;
}

}  // namespace qlora::adam_kernels
