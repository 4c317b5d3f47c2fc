#pragma once
// Blockwise absmax quantization kernels on raw buffers, bit-exact with bitsandbytes 0.50.
//
// 4-bit: the flat tensor x[0..n) is split into blocks of `blocksize` (32..4096, a power of
// two); absmax[b] = max |x| over block b (float32); each element is scaled (full blocks:
// x * (1/max(absmax,1e-38)); the partial last block: x / max(absmax,1e-38), and it stores
// the clamped absmax — both exactly as bitsandbytes' CPU path) and mapped to the nearest of
// the 16 codebook values, ties to the lower code. Element 2j goes to the HIGH nibble of
// packed[j], element 2j+1 to the LOW nibble; an odd tail is padded with the code of 0.0
// (nibble 7 for NF4, 0 for FP4).  packed has (n+1)/2 bytes, absmax has ceil(n/blocksize).
//
// 8-bit: the same with a 256-entry code (bitsandbytes' dynamic map), one byte per element;
// as in bitsandbytes' native kernel the code is looked up through a 65536-entry table built
// from code midpoints, which is not always the nearest code.
//
// The public functions dispatch at run time to the fastest kernel the CPU supports
// (AVX-512, AVX2, scalar; QLORA_SIMD caps it) and split large tensors across threads.
// The *_ref functions are the plain scalar definitions every fast kernel is tested against.
#include <cstdint>

#include "quant/codebook.h"

namespace qlora {

// ---- dispatched, multithreaded ----
void quantize_4bit(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax);
void dequantize_4bit_f32(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                         float* out);
void dequantize_4bit_bf16(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                          uint16_t* out);
void dequantize_4bit_f16(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                         uint16_t* out);
void quantize_8bit_blockwise(const float* x, int64_t n, int blocksize, const float* code256, uint8_t* q,
                             float* absmax);
void dequantize_8bit_blockwise(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                               const float* code256, float* out);

// ---- scalar references (single-threaded) ----
void quantize_4bit_ref(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax);
void dequantize_4bit_f32_ref(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                             float* out);
void dequantize_4bit_bf16_ref(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                              uint16_t* out);
void dequantize_4bit_f16_ref(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                             uint16_t* out);
void quantize_8bit_blockwise_ref(const float* x, int64_t n, int blocksize, const float* code256, uint8_t* q,
                                 float* absmax);
void dequantize_8bit_blockwise_ref(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                                   const float* code256, float* out);

inline int64_t num_blocks(int64_t n, int blocksize) { return (n + blocksize - 1) / blocksize; }
inline int64_t packed_4bit_bytes(int64_t n) { return (n + 1) / 2; }
// Throws Error unless blocksize is one of 32, 64, ..., 4096.
void check_blocksize(int blocksize, const char* where = "--blocksize");

}  // namespace qlora
