// AVX2 products of a GGUF's 256-value K-quant blocks kept as stored (Q2_K, Q3_K, Q5_K, Q6_K) with
// llama.cpp's Q8_K activations: block_row_kernels.h's gemv_i8 for those types.
//
// Why a kernel per type rather than block_row_kernels_avx2.cpp's shared decoder: that one hands
// every 32 codes to its consumer with the two halves' scales as scalars, and on 8-bit activations
// (no float work left per value) the scalar scale extraction, its broadcasts and the per-chunk
// minimum products cost as much as the dot products (perf: a third of Q2_K's time in scalar
// moves and multiplies). Here each block's scales are widened once into int16 vectors, one byte
// shuffle per 32 codes picks a chunk's pair of scales, and the parts that do not depend on the
// codes (Q2_K / Q5_K's minimums, the code offsets of Q3_K (-4) and Q6_K (-32)) are one multiply
// of the block's scales with x's sums per 16 values, per token and block.
//
// Every code is used unsigned (Q3_K's code + 4, Q6_K's + 32; maddubs takes unsigned times signed
// bytes), so no sign steps; pair sums stay in int16 (at most 2 * 63 * 128) and a block's integer
// sum in int32 (at most 256 * 128 * 63 * 128). A block is scaled once in float32: d * dx times
// the integer sum, minus dmin * dx times the minimums' sum. The order of a token's operations
// does not depend on how many tokens share a pass, so a token's result is the same bits
// whatever T is (the kernel test checks this).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "model/block_row_kernels.h"
#include "model/linear_kernels_avx2_inl.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {
namespace {

// Byte-wise: bit `from` of each byte moved to bit `to`, every other bit zero. (A 16-bit shift by
// |from - to| <= 7 moves each byte's bit within its own byte; the mask drops what crossed.)
inline __m256i bit_to(__m256i v, int from, int to) {
  const __m256i moved = from >= to ? _mm256_srl_epi16(v, _mm_cvtsi32_si128(from - to))
                                   : _mm256_sll_epi16(v, _mm_cvtsi32_si128(to - from));
  return _mm256_and_si256(moved, bytes(1 << to));
}
// The 2-bit field at bit 2 * j of each byte (Q2_K / Q3_K's codes).
inline __m256i crumbs(__m256i v, int j) {
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * j)), bytes(3));
}

// Byte-shuffle controls on a vector holding eight int16 scales in each 128-bit lane:
// pick_pair(j) puts scale 2j in every word of lane 0 and scale 2j + 1 in lane 1 (a chunk of 32
// codes whose halves have scales of their own: maddubs' lane 0 is the first 16 codes);
// pick_one(k) puts scale k everywhere.
inline __m256i pick_pair(int j) {
  const int a = 4 * j, b = 4 * j + 2;
  return _mm256_setr_epi8(a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1,  //
                          b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1);
}
inline __m256i pick_one(int k) {
  return _mm256_set1_epi16(static_cast<int16_t>((2 * k) | ((2 * k + 1) << 8)));
}
// Lane-broadcast of one half of sixteen int16 scales (h = 0: scales 0-7, 1: 8-15).
inline __m256i half_of(__m256i s16, int h) {
  return h == 0 ? _mm256_permute2x128_si256(s16, s16, 0x00) : _mm256_permute2x128_si256(s16, s16, 0x11);
}

// One token's part of a block: its 256 Q8_K codes, their sums per 16 (int16) and its scale.
struct TokenBlock {
  const int8_t* q;
  const int16_t* bsum;
  float dx;
};

// codes (unsigned bytes) times the token's codes at `pos`, pair sums times the int16 scales S.
template <int G>
inline void dot_chunk(__m256i codes, __m256i S, const TokenBlock (&t)[G], int pos, __m256i (&isum)[G]) {
  for (int g = 0; g < G; ++g)
    isum[g] = _mm256_add_epi32(isum[g], _mm256_madd_epi16(_mm256_maddubs_epi16(codes, load256(t[g].q + pos)), S));
}

// Q2_K (84 bytes: scales[16] (low nibble scale, high nibble minimum, per 16 values), qs[64], d, dmin):
// x = (d * sc) * q - (dmin * m) * 1, q in 0..3 at bits 2j of qs[32 h + l] for value 128 h + 32 j + l.
template <int G>
inline void block_q2_k(const uint8_t* b, const TokenBlock (&t)[G], __m256 (&acc)[G]) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
  const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
  __m256i isum[G];
  for (int g = 0; g < G; ++g) isum[g] = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    const __m256i S = half_of(sc16, h), q = load256(b + 16 + 32 * h);
    for (int j = 0; j < 4; ++j) dot_chunk<G>(crumbs(q, j), _mm256_shuffle_epi8(S, pick_pair(j)), t, 128 * h + 32 * j, isum);
  }
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int g = 0; g < G; ++g) {
    const __m256i imin = _mm256_madd_epi16(mn16, load256(t[g].bsum));
    acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[g]), _mm256_set1_ps(d * t[g].dx), acc[g]);
    acc[g] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_set1_ps(dmin * t[g].dx), acc[g]);
  }
}

// Q3_K's sixteen 6-bit scales less 32 (12 bytes: low nibbles of bytes 0-7 for scales 0-7, their
// high nibbles for 8-15; bits 2 (j / 4) of byte 8 + j % 4 as bits 4-5), as int8.
inline __m128i q3_k_scales(const uint8_t* p) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
  uint32_t aux;
  std::memcpy(&aux, p + 8, 4);
  // each 32-bit lane k holds bytes 8-11, shifted right by 2k: byte j % 4 of lane j / 4 has its bits 2 (j / 4)
  const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(static_cast<int>(aux)), _mm_setr_epi32(0, 2, 4, 6)),
                                   _mm_set1_epi8(3));
  return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
}

// Q3_K (110 bytes: hmask[32], qs[64], scales[12], d): x = (d * sc) * (q - 4 * !h), q in 0..3 as
// Q2_K's, h bit 4 h' + j of hmask[l]. Here code + 4 = q + 4 h (0..7), and the -4 is -4 sc times
// x's sum per 16.
template <int G>
inline void block_q3_k(const uint8_t* b, const TokenBlock (&t)[G], __m256 (&acc)[G]) {
  const __m256i sc16 = _mm256_cvtepi8_epi16(q3_k_scales(b + 96));
  const __m256i hm = load256(b);
  __m256i isum[G];
  for (int g = 0; g < G; ++g) isum[g] = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    const __m256i S = half_of(sc16, h), q = load256(b + 32 + 32 * h);
    for (int j = 0; j < 4; ++j) {
      const __m256i code = _mm256_or_si256(crumbs(q, j), bit_to(hm, 4 * h + j, 2));
      dot_chunk<G>(code, _mm256_shuffle_epi8(S, pick_pair(j)), t, 128 * h + 32 * j, isum);
    }
  }
  const float d = half_at(b + 108);
  for (int g = 0; g < G; ++g) {
    const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(t[g].bsum)), 2);
    acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[g], off)), _mm256_set1_ps(d * t[g].dx), acc[g]);
  }
}

// Q5_K (176 bytes: d, dmin, scales[12] (eight 6-bit scales and minimums per 32), qh[32], qs[128]):
// x = (d * sc) * q - (dmin * m), q = nibble + 16 * bit, sub-block 2j + k (k = 0, 1) from the
// low / high nibbles of qs[32 j + l] and bit 2j + k of qh[l].
template <int G>
inline void block_q5_k(const uint8_t* b, const TokenBlock (&t)[G], __m256 (&acc)[G]) {
  uint32_t w[3];
  std::memcpy(w, b + 4, 12);
  // formats/ggml_types.h's q4_k_scale_min, four at a time: scales 0-3 and minimums 0-3 are the
  // low 6 bits of bytes 0-3 / 4-7; 4-7 take byte 8-11's low / high nibble and the top 2 bits of
  // bytes 0-3 / 4-7 above it.
  const uint32_t sc_lo = w[0] & 0x3F3F3F3Fu, mn_lo = w[1] & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4);
  const __m128i sc8 = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi), 0, 0);
  const __m128i mn8 = _mm_setr_epi32(static_cast<int>(mn_lo), static_cast<int>(mn_hi), 0, 0);
  const __m256i S = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
  const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));  // each minimum for both its 16s
  const __m256i qh = load256(b + 16), m4 = bytes(0x0F);
  __m256i isum[G];
  for (int g = 0; g < G; ++g) isum[g] = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i l = load256(b + 48 + 32 * j);
    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l, m4), bit_to(qh, 2 * j, 4));
    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l, 4), m4), bit_to(qh, 2 * j + 1, 4));
    dot_chunk<G>(q1, _mm256_shuffle_epi8(S, pick_one(2 * j)), t, 64 * j, isum);
    dot_chunk<G>(q2, _mm256_shuffle_epi8(S, pick_one(2 * j + 1)), t, 64 * j + 32, isum);
  }
  const float d = half_at(b), dmin = half_at(b + 2);
  for (int g = 0; g < G; ++g) {
    const __m256i imin = _mm256_madd_epi16(mn16, load256(t[g].bsum));
    acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[g]), _mm256_set1_ps(d * t[g].dx), acc[g]);
    acc[g] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_set1_ps(dmin * t[g].dx), acc[g]);
  }
}

// Q6_K (210 bytes: ql[128], qh[64], scales int8[16], d): x = (d * sc) * (q - 32), q = 4 low bits
// from ql and 2 high bits from qh (value 128 h + 32 c + l: ql[64 h + l + 32 (c & 1)], its low
// nibble for c < 2, high for c >= 2; bits 2c of qh[32 h + l]). Here q itself (0..63) and -32 sc
// times x's sums per 16.
template <int G>
inline void block_q6_k(const uint8_t* b, const TokenBlock (&t)[G], __m256 (&acc)[G]) {
  const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
  const __m256i m4 = bytes(0x0F), m30 = bytes(0x30);
  __m256i isum[G];
  for (int g = 0; g < G; ++g) isum[g] = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    const __m256i S = half_of(sc16, h);
    const __m256i l0 = load256(b + 64 * h), l1 = load256(b + 64 * h + 32), qh = load256(b + 128 + 32 * h);
    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
    const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
    const __m256i q4 =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    dot_chunk<G>(q1, _mm256_shuffle_epi8(S, pick_pair(0)), t, 128 * h, isum);
    dot_chunk<G>(q2, _mm256_shuffle_epi8(S, pick_pair(1)), t, 128 * h + 32, isum);
    dot_chunk<G>(q3, _mm256_shuffle_epi8(S, pick_pair(2)), t, 128 * h + 64, isum);
    dot_chunk<G>(q4, _mm256_shuffle_epi8(S, pick_pair(3)), t, 128 * h + 96, isum);
  }
  const float d = half_at(b + 208);
  for (int g = 0; g < G; ++g) {
    const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(t[g].bsum)), 5);
    acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[g], off)), _mm256_set1_ps(d * t[g].dx), acc[g]);
  }
}

template <GgmlType Ty>
constexpr int64_t kBytes = Ty == GgmlType::Q2_K ? 84 : Ty == GgmlType::Q3_K ? 110 : Ty == GgmlType::Q5_K ? 176 : 210;
static_assert(kBytes<GgmlType::Q2_K> == sizeof(BlockQ2_K) && kBytes<GgmlType::Q3_K> == sizeof(BlockQ3_K) &&
              kBytes<GgmlType::Q5_K> == sizeof(BlockQ5_K) && kBytes<GgmlType::Q6_K> == sizeof(BlockQ6_K));

template <GgmlType Ty, int G>
void rows_i8(const BlockRows& w, const int8_t* xq, const float* xd, const int16_t* bsum, float* y, int64_t ldy,
             int64_t r0, int64_t r1) {
  constexpr int64_t BB = kBytes<Ty>;
  const int64_t cols = w.cols, nb = cols / 256;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    __m256 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
    for (int64_t k = 0; k < nb; ++k) {
      const uint8_t* blk = row + k * BB;
      for (int64_t o = 0; o < BB; o += 64) detail::prefetch_l2(blk + detail::kGemvPrefetchBytes + o);
      TokenBlock t[G];
      for (int g = 0; g < G; ++g)
        t[g] = {xq + g * cols + 256 * k, bsum + g * (cols / 16) + 16 * k, xd[g * (cols / 32) + 8 * k]};
      if constexpr (Ty == GgmlType::Q2_K) block_q2_k<G>(blk, t, acc);
      else if constexpr (Ty == GgmlType::Q3_K) block_q3_k<G>(blk, t, acc);
      else if constexpr (Ty == GgmlType::Q5_K) block_q5_k<G>(blk, t, acc);
      else block_q6_k<G>(blk, t, acc);
    }
    for (int g = 0; g < G; ++g) y[g * ldy + r] = hsum(acc[g]);
  }
}

// xq's sums per 16 values (int16: |sum| <= 16 * 128), n a multiple of 128.
void sums_per_16(const int8_t* xq, int64_t n, int16_t* out) {
  const __m256i ones8 = bytes(1), ones16 = _mm256_set1_epi16(1);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < n; i += 128) {
    __m256i s[4];  // per 4 values: [values 0-15 | 16-31] of each 32
    for (int k = 0; k < 4; ++k) s[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load256(xq + i + 32 * k)), ones16);
    // two horizontal adds per lane: [0-15 of 32-blocks 0, 1, 2, 3 | 16-31 of each], then in order
    const __m256i v = _mm256_permutevar8x32_epi32(
        _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3])), order);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 16),
                     _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
  }
}

template <GgmlType Ty>
void gemv_i8_type(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy, int64_t r0,
                  int64_t r1) {
  thread_local std::vector<int16_t> bs;
  const int64_t nbs = w.cols / 16, nd = w.cols / 32;
  bs.resize(static_cast<size_t>(T * nbs));
  sums_per_16(xq, T * w.cols, bs.data());
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) rows_i8<Ty, 2>(w, xq + t * w.cols, xd + t * nd, bs.data() + t * nbs, y + t * ldy, ldy, r0, r1);
  if (t < T) rows_i8<Ty, 1>(w, xq + t * w.cols, xd + t * nd, bs.data() + t * nbs, y + t * ldy, ldy, r0, r1);
}

}  // namespace

bool detail::gemv_i8_kquant_avx2(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y,
                                 int64_t ldy, int64_t r0, int64_t r1) {
  switch (w.type) {
    case GgmlType::Q2_K: gemv_i8_type<GgmlType::Q2_K>(w, xq, xd, T, y, ldy, r0, r1); return true;
    case GgmlType::Q3_K: gemv_i8_type<GgmlType::Q3_K>(w, xq, xd, T, y, ldy, r0, r1); return true;
    case GgmlType::Q5_K: gemv_i8_type<GgmlType::Q5_K>(w, xq, xd, T, y, ldy, r0, r1); return true;
    case GgmlType::Q6_K: gemv_i8_type<GgmlType::Q6_K>(w, xq, xd, T, y, ldy, r0, r1); return true;
    default: return false;
  }
}

}  // namespace qlora::kernels
