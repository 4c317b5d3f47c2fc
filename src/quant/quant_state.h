#pragma once
// A 4-bit tensor and everything needed to dequantize it (bitsandbytes' QuantState), and
// its serialization in the layout transformers writes for a 4-bit Linear:
//   W.weight                              uint8 packed codes, shape [(n+1)/2, 1]
//   W.weight.absmax                       float32 per block, or uint8 when nested
//   W.weight.quant_map                    float32[16]
//   W.weight.nested_absmax                float32 per 256 absmax values   (nested only)
//   W.weight.nested_quant_map             float32[256]                    (nested only)
//   W.weight.quant_state.bitsandbytes__nf4 (or __fp4): uint8 bytes of JSON
//       {quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset}
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "quant/codebook.h"

namespace qlora {

class SafeTensorsFile;
class SafeTensorsWriter;

struct QuantState {
  QuantType type = QuantType::NF4;
  int blocksize = 64;
  ComputeDType dtype = ComputeDType::F32;  // the dtype dequantization produces
  std::vector<int64_t> shape;              // of the original (unquantized) tensor
  std::array<float, 16> code{};            // quant_map

  // Not nested: absmax holds one float32 per block -- or, for a GGUF's Q4_0 / Q4_1 / IQ4_NL
  // kept as stored, absmax_f16 holds its fp16 scale per block as the file has it (absmax then
  // empty; widened exactly wherever it is used).
  std::vector<float> absmax;
  std::vector<uint16_t> absmax_f16;

  // Nested (double quantization): absmax_q holds one uint8 per block; the float absmax is
  // nested_code[absmax_q[i]] * nested_absmax[i / nested_blocksize] + offset.
  bool nested = false;
  std::vector<uint8_t> absmax_q;
  std::vector<float> nested_absmax;
  std::array<float, 256> nested_code{};
  int nested_blocksize = 256;
  float offset = 0.0f;

  // A GGUF's 4-bit blocks kept as stored (ggml_source != ""; its GGML type name, "Q4_K"):
  // `code` is the type's own code book (Q4_0's -8..7, IQ4_NL's table, Q4_1's 0..15, ...),
  // blocksize its 32 values per scale, the scale of each block in absmax (or, Q4_K / IQ4_XS, nested:
  // the 6-bit code in absmax_q times d per 256 in nested_absmax, offset -0.0), and
  // for the types with a minimum per block (Q4_1, Q4_K) block_min the term added after the
  // product: value = code[q] * absmax[b] + block_min[b], multiplied and added separately as
  // ggml does (d * q + m), so every value is ggml's dequantization exactly. Not a
  // bitsandbytes state: write_4bit_to_safetensors refuses it.
  std::string ggml_source;
  std::vector<float> block_min;  // empty: no minimum (every bitsandbytes state)
  std::vector<uint16_t> block_min_f16;  // in place of block_min: Q4_1's fp16 minimum as stored
  // In place of block_min, Q4_K's form: block b's minimum is -(block_min_d[b / block_min_group] *
  // block_min_q[b]) -- its 6-bit code m times dmin (one per 256 values), the product negated,
  // which is ggml's d * q - dmin * m term for term.
  std::vector<uint8_t> block_min_q;
  std::vector<float> block_min_d;
  int block_min_group = 8;

  bool has_min() const { return !block_min.empty() || !block_min_f16.empty() || !block_min_q.empty(); }
  // One float32 minimum per block (widened from fp16 where stored so); empty when none.
  std::vector<float> block_mins() const;

  int64_t numel() const;
  int64_t blocks() const;
  // One float32 absmax per block, undoing double quantization when nested.
  std::vector<float> block_absmax() const;
  // Bytes of the quantization constants (absmax, nested state, block minimums), for
  // bits-per-parameter.
  int64_t constant_bytes() const;
};

struct Quantized4bit {
  std::vector<uint8_t> packed;  // (numel+1)/2 bytes
  QuantState state;
  // Storage bits per parameter: packed codes + constants (maps excluded, as they are shared).
  double bits_per_param() const;
};

// Quantizes `x` (numel = product of shape) exactly as bitsandbytes' quantize_4bit
// (compress_statistics = double_quant).
Quantized4bit quantize_tensor_4bit(const float* x, const std::vector<int64_t>& shape, QuantType type,
                                   int blocksize, bool double_quant, ComputeDType dtype);
// The same from codes and float32 absmax already made by quantize_4bit (e.g. block by block
// from a small buffer: model/random_model.h): packed ((numel+1)/2 bytes) and absmax (one per
// block) are taken, and double quantization applied when asked, exactly as
// quantize_tensor_4bit applies it (so quantizing in pieces gives the same result as whole).
// Throws Error when the sizes do not fit the shape and blocksize.
Quantized4bit make_quantized_4bit(std::vector<uint8_t> packed, std::vector<float> absmax,
                                  const std::vector<int64_t>& shape, QuantType type, int blocksize,
                                  bool double_quant, ComputeDType dtype);
// Dequantize the whole tensor into `out` (numel elements).
void dequantize_tensor_4bit(const Quantized4bit& q, float* out);
void dequantize_tensor_4bit(const Quantized4bit& q, uint16_t* out, DType out_dtype /* BF16 or F16 */);

// Adds W.weight and its quant-state tensors (names above) for `weight_name` ("...q_proj.weight").
void write_4bit_to_safetensors(SafeTensorsWriter& w, const std::string& weight_name, const Quantized4bit& q);
// True when `weight_name` in `f` is a bitsandbytes 4-bit weight (has a quant_state.* entry).
bool is_4bit_in_safetensors(const SafeTensorsFile& f, const std::string& weight_name);
// Reads it back, validating every piece against the JSON; throws Error naming the file
// and tensor on any inconsistency.
Quantized4bit read_4bit_from_safetensors(const SafeTensorsFile& f, const std::string& weight_name);

}  // namespace qlora
