#pragma once
// Scalar conversions between float32 and the 16- and 8-bit float formats.
// All float32 -> narrow conversions round to nearest, ties to even.
//   bfloat16: 1-8-7, IEEE-like with inf/NaN.  float16: IEEE binary16 1-5-10.
//   FP8 E4M3 (OCP "E4M3FN"): bias 7, no infinities, NaN only at S.1111.111, max 448.
//   FP8 E5M2: bias 15, IEEE infinities and NaN, max 57344.
// FP8 has two modes for values beyond the largest finite one (after rounding):
//   saturate = true  -> clamp to +-max (NaN stays NaN; +-inf becomes +-max)
//   saturate = false -> E4M3: NaN;  E5M2: +-inf  (as torch / the OCP spec's non-saturating mode)
#include <cstddef>
#include <cstdint>

#include "base/dtype.h"

namespace qlora {

float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float fp8_e4m3_to_f32(uint8_t v);
uint8_t f32_to_fp8_e4m3(float f, bool saturate);
float fp8_e5m2_to_f32(uint8_t v);
uint8_t f32_to_fp8_e5m2(float f, bool saturate);

// Largest finite value of a format, computed from its code table (not typed in).
float fp8_e4m3_max();
float fp8_e5m2_max();

// Bulk conversions for any float dtype (F64, F32, F16, BF16, F8_E4M3, F8_E5M2).
// Throws Error for a non-float dtype. FP8 targets saturate when `saturate` is set.
void convert_to_f32(DType src, const void* in, float* out, size_t n);
void convert_from_f32(DType dst, const float* in, void* out, size_t n, bool saturate = false);

}  // namespace qlora
