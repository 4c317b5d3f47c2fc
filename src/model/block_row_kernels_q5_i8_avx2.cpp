// AVX2 products of a GGUF's Q5_0 / Q5_1 blocks kept as stored with llama.cpp's Q8_0
// activations: block_row_kernels.h's gemv_i8 for those two types.
//
// Why not block_row_kernels_avx2.cpp's shared decoder: for 32-value blocks its per-chunk
// consumer costs as much as the dot product itself (the two halves' scales as scalars, x's sums
// per 16 recomputed in scalar code every call, the minimum as an integer product per chunk and a
// float one per block); perf put Q5_1 on it at 0.87x the Q8_0 copy of the same values at 1 thread.
//
// Here q is the unsigned 5-bit code (nibble | fifth bit << 4). Q5_1's value is d * q + m, so a
// block's product with x (codes xq, scale dx) is (d * dx) * sum(q * xq) + m * (dx * sum(xq));
// Q5_0's is d * (q - 16), and its integer sum sum(q * xq) - 16 * sum(xq) is exact. The integer
// sum is one maddubs (unsigned codes <= 31 times signed xq, -128 included: pair sums within
// int16) and one madd; sum(xq) (Q5_0: 16 times it, an integer) and dx * sum(xq) (Q5_1) are
// computed once per call and token, so a block's float factors are one fp16 widening and one
// multiply of two lanes. The products differ from the scalar definition's only by float32
// rounding of the factors and sums;
// a token's operations do not depend on how many tokens share the pass (its result is the same
// bits whatever T).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "model/block_row_kernels.h"
#include "model/linear_kernels_avx2_inl.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {
namespace {

template <GgmlType Ty>
constexpr int64_t kBytes = Ty == GgmlType::Q5_0 ? 22 : 24;
static_assert(kBytes<GgmlType::Q5_0> == sizeof(BlockQ5_0) && kBytes<GgmlType::Q5_1> == sizeof(BlockQ5_1));

// Per block b of 32 x values: f[2b] = dx, f[2b + 1] = dx * sum(xq) (Q5_1's minimum factor; Q5_0
// does not read it) and sum16[b] = 16 * sum(xq) (Q5_0's integer correction).
void x_factors(const int8_t* xq, const float* xd, int64_t blocks, float* f, int32_t* sum16) {
  const __m256i ones8 = bytes(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < blocks; ++b) {
    // (ones unsigned times xq signed: maddubs' pair sums are within int16)
    const int32_t s = hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load256(xq + 32 * b)), ones16));
    f[2 * b] = xd[b];
    f[2 * b + 1] = xd[b] * static_cast<float>(s);
    sum16[b] = 16 * s;
  }
}

// A block's 32 unsigned codes: nibble | fifth bit << 4. The 16 bytes of nibbles go to both lanes,
// the upper one shifted right by 4 (one variable shift of the 32-bit lanes), then masked: low
// nibbles (values 0-15), then high (16-31).
template <GgmlType Ty>
inline __m256i codes_of(const uint8_t* b) {
  constexpr int kQh = Ty == GgmlType::Q5_1 ? 4 : 2, kQs = kQh + 4;
  uint32_t qh;
  std::memcpy(&qh, b + kQh, 4);
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQs)));
  const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), bytes(0x0F));
  return _mm256_or_si256(nib, _mm256_and_si256(bytes_from_bits(qh), bytes(0x10)));
}

// Two consecutive blocks' float factors for one token, each block's from the same products as one
// at a time would make: lanes 0 / 2 = d * dx of blocks b / b + 1, lanes 1 / 3 = Q5_1's m * (dx *
// sum(xq)) (Q5_0: lanes 0 / 1 = d * dx, the rest unused). One fp16 widening and one multiply.
template <GgmlType Ty>
inline __m128 factors2(const uint8_t* b0, const uint8_t* b1, const float* f, const float* xd) {
  if constexpr (Ty == GgmlType::Q5_1) {
    uint32_t h0, h1;  // d | m << 16
    std::memcpy(&h0, b0, 4);
    std::memcpy(&h1, b1, 4);
    const __m128 dm = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(h0)), static_cast<int>(h1), 1));
    return _mm_mul_ps(dm, _mm_loadu_ps(f));
  } else {
    uint16_t h0, h1;
    std::memcpy(&h0, b0, 2);
    std::memcpy(&h1, b1, 2);
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (static_cast<uint32_t>(h1) << 16))));
    return _mm_mul_ps(d, _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xd))));
  }
}
// One block's (the row's last when its count is odd), the same lanes as factors2's first block.
template <GgmlType Ty>
inline __m128 factors1(const uint8_t* b, const float* f, const float* xd) {
  if constexpr (Ty == GgmlType::Q5_1) {
    uint32_t h;
    std::memcpy(&h, b, 4);
    return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h))),
                      _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(f))));
  } else {
    uint16_t h;
    std::memcpy(&h, b, 2);
    return _mm_mul_ss(_mm_cvtph_ps(_mm_cvtsi32_si128(h)), _mm_load_ss(xd));
  }
}

// A block's integer sum of codes times x's codes (8 int32 lanes): Q5_0's less 16 * sum(xq).
template <GgmlType Ty>
inline __m256i block_isum(__m256i q, const int8_t* x, const int32_t* sum16) {
  const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(x)), _mm256_set1_epi16(1));
  if constexpr (Ty == GgmlType::Q5_0)  // (in lane 0)
    return _mm256_sub_epi32(s, _mm256_zextsi128_si256(_mm_cvtsi32_si128(*sum16)));
  return s;
}

// Rows r0..r1 for G tokens: token g's codes at xq + g * cols, scales at xd + g * nb, x_factors'
// at f + g * 2 * nb and sum16 + g * nb. Blocks two at a time, each into its own accumulator.
template <GgmlType Ty, int G>
void rows_q5(const BlockRows& w, const int8_t* xq, const float* xd, const float* f, const int32_t* sum16, float* y,
             int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int64_t BB = kBytes<Ty>;
  constexpr bool kMin = Ty == GgmlType::Q5_1;
  const int64_t cols = w.cols, nb = cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    __m256 acc0[G], acc1[G];
    __m128 accm[G];  // lanes 1 and 3: the row's sum of m * (dx * sum(xq)) (Q5_1)
    for (int g = 0; g < G; ++g) acc0[g] = acc1[g] = _mm256_setzero_ps(), accm[g] = _mm_setzero_ps();
    int64_t k = 0;
    for (; k + 2 <= nb; k += 2) {
      const uint8_t* b0 = row + k * BB;
      detail::prefetch_l2(b0 + detail::kGemvPrefetchBytes);
      const __m256i q0 = codes_of<Ty>(b0), q1 = codes_of<Ty>(b0 + BB);
      for (int g = 0; g < G; ++g) {
        const int8_t* x = xq + g * cols + 32 * k;
        const int32_t* s16 = sum16 + g * nb + k;
        const __m128 fa = factors2<Ty>(b0, b0 + BB, f + g * 2 * nb + 2 * k, xd + g * nb + k);
        const __m256 s0 = _mm256_broadcastss_ps(fa);
        const __m256 s1 = _mm256_broadcastss_ps(kMin ? _mm_movehl_ps(fa, fa) : _mm_movehdup_ps(fa));
        acc0[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_isum<Ty>(q0, x, s16)), s0, acc0[g]);
        acc1[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_isum<Ty>(q1, x + 32, s16 + 1)), s1, acc1[g]);
        if constexpr (kMin) accm[g] = _mm_add_ps(accm[g], fa);
      }
    }
    if (k < nb) {
      const uint8_t* b0 = row + k * BB;
      const __m256i q0 = codes_of<Ty>(b0);
      for (int g = 0; g < G; ++g) {
        const __m128 fa = factors1<Ty>(b0, f + g * 2 * nb + 2 * k, xd + g * nb + k);
        acc0[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_isum<Ty>(q0, xq + g * cols + 32 * k, sum16 + g * nb + k)),
                                  _mm256_broadcastss_ps(fa), acc0[g]);
        if constexpr (kMin) accm[g] = _mm_add_ps(accm[g], fa);
      }
    }
    for (int g = 0; g < G; ++g) {
      float v = hsum(_mm256_add_ps(acc0[g], acc1[g]));
      if constexpr (kMin) v += _mm_cvtss_f32(_mm_movehdup_ps(accm[g])) + _mm_cvtss_f32(_mm_shuffle_ps(accm[g], accm[g], 0xFF));
      y[g * ldy + r] = v;
    }
  }
}

template <GgmlType Ty>
void gemv_i8_q5(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy, int64_t r0,
                int64_t r1) {
  const int64_t nb = w.cols / 32;
  thread_local std::vector<float> factors;
  thread_local std::vector<int32_t> sum16;
  factors.resize(static_cast<size_t>(2 * T * nb));
  sum16.resize(static_cast<size_t>(T * nb));
  for (int64_t t = 0; t < T; ++t)
    x_factors(xq + t * w.cols, xd + t * nb, nb, factors.data() + 2 * t * nb, sum16.data() + t * nb);
  const float* f = factors.data();
  const int32_t* s = sum16.data();
  int64_t t = 0;
  for (; t + 2 <= T; t += 2)
    rows_q5<Ty, 2>(w, xq + t * w.cols, xd + t * nb, f + 2 * t * nb, s + t * nb, y + t * ldy, ldy, r0, r1);
  if (t < T) rows_q5<Ty, 1>(w, xq + t * w.cols, xd + t * nb, f + 2 * t * nb, s + t * nb, y + t * ldy, ldy, r0, r1);
}

}  // namespace

bool detail::gemv_i8_q5_avx2(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                             int64_t r0, int64_t r1) {
  switch (w.type) {
    case GgmlType::Q5_0: gemv_i8_q5<GgmlType::Q5_0>(w, xq, xd, T, y, ldy, r0, r1); return true;
    case GgmlType::Q5_1: gemv_i8_q5<GgmlType::Q5_1>(w, xq, xd, T, y, ldy, r0, r1); return true;
    default: return false;
  }
}

}  // namespace qlora::kernels
