// The arithmetic peak of this CPU's vector units, to state the GEMMs' rates as a fraction of
// it (bench/RESULTS.md): 24 independent accumulator chains (enough to cover any FMA latency),
// register operands only, so nothing but the execution ports limits the loop.
//
//   peak/fma256   float32 FMA on 256-bit vectors (AVX2: 16 FLOP per instruction)
//   peak/fma512   float32 FMA on 512-bit vectors (AVX-512: 32 FLOP)
//   peak/dpbf16   VDPBF16PS, bf16 pairs into float32 (AVX-512 BF16: 64 FLOP per instruction)
//
// Each at 1 and 2 threads (Google Benchmark's threads run the loop side by side: the 2-thread
// FLOP/s is the total). Rows the CPU lacks are not registered.
//
//   OMP_WAIT_POLICY=passive build/bench_peak_flops
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <cstdint>

#include "base/cpu_features.h"

namespace {

constexpr int kChains = 24;

__attribute__((target("avx2,fma"))) double fma256_loop(int64_t n) {
  __m256 acc[kChains];
  for (auto& a : acc) a = _mm256_setzero_ps();
  __m256 x = _mm256_set1_ps(1e-8f), y = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < n; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], x, y);
    asm volatile("" : "+x"(x), "+x"(y));  // (the compiler may not hoist or fold the loop)
  }
  float s = 0;
  for (auto& a : acc) {
    alignas(32) float v[8];
    _mm256_store_ps(v, a);
    for (float f : v) s += f;
  }
  return s;
}

// (stored and summed as floats: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized, bug 105593)
__attribute__((target("avx512f"))) double sum512(const __m512* acc) {
  float s = 0;
  for (int j = 0; j < kChains; ++j) {
    alignas(64) float v[16];
    _mm512_store_ps(v, acc[j]);
    for (float f : v) s += f;
  }
  return s;
}

__attribute__((target("avx512f"))) double fma512_loop(int64_t n) {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512 x = _mm512_set1_ps(1e-8f), y = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], x, y);
    asm volatile("" : "+v"(x), "+v"(y));
  }
  return sum512(acc);
}

__attribute__((target("avx512f,avx512bf16"))) double dpbf16_loop(int64_t n) {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi32(0x3F803F80), b = (__m512bh)_mm512_set1_epi32(0x00010001);
  for (int64_t i = 0; i < n; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    asm volatile("" : "+v"(a), "+v"(b));
  }
  return sum512(acc);
}

void BM_Peak(benchmark::State& state, double (*loop)(int64_t), double flop_per_instruction) {
  constexpr int64_t kIters = 1 << 16;
  for (auto _ : state) benchmark::DoNotOptimize(loop(kIters));
  // (Iterations count over all threads and each thread reports the counter: averaged over
  // them, the rate is the whole process's.)
  state.counters["FLOP/s"] = benchmark::Counter(
      flop_per_instruction * kChains * kIters,
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kAvgThreads);
}

const int registered = [] {
  using qlora::SimdLevel;
  struct Row {
    const char* name;
    double (*loop)(int64_t);
    double flop;
    SimdLevel needs;
  };
  const Row rows[] = {{"peak/fma256", fma256_loop, 16, SimdLevel::AVX2},
                      {"peak/fma512", fma512_loop, 32, SimdLevel::AVX512},
                      {"peak/dpbf16", dpbf16_loop, 64, SimdLevel::AVX512}};  // (AVX512 level includes BF16)
  for (const Row& r : rows)
    if (qlora::cpu_simd_level() >= r.needs)
      benchmark::RegisterBenchmark(r.name, BM_Peak, r.loop, r.flop)->Threads(1)->Threads(2)->UseRealTime();
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
