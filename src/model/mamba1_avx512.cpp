// Mamba (1)'s scan (model/mamba1_kernels_inl.h) compiled with AVX-512: the same loops, 16 floats
// wide, the decays on the AVX2 exp (bit-identical to the scalar one). Only called when the CPU has
// AVX-512 (mamba1_kernels_for).
#include "model/activation_kernels.h"
#include "model/mamba1_kernels_inl.h"

namespace qlora {

namespace {
void avx512_forward(const Ssm1Shape& sh, float* y, const float* x, const float* dt, const float* bc, const float* A,
                    const float* Dskip, int64_t T, float* state, ComputeDType dtype) {
  mamba1_detail::scan_forward(sh, y, x, dt, bc, A, Dskip, T, state, dtype, kernels::avx2_activation_kernels());
}
void avx512_backward(const Ssm1Shape& sh, float* dx, float* ddt, float* dbc, const float* dy, const float* x,
                     const float* dt, const float* bc, const float* A, const float* Dskip, int64_t T,
                     ComputeDType dtype) {
  mamba1_detail::scan_backward(sh, dx, ddt, dbc, dy, x, dt, bc, A, Dskip, T, dtype,
                               kernels::avx2_activation_kernels());
}
}  // namespace

const Mamba1Kernels& avx512_mamba1_kernels() {
  static const Mamba1Kernels k{avx512_forward, avx512_backward};
  return k;
}

}  // namespace qlora
