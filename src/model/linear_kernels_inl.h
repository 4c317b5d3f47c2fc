#pragma once
// Internal helpers shared by the scalar and SIMD linear kernels (scalar heads and tails).
#include <cstdint>

#include "model/linear_kernels.h"

namespace qlora::kernels::detail {
// Internal linkage: these are compiled into the scalar, AVX2 and AVX-512 kernel files, each
// with its own instruction set, and one file's out-of-line copy must never serve another's
// callers (an AVX-512 copy called on an AVX2-only CPU would stop the process).
namespace {

inline int nibble_at(const uint8_t* packed, int64_t i) {
  const uint8_t b = packed[i >> 1];
  return (i & 1) ? (b & 0x0F) : (b >> 4);
}

// The dequantized weight at flat index i: the definition every kernel reproduces.
inline float q4_weight(const Q4Matrix& w, int64_t i) {
  return round_to_dtype(w.code[nibble_at(w.packed, i)] * w.block_absmax(i / w.blocksize), w.round_to);
}

inline int log2_int(int v) {
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

}  // namespace
}  // namespace qlora::kernels::detail
