// The gated delta rule (model/delta_net.h) as training runs it, forward and backward, on
// Qwen3.5-0.8B's linear-attention heads (16 key and 16 value heads of 128) and 2B/9B's shape of
// value heads per key head (16 key, 32 value), at 256 tokens; the baseline build of the kernels
// and the AVX-512 one. Items are token-heads (one token through one value head's (128 x 128)
// state), so the rate reads as token-heads per second.
//
//   OMP_WAIT_POLICY=passive build/bench_delta_net --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "base/cpu_features.h"
#include "model/delta_net.h"

namespace {

void run(benchmark::State& state, int64_t Hk, int64_t Hv, bool backward, bool avx512) {
  if (avx512 && qlora::cpu_simd_level() < qlora::SimdLevel::AVX512) {
    state.SkipWithError("no AVX-512 on this CPU");
    return;
  }
  const qlora::DeltaNetKernels& k = avx512 ? qlora::avx512_delta_net_kernels() : qlora::scalar_delta_net_kernels();
  qlora::DeltaRuleShape sh;
  sh.Hk = Hk;
  sh.Hv = Hv;
  sh.dk = sh.dv = 128;
  const int64_t T = state.range(0);
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  auto filled = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = d(rng);
    return v;
  };
  const std::vector<float> qkv = filled(T * sh.qkv_width()), b = filled(T * Hv), a = filled(T * Hv),
                           dout = filled(T * Hv * sh.dv), A_log(static_cast<size_t>(Hv), 0.5f),
                           dt(static_cast<size_t>(Hv), 1.0f);
  std::vector<float> out(static_cast<size_t>(T * Hv * sh.dv)), dqkv(qkv.size()), db(b.size()), da(a.size());
  for (auto _ : state) {
    if (backward)
      k.rule_backward(sh, dqkv.data(), db.data(), da.data(), dout.data(), qkv.data(), b.data(), a.data(), A_log.data(),
                      dt.data(), T, qlora::ComputeDType::BF16);
    else
      k.rule_forward(sh, out.data(), qkv.data(), b.data(), a.data(), A_log.data(), dt.data(), T, nullptr,
                     qlora::ComputeDType::BF16);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * T * Hv);
}

}  // namespace

BENCHMARK_CAPTURE(run, forward_16x16_baseline, 16, 16, false, false)->Arg(256)->UseRealTime();
BENCHMARK_CAPTURE(run, forward_16x16_avx512, 16, 16, false, true)->Arg(256)->UseRealTime();
BENCHMARK_CAPTURE(run, backward_16x16_baseline, 16, 16, true, false)->Arg(256)->UseRealTime();
BENCHMARK_CAPTURE(run, backward_16x16_avx512, 16, 16, true, true)->Arg(256)->UseRealTime();
BENCHMARK_CAPTURE(run, backward_16x32_avx512, 16, 32, true, true)->Arg(256)->UseRealTime();

BENCHMARK_MAIN();
