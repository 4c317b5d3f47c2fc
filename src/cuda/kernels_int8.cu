// The LLM.int8 kernels (cuda/kernels_int8.h). Float operations are explicit round-to-nearest
// intrinsics in the CPU's order (quant_linear.cpp forward_int8, quant/int8.cpp), so nvcc
// cannot contract them into fused multiply-adds that the CPU does not do.
#include <algorithm>

#include "cuda/cuda_error.h"
#include "cuda/kernel_common.cuh"
#include "cuda/kernels_int8.h"

namespace qlora::cuda {

namespace {

constexpr float kMmDequantScale = 6.200124e-05f;  // quant/int8.h kInt8MmDequantScale
constexpr float kInv127 = 7.874015718698502e-3f;  // quant/int8.h kInv127
constexpr int kWarpsPerBlock = 8;

// One warp per output (t, n): the lanes sum strided products in int32 (exact in any order),
// a butterfly reduction, then lane 0 runs the epilogue and the outlier columns in order.
__global__ void int8_linear_kernel(float* y, const int8_t* ca, const float* sca, const int8_t* cb, const float* scb,
                                   const float* bias, const float* x, const int32_t* oc, int64_t n_out, int64_t T,
                                   int64_t N, int64_t K, int rnd) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t t = blockIdx.y;
  if (n >= N || t >= T) return;  // (whole warps leave together: n is per warp)
  const int8_t* a = ca + t * K;
  const int8_t* w = cb + n * K;
  int32_t acc = 0;
  for (int64_t k = lane; k < K; k += 32) acc += static_cast<int32_t>(a[k]) * static_cast<int32_t>(w[k]);
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane != 0) return;
  float v = __fmul_rn(__fmul_rn(static_cast<float>(acc), __fmul_rn(sca[t], scb[n])), kMmDequantScale);
  if (bias) v = __fadd_rn(v, bias[n]);
  const float* xr = x + t * K;
  for (int64_t j = 0; j < n_out; ++j) {
    const int64_t c = oc[j];
    const float wd = __fmul_rn(__fmul_rn(static_cast<float>(w[c]), scb[n]), kInv127);
    v = __fadd_rn(v, __fmul_rn(xr[c], wd));
  }
  y[t * N + n] = round_to(v, rnd);
}

__global__ void int8_dequant_kernel(float* out, const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                                    int rnd) {
  QLORA_GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols;
    out[i] = round_to(__fmul_rn(static_cast<float>(cb[i]), __fmul_rn(scb[r], kInv127)), rnd);
  }
}

}  // namespace

void int8_linear_forward(float* y, const int8_t* ca, const float* sca, const int8_t* cb, const float* scb,
                         const float* bias, const float* x, const int32_t* oc, int64_t n_out, int64_t T, int64_t N,
                         int64_t K, ComputeDType dtype, cudaStream_t s) {
  if (T <= 0 || N <= 0) return;
  // (the grid's y dimension holds at most 65535 tokens: longer inputs go in pieces)
  for (int64_t t0 = 0; t0 < T; t0 += kMaxGridY) {
    const int64_t nt = std::min(kMaxGridY, T - t0);
    const dim3 grid(static_cast<unsigned>((N + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(nt));
    int8_linear_kernel<<<grid, kWarpsPerBlock * 32, 0, s>>>(y + t0 * N, ca + t0 * K, sca + t0, cb, scb, bias,
                                                            x + t0 * K, oc, n_out, nt, N, K, round_code(dtype));
    check_launch("int8_linear_kernel");
  }
}

void int8_dequantize_rows(float* out, const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                          ComputeDType dtype, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  int8_dequant_kernel<<<ew_grid(rows * cols), 256, 0, s>>>(out, cb, scb, rows, cols, round_code(dtype));
  check_launch("int8_dequant_kernel");
}

}  // namespace qlora::cuda
