#pragma once
// How decode's attention row kernels (linear_kernels.h attn_scores / attn_weighted_sum and their
// 16-bit forms) read a KV cache row: float32 as it is, or 16-bit (a --kv-cache bf16 / f16
// cache) widened to float32 on its way into the registers, exactly. Shared by the AVX2 and
// AVX-512 kernel files, each compiling it with its own instruction set: internal linkage, as
// linear_kernels_inl.h explains.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

namespace qlora::kernels::detail {
namespace {

// The rows this far ahead are prefetched into L2: without it a decoded token's attention over
// 1152 cached positions (30 layers, past L3) took 7.8 ms on AVX-512, with it 5.2-5.4
// (bench_attention decode; 16-32 rows ahead into L1: 6.6-6.9).
constexpr int64_t kAttnPrefetchRows = 128;
inline void prefetch_row_l2(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

// Head sizes up to this many values take the last keys (count % 8) through the float32 path's
// dot product on a widened copy, so a 16-bit cache gives float32 attention's numbers bit for bit.
constexpr int64_t kWidenedRow = 1024;

struct RowsF32 {
  using T = float;
  static __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
  static float at(const float* p) { return *p; }
};
struct RowsBF16 {
  using T = uint16_t;
  static __m256 ld8(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static float at(const uint16_t* p) { return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(int(*p) << 16))); }
};
struct RowsF16 {
  using T = uint16_t;
  static __m256 ld8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static float at(const uint16_t* p) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(*p))); }
};

// q (n floats) · one cache row, by `dot` (the file's float32 dot product) on the row or, for a
// 16-bit row, on a widened copy of it (so the numbers are float32 attention's).
template <class L, class Dot>
float dot_row(const float* q, const typename L::T* row, int64_t n, Dot dot) {
  if constexpr (std::is_same_v<L, RowsF32>) {
    return dot(q, row, n);
  } else if (n <= kWidenedRow) {
    alignas(64) float w[kWidenedRow];
    for (int64_t i = 0; i < n; ++i) w[i] = L::at(row + i);
    return dot(q, w, n);
  } else {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; ++i) acc += q[i] * L::at(row + i);
    return acc;
  }
}

}  // namespace
}  // namespace qlora::kernels::detail
