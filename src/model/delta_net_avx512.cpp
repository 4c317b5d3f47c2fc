// The gated DeltaNet kernels (model/delta_net_kernels_inl.h) compiled with AVX-512: the same
// loops, 16 floats wide. Only called when the CPU has AVX-512 (delta_net_kernels_for).
#define QLORA_DELTA_NET_HOT_LOOPS_ONLY
#include "model/delta_net_kernels_inl.h"

namespace qlora {

const DeltaNetKernels& avx512_delta_net_kernels() {
  static const DeltaNetKernels k{delta_net_detail::conv_forward, delta_net_detail::conv_backward,
                                 delta_net_detail::rule_forward, delta_net_detail::rule_backward};
  return k;
}

}  // namespace qlora
