// AVX2 int8 GEMM for LLM.int8 (see int8.h): int8 codes widened to int16 and multiplied
// pairwise into int32 (vpmaddwd). Every product and pair sum fits int32 exactly, so the
// result equals the scalar definition bit for bit.
#include <immintrin.h>

#include <cmath>

#include "quant/int8.h"
#include "quant/int8_kernels_inl.h"

namespace qlora {

namespace {

struct Avx2 {
  using Acc = __m256i;
  static constexpr int kLanes = 16;  // int8 values per step
  static Acc zero() { return _mm256_setzero_si256(); }
  static __m256i widen(const int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Acc madd(Acc acc, __m256i a, __m256i b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
  static int32_t hsum(Acc v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
  }
};

void gemm_i8_avx2(const int8_t* a, int64_t lda, int64_t T, const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                  int32_t* acc, int64_t ldacc) {
  detail::gemm_i8_tiled<Avx2>(a, lda, T, w, ldw, N, K, acc, ldacc);
}

// F16C: vcvtps2ph with round-to-nearest-even is IEEE's conversion (subnormals, overflow to inf).
void round_fp16_avx2(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
  for (; i < n; ++i) out[i] = round_to_fp16(x[i]);
}

// vcvtps2dq rounds by MXCSR (nearest even unless a caller changed it, as nearbyint assumes too).
void quantize_row_avx2(const float* v, int64_t n, float scale, int8_t* out) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + i), s));
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packs_epi16(w16, w16));
  }
  for (; i < n; ++i) out[i] = static_cast<int8_t>(std::nearbyint(v[i] * scale));
}

}  // namespace

const Int8Kernels& avx2_int8_kernels() {
  static const Int8Kernels k{gemm_i8_avx2, round_fp16_avx2, quantize_row_avx2};
  return k;
}

}  // namespace qlora
