// LoRA dropout masks on AVX2: four rows' xoshiro256** generators in the four 64-bit lanes of
// a register (AVX2 has no 64-bit multiply, so * 5 and * 9 are shifts and adds), each step
// giving two mask elements for each of the four rows, bit for bit what the scalar
// generator gives.
#include <immintrin.h>

#include "lora/dropout_mask.h"
#include "lora/lora.h"

namespace qlora::kernels {
namespace {

inline __m256i rotl64(__m256i x, int k) { return _mm256_or_si256(_mm256_slli_epi64(x, k), _mm256_srli_epi64(x, 64 - k)); }

struct Xoshiro4 {
  __m256i s0, s1, s2, s3;
  __m256i next() {
    const __m256i x5 = _mm256_add_epi64(_mm256_slli_epi64(s1, 2), s1);  // s1 * 5
    const __m256i r = rotl64(x5, 7);
    const __m256i result = _mm256_add_epi64(_mm256_slli_epi64(r, 3), r);  // * 9
    const __m256i t = _mm256_slli_epi64(s1, 17);
    s2 = _mm256_xor_si256(s2, s0);
    s3 = _mm256_xor_si256(s3, s1);
    s1 = _mm256_xor_si256(s1, s2);
    s0 = _mm256_xor_si256(s0, s3);
    s2 = _mm256_xor_si256(s2, t);
    s3 = rotl64(s3, 45);
    return result;
  }
};

}  // namespace

void fill_dropout_mask_avx2(float* mask, int64_t t0, int64_t t1, int64_t in, uint64_t call_seed, float p,
                            float keep_scale) {
  int64_t t = t0;
  const __m256 vp = _mm256_set1_ps(p), keep = _mm256_set1_ps(keep_scale), unit = _mm256_set1_ps(0x1.0p-24f);
  const __m256i low24 = _mm256_set1_epi64x(0xFFFFFF);
  for (; t + 4 <= t1; t += 4) {
    // The four rows' seeded states (LoraRng's constructor), lane k = row t + k.
    alignas(32) uint64_t st[4][4];
    for (int k = 0; k < 4; ++k) {
      const auto s = LoraRng(dropout_row_seed(call_seed, t + k)).state();
      for (int w = 0; w < 4; ++w) st[w][k] = s[static_cast<size_t>(w)];
    }
    Xoshiro4 g{_mm256_load_si256(reinterpret_cast<const __m256i*>(st[0])),
               _mm256_load_si256(reinterpret_cast<const __m256i*>(st[1])),
               _mm256_load_si256(reinterpret_cast<const __m256i*>(st[2])),
               _mm256_load_si256(reinterpret_cast<const __m256i*>(st[3]))};
    float* m0 = mask + t * in;
    float* m1 = m0 + in;
    float* m2 = m1 + in;
    float* m3 = m2 + in;
    int64_t i = 0;
    for (; i + 2 <= in; i += 2) {
      const __m256i r = g.next();
      // Per lane: dword 0 = bits 8..31 (element i), dword 1 = bits 40..63 (element i + 1).
      const __m256i u = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi64(r, 8), low24),
                                        _mm256_slli_epi64(_mm256_srli_epi64(r, 40), 32));
      const __m256 uf = _mm256_mul_ps(_mm256_cvtepi32_ps(u), unit);
      const __m256 v = _mm256_blendv_ps(keep, _mm256_setzero_ps(), _mm256_cmp_ps(uf, vp, _CMP_LT_OQ));
      const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
      _mm_storel_pi(reinterpret_cast<__m64*>(m0 + i), lo);
      _mm_storeh_pi(reinterpret_cast<__m64*>(m1 + i), lo);
      _mm_storel_pi(reinterpret_cast<__m64*>(m2 + i), hi);
      _mm_storeh_pi(reinterpret_cast<__m64*>(m3 + i), hi);
    }
    if (i < in) {  // an odd last element: the top 24 bits of one more draw (next_float)
      alignas(32) uint64_t r[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(r), g.next());
      float* rows[4] = {m0, m1, m2, m3};
      for (int k = 0; k < 4; ++k)
        rows[k][i] = static_cast<float>(r[k] >> 40) * 0x1.0p-24f < p ? 0.f : keep_scale;
    }
  }
  if (t < t1) fill_dropout_mask_scalar(mask, t, t1, in, call_seed, p, keep_scale);
}

}  // namespace qlora::kernels
