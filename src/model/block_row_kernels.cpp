// Scalar definitions of the block-row kernels (ggml's reference dequantization, then plain
// dot products), and the run-time choice among instruction sets.
#include "model/block_row_kernels.h"

#include <vector>

namespace qlora::kernels {

bool block_rows_supported(GgmlType t) {
  switch (t) {
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::Q3_K:
    case GgmlType::Q2_K: return true;
    default: return false;
  }
}

namespace {

void rows_to_f32_scalar(const BlockRows& w, int64_t r0, int64_t r1, float* out, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) dequantize_row_ref(w.type, w.data + r * w.row_bytes, out + (r - r0) * ld, w.cols);
}

void gemv_scalar(const BlockRows& w, const float* x, int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(w.cols));
  for (int64_t r = r0; r < r1; ++r) {
    rows_to_f32_scalar(w, r, r + 1, row.data(), w.cols);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + t * w.cols;
      float acc = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) acc += row[static_cast<size_t>(c)] * xt[c];
      y[t * ldy + r] = acc;
    }
  }
}

void gemv_i8_scalar(const BlockRows& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                    int64_t r0, int64_t r1) {
  thread_local std::vector<float> row;
  row.resize(static_cast<size_t>(w.cols));
  for (int64_t r = r0; r < r1; ++r) {
    rows_to_f32_scalar(w, r, r + 1, row.data(), w.cols);
    for (int64_t t = 0; t < T; ++t) {
      const int8_t* qt = xq + t * w.cols;
      const float* dt = xd + t * (w.cols / 32);
      float acc = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) acc += row[static_cast<size_t>(c)] * (static_cast<float>(qt[c]) * dt[c / 32]);
      y[t * ldy + r] = acc;
    }
  }
}

}  // namespace

const BlockRowKernels& scalar_block_row_kernels() {
  static const BlockRowKernels k{gemv_scalar, rows_to_f32_scalar, gemv_i8_scalar};
  return k;
}

const BlockRowKernels& block_row_kernels_for(SimdLevel level) {
  return level >= SimdLevel::AVX2 ? avx2_block_row_kernels() : scalar_block_row_kernels();
}

const BlockRowKernels& active_block_row_kernels() {
  static const BlockRowKernels& k = block_row_kernels_for(simd_level());
  return k;
}

}  // namespace qlora::kernels
