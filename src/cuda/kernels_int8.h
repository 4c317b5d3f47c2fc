#pragma once
// LLM.int8 (quant/int8.h: bitsandbytes 0.50.2 Linear8bitLt) on the GPU: the int8 product with
// its float32 epilogue and the outlier columns, and the weight dequantized for the input
// gradient, each the same float32 operations in the same order as the CPU's (no fused
// multiply-adds), so the results equal the CPU's: the int32 sums are exact in any order. The
// activation side (float16 rounding, outlier columns, per-token absmax and codes) is the
// CPU's quantize_int8_activations, run on the host by the caller (bitsandbytes' exact rules,
// a few microseconds per token next to the product). All pointers are device pointers.
// Compared with the CPU in tests/cuda/test_cuda_family_kernels.cpp.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/dtype.h"

namespace qlora::cuda {

// y (T, N) = float(sum_k ca[t, k] cb[n, k]) * (sca[t] * scb[n]) * 6.200124e-05f, + bias[n]
// (bias may be null), then for j = 0 .. n_out-1 in order: y += x[t, oc[j]] * wd[n, oc[j]] with
// wd = (float(cb[n, c]) * scb[n]) * (1/127)f; then rounded to `dtype`. ca (T, K) with the
// outlier columns zeroed, cb (N, K), x (T, K) the unrounded input; oc ascending column ids.
// QuantLinear::forward_int8's numbers.
void int8_linear_forward(float* y, const int8_t* ca, const float* sca, const int8_t* cb, const float* scb,
                         const float* bias, const float* x, const int32_t* oc, int64_t n_out, int64_t T, int64_t N,
                         int64_t K, ComputeDType dtype, cudaStream_t s);

// out (rows, cols) = float(cb) * (scb[r] * (1/127)f), rounded to `dtype`: dequantize_int8_rows
// followed by round_activations, as the training backward multiplies by it.
void int8_dequantize_rows(float* out, const int8_t* cb, const float* scb, int64_t rows, int64_t cols,
                          ComputeDType dtype, cudaStream_t s);

}  // namespace qlora::cuda
