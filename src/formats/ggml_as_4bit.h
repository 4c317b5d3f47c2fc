#pragma once
// A GGUF's 4-bit weights kept as stored: GGML blocks re-laid as the 4-bit weight the engine's
// kernels run (Quantized4bit: nibbles in bitsandbytes' order, a code book of 16 values, one
// scale per block of 32 and, for the types that have one, a minimum per block), without a
// second rounding. Every value equals ggml's dequantization of the block bit for bit.
//
//   Q4_0    code q - 8,            scale d                   (d * (q - 8))
//   Q4_1    code q,                scale d,        min m      (d * q + m)
//   Q4_K    code q,                scale d * sc_j, min -(dmin * m_j) per 32 (d*sc*q - dmin*m)
//   IQ4_NL  code kvalues_iq4nl[q], scale d
//   IQ4_XS  code kvalues_iq4nl[q], scale d * (ls_j - 32) per 32
//   MXFP4   code E2M1 doubled,     scale 2^(e - 128)
//
// The scales are float32 per 32 values, except Q4_K's and IQ4_XS's, kept as ggml has them: a
// 6-bit code per 32 and d per 256, in the double-quantized form (nested_code[sc] * d + (-0.0),
// exactly ggml's d * sc, a zero's sign included). Minimums are float32 per 32.
//
// Re-quantizing these to NF4 (what loading did before) rounds every weight a second time:
// on SmolLM2's Q4_1 file that raised Tiny Shakespeare's loss 3.952 -> 4.197 (bench/RESULTS.md).
// Other types (5-, 6-, 8-bit, the 2- and 3-bit ones) have no 4-bit form and are not taken.
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "base/dtype.h"
#include "formats/ggml_types.h"
#include "quant/quant_state.h"

namespace qlora {

// Whether ggml_blocks_as_4bit takes type t.
bool ggml_type_keeps_as_4bit(GgmlType t);

// The (rows, cols) tensor stored as type-t blocks in `data` (rows * cols / block_size blocks,
// rows of whole blocks) as a Quantized4bit of shape {rows, cols} whose dequantization gives
// ggml's values exactly; `dtype` is the compute dtype its products round to. nullopt when t
// is not one of the types above. Throws Error naming `where` when cols is not a multiple of
// the block size or the byte count does not match.
std::optional<Quantized4bit> ggml_blocks_as_4bit(GgmlType t, std::span<const uint8_t> data, int64_t rows, int64_t cols,
                                                 ComputeDType dtype, const std::string& where);

// QuantState::constant_bytes() of ggml_blocks_as_4bit's result for n values of type t (0 for
// a type it does not take): what the memory planner counts without converting anything.
int64_t ggml_kept_constant_bytes(GgmlType t, int64_t n);

// q's rows reordered: row r of the result is row src_row[r] of q (a GGUF's q/k rope
// permutation undone). REQUIRES whole blocks per row and src_row a permutation of rows.
Quantized4bit permute_4bit_rows(const Quantized4bit& q, std::span<const int64_t> src_row);

}  // namespace qlora
