// Mamba (1)'s scan (model/mamba1.h): the baseline instruction set's copies of the kernels
// (model/mamba1_kernels_inl.h) on the scalar exp, and the run-time choice between them and the
// AVX-512 ones (mamba1_avx512.cpp).
#include "model/mamba1.h"

#include <cmath>

#include "model/activation_kernels.h"
#include "model/linear_kernels.h"
#include "model/mamba1_kernels_inl.h"

namespace qlora {

namespace {
void scalar_forward(const Ssm1Shape& sh, float* y, const float* x, const float* dt, const float* bc, const float* A,
                    const float* Dskip, int64_t T, float* state, ComputeDType dtype) {
  mamba1_detail::scan_forward(sh, y, x, dt, bc, A, Dskip, T, state, dtype, kernels::scalar_activation_kernels());
}
void scalar_backward(const Ssm1Shape& sh, float* dx, float* ddt, float* dbc, const float* dy, const float* x,
                     const float* dt, const float* bc, const float* A, const float* Dskip, int64_t T,
                     ComputeDType dtype) {
  mamba1_detail::scan_backward(sh, dx, ddt, dbc, dy, x, dt, bc, A, Dskip, T, dtype,
                               kernels::scalar_activation_kernels());
}

const Mamba1Kernels& active() {
  static const Mamba1Kernels& k = mamba1_kernels_for(simd_level());
  return k;
}
}  // namespace

const Mamba1Kernels& scalar_mamba1_kernels() {
  static const Mamba1Kernels k{scalar_forward, scalar_backward};
  return k;
}

const Mamba1Kernels& mamba1_kernels_for(SimdLevel level) {
  return level >= SimdLevel::AVX512 ? avx512_mamba1_kernels() : scalar_mamba1_kernels();
}

void ssm1_norm_forward(float* out, float* rstd, const float* in, const float* w, int64_t T, int64_t parts, int64_t width,
                       float eps, ComputeDType dtype) {
  for (int64_t r = 0; r < T * parts; ++r) {
    const float* x = in + r * width;
    const float* wp = w + (r % parts) * width;
    float* o = out + r * width;
    float ss = 0.0f;
    for (int64_t i = 0; i < width; ++i) ss += x[i] * x[i];
    const float rs = 1.0f / std::sqrt(ss / static_cast<float>(width) + eps);
    if (rstd) rstd[r] = rs;
    for (int64_t i = 0; i < width; ++i) o[i] = kernels::round_to_dtype(wp[i] * kernels::round_to_dtype(x[i] * rs, dtype), dtype);
  }
}

void ssm1_norm_backward(float* din, const float* dout, const float* in, const float* w, const float* rstd, int64_t T,
                        int64_t parts, int64_t width) {
  for (int64_t r = 0; r < T * parts; ++r) {
    const float* x = in + r * width;
    const float* g = dout + r * width;
    const float* wp = w + (r % parts) * width;
    const float rs = rstd[r];
    // out = w x rs: dx = rs (w g - x rs^2 mean(w g x)).
    float dot = 0.0f;
    for (int64_t i = 0; i < width; ++i) dot += wp[i] * g[i] * x[i];
    const float c = rs * rs * dot / static_cast<float>(width);
    for (int64_t i = 0; i < width; ++i) din[r * width + i] += rs * (wp[i] * g[i] - x[i] * c);
  }
}

void ssm1_scan_forward(const Ssm1Shape& sh, float* y, const float* x, const float* dt, const float* bc,
                       const float* A, const float* Dskip, int64_t T, float* state, ComputeDType dtype) {
  active().scan_forward(sh, y, x, dt, bc, A, Dskip, T, state, dtype);
}

void ssm1_scan_backward(const Ssm1Shape& sh, float* dx, float* ddt, float* dbc, const float* dy, const float* x,
                        const float* dt, const float* bc, const float* A, const float* Dskip, int64_t T,
                        ComputeDType dtype) {
  active().scan_backward(sh, dx, ddt, dbc, dy, x, dt, bc, A, Dskip, T, dtype);
}

}  // namespace qlora
