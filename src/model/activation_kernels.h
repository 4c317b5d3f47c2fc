#pragma once
// Element-wise kernels of the activations, one set per instruction set, chosen at run time
// like linear_kernels.h: SwiGLU forward and backward, exp over a vector (softmax), tanh (the
// tanh-GELU and soft caps), erf (the exact GELU), expm1 (xIELU) and softplus (the selective
// scans' steps).
//
// The scalar kernels are the definitions (std::exp, i.e. glibc's expf, in the order the ops
// have always run). The AVX2 kernels are bit-identical to them: their exp reproduces
// glibc's expf step for step (its 32-entry table of 2^(i/32), the reduction and the cubic in
// double precision, fused exactly where glibc's FMA build fuses), which an exhaustive run
// over every float in (-87, 87) matched (session 10); lanes outside that range (and NaN)
// take the scalar path. tests/model/test_activation_kernels.cpp checks them against the
// scalar ones.
#include <cstdint>

#include "base/cpu_features.h"

namespace qlora::kernels {

struct ActivationKernels {
  // out (n) = silu(gate) * up, silu(g) = g * (1 / (1 + exp(-g))). out may alias gate or up.
  void (*swiglu_forward)(float* out, const float* gate, const float* up, int64_t n);
  // dgate (n) += dout * up * (s * (1 + g * (1 - s))), dup (n) += dout * g * s, s = 1 / (1 + exp(-g)).
  void (*swiglu_backward)(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);
  // y (n) = exp(x) (y may alias x).
  void (*exp)(const float* x, float* y, int64_t n);
  // y (n) = tanh(x) (y may alias x): the tanh-GELU (gelu_pytorch_tanh, GeGLU) and the soft caps.
  // The scalar kernel is glibc's tanhf; the AVX2 one is (1 - e) / (1 + e) in double, e = exp(-2|x|)
  // from the exp above's double-precision steps, and an odd polynomial below |x| 2^-5 (tanh's own
  // series to x^9): within 3 float ulps of tanhf or 2e-8 absolute (tested), not bit-identical.
  void (*tanh)(const float* x, float* y, int64_t n);
  // y (n) = erf(x) (y may alias x): the exact GELU (torch's "gelu": x / 2 (1 + erf(x / sqrt 2))).
  // The scalar kernel is glibc's erff; the AVX2 one evaluates in double and rounds once
  // (x A(x^2) below |x| 1, a degree-18 polynomial in |x| on [1, 4], +-1 beyond: coefficients from
  // tools/fit_erf_coefficients.py, error ~1e-11 before the rounding), so it is within an ulp of
  // erff (tested), not bit-identical.
  void (*erf)(const float* x, float* y, int64_t n);
  // y (n) = expm1(x) (y may alias x): xIELU's negative branch (Apertus). The scalar kernel is glibc's
  // expm1f; the AVX2 one evaluates in double and rounds once (exp's double-precision steps minus 1 for
  // |x| >= 1/2, expm1's series to x^12 below), within an ulp of expm1f (tested); |x| >= 87 and NaN
  // lanes go through expm1f.
  void (*expm1)(const float* x, float* y, int64_t n);
  // xIELU (Apertus) with effective coefficients c = {softplus(alpha_p), beta + softplus(alpha_n), beta, eps}:
  //   forward:  y (n) = x > 0 ? c0 x x + c2 x : (expm1(min(x, c3)) - x) c1 + c2 x   (y may alias x)
  //   backward: dx (n) += dout * (x > 0 ? 2 c0 x + c2 : x < c3 ? expm1(x) c1 + c2 : c2 - c1)
  // in float, op by op as written; the AVX2 kernels differ from the scalar ones only through expm1 (an ulp).
  void (*xielu_forward)(const float* x, float* y, int64_t n, const float* c);
  void (*xielu_backward)(float* dx, const float* dout, const float* x, int64_t n, const float* c);
  // y (n) = torch's softplus (beta 1, threshold 20): x beyond 20, else log1p(exp(x)) (y may alias x).
  // The scalar kernel is glibc's log1pf(expf(x)); the AVX2 one evaluates in double and rounds once
  // (exp's double-precision steps, then log1p as 2 atanh(s): s = e / (2 + e) up to e = sqrt 2 - 1,
  // else from 1 + e's exponent and mantissa), within an ulp of the scalar one (tested); lanes below
  // -87 and NaN go through the scalar path.
  void (*softplus)(const float* x, float* y, int64_t n);
};

// t (n) = tanh(sqrt(2 / pi) (g + 0.044715 g^3)), the tanh-GELU's inner tanh (gelu_pytorch_tanh =
// 0.5 g (1 + t)), on the active kernels; at most 1024 values a call (the callers' blocks).
void gelu_tanh_inner(const float* g, float* t, int64_t n);

const ActivationKernels& scalar_activation_kernels();
const ActivationKernels& avx2_activation_kernels();  // only when cpu_simd_level() >= AVX2
const ActivationKernels& activation_kernels_for(SimdLevel level);
// activation_kernels_for(simd_level()), chosen once.
const ActivationKernels& active_activation_kernels();

}  // namespace qlora::kernels
