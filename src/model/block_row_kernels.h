#pragma once
// Products on a GGUF tensor's rows kept as the file's blocks: the types of more or fewer than
// 4 bits that llama.cpp multiplies as stored (Q5_0, Q5_1, Q5_K, Q6_K, Q3_K, Q2_K). Holding
// them as stored keeps the file's size (Q6_K 6.56 bits a value, Q5_K 5.5, Q3_K 3.44, Q2_K
// 2.63) and its exact values, where widening to Q8_0 (8.5 bits) rounded Q5_1 / Q5_K / Q6_K
// by up to half an 8-bit step and re-quantizing Q2_K / Q3_K to NF4 changed every value.
// Which types the loader holds this way is model/tensor_source.h's gguf_type_kept_as_blocks:
// Q2_K / Q3_K always, the others on 8-bit activations or with --gguf-compact (on float
// activations these kernels cost 1.3-1.9x the 8-bit GEMV per weight on Zen 3, so there those
// become 8-bit); bench_generate's BM_GemvBlocks / BM_GemvBlocksI8 measure them next to
// BM_GemvQ8 / BM_GemvQ8I8. On 8-bit activations (gemv_i8: --int8-activations, the CLI's default
// for a GGUF) the products are integer dot products as llama.cpp's: the 256-value types'
// (block_row_kernels_i8_avx2.cpp) beat the Q8_0 copy's, Q5_1 / Q5_0's
// (block_row_kernels_q5_i8_avx2.cpp) match it streamed from memory at fewer bytes.
//
// A value is exactly ggml's reference dequantization (formats/ggml_types.h
// dequantize_row_ref, which equals gguf-py's numpy dequantizer bit for bit): each kernel
// evaluates the same float32 expression (e.g. Q6_K's (d * sc) * q, Q5_K's d1 * q - m1),
// never fused. rows_to_f32 is therefore bit-identical at every level; the GEMV differs from
// the scalar definition only in the order of its float32 sums.
//
// Thread-safety: functions of their arguments only (the scalar GEMV's row buffer is
// thread_local); callers split rows across threads.
#include <cstdint>

#include "base/cpu_features.h"
#include "formats/ggml_types.h"

namespace qlora::kernels {

// The types these kernels take.
bool block_rows_supported(GgmlType t);

// `rows` rows of `cols` values, each row cols / block_size blocks of `type` (row_bytes bytes),
// rows back to back from `data`.
struct BlockRows {
  GgmlType type = GgmlType::Q6_K;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0, row_bytes = 0;
};

// The most tokens one gemv call takes (batched decoding).
inline constexpr int kBlockGemvMaxTokens = 8;

struct BlockRowKernels {
  // y[t * ldy + r] = sum_c W[r, c] * x[t * cols + c] for r in [r0, r1), t < T, 1 <= T <=
  // kBlockGemvMaxTokens; each block decoded once for all T tokens, and each token's sums in
  // the one-token order (so a token's result is the same bit for bit whatever T is).
  void (*gemv)(const BlockRows& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1);
  // out[(r - r0) * ld + c] = W[r, c] for r in [r0, r1), c < cols (ld >= cols): the values,
  // bit for bit dequantize_row_ref's.
  void (*rows_to_f32)(const BlockRows& w, int64_t r0, int64_t r1, float* out, int64_t ld);
  // gemv on 8-bit activations (--int8-activations, llama.cpp's products): y[t * ldy + r] =
  // sum_c W[r, c] * (xq[t * cols + c] * xd[t * (cols / 32) + c / 32]) for the same r, t ranges.
  // xq / xd come from kernels::LinearKernels::quantize_x_q8k for the 256-value types (llama.cpp's
  // Q8_K) or quantize_x_q8 for Q5_0 / Q5_1 (its Q8_0 / Q8_1); the SIMD kernels take integer
  // dot products of the codes with xq per 16 or 32 values and scale each once, the scalar
  // definition multiplies the reference values in float32: they agree up to float32 rounding
  // of the scales and sums. Each token's result is the same whatever T is. REQUIRES cols % 32 == 0;
  // for the 256-value types one scale per 256 values (xd's 8 entries of a block equal, as
  // quantize_x_q8k writes them: the SIMD kernels read the first).
  void (*gemv_i8)(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                  int64_t r0, int64_t r1);
};

const BlockRowKernels& scalar_block_row_kernels();

namespace detail {
// The AVX2 gemv_i8 for the 256-value types (Q2_K, Q3_K, Q5_K, Q6_K;
// model/block_row_kernels_i8_avx2.cpp): runs it and returns true, or returns false for any other
// type (the caller's generic kernel takes those). Only when cpu_simd_level() >= AVX2.
bool gemv_i8_kquant_avx2(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                         int64_t r0, int64_t r1);
// The same for Q5_0 / Q5_1 (model/block_row_kernels_q5_i8_avx2.cpp).
bool gemv_i8_q5_avx2(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                     int64_t r0, int64_t r1);
}  // namespace detail
const BlockRowKernels& avx2_block_row_kernels();  // only when cpu_simd_level() >= AVX2
const BlockRowKernels& block_row_kernels_for(SimdLevel level);
// block_row_kernels_for(simd_level()), chosen once. (AVX-512 CPUs run the AVX2 kernels.)
const BlockRowKernels& active_block_row_kernels();

}  // namespace qlora::kernels
