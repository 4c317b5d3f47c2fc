// The output head of a training step in bf16 compute, as the CPU backend runs it: the logits
// Y (T, V) = X (T, E) · Wᵀ (Backend::dense_forward) and the input gradient dX (T, E) += dY · W
// (Backend::dense_backward), W a bf16 DenseWeight (V, E) (an untied head kept in the compute
// dtype, as transformers keeps lm_head), at 256 tokens: Llama 1.1B's head (32000 x 2048) and
// SmolLM2-135M's (49152 x 576).
//
//   OMP_WAIT_POLICY=passive build/bench_dense_head --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "model/backend.h"
#include "model/quant_linear.h"

namespace {

const qlora::DenseWeight& head(int64_t V, int64_t E) {
  static std::vector<std::pair<std::pair<int64_t, int64_t>, qlora::DenseWeight>> cache;
  for (auto& [k, w] : cache)
    if (k == std::make_pair(V, E)) return w;
  std::mt19937 g(1);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> w(static_cast<size_t>(V * E));
  for (float& v : w) v = d(g);
  cache.emplace_back(std::make_pair(V, E), qlora::DenseWeight(std::move(w), V, E, qlora::ComputeDType::BF16));
  return cache.back().second;
}

void run(benchmark::State& state, bool backward) {
  const int64_t T = 256, V = state.range(0), E = state.range(1);
  const qlora::DenseWeight& W = head(V, E);
  std::mt19937 g(2);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(T * E)), y(static_cast<size_t>(T * V)), dx(x.size());
  for (float& v : x) v = qlora::kernels::round_to_dtype(d(g), qlora::ComputeDType::BF16);
  for (float& v : y) v = d(g);
  std::vector<float> tile(static_cast<size_t>(qlora::dense_backward_tile_floats(W)));
  qlora::Backend& be = qlora::cpu_backend();
  for (auto _ : state) {
    if (backward)
      be.dense_backward(dx.data(), y.data(), T, W, tile.data());
    else
      be.dense_forward(y.data(), x.data(), T, W);
    benchmark::DoNotOptimize(dx.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * T * V * E, benchmark::Counter::kIsIterationInvariantRate);
}
void BM_HeadForward(benchmark::State& s) { run(s, false); }
void BM_HeadBackward(benchmark::State& s) { run(s, true); }
BENCHMARK(BM_HeadForward)->ArgNames({"V", "E"})->Args({32000, 2048})->Args({49152, 576})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_HeadBackward)->ArgNames({"V", "E"})->Args({32000, 2048})->Args({49152, 576})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
