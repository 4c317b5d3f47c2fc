// Scalar definitions of the linear kernels, and the run-time choice among instruction sets.
#include "model/linear_kernels.h"

#include <algorithm>
#include <vector>
#include <cmath>
#include <limits>

#include "base/float_formats.h"
#include "model/linear_kernels_inl.h"

namespace qlora::kernels {

Q8Codes q8_codes(const float* code) {
  float cmax = 0.0f;
  bool integers = true;  // a GGUF's own codes (Q4_0's -8..7, Q4_1's 0..15, IQ4_NL's table)
  for (int k = 0; k < 16; ++k) {
    cmax = std::max(cmax, std::fabs(code[k]));
    integers = integers && std::fabs(code[k]) <= 127.0f && code[k] == std::nearbyint(code[k]);
  }
  Q8Codes c{};
  if (integers) {  // taken as they are, as llama.cpp multiplies them: no second rounding
    c.unscale = 1.0f;
    for (int k = 0; k < 16; ++k) c.q[k] = static_cast<int8_t>(code[k]);
    return c;
  }
  c.unscale = cmax / 127.0f;
  for (int k = 0; k < 16; ++k)
    c.q[k] = cmax > 0.0f ? static_cast<int8_t>(std::nearbyint(code[k] * 127.0f / cmax)) : int8_t{0};
  return c;
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

void gemv_h16_multi_scalar(const uint16_t* w, bool bf16, int64_t cols, const float* x, int64_t T, float* y,
                           int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < T; ++t)
    (bf16 ? gemv_bf16_scalar : gemv_f16_scalar)(w, cols, x + t * cols, y + t * ldy, r0, r1);
}

void dequant_rows_q4_scalar(const Q4Matrix& w, int64_t r0, int64_t r1, float* out) {
  const int64_t s = r0 * w.cols, e = r1 * w.cols;
  for (int64_t i = s; i < e; ++i) out[i - s] = q4_weight(w, i);
}

void dequant_rows_q4_bf16_scalar(const Q4Matrix& w, int64_t r0, int64_t r1, uint16_t* out, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < w.cols; ++c) out[(r - r0) * ld + c] = f32_to_bf16(q4_weight(w, r * w.cols + c));
}

void pack_q4_bf16_panel_scalar(const Q4Matrix& w, int64_t n0, int64_t Kp, uint16_t* b) {
  std::memset(b, 0, static_cast<size_t>(Kp / 32 * 1024) * sizeof(uint16_t));
  const int64_t nn = std::min<int64_t>(32, w.cols - n0);
  for (int64_t k = 0; k < w.rows; ++k)
    for (int64_t c = 0; c < nn; ++c)
      b[(k / 32) * 1024 + (c / 16) * 512 + ((k % 32) / 2) * 32 + 2 * (c % 16) + k % 2] =
          f32_to_bf16(q4_weight(w, k * w.cols + n0 + c));
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

void attn_scores_scalar(const float* q, int64_t heads, const float* k, int64_t ld, int64_t count, int64_t n,
                        float scale, float* scores, int64_t lds) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < count; ++j) scores[h * lds + j] = dot_scalar(q + h * n, k + j * ld, n) * scale;
}

void attn_weighted_sum_scalar(const float* p, int64_t ldp, int64_t heads, const float* v, int64_t ld, int64_t count,
                              int64_t n, float* o) {
  for (int64_t h = 0; h < heads; ++h) {
    float* oh = o + h * n;
    for (int64_t i = 0; i < n; ++i) oh[i] = 0.0f;
    for (int64_t j = 0; j < count; ++j) axpy_scalar(p[h * ldp + j], v + j * ld, oh, n);
  }
}

void widen16_scalar(ComputeDType t, const uint16_t* in, float* out, int64_t n) {
  convert_to_f32(to_dtype(t), in, out, static_cast<size_t>(n));
}

// Each row widened (widen16_scalar), then the float32 definitions above.
void attn_scores16_scalar(ComputeDType t, const float* q, int64_t heads, const uint16_t* k, int64_t ld, int64_t count,
                          int64_t n, float scale, float* scores, int64_t lds) {
  std::vector<float> row(static_cast<size_t>(n));
  for (int64_t j = 0; j < count; ++j) {
    widen16_scalar(t, k + j * ld, row.data(), n);
    for (int64_t h = 0; h < heads; ++h) scores[h * lds + j] = dot_scalar(q + h * n, row.data(), n) * scale;
  }
}

void attn_weighted_sum16_scalar(ComputeDType t, const float* p, int64_t ldp, int64_t heads, const uint16_t* v,
                                int64_t ld, int64_t count, int64_t n, float* o) {
  std::vector<float> row(static_cast<size_t>(n));
  for (int64_t i = 0; i < heads * n; ++i) o[i] = 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    widen16_scalar(t, v + j * ld, row.data(), n);
    for (int64_t h = 0; h < heads; ++h) axpy_scalar(p[h * ldp + j], row.data(), o + h * n, n);
  }
}

void quantize_x_q8_scalar(const float* x, int64_t n, int8_t* q, float* d) {
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      amax = std::max(amax, std::fabs(xb[i]));
      finite = finite && std::isfinite(xb[i]);
    }
    if (!finite) {  // NaN / inf: codes 0, scale NaN, so the products are NaN as float32's would be
      std::fill(q + b * kQ8Block, q + (b + 1) * kQ8Block, int8_t{0});
      d[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
    d[b] = db;
    for (int64_t i = 0; i < kQ8Block; ++i)
      q[b * kQ8Block + i] = static_cast<int8_t>(std::clamp(std::nearbyint(xb[i] * id), -127.0f, 127.0f));
  }
}

void gemv_q4_i8_scalar(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1) {
  const Q8Codes c = q8_codes(w.code);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t s = r * w.cols;
    float acc = 0.0f;
    for (int64_t c0 = 0; c0 < w.cols; c0 += kQ8Block) {
      int32_t dot = 0;
      for (int64_t i = 0; i < kQ8Block; ++i)
        dot += int32_t{c.q[detail::nibble_at(w.packed, s + c0 + i)]} * xq[c0 + i];
      const float scale = w.block_absmax((s + c0) / w.blocksize) * (xd[c0 / kQ8Block] * c.unscale);
      acc += scale * static_cast<float>(dot);
    }
    y[r] = acc;
  }
  detail::add_block_min_i8(w, xq, xd, y, r0, r1);
}

void gemv_q8_multi_scalar(const int8_t* q, const float* scales, int64_t cols, const float* x, int64_t T, float* y,
                          int64_t ldy, int64_t r0, int64_t r1) {
  // (the definition: gemv_q8 token by token; y is indexed by absolute row)
  for (int64_t t = 0; t < T; ++t) gemv_q8_scalar(q, scales, cols, x + t * cols, y + t * ldy, r0, r1);
}

void gemv_q8_i8_scalar(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                       float* y, int64_t r0, int64_t r1) {
  const int64_t nb = cols / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t dot = 0;
      for (int64_t i = 0; i < kQ8Block; ++i) dot += int32_t{q[r * cols + b * kQ8Block + i]} * xq[b * kQ8Block + i];
      acc += (scales[r * nb + b] * xd[b]) * static_cast<float>(dot);
    }
    y[r] = acc;
  }
}

void quantize_x_q8k_scalar(const float* x, int64_t n, int8_t* q, float* d) {
  for (int64_t b = 0; b < n / kQ8KBlock; ++b) {
    const float* xb = x + b * kQ8KBlock;
    int8_t* qb = q + b * kQ8KBlock;
    float amax = 0.0f, m = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < kQ8KBlock; ++i) {
      finite = finite && std::isfinite(xb[i]);
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        m = xb[i];
      }
    }
    float db = 0.0f;
    const float iscale = amax > 0.0f ? -127.0f / m : 0.0f;
    if (!finite) {  // NaN / inf: codes 0, scale NaN (the products NaN, as float32's would be)
      std::fill(qb, qb + kQ8KBlock, int8_t{0});
      db = std::numeric_limits<float>::quiet_NaN();
    } else if (amax == 0.0f || !std::isfinite(iscale)) {  // (or so small that 127 / m overflows)
      std::fill(qb, qb + kQ8KBlock, int8_t{0});
    } else {
      for (int64_t i = 0; i < kQ8KBlock; ++i) {
        const float v = std::nearbyint(iscale * xb[i]);
        qb[i] = static_cast<int8_t>(std::min(v, 127.0f));
      }
      db = 1.0f / iscale;
    }
    for (int64_t j = 0; j < kQ8KBlock / kQ8Block; ++j) d[b * (kQ8KBlock / kQ8Block) + j] = db;
  }
}

void gemv_q8k_i8_scalar(const Q4Matrix& w, const int8_t* xq, const float* xd, float* y, int64_t r0, int64_t r1) {
  int8_t code[16];
  for (int k = 0; k < 16; ++k) code[k] = static_cast<int8_t>(w.code[k]);
  const int64_t nsb = w.cols / kQ8KBlock, per = kQ8KBlock / kQ8Block;
  for (int64_t r = r0; r < r1; ++r) {
    float acc = 0.0f;
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const int64_t b0 = r * (w.cols / kQ8Block) + sb * per;  // its first 32-value block
      int32_t isum = 0, imin = 0;
      for (int64_t j = 0; j < per; ++j) {
        int32_t dot = 0, bsum = 0;
        for (int64_t i = 0; i < kQ8Block; ++i) {
          const int32_t xv = xq[sb * kQ8KBlock + j * kQ8Block + i];
          dot += int32_t{code[detail::nibble_at(w.packed, (b0 + j) * kQ8Block + i)]} * xv;
          bsum += xv;
        }
        isum += (int32_t{w.absmax_q[b0 + j]} + w.q8k_scale_bias) * dot;
        if (w.block_min_q) imin += int32_t{w.block_min_q[b0 + j]} * bsum;
      }
      const float dx = xd[sb * per];
      acc += (w.nested_absmax[b0 / per] * dx) * static_cast<float>(isum);
      if (w.block_min_q) acc -= (w.block_min_d[b0 / per] * dx) * static_cast<float>(imin);
    }
    y[r] = acc;
  }
}

void gemv_q8k_i8_multi_scalar(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                              int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < T; ++t)
    gemv_q8k_i8_scalar(w, xq + t * w.cols, xd + t * (w.cols / kQ8Block), y + t * ldy, r0, r1);
}

// The few-token int8 products, token by token through the one-token kernel.
void gemv_q4_i8_multi_scalar(const Q4Matrix& w, const int8_t* xq, const float* xd, int64_t T, float* y, int64_t ldy,
                        int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < T; ++t) gemv_q4_i8_scalar(w, xq + t * w.cols, xd + t * (w.cols / kQ8Block), y + t * ldy, r0, r1);
}
void gemv_q8_i8_multi_scalar(const int8_t* q, const float* scales, int64_t cols, const int8_t* xq, const float* xd,
                        int64_t T, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < T; ++t)
    gemv_q8_i8_scalar(q, scales, cols, xq + t * cols, xd + t * (cols / kQ8Block), y + t * ldy, r0, r1);
}

}  // namespace

const LinearKernels& scalar_linear_kernels() {
  static const LinearKernels k{gemv_q4_scalar,      gemv_q4_multi_scalar,     gemv_f32_scalar,  gemv_bf16_scalar,
                               gemv_f16_scalar,     dequant_rows_q4_scalar,   dequant_rows_q4_bf16_scalar, pack_q4_bf16_panel_scalar, gemm_rows_scalar,
                               dot_scalar,          axpy_scalar,              gemv_q8_scalar, gemv_q8_multi_scalar,
                               attn_scores_scalar,  attn_weighted_sum_scalar, attn_scores16_scalar, attn_weighted_sum16_scalar,
                               widen16_scalar, quantize_x_q8_scalar,
                               gemv_q4_i8_scalar,   gemv_q8_i8_scalar,
                               gemv_q4_i8_multi_scalar, gemv_q8_i8_multi_scalar,
                               quantize_x_q8k_scalar, gemv_q8k_i8_scalar, gemv_q8k_i8_multi_scalar,
                               gemv_h16_multi_scalar};
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
