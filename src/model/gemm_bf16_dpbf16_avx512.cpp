// The tile GEMM of model/gemm_bf16_tiles.h with each 32 x 32 block computed by AVX-512 BF16
// dot products (VDPBF16PS) instead of AMX tiles: for CPUs with AVX512_BF16 and no AMX (AMD
// Zen 4/5, Intel Cooper Lake). The driver, the packing and the packed layouts are the tiles'
// own: VDPBF16PS reads the same VNNI pairs as TDPBF16PS, so a B panel's pair row p is one
// 512-bit register per 16 output columns, and an A row's pair (k = 2p, 2p + 1) is one 32-bit
// broadcast. This file alone is compiled with the AVX-512 flags (CMakeLists.txt:
// *_avx512.cpp) and runs only where base/cpu_features.h simd_level() is AVX512, which
// requires AVX512_BF16.
//
// VDPBF16PS adds each lane's two products to the float32 sum in its own order (odd element
// first, as Intel defines it) with denormal inputs and outputs flushed, like TDPBF16PS; the
// sums of a block therefore differ from the emulated tiles' only in rounding order, which the
// tests bound (tests/model/test_gemm_bf16.cpp).
#include <immintrin.h>

#include "model/gemm_bf16_tiles.h"

namespace qlora::gemm_bf16_detail {
namespace {

// R rows x 32 columns of a block: 2R accumulators (R = 12: 24 of the 32 registers, plus the two
// B registers and a broadcast), over `steps` steps of 32 K values.
template <int R>
inline void rows_product(const uint16_t* a, const uint16_t* lo, int64_t lda, const uint16_t* b, int64_t steps,
                         float* c) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t s = 0; s < steps; ++s) {
    const uint16_t* bs = b + s * kBPanelPerK;
    const uint16_t* as = a + s * kK;
    const uint16_t* ls = lo ? lo + s * kK : nullptr;
    for (int p = 0; p < 16; ++p) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bs + p * 32);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bs + 16 * 32 + p * 32);
      for (int r = 0; r < R; ++r) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(as + r * lda + 2 * p));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
      }
      if (ls)
        for (int r = 0; r < R; ++r) {
          const __m512bh lv = (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(ls + r * lda + 2 * p));
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], lv, b0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], lv, b1);
        }
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_store_ps(c + r * kBlock, acc[r][0]);
    _mm512_store_ps(c + r * kBlock + 16, acc[r][1]);
  }
}

// The block driver's interface (gemm_bf16_tiles.h TileBlocks): no tile state to configure.
struct Dpbf16Blocks {
  static void configure() {}
  static void release() {}
  static void block(const uint16_t* a0, const uint16_t* lo, int64_t lda, const uint16_t* b, int64_t steps, float* c) {
    // 32 rows as 12 + 12 + 8: each pass reads the block's B panel once more (from L1/L2).
    rows_product<12>(a0, lo, lda, b, steps, c);
    rows_product<12>(a0 + 12 * lda, lo ? lo + 12 * lda : nullptr, lda, b, steps, c + 12 * kBlock);
    rows_product<8>(a0 + 24 * lda, lo ? lo + 24 * lda : nullptr, lda, b, steps, c + 24 * kBlock);
  }
};

}  // namespace

void dpbf16_gemm(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const BSource& src, float* y,
                 int64_t ldy, bool accumulate, bool split_x) {
  tile_gemm<Dpbf16Blocks>(M, N, K, x, ldx, src, y, ldy, accumulate, split_x);
}

}  // namespace qlora::gemm_bf16_detail
