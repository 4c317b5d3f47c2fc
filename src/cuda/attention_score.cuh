#pragma once
// What attention does to a query-key dot product before the softmax, on the device, in the
// CPU's order (model/ops.h attention_forward): times the scale, plus the ALiBi bias of the
// head at the key's position in its example, then the softcap. Shared by the inference
// (kernels.cu) and training (kernels_train.cu) attention kernels. Internal to src/cuda.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "cuda/kernels.h"

namespace qlora::cuda {
namespace {

// o with its scale resolved: 1/sqrt(HS) when not given (as the CPU does).
inline AttentionOptions resolved(AttentionOptions o, int64_t HS) {
  if (!(o.scale > 0.0f)) o.scale = 1.0f / std::sqrt(static_cast<float>(HS));
  return o;
}

__device__ __forceinline__ float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// AlibiBias::operator()(h, pos).
__device__ __forceinline__ float alibi_bias(const AttentionOptions& o, int64_t h, int64_t pos) {
  const float slope = o.alibi_slopes[h];
  if (!o.alibi_bf16_product) return __fmul_rn(slope, static_cast<float>(pos));
  return __fdiv_rn(bf16_round(__fmul_rn(bf16_round(slope), bf16_round(static_cast<float>(pos)))), o.alibi_divisor);
}

// The score of head h for a key `pos` positions after its example's first key, from the dot
// product q · k; o.scale already resolved (> 0).
__device__ __forceinline__ float attention_score(const AttentionOptions& o, float dot, int64_t h, int64_t pos) {
  float s = __fmul_rn(dot, o.scale);
  if (o.alibi_slopes) s = __fadd_rn(s, alibi_bias(o, h, pos));
  if (o.softcap > 0.0f) s = __fmul_rn(tanhf(__fdiv_rn(s, o.softcap)), o.softcap);
  return s;
}

}  // namespace
}  // namespace qlora::cuda
