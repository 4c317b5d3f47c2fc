#pragma once
// Internal: the per-instruction-set kernels behind the dispatched functions of
// quant/blockwise.h. Not part of the public API; tests call them directly to check every
// level the CPU has against the scalar references.
//
// Every kernel has the signature of its *_ref twin and the same contract: it treats
// [x, x+n) as a whole tensor of its own, so the dispatcher may hand it any range that
// starts on a block boundary (only the tensor's last block may be partial). Kernels are
// single-threaded and bit-identical to the references. The avx2 / avx512 kernels may only
// be called when cpu_simd_level() reports that level (they are compiled with its flags).
#include <cstdint>
#include <vector>

#include "base/cpu_features.h"
#include "quant/codebook.h"

namespace qlora::kernels {

// One instruction set's kernels, as plain function pointers.
struct BlockwiseKernels {
  void (*quantize_4bit)(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax);
  void (*dequantize_4bit_f32)(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                              float* out);
  void (*dequantize_4bit_bf16)(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                               uint16_t* out);
  void (*dequantize_4bit_f16)(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                              uint16_t* out);
  void (*quantize_8bit_blockwise)(const float* x, int64_t n, int blocksize, const float* code256, uint8_t* q,
                                  float* absmax);
  void (*dequantize_8bit_blockwise)(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                                    const float* code256, float* out);
};

// The nearest-code search of 4-bit quantization as bitsandbytes does it (torch.bucketize
// over float32 midpoints, see blockwise_ref.cpp): the 16 codes sorted ascending (stably),
// mid[i] = (sorted[i] + sorted[i+1]) / 2, and a scaled value s gets code order[k] with k
// the first i where mid[i] >= s, 15 when there is none (NaN included) — i.e. k counts the
// midpoints with !(mid >= s). mid[15] is +inf, a pad for table lookups. zero_code is the
// code of 0.0, which pads an odd element count.
struct Quant4Search {
  alignas(64) float mid[16];
  alignas(64) int32_t order[16];
  int32_t zero_code;
};
const Quant4Search& quant4_search(QuantType t);

// 8-bit quantization as libbitsandbytes_cpu does it (see quantize_8bit_blockwise_ref):
// v = clamp(x * (1/absmax), -1, 1) picks entry trunc(fma(65535, (v + 1) * 0.5, 0.5)) of a
// 65536-entry table of codes. This is that table for `code256`, built exactly as the
// reference builds it, cached per thread (rebuilt when the code changes), and followed by
// 4 zero bytes so that 32-bit gathers from any entry stay inside it. The pointer stays
// valid until the calling thread asks for the table of a different code.
const uint8_t* quant8_lut(const float* code256);
// The 65536-entry table itself, without padding or caching (blockwise_ref.cpp: the
// reference uses it directly, quant8_lut caches it).
std::vector<uint8_t> build_8bit_lut(const float* code256);

// The scalar references (the *_ref functions of quant/blockwise.h).
const BlockwiseKernels& scalar_kernels();
// Defined in blockwise_avx2.cpp / blockwise_avx512.cpp.
const BlockwiseKernels& avx2_kernels();
const BlockwiseKernels& avx512_kernels();
// The kernels of `level` (which the CPU must support).
const BlockwiseKernels& kernels_for(SimdLevel level);
// The kernels the dispatched functions use: kernels_for(simd_level()), chosen once.
const BlockwiseKernels& active_kernels();

// The dispatched functions with an explicit kernel set: large tensors are split on block
// boundaries across max_threads() OpenMP threads, small ones run on the calling thread.
// (The public functions of quant/blockwise.h are these with active_kernels(); benchmarks
// and tests use them to pin a level.)
void run_quantize_4bit(const BlockwiseKernels& k, const float* x, int64_t n, int blocksize, QuantType t,
                       uint8_t* packed, float* absmax);
void run_dequantize_4bit_f32(const BlockwiseKernels& k, const uint8_t* packed, const float* absmax, int64_t n,
                             int blocksize, QuantType t, float* out);
void run_dequantize_4bit_bf16(const BlockwiseKernels& k, const uint8_t* packed, const float* absmax, int64_t n,
                              int blocksize, QuantType t, uint16_t* out);
void run_dequantize_4bit_f16(const BlockwiseKernels& k, const uint8_t* packed, const float* absmax, int64_t n,
                             int blocksize, QuantType t, uint16_t* out);
void run_quantize_8bit_blockwise(const BlockwiseKernels& k, const float* x, int64_t n, int blocksize,
                                 const float* code256, uint8_t* q, float* absmax);
void run_dequantize_8bit_blockwise(const BlockwiseKernels& k, const uint8_t* q, const float* absmax, int64_t n,
                                   int blocksize, const float* code256, float* out);

}  // namespace qlora::kernels
