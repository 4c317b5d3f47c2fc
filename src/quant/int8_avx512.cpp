// AVX-512 int8 GEMMs for LLM.int8 (see int8.h and int8_avx2.cpp), both exact (int32
// accumulation), equal to the scalar definition bit for bit:
//  * F + BW: codes widened to int16, vpmaddwd, 32 codes per step;
//  * VNNI (when the CPU has it): vpdpbusd multiplies 64 unsigned x signed bytes and sums them
//    in groups of four into int32 in one instruction. It needs an unsigned operand, so the
//    activation codes are offset by 128 (a ^ 0x80 = a + 128 in [1, 255]) and the surplus
//    128 * sum_k w[n, k] is subtracted; that row sum comes from one more vpdpbusd with a
//    vector of ones, so nothing about the weight has to be precomputed.
// The VNNI instructions are enabled for this file only through the target pragma; the kernel
// is handed out only after a run-time check of the CPU.
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#include <immintrin.h>

#include "quant/int8.h"
#include "quant/int8_kernels_inl.h"

namespace qlora {

namespace {

struct Avx512 {
  using Acc = __m512i;
  static constexpr int kLanes = 32;
  static Acc zero() { return _mm512_setzero_si512(); }
  static __m512i widen(const int8_t* p) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Acc madd(Acc acc, __m512i a, __m512i b) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
  static int32_t hsum(Acc v) { return _mm512_reduce_add_epi32(v); }
};

void gemm_i8_avx512(const int8_t* a, int64_t lda, int64_t T, const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                    int32_t* acc, int64_t ldacc) {
  detail::gemm_i8_tiled<Avx512>(a, lda, T, w, ldw, N, K, acc, ldacc);
}

// {sum(v0), sum(v1), sum(v2), sum(v3)} of four int32 vectors.
inline __m128i reduce4(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
  // Within each 128-bit lane: pair sums of v0/v1 and v2/v3 interleaved, then the four sums.
  const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
  const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
  // Then across the four lanes.
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// R rows x TT tokens with VNNI; K in steps of 64, the tail with masked loads (masked-off
// weight bytes are 0, so the a-lanes there, 0 ^ 0x80 = 128, contribute nothing).
template <int R, int TT>
inline void vnni_tile(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t K, int32_t* acc,
                      int64_t ldacc) {
  __m512i s[R][TT], rs[R];
  for (int r = 0; r < R; ++r) {
    rs[r] = _mm512_setzero_si512();
    for (int t = 0; t < TT; ++t) s[r][t] = _mm512_setzero_si512();
  }
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 m = K - k >= 64 ? ~__mmask64{0} : (__mmask64{1} << (K - k)) - 1;
    __m512i av[TT];
    for (int t = 0; t < TT; ++t) av[t] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, a + t * lda + k), bias);
    for (int r = 0; r < R; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi8(m, w + r * ldw + k);
      rs[r] = _mm512_dpbusd_epi32(rs[r], ones, wv);
      for (int t = 0; t < TT; ++t) s[r][t] = _mm512_dpbusd_epi32(s[r][t], av[t], wv);
    }
  }
  if constexpr (R == 4) {
    // Four rows' sums at once (a transposing reduction, ~13 instructions instead of ~32);
    // they land next to each other in acc.
    const __m128i corr = _mm_slli_epi32(reduce4(rs[0], rs[1], rs[2], rs[3]), 7);  // 128 * row sums
    for (int t = 0; t < TT; ++t)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(acc + t * ldacc),
                       _mm_sub_epi32(reduce4(s[0][t], s[1][t], s[2][t], s[3][t]), corr));
  } else {
    for (int r = 0; r < R; ++r) {
      const int32_t rowsum = _mm512_reduce_add_epi32(rs[r]);
      for (int t = 0; t < TT; ++t) acc[t * ldacc + r] = _mm512_reduce_add_epi32(s[r][t]) - 128 * rowsum;
    }
  }
}

template <int TT>
inline void vnni_rows(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t N, int64_t K, int32_t* acc,
                      int64_t ldacc) {
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) vnni_tile<4, TT>(a, lda, w + n * ldw, ldw, K, acc + n, ldacc);
  for (; n < N; ++n) vnni_tile<1, TT>(a, lda, w + n * ldw, ldw, K, acc + n, ldacc);
}

void gemm_i8_avx512_vnni(const int8_t* a, int64_t lda, int64_t T, const int8_t* w, int64_t ldw, int64_t N,
                         int64_t K, int32_t* acc, int64_t ldacc) {
  // Panels of 32 weight rows against every token (see int8_kernels_inl.h), tiles of 4 rows x
  // 4 tokens (16 accumulators + 4 row sums + 4 activations in the 32 zmm registers).
  constexpr int64_t kPanel = 32;
  for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
    const int64_t nn = N - n0 < kPanel ? N - n0 : kPanel;
    const int8_t* wp = w + n0 * ldw;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) vnni_rows<4>(a + t * lda, lda, wp, ldw, nn, K, acc + t * ldacc + n0, ldacc);
    for (; t < T; ++t) vnni_rows<1>(a + t * lda, lda, wp, ldw, nn, K, acc + t * ldacc + n0, ldacc);
  }
}

void round_fp16_avx512(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)));
  }
}

void quantize_row_avx512(const float* v, int64_t n, float scale, int8_t* out) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, v + i), s));
    _mm512_mask_cvtsepi32_storeu_epi8(out + i, m, q);
  }
}

}  // namespace

const Int8Kernels& avx512_int8_kernels() {
  static const Int8Kernels k{gemm_i8_avx512, round_fp16_avx512, quantize_row_avx512};
  return k;
}

const Int8Kernels& avx512vnni_int8_kernels() {
  static const Int8Kernels k{gemm_i8_avx512_vnni, round_fp16_avx512, quantize_row_avx512};
  return k;
}

}  // namespace qlora

#pragma GCC pop_options
