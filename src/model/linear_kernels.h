#pragma once
// Matrix kernels behind QuantLinear (y = x · Wᵀ), one set per instruction set:
//
//  * gemv_q4: the FUSED 4-bit matrix-vector product used for decoding one token. NF4/FP4
//    nibbles are decoded in registers with the block's absmax (undoing double
//    quantization on the fly); float weights are never written out. (The AVX-512 kernel
//    has a faster path for rows of whole 32-weight chunks, see linear_kernels_avx512.cpp.)
//  * gemv_f32 / gemv_bf16 / gemv_f16: the same for full-precision weights.
//  * gemv_q8: the same for 8-bit rows with a float32 scale per 32 (a GGUF's Q8_0 head);
//    gemv_q8_multi: for a few tokens at once (batched decoding).
//  * gemv_q4_multi: the fused GEMV for up to 8 tokens (prompts of a few tokens).
//  * dequant_rows_q4: rows of a 4-bit matrix to float32 (for the GEMM path).
//  * pack_q4_bf16_panel: columns of a 4-bit matrix straight into the bf16 GEMM's packed layout
//    (bf16 compute's input gradient).
//  * gemm_rows: Y (T, N) = X (T, K) · Wᵀ on float32 weight rows as they lie (dot-product
//    register tiles, no packing); the driver dequantizes 4-bit weights a few rows at a time.
//
// The scalar kernels are the definitions; SIMD kernels share their signatures and are
// tested against them (equal up to float summation order). All are single-threaded: the
// callers in quant_linear.cpp split rows / panels across threads.
//
// A weight's dequantized value is code[nibble] * absmax[block] computed in float32 (as
// bitsandbytes' dequantize_4bit), then rounded to `round_to` (the compute dtype: F32 = no
// rounding, BF16 or F16), which is what bitsandbytes hands to the matmul in that dtype.
#include <cstdint>
#include <cstring>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/float_formats.h"

namespace qlora::kernels {

// A [rows, cols] 4-bit matrix as bitsandbytes stores it: the flattened tensor in blocks of
// `blocksize` (a block may span rows), element 2j in the high nibble of packed[j].
struct Q4Matrix {
  const uint8_t* packed = nullptr;  // (rows*cols+1)/2 bytes
  int64_t rows = 0, cols = 0;
  int blocksize = 64;               // 32..4096, power of two
  const float* code = nullptr;      // 16 code values
  // Absmax per block: float32 (absmax != nullptr), fp16 (absmax_f16 != nullptr: a GGUF's
  // Q4_0 / Q4_1 / IQ4_NL scale as stored, widened exactly), or double-quantized:
  // nested_code[absmax_q[b]] * nested_absmax[b / nested_blocksize] + offset.
  const float* absmax = nullptr;
  const uint16_t* absmax_f16 = nullptr;
  const uint8_t* absmax_q = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;  // 256 values
  int nested_blocksize = 256;
  float offset = 0.0f;
  // A GGUF's Q4_1 / Q4_K blocks kept as stored: per block, a term added after the product
  // (weight = code * absmax + block_min, the two rounded apart as ggml's d * q + m); null for
  // every other weight. (The int8-activation kernels add its term per 32-value chunk:
  // detail::add_block_min_i8.)
  // Kernels read it through has_min() / block_min_value() or a table of a range's minimums
  // (block_min_f16 in its place: Q4_1's fp16 minimum as stored).
  const float* block_min = nullptr;
  const uint16_t* block_min_f16 = nullptr;
  // Or Q4_K's form: -(block_min_d[b / block_min_group] * block_min_q[b]) (QuantState's).
  const uint8_t* block_min_q = nullptr;
  const float* block_min_d = nullptr;
  int block_min_group = 8;
  ComputeDType round_to = ComputeDType::F32;
  // A GGUF's Q4_K or IQ4_XS kept as stored (q4_matrix_view sets it): 256-value super-blocks
  // whose scale per 32 is an integer (absmax_q[b] + q8k_scale_bias: Q4_K's 6-bit sc, IQ4_XS's
  // ls - 32) times one d per 256 (nested_absmax, nested_blocksize 8), integer codes (code[]),
  // and for Q4_K minimums m_b * dmin per 256 (block_min_q, block_min_group 8). The form
  // llama.cpp multiplies in integers against Q8_K activations (gemv_q8k_i8 below).
  bool q8k_form = false;
  int q8k_scale_bias = 0;

  float block_absmax(int64_t b) const {
    return absmax ? absmax[b] : absmax_f16 ? fp16_to_f32(absmax_f16[b]) : nested_block_absmax(b);
  }
  bool has_min() const { return block_min || block_min_f16 || block_min_q; }
  // REQUIRES has_min().
  float block_min_value(int64_t b) const {
    if (block_min) return block_min[b];
    if (block_min_f16) return fp16_to_f32(block_min_f16[b]);
    return -(block_min_d[b / block_min_group] * static_cast<float>(block_min_q[b]));
  }
  // code * scale + offset rounded twice, as bitsandbytes (never a fused multiply-add, so
  // it lives out of line in a file compiled without FMA).
  float nested_block_absmax(int64_t b) const;
};

inline constexpr int kMaxGemvTokens = 8;  // tokens one gemv_q4_multi call handles

struct LinearKernels {
  // y[r] = sum_c W[r, c] * x[c] for r in [r0, r1) (y indexed by absolute row).
  void (*gemv_q4)(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1);
  // The fused GEMV for a few tokens at once (each weight decoded once for all of them):
  // y[t * ldy + r] = sum_c W[r, c] * x[t * cols + c] for t < T <= kMaxGemvTokens.
  void (*gemv_q4_multi)(const Q4Matrix& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0,
                        int64_t r1);
  void (*gemv_f32)(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1);
  void (*gemv_bf16)(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1);
  void (*gemv_f16)(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1);
  // out (r1-r0, cols) = dequantized rows [r0, r1), rounded to w.round_to.
  void (*dequant_rows_q4)(const Q4Matrix& w, int64_t r0, int64_t r1, float* out);
  // out[(r - r0) * ld + c] = bf16 (nearest even) of the dequantized W[r][c] (itself rounded to
  // w.round_to) for r in [r0, r1), c < cols (ld >= cols; nothing past cols is written): the
  // bf16 GEMM's A rows straight from the codes (bf16 compute's forward, model/quant_linear.cpp).
  void (*dequant_rows_q4_bf16)(const Q4Matrix& w, int64_t r0, int64_t r1, uint16_t* out, int64_t ld);
  // The bf16 GEMM's B panel (model/gemm_bf16_tiles.h pack_b's VNNI layout) of W (rows, cols)
  // taken as the (K = rows, N = cols) right operand of an input gradient dX = dY · W: output
  // columns [n0, n0 + 32) over K values 0..Kp (Kp a multiple of 32, >= rows), element (k, c) at
  //   b[(k / 32) * 1024 + (c / 16) * 512 + ((k % 32) / 2) * 32 + 2 * (c % 16) + k % 2]
  // = bf16 (nearest even) of the dequantized W[k][n0 + c] (itself rounded to w.round_to), zero
  // past cols or rows. Straight from the 4-bit codes: no float32 copy of the weight (bf16
  // compute's backward through a frozen 4-bit weight, model/cpu_backend.cpp).
  void (*pack_q4_bf16_panel)(const Q4Matrix& w, int64_t n0, int64_t Kp, uint16_t* b);
  // y[t * ldy + n] = sum_k x[t * ldx + k] * w[n * ldw + k], t < T, n < N: the GEMM on weight
  // rows as they are (row-major, no packing), dot-product register tiles.
  void (*gemm_rows)(const float* x, int64_t ldx, int64_t T, const float* w, int64_t ldw, int64_t N, int64_t K,
                    float* y, int64_t ldy);
  // Attention's inner loops: sum_i a[i] * b[i], and y[i] += alpha * x[i], for i < n.
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);
  // y[r] = sum_b scales[r * cols/32 + b] * sum_{i<32} q[r * cols + 32 b + i] * x[32 b + i] for
  // r in [r0, r1): 8-bit rows in blocks of 32 with one float32 scale each (GGUF's Q8_0,
  // DenseWeight's Q8 storage). REQUIRES cols % 32 == 0.
  void (*gemv_q8)(const int8_t* q, const float* scales, int64_t cols, const float* x, float* y, int64_t r0,
                  int64_t r1);
  // gemv_q8 for T <= kMaxGemvTokens tokens at once, each block of 8-bit weights read once for
  // all of them (batched decoding's output head): y[t * ldy + r] = gemv_q8 of x + t * cols,
  // bit for bit the single-token kernel's value at the same level.
  void (*gemv_q8_multi)(const int8_t* q, const float* scales, int64_t cols, const float* x, int64_t T, float* y,
                        int64_t ldy, int64_t r0, int64_t r1);
  // Decode's attention rows for `heads` query heads that share one key/value head (a GQA
  // group; heads = 1 without grouping): query h is q + h * n (n floats), the cached keys and
  // values rows `ld` floats apart (n floats each). scores[h * lds + j] = scale * sum_i
  // q[h * n + i] * k[j * ld + i], and o[h * n + i] = sum_j p[h * ldp + j] * v[j * ld + i] (o
  // overwritten), for j < count. The scalar ones are dot and axpy in a loop, head by head; the
  // SIMD ones work on several keys / value rows per step, and the AVX-512 ones load each key
  // and value row once for up to 3 heads (every query head of a group re-read it before).
  void (*attn_scores)(const float* q, int64_t heads, const float* k, int64_t ld, int64_t count, int64_t n,
                      float scale, float* scores, int64_t lds);
  void (*attn_weighted_sum)(const float* p, int64_t ldp, int64_t heads, const float* v, int64_t ld, int64_t count,
                            int64_t n, float* o);
  // attn_scores / attn_weighted_sum on a 16-bit cache (t: BF16 or F16 bit patterns, rows `ld`
  // values apart), each value widened to float32 (exactly) as it is read.
  void (*attn_scores16)(ComputeDType t, const float* q, int64_t heads, const uint16_t* k, int64_t ld, int64_t count,
                        int64_t n, float scale, float* scores, int64_t lds);
  void (*attn_weighted_sum16)(ComputeDType t, const float* p, int64_t ldp, int64_t heads, const uint16_t* v,
                              int64_t ld, int64_t count, int64_t n, float* o);
  // out (n) = the 16-bit values `in` (t: BF16 or F16 bit patterns) as float32, exactly (a
  // 16-bit KV cache widened for attention). NaN stays NaN (the SIMD ones quiet a signaling one).
  void (*widen16)(ComputeDType t, const uint16_t* in, float* out, int64_t n);

  // ---- decoding on 8-bit activations (opt-in: ModelLoadOptions::int8_activations) ----
  // Not the bitsandbytes product: llama.cpp's. The activation vector is quantized per 32
  // values (quantize_x_q8, GGUF's Q8_0: d = max|x| / 127, q = nearest-even(x / d)), a 4-bit
  // weight's code is taken as the int8 q8_code = nearest-even(code * 127 / max|code|), and
  // each 32-weight chunk's product is an exact integer dot product scaled once:
  //   y[r] = sum_chunks absmax[block] * (d_chunk * max|code| / 127) * sum_i q8_code[nib_i] * q_i.
  // Integer dot products are what llama.cpp decodes with; on AVX2 this is ~10 instructions
  // per 32 weights against ~22 for the float lookup. The extra error (codes to 1/127 of the
  // block's absmax, activations to 1/127 of their chunk's maximum) is measured in
  // bench/RESULTS.md. REQUIRES n % 32 == 0 / cols % 32 == 0.
  void (*quantize_x_q8)(const float* x, int64_t n, int8_t* q, float* d);
  void (*gemv_q4_i8)(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1);
  // gemv_q8 on quantized activations: y[r] = sum_b (scales[r, b] * d_b) * sum_i q[r, b, i] * xq[b, i].
  void (*gemv_q8_i8)(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd, float* y,
                     int64_t r0, int64_t r1);
  // Both for T <= kMaxGemvTokens tokens at once (batched decoding): xq (T, cols), xd (T,
  // cols / 32), each token quantized by quantize_x_q8; y[t * ldy + r] = the one-token kernel's
  // value for token t at the same level, bit for bit (the VNNI ones decode each weight step
  // once for all the tokens; the others run the one-token kernel token by token).
  void (*gemv_q4_i8_multi)(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                           int64_t r0, int64_t r1);
  void (*gemv_q8_i8_multi)(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                           int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1);

  // ---- a K-quant weight on llama.cpp's Q8_K activations (ggml_vec_dot_q4_K_q8_K) ----
  // quantize_x_q8k: x (n values, n % 256 == 0) per 256 as llama.cpp's quantize_row_q8_K_ref: m the
  // first value of largest magnitude, iscale = -127 / m, q = min(127, nearest-even(iscale * x)),
  // d = 1 / iscale (q and d zero for an all-zero block); d is written once per 32 values (8
  // copies per 256), the xd layout of the kernels above. (One scale per 256 where
  // quantize_x_q8 has one per 32: the super-block's integer sums then need no float step.)
  void (*quantize_x_q8k)(const float* x, int64_t n, int8_t* q, float* d);
  // y[r] = sum over 256-blocks s of  xd_s * (d_s * sum_j sc_j * dot_j - dmin_s * sum_j m_j * bsum_j)
  // for a w.q8k_form weight: dot_j the integer product of 32-value block j's codes with xq,
  // bsum_j the sum of its xq, sc_j its integer scale, m_j its minimum code (Q4_K). llama.cpp's
  // ggml_vec_dot_q4_K_q8_K / _iq4_xs_q8_K up to float summation order. REQUIRES w.q8k_form,
  // xq / xd from quantize_x_q8k.
  void (*gemv_q8k_i8)(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1);
  // The same for T <= kMaxGemvTokens tokens (xq (T, cols), xd (T, cols / 32)): the AVX2 kernel
  // decodes each weight step once for two tokens; each token's result is the one-token
  // kernel's, bit for bit.
  void (*gemv_q8k_i8_multi)(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                            int64_t r0, int64_t r1);
  // gemv_bf16 (bf16 true) / gemv_f16 for T <= kMaxGemvTokens tokens at once, each 16-bit
  // weight widened once for all of them (batched decoding's output head held in 16 bits):
  // y[t * ldy + r] = that kernel on x + t * cols, bit for bit at the same level.
  void (*gemv_h16_multi)(const uint16_t* w, bool bf16, int64_t cols, const float* x, int64_t T, float* y, int64_t ldy,
                         int64_t r0, int64_t r1);
};
// The super-block of quantize_x_q8k (GGML's QK_K).
inline constexpr int64_t kQ8KBlock = 256;

// The int8 code book of gemv_q4_i8 for a 16-value code book, and the factor that undoes it: a
// book of integers within +-127 (a GGUF's Q4_0 / Q4_1 / IQ4_NL codes) as it is, factor 1;
// any other (NF4, FP4) rescaled to nearest-even(code * 127 / max|code|), factor max|code| / 127.
struct Q8Codes {
  int8_t q[16];
  float unscale;
};
Q8Codes q8_codes(const float* code);
// The block size of gemv_q8's rows.
inline constexpr int64_t kQ8Block = 32;

// The AVX-512 VNNI (vpdpbusd) versions of gemv_q4_i8 and gemv_q8_i8 (linear_kernels_i8_avx512.cpp).
// avx512_linear_kernels() hands them out when cpu_has_avx512_vnni(); call them only then.
struct Int8GemvKernels {
  decltype(LinearKernels::gemv_q4_i8) gemv_q4_i8;
  decltype(LinearKernels::gemv_q8_i8) gemv_q8_i8;
  decltype(LinearKernels::gemv_q4_i8_multi) gemv_q4_i8_multi;
  decltype(LinearKernels::gemv_q8_i8_multi) gemv_q8_i8_multi;
};
const Int8GemvKernels& avx512_vnni_int8_gemv_kernels();

// The AVX2 Q8_K kernels (linear_kernels_q8k_avx2.cpp); avx2_linear_kernels() and
// avx512_linear_kernels() hand them out. Call them only when cpu_simd_level() >= AVX2.
struct Q8KKernels {
  decltype(LinearKernels::quantize_x_q8k) quantize_x_q8k;
  decltype(LinearKernels::gemv_q8k_i8) gemv_q8k_i8;
  decltype(LinearKernels::gemv_q8k_i8_multi) gemv_q8k_i8_multi;
};
const Q8KKernels& avx2_q8k_kernels();

const LinearKernels& scalar_linear_kernels();
const LinearKernels& avx2_linear_kernels();    // only when cpu_simd_level() >= AVX2
const LinearKernels& avx512_linear_kernels();  // only when cpu_simd_level() >= AVX512
const LinearKernels& linear_kernels_for(SimdLevel level);
// linear_kernels_for(simd_level()), chosen once.
const LinearKernels& active_linear_kernels();

// Rounds x to the nearest value representable in `t` (ties to even); F32 is the identity.
// Inline, with bf16 as bit arithmetic (bf16_to_f32(f32_to_bf16(x)) bit for bit: NaN stays NaN,
// made quiet, never rounded into infinity), so the per-element loops of the bf16 compute path
// (norms, scales, softcaps) vectorize instead of making two calls per element. Internal
// linkage: the SIMD kernel files include it with their own instruction sets, and an AVX-512
// out-of-line copy must never serve the other files' callers.
namespace {
inline float round_to_dtype(float x, ComputeDType t) {
  if (t == ComputeDType::BF16) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    u = (nan ? (u | 0x00400000u) : u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    std::memcpy(&x, &u, 4);
    return x;
  }
  if (t == ComputeDType::F16) return fp16_to_f32(f32_to_fp16(x));
  return x;
}
}  // namespace

}  // namespace qlora::kernels
