#pragma once
// Small pieces every CUDA kernel file uses: rounding a float32 to the compute dtype the way
// the CPU's round_to_dtype does (nearest-even), and the launch shape of element-wise kernels
// (a grid-stride loop over at most 4096 blocks of 256 threads). Internal to src/cuda.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "base/dtype.h"

namespace qlora::cuda {
namespace {

// Rounding codes passed to kernels (an int is cheaper to branch on than the enum class).
constexpr int kRound32 = 0, kRoundBF16 = 1, kRoundF16 = 2;

inline int round_code(ComputeDType t) {
  return t == ComputeDType::BF16 ? kRoundBF16 : t == ComputeDType::F16 ? kRoundF16 : kRound32;
}

__device__ __forceinline__ float round_to(float x, int code) {
  if (code == kRoundBF16) return __bfloat162float(__float2bfloat16_rn(x));
  if (code == kRoundF16) return __half2float(__float2half_rn(x));
  return x;
}

// The most blocks a launch may have in the grid's y dimension: kernels with one token per y
// index launch in pieces of this many tokens.
constexpr int64_t kMaxGridY = 65535;

// Blocks for an element-wise kernel over n elements (at least 1, at most 4096).
inline unsigned ew_grid(int64_t n) { return static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, 4096)); }

}  // namespace
}  // namespace qlora::cuda

// for (i over [0, n)) split across the whole grid.
#define QLORA_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
