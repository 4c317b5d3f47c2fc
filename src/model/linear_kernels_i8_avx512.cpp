// AVX-512 VNNI kernels for decoding on 8-bit activations (gemv_q4_i8, gemv_q8_i8; what they
// compute is in linear_kernels.h, beside the scalar definitions in linear_kernels.cpp).
//
// vpdpbusd multiplies 64 unsigned bytes by 64 signed bytes and adds each group of four
// products into one int32 lane, in one instruction; the AVX2 kernels need four (two vpsignb,
// vpmaddubsw, vpmaddwd) for 32 bytes. It needs one unsigned operand:
//  * 4-bit weights: the code book's int8 values are offset by 128 (q + 128 in [1, 255]), so a
//    single vpshufb gives unsigned weights, and the surplus 128 * sum(x) of each lane is
//    computed once per call from x and used as the accumulator's starting value;
//  * 8-bit weights (the Q8_0 head): |w| is the unsigned operand and x takes w's sign (a masked
//    subtraction, since AVX-512 has no vpsignb).
// The integer dot products are exact, so the results differ from the scalar definition only
// in the order of the float sums.
//
// 4-bit layout: 64 weights (32 packed bytes) per step. The low nibbles (odd elements) fill
// bytes 0-31 of the register and the high nibbles (even elements) bytes 32-63, so x is put in
// that order once per call (one vpermb per 64). Dword lane l then holds four elements of
// chunk (l / 4) % 2 of the 64, and the chunk's scale (d * Q8Codes::unscale) is laid out per
// lane the same way once per call. With blocksize >= 64 (a power of two) and rows of whole
// 64-weight steps, a step never straddles two absmax blocks; with blocksize 32 it holds two,
// one per chunk (step_absmax); rows that are not whole steps take the AVX2 kernel. Four rows
// run together, sharing x's loads, and every row's weights are prefetched into L2 well ahead
// (kGemvPrefetchBytes).
//
// The VNNI instructions are enabled for this file only through the target pragma; these
// kernels are handed out only after a run-time check of the CPU (avx512_linear_kernels).
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "model/linear_kernels.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {
namespace {

constexpr int64_t kStep = 64;  // weights per vpdpbusd
constexpr int kRows = 4;       // rows per pass
using detail::kGemvPrefetchBytes;
using detail::prefetch_l2;

// The per-call form of x for the 4-bit kernel: 64 bytes, 16 int32 and 16 floats per step.
struct StepX {
  const int8_t* x;       // x in the weights' register order
  const int32_t* start;  // -128 * (sum of each lane's four x values): vpdpbusd's starting value
  const float* scale;    // each lane's chunk scale: d * unscale
};

// x of one token in the step form, into xb (cols), sb and cb (cols / 64 * 16 each).
void fill_step_x(const int8_t* xq, const float* xd, float unscale, int64_t cols, int8_t* xb, int32_t* sb, float* cb) {
  const int64_t steps = cols / kStep;
  // Byte j < 32 takes element 2j + 1, byte 32 + j element 2j.
  alignas(64) int8_t order[64];
  for (int j = 0; j < 32; ++j) {
    order[j] = static_cast<int8_t>(2 * j + 1);
    order[32 + j] = static_cast<int8_t>(2 * j);
  }
  const __m512i perm = _mm512_load_si512(order);
  const __m512i u128 = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t g = 0; g < steps; ++g) {
    const __m512i v = _mm512_permutexvar_epi8(perm, _mm512_loadu_si512(xq + g * kStep));
    _mm512_storeu_si512(xb + g * kStep, v);
    const __m512i surplus = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u128, v);
    _mm512_storeu_si512(sb + g * 16, _mm512_sub_epi32(_mm512_setzero_si512(), surplus));
    // Lanes 4-7 and 12-15 hold the second chunk of the step.
    const __m512 s = _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(xd[2 * g] * unscale),
                                          _mm512_set1_ps(xd[2 * g + 1] * unscale));
    _mm512_storeu_ps(cb + g * 16, s);
  }
}

// T tokens' x in the step form, one after another (token t: x + t * cols, start and scale +
// t * cols / 4), in the calling thread's buffers.
StepX prepare_step_x(const int8_t* xq, const float* xd, float unscale, int64_t cols, int64_t T = 1) {
  thread_local std::vector<int8_t> xb;
  thread_local std::vector<int32_t> sb;
  thread_local std::vector<float> cb;
  const int64_t lanes = cols / kStep * 16;
  if (static_cast<int64_t>(xb.size()) < T * cols) {
    xb.resize(T * cols);
    sb.resize(T * lanes);
    cb.resize(T * lanes);
  }
  for (int64_t t = 0; t < T; ++t)
    fill_step_x(xq + t * cols, xd + t * (cols / 32), unscale, cols, xb.data() + t * cols, sb.data() + t * lanes,
                cb.data() + t * lanes);
  return {xb.data(), sb.data(), cb.data()};
}

// The absmax of blocks [b0, b0 + n) into a kernel-internal buffer (plain absmax: the matrix's
// own array). Double quantization is code * scale + offset with two roundings, as
// bitsandbytes (explicit-rounding intrinsics, so nothing fuses them into an FMA); 16 blocks per
// gather.
const float* block_absmax(const Q4Matrix& w, int64_t b0, int64_t n) {
  if (w.absmax) return w.absmax + b0;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  if (w.absmax_f16) {  // (a GGUF's fp16 scales as stored, widened exactly)
    for (int64_t k = 0; k < n; k += 16) {
      const int64_t m = std::min<int64_t>(16, n - k);
      const __mmask16 mask = static_cast<__mmask16>((1u << m) - 1);
      _mm512_mask_storeu_ps(buf.data() + k, mask, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.absmax_f16 + b0 + k)));
    }
    return buf.data();
  }
  constexpr int R = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 offset = _mm512_set1_ps(w.offset);
  for (int64_t k = 0; k < n;) {
    const int64_t b = b0 + k, nb = b / w.nested_blocksize;
    const int64_t seg_end = std::min(n, (nb + 1) * w.nested_blocksize - b0);  // same nested block
    const __m512 scale = _mm512_set1_ps(w.nested_absmax[nb]);
    for (; k < seg_end; k += 16) {
      const int64_t m = std::min<int64_t>(16, seg_end - k);
      const __mmask16 mask = static_cast<__mmask16>((1u << m) - 1);
      const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, w.absmax_q + b0 + k));
      // Two 8-wide gathers: on Zen 4 they cost far less than one 16-wide (measured, bench_generate).
      const __m256 lo = _mm256_i32gather_ps(w.nested_code, _mm512_castsi512_si256(q), 4);
      const __m256 hi = _mm256_i32gather_ps(w.nested_code, _mm512_extracti64x4_epi64(q, 1), 4);
      const __m512 code = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
      _mm512_mask_storeu_ps(buf.data() + k, mask,
                            _mm512_add_round_ps(_mm512_mul_round_ps(code, scale, R), offset, R));
    }
    k = seg_end;
  }
  return buf.data();
}

// The unsigned weights of one 64-weight step (packed bytes p) in register order.
inline __m512i step_weights(const uint8_t* p, __m512i table) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m512i nib = _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1);
  return _mm512_shuffle_epi8(table, _mm512_and_si512(nib, _mm512_set1_epi8(0x0F)));
}

// Each lane's block absmax for the step at flat index i: the one block of a step (blocksize
// >= 64), or with blocksize 32 (a GGUF's weights kept as stored) the step's two blocks, chunk
// 1's lanes (4-7, 12-15) taking the second.
inline __m512 step_absmax(const float* amax, int64_t i, int shift, int64_t b_first) {
  const int64_t b = (i >> shift) - b_first;
  if (shift >= 6) return _mm512_set1_ps(amax[b]);
  return _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(amax[b]), _mm512_set1_ps(amax[b + 1]));
}

template <int R>
inline void q4_rows(const Q4Matrix& w, const StepX& sx, __m512i table, const float* amax, int64_t b_first,
                    int shift, int64_t r, float* y) {
  const int64_t cols = w.cols, steps = cols / kStep;
  __m512 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm512_setzero_ps();
  for (int64_t g = 0; g < steps; ++g) {
    const __m512i x = _mm512_loadu_si512(sx.x + g * kStep);
    const __m512i start = _mm512_loadu_si512(sx.start + g * 16);
    const __m512 scale = _mm512_loadu_ps(sx.scale + g * 16);
    for (int k = 0; k < R; ++k) {
      const int64_t i = (r + k) * cols + g * kStep;
      prefetch_l2(w.packed + (i >> 1) + kGemvPrefetchBytes);
      const __m512i d = _mm512_dpbusd_epi32(start, step_weights(w.packed + (i >> 1), table), x);
      const __m512 s = _mm512_mul_ps(scale, step_absmax(amax, i, shift, b_first));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[k]);
    }
  }
  for (int k = 0; k < R; ++k) y[r + k] = _mm512_reduce_add_ps(acc[k]);
}

// Rows per absmax decode (one block_absmax call per group).
constexpr int64_t kRowsPerAbsmax = 16;

void gemv_q4_i8_vnni_body(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1);

void gemv_q4_i8_avx512_vnni(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0,
                            int64_t r1) {
  if (w.blocksize < 32 || w.cols % kStep != 0) {
    avx2_linear_kernels().gemv_q4_i8(w, xq, xd, y, r0, r1);  // (block minimums included)
    return;
  }
  gemv_q4_i8_vnni_body(w, xq, xd, y, r0, r1);
  detail::add_block_min_i8(w, xq, xd, y, r0, r1);
}

void gemv_q4_i8_vnni_body(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1) {
  const Q8Codes codes = q8_codes(w.code);
  alignas(16) uint8_t offset_codes[16];
  for (int k = 0; k < 16; ++k) offset_codes[k] = static_cast<uint8_t>(codes.q[k] + 128);
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(offset_codes)));
  const StepX sx = prepare_step_x(xq, xd, codes.unscale, w.cols);
  const int shift = detail::log2_int(w.blocksize);
  for (int64_t g0 = r0; g0 < r1; g0 += kRowsPerAbsmax) {
    const int64_t g1 = std::min(r1, g0 + kRowsPerAbsmax);
    const int64_t b_first = (g0 * w.cols) >> shift, b_last = (g1 * w.cols - 1) >> shift;
    const float* amax = block_absmax(w, b_first, b_last - b_first + 1);
    int64_t r = g0;
    for (; r + kRows <= g1; r += kRows) q4_rows<kRows>(w, sx, table, amax, b_first, shift, r, y);
    for (; r < g1; ++r) q4_rows<1>(w, sx, table, amax, b_first, shift, r, y);
  }
}

// q4_rows for T tokens: each row's step decoded once, then every token's product with the
// same instructions as one token's (so each value is the one-token kernel's, bit for bit).
template <int R, int T>
inline void q4_rows_multi(const Q4Matrix& w, const StepX& sx, __m512i table, const float* amax, int64_t b_first,
                          int shift, int64_t r, float* y, int64_t ldy) {
  const int64_t cols = w.cols, steps = cols / kStep, lanes = steps * 16;
  __m512 acc[R][T];
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) acc[k][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < steps; ++g) {
    __m512i wts[R];
    __m512 am[R];
    for (int k = 0; k < R; ++k) {
      const int64_t i = (r + k) * cols + g * kStep;
      prefetch_l2(w.packed + (i >> 1) + kGemvPrefetchBytes);
      wts[k] = step_weights(w.packed + (i >> 1), table);
      am[k] = step_absmax(amax, i, shift, b_first);
    }
    for (int t = 0; t < T; ++t) {
      const __m512i x = _mm512_loadu_si512(sx.x + t * cols + g * kStep);
      const __m512i start = _mm512_loadu_si512(sx.start + t * lanes + g * 16);
      const __m512 scale = _mm512_loadu_ps(sx.scale + t * lanes + g * 16);
      for (int k = 0; k < R; ++k) {
        const __m512i d = _mm512_dpbusd_epi32(start, wts[k], x);
        const __m512 s = _mm512_mul_ps(scale, am[k]);
        acc[k][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[k][t]);
      }
    }
  }
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) y[t * ldy + r + k] = _mm512_reduce_add_ps(acc[k][t]);
}

template <int T>
void q4_i8_tokens(const Q4Matrix& w, const StepX& sx, __m512i table, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  const int shift = detail::log2_int(w.blocksize);
  for (int64_t g0 = r0; g0 < r1; g0 += kRowsPerAbsmax) {
    const int64_t g1 = std::min(r1, g0 + kRowsPerAbsmax);
    const int64_t b_first = (g0 * w.cols) >> shift, b_last = (g1 * w.cols - 1) >> shift;
    const float* amax = block_absmax(w, b_first, b_last - b_first + 1);
    int64_t r = g0;
    for (; r + 2 <= g1; r += 2) q4_rows_multi<2, T>(w, sx, table, amax, b_first, shift, r, y, ldy);
    for (; r < g1; ++r) q4_rows_multi<1, T>(w, sx, table, amax, b_first, shift, r, y, ldy);
  }
}

void gemv_q4_i8_multi_vnni_body(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y,
                                int64_t ldy, int64_t r0, int64_t r1);

void gemv_q4_i8_multi_avx512_vnni(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y,
                                  int64_t ldy, int64_t r0, int64_t r1) {
  if (w.blocksize < 32 || w.cols % kStep != 0 || T < 1 || T > kMaxGemvTokens) {
    avx2_linear_kernels().gemv_q4_i8_multi(w, xq, xd, T, y, ldy, r0, r1);  // (block minimums included)
    return;
  }
  gemv_q4_i8_multi_vnni_body(w, xq, xd, T, y, ldy, r0, r1);
  for (int64_t t = 0; t < T; ++t)
    detail::add_block_min_i8(w, xq + t * w.cols, xd + t * (w.cols / kQ8Block), y + t * ldy, r0, r1);
}

void gemv_q4_i8_multi_vnni_body(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y,
                                int64_t ldy, int64_t r0, int64_t r1) {
  const Q8Codes codes = q8_codes(w.code);
  alignas(16) uint8_t offset_codes[16];
  for (int k = 0; k < 16; ++k) offset_codes[k] = static_cast<uint8_t>(codes.q[k] + 128);
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(offset_codes)));
  const StepX sx = prepare_step_x(xq, xd, codes.unscale, w.cols, T);
  switch (T) {
    case 1: return q4_i8_tokens<1>(w, sx, table, r0, r1, y, ldy);
    case 2: return q4_i8_tokens<2>(w, sx, table, r0, r1, y, ldy);
    case 3: return q4_i8_tokens<3>(w, sx, table, r0, r1, y, ldy);
    case 4: return q4_i8_tokens<4>(w, sx, table, r0, r1, y, ldy);
    case 5: return q4_i8_tokens<5>(w, sx, table, r0, r1, y, ldy);
    case 6: return q4_i8_tokens<6>(w, sx, table, r0, r1, y, ldy);
    case 7: return q4_i8_tokens<7>(w, sx, table, r0, r1, y, ldy);
    default: return q4_i8_tokens<8>(w, sx, table, r0, r1, y, ldy);
  }
}

// ---- Q8_0 rows ------------------------------------------------------------------------------

// Lanes 0-7 hold the first 32-value block of a step, lanes 8-15 the second.
inline __m512 two_block_scales(const float* s) {
  const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s)));
  return _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(two));
}

// sum over 64 bytes of w * x, as 16 int32 lanes (|w| unsigned, x with w's sign; w = -128
// gives |w| = 0x80 = 128 read unsigned, still exact).
inline __m512i dot_q8(__m512i w, __m512i x) {
  const __mmask64 neg = _mm512_movepi8_mask(w);
  const __m512i sx = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sx);
}

template <int R>
inline void q8_rows(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                    float* y, int64_t r) {
  const int64_t nb = cols / 32, steps = cols / kStep;
  __m512 acc[R];
  for (int k = 0; k < R; ++k) acc[k] = _mm512_setzero_ps();
  for (int64_t g = 0; g < steps; ++g) {
    const __m512i x = _mm512_loadu_si512(xq + g * kStep);
    const __m512 xs = two_block_scales(xd + 2 * g);
    for (int k = 0; k < R; ++k) {
      prefetch_l2(q + (r + k) * cols + g * kStep + kGemvPrefetchBytes);
      const __m512i d = dot_q8(_mm512_loadu_si512(q + (r + k) * cols + g * kStep), x);
      const __m512 s = _mm512_mul_ps(two_block_scales(scales + (r + k) * nb + 2 * g), xs);
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[k]);
    }
  }
  if (nb % 2 != 0) {  // a last block of 32: the low half of a register, the rest zero
    const int64_t b = nb - 1;
    const __m512i x = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b)));
    for (int k = 0; k < R; ++k) {
      const __m512i wv =
          _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + (r + k) * cols + 32 * b)));
      const __m512i d = dot_q8(wv, x);  // zero upper half: zero products
      const __m512 s = _mm512_set1_ps(scales[(r + k) * nb + b] * xd[b]);
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[k]);
    }
  }
  for (int k = 0; k < R; ++k) y[r + k] = _mm512_reduce_add_ps(acc[k]);
}

void gemv_q8_i8_avx512_vnni(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                            float* y, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) q8_rows<kRows>(q, scales, cols, xq, xd, y, r);
  for (; r < r1; ++r) q8_rows<1>(q, scales, cols, xq, xd, y, r);
}

// q8_rows for T tokens: each row's 64 weights loaded once for every token, each token's
// product with one token's instructions.
template <int R, int T>
inline void q8_rows_multi(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                          float* y, int64_t ldy, int64_t r) {
  const int64_t nb = cols / 32, steps = cols / kStep;
  __m512 acc[R][T];
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) acc[k][t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < steps; ++g) {
    __m512i wv[R];
    __m512 ws[R];
    for (int k = 0; k < R; ++k) {
      prefetch_l2(q + (r + k) * cols + g * kStep + kGemvPrefetchBytes);
      wv[k] = _mm512_loadu_si512(q + (r + k) * cols + g * kStep);
      ws[k] = two_block_scales(scales + (r + k) * nb + 2 * g);
    }
    for (int t = 0; t < T; ++t) {
      const __m512i x = _mm512_loadu_si512(xq + t * cols + g * kStep);
      const __m512 xs = two_block_scales(xd + t * nb + 2 * g);
      for (int k = 0; k < R; ++k) {
        const __m512i d = dot_q8(wv[k], x);
        const __m512 s = _mm512_mul_ps(ws[k], xs);
        acc[k][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[k][t]);
      }
    }
  }
  if (nb % 2 != 0) {  // a last block of 32, as q8_rows
    const int64_t b = nb - 1;
    for (int t = 0; t < T; ++t) {
      const __m512i x =
          _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * cols + 32 * b)));
      for (int k = 0; k < R; ++k) {
        const __m512i wv =
            _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + (r + k) * cols + 32 * b)));
        const __m512i d = dot_q8(wv, x);
        const __m512 s = _mm512_set1_ps(scales[(r + k) * nb + b] * xd[t * nb + b]);
        acc[k][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[k][t]);
      }
    }
  }
  for (int k = 0; k < R; ++k)
    for (int t = 0; t < T; ++t) y[t * ldy + r + k] = _mm512_reduce_add_ps(acc[k][t]);
}

template <int T>
void q8_i8_tokens(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd, float* y,
                  int64_t ldy, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) q8_rows_multi<2, T>(q, scales, cols, xq, xd, y, ldy, r);
  for (; r < r1; ++r) q8_rows_multi<1, T>(q, scales, cols, xq, xd, y, ldy, r);
}

void gemv_q8_i8_multi_avx512_vnni(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq,
                                  const float* xd, int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  switch (T) {
    case 1: return q8_i8_tokens<1>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    case 2: return q8_i8_tokens<2>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    case 3: return q8_i8_tokens<3>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    case 4: return q8_i8_tokens<4>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    case 5: return q8_i8_tokens<5>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    case 6: return q8_i8_tokens<6>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    case 7: return q8_i8_tokens<7>(q, scales, cols, xq, xd, y, ldy, r0, r1);
    default: return q8_i8_tokens<8>(q, scales, cols, xq, xd, y, ldy, r0, r1);
  }
}

}  // namespace

const Int8GemvKernels& avx512_vnni_int8_gemv_kernels() {
  static const Int8GemvKernels k{gemv_q4_i8_avx512_vnni, gemv_q8_i8_avx512_vnni, gemv_q4_i8_multi_avx512_vnni,
                                 gemv_q8_i8_multi_avx512_vnni};
  return k;
}

}  // namespace qlora::kernels

#pragma GCC pop_options
