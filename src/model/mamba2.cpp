// Mamba2's ops (model/mamba2.h): the baseline instruction set's copies of the scan
// (model/mamba2_kernels_inl.h), the run-time choice between them and the AVX-512 ones
// (mamba2_avx512.cpp), and the gated norm.
#include "model/mamba2.h"

#include <cmath>

#include "model/mamba2_kernels_inl.h"

namespace qlora {

const Mamba2Kernels& scalar_mamba2_kernels() {
  static const Mamba2Kernels k{mamba2_detail::scan_forward, mamba2_detail::scan_backward};
  return k;
}

const Mamba2Kernels& mamba2_kernels_for(SimdLevel level) {
  return level >= SimdLevel::AVX512 ? avx512_mamba2_kernels() : scalar_mamba2_kernels();
}

namespace {
const Mamba2Kernels& active() {
  static const Mamba2Kernels& k = mamba2_kernels_for(simd_level());
  return k;
}

inline float silu_of(float z) { return z / (1.0f + std::exp(-z)); }
}  // namespace

void ssm_scan_forward(const SsmShape& sh, float* y, const float* xbc, const float* dt, const float* A_log,
                      const float* dt_bias, const float* D, int64_t T, float* state, ComputeDType dtype) {
  active().scan_forward(sh, y, xbc, dt, A_log, dt_bias, D, T, state, dtype);
}

void ssm_scan_backward(const SsmShape& sh, float* dxbc, float* ddt, const float* dy, const float* xbc, const float* dt,
                       const float* A_log, const float* dt_bias, const float* D, int64_t T, ComputeDType dtype) {
  active().scan_backward(sh, dxbc, ddt, dy, xbc, dt, A_log, dt_bias, D, T, dtype);
}

void ssm_norm_forward(float* out, float* rstd, const float* y, const float* z, const float* w, int64_t T, int64_t D,
                      int64_t G, float eps, ComputeDType dtype) {
  const int64_t width = D / G;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < T * G; ++r) {
    const int64_t off = (r / G) * D + (r % G) * width;
    const float* yr = y + off;
    const float* zr = z + off;
    float* o = out + off;
    float ss = 0.0f;
    for (int64_t i = 0; i < width; ++i) {
      const float u = yr[i] * silu_of(zr[i]);
      o[i] = u;
      ss += u * u;
    }
    const float rs = 1.0f / std::sqrt(ss / static_cast<float>(width) + eps);
    if (rstd) rstd[r] = rs;
    const float* wr = w + (r % G) * width;
    for (int64_t i = 0; i < width; ++i) o[i] = kernels::round_to_dtype(wr[i] * (o[i] * rs), dtype);
  }
}

void ssm_norm_backward(float* dy, float* dz, const float* dout, const float* y, const float* z, const float* w,
                       const float* rstd, int64_t T, int64_t D, int64_t G) {
  const int64_t width = D / G;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < T * G; ++r) {
    const int64_t off = (r / G) * D + (r % G) * width;
    const float* yr = y + off;
    const float* zr = z + off;
    const float* g = dout + off;
    const float* wr = w + (r % G) * width;
    const float rs = rstd[r];
    // out = w u rs: du = rs (w g - u rs^2 mean(w g u)).
    float dot = 0.0f;
    for (int64_t i = 0; i < width; ++i) dot += wr[i] * g[i] * yr[i] * silu_of(zr[i]);
    const float c = rs * rs * dot / static_cast<float>(width);
    for (int64_t i = 0; i < width; ++i) {
      const float s = 1.0f / (1.0f + std::exp(-zr[i])), silu = zr[i] * s, u = yr[i] * silu;
      const float du = rs * (wr[i] * g[i] - u * c);
      dy[off + i] += du * silu;
      dz[off + i] += du * yr[i] * s * (1.0f + zr[i] * (1.0f - s));
    }
  }
}

}  // namespace qlora
