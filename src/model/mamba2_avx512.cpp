// Mamba2's scan (model/mamba2_kernels_inl.h) compiled with AVX-512: the same loops, 16 floats
// wide. Only called when the CPU has AVX-512 (mamba2_kernels_for).
#include "model/mamba2_kernels_inl.h"

namespace qlora {

const Mamba2Kernels& avx512_mamba2_kernels() {
  static const Mamba2Kernels k{mamba2_detail::scan_forward, mamba2_detail::scan_backward};
  return k;
}

}  // namespace qlora
