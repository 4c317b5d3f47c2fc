#pragma once
// Small AVX2 helpers shared by the AVX2 kernel files of model/linear_kernels (include only
// from files built with AVX2 + FMA + F16C; internal linkage, so no object hands another a
// shared copy: tests/check_isa_objects.sh).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>

namespace qlora::kernels {
namespace {

// A GGUF block's fp16 field at p (F16C widens fp16 exactly, subnormals included).
inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
inline __m256i load256(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
// Every byte v.
inline __m256i bytes(int v) { return _mm256_set1_epi8(static_cast<char>(v)); }

// Byte j of the result is 0xFF where bit j of `bits` is set, else 0 (Q5_0 / Q5_1's fifth bits).
inline __m256i bytes_from_bits(uint32_t bits) {
  const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  return _mm256_cmpeq_epi8(_mm256_and_si256(rep, sel), sel);
}
// Q5_0 / Q5_1's 32 five-bit codes: value j is nibble j (low nibbles of qs, then high) with bit j of qh.
inline __m256i q5_nibbles(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Whether x[0..n) (n a multiple of 8) holds no NaN and no infinity.
inline bool all_finite(const float* x, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 bad = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8)  // (not less than infinity, or unordered: NaN)
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask), inf, _CMP_NLT_UQ));
  return _mm256_movemask_ps(bad) == 0;
}

// q[0..32) = x[0..32) * scale rounded nearest-even (the default rounding mode, as the scalar
// kernels' nearbyint) and clamped to [-127, 127], in order.
inline void store_codes32(const float* x, __m256 scale, int8_t* q) {
  const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
  __m256i i[4];
  for (int k = 0; k < 4; ++k)
    i[k] = _mm256_max_epi32(nlim, _mm256_min_epi32(lim, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), scale))));
  // packs interleave the 128-bit lanes; the dword permutation puts the 32 bytes in order.
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

}  // namespace
}  // namespace qlora::kernels
