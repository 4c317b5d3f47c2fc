// LLM.int8 scalar definitions (see int8.h) and the run-time kernel choice.
// Compiled without FMA on purpose: every float operation here is rounded on its own, as in
// bitsandbytes' torch kernels (a fused multiply-add would round differently).
#include "quant/int8.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "base/cpu_features.h"
#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"

namespace qlora {

float round_to_fp16(float x) { return fp16_to_f32(f32_to_fp16(x)); }

namespace {

// round_half_even(v * (127 / absmax)) as torch computes it in float32, where `127.0 / t` is
// Tensor.__rtruediv__ = t.reciprocal() * 127: the scale is (1 / absmax) * 127, two roundings,
// which differs from 127 / absmax in the last bit often enough to flip a code. absmax == 0 (all
// elements zero, or all outliers) makes bnb compute 0 * inf = NaN, whose int8 conversion is
// undefined; such a row is scaled by 0 afterwards anyway, so its codes are defined as 0.
inline void quantize_row(const Int8Kernels& k, const float* v, int64_t n, float absmax, int8_t* out) {
  if (absmax == 0.0f) {
    for (int64_t i = 0; i < n; ++i) out[i] = 0;
    return;
  }
  k.quantize_row(v, n, (1.0f / absmax) * 127.0f, out);
}

}  // namespace

Quantized8bit quantize_int8_rowwise(const float* w, int64_t rows, int64_t cols) {
  check(rows > 0 && cols > 0, "int8 quantize", "the weight must have rows and columns");
  Quantized8bit q;
  q.rows = rows;
  q.cols = cols;
  q.codes.resize(static_cast<size_t>(rows * cols));
  q.scb.resize(static_cast<size_t>(rows));
  const Int8Kernels& k = active_int8_kernels();
  std::vector<float> h(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    float absmax = 0.0f;
    k.round_fp16(w + r * cols, h.data(), cols);
    for (int64_t c = 0; c < cols; ++c) {
      if (!std::isfinite(h[c]))
        fail("int8 quantize", "weight [" + std::to_string(r) + ", " + std::to_string(c) + "] = " +
                                  std::to_string(w[r * cols + c]) +
                                  " is not finite in float16 (bitsandbytes quantizes via float16)");
      absmax = std::max(absmax, std::fabs(h[c]));
    }
    q.scb[r] = absmax;
    quantize_row(k, h.data(), cols, absmax, q.codes.data() + r * cols);
  }
  return q;
}

void dequantize_int8_vectorwise(const Quantized8bit& q, float* out) {
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t i = 0; i < q.cols; ++i)
      out[r * q.cols + i] = static_cast<float>(q.codes[r * q.cols + i]) * q.scb[r] * kInv127;
}

void dequantize_int8_rows(const Quantized8bit& q, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const float s = q.scb[r] * kInv127;
    const int8_t* c = q.codes.data() + r * q.cols;
    float* o = out + (r - r0) * q.cols;
    for (int64_t i = 0; i < q.cols; ++i) o[i] = static_cast<float>(c[i]) * s;
  }
}

void quantize_int8_activations(const float* x, int64_t T, int64_t cols, float threshold, Int8Activations& out) {
  out.T = T;
  out.cols = cols;
  out.ca.resize(static_cast<size_t>(T * cols));
  out.sca.resize(static_cast<size_t>(T));
  out.outlier_cols.clear();
  const Int8Kernels& k = active_int8_kernels();
  // X16 (scratch kept per thread: forward() may run concurrently).
  thread_local std::vector<float> h;
  thread_local std::vector<uint8_t> is_outlier_col;
  h.resize(static_cast<size_t>(T * cols));
  // A long prompt's activations are split across threads by tokens (~16K values each); the
  // outlier scan in between stays serial (a compare per value).
  const int64_t min_tokens = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols));
  float* hp = h.data();
  parallel_for_range(T, min_tokens, [&](int64_t t0, int64_t t1) {
    k.round_fp16(x + t0 * cols, hp + t0 * cols, (t1 - t0) * cols);
  });
  const bool decompose = threshold > 0.0f;
  if (decompose) {
    is_outlier_col.assign(static_cast<size_t>(cols), 0);
    for (int64_t t = 0; t < T; ++t) {
      float* v = h.data() + t * cols;
      // Outlier elements are zeroed before the absmax (bnb: A[outliers] = 0); the rest of
      // an outlier column still counts towards it.
      uint8_t* flag = is_outlier_col.data();
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const bool o = std::fabs(v[c]) >= threshold;
        flag[c] |= static_cast<uint8_t>(o);
        v[c] = o ? 0.0f : v[c];
      }
    }
    for (int64_t c = 0; c < cols; ++c)
      if (is_outlier_col[c]) out.outlier_cols.push_back(static_cast<int32_t>(c));
  }
  parallel_for_range(T, min_tokens, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* v = hp + t * cols;
      float absmax = 0.0f;
      // max is exact in any order (activations are finite; a NaN would poison bnb's result too).
#pragma omp simd reduction(max : absmax)
      for (int64_t c = 0; c < cols; ++c) absmax = std::max(absmax, std::fabs(v[c]));
      out.sca[t] = absmax;
      int8_t* ca = out.ca.data() + t * cols;
      quantize_row(k, v, cols, absmax, ca);
      for (int32_t c : out.outlier_cols) ca[c] = 0;
    }
  });
}

void int8_linear_forward_ref(const Quantized8bit& w, const float* x, int64_t T, float threshold,
                             const float* bias, float* y) {
  Int8Activations a;
  quantize_int8_activations(x, T, w.cols, threshold, a);
  const int64_t K = w.cols;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < w.rows; ++r) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += static_cast<int32_t>(a.ca[t * K + k]) * static_cast<int32_t>(w.codes[r * K + k]);
      float v = static_cast<float>(acc) * (a.sca[t] * w.scb[r]) * kInt8MmDequantScale;
      if (bias) v += bias[r];
      for (int32_t c : a.outlier_cols) {
        const float wd = static_cast<float>(w.codes[r * K + c]) * w.scb[r] * kInv127;
        v += x[t * K + c] * wd;
      }
      y[t * w.rows + r] = v;
    }
}

// ---- kernels -----------------------------------------------------------------------------

namespace {

void gemm_i8_scalar(const int8_t* a, int64_t lda, int64_t T, const int8_t* w, int64_t ldw, int64_t N, int64_t K,
                    int32_t* acc, int64_t ldacc) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      const int8_t* ar = a + t * lda;
      const int8_t* wr = w + n * ldw;
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += static_cast<int32_t>(ar[k]) * static_cast<int32_t>(wr[k]);
      acc[t * ldacc + n] = s;
    }
}

void round_fp16_scalar(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = round_to_fp16(x[i]);
}

void quantize_row_scalar(const float* v, int64_t n, float scale, int8_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int8_t>(std::nearbyint(v[i] * scale));
}

}  // namespace

const Int8Kernels& scalar_int8_kernels() {
  static const Int8Kernels k{gemm_i8_scalar, round_fp16_scalar, quantize_row_scalar};
  return k;
}

const Int8Kernels& active_int8_kernels() {
  static const Int8Kernels& k = [] () -> const Int8Kernels& {
    switch (simd_level()) {
      case SimdLevel::AVX512: return cpu_has_avx512_vnni() ? avx512vnni_int8_kernels() : avx512_int8_kernels();
      case SimdLevel::AVX2: return avx2_int8_kernels();
      case SimdLevel::Scalar: break;
    }
    return scalar_int8_kernels();
  }();
  return k;
}

}  // namespace qlora
