// AVX2 kernels for a GGUF's Q4_K / IQ4_XS weights on llama.cpp's Q8_K activations
// (linear_kernels.h: quantize_x_q8k, gemv_q8k_i8; the scalar definitions are in
// linear_kernels.cpp). Integer dot products per 32 values, the 6-bit scales multiplied in as
// int16, one float step per 256 values.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "model/linear_kernels.h"
#include "model/linear_kernels_avx2_inl.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {
namespace {

// ---- K-quant super-blocks on Q8_K activations (llama.cpp's product for Q4_K / IQ4_XS) ----

void quantize_x_q8k_avx2(const float* x, int64_t n, int8_t* q, float* d) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t b = 0; b < n / kQ8KBlock; ++b) {
    const float* xb = x + b * kQ8KBlock;
    int8_t* qb = q + b * kQ8KBlock;
    __m256 m = _mm256_setzero_ps();
    for (int64_t i = 0; i < kQ8KBlock; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xb + i), abs_mask));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    float db = 0.0f;
    if (!all_finite(xb, kQ8KBlock) || (amax != 0.0f && !std::isfinite(127.0f / amax))) {
      // NaN / inf, or a largest magnitude so small that 127 / it overflows: the scalar rules
      scalar_linear_kernels().quantize_x_q8k(xb, kQ8KBlock, qb, d + b * (kQ8KBlock / kQ8Block));
      continue;
    }
    if (amax == 0.0f) {
      std::memset(qb, 0, kQ8KBlock);
    } else {
      // The first value of that magnitude, sign included (llama.cpp's `max`).
      const __m256 va = _mm256_set1_ps(amax);
      int64_t first = 0;
      for (int64_t i = 0; i < kQ8KBlock; i += 8) {
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(xb + i), abs_mask), va,
                                                          _CMP_EQ_OQ));
        if (mask) {
          first = i + __builtin_ctz(static_cast<unsigned>(mask));
          break;
        }
      }
      const float iscale = -127.0f / xb[first];
      const __m256 vis = _mm256_set1_ps(iscale);
      for (int64_t c = 0; c < kQ8KBlock; c += 32) store_codes32(xb + c, vis, qb + c);
      db = 1.0f / iscale;
    }
    for (int64_t j = 0; j < kQ8KBlock / kQ8Block; ++j) d[b * (kQ8KBlock / kQ8Block) + j] = db;
  }
}

// The activations of a q8k_form GEMV in the order its weight bytes give the codes: per pair of
// 32-value blocks (2p, 2p + 1), 64 bytes: [odd elements of 2p | odd of 2p + 1] (what the low
// nibbles of the pair's 32 bytes hold, lane by lane), then the even elements likewise (the high
// nibbles). And each block's sum of codes (int16; |sum| <= 32 * 127) for the minimums.
struct Q8KPermuted {
  const int8_t* x;      // token t's at x + t * cols
  const int16_t* bsum;  // token t's at bsum + t * (cols / 32)
};
Q8KPermuted permute_xq_q8k(const int8_t* xq, int64_t cols, int64_t T, bool sums) {
  thread_local std::vector<int8_t> buf;
  thread_local std::vector<int16_t> bs;
  if (static_cast<int64_t>(buf.size()) < T * cols) buf.resize(T * cols);
  if (static_cast<int64_t>(bs.size()) < T * cols / 32) bs.resize(T * cols / 32);
  const __m256i odd_even = _mm256_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14,  //
                                            1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t c = 0; c < T * cols; c += 64) {  // (cols is a multiple of 256: pairs never straddle tokens)
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c + 32));
    // each block as [16 odds | 16 evens]
    const __m256i pa = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(a, odd_even), 0xD8);
    const __m256i pb = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(b, odd_even), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf.data() + c), _mm256_permute2x128_si256(pa, pb, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf.data() + c + 32), _mm256_permute2x128_si256(pa, pb, 0x31));
    if (sums) {
      bs[c / 32] = static_cast<int16_t>(hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, a), ones16)));
      bs[c / 32 + 1] = static_cast<int16_t>(hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, b), ones16)));
    }
  }
  return {buf.data(), bs.data()};
}

// Signed codes (IQ4_XS's table) times signed activations: |w| unsigned times x with w's sign,
// each chunk to int32 on its own (two such int16 pair sums can pass 2^15); unsigned ones (Q4_K's
// 0..15) straight, both halves' pair sums added in int16 (at most 2 * 2 * 15 * 127).
template <bool Signed>
inline __m256i q8k_pair_sums(__m256i lo, __m256i hi, __m256i xlo, __m256i xhi, __m256i scale16) {
  if constexpr (Signed) {
    const __m256i a = _mm256_maddubs_epi16(_mm256_sign_epi8(lo, lo), _mm256_sign_epi8(xlo, lo));
    const __m256i b = _mm256_maddubs_epi16(_mm256_sign_epi8(hi, hi), _mm256_sign_epi8(xhi, hi));
    return _mm256_add_epi32(_mm256_madd_epi16(a, scale16), _mm256_madd_epi16(b, scale16));
  } else {
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi)), scale16);
  }
}

// G tokens (1 or 2) per pass over the rows: each weight step decoded once for both, each token
// with its own accumulators in the one-token order (so its result is the same bits whatever G).
template <bool Signed, int G>
void gemv_q8k_i8_rows(const Q4Matrix& w, const Q8KPermuted& xp, const float* xd, float* y, int64_t ldy, int64_t r0,
                      int64_t r1) {
  const int64_t cols = w.cols, nsb = cols / kQ8KBlock, per = kQ8KBlock / kQ8Block;
  int8_t code[16];
  for (int k = 0; k < 16; ++k) code[k] = static_cast<int8_t>(w.code[k]);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(code)));
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m128i bias = _mm_set1_epi16(static_cast<int16_t>(w.q8k_scale_bias));
  // Per pair p, the int16 scale of block 2p in lane 0's eight words, of block 2p + 1 in lane 1's.
  __m256i spread[4];
  for (int p = 0; p < 4; ++p) {
    alignas(32) int8_t idx[32];
    for (int i = 0; i < 16; ++i) {
      idx[i] = static_cast<int8_t>(4 * p + (i & 1));
      idx[16 + i] = static_cast<int8_t>(4 * p + 2 + (i & 1));
    }
    spread[p] = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
  }
  const bool mins = w.block_min_q != nullptr;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b_row = r * (cols / kQ8Block);
    const uint8_t* pk = w.packed + r * cols / 2;
    __m256 acc[G];
    __m128 accm[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps(), accm[g] = _mm_setzero_ps();
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const int64_t b0 = b_row + sb * per;
      const uint8_t* ps = pk + sb * (kQ8KBlock / 2);
      detail::prefetch_l2(ps + detail::kGemvPrefetchBytes);
      detail::prefetch_l2(ps + detail::kGemvPrefetchBytes + 64);
      const __m128i sc8 =
          _mm_add_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.absmax_q + b0))), bias);
      const __m256i sc = _mm256_broadcastsi128_si256(sc8);
      __m256i isum[G];
      for (int g = 0; g < G; ++g) isum[g] = _mm256_setzero_si256();
      for (int p = 0; p < 4; ++p) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps + 32 * p));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if constexpr (Signed) {
          lo = _mm256_shuffle_epi8(table, lo);
          hi = _mm256_shuffle_epi8(table, hi);
        }
        const __m256i scale16 = _mm256_shuffle_epi8(sc, spread[p]);
        for (int g = 0; g < G; ++g) {
          const int8_t* xs = xp.x + g * cols + sb * kQ8KBlock + 64 * p;
          const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs));
          const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + 32));
          isum[g] = _mm256_add_epi32(isum[g], q8k_pair_sums<Signed>(lo, hi, xlo, xhi, scale16));
        }
      }
      const __m128i m8 =
          mins ? _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.block_min_q + b0))) : __m128i{};
      for (int g = 0; g < G; ++g) {
        const float dx = xd[g * (cols / kQ8Block) + sb * per];
        acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[g]), _mm256_set1_ps(w.nested_absmax[b0 / per] * dx), acc[g]);
        if (mins) {
          const __m128i pm =
              _mm_madd_epi16(m8, _mm_loadu_si128(reinterpret_cast<const __m128i*>(xp.bsum + g * (cols / 32) + sb * per)));
          accm[g] = _mm_fmadd_ps(_mm_cvtepi32_ps(pm), _mm_set1_ps(w.block_min_d[b0 / per] * dx), accm[g]);
        }
      }
    }
    for (int g = 0; g < G; ++g) {
      float v = hsum(acc[g]);
      if (mins) {
        const __m128 q = _mm_add_ps(accm[g], _mm_movehl_ps(accm[g], accm[g]));
        v -= _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
      }
      y[g * ldy + r] = v;
    }
  }
}

void gemv_q8k_i8_multi_avx2(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                            int64_t r0, int64_t r1) {
  bool unsigned_codes = true;  // Q4_K's 0..15: no sign step
  for (int k = 0; k < 16; ++k) unsigned_codes = unsigned_codes && w.code[k] == static_cast<float>(k);
  const Q8KPermuted xp = permute_xq_q8k(xq, w.cols, T, w.block_min_q != nullptr);
  const int64_t nd = w.cols / kQ8Block;
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) {
    const Q8KPermuted x2{xp.x + t * w.cols, xp.bsum + t * nd};
    if (unsigned_codes)
      gemv_q8k_i8_rows<false, 2>(w, x2, xd + t * nd, y + t * ldy, ldy, r0, r1);
    else
      gemv_q8k_i8_rows<true, 2>(w, x2, xd + t * nd, y + t * ldy, ldy, r0, r1);
  }
  if (t < T) {
    const Q8KPermuted x1{xp.x + t * w.cols, xp.bsum + t * nd};
    if (unsigned_codes)
      gemv_q8k_i8_rows<false, 1>(w, x1, xd + t * nd, y + t * ldy, ldy, r0, r1);
    else
      gemv_q8k_i8_rows<true, 1>(w, x1, xd + t * nd, y + t * ldy, ldy, r0, r1);
  }
}

void gemv_q8k_i8_avx2(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1) {
  gemv_q8k_i8_multi_avx2(w, xq, xd, 1, y, 0, r0, r1);
}

}  // namespace

const Q8KKernels& avx2_q8k_kernels() {
  static const Q8KKernels k{quantize_x_q8k_avx2, gemv_q8k_i8_avx2, gemv_q8k_i8_multi_avx2};
  return k;
}

}  // namespace qlora::kernels
