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
  const int64_t b = i / w.blocksize;
  float v = w.code[nibble_at(w.packed, i)] * w.block_absmax(b);
  if (w.block_min) v = v + w.block_min[b];  // (built with -ffp-contract=off: never fused)
  return round_to_dtype(v, w.round_to);
}

// The one-token GEMVs prefetch each row's weights into L2 this many bytes ahead of their reads.
// Decoding streams every weight from DRAM once per token, and on one thread the hardware
// prefetchers alone left these kernels well short of the read bandwidth (bench_generate's
// BM_GemvQ4I8 / BM_GemvQ8I8 with more copies than L3 holds, Zen 4: prefetching 4 KiB ahead
// into L1, or not at all, was 25-45% slower than 16 KiB ahead into L2).
inline constexpr int64_t kGemvPrefetchBytes = 16384;
inline void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }

inline int log2_int(int v) {
  int s = 0;
  while ((1 << s) < v) ++s;
  return s;
}

}  // namespace
}  // namespace qlora::kernels::detail
