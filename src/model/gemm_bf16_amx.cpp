// The tile GEMM of model/gemm_bf16_tiles.h on the AMX instructions. This file alone is
// compiled with -mamx-tile -mamx-bf16 (CMakeLists.txt: *_amx.cpp), and runs only where
// base/cpu_features.h amx_tiles_enabled() says the CPU and the OS allow the tiles; every
// other line of the driver is the one the emulation tests on any CPU.
#include <immintrin.h>

#include "model/gemm_bf16_tiles.h"

namespace qlora::gemm_bf16_detail {
namespace {

// GCC's tile intrinsics paste their tile number into the instruction text, so it must be a
// literal: each template dispatches to the literal it names. They are asm statements that do
// not tell the compiler which memory they read or write, so every load is preceded and every
// store followed by a compiler barrier: the packing's stores (and the driver's reads of the
// stored C tiles) cannot move across them, whatever gets inlined (LTO included).
#define QLORA_COMPILER_BARRIER() asm volatile("" ::: "memory")
#define QLORA_TILE_CASE(op, t, ...) \
  if constexpr (T == t) op(t, __VA_ARGS__)
struct AmxTiles {
  static void configure() {
    static const TileConfig cfg = full_tiles();
    QLORA_COMPILER_BARRIER();
    _tile_loadconfig(&cfg);
  }
  template <int T>
  static void zero() {
    static_assert(T >= 0 && T < 4);
    if constexpr (T == 0) _tile_zero(0);
    if constexpr (T == 1) _tile_zero(1);
    if constexpr (T == 2) _tile_zero(2);
    if constexpr (T == 3) _tile_zero(3);
  }
  template <int T>
  static void load(const void* p, int64_t stride) {
    static_assert(T >= 4 && T < 8);
    QLORA_COMPILER_BARRIER();
    QLORA_TILE_CASE(_tile_loadd, 4, p, stride);
    QLORA_TILE_CASE(_tile_loadd, 5, p, stride);
    QLORA_TILE_CASE(_tile_loadd, 6, p, stride);
    QLORA_TILE_CASE(_tile_loadd, 7, p, stride);
  }
  template <int T>
  static void store(void* p, int64_t stride) {
    static_assert(T >= 0 && T < 4);
    QLORA_TILE_CASE(_tile_stored, 0, p, stride);
    QLORA_TILE_CASE(_tile_stored, 1, p, stride);
    QLORA_TILE_CASE(_tile_stored, 2, p, stride);
    QLORA_TILE_CASE(_tile_stored, 3, p, stride);
    QLORA_COMPILER_BARRIER();
  }
  // The four products of a 32 x 32 block: C0 = A4·B6, C1 = A4·B7, C2 = A5·B6, C3 = A5·B7.
  template <int C, int A, int B>
  static void dp() {
    if constexpr (C == 0 && A == 4 && B == 6) _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1 && A == 4 && B == 7) _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2 && A == 5 && B == 6) _tile_dpbf16ps(2, 5, 6);
    else if constexpr (C == 3 && A == 5 && B == 7) _tile_dpbf16ps(3, 5, 7);
    else static_assert(C < 0, "a tile product the driver does not use");
  }
  static void release() { _tile_release(); }
};
#undef QLORA_TILE_CASE
#undef QLORA_COMPILER_BARRIER

}  // namespace

void amx_gemm(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y, int64_t ldy,
              bool accumulate, bool split_x) {
  tile_gemm<TileBlocks<AmxTiles>>(M, N, K, x, ldx, src, y, ldy, accumulate, split_x);
}

}  // namespace qlora::gemm_bf16_detail
