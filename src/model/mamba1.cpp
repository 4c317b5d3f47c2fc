// Mamba (1)'s scan (model/mamba1.h): the baseline instruction set's copies of the kernels
// (model/mamba1_kernels_inl.h) on the scalar exp, and the run-time choice between them and the
// AVX-512 ones (mamba1_avx512.cpp).
#include "model/mamba1.h"

#include "model/activation_kernels.h"
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
