// The gated DeltaNet ops (model/delta_net.h): the baseline instruction set's copies of the
// kernels (model/delta_net_kernels_inl.h) and the run-time choice between them and the
// AVX-512 ones (delta_net_avx512.cpp).
#include "model/delta_net.h"

#include "model/delta_net_kernels_inl.h"

namespace qlora {

const DeltaNetKernels& scalar_delta_net_kernels() {
  static const DeltaNetKernels k{delta_net_detail::conv_forward, delta_net_detail::conv_backward,
                                 delta_net_detail::rule_forward, delta_net_detail::rule_backward};
  return k;
}

const DeltaNetKernels& delta_net_kernels_for(SimdLevel level) {
  return level >= SimdLevel::AVX512 ? avx512_delta_net_kernels() : scalar_delta_net_kernels();
}

namespace {
const DeltaNetKernels& active() {
  static const DeltaNetKernels& k = delta_net_kernels_for(simd_level());
  return k;
}
}  // namespace

void causal_conv_forward(float* out, const float* x, int64_t T, int64_t C, const float* w, const float* bias, int64_t K,
                         float* state, bool update_state, bool silu, ComputeDType dtype) {
  active().conv_forward(out, x, T, C, w, bias, K, state, update_state, silu, dtype);
}

void causal_conv_backward(float* dx, const float* dout, const float* x, int64_t T, int64_t C, const float* w,
                          const float* bias, int64_t K, bool silu, ComputeDType dtype) {
  active().conv_backward(dx, dout, x, T, C, w, bias, K, silu, dtype);
}

void delta_rule_forward(const DeltaRuleShape& sh, float* out, const float* qkv, const float* b, const float* a,
                        const float* A_log, const float* dt_bias, int64_t T, float* state, ComputeDType dtype) {
  active().rule_forward(sh, out, qkv, b, a, A_log, dt_bias, T, state, dtype);
}

void delta_rule_backward(const DeltaRuleShape& sh, float* dqkv, float* db, float* da, const float* dout,
                         const float* qkv, const float* b, const float* a, const float* A_log, const float* dt_bias,
                         int64_t T, ComputeDType dtype) {
  active().rule_backward(sh, dqkv, db, da, dout, qkv, b, a, A_log, dt_bias, T, dtype);
}

void gated_norm_forward(float* out, float* rstd, const float* x, const float* z, const float* w, int64_t rows,
                        int64_t D, float eps, ComputeDType dtype) {
  delta_net_detail::norm_forward(out, rstd, x, z, w, rows, D, eps, dtype);
}

void gated_norm_backward(float* dx, float* dz, const float* dout, const float* x, const float* z, const float* w,
                         const float* rstd, int64_t rows, int64_t D, ComputeDType dtype) {
  delta_net_detail::norm_backward(dx, dz, dout, x, z, w, rstd, rows, D, dtype);
}

void output_gate_forward(float* out, const float* x, const float* g, int64_t n, ComputeDType dtype) {
  delta_net_detail::gate_forward(out, x, g, n, dtype);
}

void output_gate_backward(float* dx, float* dg, const float* dout, const float* x, const float* g, int64_t n,
                          ComputeDType dtype) {
  delta_net_detail::gate_backward(dx, dg, dout, x, g, n, dtype);
}

}  // namespace qlora
