// NF4 dequantization throughput on realistic weight shapes, per SIMD level and thread
// count, next to a plain memcpy (and memset) of the same number of output bytes: the
// memory-bandwidth ceiling. Throughput is reported as bytes of float output per second.
// Also quantization (NF4 and 8-bit blockwise) of the 4096x4096 weight, as f32 input bytes
// per second (blocksize 64 throughout).
//
//   build-simd/bench_dequant --benchmark_filter='dequant|mem' --benchmark_min_time=0.5
//   tools/bench_bnb_dequant.py times bitsandbytes on the same shapes (see bench/RESULTS.md).
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/parallel.h"
#include "quant/blockwise.h"
#include "quant/blockwise_kernels.h"
#include "quant/codebook.h"

namespace {

using namespace qlora;

constexpr int kBlocksize = 64;

struct Shape {
  int64_t rows, cols;
  int64_t numel() const { return rows * cols; }
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};
const Shape kShapes[] = {{4096, 4096}, {2048, 5632}};

// 64-byte aligned, pre-faulted buffer (tensors in the library are allocated aligned).
struct Buffer {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> p;
  explicit Buffer(size_t bytes)
      : p(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64))) {
    std::memset(p.get(), 1, bytes);
  }
  template <class T>
  T* as() const { return reinterpret_cast<T*>(p.get()); }
};

// A quantized N(0, 0.02) weight of each shape, made once.
struct Weight {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
};
const Weight& weight(size_t i) {
  static std::vector<std::unique_ptr<Weight>> cache(std::size(kShapes));
  const Shape& s = kShapes[i];
  if (!cache[i]) {
    std::vector<float> x(static_cast<size_t>(s.numel()));
    std::mt19937 rng(42);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (float& v : x) v = nd(rng);
    auto w = std::make_unique<Weight>();
    w->packed.resize(static_cast<size_t>(packed_4bit_bytes(s.numel())));
    w->absmax.resize(static_cast<size_t>(num_blocks(s.numel(), kBlocksize)));
    quantize_4bit(x.data(), s.numel(), kBlocksize, QuantType::NF4, w->packed.data(), w->absmax.data());
    cache[i] = std::move(w);
  }
  return *cache[i];
}

enum class OutType { F32, BF16, F16 };
size_t out_size(OutType o) { return o == OutType::F32 ? 4 : 2; }
const char* out_name(OutType o) { return o == OutType::F32 ? "f32" : o == OutType::BF16 ? "bf16" : "f16"; }

void bm_dequant(benchmark::State& state, size_t shape, OutType o, SimdLevel level, int threads) {
  const Shape& s = kShapes[shape];
  const Weight& w = weight(shape);
  const auto& k = kernels::kernels_for(level);
  const size_t bytes = static_cast<size_t>(s.numel()) * out_size(o);
  Buffer out(bytes);
  omp_set_num_threads(threads);
  for (auto _ : state) {
    switch (o) {
      case OutType::F32:
        kernels::run_dequantize_4bit_f32(k, w.packed.data(), w.absmax.data(), s.numel(), kBlocksize,
                                         QuantType::NF4, out.as<float>());
        break;
      case OutType::BF16:
        kernels::run_dequantize_4bit_bf16(k, w.packed.data(), w.absmax.data(), s.numel(), kBlocksize,
                                          QuantType::NF4, out.as<uint16_t>());
        break;
      case OutType::F16:
        kernels::run_dequantize_4bit_f16(k, w.packed.data(), w.absmax.data(), s.numel(), kBlocksize,
                                         QuantType::NF4, out.as<uint16_t>());
        break;
    }
    benchmark::DoNotOptimize(out.p.get());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}

// Quantization of the same weight (input bytes per second), for scale.
void bm_quant(benchmark::State& state, size_t shape, SimdLevel level, int threads, bool eight_bit) {
  const Shape& s = kShapes[shape];
  const auto& k = kernels::kernels_for(level);
  std::vector<float> x(static_cast<size_t>(s.numel()));
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (float& v : x) v = nd(rng);
  std::vector<uint8_t> q(static_cast<size_t>(s.numel()));
  std::vector<float> absmax(static_cast<size_t>(num_blocks(s.numel(), kBlocksize)));
  const float* code = dynamic_map_8bit(true).data();
  omp_set_num_threads(threads);
  for (auto _ : state) {
    if (eight_bit)
      kernels::run_quantize_8bit_blockwise(k, x.data(), s.numel(), kBlocksize, code, q.data(), absmax.data());
    else
      kernels::run_quantize_4bit(k, x.data(), s.numel(), kBlocksize, QuantType::NF4, q.data(), absmax.data());
    benchmark::DoNotOptimize(q.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * s.numel() * 4);
}

// memcpy / memset of `bytes`, split across `threads` like the dequantization is.
void bm_memcpy(benchmark::State& state, size_t bytes, int threads, bool set_only) {
  Buffer src(bytes), dst(bytes);
  omp_set_num_threads(threads);
  const int64_t chunks = 64;
  for (auto _ : state) {
    parallel_for_range(chunks, 1, [&](int64_t c0, int64_t c1) {
      const size_t b = bytes * static_cast<size_t>(c0) / chunks, e = bytes * static_cast<size_t>(c1) / chunks;
      if (set_only)
        std::memset(dst.p.get() + b, static_cast<int>(c0), e - b);
      else
        std::memcpy(dst.p.get() + b, src.p.get() + b, e - b);
    });
    benchmark::DoNotOptimize(dst.p.get());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}

void register_all() {
  // Quantization first (`--benchmark_filter=^quant` selects it), then dequantization.
  const int max_t = omp_get_max_threads();
  const std::vector<int> thread_counts = max_t >= 2 ? std::vector<int>{1, 2} : std::vector<int>{1};
  std::vector<SimdLevel> levels{SimdLevel::Scalar};
  if (cpu_simd_level() >= SimdLevel::AVX2) levels.push_back(SimdLevel::AVX2);
  if (cpu_simd_level() >= SimdLevel::AVX512) levels.push_back(SimdLevel::AVX512);
  for (bool eight_bit : {false, true})
    for (int t : thread_counts)
      for (SimdLevel l : levels) {
        const std::string name = std::string(eight_bit ? "quant_8bit" : "quant_nf4") + "/" + kShapes[0].name() +
                                 "/f32_input/" + simd_level_name(l) + "/threads:" + std::to_string(t);
        benchmark::RegisterBenchmark(name.c_str(), bm_quant, 0, l, t, eight_bit)
            ->UseRealTime()->Unit(benchmark::kMillisecond);
      }
  for (size_t si = 0; si < std::size(kShapes); ++si) {
    const Shape& s = kShapes[si];
    for (OutType o : {OutType::F32, OutType::BF16, OutType::F16}) {
      for (int t : thread_counts) {
        for (SimdLevel l : levels) {
          const std::string name = std::string("dequant_nf4/") + s.name() + "/" + out_name(o) + "/" +
                                   simd_level_name(l) + "/threads:" + std::to_string(t);
          benchmark::RegisterBenchmark(name.c_str(), bm_dequant, si, o, l, t)->UseRealTime()->Unit(benchmark::kMillisecond);
        }
        const size_t bytes = static_cast<size_t>(s.numel()) * out_size(o);
        if (o == OutType::F16) continue;  // same byte count as bf16
        const std::string suffix = s.name() + "/" + std::to_string(bytes >> 20) + "MiB/threads:" + std::to_string(t);
        benchmark::RegisterBenchmark(("memcpy/" + suffix).c_str(), bm_memcpy, bytes, t, false)
            ->UseRealTime()->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("memset/" + suffix).c_str(), bm_memcpy, bytes, t, true)
            ->UseRealTime()->Unit(benchmark::kMillisecond);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
