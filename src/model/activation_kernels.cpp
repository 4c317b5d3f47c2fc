// Scalar definitions of the activation kernels, and the run-time choice among instruction sets.
#include "model/activation_kernels.h"

#include <algorithm>
#include <cmath>

namespace qlora::kernels {

namespace {

void swiglu_forward_scalar(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g * (1.0f / (1.0f + std::exp(-g))) * up[i];
  }
}

void swiglu_backward_scalar(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                            int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float sg = 1.0f / (1.0f + std::exp(-g));
    const float silu = g * sg;
    dgate[i] += dout[i] * up[i] * (sg * (1.0f + g * (1.0f - sg)));
    dup[i] += dout[i] * silu;
  }
}

void exp_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

void tanh_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}

void erf_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::erf(x[i]);
}

void expm1_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::expm1(x[i]);
}

void xielu_forward_scalar(const float* x, float* y, int64_t n, const float* c) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = v > 0.0f ? c[0] * v * v + c[2] * v : (std::expm1(std::min(v, c[3])) - v) * c[1] + c[2] * v;
  }
}

void xielu_backward_scalar(float* dx, const float* dout, const float* x, int64_t n, const float* c) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float dg = v > 0.0f ? 2.0f * c[0] * v + c[2] : v < c[3] ? std::expm1(v) * c[1] + c[2] : c[2] - c[1];
    dx[i] += dout[i] * dg;
  }
}

void softplus_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 20.0f ? x[i] : std::log1p(std::exp(x[i]));
}

}  // namespace

void gelu_tanh_inner(const float* g, float* t, int64_t n) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  for (int64_t i = 0; i < n; ++i) t[i] = kBeta * (g[i] + kKappa * g[i] * g[i] * g[i]);
  active_activation_kernels().tanh(t, t, n);
}

const ActivationKernels& scalar_activation_kernels() {
  static const ActivationKernels k{swiglu_forward_scalar, swiglu_backward_scalar, exp_scalar, tanh_scalar, erf_scalar, expm1_scalar,
                                   xielu_forward_scalar, xielu_backward_scalar, softplus_scalar};
  return k;
}

const ActivationKernels& activation_kernels_for(SimdLevel level) {
  if (level >= SimdLevel::AVX2) return avx2_activation_kernels();  // (AVX-512 CPUs use the AVX2 ones)
  return scalar_activation_kernels();
}

const ActivationKernels& active_activation_kernels() {
  static const ActivationKernels& k = activation_kernels_for(simd_level());
  return k;
}

}  // namespace qlora::kernels
