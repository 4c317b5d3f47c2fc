#pragma once
// The register-tiled int8 GEMM shared by the AVX2 and AVX-512 files (included only there,
// after <immintrin.h>, with the instruction set's ops in a traits struct V):
//   acc[t * ldacc + n] = sum_k a[t * lda + k] * w[n * ldw + k].
// Tiles of up to 4 weight rows x 2 tokens (or 4 rows x 1 token when decoding) keep the
// accumulators in registers so each widened code is reused; K tails run in scalar code.
#include <cstdint>

namespace qlora::detail {

template <class V, int R, int TT>
inline void gemm_i8_tile(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t K, int32_t* acc,
                         int64_t ldacc) {
  typename V::Acc s[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) s[r][t] = V::zero();
  int64_t k = 0;
  for (; k + V::kLanes <= K; k += V::kLanes) {
    decltype(V::widen(a)) av[TT];
    for (int t = 0; t < TT; ++t) av[t] = V::widen(a + t * lda + k);
    for (int r = 0; r < R; ++r) {
      const auto wv = V::widen(w + r * ldw + k);
      for (int t = 0; t < TT; ++t) s[r][t] = V::madd(s[r][t], av[t], wv);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      int32_t v = V::hsum(s[r][t]);
      for (int64_t j = k; j < K; ++j)
        v += static_cast<int32_t>(a[t * lda + j]) * static_cast<int32_t>(w[r * ldw + j]);
      acc[t * ldacc + r] = v;
    }
}

template <class V, int TT>
inline void gemm_i8_rows(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                         int32_t* acc, int64_t ldacc) {
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) gemm_i8_tile<V, 4, TT>(a, lda, w + n * ldw, ldw, K, acc + n, ldacc);
  for (; n < N; ++n) gemm_i8_tile<V, 1, TT>(a, lda, w + n * ldw, ldw, K, acc + n, ldacc);
}

template <class V>
inline void gemm_i8_tiled(const int8_t* a, int64_t lda, int64_t T, const int8_t* w, int64_t ldw, int64_t N,
                          int64_t K, int32_t* acc, int64_t ldacc) {
  // Panels of 32 weight rows (<= 32*K bytes, cache resident) against every token, so a long
  // prompt does not stream the whole matrix from memory once per token pair.
  constexpr int64_t kPanel = 32;
  for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
    const int64_t nn = N - n0 < kPanel ? N - n0 : kPanel;
    const int8_t* wp = w + n0 * ldw;
    int64_t t = 0;
    for (; t + 2 <= T; t += 2) gemm_i8_rows<V, 2>(a + t * lda, lda, wp, ldw, nn, K, acc + t * ldacc + n0, ldacc);
    for (; t < T; ++t) gemm_i8_rows<V, 1>(a + t * lda, lda, wp, ldw, nn, K, acc + t * ldacc + n0, ldacc);
  }
}

}  // namespace qlora::detail
