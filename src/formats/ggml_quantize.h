#pragma once
// float32 -> ggml quantized blocks, as llama.cpp's own quantizer writes them when no
// importance matrix is given (ggml-quants.c quantize_row_*_ref, which `llama-quantize`
// and llama_model_quantize use then): Q4_0, Q5_0, Q8_0, and the K-quants Q4_K and Q6_K
// that make up Q4_K_M. Every float operation is written in ggml's order (this file is
// compiled without contracting a*b+c into FMAs, as ggml's reference C is meant to be), so
// the bytes equal llama.cpp's: tests/formats/test_ggml_quantize.cpp compares them with
// bytes made by libggml itself (tools/make_ggml_quant_fixtures.py).
#include <cstdint>
#include <vector>

#include "formats/ggml_types.h"

namespace qlora {

// Quantizes x[0..n) (a row-major tensor, rows back to back) to `t`. REQUIRES n a multiple
// of t's block size (32, or 256 for the K-quants); throws Error for another type.
std::vector<uint8_t> quantize_ggml(GgmlType t, const float* x, int64_t n);

// The individual quantizers (n a multiple of the block size).
std::vector<uint8_t> quantize_q5_0(const float* x, int64_t n);
std::vector<uint8_t> quantize_q4_k(const float* x, int64_t n);
std::vector<uint8_t> quantize_q6_k(const float* x, int64_t n);

}  // namespace qlora
