// AVX2 (+FMA, F16C) blockwise kernels. Bit-identical to the scalar references in
// blockwise_ref.cpp; see blockwise_kernels.h for the contract.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/float_formats.h"
#include "quant/blockwise.h"
#include "quant/blockwise_kernels.h"

namespace qlora::kernels {
namespace {

// A 16-entry table (of floats, or of ints as float bit patterns) looked up with int32
// indices 0..15: two 8-entry vpermps blended on bit 3 of the index.
struct Table16 {
  __m256 lo, hi;
};

inline __m256 lookup8(const Table16& t, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(t.lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(t.hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// ---- 4-bit quantization ------------------------------------------------------------
//
// Per block, as quantize_4bit_ref: absmax = max |x| (a NaN wins: the first one's |x|);
// a full block scales by s = x * (1 / max(absmax, 1e-38)), the tensor's partial last
// block by s = x / max(absmax, 1e-38) and stores that clamped absmax. The code is
// order[k], k = #{i : !(mid[i] >= s)} (the clamp to [-1, 1] cannot change k): 15
// compares whose all-ones masks are subtracted from a counter.

struct Search {
  __m256 mid[15];
  Table16 order;  // the order permutation as two 8-entry int tables (bit patterns in floats)
  bool identity;  // NF4: the codes are already sorted
};

inline __m256i search8(const Search& t, __m256 s) {
  __m256i k = _mm256_setzero_si256();
  // !(s <= mid) == !(mid >= s): true for NaN, which thus ends at k = 15.
  for (int i = 0; i < 15; ++i) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(s, t.mid[i], _CMP_NLE_UQ)));
  return t.identity ? k : _mm256_castps_si256(lookup8(t.order, k));
}

// Four vectors of 8 codes (elements 0..31) -> 16 packed bytes, element 2j high.
inline __m128i pack32(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
  const __m256i w01 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0, q1), 0xD8);  // 16 x u16, in order
  const __m256i w23 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q2, q3), 0xD8);
  const __m128i b0 = _mm_packus_epi16(_mm256_castsi256_si128(w01), _mm256_extracti128_si256(w01, 1));
  const __m128i b1 = _mm_packus_epi16(_mm256_castsi256_si128(w23), _mm256_extracti128_si256(w23, 1));
  const __m128i k = _mm_set1_epi16(0x0110);  // 16*even + odd
  return _mm_packus_epi16(_mm_maddubs_epi16(b0, k), _mm_maddubs_epi16(b1, k));
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
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask));
    m1 = _mm256_max_epu32(m1,
                          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)), abs_mask));
  }
  m0 = _mm256_max_epu32(m0, m1);
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
  uint32_t top = static_cast<uint32_t>(_mm_cvtsi128_si32(m));
  for (; i < len; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    top = std::max(top, u & 0x7FFFFFFFu);
  }
  if (top > 0x7F800000u) return nan_absmax_scalar(x, len);
  float am;
  std::memcpy(&am, &top, 4);
  return am;
}

void quantize_4bit(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax) {
  if (n <= 0) return;
  const float kAbsmaxFloor = static_cast<float>(1e-38);
  const Quant4Search& qs = quant4_search(t);
  Search search;
  for (int i = 0; i < 15; ++i) search.mid[i] = _mm256_set1_ps(qs.mid[i]);
  search.order = {_mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(qs.order))),
                  _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(qs.order + 8)))};
  search.identity = t == QuantType::NF4;
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
    const __m256 inv = _mm256_set1_ps(1.0f / nan_max(am, kAbsmaxFloor));
    const __m256 div = _mm256_set1_ps(am);
    auto code8 = [&](const float* p) {
      const __m256 v = _mm256_loadu_ps(p);
      return search8(search, full ? _mm256_mul_ps(v, inv) : _mm256_div_ps(v, div));
    };
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      const __m128i p = pack32(code8(xb + i), code8(xb + i + 8), code8(xb + i + 16), code8(xb + i + 24));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(pb + i / 2), p);
    }
    if (i < len) {  // the tensor's tail, through a zero-padded copy
      const int r = static_cast<int>(len - i);
      alignas(32) float tail_x[32] = {};
      std::memcpy(tail_x, xb + i, static_cast<size_t>(r) * sizeof(float));
      alignas(32) int32_t codes[32];
      const __m256i c[4] = {code8(tail_x), code8(tail_x + 8), code8(tail_x + 16), code8(tail_x + 24)};
      std::memcpy(codes, c, sizeof codes);
      codes[r] = qs.zero_code;  // an odd count is padded with the code of 0.0 (r < 32)
      for (int j = 0; 2 * j < r; ++j) pb[i / 2 + j] = static_cast<uint8_t>((codes[2 * j] << 4) | codes[2 * j + 1]);
    }
  }
}

// ---- 4-bit dequantization -------------------------------------------------------
//
// Per block, the 16 possible outputs code[i] * absmax are computed once and converted to
// the output type with the reference's own rounding (a "block table"); every element is
// then a table lookup, bit-identical to the reference by construction. 16 packed bytes
// hold 32 codes (element 2j = high nibble of byte j); interleaving the high and low
// nibbles bytewise puts them in element order.
//   f32:      codes widened to int32, looked up in the two-register float table (Table16).
//   bf16/f16: the 16-bit table split into a low-byte and a high-byte table of 16 entries,
//             each looked up with pshufb and the two bytes interleaved back into words.

// Round-to-nearest-even float32 -> bfloat16 in integer arithmetic, exactly as
// f32_to_bf16: denormals kept, NaN quieted keeping sign and high payload. Low 16 bits.
inline __m256i bf16_round(__m256 f) {
  const __m256i x = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x0040));
  return _mm256_blendv_epi8(r, quiet, nan);
}

enum class Out { F32, BF16, F16 };

// A 16-bit block table as byte planes, each 16 entries repeated in both 128-bit lanes.
struct BytePlanes {
  __m256i lo, hi;
};

template <Out O>
inline BytePlanes byte_planes(__m256 p0, __m256 p1) {
  __m256i w;  // the 16 converted products as words, in order
  if constexpr (O == Out::F16) {
    w = _mm256_set_m128i(_mm256_cvtps_ph(p1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                         _mm256_cvtps_ph(p0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    w = _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round(p0), bf16_round(p1)), 0xD8);
  }
  // Per lane: low bytes of its 8 words, then high bytes; then gather the planes.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i planes = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(w, split), 0xD8);  // [lo | hi]
  return {_mm256_permute2x128_si256(planes, planes, 0x00), _mm256_permute2x128_si256(planes, planes, 0x11)};
}

template <Out O>
void dequantize_4bit_impl(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                          void* out) {
  if (n <= 0) return;
  const float* code = codebook_4bit(t).data();
  const __m256 code_lo = _mm256_loadu_ps(code), code_hi = _mm256_loadu_ps(code + 8);
  const __m256i m = _mm256_set1_epi8(0x0F);
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const float am = absmax[b];
    const __m256 scale = _mm256_set1_ps(am);
    const __m256 p0 = _mm256_mul_ps(code_lo, scale), p1 = _mm256_mul_ps(code_hi, scale);
    const uint8_t* p = packed + start / 2;
    int64_t i = 0;
    if constexpr (O == Out::F32) {
      const Table16 table{p0, p1};
      float* o = static_cast<float*>(out) + start;
      for (; i + 32 <= len; i += 32) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i / 2));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm256_castsi256_si128(m));
        const __m128i lo = _mm_and_si128(v, _mm256_castsi256_si128(m));
        const __m128i e0 = _mm_unpacklo_epi8(hi, lo);  // elements 0..15
        const __m128i e1 = _mm_unpackhi_epi8(hi, lo);  // elements 16..31
        _mm256_storeu_ps(o + i, lookup8(table, _mm256_cvtepu8_epi32(e0)));
        _mm256_storeu_ps(o + i + 8, lookup8(table, _mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8))));
        _mm256_storeu_ps(o + i + 16, lookup8(table, _mm256_cvtepu8_epi32(e1)));
        _mm256_storeu_ps(o + i + 24, lookup8(table, _mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8))));
      }
      for (; i < len; ++i) {  // the tensor's tail (< 32 elements, last block only)
        const uint8_t byte = p[i / 2];
        o[i] = code[(i & 1) ? (byte & 0x0F) : (byte >> 4)] * am;
      }
    } else {
      const BytePlanes tb = byte_planes<O>(p0, p1);
      uint16_t* o = static_cast<uint16_t*>(out) + start;
      for (; i + 64 <= len; i += 64) {
        // Lane 0 holds elements 0..31 of this group, lane 1 elements 32..63.
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i / 2));
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        const __m256i lo = _mm256_and_si256(v, m);
        const __m256i e0 = _mm256_unpacklo_epi8(hi, lo);  // elements 0..15 | 32..47
        const __m256i e1 = _mm256_unpackhi_epi8(hi, lo);  // elements 16..31 | 48..63
        const __m256i l0 = _mm256_shuffle_epi8(tb.lo, e0), h0 = _mm256_shuffle_epi8(tb.hi, e0);
        const __m256i l1 = _mm256_shuffle_epi8(tb.lo, e1), h1 = _mm256_shuffle_epi8(tb.hi, e1);
        const __m256i a0 = _mm256_unpacklo_epi8(l0, h0);  // elements 0..7   | 32..39
        const __m256i a1 = _mm256_unpackhi_epi8(l0, h0);  // elements 8..15  | 40..47
        const __m256i a2 = _mm256_unpacklo_epi8(l1, h1);  // elements 16..23 | 48..55
        const __m256i a3 = _mm256_unpackhi_epi8(l1, h1);  // elements 24..31 | 56..63
        __m256i* d = reinterpret_cast<__m256i*>(o + i);
        _mm256_storeu_si256(d, _mm256_permute2x128_si256(a0, a1, 0x20));
        _mm256_storeu_si256(d + 1, _mm256_permute2x128_si256(a2, a3, 0x20));
        _mm256_storeu_si256(d + 2, _mm256_permute2x128_si256(a0, a1, 0x31));
        _mm256_storeu_si256(d + 3, _mm256_permute2x128_si256(a2, a3, 0x31));
      }
      if (i + 32 <= len) {  // one group of 32 (blocksize 32, or a tail)
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i / 2));
        const __m128i mm = _mm256_castsi256_si128(m);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mm);
        const __m128i lo = _mm_and_si128(v, mm);
        const __m128i e0 = _mm_unpacklo_epi8(hi, lo), e1 = _mm_unpackhi_epi8(hi, lo);
        const __m128i tl = _mm256_castsi256_si128(tb.lo), th = _mm256_castsi256_si128(tb.hi);
        const __m128i l0 = _mm_shuffle_epi8(tl, e0), h0 = _mm_shuffle_epi8(th, e0);
        const __m128i l1 = _mm_shuffle_epi8(tl, e1), h1 = _mm_shuffle_epi8(th, e1);
        __m128i* d = reinterpret_cast<__m128i*>(o + i);
        _mm_storeu_si128(d, _mm_unpacklo_epi8(l0, h0));
        _mm_storeu_si128(d + 1, _mm_unpackhi_epi8(l0, h0));
        _mm_storeu_si128(d + 2, _mm_unpacklo_epi8(l1, h1));
        _mm_storeu_si128(d + 3, _mm_unpackhi_epi8(l1, h1));
        i += 32;
      }
      for (; i < len; ++i) {  // the tensor's tail (< 32 elements, last block only)
        const uint8_t byte = p[i / 2];
        const float v = code[(i & 1) ? (byte & 0x0F) : (byte >> 4)] * am;
        o[i] = O == Out::F16 ? f32_to_fp16(v) : f32_to_bf16(v);
      }
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
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  const __m256 half = _mm256_set1_ps(0.5f), k65535 = _mm256_set1_ps(65535.0f);
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  const __m256i to_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const float* xb = x + start;
    uint8_t* qb = q + start;
    const int64_t vec = len & ~int64_t{7};
    __m256 m = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(xb + i)), m);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m);
    float am = 0.0f;
    for (float v : lanes) am = std::max(am, v);  // no NaN left in m
    for (int64_t i = vec; i < len; ++i) {
      const float a = std::fabs(xb[i]);
      if (a > am) am = a;
    }
    absmax[b] = am;
    if (am == 0.0f) {
      std::memset(qb, 0, static_cast<size_t>(len));
      continue;
    }
    const float inv_s = 1.0f / am;
    const __m256 inv = _mm256_set1_ps(inv_s);
    for (int64_t i = 0; i < vec; i += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xb + i), inv);
      v = _mm256_min_ps(one, _mm256_max_ps(minus_one, v));
      const __m256 t = _mm256_mul_ps(_mm256_add_ps(v, one), half);
      const __m256i idx = _mm256_and_si256(_mm256_cvttps_epi32(_mm256_fmadd_ps(k65535, t, half)), low16);
      const __m256i g = _mm256_shuffle_epi8(_mm256_i32gather_epi32(reinterpret_cast<const int*>(lut), idx, 1), to_bytes);
      const uint32_t lo = static_cast<uint32_t>(_mm256_extract_epi32(g, 0));
      const uint32_t hi = static_cast<uint32_t>(_mm256_extract_epi32(g, 4));
      const uint64_t eight = lo | (static_cast<uint64_t>(hi) << 32);
      std::memcpy(qb + i, &eight, 8);
    }
    for (int64_t i = vec; i < len; ++i) {  // the same steps, one element at a time
      const __m128 v = _mm_min_ss(_mm_set_ss(1.0f), _mm_max_ss(_mm_set_ss(-1.0f), _mm_set_ss(xb[i] * inv_s)));
      const __m128 t = _mm_mul_ss(_mm_add_ss(v, _mm_set_ss(1.0f)), _mm_set_ss(0.5f));
      const int32_t idx = _mm_cvttss_si32(_mm_fmadd_ss(_mm_set_ss(65535.0f), t, _mm_set_ss(0.5f)));
      qb[i] = lut[static_cast<uint16_t>(idx)];
    }
  }
}

void dequantize_8bit_blockwise(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                               const float* code256, float* out) {
  const int64_t nb = num_blocks(n, blocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = std::min<int64_t>(blocksize, n - start);
    const float am = absmax[b];
    const __m256 scale = _mm256_set1_ps(am);
    const uint8_t* p = q + start;
    float* o = out + start;
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
      const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i)));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_i32gather_ps(code256, idx, 4), scale));
    }
    for (; i < len; ++i) o[i] = code256[p[i]] * am;
  }
}

}  // namespace

const BlockwiseKernels& avx2_kernels() {
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
