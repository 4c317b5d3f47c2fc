// One LoRA layer's forward + backward as training runs it (lora/lora.h lora_forward with the
// cache and dropout, lora_backward with the input gradient), r 16, on Llama 1.1B's Linear
// shapes at 256 tokens (q/o 2048 -> 2048, k/v 2048 -> 256, gate/up 2048 -> 5632, down
// 5632 -> 2048), with dropout 0.05 (the QLoRA recipe's) and without. A block has seven of
// them, so seven times the mean of these rows is a block's LoRA time.
//
//   OMP_WAIT_POLICY=passive build/bench_lora --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "base/parallel.h"
#include "lora/lora.h"

namespace {

void BM_LoraForwardBackward(benchmark::State& state) {
  const int64_t T = 256, in = state.range(0), out = state.range(1);
  const double dropout = state.range(2) / 100.0;
  qlora::LoraConfig cfg;
  cfg.r = 16;
  cfg.alpha = 32;
  cfg.dropout = dropout;
  cfg.all_linear = true;
  qlora::LoraLayer L("layer", in, out, cfg);
  L.init(1);
  for (float& b : L.B) b = 0.01f;  // (PEFT starts B at zero: any values time the same)
  std::mt19937 g(2);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(T * in)), y(static_cast<size_t>(T * out)), dy(y.size()), dx(x.size());
  for (float& v : x) v = d(g);
  for (float& v : dy) v = d(g);
  qlora::LoraCacheStorage cache(T, in, cfg.r, dropout > 0);
  qlora::LoraScratchStorage scratch(qlora::lora_scratch_floats(T, in, out, cfg.r, dropout > 0, true));
  qlora::LoraRng rng(3);
  for (auto _ : state) {
    qlora::lora_forward(y.data(), &cache.cache, L, x.data(), T, /*training=*/true, &rng, scratch.view());
    qlora::lora_backward(dx.data(), L, dy.data(), x.data(), cache.cache, T, scratch.view());
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["threads"] = qlora::max_threads();
}
BENCHMARK(BM_LoraForwardBackward)
    ->ArgNames({"in", "out", "dropout%"})
    ->Args({2048, 2048, 5})
    ->Args({2048, 256, 5})
    ->Args({2048, 5632, 5})
    ->Args({5632, 2048, 5})
    ->Args({2048, 2048, 0})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
