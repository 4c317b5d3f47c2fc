#pragma once
// LoRA dropout masks: the multiplier of each input element (0 when dropped, 1 / (1 - p)
// kept), drawn so that rows fill in parallel and depend only on the call's seed.
#include <cstdint>

namespace qlora {

// Rows [t0, t1) of a (T, in) mask. Row t draws from its own xoshiro256** (LoraRng) seeded
// with call_seed ^ (0x9E3779B97F4A7C15 * (t + 1)): two 24-bit uniforms u per 64-bit draw,
// bits 8..31 for element i and bits 40..63 for element i + 1; an odd last element takes the
// top 24 bits of one more draw. mask[t * in + i] = u < p ? 0 : keep_scale.
// The AVX2 version runs four rows' generators side by side and writes the same bits.
void fill_dropout_mask(float* mask, int64_t t0, int64_t t1, int64_t in, uint64_t call_seed, float p,
                       float keep_scale);
// The scalar definition (tests compare the dispatched one against it).
void fill_dropout_mask_scalar(float* mask, int64_t t0, int64_t t1, int64_t in, uint64_t call_seed, float p,
                              float keep_scale);

namespace kernels {
void fill_dropout_mask_avx2(float* mask, int64_t t0, int64_t t1, int64_t in, uint64_t call_seed, float p,
                            float keep_scale);  // only when simd_level() >= AVX2
}  // namespace kernels

// The seed of row t's generator.
inline uint64_t dropout_row_seed(uint64_t call_seed, int64_t t) {
  return call_seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(t + 1));
}

}  // namespace qlora
