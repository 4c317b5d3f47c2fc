// AVX2 + FMA + F16C linear kernels (used only when the CPU has them).
//
// The fused 4-bit GEMV as in the AVX-512 kernel, but AVX2 has no 16-entry float permute:
// the code book lookup goes through byte planes and vpshufb (see "the 16-entry code book
// lookup" below).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "model/linear_kernels.h"
#include "model/attention_rows_inl.h"
#include "model/linear_kernels_inl.h"
#include "model/linear_kernels_avx2_inl.h"

namespace qlora::kernels {
namespace {

using detail::q4_weight;

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

// ---- the 16-entry code book lookup ------------------------------------------------------
// vpshufb looks up 16 bytes per 128-bit lane: a 16-entry code book, but of bytes. So the 16
// float code values are split into four byte planes, each plane looked up with a chunk's 32
// nibbles, and the four results interleaved back into floats with in-lane unpacks. That is
// 12 in-lane shuffles per 32 weights, where a float lookup needs two lane-crossing vpermps
// and a blend per 8 (Zen 2 issues vpermps at half the rate of vpshufb): the lookup is what
// bounds the GEMV on AVX2, so this made it 2.2x faster (bench/RESULTS.md, session 9).
//
// The unpacks put index byte j of lane L at register j / 4, lane L, dword j % 4. The nibbles
// are arranged in the index register for one of two orders:
//  * natural: the chunk's elements 0..31 come out in order (one extra vpshufb), for
//    dequantization and rows that do not start on a 32-weight boundary of x;
//  * permuted: lane 0 holds the 16 low nibbles, lane 1 the 16 high ones (no shuffle at all);
//    the elements come out in the order plane_element, and the GEMV permutes x to match.
// Each looked-up code is then multiplied by its block's absmax and rounded to the compute
// dtype, exactly as q4_weight defines the weight.
struct CodePlanes {
  __m256i plane[4];  // byte p of code[k] at bytes k and 16 + k
};

CodePlanes code_planes(const float* code) {
  alignas(32) uint8_t b[4][32];
  for (int k = 0; k < 16; ++k) {
    uint32_t u;
    __builtin_memcpy(&u, &code[k], 4);
    for (int p = 0; p < 4; ++p) b[p][k] = b[p][16 + k] = static_cast<uint8_t>(u >> (8 * p));
  }
  CodePlanes cp;
  for (int p = 0; p < 4; ++p) cp.plane[p] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b[p]));
  return cp;
}

// The code values of the 32 nibbles in idx (one per byte, < 16) in the unpack order above.
inline void lookup_planes(const CodePlanes& cp, __m256i idx, __m256 v[4]) {
  const __m256i b0 = _mm256_shuffle_epi8(cp.plane[0], idx), b1 = _mm256_shuffle_epi8(cp.plane[1], idx);
  const __m256i b2 = _mm256_shuffle_epi8(cp.plane[2], idx), b3 = _mm256_shuffle_epi8(cp.plane[3], idx);
  const __m256i w01lo = _mm256_unpacklo_epi8(b0, b1), w01hi = _mm256_unpackhi_epi8(b0, b1);
  const __m256i w23lo = _mm256_unpacklo_epi8(b2, b3), w23hi = _mm256_unpackhi_epi8(b2, b3);
  v[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01lo, w23lo));
  v[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01lo, w23lo));
  v[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01hi, w23hi));
  v[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01hi, w23hi));
}

// Permuted order: the 16 packed bytes at p in both lanes (a load, no shuffle), the high lane
// shifted to its high nibbles.
inline __m256i nibbles_permuted(const uint8_t* p) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                          _mm256_set1_epi8(0x0F));
}

// The chunk element that the permuted order puts at position pos (0..31): index byte
// j = 4 * (pos / 8) + pos % 4 of lane (pos % 8) / 4; lane 0 holds the low nibble of packed
// byte j (element 2j + 1), lane 1 the high one (element 2j).
constexpr int plane_element(int pos) { return 2 * (4 * (pos / 8) + pos % 4) + ((pos % 8) / 4 == 0 ? 1 : 0); }

// Natural order: index byte j of lane L must hold element 8 * (j / 4) + 4L + j % 4, whose
// nibble is in packed byte 4 * (j / 4) + 2L + (j % 4) / 2, the high nibble for even j.
inline __m256i nibbles_natural(const uint8_t* p) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i gather = _mm256_setr_epi8(0, 0, 1, 1, 4, 4, 5, 5, 8, 8, 9, 9, 12, 12, 13, 13,  //
                                          2, 2, 3, 3, 6, 6, 7, 7, 10, 10, 11, 11, 14, 14, 15, 15);
  const __m256i t = _mm256_shuffle_epi8(both, gather);
  // Even bytes take the high nibble (the word shifted right by 4), odd bytes the low one.
  return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(t, 4), _mm256_set1_epi16(0x000F)),
                         _mm256_and_si256(t, _mm256_set1_epi16(0x0F00)));
}

// bmin: the chunk's block minimum (a GGUF Q4_1 / Q4_K weight), added after the product as
// q4_weight does; null for every other weight.
template <ComputeDType RT>
inline __m256 scaled(__m256 code, __m256 absmax, const float* bmin) {
  __m256 v = _mm256_mul_ps(code, absmax);
  if (bmin) v = _mm256_add_ps(v, _mm256_broadcast_ss(bmin));
  return round_vec(v, RT);
}

// x permuted chunk by chunk into the permuted order (kernel-internal, grows to cols).
// plane_element keeps every group of 8 elements in place and puts its odd elements before its
// even ones (1 3 5 7 0 2 4 6): one vpermps per 8 (a scalar gather was 2.3% of a 2-thread
// decode, each thread permuting x for every GEMV).
const float* permute_x(const float* x, int64_t cols) {
  static_assert(plane_element(0) == 1 && plane_element(4) == 0 && plane_element(11) == 15 && plane_element(28) == 24,
                "the permuted order is odds-then-evens within each group of 8");
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < cols) buf.resize(cols);
  const __m256i order = _mm256_setr_epi32(1, 3, 5, 7, 0, 2, 4, 6);
  for (int64_t c = 0; c < cols; c += 8)
    _mm256_storeu_ps(buf.data() + c, _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c), order));
  return buf.data();
}

// The absmax of the blocks of flat range [s, e); entry k belongs to block (s >> shift) + k.
// Plain absmax is the matrix's own array. Double-quantized absmax (nested_code[absmax_q[b]] *
// nested_absmax[b / nested_blocksize] + offset, multiplied and added separately as in
// nested_block_absmax: this file is built with -ffp-contract=off) is computed 8 blocks at a
// time with a gather into a kernel-internal buffer that grows to the block count.
// fp16 values (a GGUF's scales or minimums as stored) widened exactly, 8 at a time (F16C).
void widen_f16(const uint16_t* h, int64_t n, float* out) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k))));
  for (; k < n; ++k) out[k] = _cvtsh_ss(h[k]);
}

const float* absmax_of_range(const Q4Matrix& w, int64_t s, int64_t e, int shift) {
  const int64_t b0 = s >> shift, n = e > s ? ((e - 1) >> shift) - b0 + 1 : 0;
  if (w.absmax) return w.absmax + b0;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  float* out = buf.data();
  if (w.absmax_f16) {
    widen_f16(w.absmax_f16 + b0, n, out);
    return out;
  }
  const __m256 offset = _mm256_set1_ps(w.offset);
  for (int64_t k = 0; k < n;) {
    const int64_t b = b0 + k, nb = b / w.nested_blocksize;
    const int64_t seg_end = std::min(n, (nb + 1) * w.nested_blocksize - b0);  // same nested block
    const float scale = w.nested_absmax[nb];
    const __m256 vscale = _mm256_set1_ps(scale);
    for (; k + 8 <= seg_end; k += 8) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.absmax_q + b0 + k));
      const __m256 code = _mm256_i32gather_ps(w.nested_code, _mm256_cvtepu8_epi32(q), 4);
      _mm256_storeu_ps(out + k, _mm256_add_ps(_mm256_mul_ps(code, vscale), offset));
    }
    for (; k < seg_end; ++k) {
      const float scaled = w.nested_code[w.absmax_q[b0 + k]] * scale;
      out[k] = scaled + w.offset;
    }
  }
  return out;
}

// The minimums of the blocks of flat range [s, e) as absmax_of_range gives the absmax (the
// matrix's own float32 array, or fp16 widened into a kernel-internal buffer); null when the
// weight has none.
const float* mins_of_range(const Q4Matrix& w, int64_t s, int64_t e, int shift) {
  if (w.block_min) return w.block_min + (s >> shift);
  if (!w.block_min_f16 && !w.block_min_q) return nullptr;
  const int64_t b0 = s >> shift, n = e > s ? ((e - 1) >> shift) - b0 + 1 : 0;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  float* out = buf.data();
  if (w.block_min_f16) {
    widen_f16(w.block_min_f16 + b0, n, out);
    return out;
  }
  // Q4_K's: -(dmin * m), the product rounded and then negated (a sign flip: exact).
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t k = 0; k < n;) {
    const int64_t b = b0 + k, g = b / w.block_min_group;
    const int64_t seg_end = std::min(n, (g + 1) * w.block_min_group - b0);  // same dmin
    const float d = w.block_min_d[g];
    const __m256 vd = _mm256_set1_ps(d);
    for (; k + 8 <= seg_end; k += 8) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.block_min_q + b0 + k));
      const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
      _mm256_storeu_ps(out + k, _mm256_xor_ps(_mm256_mul_ps(vd, m), sign));
    }
    for (; k < seg_end; ++k) out[k] = -(d * static_cast<float>(w.block_min_q[b0 + k]));
  }
  return out;
}

// A range's absmax and minimums, both indexed by the absolute block (s >> shift onward; mins
// null for a weight without minimums).
struct RangeScales {
  const float* amax = nullptr;
  const float* mins = nullptr;
};
inline RangeScales scales_of_range(const Q4Matrix& w, int64_t s, int64_t e, int shift) {
  RangeScales r;
  r.amax = absmax_of_range(w, s, e, shift) - (s >> shift);
  if (const float* m = mins_of_range(w, s, e, shift)) r.mins = m - (s >> shift);
  return r;
}
// The chunk at flat index i's block minimum (for scaled), null without minimums.
inline const float* block_min_at(const RangeScales& sc, int64_t i, int shift) {
  return sc.mins ? sc.mins + (i >> shift) : nullptr;
}

// q4_weight with the block's absmax and minimum from scales_of_range's tables (the same
// values) and the rounding inlined (rows that start or end mid-chunk take this for up to 62
// weights a row).
template <ComputeDType RT>
inline float weight_at(const Q4Matrix& w, const RangeScales& sc, int shift, int64_t i) {
  float v = w.code[detail::nibble_at(w.packed, i)] * sc.amax[i >> shift];
  if (sc.mins) v = v + sc.mins[i >> shift];
  if constexpr (RT == ComputeDType::F32) return v;
  return _mm256_cvtss_f32(round_vec(_mm256_set1_ps(v), RT));
}

// The GEMVs take the absmax of this many rows at a time (one absmax_of_range per group).
constexpr int64_t kRowsPerAbsmax = 16;

// Rows of whole chunks (cols % 32 == 0): every row starts a chunk, so x can be permuted
// once for all rows.
template <ComputeDType RT>
void gemv_q4_permuted(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  const CodePlanes cp = code_planes(w.code);
  const int64_t cols = w.cols;
  const float* xp = permute_x(x, cols);
  const int shift = detail::log2_int(w.blocksize);
  RangeScales sc;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * cols, e = s + cols;
    if ((r - r0) % kRowsPerAbsmax == 0) {
      const int64_t g1 = std::min(r1, r + kRowsPerAbsmax);
      sc = scales_of_range(w, s, g1 * cols, shift);
    }
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t i = s; i < e; i += 32) {
      __m256 v[4];
      lookup_planes(cp, nibbles_permuted(w.packed + (i >> 1)), v);
      const __m256 a = _mm256_broadcast_ss(sc.amax + (i >> shift));
      const float* m = block_min_at(sc, i, shift);
      const float* xc = xp + (i - s);
      a0 = _mm256_fmadd_ps(scaled<RT>(v[0], a, m), _mm256_loadu_ps(xc), a0);
      a1 = _mm256_fmadd_ps(scaled<RT>(v[1], a, m), _mm256_loadu_ps(xc + 8), a1);
      a2 = _mm256_fmadd_ps(scaled<RT>(v[2], a, m), _mm256_loadu_ps(xc + 16), a2);
      a3 = _mm256_fmadd_ps(scaled<RT>(v[3], a, m), _mm256_loadu_ps(xc + 24), a3);
    }
    y[r] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  }
}

// x's sums over each block of a row, sums[b] = x[b * bs] + ... + x[b * bs + bs - 1] for
// b < cols / bs (kernel-internal, grows to the block count): the minimums' part of a product.
const float* block_sums_x(const float* x, int64_t cols, int bs) {
  thread_local std::vector<float> buf;
  const int64_t n = cols / bs;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  for (int64_t b = 0; b < n; ++b) {
    __m256 s = _mm256_setzero_ps();
    for (int i = 0; i < bs; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + b * bs + i));
    buf[b] = hsum(s);
  }
  return buf.data();
}

// A row's part that does not depend on the codes: sum_b (base * amax[b] + min[b]) * xs[b] for
// b < bpr (min null: none; base 0: the minimums alone), xs the row's block sums of x.
float offset_part(float base, const float* amax, const float* min, const float* xs, int64_t bpr) {
  const __m256 vb = _mm256_set1_ps(base);
  __m256 acc = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= bpr; b += 8) {
    __m256 off = _mm256_mul_ps(vb, _mm256_loadu_ps(amax + b));
    if (min) off = _mm256_add_ps(off, _mm256_loadu_ps(min + b));
    acc = _mm256_fmadd_ps(off, _mm256_loadu_ps(xs + b), acc);
  }
  float tail = 0.0f;
  for (; b < bpr; ++b) tail += (base * amax[b] + (min ? min[b] : 0.0f)) * xs[b];
  return hsum(acc) + tail;
}

// F32 rows of whole blocks (cols % blocksize == 0): each block's code values are summed
// against x first and scaled once, sum_b absmax[b] * sum_{i in b} code[q_i] * x_i, and the
// minimums' part is sum_b block_min[b] * (x's sum over b) from one table of block sums per
// call. The weights themselves are never formed: per 32 weights 4 multiplies or FMAs, plus 4
// FMAs per block, where scaling the code values took 4 multiplies, 4 FMAs and (with
// minimums) 4 adds -- on Zen 3 those adds share their pipes with the lookup's shuffles. The
// result is the weight-by-weight sum up to float rounding (code * absmax * x associated
// differently), which is all F32 compute promises: no 16-bit rounding of the weight to
// reproduce (the rounded dtypes keep gemv_q4_permuted).
void gemv_q4_factored(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  const CodePlanes cp = code_planes(w.code);
  const int64_t cols = w.cols;
  const float* xp = permute_x(x, cols);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t cpb = w.blocksize / 32, bpr = cols >> shift;
  const float* xs = w.has_min() ? block_sums_x(x, cols, w.blocksize) : nullptr;
  RangeScales sc;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * cols;
    if ((r - r0) % kRowsPerAbsmax == 0) sc = scales_of_range(w, s, std::min(r1, r + kRowsPerAbsmax) * cols, shift);
    const float* ra = sc.amax + (s >> shift);
    const uint8_t* p = w.packed + (s >> 1);
    const float* xc = xp;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t b = 0; b < bpr; ++b) {
      __m256 v[4];
      detail::prefetch_l2(p + detail::kGemvPrefetchBytes);
      lookup_planes(cp, nibbles_permuted(p), v);
      __m256 t0 = _mm256_mul_ps(v[0], _mm256_loadu_ps(xc)), t1 = _mm256_mul_ps(v[1], _mm256_loadu_ps(xc + 8));
      __m256 t2 = _mm256_mul_ps(v[2], _mm256_loadu_ps(xc + 16)), t3 = _mm256_mul_ps(v[3], _mm256_loadu_ps(xc + 24));
      p += 16;
      xc += 32;
      for (int64_t k = 1; k < cpb; ++k, p += 16, xc += 32) {
        lookup_planes(cp, nibbles_permuted(p), v);
        t0 = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xc), t0);
        t1 = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xc + 8), t1);
        t2 = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xc + 16), t2);
        t3 = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xc + 24), t3);
      }
      const __m256 a = _mm256_broadcast_ss(ra + b);
      a0 = _mm256_fmadd_ps(t0, a, a0);
      a1 = _mm256_fmadd_ps(t1, a, a1);
      a2 = _mm256_fmadd_ps(t2, a, a2);
      a3 = _mm256_fmadd_ps(t3, a, a3);
    }
    float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    if (xs) sum += offset_part(0.0f, ra, sc.mins + (s >> shift), xs, bpr);
    y[r] = sum;
  }
}

// True when the code book is a ramp of integers, code[q] = code[0] + q (a GGUF's Q4_0: -8..7;
// Q4_1 and Q4_K: 0..15), every value then code[0] + the nibble itself.
bool is_integer_ramp(const float* code) {
  if (code[0] != std::nearbyint(code[0])) return false;
  for (int q = 1; q < 16; ++q)
    if (code[q] != code[0] + static_cast<float>(q)) return false;
  return true;
}

// x permuted for gemv_q4_ramp: in each group of 16 the odd elements, then the even ones (the
// low nibbles of 8 packed bytes, then their high nibbles). Kernel-internal, grows to cols.
const float* permute_x_odd_even16(const float* x, int64_t cols) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < cols) buf.resize(cols);
  const __m256i odd_even = _mm256_setr_epi32(1, 3, 5, 7, 0, 2, 4, 6);
  for (int64_t c = 0; c < cols; c += 16) {
    // (1 3 5 7 0 2 4 6 of each 8, then the two 8s' halves interleaved by 128-bit lanes)
    const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c), odd_even);
    const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c + 8), odd_even);
    _mm256_storeu_ps(buf.data() + c, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(buf.data() + c + 8, _mm256_permute2f128_ps(a, b, 0x31));
  }
  return buf.data();
}

// R rows of gemv_q4_ramp side by side: sums[j] = sum_b d_b * sum_{i in b} code[q_i] * xp_i
// (+ m_b * (x's sum over b) with kMin) for row j, its codes at p + j * row_bytes, scales at
// ra + j * bpr, minimums at rm + j * bpr. The code book's base and the minimums ride on x's
// block sum kept as a vector (xsv, shared by the rows): base * xsv joins the block's sum before
// its scale, m_b * xsv is one FMA -- a separate pass over the minimums per row cost more in
// calls, tails and horizontal sums than the products themselves on 576-wide rows. The rows
// share x's loads, and their chains interleave: one row alone waits on its accumulator's FMA
// latency every block (32 weights of Q4_1 feed one scale), which left Zen 3 at ~9 cycles per
// block where its pipes need ~6.
template <int R, bool kBase, bool kMin>
inline void ramp_rows(const uint8_t* p, int64_t row_bytes, const float* ra, const float* rm, int64_t bpr,
                      int64_t cpb, float base, const float* xp, float* sums) {
  const __m256i low4 = _mm256_set1_epi32(0x0F);
  const __m256 vbase = _mm256_set1_ps(base);
  __m256 a[R];
  for (int j = 0; j < R; ++j) a[j] = _mm256_setzero_ps();
  const float* xc = xp;
  for (int64_t b = 0; b < bpr; ++b) {
    __m256 t[R];
    for (int j = 0; j < R; ++j) t[j] = _mm256_setzero_ps();
    __m256 xsv = _mm256_setzero_ps();
    for (int64_t k = 0; k < cpb; ++k, p += 16, xc += 32) {
      const __m256 x0 = _mm256_loadu_ps(xc), x1 = _mm256_loadu_ps(xc + 8);
      const __m256 x2 = _mm256_loadu_ps(xc + 16), x3 = _mm256_loadu_ps(xc + 24);
      if constexpr (kBase || kMin)
        xsv = _mm256_add_ps(xsv, _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)));
      for (int j = 0; j < R; ++j) {
        const uint8_t* q = p + j * row_bytes;
        detail::prefetch_l2(q + detail::kGemvPrefetchBytes);
        const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
        const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)));
        t[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, low4)), x0, t[j]);
        t[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), x1, t[j]);
        t[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, low4)), x2, t[j]);
        t[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), x3, t[j]);
      }
    }
    for (int j = 0; j < R; ++j) {
      if constexpr (kBase) t[j] = _mm256_fmadd_ps(vbase, xsv, t[j]);
      a[j] = _mm256_fmadd_ps(t[j], _mm256_broadcast_ss(ra + j * bpr + b), a[j]);
      if constexpr (kMin) a[j] = _mm256_fmadd_ps(xsv, _mm256_broadcast_ss(rm + j * bpr + b), a[j]);
    }
  }
  for (int j = 0; j < R; ++j) sums[j] = hsum(a[j]);
}

// ramp_rows for n = R or 1 rows, with the base and minimum terms the weight has.
template <int R>
inline void ramp_rows_n(int n, const uint8_t* p, int64_t row_bytes, const float* ra, const float* rm, int64_t bpr,
                        int64_t cpb, float base, const float* xp, float* sums) {
  const auto rows = [&]<int N>() {
    if (rm)
      base != 0.0f ? ramp_rows<N, true, true>(p, row_bytes, ra, rm, bpr, cpb, base, xp, sums)
                   : ramp_rows<N, false, true>(p, row_bytes, ra, rm, bpr, cpb, base, xp, sums);
    else
      base != 0.0f ? ramp_rows<N, true, false>(p, row_bytes, ra, rm, bpr, cpb, base, xp, sums)
                   : ramp_rows<N, false, false>(p, row_bytes, ra, rm, bpr, cpb, base, xp, sums);
  };
  n == R ? rows.template operator()<R>() : rows.template operator()<1>();
}

// gemv_q4_factored for an integer-ramp code book (is_integer_ramp): no table lookup at all.
// Eight packed bytes widen to eight 32-bit lanes in one load (vpmovzxbd), whose low nibbles
// (the odd elements) are an AND away and high nibbles (the even ones) a shift away, and
// vcvtdq2ps makes them floats: per 32 weights 2 shuffles where the lookup took 12, which on
// Zen 3 share two pipes with the multiplies. Each block's sum of q * x is scaled once, and the
// code book's base and the minimums go through x's block sums: sum_b d_b * (sum q x + code[0]
// * X_b) + m_b * X_b. Four rows at a time (ramp_rows). F32 only, whole blocks per row (as
// gemv_q4_factored; rounding as it says).
void gemv_q4_ramp(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  constexpr int kRows = 4;
  static_assert(kRowsPerAbsmax % kRows == 0, "a group of rows shares one absmax table");
  const int64_t cols = w.cols;
  const float* xp = permute_x_odd_even16(x, cols);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t cpb = w.blocksize / 32, bpr = cols >> shift;
  RangeScales sc;
  for (int64_t r = r0; r < r1;) {
    const int64_t s = r * cols;
    if ((r - r0) % kRowsPerAbsmax == 0) sc = scales_of_range(w, s, std::min(r1, r + kRowsPerAbsmax) * cols, shift);
    const int n = r + kRows <= r1 ? kRows : 1;
    ramp_rows_n<kRows>(n, w.packed + (s >> 1), cols / 2, sc.amax + (s >> shift),
                       sc.mins ? sc.mins + (s >> shift) : nullptr, bpr, cpb, w.code[0], xp, y + r);
    r += n;
  }
}

// Any shape, up to T tokens: a row's weights before the first 32-aligned flat index and after
// the last are scalar; the chunks between are looked up in natural order.
template <ComputeDType RT, int T>
void gemv_q4_natural(const Q4Matrix& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const CodePlanes cp = code_planes(w.code);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t cols = w.cols;
  RangeScales sc;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * cols, e = s + cols;
    if ((r - r0) % kRowsPerAbsmax == 0) sc = scales_of_range(w, s, std::min(r1, r + kRowsPerAbsmax) * cols, shift);
    float sacc[T] = {};
    int64_t i = s;
    const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
    for (; i < head_end; ++i) {
      const float wv = weight_at<RT>(w, sc, shift, i);
      for (int t = 0; t < T; ++t) sacc[t] += wv * x[t * cols + (i - s)];
    }
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (; i + 32 <= e; i += 32) {
      __m256 v[4];
      lookup_planes(cp, nibbles_natural(w.packed + (i >> 1)), v);
      const __m256 a = _mm256_broadcast_ss(sc.amax + (i >> shift));
      const float* m = block_min_at(sc, i, shift);
      const float* xc = x + (i - s);
      for (int q = 0; q < 4; ++q) {
        const __m256 wq = scaled<RT>(v[q], a, m);
        for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(wq, _mm256_loadu_ps(xc + t * cols + 8 * q), acc[t]);
      }
    }
    for (; i < e; ++i) {
      const float wv = weight_at<RT>(w, sc, shift, i);
      for (int t = 0; t < T; ++t) sacc[t] += wv * x[t * cols + (i - s)];
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[t]) + sacc[t];
  }
}

template <ComputeDType RT>
void gemv_q4_rt(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  if (RT == ComputeDType::F32 && w.cols % w.blocksize == 0)
    is_integer_ramp(w.code) ? gemv_q4_ramp(w, x, y, r0, r1) : gemv_q4_factored(w, x, y, r0, r1);
  else if (w.cols % 32 == 0)
    gemv_q4_permuted<RT>(w, x, y, r0, r1);
  else
    gemv_q4_natural<RT, 1>(w, x, y, 0, r0, r1);
}

void gemv_q4_avx2(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  switch (w.round_to) {
    case ComputeDType::F32: gemv_q4_rt<ComputeDType::F32>(w, x, y, r0, r1); break;
    case ComputeDType::BF16: gemv_q4_rt<ComputeDType::BF16>(w, x, y, r0, r1); break;
    case ComputeDType::F16: gemv_q4_rt<ComputeDType::F16>(w, x, y, r0, r1); break;
  }
}

template <int T>
void gemv_q4_multi_t(const Q4Matrix& w, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  switch (w.round_to) {
    case ComputeDType::F32: gemv_q4_natural<ComputeDType::F32, T>(w, x, y, ldy, r0, r1); break;
    case ComputeDType::BF16: gemv_q4_natural<ComputeDType::BF16, T>(w, x, y, ldy, r0, r1); break;
    case ComputeDType::F16: gemv_q4_natural<ComputeDType::F16, T>(w, x, y, ldy, r0, r1); break;
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

template <ComputeDType RT>
void dequant_rows_rt(const Q4Matrix& w, int64_t r0, int64_t r1, float* out) {
  const CodePlanes cp = code_planes(w.code);
  const int shift = detail::log2_int(w.blocksize);
  const int64_t s = r0 * w.cols, e = r1 * w.cols;
  const RangeScales sc = scales_of_range(w, s, e, shift);
  int64_t i = s;
  const int64_t head_end = std::min(e, (s + 31) & ~int64_t{31});
  for (; i < head_end; ++i) out[i - s] = weight_at<RT>(w, sc, shift, i);
  for (; i + 32 <= e; i += 32) {
    __m256 v[4];
    lookup_planes(cp, nibbles_natural(w.packed + (i >> 1)), v);
    const __m256 a = _mm256_broadcast_ss(sc.amax + (i >> shift));
    const float* m = block_min_at(sc, i, shift);
    for (int q = 0; q < 4; ++q) _mm256_storeu_ps(out + (i - s) + 8 * q, scaled<RT>(v[q], a, m));
  }
  for (; i < e; ++i) out[i - s] = weight_at<RT>(w, sc, shift, i);
}

void dequant_rows_q4_avx2(const Q4Matrix& w, int64_t r0, int64_t r1, float* out) {
  switch (w.round_to) {
    case ComputeDType::F32: dequant_rows_rt<ComputeDType::F32>(w, r0, r1, out); break;
    case ComputeDType::BF16: dequant_rows_rt<ComputeDType::BF16>(w, r0, r1, out); break;
    case ComputeDType::F16: dequant_rows_rt<ComputeDType::F16>(w, r0, r1, out); break;
  }
}

// The dense GEMV (gemv_dense: T = 1) for each of T tokens (x (T, cols)), each 16-value step of the
// row loaded once for all of them: every token's sum in the one-token order, bit for bit.
template <int T, class Load, class Scalar>
void gemv_dense_tokens(int64_t cols, const float* x, float* y, int64_t ldy, int64_t r0, int64_t r1, Load load,
                       Scalar scalar) {
  const int64_t main = cols & ~int64_t{15};
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * cols;
    __m256 acc0[T], acc1[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    for (int64_t c = 0; c < main; c += 16) {
      const __m256 w0 = load(base + c), w1 = load(base + c + 8);
      for (int t = 0; t < T; ++t) {
        acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * cols + c), acc0[t]);
        acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * cols + c + 8), acc1[t]);
      }
    }
    for (int t = 0; t < T; ++t) {
      float sacc = 0.0f;
      for (int64_t c = main; c < cols; ++c) sacc += scalar(base + c) * x[t * cols + c];
      y[t * ldy + r] = hsum(_mm256_add_ps(acc0[t], acc1[t])) + sacc;
    }
  }
}

template <class Load, class Scalar>
inline void gemv_dense(int64_t cols, const float* x, float* y, int64_t r0, int64_t r1, Load load, Scalar scalar) {
  gemv_dense_tokens<1>(cols, x, y, 0, r0, r1, load, scalar);
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
      detail::prefetch_l2(qb + detail::kGemvPrefetchBytes);
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

// gemv_q8_avx2's instructions for each of T tokens, the block's weights widened once.
template <int T>
void gemv_q8_tokens_avx2(const int8_t* q, const float* scales, int64_t cols, const float* x, float* y, int64_t ldy,
                         int64_t r0, int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* qb = q + r * cols + b * kQ8Block;
      detail::prefetch_l2(qb + detail::kGemvPrefetchBytes);
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + 16));
      const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
      const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
      const __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
      const __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
      const __m256 sc = _mm256_set1_ps(scales[r * nb + b]);
      for (int t = 0; t < T; ++t) {
        const float* xb = x + t * cols + b * kQ8Block;
        __m256 s = _mm256_mul_ps(w0, _mm256_loadu_ps(xb));
        s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), s);
        s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), s);
        s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), s);
        acc[t] = _mm256_fmadd_ps(sc, s, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[t]);
  }
}

void gemv_q8_multi_avx2(const int8_t* q, const float* scales, int64_t cols, const float* x, int64_t T, float* y,
                        int64_t ldy, int64_t r0, int64_t r1) {
  switch (T) {
    case 1: return gemv_q8_tokens_avx2<1>(q, scales, cols, x, y, ldy, r0, r1);
    case 2: return gemv_q8_tokens_avx2<2>(q, scales, cols, x, y, ldy, r0, r1);
    case 3: return gemv_q8_tokens_avx2<3>(q, scales, cols, x, y, ldy, r0, r1);
    case 4: return gemv_q8_tokens_avx2<4>(q, scales, cols, x, y, ldy, r0, r1);
    case 5: return gemv_q8_tokens_avx2<5>(q, scales, cols, x, y, ldy, r0, r1);
    case 6: return gemv_q8_tokens_avx2<6>(q, scales, cols, x, y, ldy, r0, r1);
    case 7: return gemv_q8_tokens_avx2<7>(q, scales, cols, x, y, ldy, r0, r1);
    default: return gemv_q8_tokens_avx2<8>(q, scales, cols, x, y, ldy, r0, r1);
  }
}

// 8 bf16 / fp16 values widened to float32, and one (the rows' scalar tails).
struct Bf16Rows {
  const uint16_t* w;
  __m256 operator()(int64_t i) const {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  float one(int64_t i) const {
    const uint32_t u = static_cast<uint32_t>(w[i]) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
};
struct F16Rows {
  const uint16_t* w;
  __m256 operator()(int64_t i) const { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))); }
  float one(int64_t i) const { return _cvtsh_ss(w[i]); }
};

void gemv_bf16_avx2(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  const Bf16Rows rows{w};
  gemv_dense(cols, x, y, r0, r1, rows, [rows](int64_t i) { return rows.one(i); });
}

void gemv_f16_avx2(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  const F16Rows rows{w};
  gemv_dense(cols, x, y, r0, r1, rows, [rows](int64_t i) { return rows.one(i); });
}

template <int T>
void gemv_h16_tokens_avx2(const uint16_t* w, bool bf16, int64_t cols, const float* x, float* y, int64_t ldy,
                          int64_t r0, int64_t r1) {
  if (bf16) {
    const Bf16Rows rows{w};
    gemv_dense_tokens<T>(cols, x, y, ldy, r0, r1, rows, [rows](int64_t i) { return rows.one(i); });
  } else {
    const F16Rows rows{w};
    gemv_dense_tokens<T>(cols, x, y, ldy, r0, r1, rows, [rows](int64_t i) { return rows.one(i); });
  }
}

void gemv_h16_multi_avx2(const uint16_t* w, bool bf16, int64_t cols, const float* x, int64_t T, float* y, int64_t ldy,
                         int64_t r0, int64_t r1) {
  // (more than 4 tokens in passes of up to 4: eight tokens' 16 accumulators would leave no
  // register for the weights)
  for (int64_t t0 = 0; t0 < T; t0 += 4) {
    const float* xt = x + t0 * cols;
    float* yt = y + t0 * ldy;
    switch (std::min<int64_t>(4, T - t0)) {
      case 1: gemv_h16_tokens_avx2<1>(w, bf16, cols, xt, yt, ldy, r0, r1); break;
      case 2: gemv_h16_tokens_avx2<2>(w, bf16, cols, xt, yt, ldy, r0, r1); break;
      case 3: gemv_h16_tokens_avx2<3>(w, bf16, cols, xt, yt, ldy, r0, r1); break;
      default: gemv_h16_tokens_avx2<4>(w, bf16, cols, xt, yt, ldy, r0, r1); break;
    }
  }
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

// ---- several query heads per pass (a GQA group) ----------------------------------------------
// Each cached key / value row is loaded once for up to 3 heads (16 vector registers: 4 keys x 3
// heads of partial dot products, or 3 heads x 32 floats of weighted sums), and rows
// kAttnPrefetchRows ahead are prefetched into L2. One head at a time re-read every row per
// query head (bench_attention decode with QLORA_SIMD=avx2: 1152 positions x 30 layers 8.0-8.2 ms
// before).
constexpr int64_t kAttnHeads = 3;
using detail::kAttnPrefetchRows;
using detail::prefetch_row_l2;
using detail::RowsBF16;
using detail::RowsF16;
using detail::RowsF32;

template <int G, class L>
void attn_scores_group(const float* q, const typename L::T* k, int64_t ld, int64_t count, int64_t n, float scale,
                       float* scores, int64_t lds) {
  constexpr int64_t kLine = 64 / sizeof(typename L::T);  // values per cache line
  const int64_t main = n & ~int64_t{7};
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    for (int u = 0; u < 4; ++u)
      for (int64_t i = 0; i < n; i += kLine) prefetch_row_l2(k + (j + kAttnPrefetchRows + u) * ld + i);
    __m256 a[G][4];
    for (int h = 0; h < G; ++h)
      for (int u = 0; u < 4; ++u) a[h][u] = _mm256_setzero_ps();
    for (int64_t i = 0; i < main; i += 8) {
      for (int u = 0; u < 4; ++u) {
        const __m256 kv = L::ld8(k + (j + u) * ld + i);
        for (int h = 0; h < G; ++h) a[h][u] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * n + i), kv, a[h][u]);
      }
    }
    for (int h = 0; h < G; ++h) {
      // Lane u: the sum of a[h][u].
      const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[h][0], a[h][1]), _mm256_hadd_ps(a[h][2], a[h][3]));
      __m128 sum = _mm_add_ps(_mm256_castps256_ps128(h0123), _mm256_extractf128_ps(h0123, 1));
      if (main < n) {  // head sizes that are not a multiple of 8
        alignas(16) float t[4];
        for (int u = 0; u < 4; ++u) {
          float acc = 0.0f;
          for (int64_t i = main; i < n; ++i) acc += q[h * n + i] * L::at(k + (j + u) * ld + i);
          t[u] = acc;
        }
        sum = _mm_add_ps(sum, _mm_load_ps(t));
      }
      _mm_storeu_ps(scores + h * lds + j, _mm_mul_ps(sum, vscale));
    }
  }
  for (; j < count; ++j)
    for (int h = 0; h < G; ++h) scores[h * lds + j] = detail::dot_row<L>(q + h * n, k + j * ld, n, dot_avx2) * scale;
}

template <int G, class L>
void attn_sum_group(const float* p, int64_t ldp, const typename L::T* v, int64_t ld, int64_t count, int64_t n,
                    float* o) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 acc[G][4];
    for (int h = 0; h < G; ++h)
      for (int u = 0; u < 4; ++u) acc[h][u] = _mm256_setzero_ps();
    for (int64_t j = 0; j < count; ++j) {
      const typename L::T* vj = v + j * ld + i;
      prefetch_row_l2(vj + kAttnPrefetchRows * ld);
      prefetch_row_l2(vj + kAttnPrefetchRows * ld + 16);
      if constexpr (std::is_same_v<L, RowsF32>) {
        for (int h = 0; h < G; ++h) {
          const __m256 pb = _mm256_set1_ps(p[h * ldp + j]);
          for (int u = 0; u < 4; ++u) acc[h][u] = _mm256_fmadd_ps(pb, _mm256_loadu_ps(vj + 8 * u), acc[h][u]);
        }
      } else {  // widen the row once for every head
        __m256 vv[4];
        for (int u = 0; u < 4; ++u) vv[u] = L::ld8(vj + 8 * u);
        for (int h = 0; h < G; ++h) {
          const __m256 pb = _mm256_set1_ps(p[h * ldp + j]);
          for (int u = 0; u < 4; ++u) acc[h][u] = _mm256_fmadd_ps(pb, vv[u], acc[h][u]);
        }
      }
    }
    for (int h = 0; h < G; ++h)
      for (int u = 0; u < 4; ++u) _mm256_storeu_ps(o + h * n + i + 8 * u, acc[h][u]);
  }
  for (; i + 8 <= n; i += 8)
    for (int h = 0; h < G; ++h) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t j = 0; j < count; ++j)
        a = _mm256_fmadd_ps(_mm256_set1_ps(p[h * ldp + j]), L::ld8(v + j * ld + i), a);
      _mm256_storeu_ps(o + h * n + i, a);
    }
  for (; i < n; ++i)
    for (int h = 0; h < G; ++h) {
      float a = 0.0f;
      for (int64_t j = 0; j < count; ++j) a += p[h * ldp + j] * L::at(v + j * ld + i);
      o[h * n + i] = a;
    }
}

template <class L>
void attn_scores_heads(const float* q, int64_t heads, const typename L::T* k, int64_t ld, int64_t count, int64_t n,
                       float scale, float* scores, int64_t lds) {
  for (int64_t h = 0; h < heads; h += kAttnHeads) {
    const float* qh = q + h * n;
    float* sh = scores + h * lds;
    switch (std::min(kAttnHeads, heads - h)) {
      case 3: attn_scores_group<3, L>(qh, k, ld, count, n, scale, sh, lds); break;
      case 2: attn_scores_group<2, L>(qh, k, ld, count, n, scale, sh, lds); break;
      default: attn_scores_group<1, L>(qh, k, ld, count, n, scale, sh, lds); break;
    }
  }
}

template <class L>
void attn_sum_heads(const float* p, int64_t ldp, int64_t heads, const typename L::T* v, int64_t ld, int64_t count,
                    int64_t n, float* o) {
  for (int64_t h = 0; h < heads; h += kAttnHeads) {
    const float* ph = p + h * ldp;
    float* oh = o + h * n;
    switch (std::min(kAttnHeads, heads - h)) {
      case 3: attn_sum_group<3, L>(ph, ldp, v, ld, count, n, oh); break;
      case 2: attn_sum_group<2, L>(ph, ldp, v, ld, count, n, oh); break;
      default: attn_sum_group<1, L>(ph, ldp, v, ld, count, n, oh); break;
    }
  }
}

void attn_scores_avx2(const float* q, int64_t heads, const float* k, int64_t ld, int64_t count, int64_t n,
                      float scale, float* scores, int64_t lds) {
  attn_scores_heads<RowsF32>(q, heads, k, ld, count, n, scale, scores, lds);
}

void attn_weighted_sum_avx2(const float* p, int64_t ldp, int64_t heads, const float* v, int64_t ld, int64_t count,
                            int64_t n, float* o) {
  attn_sum_heads<RowsF32>(p, ldp, heads, v, ld, count, n, o);
}

void attn_scores16_avx2(ComputeDType t, const float* q, int64_t heads, const uint16_t* k, int64_t ld, int64_t count,
                        int64_t n, float scale, float* scores, int64_t lds) {
  if (t == ComputeDType::BF16)
    attn_scores_heads<RowsBF16>(q, heads, k, ld, count, n, scale, scores, lds);
  else
    attn_scores_heads<RowsF16>(q, heads, k, ld, count, n, scale, scores, lds);
}

void attn_weighted_sum16_avx2(ComputeDType t, const float* p, int64_t ldp, int64_t heads, const uint16_t* v,
                              int64_t ld, int64_t count, int64_t n, float* o) {
  if (t == ComputeDType::BF16)
    attn_sum_heads<RowsBF16>(p, ldp, heads, v, ld, count, n, o);
  else
    attn_sum_heads<RowsF16>(p, ldp, heads, v, ld, count, n, o);
}

void widen16_avx2(ComputeDType t, const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  if (t == ComputeDType::F16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  } else {
    for (; i + 8 <= n; i += 8) {
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
      _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
  }
  if (i < n) scalar_linear_kernels().widen16(t, in + i, out + i, n - i);
}

// ---- 8-bit activations (opt-in decoding; linear_kernels.h says what it computes) ----------

void quantize_x_q8_avx2(const float* x, int64_t n, int8_t* q, float* d) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    __m256 v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(xb + 8 * k);
    if (!all_finite(xb, kQ8Block)) {  // NaN / inf: the scalar definition's codes 0, scale NaN
      scalar_linear_kernels().quantize_x_q8(xb, kQ8Block, q + b * kQ8Block, d + b);
      continue;
    }
    const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                                   _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
    d[b] = db;
    store_codes32(xb, _mm256_set1_ps(id), q + b * kQ8Block);
  }
}

// The int8 weights of a chunk come out of one vpshufb of nibbles_permuted's index: lane 0
// byte j is element 2j + 1 (a low nibble), lane 1 byte j element 2j. The activations are
// put in that order once per call (kernel-internal, grows to cols).
// (Per chunk: the odd bytes, then the even ones. In-lane, a vpshufb puts each lane's odds
// before its evens; the 64-bit quarters then go in the order odds, odds, evens, evens.)
const int8_t* permute_xq(const int8_t* xq, int64_t cols) {
  thread_local std::vector<int8_t> buf;
  if (static_cast<int64_t>(buf.size()) < cols) buf.resize(cols);
  const __m256i odd_even = _mm256_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14,  //
                                            1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14);
  for (int64_t c = 0; c < cols; c += 32) {
    const __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c)), odd_even);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf.data() + c), _mm256_permute4x64_epi64(v, 0xD8));
  }
  return buf.data();
}

// sum over a chunk of w_i * x_i as 8 int32 lanes: |w| unsigned times x with w's sign (w and
// x within [-128, 127] and [-127, 127]: each 16-bit pair sum stays below 2^15).
inline __m256i dot_i8(__m256i w, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
                           _mm256_set1_epi16(1));
}

// sum over a chunk of w_i * x_i as 8 int32 lanes for codes w in 0..15 (a ramp code book as
// stored: Q4_1, Q4_K): unsigned times signed as they are, no sign steps (|pair sum| <= 2 * 15 * 128).
inline __m256i dot_u4(__m256i w, __m256i x) { return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)); }

// Ramp: the code book is the integers 0..15 (the nibble is the code: no lookup, no sign steps).
template <bool Ramp>
void gemv_q4_i8_rows(const Q4Matrix& w, const Q8Codes& codes, const int8_t* xp, const float* xs, float* y, int64_t r0,
                     int64_t r1) {
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes.q)));
  const int64_t cols = w.cols, chunks = cols / 32;
  const int shift = detail::log2_int(w.blocksize);
  auto dot = [&](const uint8_t* p, const int8_t* x) {
    const __m256i n = nibbles_permuted(p), xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    if constexpr (Ramp) return dot_u4(n, xv);
    else return dot_i8(_mm256_shuffle_epi8(table, n), xv);
  };
  const float* amax = nullptr;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * cols;
    if ((r - r0) % kRowsPerAbsmax == 0)
      amax = absmax_of_range(w, s, std::min(r1, r + kRowsPerAbsmax) * cols, shift) - (s >> shift);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 2 <= chunks; c += 2) {
      const int64_t i = s + 32 * c;
      detail::prefetch_l2(w.packed + (i >> 1) + detail::kGemvPrefetchBytes);
      const __m256i d0 = dot(w.packed + (i >> 1), xp + 32 * c);
      const __m256i d1 = dot(w.packed + (i >> 1) + 16, xp + 32 * c + 32);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(amax[i >> shift] * xs[c]), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_set1_ps(amax[(i + 32) >> shift] * xs[c + 1]), acc1);
    }
    if (c < chunks) {
      const int64_t i = s + 32 * c;
      const __m256i d0 = dot(w.packed + (i >> 1), xp + 32 * c);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(amax[i >> shift] * xs[c]), acc0);
    }
    y[r] = hsum(_mm256_add_ps(acc0, acc1));
  }
}

void gemv_q4_i8_avx2(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1) {
  const Q8Codes codes = q8_codes(w.code);
  const int64_t chunks = w.cols / 32;
  const int8_t* xp = permute_xq(xq, w.cols);
  thread_local std::vector<float> xs_buf;  // d * unscale per chunk
  if (static_cast<int64_t>(xs_buf.size()) < chunks) xs_buf.resize(chunks);
  float* xs = xs_buf.data();
  for (int64_t c = 0; c < chunks; ++c) xs[c] = xd[c] * codes.unscale;
  bool ramp = true;  // (Q4_1's and Q4_K's integer codes 0..15 as stored)
  for (int k = 0; k < 16; ++k) ramp = ramp && codes.q[k] == k;
  if (ramp)
    gemv_q4_i8_rows<true>(w, codes, xp, xs, y, r0, r1);
  else
    gemv_q4_i8_rows<false>(w, codes, xp, xs, y, r0, r1);
  detail::add_block_min_i8(w, xq, xd, y, r0, r1);
}

void gemv_q8_i8_avx2(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                     float* y, int64_t r0, int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* row = q + r * cols;
    const float* sc = scales + r * nb;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      detail::prefetch_l2(row + 32 * b + detail::kGemvPrefetchBytes);
      const __m256i d0 = dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * b)),
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b)));
      const __m256i d1 = dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * b + 32)),
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b + 32)));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(sc[b] * xd[b]), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_set1_ps(sc[b + 1] * xd[b + 1]), acc1);
    }
    if (b < nb) {
      const __m256i d0 = dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * b)),
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b)));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(sc[b] * xd[b]), acc0);
    }
    y[r] = hsum(_mm256_add_ps(acc0, acc1));
  }
}

// The few-token int8 products, token by token through the one-token kernel.
void gemv_q4_i8_multi_avx2(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                        int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < T; ++t) gemv_q4_i8_avx2(w, xq + t * w.cols, xd + t * (w.cols / kQ8Block), y + t * ldy, r0, r1);
}
void gemv_q8_i8_multi_avx2(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                        int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < T; ++t)
    gemv_q8_i8_avx2(q, scales, cols, xq + t * cols, xd + t * (cols / kQ8Block), y + t * ldy, r0, r1);
}

}  // namespace

const LinearKernels& avx2_linear_kernels() {
  static const LinearKernels k{gemv_q4_avx2,   gemv_q4_multi_avx2,   gemv_f32_avx2, gemv_bf16_avx2,
                               gemv_f16_avx2,  dequant_rows_q4_avx2,
                               // (the bf16 GEMM's panels are for CPUs with AVX-512 BF16 or AMX)
                               scalar_linear_kernels().dequant_rows_q4_bf16, scalar_linear_kernels().pack_q4_bf16_panel,
                               gemm_rows_avx2,
                               dot_avx2,       axpy_avx2,            gemv_q8_avx2, gemv_q8_multi_avx2,
                               attn_scores_avx2, attn_weighted_sum_avx2, attn_scores16_avx2, attn_weighted_sum16_avx2,
                               widen16_avx2, quantize_x_q8_avx2,
                               gemv_q4_i8_avx2,  gemv_q8_i8_avx2,
                               gemv_q4_i8_multi_avx2, gemv_q8_i8_multi_avx2,
                               avx2_q8k_kernels().quantize_x_q8k, avx2_q8k_kernels().gemv_q8k_i8,
                               avx2_q8k_kernels().gemv_q8k_i8_multi, gemv_h16_multi_avx2};
  return k;
}

}  // namespace qlora::kernels
