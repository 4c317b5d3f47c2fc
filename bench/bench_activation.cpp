// The element-wise activation kernels (model/activation_kernels.h) per instruction set, and the
// exact (erf) GELU's forward and backward as an MLP runs them (model/ops.h), on 256 tokens of a
// 4 x 2048 MLP (MPT / GPT-NeoX / Falcon shape). Items are elements. The ops follow QLORA_SIMD
// (chosen once): run with QLORA_SIMD=scalar for the unvectorized baseline.
//
//   OMP_WAIT_POLICY=passive build/bench_activation --benchmark_min_time=0.3
//   OMP_WAIT_POLICY=passive QLORA_SIMD=scalar build/bench_activation --benchmark_filter=Gelu
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "base/cpu_features.h"
#include "model/activation_kernels.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace {

std::vector<float> normal(int64_t n, float sd) {
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

enum class Fn { Erf, Tanh, Exp, Expm1, Softplus };

void kernel(benchmark::State& state, Fn fn, bool fast) {
  if (fast && qlora::cpu_simd_level() < qlora::SimdLevel::AVX2) {
    state.SkipWithError("no AVX2 on this CPU");
    return;
  }
  const auto& k = fast ? qlora::kernels::avx2_activation_kernels() : qlora::kernels::scalar_activation_kernels();
  const int64_t n = 1024;  // (the ops' block)
  const std::vector<float> x = normal(n, 2.0f);
  std::vector<float> y(static_cast<size_t>(n));
  for (auto _ : state) {
    switch (fn) {
      case Fn::Erf: k.erf(x.data(), y.data(), n); break;
      case Fn::Tanh: k.tanh(x.data(), y.data(), n); break;
      case Fn::Exp: k.exp(x.data(), y.data(), n); break;
      case Fn::Expm1: k.expm1(x.data(), y.data(), n); break;
      case Fn::Softplus: k.softplus(x.data(), y.data(), n); break;
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void gelu(benchmark::State& state, bool backward) {
  const int64_t N = 256 * 8192;
  const std::vector<float> x = normal(N, 1.5f), dout = normal(N, 1.0f);
  std::vector<float> y(static_cast<size_t>(N)), dx(static_cast<size_t>(N));
  for (auto _ : state) {
    if (backward)
      qlora::activation_backward(dx.data(), dout.data(), x.data(), N, qlora::Activation::Gelu);
    else
      qlora::activation_forward(y.data(), x.data(), N, qlora::Activation::Gelu);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
  }
  state.SetItemsProcessed(state.iterations() * N);
  state.SetLabel(qlora::simd_level_name(qlora::simd_level()));
}

}  // namespace

BENCHMARK_CAPTURE(kernel, erf_scalar, Fn::Erf, false);
BENCHMARK_CAPTURE(kernel, erf_avx2, Fn::Erf, true);
BENCHMARK_CAPTURE(kernel, tanh_scalar, Fn::Tanh, false);
BENCHMARK_CAPTURE(kernel, tanh_avx2, Fn::Tanh, true);
BENCHMARK_CAPTURE(kernel, exp_scalar, Fn::Exp, false);
BENCHMARK_CAPTURE(kernel, exp_avx2, Fn::Exp, true);
BENCHMARK_CAPTURE(kernel, expm1_scalar, Fn::Expm1, false);
BENCHMARK_CAPTURE(kernel, expm1_avx2, Fn::Expm1, true);
BENCHMARK_CAPTURE(kernel, softplus_scalar, Fn::Softplus, false);
BENCHMARK_CAPTURE(kernel, softplus_avx2, Fn::Softplus, true);
BENCHMARK_CAPTURE(gelu, Gelu_forward, false)->UseRealTime();
BENCHMARK_CAPTURE(gelu, Gelu_backward, true)->UseRealTime();

BENCHMARK_MAIN();
