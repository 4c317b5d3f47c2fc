// Scalar definitions of the linear kernels, and the run-time choice among instruction sets.
#include "model/linear_kernels.h"


#include "base/float_formats.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {

float round_to_dtype(float x, ComputeDType t) {
  switch (t) {
    case ComputeDType::F32: return x;
    case ComputeDType::BF16: return bf16_to_f32(f32_to_bf16(x));
    case ComputeDType::F16: return fp16_to_f32(f32_to_fp16(x));
  }
  return x;
}

float Q4Matrix::nested_block_absmax(int64_t b) const {
  const float scaled = nested_code[absmax_q[b]] * nested_absmax[b / nested_blocksize];
  return scaled + offset;
}

namespace {

using detail::q4_weight;

void gemv_q4_scalar(const Q4Matrix& w, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * w.cols;
    float acc = 0.0f;
    for (int64_t c = 0; c < w.cols; ++c) acc += q4_weight(w, s + c) * x[c];
    y[r] = acc;
  }
}

void gemv_q4_multi_scalar(const Q4Matrix& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0,
                          int64_t r1) {
  for (int64_t t = 0; t < T; ++t) gemv_q4_scalar(w, x + t * w.cols, y + t * ldy, r0, r1);
}

void gemv_f32_scalar(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = w + r * cols;
    float acc = 0.0f;
    for (int64_t c = 0; c < cols; ++c) acc += row[c] * x[c];
    y[r] = acc;
  }
}

void gemv_q8_scalar(const int8_t* q, const float* scales, int64_t cols, const float* x, float* y, int64_t r0,
                    int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* qb = q + r * cols + b * kQ8Block;
      const float* xb = x + b * kQ8Block;
      float s = 0.0f;
      for (int64_t i = 0; i < kQ8Block; ++i) s += static_cast<float>(qb[i]) * xb[i];
      acc += scales[r * nb + b] * s;
    }
    y[r] = acc;
  }
}

void gemv_bf16_scalar(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * cols;
    float acc = 0.0f;
    for (int64_t c = 0; c < cols; ++c) acc += bf16_to_f32(row[c]) * x[c];
    y[r] = acc;
  }
}

void gemv_f16_scalar(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * cols;
    float acc = 0.0f;
    for (int64_t c = 0; c < cols; ++c) acc += fp16_to_f32(row[c]) * x[c];
    y[r] = acc;
  }
}

void dequant_rows_q4_scalar(const Q4Matrix& w, int64_t r0, int64_t r1, float* out) {
  const int64_t s = r0 * w.cols, e = r1 * w.cols;
  for (int64_t i = s; i < e; ++i) out[i - s] = q4_weight(w, i);
}

void gemm_rows_scalar(const float* x, int64_t ldx, int64_t T, const float* w, int64_t ldw, int64_t N, int64_t K,
                      float* y, int64_t ldy) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      const float* a = x + t * ldx;
      const float* b = w + n * ldw;
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += a[k] * b[k];
      y[t * ldy + n] = acc;
    }
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void axpy_scalar(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void attn_scores_scalar(const float* q, const float* k, int64_t ld, int64_t count, int64_t n, float scale,
                        float* scores) {
  for (int64_t j = 0; j < count; ++j) scores[j] = dot_scalar(q, k + j * ld, n) * scale;
}

void attn_weighted_sum_scalar(const float* p, const float* v, int64_t ld, int64_t count, int64_t n, float* o) {
  for (int64_t i = 0; i < n; ++i) o[i] = 0.0f;
  for (int64_t j = 0; j < count; ++j) axpy_scalar(p[j], v + j * ld, o, n);
}

}  // namespace

const LinearKernels& scalar_linear_kernels() {
  static const LinearKernels k{gemv_q4_scalar,   gemv_q4_multi_scalar,   gemv_f32_scalar,  gemv_bf16_scalar,
                               gemv_f16_scalar,  dequant_rows_q4_scalar, gemm_rows_scalar,
                               dot_scalar,       axpy_scalar,            gemv_q8_scalar,
                               attn_scores_scalar, attn_weighted_sum_scalar};
  return k;
}

const LinearKernels& linear_kernels_for(SimdLevel level) {
  switch (level) {
    case SimdLevel::AVX512: return avx512_linear_kernels();
    case SimdLevel::AVX2: return avx2_linear_kernels();
    case SimdLevel::Scalar: break;
  }
  return scalar_linear_kernels();
}

const LinearKernels& active_linear_kernels() {
  static const LinearKernels& k = linear_kernels_for(simd_level());
  return k;
}

}  // namespace qlora::kernels
