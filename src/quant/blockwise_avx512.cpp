// AVX-512 (F/BW/VL/DQ/BF16/VBMI) blockwise kernels. Bit-identical to the scalar
// references in blockwise_ref.cpp; see blockwise_kernels.h for the contract.
// (GCC 12's false "may be used uninitialized" warnings from its own AVX-512 headers are
// silenced for *_avx512.cpp files in CMakeLists.txt.)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/blockwise.h"
#include "quant/blockwise_kernels.h"

namespace qlora::kernels {
namespace {

// Masks of the low r lanes (r may be <= 0 or past the width).
inline __mmask16 low_mask16(int r) {
  return static_cast<__mmask16>(r >= 16 ? 0xFFFFu : r <= 0 ? 0u : (1u << r) - 1u);
}
inline __mmask32 low_mask32(int r) { return r >= 32 ? 0xFFFFFFFFu : r <= 0 ? 0u : (1u << r) - 1u; }

// ---- 4-bit quantization ------------------------------------------------------------
//
// Per block, as quantize_4bit_ref: absmax = max |x| (a NaN wins: the first one's |x|);
// a full block scales by s = x * (1 / max(absmax, 1e-38)), the tensor's partial last
// block by s = x / max(absmax, 1e-38) and stores that clamped absmax. The code is
// order[k], k = #{i : !(mid[i] >= s)} (the clamp to [-1, 1] cannot change k), found by
// a 4-step binary search over the 15 sorted midpoints with vpermps lookups.

struct Search {
  __m512 mid;
  __m512i order;
  bool identity;  // NF4: the codes are already sorted
};

inline __m512i search16(const Search& t, __m512 s) {
  __m512i k = _mm512_setzero_si512();
  for (int step = 8; step >= 1; step >>= 1) {
    const __m512i probe = _mm512_add_epi32(k, _mm512_set1_epi32(step - 1));
    // !(s <= mid) == !(mid >= s): true for NaN, which thus ends at k = 15.
    const __mmask16 past = _mm512_cmp_ps_mask(s, _mm512_permutexvar_ps(probe, t.mid), _CMP_NLE_UQ);
    k = _mm512_mask_add_epi32(k, past, k, _mm512_set1_epi32(step));
  }
  return t.identity ? k : _mm512_permutexvar_epi32(k, t.order);
}

// 32 codes (int32, elements 0..15 and 16..31) -> 16 packed bytes, element 2j high.
inline __m128i pack32(__m512i qa, __m512i qb) {
  const __m256i bytes = _mm256_set_m128i(_mm512_cvtepi32_epi8(qb), _mm512_cvtepi32_epi8(qa));
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x0110));  // 16*even + odd
  return _mm256_cvtepi16_epi8(pairs);
}

// torch's max, as the reference's: a NaN propagates.
inline float nan_max(float a, float b) { return (std::isnan(a) || a > b) ? a : b; }

// max |x| from 0 with nan_max, element by element as the reference does it.
inline float nan_absmax_scalar(const float* x, int64_t len) {
  float am = 0.0f;
  for (int64_t i = 0; i < len; ++i) am = nan_max(am, std::fabs(x[i]));
  return am;
}

// max |x| over the block: an unsigned integer max of the sign-cleared bits, which orders
// non-negative floats like floats. A NaN (bits above inf) sends the block to the scalar
// loop, so that the same NaN as the reference's comes out.
inline float absmax_4bit(const float* x, int64_t len) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= len; i += 32) {
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask));
    m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(x + i + 16), abs_mask));
  }
  for (; i < len; i += 16) {
    const int r = static_cast<int>(std::min<int64_t>(16, len - i));
    m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_maskz_loadu_epi32(low_mask16(r), x + i), abs_mask));
  }
  const uint32_t top = _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
  if (top > 0x7F800000u) return nan_absmax_scalar(x, len);
  float am;
  std::memcpy(&am, &top, 4);
  return am;
}

void quantize_4bit(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax) {
  if (n <= 0) return;
  const float kAbsmaxFloor = static_cast<float>(1e-38);
  const Quant4Search& qs = quant4_search(t);
  const Search search{_mm512_load_ps(qs.mid), _mm512_load_si512(qs.order), t == QuantType::NF4};
  const __m512i pad = _mm512_set1_epi32(qs.zero_code);
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const float* xb = x + start;
    uint8_t* pb = packed + start / 2;
    const bool full = len == blocksize;
    float am = absmax_4bit(xb, len);
    if (!full) am = nan_max(am, kAbsmaxFloor);
    absmax[b] = am;
    const __m512 inv = _mm512_set1_ps(1.0f / nan_max(am, kAbsmaxFloor));
    const __m512 div = _mm512_set1_ps(am);
    auto scaled = [&](__m512 v) { return full ? _mm512_mul_ps(v, inv) : _mm512_div_ps(v, div); };
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      const __m512i qa = search16(search, scaled(_mm512_loadu_ps(xb + i)));
      const __m512i qb = search16(search, scaled(_mm512_loadu_ps(xb + i + 16)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(pb + i / 2), pack32(qa, qb));
    }
    if (i < len) {  // the tensor's tail; an odd count is padded with the code of 0.0
      const int r = static_cast<int>(len - i);
      const __mmask16 ma = low_mask16(r), mb = low_mask16(r - 16);
      const __m512i qa = _mm512_mask_mov_epi32(pad, ma, search16(search, scaled(_mm512_maskz_loadu_ps(ma, xb + i))));
      const __m512i qb =
          _mm512_mask_mov_epi32(pad, mb, search16(search, scaled(_mm512_maskz_loadu_ps(mb, xb + i + 16))));
      _mm_mask_storeu_epi8(pb + i / 2, low_mask16((r + 1) / 2), pack32(qa, qb));
    }
  }
}

// ---- 4-bit dequantization -------------------------------------------------------
//
// Per block, the 16 possible outputs code[i] * absmax are computed once and converted to
// the output type with the reference's own rounding (a "block table"); every element is
// then a table lookup, bit-identical to the reference by construction.
//   f32:       16 packed bytes -> nibbles interleaved bytewise into element order ->
//              widened to int32 -> vpermps from the float table (16 outputs per lookup).
//   bf16/f16:  16 packed bytes widened to 16 int32 lanes, each lane rebuilt as the pair
//              (high nibble, low nibble) of 16-bit indices = two elements in order ->
//              vpermw from the 16-bit table (32 outputs per lookup).

// Round-to-nearest-even float32 -> bfloat16 in integer arithmetic, exactly as
// f32_to_bf16: denormals kept, NaN quieted keeping sign and high payload.
inline __m256i bf16_round(__m512 f) {
  const __m512i x = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x0040));
  return _mm512_cvtepi32_epi16(r);
}

enum class Out { F32, BF16, F16 };

// The 16-bit block table: entry i (i < 16) of the 32 word lanes is the converted product.
template <Out O>
inline __m512i table16(__m512 products) {
  if constexpr (O == Out::F16)
    return _mm512_zextsi256_si512(_mm512_cvtps_ph(products, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  else
    return _mm512_zextsi256_si512(bf16_round(products));
}

// 16 packed bytes -> 32 word indices in element order (lane j: high nibble, low nibble).
inline __m512i word_indices(__m128i v) {
  const __m512i u = _mm512_cvtepu8_epi32(v);
  // (u << 16 | u >> 4) & 0x000F000F: low word = high nibble, high word = low nibble.
  return _mm512_ternarylogic_epi32(_mm512_slli_epi32(u, 16), _mm512_srli_epi32(u, 4),
                                   _mm512_set1_epi32(0x000F000F), 0xA8);
}

// 16 packed bytes -> int32 codes of elements 0..15 (a) and 16..31 (b).
struct Codes32 {
  __m512i a, b;
};
inline Codes32 dword_indices(__m128i v) {
  const __m128i m = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
  const __m128i lo = _mm_and_si128(v, m);
  return {_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo))};
}

template <Out O>
void dequantize_4bit_impl(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                          void* out) {
  if (n <= 0) return;
  const __m512 code = _mm512_loadu_ps(codebook_4bit(t).data());
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const __m512 products = _mm512_mul_ps(code, _mm512_set1_ps(absmax[b]));
    const uint8_t* p = packed + start / 2;
    // Full groups of 32 elements (blocksize is a multiple of 32), then the tensor's tail.
    const int64_t full = len & ~int64_t{31};
    const int r = static_cast<int>(len - full);
    const __m128i tail_bytes =
        r ? _mm_maskz_loadu_epi8(low_mask16((r + 1) / 2), p + full / 2) : _mm_setzero_si128();
    if constexpr (O == Out::F32) {
      float* o = static_cast<float*>(out) + start;
      for (int64_t i = 0; i < full; i += 32) {
        const Codes32 c = dword_indices(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i / 2)));
        _mm512_storeu_ps(o + i, _mm512_permutexvar_ps(c.a, products));
        _mm512_storeu_ps(o + i + 16, _mm512_permutexvar_ps(c.b, products));
      }
      if (r) {
        const Codes32 c = dword_indices(tail_bytes);
        _mm512_mask_storeu_ps(o + full, low_mask16(r), _mm512_permutexvar_ps(c.a, products));
        if (r > 16) _mm512_mask_storeu_ps(o + full + 16, low_mask16(r - 16), _mm512_permutexvar_ps(c.b, products));
      }
    } else {
      const __m512i table = table16<O>(products);
      uint16_t* o = static_cast<uint16_t*>(out) + start;
      for (int64_t i = 0; i < full; i += 32) {
        const __m512i idx = word_indices(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i / 2)));
        _mm512_storeu_si512(o + i, _mm512_permutexvar_epi16(idx, table));
      }
      if (r) _mm512_mask_storeu_epi16(o + full, low_mask32(r), _mm512_permutexvar_epi16(word_indices(tail_bytes), table));
    }
  }
}

void dequantize_4bit_f32(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                         float* out) {
  dequantize_4bit_impl<Out::F32>(packed, absmax, n, blocksize, t, out);
}
void dequantize_4bit_bf16(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                          uint16_t* out) {
  dequantize_4bit_impl<Out::BF16>(packed, absmax, n, blocksize, t, out);
}
void dequantize_4bit_f16(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                         uint16_t* out) {
  dequantize_4bit_impl<Out::F16>(packed, absmax, n, blocksize, t, out);
}

// ---- 8-bit blockwise ----------------------------------------------------------------
//
// Quantize as quantize_8bit_blockwise_ref (libbitsandbytes_cpu): absmax = max |x| with
// NaN ignored (vmaxps(|x|, m) keeps m when |x| is NaN), an all-zero block is all code 0,
// else v = x * (1/absmax) clamped to [-1, 1] keeping NaN (vmaxps(-1, v) / vminps(1, v)
// return v when it is NaN), t = (v + 1) * 0.5, entry trunc(fma(65535, t, 0.5)) & 0xFFFF
// of the lookup table (cvttps2dq gives 0x80000000 for NaN, like the reference), gathered.
// Dequantize: a gather from the 256-entry code, times absmax.

void quantize_8bit_blockwise(const float* x, int64_t n, int blocksize, const float* code256, uint8_t* q,
                             float* absmax) {
  if (n <= 0) return;
  const uint8_t* lut = quant8_lut(code256);
  const __m512 sign = _mm512_set1_ps(-0.0f), one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
  const __m512 half = _mm512_set1_ps(0.5f), k65535 = _mm512_set1_ps(65535.0f);
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const float* xb = x + start;
    uint8_t* qb = q + start;
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = 0; i < len; i += 16) {
      const __mmask16 k = low_mask16(static_cast<int>(std::min<int64_t>(16, len - i)));
      m = _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(k, xb + i)), m);
    }
    const float am = _mm512_reduce_max_ps(m);
    absmax[b] = am;
    if (am == 0.0f) {
      std::memset(qb, 0, static_cast<size_t>(len));
      continue;
    }
    const __m512 inv = _mm512_set1_ps(1.0f / am);
    for (int64_t i = 0; i < len; i += 16) {
      const __mmask16 k = low_mask16(static_cast<int>(std::min<int64_t>(16, len - i)));
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xb + i), inv);
      v = _mm512_min_ps(one, _mm512_max_ps(minus_one, v));
      const __m512 t = _mm512_mul_ps(_mm512_add_ps(v, one), half);
      const __m512i idx = _mm512_and_si512(_mm512_cvttps_epi32(_mm512_fmadd_ps(k65535, t, half)),
                                           _mm512_set1_epi32(0xFFFF));
      const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, idx, lut, 1);
      _mm_mask_storeu_epi8(qb + i, k, _mm512_cvtepi32_epi8(g));  // vpmovdb keeps the low byte
    }
  }
}

void dequantize_8bit_blockwise(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                               const float* code256, float* out) {
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const __m512 scale = _mm512_set1_ps(absmax[b]);
    const uint8_t* p = q + start;
    float* o = out + start;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
      _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_i32gather_ps(idx, code256, 4), scale));
    }
    if (i < len) {
      const __mmask16 m = low_mask16(static_cast<int>(len - i));
      const __m512i idx = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p + i));
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, code256, 4);
      _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(v, scale));
    }
  }
}

}  // namespace

const BlockwiseKernels& avx512_kernels() {
  static const BlockwiseKernels k = {
      quantize_4bit,
      dequantize_4bit_f32,
      dequantize_4bit_bf16,
      dequantize_4bit_f16,
      quantize_8bit_blockwise,
      dequantize_8bit_blockwise,
  };
  return k;
}

}  // namespace qlora::kernels
