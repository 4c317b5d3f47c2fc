#pragma once
// LLM.int8 (bitsandbytes 0.50.2 Linear8bitLt, has_fp16_weights=False): vector-wise absmax
// int8 weights and the mixed-precision decomposition of outlier features.
//
// The definitions (bnb's pure-torch kernels in backends/default/ops.py and
// autograd/_functions.py, which are what runs on a CPU; see tools/make_int8_fixtures.py):
//  * Weight W (out, in): rounded to float16 first (Int8Params._quantize casts to fp16),
//    SCB[r] = max_c |W16[r, c]| (float32, one per output row), and
//    CB[r, c] = round_half_even(W16[r, c] * ((1 / SCB[r]) * 127)) in float32 -- torch evaluates
//    `127.0 / t` as t.reciprocal() * 127, three roundings in all. A zero row gets SCB 0, codes 0.
//  * Activations X (T, in), at inference: X16 = X rounded to float16; an element with
//    |X16| >= threshold (6.0) is an outlier; a column holding any outlier is an outlier column.
//    SCA[t] = max |X16[t, c]| over the NON-outlier elements of token t (outlier elements are
//    zeroed first, the other elements of outlier columns still count), CA = round(X16 * (127 /
//    SCA)) like the weight, with every outlier column zeroed.
//  * y[t, r] = float(sum_c CA[t, c] CB[r, c]) * (SCA[t] * SCB[r]) * 6.200124e-05f (+ bias[r]),
//    int32 accumulation, then + sum over outlier columns c of X[t, c] * Wd[r, c] with
//    Wd = (CB * SCB) * (1/127)f in the input's precision (X here, not X16).
//    Note bnb's constant 6.200124e-05 is not 1/127² = 6.2000124e-05 (relative +1.8e-5); we use
//    bnb's, since matching bnb is the point.
//  * The training backward (dX = dY · W) and bnb's CPU training forward (MatMul8bitFp) use
//    W = CB * (SCB * (1/127)f) -- a different rounding order from Wd above.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qlora {

inline constexpr float kInt8DefaultThreshold = 6.0f;
// bitsandbytes' scale for int8_mm_dequant (backends/default/ops.py), as float32.
inline constexpr float kInt8MmDequantScale = 6.200124e-05f;
// float32(1/127), bnb's int8_vectorwise_dequant constant 7.874015718698502e-3.
inline constexpr float kInv127 = 7.874015718698502e-3f;

// An int8 Linear weight in bitsandbytes' row layout: what transformers saves as
// `<module>.weight` (int8, (rows, cols)) and `<module>.SCB` (float32, (rows)).
struct Quantized8bit {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;  // (rows, cols) row-major: CB
  std::vector<float> scb;     // (rows): absmax of each row (of the float16-rounded weight)
  size_t bytes() const { return codes.size() + scb.size() * sizeof(float); }
};

// Rounds x to float16 and back (round to nearest even; overflow gives ±inf), as
// tensor.to(torch.float16) does.
float round_to_fp16(float x);

// CB, SCB of W (rows, cols) exactly as bitsandbytes computes them. Throws Error when a weight
// is not finite in float16 (|w| > 65504 or NaN): bnb would produce NaN codes.
Quantized8bit quantize_int8_rowwise(const float* w, int64_t rows, int64_t cols);

// The whole weight as bitsandbytes' int8_vectorwise_dequant (and transformers' dequantize())
// computes it: (CB * SCB) * (1/127). out (rows, cols).
void dequantize_int8_vectorwise(const Quantized8bit& q, float* out);

// Rows [r0, r1) of the weight as the training backward uses it: CB * (SCB * (1/127)).
void dequantize_int8_rows(const Quantized8bit& q, int64_t r0, int64_t r1, float* out);

// The activation side of one int8 matmul (see above). Holds its buffers between calls so a
// decode loop does not allocate.
struct Int8Activations {
  int64_t T = 0, cols = 0;
  std::vector<int8_t> ca;               // (T, cols), outlier columns zeroed
  std::vector<float> sca;               // (T)
  std::vector<int32_t> outlier_cols;    // ascending
};

// Quantizes X (T, cols) with the outlier threshold (<= 0: no decomposition).
void quantize_int8_activations(const float* x, int64_t T, int64_t cols, float threshold, Int8Activations& out);

// The whole LLM.int8 forward, scalar and straightforward: the reference the fast path in
// QuantLinear is tested against. y (T, rows); bias may be null.
void int8_linear_forward_ref(const Quantized8bit& w, const float* x, int64_t T, float threshold,
                             const float* bias, float* y);

// ---- integer kernels (scalar definition + AVX2 / AVX-512, chosen at run time) ----------

struct Int8Kernels {
  // acc[t * ldacc + n] = sum_k a[t * lda + k] * w[n * ldw + k] (int32, exact), t < T, n < N.
  void (*gemm_i8)(const int8_t* a, int64_t lda, int64_t T, const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                  int32_t* acc, int64_t ldacc);
  // out[i] = round_to_fp16(x[i]) (in place allowed): F16C / AVX-512 conversions are exact IEEE
  // round-to-nearest-even, equal to the scalar definition.
  void (*round_fp16)(const float* x, float* out, int64_t n);
  // out[i] = round_half_even(v[i] * scale) as int8. REQUIRES |v[i] * scale| <= 127.5.
  void (*quantize_row)(const float* v, int64_t n, float scale, int8_t* out);
};

const Int8Kernels& scalar_int8_kernels();
const Int8Kernels& avx2_int8_kernels();    // only when the CPU has AVX2
const Int8Kernels& avx512_int8_kernels();  // only when the CPU has AVX-512 (F + BW)
const Int8Kernels& avx512vnni_int8_kernels();  // only when cpu_has_avx512_vnni() (base/cpu_features.h)
// The best kernels allowed by simd_level() (QLORA_SIMD caps it; VNNI counts as AVX-512), chosen once.
const Int8Kernels& active_int8_kernels();

}  // namespace qlora
