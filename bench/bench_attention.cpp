// Causal self-attention forward + backward as training runs it (ops.h attention_forward with
// the probabilities kept, ops_backward.h attention_backward), on Llama 1.1B's heads (32 query
// heads, 4 key/value heads of 64) and SmolLM2-135M's (9/3 of 64), at 256 and 1024 tokens. The
// products are float32 in every compute dtype (model/attention_gemm.h). The FLOP count is the dense one (every score of the T x T square, forward 2 and
// backward 4 products of 2 T² HS each per head), so causal skipping shows as a higher rate.
//
//   OMP_WAIT_POLICY=passive build/bench_attention --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "base/parallel.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace {

struct Heads {
  int64_t NH, NKV, HS;
};

void run(benchmark::State& state, Heads h, bool backward) {
  const int64_t T = state.range(0);
  const int64_t QD = h.NH * h.HS, KVD = h.NKV * h.HS;
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  auto filled = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = d(rng);
    return v;
  };
  std::vector<float> q = filled(T * QD), k = filled(T * KVD), v = filled(T * KVD), dout = filled(T * QD);
  std::vector<float> out(static_cast<size_t>(T * QD)), att(static_cast<size_t>(h.NH * T * T));
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), datt(att.size());
  for (auto _ : state) {
    qlora::attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), T, T, 0, h.NH, h.NKV, h.HS,
                             nullptr, 0.0f, 0.0f, nullptr);
    if (backward)
      qlora::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), nullptr, dout.data(), q.data(), k.data(),
                                v.data(), att.data(), T, T, 0, h.NH, h.NKV, h.HS, nullptr, 0.0f, 0.0f);
    benchmark::DoNotOptimize(dq.data());
  }
  const double flops = 2.0 * T * T * h.HS * h.NH * (backward ? 6 : 2);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = qlora::max_threads();
}

const Heads kLlama1b{32, 4, 64}, kSmol{9, 3, 64};

void BM_llama1b_fwd_bwd(benchmark::State& s) { run(s, kLlama1b, true); }
void BM_llama1b_fwd(benchmark::State& s) { run(s, kLlama1b, false); }
void BM_smollm2_fwd_bwd(benchmark::State& s) { run(s, kSmol, true); }
BENCHMARK(BM_llama1b_fwd_bwd)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_llama1b_fwd)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_smollm2_fwd_bwd)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

// Decoding: one query token against `ctx` cached positions, in each of SmolLM2's 30 layers
// (separate caches: 30 x ctx x 2 x 192 floats, 53 MiB at 1152 positions, past a 32 MiB L3, as a
// decoded token sweeps them). arg0 = ctx; arg1 = the cache layout: 0 = position-major rows of all
// key/value heads (kv_dim floats a position), 1 = each key/value head's positions contiguous;
// arg2 = layers (1: the cache stays in L1/L2, the kernels' own speed).
void BM_smollm2_decode(benchmark::State& state) {
  const int64_t ctx = state.range(0), layers = state.range(2);
  const bool head_major = state.range(1) != 0;
  const Heads h = kSmol;
  const int64_t QD = h.NH * h.HS, KVD = h.NKV * h.HS, group = h.NH / h.NKV;
  std::mt19937 rng(2);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(QD)), out(q.size()), scores(static_cast<size_t>(h.NH * ctx));
  for (float& x : q) x = d(rng);
  std::vector<std::vector<float>> k(layers), v(layers);
  for (int64_t l = 0; l < layers; ++l) {
    k[l].resize(static_cast<size_t>(ctx * KVD));
    v[l].resize(k[l].size());
    for (float& x : k[l]) x = d(rng);
    for (float& x : v[l]) x = d(rng);
  }
  for (auto _ : state) {
    for (int64_t l = 0; l < layers; ++l) {
      if (!head_major) {
        qlora::attention_forward(out.data(), nullptr, scores.data(), q.data(), k[l].data(), v[l].data(), 1, ctx,
                                 ctx - 1, h.NH, h.NKV, h.HS, nullptr, 0.0f, 0.0f, nullptr);
      } else {
        for (int64_t kh = 0; kh < h.NKV; ++kh)
          qlora::attention_forward(out.data() + kh * group * h.HS, nullptr, scores.data(), q.data() + kh * group * h.HS,
                                   k[l].data() + kh * ctx * h.HS, v[l].data() + kh * ctx * h.HS, 1, ctx, ctx - 1,
                                   group, 1, h.HS, nullptr, 0.0f, 0.0f, nullptr);
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * layers * ctx * KVD * 2 * 4);
}
BENCHMARK(BM_smollm2_decode)->ArgsProduct({{128, 1152}, {0, 1}, {30}})->Args({32, 0, 1})->Args({128, 0, 1})->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
