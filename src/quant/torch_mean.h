#pragma once
// torch's float32 `tensor.sum()` / `tensor.mean()` on CPU, reproduced to the last bit.
//
// Double quantization needs offset = absmax.mean() exactly as bitsandbytes computes it,
// and torch sums float32 neither left to right nor in a plain tree: it runs a cascade of
// 4 accumulator levels over rows of 4 x 8-lane vectors (aten/src/ATen/native/cpu/
// SumKernel.cpp, the AVX2 kernel — which torch also uses on AVX-512 CPUs), then adds the
// scalar tail and the 8 lanes. Tensors of 32768 elements or more are split into one chunk
// per thread (at::parallel_for) whose partial sums are reduced the same way, so the bits
// depend on torch's thread count there; `num_threads` says which count to reproduce.
// Verified against torch 2.15 for 1..4 threads (tests/quant/test_quant_reference.cpp).
#include <cstdint>

namespace qlora {

// REQUIRES: n >= 1, num_threads >= 1. Single-threaded, deterministic.
float torch_cpu_sum_f32(const float* x, int64_t n, int num_threads = 1);
// torch_cpu_sum_f32(x, n) / float(n), as torch's mean divides.
float torch_cpu_mean_f32(const float* x, int64_t n, int num_threads = 1);

}  // namespace qlora
