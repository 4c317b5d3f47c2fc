// AVX2 + FMA + F16C linear kernels (used only when the CPU has them).
//
// Fused 4-bit GEMV as in the AVX-512 kernel, but AVX2 has no 16-entry float permute: the
// 16 scaled code values live in two registers (codes 0-7 and 8-15); vpermps looks the low
// three index bits up in both and bit 3 (shifted into the sign bit) blends the two.
#include <immintrin.h>

#include <algorithm>

#include "model/linear_kernels.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {
namespace {

using detail::q4_weight;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 round_vec(__m256 v, ComputeDType t) {
  switch (t) {
    case ComputeDType::F32: return v;
    case ComputeDType::BF16: {
      __m256i u = _mm256_castps_si256(v);
      __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      u = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
      return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
    }
    case ComputeDType::F16:
      return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  return v;
}

struct ScaledCode {
  __m256 lo, hi;
};

inline ScaledCode scaled_code(const Q4Matrix& w, __m256 code_lo, __m256 code_hi, int64_t block) {
  const __m256 a = _mm256_set1_ps(w.block_absmax(block));
  return {round_vec(_mm256_mul_ps(code_lo, a), w.round_to), round_vec(_mm256_mul_ps(code_hi, a), w.round_to)};
}

inline __m256 lookup(const ScaledCode& cb, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(cb.lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(cb.hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// Indices of 32 weights starting at packed byte p, 8 per register, in element order.
inline void decode32(const uint8_t* p, __m256i idx[4]) {
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  const __m128i lo = _mm_and_si128(bytes, mask);
  const __m128i e0 = _mm_unpacklo_epi8(hi, lo), e1 = _mm_unpackhi_epi8(hi, lo);
  idx[0] = _mm256_cvtepu8_epi32(e0);
  idx[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8));
  idx[2] = _mm256_cvtepu8_epi32(e1);
  idx[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8));
}

void gemv_q4_avx2(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  const __m256 code_lo = _mm256_loadu_ps(w.code), code_hi = _mm256_loadu_ps(w.code + 8);
  const int shift = detail::log2_int(w.blocksize);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * w.cols, e = s + w.cols;
    float sacc = 0.0f;
    int64_t i = s;
    const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
    for (; i < head_end; ++i) sacc += q4_weight(w, i) * x[i - s];
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t cur = -1;
    ScaledCode cb{code_lo, code_hi};
    for (; i + 32 <= e; i += 32) {
      const int64_t b = i >> shift;
      if (b != cur) {
        cur = b;
        cb = scaled_code(w, code_lo, code_hi, b);
      }
      __m256i idx[4];
      decode32(w.packed + (i >> 1), idx);
      const float* xp = x + (i - s);
      acc0 = _mm256_fmadd_ps(lookup(cb, idx[0]), _mm256_loadu_ps(xp), acc0);
      acc1 = _mm256_fmadd_ps(lookup(cb, idx[1]), _mm256_loadu_ps(xp + 8), acc1);
      acc0 = _mm256_fmadd_ps(lookup(cb, idx[2]), _mm256_loadu_ps(xp + 16), acc0);
      acc1 = _mm256_fmadd_ps(lookup(cb, idx[3]), _mm256_loadu_ps(xp + 24), acc1);
    }
    for (; i < e; ++i) sacc += q4_weight(w, i) * x[i - s];
    y[r] = hsum(_mm256_add_ps(acc0, acc1)) + sacc;
  }
}

template <int T>
void gemv_q4_multi_t(const Q4Matrix& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const __m256 code_lo = _mm256_loadu_ps(w.code), code_hi = _mm256_loadu_ps(w.code + 8);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t cols = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * cols, e = s + cols;
    float sacc[T] = {};
    int64_t i = s;
    const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
    for (; i < head_end; ++i) {
      const float wv = q4_weight(w, i);
      for (int t = 0; t < T; ++t) sacc[t] += wv * x[t * cols + (i - s)];
    }
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    int64_t cur = -1;
    ScaledCode cb{code_lo, code_hi};
    for (; i + 32 <= e; i += 32) {
      const int64_t b = i >> shift;
      if (b != cur) {
        cur = b;
        cb = scaled_code(w, code_lo, code_hi, b);
      }
      __m256i idx[4];
      decode32(w.packed + (i >> 1), idx);
      const float* xp = x + (i - s);
      for (int q = 0; q < 4; ++q) {
        const __m256 wq = lookup(cb, idx[q]);
        for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(wq, _mm256_loadu_ps(xp + t * cols + 8 * q), acc[t]);
      }
    }
    for (; i < e; ++i) {
      const float wv = q4_weight(w, i);
      for (int t = 0; t < T; ++t) sacc[t] += wv * x[t * cols + (i - s)];
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[t]) + sacc[t];
  }
}

void gemv_q4_multi_avx2(const Q4Matrix& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0,
                        int64_t r1) {
  switch (T) {
    case 1: gemv_q4_multi_t<1>(w, x, y, ldy, r0, r1); break;
    case 2: gemv_q4_multi_t<2>(w, x, y, ldy, r0, r1); break;
    case 3: gemv_q4_multi_t<3>(w, x, y, ldy, r0, r1); break;
    case 4: gemv_q4_multi_t<4>(w, x, y, ldy, r0, r1); break;
    case 5: gemv_q4_multi_t<5>(w, x, y, ldy, r0, r1); break;
    case 6: gemv_q4_multi_t<6>(w, x, y, ldy, r0, r1); break;
    case 7: gemv_q4_multi_t<7>(w, x, y, ldy, r0, r1); break;
    case 8: gemv_q4_multi_t<8>(w, x, y, ldy, r0, r1); break;
    default: break;
  }
}

void dequant_rows_q4_avx2(const Q4Matrix& w, int64_t r0, int64_t r1, float* out) {
  const __m256 code_lo = _mm256_loadu_ps(w.code), code_hi = _mm256_loadu_ps(w.code + 8);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t s = r0 * w.cols, e = r1 * w.cols;
  int64_t i = s;
  const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
  for (; i < head_end; ++i) out[i - s] = q4_weight(w, i);
  int64_t cur = -1;
  ScaledCode cb{code_lo, code_hi};
  for (; i + 32 <= e; i += 32) {
    const int64_t b = i >> shift;
    if (b != cur) {
      cur = b;
      cb = scaled_code(w, code_lo, code_hi, b);
    }
    __m256i idx[4];
    decode32(w.packed + (i >> 1), idx);
    for (int q = 0; q < 4; ++q) _mm256_storeu_ps(out + (i - s) + 8 * q, lookup(cb, idx[q]));
  }
  for (; i < e; ++i) out[i - s] = q4_weight(w, i);
}

template <class Load, class Scalar>
inline void gemv_dense(int64_t cols, const float* x, float* y, int64_t r0, int64_t r1, Load load, Scalar scalar) {
  const int64_t main = cols & ~int64_t{15};
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * cols;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t c = 0; c < main; c += 16) {
      acc0 = _mm256_fmadd_ps(load(base + c), _mm256_loadu_ps(x + c), acc0);
      acc1 = _mm256_fmadd_ps(load(base + c + 8), _mm256_loadu_ps(x + c + 8), acc1);
    }
    float sacc = 0.0f;
    for (int64_t c = main; c < cols; ++c) sacc += scalar(base + c) * x[c];
    y[r] = hsum(_mm256_add_ps(acc0, acc1)) + sacc;
  }
}

void gemv_f32_avx2(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  gemv_dense(
      cols, x, y, r0, r1, [w](int64_t i) { return _mm256_loadu_ps(w + i); }, [w](int64_t i) { return w[i]; });
}

void gemv_q8_avx2(const int8_t* q, const float* scales, int64_t cols, const float* x, float* y, int64_t r0,
                  int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* qb = q + r * cols + b * kQ8Block;
      const float* xb = x + b * kQ8Block;
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + 16));
      // The block's 32 products in 8 lanes, then its scale (one FMA per block).
      __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_loadu_ps(xb));
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xb + 8), s);
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), _mm256_loadu_ps(xb + 16), s);
      s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xb + 24), s);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(scales[r * nb + b]), s, acc);
    }
    y[r] = hsum(acc);
  }
}

void gemv_bf16_avx2(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  gemv_dense(
      cols, x, y, r0, r1,
      [w](int64_t i) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      },
      [w](int64_t i) {
        const uint32_t u = static_cast<uint32_t>(w[i]) << 16;
        float f;
        __builtin_memcpy(&f, &u, 4);
        return f;
      });
}

void gemv_f16_avx2(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  gemv_dense(
      cols, x, y, r0, r1,
      [w](int64_t i) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))); },
      [w](int64_t i) { return _cvtsh_ss(w[i]); });
}

// MT tokens x NR weight rows of dot products over K, 8 lanes at a time (scalar K tail).
template <int MT, int NR>
inline void dot_tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* y, int64_t ldy) {
  __m256 acc[MT][NR];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm256_loadu_ps(w + n * ldw + k);
    for (int m = 0; m < MT; ++m) {
      const __m256 a = _mm256_loadu_ps(x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_fmadd_ps(a, b[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NR; ++n) {
      float s = hsum(acc[m][n]);
      for (int64_t kk = k; kk < K; ++kk) s += x[m * ldx + kk] * w[n * ldw + kk];
      y[m * ldy + n] = s;
    }
}

template <int MT>
inline void dot_row_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t N, int64_t K, float* y,
                          int64_t ldy) {
  constexpr int NR = 3;
  int64_t n = 0;
  for (; n + NR <= N; n += NR) dot_tile<MT, NR>(x, ldx, w + n * ldw, ldw, K, y + n, ldy);
  for (; n < N; ++n) dot_tile<MT, 1>(x, ldx, w + n * ldw, ldw, K, y + n, ldy);
}

void gemm_rows_avx2(const float* x, int64_t ldx, int64_t T, const float* w, int64_t ldw, int64_t N, int64_t K,
                    float* y, int64_t ldy) {
  constexpr int MT = 3;
  int64_t t = 0;
  for (; t + MT <= T; t += MT) dot_row_block<MT>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy);
  switch (T - t) {
    case 2: dot_row_block<2>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy); break;
    case 1: dot_row_block<1>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy); break;
    default: break;
  }
}

float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_avx2(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace

const LinearKernels& avx2_linear_kernels() {
  static const LinearKernels k{gemv_q4_avx2,   gemv_q4_multi_avx2,   gemv_f32_avx2, gemv_bf16_avx2,
                               gemv_f16_avx2,  dequant_rows_q4_avx2, gemm_rows_avx2,
                               dot_avx2,       axpy_avx2,            gemv_q8_avx2};
  return k;
}

}  // namespace qlora::kernels
