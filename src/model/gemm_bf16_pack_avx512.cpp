// model/gemm_bf16.h pack_bf16_panel on AVX-512 (this file alone is compiled with the AVX-512
// flags: CMakeLists.txt *_avx512.cpp): per pair of W rows (k, k + 1), their 32 columns are
// loaded (masked past N) and interleaved into the tiles' VNNI pairs with one VPERMT2W per 16
// columns. Bit for bit pack_bf16_panel_scalar (tests/model/test_gemm_bf16.cpp).
#include <immintrin.h>

#include <algorithm>

#include "model/gemm_bf16_tiles.h"

namespace qlora::gemm_bf16_detail {

void pack_bf16_panel_avx512(const uint16_t* w, int64_t ldw, int64_t K, int64_t N, int64_t n0, int64_t Kp,
                            uint16_t* b) {
  alignas(64) uint16_t lo_idx[32], hi_idx[32];  // output 2c <- row k's column c, 2c + 1 <- row k + 1's
  for (int j = 0; j < 32; ++j) {
    lo_idx[j] = static_cast<uint16_t>((j % 2) * 32 + j / 2);
    hi_idx[j] = static_cast<uint16_t>((j % 2) * 32 + 16 + j / 2);
  }
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  const int64_t nn = std::min<int64_t>(32, N - n0);
  const __mmask32 cols = nn >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint32_t{1} << nn) - 1);
  for (int64_t k = 0; k < Kp; k += 2) {
    const __m512i a = k < K ? _mm512_maskz_loadu_epi16(cols, w + k * ldw + n0) : _mm512_setzero_si512();
    const __m512i c = k + 1 < K ? _mm512_maskz_loadu_epi16(cols, w + (k + 1) * ldw + n0) : _mm512_setzero_si512();
    uint16_t* dst = b + (k / kK) * kBPanelPerK + ((k % kK) / 2) * 32;
    _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(a, lo, c));
    _mm512_storeu_si512(dst + 16 * 32, _mm512_permutex2var_epi16(a, hi, c));
  }
}

}  // namespace qlora::gemm_bf16_detail
