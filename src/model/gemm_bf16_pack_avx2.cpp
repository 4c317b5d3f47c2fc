// AVX2 packing for the bf16 tile GEMM (model/gemm_bf16_tiles.h): float32 operands rounded to
// bf16 eight at a time and laid out as the tiles read them, bit-identical to the scalar
// reference (gemm_bf16.cpp pack_*_scalar). On an AMX CPU every weight element is packed once
// per product while the tiles spend ~0.2 ns of work on it at 256 tokens, so the packing must
// not be a scalar loop. Compiled with -mavx2 -mfma (CMakeLists.txt: *_avx2.cpp).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "model/gemm_bf16_tiles.h"

namespace qlora::gemm_bf16_detail {
namespace {

// Eight floats → their bf16 encodings in the low 16 bits of eight dwords: round to nearest
// even (adding 0x7FFF, +1 when the kept bit is odd), NaN kept quiet with its high payload
// (base/float_formats.cpp bf16_encode, lane by lane).
inline __m256i bf16_bits(__m256 v) {
  const __m256i x = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x0040));
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(rounded, quiet, is_nan);
}

// Sixteen floats → sixteen bf16 values in order (two bf16_bits, narrowed and un-interleaved).
inline __m256i bf16x16(const float* p) {
  const __m256i lo = bf16_bits(_mm256_loadu_ps(p)), hi = bf16_bits(_mm256_loadu_ps(p + 8));
  // packus works per 128-bit lane: [lo0-3 hi0-3 | lo4-7 hi4-7]; put the quarters in order.
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
}

// The low part of the split, for eight floats v whose bf16 bits are `hi` (low 16 bits of each
// dword): bf16(v - hi), 0 where v is not finite.
inline __m256i bf16_lo_bits(__m256 v, __m256i hi) {
  const __m256 hif = _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16));
  const __m256i lo = bf16_bits(_mm256_sub_ps(v, hif));
  const __m256i finite =
      _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7F800000), _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF)));
  return _mm256_and_si256(lo, finite);
}

// The high part of the split: a finite value past bf16's largest, which rounds to inf, is
// split at the largest (sign | 0x7F7F) instead (the scalar reference's rule).
inline __m256i split_hi(__m256 v, __m256i hi) {
  const __m256i abs_v = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i finite = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7F800000), abs_v);
  const __m256i hi_inf =
      _mm256_cmpeq_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(0x7FFF)), _mm256_set1_epi32(0x7F80));
  const __m256i clamped = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(0x8000)), _mm256_set1_epi32(0x7F7F));
  return _mm256_blendv_epi8(hi, clamped, _mm256_and_si256(finite, hi_inf));
}

inline void store_bf16x16(uint16_t* dst, __m256i lo8, __m256i hi8) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute4x64_epi64(_mm256_packus_epi32(lo8, hi8), 0xD8));
}

// dst (8 rows of dst_stride dwords) = the transpose of src (8 rows of src_stride dwords).
inline void transpose8x8(const uint32_t* src, int64_t src_stride, uint32_t* dst, int64_t dst_stride) {
  __m256i r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * src_stride));
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[i] (i < 4): column i of rows 0-3 in its low lane, column i + 4 in its high lane; r[i + 4]
  // the same of rows 4-7. Whole columns are a low lane and a low lane, or high and high.
  const __m256i c0 = _mm256_permute2x128_si256(r[0], r[4], 0x20), c4 = _mm256_permute2x128_si256(r[0], r[4], 0x31);
  const __m256i c1 = _mm256_permute2x128_si256(r[1], r[5], 0x20), c5 = _mm256_permute2x128_si256(r[1], r[5], 0x31);
  const __m256i c2 = _mm256_permute2x128_si256(r[2], r[6], 0x20), c6 = _mm256_permute2x128_si256(r[2], r[6], 0x31);
  const __m256i c3 = _mm256_permute2x128_si256(r[3], r[7], 0x20), c7 = _mm256_permute2x128_si256(r[3], r[7], 0x31);
  const __m256i cols[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
  for (int i = 0; i < 8; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i * dst_stride), cols[i]);
}

}  // namespace

void pack_a_rows_avx2(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp, int64_t m0, int64_t m1,
                      uint16_t* a, uint16_t* lo) {
  for (int64_t m = m0; m < m1; ++m) {
    uint16_t* row = a + m * Kp;
    uint16_t* lrow = lo ? lo + m * Kp : nullptr;
    if (m >= M) {
      std::memset(row, 0, static_cast<size_t>(Kp) * sizeof(uint16_t));
      if (lrow) std::memset(lrow, 0, static_cast<size_t>(Kp) * sizeof(uint16_t));
      continue;
    }
    const float* xr = x + m * ldx;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m256 v0 = _mm256_loadu_ps(xr + k), v1 = _mm256_loadu_ps(xr + k + 8);
      __m256i h0 = bf16_bits(v0), h1 = bf16_bits(v1);
      if (lrow) {
        h0 = split_hi(v0, h0);
        h1 = split_hi(v1, h1);
      }
      store_bf16x16(row + k, h0, h1);
      if (lrow) store_bf16x16(lrow + k, bf16_lo_bits(v0, h0), bf16_lo_bits(v1, h1));
    }
    if (k < K) {  // the row's tail through a zero-padded copy of 16
      alignas(32) float tail[16] = {};
      std::copy(xr + k, xr + K, tail);
      const __m256 v0 = _mm256_load_ps(tail), v1 = _mm256_load_ps(tail + 8);
      __m256i h0 = bf16_bits(v0), h1 = bf16_bits(v1);
      if (lrow) {
        h0 = split_hi(v0, h0);
        h1 = split_hi(v1, h1);
      }
      alignas(32) uint16_t out[16], lout[16];
      store_bf16x16(out, h0, h1);
      std::copy(out, out + (K - k), row + k);
      if (lrow) {
        store_bf16x16(lout, bf16_lo_bits(v0, h0), bf16_lo_bits(v1, h1));
        std::copy(lout, lout + (K - k), lrow + k);
      }
      k = K;
    }
    std::memset(row + K, 0, static_cast<size_t>(Kp - K) * sizeof(uint16_t));
    if (lrow) std::memset(lrow + K, 0, static_cast<size_t>(Kp - K) * sizeof(uint16_t));
  }
}

void pack_b_avx2(const float* w, int64_t ldw, bool nt, int64_t N, int64_t K, int64_t n0, int64_t Kp, uint16_t* b) {
  const int64_t steps = Kp / kK, nn = std::min(kBlock, N - n0);
  if (!nt) {
    // W (K, N): pair row p of a step interleaves W rows k = 2p and 2p + 1 over the tile's 16
    // columns: dword c = bf16(W[k][c]) | bf16(W[k + 1][c]) << 16.
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t t = 0; t < 2; ++t) {
        uint16_t* tile = b + s * kBPanelPerK + t * (16 * 32);
        const int64_t c0 = t * 16, cn = std::clamp<int64_t>(nn - c0, 0, 16);
        for (int64_t p = 0; p < 16; ++p) {
          const int64_t k = s * kK + 2 * p;
          uint32_t* out = reinterpret_cast<uint32_t*>(tile + p * 32);
          if (cn == 16 && k + 1 < K) {
            const float* r0 = w + k * ldw + n0 + c0;
            const float* r1 = r0 + ldw;
            for (int h = 0; h < 16; h += 8) {
              const __m256i e = bf16_bits(_mm256_loadu_ps(r0 + h));
              const __m256i o = _mm256_slli_epi32(bf16_bits(_mm256_loadu_ps(r1 + h)), 16);
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + h), _mm256_or_si256(e, o));
            }
            continue;
          }
          // An edge (past N or K): the same values one by one through a zero-padded copy.
          alignas(32) float r0[16] = {}, r1[16] = {};
          if (k < K) std::copy(w + k * ldw + n0 + c0, w + k * ldw + n0 + c0 + cn, r0);
          if (k + 1 < K) std::copy(w + (k + 1) * ldw + n0 + c0, w + (k + 1) * ldw + n0 + c0 + cn, r1);
          for (int h = 0; h < 16; h += 8) {
            __m256i e = bf16_bits(_mm256_load_ps(r0 + h)), o = _mm256_slli_epi32(bf16_bits(_mm256_load_ps(r1 + h)), 16);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + h), _mm256_or_si256(e, o));
          }
        }
      }
    return;
  }
  // W (N, K): each W row gives 16 pair dwords per step (its 32 values in order); a tile is the
  // transpose of 16 such rows (pair row p, column c = dword p of W row c).
  alignas(32) uint32_t rows[16][16];
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t k0 = s * kK;
    for (int64_t t = 0; t < 2; ++t) {
      for (int64_t c = 0; c < 16; ++c) {
        const int64_t col = t * 16 + c;
        uint16_t* dst = reinterpret_cast<uint16_t*>(rows[c]);
        if (col >= nn) {
          std::memset(rows[c], 0, sizeof rows[c]);
          continue;
        }
        const float* wr = w + (n0 + col) * ldw + k0;
        if (k0 + kK <= K) {
          store_bf16x16(dst, bf16_bits(_mm256_loadu_ps(wr)), bf16_bits(_mm256_loadu_ps(wr + 8)));
          store_bf16x16(dst + 16, bf16_bits(_mm256_loadu_ps(wr + 16)), bf16_bits(_mm256_loadu_ps(wr + 24)));
        } else {
          alignas(32) float tail[32] = {};
          std::copy(wr, wr + std::max<int64_t>(K - k0, 0), tail);
          store_bf16x16(dst, bf16_bits(_mm256_load_ps(tail)), bf16_bits(_mm256_load_ps(tail + 8)));
          store_bf16x16(dst + 16, bf16_bits(_mm256_load_ps(tail + 16)), bf16_bits(_mm256_load_ps(tail + 24)));
        }
      }
      uint32_t* tile = reinterpret_cast<uint32_t*>(b + s * kBPanelPerK + t * (16 * 32));
      // tile[p][c] = rows[c][p], in four 8 x 8 blocks.
      for (int bp = 0; bp < 16; bp += 8)
        for (int bc = 0; bc < 16; bc += 8) transpose8x8(&rows[bc][bp], 16, tile + bp * 16 + bc, 16);
    }
  }
}

}  // namespace qlora::gemm_bf16_detail
