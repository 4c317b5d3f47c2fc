// AVX2 block-row kernels. Each block's codes are unpacked into int8 lanes in registers (the
// 5th / 6th / sign bits merged in with byte masks), widened to float32 eight at a time and
// scaled with the reference's own float32 expression, so every value is
// dequantize_row_ref's bit for bit; the GEMV then multiplies them into x with four
// accumulators per token (no dependence between consecutive FMAs), rows_to_f32 stores them.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "model/block_row_kernels.h"
#include "model/linear_kernels_avx2_inl.h"

namespace qlora::kernels {
namespace {


// 0xFF where the byte has the bit `mask` set.
inline __m256i has_bit(__m256i v, int mask) {
  const __m256i m = bytes(mask);
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m);
}

// How a chunk's code q becomes its value, as the reference writes it: q * s, q * s - m, q * s + m.
enum class Mode { Scale, SubMin, AddMin };

// 2^-24 and the codes' widening: each int8 code lands in the top byte of a 32-bit lane (the
// byte shuffle zeroes the rest), so the lane is q * 2^24 as a signed integer and converts to
// float exactly; the scales carry the 2^-24 back (a power of two: the products round as
// q * s does). One byte shuffle and one conversion per 8 codes, in x's order (each shuffle
// reads a copy of the chunk's 16-byte half in both lanes).
constexpr float kUnshift = 1.0f / 16777216.0f;
struct Codes {
  __m256 c0, c1, c2, c3;  // codes 0-7, 8-15, 16-23, 24-31, times 2^24
};
inline Codes widen(__m256i q) {
  const __m256i first = _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3,  //
                                         -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7);
  const __m256i second = _mm256_setr_epi8(-1, -1, -1, 8, -1, -1, -1, 9, -1, -1, -1, 10, -1, -1, -1, 11,  //
                                          -1, -1, -1, 12, -1, -1, -1, 13, -1, -1, -1, 14, -1, -1, -1, 15);
  const __m256i lo = _mm256_permute4x64_epi64(q, 0x44), hi = _mm256_permute4x64_epi64(q, 0xEE);
  return {_mm256_cvtepi32_ps(_mm256_shuffle_epi8(lo, first)), _mm256_cvtepi32_ps(_mm256_shuffle_epi8(lo, second)),
          _mm256_cvtepi32_ps(_mm256_shuffle_epi8(hi, first)), _mm256_cvtepi32_ps(_mm256_shuffle_epi8(hi, second))};
}

// A block starts with f.block(d, dmin), its float32 scale and minimum factors; then each chunk of
// 32 int8 codes q (values pos .. pos + 31 of the block), the first 16 with integer scale sc0 and
// minimum code mn0, the last 16 with (sc1, mn1), goes to f.template chunk<M>(q, sc0, mn0, sc1,
// mn1, pos). The value is (d * sc) * q, then - or + dmin * mn, each product in float32 as the
// reference rounds it (types with one float scale per block pass sc = 1, mn = 1: d * 1 is d).

// Q4_K / Q5_K's 6-bit scale and minimum of sub-block j (formats/ggml_types.h q4_k_scale_min, inline).
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

// One block of each type, its values in order through f (formats/ggml_types.h's layouts).
template <GgmlType Ty, class F>
inline void decode_block(const uint8_t* b, F& f) {
  if constexpr (Ty == GgmlType::Q5_0) {  // x = d * (q - 16)
    const float d = half_at(b);
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    // q - 16 as int8: the nibble where the fifth bit is set, else the nibble - 16 (its high bits set)
    const __m256i q = _mm256_or_si256(q5_nibbles(b + 6), _mm256_andnot_si256(bytes_from_bits(qh), bytes(0xF0)));
    f.block(d, 0.0f);
    f.template chunk<Mode::Scale>(q, 1, 0, 1, 0, 0);
  } else if constexpr (Ty == GgmlType::Q5_1) {  // x = q * d + m
    const float d = half_at(b), m = half_at(b + 2);
    uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    const __m256i q = _mm256_or_si256(q5_nibbles(b + 8), _mm256_and_si256(bytes_from_bits(qh), bytes(0x10)));
    f.block(d, m);
    f.template chunk<Mode::AddMin>(q, 1, 1, 1, 1, 0);
  } else if constexpr (Ty == GgmlType::Q5_K) {  // 8 sub-blocks of 32: x = (d * sc) * q - dmin * m
    const float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t* scales = b + 4;
    const __m256i qh = load256(b + 16);
    const uint8_t* ql = b + 48;
    f.block(d, dmin);
    for (int j = 0; j < 4; ++j) {
      uint8_t d1, m1, d2, m2;
      scale_min_k4(2 * j, scales, d1, m1);
      scale_min_k4(2 * j + 1, scales, d2, m2);
      const __m256i l = load256(ql + 32 * j);
      const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l, bytes(0x0F)),
                                         _mm256_and_si256(has_bit(qh, 1 << (2 * j)), bytes(0x10)));
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l, 4), bytes(0x0F)),
                                         _mm256_and_si256(has_bit(qh, 1 << (2 * j + 1)), bytes(0x10)));
      f.template chunk<Mode::SubMin>(q1, d1, m1, d1, m1, 64 * j);
      f.template chunk<Mode::SubMin>(q2, d2, m2, d2, m2, 64 * j + 32);
    }
  } else if constexpr (Ty == GgmlType::Q6_K) {  // 16 sub-blocks of 16: x = (d * sc) * (q - 32)
    const float d = half_at(b + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    f.block(d, 0.0f);
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = load256(b + 64 * h), l1 = load256(b + 64 * h + 32), qh = load256(b + 128 + 32 * h);
      const __m256i m4 = bytes(0x0F), m30 = bytes(0x30), c32 = bytes(32);
      // Value l + 32 k takes its low nibble from ql and bits 2k, 2k + 1 of qh[l] as bits 4, 5.
      const __m256i q1 = _mm256_sub_epi8(
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)), c32);
      const __m256i q2 = _mm256_sub_epi8(
          _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)), c32);
      const __m256i q3 = _mm256_sub_epi8(
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30)), c32);
      const __m256i q4 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)),
                                         c32);
      const int8_t* s = sc + 8 * h;
      f.template chunk<Mode::Scale>(q1, s[0], 0, s[1], 0, 128 * h);
      f.template chunk<Mode::Scale>(q2, s[2], 0, s[3], 0, 128 * h + 32);
      f.template chunk<Mode::Scale>(q3, s[4], 0, s[5], 0, 128 * h + 64);
      f.template chunk<Mode::Scale>(q4, s[6], 0, s[7], 0, 128 * h + 96);
    }
  } else if constexpr (Ty == GgmlType::Q3_K) {  // 16 sub-blocks of 16: x = (d * sc) * (q - 4 * !hbit)
    const float d = half_at(b + 108);
    const uint8_t* packed = b + 96;
    int ds[16];  // the 6-bit scales, less 32
    for (int j = 0; j < 16; ++j) {
      const int lo = j < 8 ? (packed[j] & 0x0F) : (packed[j - 8] >> 4);
      const int hi = (packed[8 + (j % 4)] >> (2 * (j / 4))) & 3;
      ds[j] = static_cast<int8_t>((lo | (hi << 4)) - 32);
    }
    f.block(d, 0.0f);
    const __m256i hm = load256(b);
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(b + 32 + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const __m256i low = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), bytes(3));
        const __m256i code = _mm256_sub_epi8(low, _mm256_andnot_si256(has_bit(hm, 1 << (4 * h + j)), bytes(4)));
        const int is = 8 * h + 2 * j;
        f.template chunk<Mode::Scale>(code, ds[is], 0, ds[is + 1], 0, 128 * h + 32 * j);
      }
    }
  } else if constexpr (Ty == GgmlType::Q2_K) {  // 16 sub-blocks of 16: x = (d * (sc & 15)) * q - dmin * (sc >> 4)
    const float d = half_at(b + 80), dmin = half_at(b + 82);
    f.block(d, dmin);
    for (int h = 0; h < 2; ++h) {
      const __m256i q = load256(b + 16 + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const __m256i code = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), bytes(3));
        const int is = 8 * h + 2 * j;
        const uint8_t s0 = b[is], s1 = b[is + 1];
        f.template chunk<Mode::SubMin>(code, s0 & 0xF, s0 >> 4, s1 & 0xF, s1 >> 4, 128 * h + 32 * j);
      }
    }
  }
}

template <GgmlType Ty>
constexpr int64_t kBlockValues = (Ty == GgmlType::Q5_0 || Ty == GgmlType::Q5_1) ? 32 : 256;
template <GgmlType Ty>
constexpr int64_t kBlockBytes = Ty == GgmlType::Q5_0   ? 22
                                : Ty == GgmlType::Q5_1 ? 24
                                : Ty == GgmlType::Q5_K ? 176
                                : Ty == GgmlType::Q6_K ? 210
                                : Ty == GgmlType::Q3_K ? 110
                                                       : 84;
static_assert(kBlockBytes<GgmlType::Q5_0> == sizeof(BlockQ5_0) && kBlockBytes<GgmlType::Q5_1> == sizeof(BlockQ5_1) &&
              kBlockBytes<GgmlType::Q5_K> == sizeof(BlockQ5_K) && kBlockBytes<GgmlType::Q6_K> == sizeof(BlockQ6_K) &&
              kBlockBytes<GgmlType::Q3_K> == sizeof(BlockQ3_K) && kBlockBytes<GgmlType::Q2_K> == sizeof(BlockQ2_K));

// The GEMV's consumer: G (1 or 2) tokens of x, each with its own four accumulators, so a
// token's sums are in the same order whatever G is. A chunk's codes times x are summed per
// 16 (s0, s1) and scaled once; a minimum term is the minimum times the sum of x's 16 values.
// The float consumers' block factors and, per half chunk, scale d * sc and minimum dmin * mn
// in float32 as the reference computes them.
struct FloatScales {
  float d_ = 0.0f, dmin_ = 0.0f;
  inline void block(float d, float dmin) { d_ = d, dmin_ = dmin; }
  inline float scale(int sc) const { return d_ * static_cast<float>(sc); }
  inline float min(int mn) const { return dmin_ * static_cast<float>(mn); }
};

template <int G>
struct GemvChunks : FloatScales {
  const float* xb;  // x at the block's first value, token g at xb + g * cols
  int64_t cols;
  __m256 acc[G][4];

  template <Mode M>
  inline void chunk(__m256i q, int sc0, int mn0, int sc1, int mn1, int pos) {
    const float s0 = scale(sc0), s1 = scale(sc1), m0 = min(mn0), m1 = min(mn1);
    const Codes c = widen(q);
    const __m256 S0 = _mm256_set1_ps(s0 * kUnshift), S1 = _mm256_set1_ps(s1 * kUnshift);
    for (int g = 0; g < G; ++g) {
      const float* xp = xb + g * cols + pos;
      const __m256 x0 = _mm256_loadu_ps(xp), x1 = _mm256_loadu_ps(xp + 8), x2 = _mm256_loadu_ps(xp + 16),
                   x3 = _mm256_loadu_ps(xp + 24);
      const __m256 p0 = _mm256_fmadd_ps(c.c1, x1, _mm256_mul_ps(c.c0, x0));
      const __m256 p1 = _mm256_fmadd_ps(c.c3, x3, _mm256_mul_ps(c.c2, x2));
      acc[g][0] = _mm256_fmadd_ps(S0, p0, acc[g][0]);
      acc[g][1] = _mm256_fmadd_ps(S1, p1, acc[g][1]);
      if constexpr (M != Mode::Scale) {
        const __m256 M0 = _mm256_set1_ps(m0), M1 = _mm256_set1_ps(m1);
        const __m256 xs0 = _mm256_add_ps(x0, x1), xs1 = _mm256_add_ps(x2, x3);
        if constexpr (M == Mode::AddMin) {
          acc[g][2] = _mm256_fmadd_ps(M0, xs0, acc[g][2]);
          acc[g][3] = _mm256_fmadd_ps(M1, xs1, acc[g][3]);
        } else {
          acc[g][2] = _mm256_fnmadd_ps(M0, xs0, acc[g][2]);
          acc[g][3] = _mm256_fnmadd_ps(M1, xs1, acc[g][3]);
        }
      }
    }
  }
};

template <GgmlType Ty, int G>
void gemv_tokens(const BlockRows& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int64_t QK = kBlockValues<Ty>, BB = kBlockBytes<Ty>;
  const int64_t nb = w.cols / QK;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    GemvChunks<G> f;
    f.cols = w.cols;
    for (int g = 0; g < G; ++g)
      for (int k = 0; k < 4; ++k) f.acc[g][k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      f.xb = x + b * QK;
      decode_block<Ty>(row + b * BB, f);
    }
    for (int g = 0; g < G; ++g)
      y[g * ldy + r] =
          hsum(_mm256_add_ps(_mm256_add_ps(f.acc[g][0], f.acc[g][1]), _mm256_add_ps(f.acc[g][2], f.acc[g][3])));
  }
}

// rows_to_f32's consumer: the values, each code times its scale (then the minimum), as the
// reference computes them, stored in order.
struct StoreChunks : FloatScales {
  float* ob;  // the block's first value
  template <Mode M>
  inline void chunk(__m256i q, int sc0, int mn0, int sc1, int mn1, int pos) {
    const float s0 = scale(sc0), s1 = scale(sc1), m0 = min(mn0), m1 = min(mn1);
    const Codes c = widen(q);
    const __m256 S0 = _mm256_set1_ps(s0 * kUnshift), S1 = _mm256_set1_ps(s1 * kUnshift);
    __m256 v0 = _mm256_mul_ps(c.c0, S0), v1 = _mm256_mul_ps(c.c1, S0), v2 = _mm256_mul_ps(c.c2, S1),
           v3 = _mm256_mul_ps(c.c3, S1);
    if constexpr (M == Mode::SubMin) {
      const __m256 M0 = _mm256_set1_ps(m0), M1 = _mm256_set1_ps(m1);
      v0 = _mm256_sub_ps(v0, M0), v1 = _mm256_sub_ps(v1, M0), v2 = _mm256_sub_ps(v2, M1), v3 = _mm256_sub_ps(v3, M1);
    } else if constexpr (M == Mode::AddMin) {
      const __m256 M0 = _mm256_set1_ps(m0), M1 = _mm256_set1_ps(m1);
      v0 = _mm256_add_ps(v0, M0), v1 = _mm256_add_ps(v1, M0), v2 = _mm256_add_ps(v2, M1), v3 = _mm256_add_ps(v3, M1);
    }
    _mm256_storeu_ps(ob + pos, v0);
    _mm256_storeu_ps(ob + pos + 8, v1);
    _mm256_storeu_ps(ob + pos + 16, v2);
    _mm256_storeu_ps(ob + pos + 24, v3);
  }
};

template <GgmlType Ty>
void gemv_type(const BlockRows& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  // Two tokens per pass over the rows (eight accumulators stay in registers); a row's blocks
  // are still in L1 for the next pair.
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) gemv_tokens<Ty, 2>(w, x + t * w.cols, y + t * ldy, ldy, r0, r1);
  if (t < T) gemv_tokens<Ty, 1>(w, x + t * w.cols, y + t * ldy, ldy, r0, r1);
}

template <GgmlType Ty>
void rows_type(const BlockRows& w, int64_t r0, int64_t r1, float* out, int64_t ld) {
  constexpr int64_t QK = kBlockValues<Ty>, BB = kBlockBytes<Ty>;
  const int64_t nb = w.cols / QK;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    StoreChunks f;
    for (int64_t b = 0; b < nb; ++b) {
      f.ob = out + (r - r0) * ld + b * QK;
      decode_block<Ty>(row + b * BB, f);
    }
  }
}

void gemv_avx2(const BlockRows& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  switch (w.type) {
    case GgmlType::Q5_0: return gemv_type<GgmlType::Q5_0>(w, x, T, y, ldy, r0, r1);
    case GgmlType::Q5_1: return gemv_type<GgmlType::Q5_1>(w, x, T, y, ldy, r0, r1);
    case GgmlType::Q5_K: return gemv_type<GgmlType::Q5_K>(w, x, T, y, ldy, r0, r1);
    case GgmlType::Q6_K: return gemv_type<GgmlType::Q6_K>(w, x, T, y, ldy, r0, r1);
    case GgmlType::Q3_K: return gemv_type<GgmlType::Q3_K>(w, x, T, y, ldy, r0, r1);
    case GgmlType::Q2_K: return gemv_type<GgmlType::Q2_K>(w, x, T, y, ldy, r0, r1);
    default: return scalar_block_row_kernels().gemv(w, x, T, y, ldy, r0, r1);
  }
}

void gemv_i8_avx2(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                  int64_t r0, int64_t r1) {
  if (detail::gemv_i8_kquant_avx2(w, xq, xd, T, y, ldy, r0, r1)) return;  // the 256-value types
  if (detail::gemv_i8_q5_avx2(w, xq, xd, T, y, ldy, r0, r1)) return;      // Q5_0, Q5_1
  scalar_block_row_kernels().gemv_i8(w, xq, xd, T, y, ldy, r0, r1);
}

void rows_to_f32_avx2(const BlockRows& w, int64_t r0, int64_t r1, float* out, int64_t ld) {
  switch (w.type) {
    case GgmlType::Q5_0: return rows_type<GgmlType::Q5_0>(w, r0, r1, out, ld);
    case GgmlType::Q5_1: return rows_type<GgmlType::Q5_1>(w, r0, r1, out, ld);
    case GgmlType::Q5_K: return rows_type<GgmlType::Q5_K>(w, r0, r1, out, ld);
    case GgmlType::Q6_K: return rows_type<GgmlType::Q6_K>(w, r0, r1, out, ld);
    case GgmlType::Q3_K: return rows_type<GgmlType::Q3_K>(w, r0, r1, out, ld);
    case GgmlType::Q2_K: return rows_type<GgmlType::Q2_K>(w, r0, r1, out, ld);
    default: return scalar_block_row_kernels().rows_to_f32(w, r0, r1, out, ld);
  }
}

}  // namespace

const BlockRowKernels& avx2_block_row_kernels() {
  static const BlockRowKernels k{gemv_avx2, rows_to_f32_avx2, gemv_i8_avx2};
  return k;
}

}  // namespace qlora::kernels
