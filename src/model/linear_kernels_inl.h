#pragma once
// Internal helpers shared by the scalar and SIMD linear kernels (scalar heads and tails).
#include <cstdint>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "model/linear_kernels.h"

namespace qlora::kernels::detail {
// Internal linkage: these are compiled into the scalar, AVX2 and AVX-512 kernel files, each
// with its own instruction set, and one file's out-of-line copy must never serve another's
// callers (an AVX-512 copy called on an AVX2-only CPU would stop the process).
namespace {

inline int nibble_at(const uint8_t* packed, int64_t i) {
  const uint8_t b = packed[i >> 1];
  return (i & 1) ? (b & 0x0F) : (b >> 4);
}

// The dequantized weight at flat index i: the definition every kernel reproduces.
inline float q4_weight(const Q4Matrix& w, int64_t i) {
  const int64_t b = i / w.blocksize;
  float v = w.code[nibble_at(w.packed, i)] * w.block_absmax(b);
  if (w.has_min()) v = v + w.block_min_value(b);  // (built with -ffp-contract=off: never fused)
  return round_to_dtype(v, w.round_to);
}

inline int log2_int(int v) {
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

// The per-block minimums' part of a 4-bit x 8-bit-activation product (a GGUF Q4_1 / Q4_K
// weight kept as stored: weight = code * absmax + min): for rows [r0, r1),
// y[r] += sum over 32-value chunks c of block_min[block of c] * (xd[c] * sum of xq in c).
// Part of gemv_q4_i8's definition: every level adds it after its integer products (nothing
// when the weight has no minimums). REQUIRES cols % 32 == 0 and blocksize >= 32 (a chunk in
// one block; the minimums come from GGUF blocks of 32).
inline void add_block_min_i8(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1) {
  if (!w.has_min()) return;
  const int64_t chunks = w.cols / 32;
  thread_local std::vector<float> xs;
  if (static_cast<int64_t>(xs.size()) < chunks) xs.resize(static_cast<size_t>(chunks));
  for (int64_t c = 0; c < chunks; ++c) {
    int32_t s = 0;
    for (int i = 0; i < 32; ++i) s += xq[32 * c + i];
    xs[static_cast<size_t>(c)] = xd[c] * static_cast<float>(s);
  }
  const int shift = log2_int(w.blocksize);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * w.cols;
    float acc = 0.0f;
    int64_t c = 0;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    // (float32 or fp16 minimums: the row's are contiguous, one per chunk, 8 at a time; Q4_K's
    // coded ones take the loop below)
    if (w.blocksize == 32 && (w.block_min || w.block_min_f16)) {
      const float* m = w.block_min ? w.block_min + (s >> shift) : nullptr;
      const uint16_t* mh = w.block_min_f16 ? w.block_min_f16 + (s >> shift) : nullptr;
      __m256 a = _mm256_setzero_ps();
      for (; c + 8 <= chunks; c += 8) {
        const __m256 mv = m ? _mm256_loadu_ps(m + c)
                            : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mh + c)));
        a = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xs.data() + c), a);
      }
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
      acc = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
      // (the rest one at a time, the fp16 ones widened by F16C: the same values as
      // block_min_value's, whose software conversion showed at 2% of a decode of SmolLM2, whose
      // rows of 576 leave 2 of 18 chunks here)
      for (; c < chunks; ++c) acc += (m ? m[c] : _cvtsh_ss(mh[c])) * xs[static_cast<size_t>(c)];
    }
#endif
    for (; c < chunks; ++c) acc += w.block_min_value((s + 32 * c) >> shift) * xs[static_cast<size_t>(c)];
    y[r] += acc;
  }
}

// The one-token GEMVs prefetch each row's weights into L2 this many bytes ahead of their reads.
// Decoding streams every weight from DRAM once per token, and on one thread the hardware
// prefetchers alone left these kernels well short of the read bandwidth (bench_generate's
// BM_GemvQ4I8 / BM_GemvQ8I8 with more copies than L3 holds, Zen 4: prefetching 4 KiB ahead
// into L1, or not at all, was 25-45% slower than 16 KiB ahead into L2).
inline constexpr int64_t kGemvPrefetchBytes = 16384;
inline void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }


}  // namespace
}  // namespace qlora::kernels::detail
