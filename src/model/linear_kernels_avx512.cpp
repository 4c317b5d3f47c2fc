// AVX-512 linear kernels (compiled with -mavx512*; used only when the CPU has them).
//
// Fused 4-bit GEMV: per 32 weights, 16 packed bytes are split into high/low nibbles,
// interleaved back into element order and widened to 32-bit indices; vpermps looks each
// index up in a register holding the 16 code values already multiplied by the block's
// absmax (and rounded to the compute dtype), and the result is FMA'd with x. Chunks of 32
// start at flat indices that are multiples of 32, so with blocksize >= 32 a chunk never
// straddles two blocks; the unaligned head and the tail of a row go through the scalar path.
// (GCC 12's false "may be used uninitialized" warnings from its own AVX-512 headers are
// silenced for *_avx512.cpp files in CMakeLists.txt.)
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "base/cpu_features.h"
#include "model/linear_kernels.h"
#include "model/attention_rows_inl.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {
namespace {

using detail::q4_weight;

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

inline __m512 round_vec(__m512 v, ComputeDType t) {
  switch (t) {
    case ComputeDType::F32: return v;
    case ComputeDType::BF16: {
      // Round to nearest even on the upper 16 bits (the values are finite products).
      __m512i u = _mm512_castps_si512(v);
      __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
      return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
    }
    case ComputeDType::F16:
      return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  return v;
}

// The block's absmax; for double quantization code * scale + offset with two roundings, as
// bitsandbytes (explicit-rounding intrinsics, so the compiler cannot fuse them into an FMA).
inline float absmax_of(const Q4Matrix& w, int64_t b) {
  if (w.absmax) return w.absmax[b];
  if (w.absmax_f16) return _cvtsh_ss(w.absmax_f16[b]);  // (exact)
  constexpr int R = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const int64_t nb = (w.nested_blocksize & (w.nested_blocksize - 1)) == 0
                         ? b >> __builtin_ctz(static_cast<unsigned>(w.nested_blocksize))
                         : b / w.nested_blocksize;
  const __m128 p = _mm_mul_round_ss(_mm_set_ss(w.nested_code[w.absmax_q[b]]), _mm_set_ss(w.nested_absmax[nb]), R);
  return _mm_cvtss_f32(_mm_add_round_ss(p, _mm_set_ss(w.offset), R));
}

// The block's 16 weight values: code * absmax (+ the block's minimum for a GGUF Q4_1 / Q4_K,
// added after the product as q4_weight does), rounded to the compute dtype.
inline __m512 scaled_code(const Q4Matrix& w, __m512 code, int64_t block) {
  __m512 v = _mm512_mul_ps(code, _mm512_set1_ps(absmax_of(w, block)));
  if (w.block_min) v = _mm512_add_ps(v, _mm512_set1_ps(w.block_min[block]));
  else if (w.block_min_f16) v = _mm512_add_ps(v, _mm512_set1_ps(_cvtsh_ss(w.block_min_f16[block])));
  else if (w.block_min_q)  // (Q4_K's: -(dmin * m), a product then a sign flip)
    v = _mm512_add_ps(v, _mm512_set1_ps(-(w.block_min_d[block / w.block_min_group] * static_cast<float>(w.block_min_q[block]))));
  return round_vec(v, w.round_to);
}

// Element-order nibble indices of 32 weights starting at packed byte p.
inline void decode32(const uint8_t* p, __m512i& i0, __m512i& i1) {
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  const __m128i lo = _mm_and_si128(bytes, mask);
  i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
  i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo));
}

// The 32 weights of a chunk at flat index i (a multiple of 32, inside one block) as float32,
// two registers of 16: the block's scaled code is computed once per block and kept.
class ScaledChunks {
 public:
  explicit ScaledChunks(const Q4Matrix& w)
      : w_(w), code_(_mm512_loadu_ps(w.code)), cb_(code_), shift_(detail::log2_int(w.blocksize)) {}
  void operator()(int64_t i, __m512& lo, __m512& hi) {
    const int64_t b = i >> shift_;
    if (b != cur_) {
      cur_ = b;
      cb_ = scaled_code(w_, code_, b);
    }
    __m512i i0, i1;
    decode32(w_.packed + (i >> 1), i0, i1);
    lo = _mm512_permutexvar_ps(i0, cb_);
    hi = _mm512_permutexvar_ps(i1, cb_);
  }

 private:
  const Q4Matrix& w_;
  __m512 code_, cb_;
  int shift_;
  int64_t cur_ = -1;
};

// ---- fast path for rows that are whole 32-weight chunks (cols % 32 == 0) -------------------
// The 16 packed bytes of a chunk are broadcast to all four 128-bit lanes of a register with
// one load; a per-lane variable shift (8k or 8k + 4 in 128-bit block k) brings byte 4j + k
// (j = dword within the block) to the low bits of lane 4k + j, and vpermps only reads the
// low 4 bits of each index. That yields the chunk's weights in a fixed permuted order with
// 2 shifts + 2 permutes per 32 weights (instead of unpacking and widening them), so x is
// permuted the same way once per call: lane L of the "high nibble" vector holds element
// 2 * (4 * (L % 4) + L / 4) of the chunk, the "low nibble" vector the element after it.
inline int chunk_element(int lane) { return 2 * (4 * (lane % 4) + lane / 4); }

void permute_x(const float* x, int64_t cols, float* xp) {
  for (int64_t c = 0; c < cols; c += 32)
    for (int L = 0; L < 16; ++L) {
      xp[c + L] = x[c + chunk_element(L)];
      xp[c + 16 + L] = x[c + chunk_element(L) + 1];
    }
}

struct ChunkDecoder {
  const __m512i shift_hi = _mm512_set_epi32(28, 28, 28, 28, 20, 20, 20, 20, 12, 12, 12, 12, 4, 4, 4, 4);
  const __m512i shift_lo = _mm512_set_epi32(24, 24, 24, 24, 16, 16, 16, 16, 8, 8, 8, 8, 0, 0, 0, 0);
  // Indices (garbage above bit 3) of the chunk's weights in permuted order.
  void operator()(const uint8_t* p, __m512i& hi, __m512i& lo) const {
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    hi = _mm512_srlv_epi32(b, shift_hi);
    lo = _mm512_srlv_epi32(b, shift_lo);
  }
};

template <int T>
void gemv_q4_aligned(const Q4Matrix& w, const float* xp, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const __m512 code = _mm512_loadu_ps(w.code);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t cols = w.cols;
  const ChunkDecoder decode;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * cols;
    __m512 acc0[T], acc1[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    int64_t cur = -1;
    __m512 cb = code;
    for (int64_t c = 0; c < cols; c += 32) {
      const int64_t b = (s + c) >> shift;
      if (b != cur) {
        cur = b;
        cb = scaled_code(w, code, b);
      }
      __m512i hi, lo;
      detail::prefetch_l2(w.packed + ((s + c) >> 1) + detail::kGemvPrefetchBytes);
      decode(w.packed + ((s + c) >> 1), hi, lo);
      const __m512 wh = _mm512_permutexvar_ps(hi, cb), wl = _mm512_permutexvar_ps(lo, cb);
      for (int t = 0; t < T; ++t) {
        acc0[t] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xp + t * cols + c), acc0[t]);
        acc1[t] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xp + t * cols + c + 16), acc1[t]);
      }
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(_mm512_add_ps(acc0[t], acc1[t]));
  }
}

// Aligned to 64 bytes: every 16-float load of it is then one cache line (cols is a multiple
// of 32), where a vector's 16-byte alignment made each one straddle two and halved the
// few-token kernels' speed (they load x once per FMA).
const float* permuted_x(const float* x, int64_t T, int64_t cols) {
  thread_local std::vector<float> buf;
  buf.resize(static_cast<size_t>(T * cols + 16));
  float* p = buf.data();
  p += (16 - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % 16) % 16;
  for (int64_t t = 0; t < T; ++t) permute_x(x + t * cols, cols, p + t * cols);
  return p;
}

void gemv_q4_avx512(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  if (w.cols % 32 == 0) {
    gemv_q4_aligned<1>(w, permuted_x(x, 1, w.cols), y, 0, r0, r1);
    return;
  }
  ScaledChunks chunk(w);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * w.cols, e = s + w.cols;
    float sacc = 0.0f;
    int64_t i = s;
    const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
    for (; i < head_end; ++i) sacc += q4_weight(w, i) * x[i - s];
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; i + 32 <= e; i += 32) {
      __m512 w0, w1;
      chunk(i, w0, w1);
      const float* xp = x + (i - s);
      acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp), acc0);
      acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp + 16), acc1);
    }
    for (; i < e; ++i) sacc += q4_weight(w, i) * x[i - s];
    y[r] = hsum(_mm512_add_ps(acc0, acc1)) + sacc;
  }
}

template <int T>
void gemv_q4_multi_t(const Q4Matrix& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  ScaledChunks chunk(w);
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
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (; i + 32 <= e; i += 32) {
      __m512 w0, w1;
      chunk(i, w0, w1);
      const float* xp = x + (i - s);
      for (int t = 0; t < T; ++t) {
        acc[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp + t * cols), acc[t]);
        acc[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp + t * cols + 16), acc[t]);
      }
    }
    for (; i < e; ++i) {
      const float wv = q4_weight(w, i);
      for (int t = 0; t < T; ++t) sacc[t] += wv * x[t * cols + (i - s)];
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[t]) + sacc[t];
  }
}

void gemv_q4_multi_avx512(const Q4Matrix& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0,
                          int64_t r1) {
  if (w.cols % 32 == 0 && T >= 1 && T <= 8) {
    const float* xp = permuted_x(x, T, w.cols);
    switch (T) {
      case 1: gemv_q4_aligned<1>(w, xp, y, ldy, r0, r1); break;
      case 2: gemv_q4_aligned<2>(w, xp, y, ldy, r0, r1); break;
      case 3: gemv_q4_aligned<3>(w, xp, y, ldy, r0, r1); break;
      case 4: gemv_q4_aligned<4>(w, xp, y, ldy, r0, r1); break;
      case 5: gemv_q4_aligned<5>(w, xp, y, ldy, r0, r1); break;
      case 6: gemv_q4_aligned<6>(w, xp, y, ldy, r0, r1); break;
      case 7: gemv_q4_aligned<7>(w, xp, y, ldy, r0, r1); break;
      default: gemv_q4_aligned<8>(w, xp, y, ldy, r0, r1); break;
    }
    return;
  }
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

void dequant_rows_q4_avx512(const Q4Matrix& w, int64_t r0, int64_t r1, float* out) {
  const int64_t s = r0 * w.cols, e = r1 * w.cols;
  int64_t i = s;
  const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
  for (; i < head_end; ++i) out[i - s] = q4_weight(w, i);
  ScaledChunks chunk(w);
  for (; i + 32 <= e; i += 32) {
    __m512 w0, w1;
    chunk(i, w0, w1);
    _mm512_storeu_ps(out + (i - s), w0);
    _mm512_storeu_ps(out + (i - s) + 16, w1);
  }
  for (; i < e; ++i) out[i - s] = q4_weight(w, i);
}

// LinearKernels::dequant_rows_q4_bf16: each 32-weight chunk decoded as dequant_rows_q4 does,
// converted to bf16 in one VCVTNE2PS2BF16 and stored as 64 bytes. Rows of whole chunks
// (cols % 32 == 0, blocksize >= 32); anything else on the scalar definition.
void dequant_rows_q4_bf16_avx512(const Q4Matrix& w, int64_t r0, int64_t r1, uint16_t* out, int64_t ld) {
  if (w.cols % 32 != 0 || w.blocksize < 32) {
    scalar_linear_kernels().dequant_rows_q4_bf16(w, r0, r1, out, ld);
    return;
  }
  ScaledChunks chunk(w);
  for (int64_t r = r0; r < r1; ++r) {
    uint16_t* o = out + (r - r0) * ld;
    for (int64_t c = 0; c < w.cols; c += 32) {
      __m512 lo, hi;
      chunk(r * w.cols + c, lo, hi);
      _mm512_storeu_si512(o + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// LinearKernels::pack_q4_bf16_panel: per pair of weight rows (k, k + 1), each row's 32 columns
// are decoded as dequant_rows_q4 decodes them (vpermps on the block's scaled code), both rows
// converted to bf16 in one VCVTNE2PS2BF16 (row k the low 16 lanes of each 16-column half, row
// k + 1 the high ones) and interleaved into the VNNI pairs with one VPERMW per 16 columns.
// Whole 32-column chunks of rows of whole chunks (cols % 32 == 0, blocksize >= 32: a chunk lies
// in one block); anything else on the scalar definition.
void pack_q4_bf16_panel_avx512(const Q4Matrix& w, int64_t n0, int64_t Kp, uint16_t* b) {
  if (w.cols % 32 != 0 || n0 % 32 != 0 || n0 + 32 > w.cols || w.blocksize < 32) {
    scalar_linear_kernels().pack_q4_bf16_panel(w, n0, Kp, b);
    return;
  }
  alignas(64) uint16_t pairs[32];  // output 2c <- row k's column c (lane c), 2c + 1 <- row k + 1's (lane 16 + c)
  for (int j = 0; j < 32; ++j) pairs[j] = static_cast<uint16_t>((j % 2) * 16 + j / 2);
  const __m512i pair_idx = _mm512_load_si512(pairs);
  ScaledChunks chunk(w);
  // Row k's 32 columns as float32 (zero past the rows).
  auto row = [&](int64_t k, __m512& lo, __m512& hi) {
    if (k >= w.rows)
      lo = hi = _mm512_setzero_ps();
    else
      chunk(k * w.cols + n0, lo, hi);
  };
  const int64_t k_end = w.rows + (w.rows & 1);
  for (int64_t k = 0; k < k_end; k += 2) {
    __m512 a_lo, a_hi, b_lo, b_hi;
    row(k, a_lo, a_hi);
    row(k + 1, b_lo, b_hi);
    uint16_t* dst = b + (k / 32) * 1024 + ((k % 32) / 2) * 32;
    const __m512i t0 = (__m512i)_mm512_cvtne2ps_pbh(b_lo, a_lo), t1 = (__m512i)_mm512_cvtne2ps_pbh(b_hi, a_hi);
    _mm512_storeu_si512(dst, _mm512_permutexvar_epi16(pair_idx, t0));
    _mm512_storeu_si512(dst + 512, _mm512_permutexvar_epi16(pair_idx, t1));
  }
  for (int64_t k = k_end; k < Kp; k += 2) {  // the padding rows
    uint16_t* dst = b + (k / 32) * 1024 + ((k % 32) / 2) * 32;
    _mm512_storeu_si512(dst, _mm512_setzero_si512());
    _mm512_storeu_si512(dst + 512, _mm512_setzero_si512());
  }
}

// The dense GEMV (gemv_dense: T = 1) for each of T tokens (x (T, cols)), each 32-value step of the
// row loaded once for all of them: every token's sum in the one-token order, bit for bit. Dense
// rows: Load(ptr, mask) returns 16 floats (masked-off lanes zero).
template <int T, class Load>
void gemv_dense_tokens(int64_t cols, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1, Load load) {
  const int64_t main = cols & ~int64_t{31};
  const int64_t rem = cols - main;
  const __mmask16 m0 = rem >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << rem) - 1);
  const __mmask16 m1 = rem > 16 ? static_cast<__mmask16>((1u << (rem - 16)) - 1) : 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * cols;
    __m512 acc0[T], acc1[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    for (int64_t c = 0; c < main; c += 32) {
      const __m512 w0 = load(base + c, __mmask16(0xFFFF)), w1 = load(base + c + 16, __mmask16(0xFFFF));
      for (int t = 0; t < T; ++t) {
        acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * cols + c), acc0[t]);
        acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * cols + c + 16), acc1[t]);
      }
    }
    if (rem) {
      const __m512 w0 = load(base + main, m0);
      for (int t = 0; t < T; ++t) acc0[t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, x + t * cols + main), acc0[t]);
      if (m1) {
        const __m512 w1 = load(base + main + 16, m1);
        for (int t = 0; t < T; ++t)
          acc1[t] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, x + t * cols + main + 16), acc1[t]);
      }
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(_mm512_add_ps(acc0[t], acc1[t]));
  }
}

template <class Load>
inline void gemv_dense(int64_t cols, const float* x, float* y, int64_t r0, int64_t r1, Load load) {
  gemv_dense_tokens<1>(cols, x, y, 0, r0, r1, load);
}

void gemv_f32_avx512(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  gemv_dense(cols, x, y, r0, r1, [w](int64_t i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w + i); });
}

void gemv_q8_avx512(const int8_t* q, const float* scales, int64_t cols, const float* x, float* y, int64_t r0,
                    int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* qb = q + r * cols + b * kQ8Block;
      const float* xb = x + b * kQ8Block;
      detail::prefetch_l2(qb + detail::kGemvPrefetchBytes);
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + 16));
      __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), _mm512_loadu_ps(xb));
      s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), _mm512_loadu_ps(xb + 16), s);
      acc = _mm512_fmadd_ps(_mm512_set1_ps(scales[r * nb + b]), s, acc);
    }
    y[r] = hsum(acc);
  }
}

// gemv_q8_avx512's instructions for each of T tokens, the block's weights widened once.
template <int T>
void gemv_q8_tokens_avx512(const int8_t* q, const float* scales, int64_t cols, const float* x, float* y,
                           int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* qb = q + r * cols + b * kQ8Block;
      detail::prefetch_l2(qb + detail::kGemvPrefetchBytes);
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qb))));
      const __m512 w1 =
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + 16))));
      const __m512 sc = _mm512_set1_ps(scales[r * nb + b]);
      for (int t = 0; t < T; ++t) {
        const float* xb = x + t * cols + b * kQ8Block;
        __m512 s = _mm512_mul_ps(w0, _mm512_loadu_ps(xb));
        s = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), s);
        acc[t] = _mm512_fmadd_ps(sc, s, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[t]);
  }
}

// f(std::integral_constant<int, T>) for T in 1..8 (more: 8), so a kernel templated on its token
// count is picked at run time.
template <class F>
void with_token_count(int64_t T, F f) {
  switch (T) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

void gemv_q8_multi_avx512(const int8_t* q, const float* scales, int64_t cols, const float* x, int64_t T, float* y,
                          int64_t ldy, int64_t r0, int64_t r1) {
  with_token_count(T, [&](auto n) { gemv_q8_tokens_avx512<decltype(n)::value>(q, scales, cols, x, y, ldy, r0, r1); });
}

// A 16-value step of bf16 / fp16 rows widened to float32 (masked lanes 0).
inline __m512 load_bf16(const uint16_t* w, int64_t i, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, w + i);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_f16(const uint16_t* w, int64_t i, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i)); }

void gemv_bf16_avx512(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  gemv_dense(cols, x, y, r0, r1, [w](int64_t i, __mmask16 m) { return load_bf16(w, i, m); });
}

void gemv_f16_avx512(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  gemv_dense(cols, x, y, r0, r1, [w](int64_t i, __mmask16 m) { return load_f16(w, i, m); });
}

void gemv_h16_multi_avx512(const uint16_t* w, bool bf16, int64_t cols, const float* x, int64_t T, float* y,
                           int64_t ldy, int64_t r0, int64_t r1) {
  with_token_count(T, [&](auto n) {
    constexpr int N = decltype(n)::value;
    if (bf16)
      gemv_dense_tokens<N>(cols, x, y, ldy, r0, r1, [w](int64_t i, __mmask16 m) { return load_bf16(w, i, m); });
    else
      gemv_dense_tokens<N>(cols, x, y, ldy, r0, r1, [w](int64_t i, __mmask16 m) { return load_f16(w, i, m); });
  });
}

// MT tokens x NR weight rows of dot products over K, 16 lanes at a time.
template <int MT, int NR>
inline void dot_tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* y, int64_t ldy) {
  __m512 acc[MT][NR];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_loadu_ps(w + n * ldw + k);
    for (int m = 0; m < MT; ++m) {
      const __m512 a = _mm512_loadu_ps(x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(a, b[n], acc[m][n]);
    }
  }
  if (k < K) {
    const __mmask16 mk = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 b[NR];
    for (int n = 0; n < NR; ++n) b[n] = _mm512_maskz_loadu_ps(mk, w + n * ldw + k);
    for (int m = 0; m < MT; ++m) {
      const __m512 a = _mm512_maskz_loadu_ps(mk, x + m * ldx + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(a, b[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NR; ++n) y[m * ldy + n] = hsum(acc[m][n]);
}

template <int MT>
inline void dot_row_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t N, int64_t K, float* y,
                          int64_t ldy) {
  constexpr int NR = 4;
  int64_t n = 0;
  for (; n + NR <= N; n += NR) dot_tile<MT, NR>(x, ldx, w + n * ldw, ldw, K, y + n, ldy);
  for (; n < N; ++n) dot_tile<MT, 1>(x, ldx, w + n * ldw, ldw, K, y + n, ldy);
}

void gemm_rows_avx512(const float* x, int64_t ldx, int64_t T, const float* w, int64_t ldw, int64_t N, int64_t K,
                      float* y, int64_t ldy) {
  constexpr int MT = 4;
  int64_t t = 0;
  for (; t + MT <= T; t += MT) dot_row_block<MT>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy);
  switch (T - t) {
    case 3: dot_row_block<3>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy); break;
    case 2: dot_row_block<2>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy); break;
    case 1: dot_row_block<1>(x + t * ldx, ldx, w, ldw, N, K, y + t * ldy, ldy); break;
    default: break;
  }
}

float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return hsum(_mm512_add_ps(acc0, acc1));
}

void axpy_avx512(float alpha, const float* x, float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// ---- decode's attention rows: each key and value row loaded once for several heads ----------
// The query heads of a GQA group read the same key and value rows; one head at a time, each
// row was loaded (from L2 or DRAM) once per head. These kernels take up to kScoreHeads /
// kSumHeads heads per pass over the rows, with every head's sums in registers (AVX-512 gives 32
// vector registers: 8 keys x 3 heads of 8-float partial dot products, or 6 heads x 64 floats of
// weighted sums).
constexpr int64_t kScoreHeads = 3, kSumHeads = 6;
using detail::kAttnPrefetchRows;
using detail::prefetch_row_l2;
using detail::RowsBF16;
using detail::RowsF16;
using detail::RowsF32;

// The 16-float masked loads of the weighted sums (the row readers' 512-bit form).
inline __m512 ld16(RowsF32, __mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 ld16(RowsBF16, __mmask16 m, const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
inline __m512 ld16(RowsF16, __mmask16 m, const uint16_t* p) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

// Lane u: the sum of the 8 lanes of a[u] (transpose-and-add).
inline __m256 sum8x8(const __m256* a) {
  const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

template <int G, class L>
void attn_scores_group(const float* q, const typename L::T* k, int64_t ld, int64_t count, int64_t n, float scale,
                       float* scores, int64_t lds) {
  constexpr int64_t kLine = 64 / sizeof(typename L::T);  // values per cache line
  const int64_t main = n & ~int64_t{7};
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    __m256 a[G][8];
    for (int h = 0; h < G; ++h)
      for (int u = 0; u < 8; ++u) a[h][u] = _mm256_setzero_ps();
    for (int u = 0; u < 8; ++u)
      for (int64_t i = 0; i < n; i += kLine) prefetch_row_l2(k + (j + kAttnPrefetchRows + u) * ld + i);
    for (int64_t i = 0; i < main; i += 8) {
      __m256 qv[G];
      for (int h = 0; h < G; ++h) qv[h] = _mm256_loadu_ps(q + h * n + i);
      for (int u = 0; u < 8; ++u) {
        const __m256 kv = L::ld8(k + (j + u) * ld + i);
        for (int h = 0; h < G; ++h) a[h][u] = _mm256_fmadd_ps(qv[h], kv, a[h][u]);
      }
    }
    for (int h = 0; h < G; ++h) {
      __m256 sum = sum8x8(a[h]);
      if (main < n) {  // head sizes that are not a multiple of 8
        alignas(32) float t[8];
        for (int u = 0; u < 8; ++u) {
          float acc = 0.0f;
          for (int64_t i = main; i < n; ++i) acc += q[h * n + i] * L::at(k + (j + u) * ld + i);
          t[u] = acc;
        }
        sum = _mm256_add_ps(sum, _mm256_load_ps(t));
      }
      _mm256_storeu_ps(scores + h * lds + j, _mm256_mul_ps(sum, vscale));
    }
  }
  for (; j < count; ++j)
    for (int h = 0; h < G; ++h) scores[h * lds + j] = detail::dot_row<L>(q + h * n, k + j * ld, n, dot_avx512) * scale;
}

template <int G, class L>
void attn_sum_group(const float* p, int64_t ldp, const typename L::T* v, int64_t ld, int64_t count, int64_t n,
                    float* o) {
  for (int64_t i = 0; i < n; i += 64) {  // 64 output floats (4 registers) per pass
    __mmask16 m[4];
    for (int u = 0; u < 4; ++u) {
      const int64_t r = n - i - 16 * u;
      m[u] = r >= 16 ? __mmask16(0xFFFF) : r <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << r) - 1);
    }
    __m512 acc[G][4];
    for (int h = 0; h < G; ++h)
      for (int u = 0; u < 4; ++u) acc[h][u] = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; ++j) {
      const typename L::T* vj = v + j * ld + i;
      for (int u = 0; u < 4; ++u) prefetch_row_l2(vj + kAttnPrefetchRows * ld + 16 * u);
      __m512 vv[4];
      for (int u = 0; u < 4; ++u) vv[u] = ld16(L{}, m[u], vj + 16 * u);
      for (int h = 0; h < G; ++h) {
        const __m512 pb = _mm512_set1_ps(p[h * ldp + j]);
        for (int u = 0; u < 4; ++u) acc[h][u] = _mm512_fmadd_ps(pb, vv[u], acc[h][u]);
      }
    }
    for (int h = 0; h < G; ++h)
      for (int u = 0; u < 4; ++u) _mm512_mask_storeu_ps(o + h * n + i + 16 * u, m[u], acc[h][u]);
  }
}

template <class L>
void attn_scores_heads(const float* q, int64_t heads, const typename L::T* k, int64_t ld, int64_t count, int64_t n,
                       float scale, float* scores, int64_t lds) {
  for (int64_t h = 0; h < heads; h += kScoreHeads) {
    const float* qh = q + h * n;
    float* sh = scores + h * lds;
    switch (std::min(kScoreHeads, heads - h)) {
      case 3: attn_scores_group<3, L>(qh, k, ld, count, n, scale, sh, lds); break;
      case 2: attn_scores_group<2, L>(qh, k, ld, count, n, scale, sh, lds); break;
      default: attn_scores_group<1, L>(qh, k, ld, count, n, scale, sh, lds); break;
    }
  }
}

template <class L>
void attn_sum_heads(const float* p, int64_t ldp, int64_t heads, const typename L::T* v, int64_t ld, int64_t count,
                    int64_t n, float* o) {
  for (int64_t h = 0; h < heads; h += kSumHeads) {
    const float* ph = p + h * ldp;
    float* oh = o + h * n;
    switch (std::min(kSumHeads, heads - h)) {
      case 6: attn_sum_group<6, L>(ph, ldp, v, ld, count, n, oh); break;
      case 5: attn_sum_group<5, L>(ph, ldp, v, ld, count, n, oh); break;
      case 4: attn_sum_group<4, L>(ph, ldp, v, ld, count, n, oh); break;
      case 3: attn_sum_group<3, L>(ph, ldp, v, ld, count, n, oh); break;
      case 2: attn_sum_group<2, L>(ph, ldp, v, ld, count, n, oh); break;
      default: attn_sum_group<1, L>(ph, ldp, v, ld, count, n, oh); break;
    }
  }
}

void attn_scores_avx512(const float* q, int64_t heads, const float* k, int64_t ld, int64_t count, int64_t n,
                        float scale, float* scores, int64_t lds) {
  attn_scores_heads<RowsF32>(q, heads, k, ld, count, n, scale, scores, lds);
}

void attn_weighted_sum_avx512(const float* p, int64_t ldp, int64_t heads, const float* v, int64_t ld, int64_t count,
                              int64_t n, float* o) {
  attn_sum_heads<RowsF32>(p, ldp, heads, v, ld, count, n, o);
}

void attn_scores16_avx512(ComputeDType t, const float* q, int64_t heads, const uint16_t* k, int64_t ld, int64_t count,
                          int64_t n, float scale, float* scores, int64_t lds) {
  if (t == ComputeDType::BF16)
    attn_scores_heads<RowsBF16>(q, heads, k, ld, count, n, scale, scores, lds);
  else
    attn_scores_heads<RowsF16>(q, heads, k, ld, count, n, scale, scores, lds);
}

void attn_weighted_sum16_avx512(ComputeDType t, const float* p, int64_t ldp, int64_t heads, const uint16_t* v,
                                int64_t ld, int64_t count, int64_t n, float* o) {
  if (t == ComputeDType::BF16)
    attn_sum_heads<RowsBF16>(p, ldp, heads, v, ld, count, n, o);
  else
    attn_sum_heads<RowsF16>(p, ldp, heads, v, ld, count, n, o);
}

}  // namespace

const LinearKernels& avx512_linear_kernels() {
  static const LinearKernels k{gemv_q4_avx512,   gemv_q4_multi_avx512,   gemv_f32_avx512,  gemv_bf16_avx512,
                               gemv_f16_avx512,  dequant_rows_q4_avx512, dequant_rows_q4_bf16_avx512,
                               pack_q4_bf16_panel_avx512, gemm_rows_avx512,
                               dot_avx512,       axpy_avx512,            gemv_q8_avx512, gemv_q8_multi_avx512,
                               attn_scores_avx512, attn_weighted_sum_avx512,
                               attn_scores16_avx512, attn_weighted_sum16_avx512,
                               // 256-bit kernels serve here too (every AVX-512 CPU has AVX2).
                               avx2_linear_kernels().widen16, avx2_linear_kernels().quantize_x_q8,
                               // vpdpbusd where the CPU has it (most AVX-512 CPUs since Cascade Lake / Zen 4)
                               cpu_has_avx512_vnni() ? avx512_vnni_int8_gemv_kernels().gemv_q4_i8
                                                     : avx2_linear_kernels().gemv_q4_i8,
                               cpu_has_avx512_vnni() ? avx512_vnni_int8_gemv_kernels().gemv_q8_i8
                                                     : avx2_linear_kernels().gemv_q8_i8,
                               cpu_has_avx512_vnni() ? avx512_vnni_int8_gemv_kernels().gemv_q4_i8_multi
                                                     : avx2_linear_kernels().gemv_q4_i8_multi,
                               cpu_has_avx512_vnni() ? avx512_vnni_int8_gemv_kernels().gemv_q8_i8_multi
                                                     : avx2_linear_kernels().gemv_q8_i8_multi,
                               avx2_linear_kernels().quantize_x_q8k, avx2_linear_kernels().gemv_q8k_i8,
                               avx2_linear_kernels().gemv_q8k_i8_multi, gemv_h16_multi_avx512};
  return k;
}

}  // namespace qlora::kernels
