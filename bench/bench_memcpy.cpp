// Memory bandwidth of this machine, for the bandwidth bound on decoding speed
// (bench/bench_generate.sh): decoding one token streams every weight once, so
// tokens/s <= bandwidth / (weight bytes read per token).
//
//   BM_Memcpy/<MiB>/<threads>: plain std::memcpy of a buffer into another, split in
//     contiguous halves over the threads. bytes_per_second counts the bytes copied
//     (= bytes read), not read + written.
//   BM_Read/<MiB>/<threads>:   a read-only sum over the buffer, the access pattern of a
//     matrix-vector product (weights are only read).
//
// 256 MiB buffers are meant to be larger than the last-level cache (so this is DRAM;
// memcpy touches 512 MiB); the smaller sizes show where the last-level cache helps --
// on a CPU with a very large L3 (the development machine reports 260 MB) a model of
// 90-170 MB of weights can be read largely from cache.
//
//   build/bench_memcpy --benchmark_min_time=1
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kMaxBytes = 256 * kMiB;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char, FreeDeleter>;

Buffer alloc_touched(size_t bytes, unsigned char fill) {
  void* p = std::aligned_alloc(4096, bytes);
  if (!p) std::abort();
  std::memset(p, fill, bytes);  // fault every page in before timing
  return Buffer(static_cast<unsigned char*>(p));
}

// One pair of buffers for the whole run, allocated on first use.
unsigned char* src_buffer() {
  static Buffer b = alloc_touched(kMaxBytes, 1);
  return b.get();
}
unsigned char* dst_buffer() {
  static Buffer b = alloc_touched(kMaxBytes, 2);
  return b.get();
}

// [begin, end) of thread t's share of n bytes, 4 KiB aligned.
void share(size_t n, int threads, int t, size_t* begin, size_t* end) {
  const size_t per = (n / static_cast<size_t>(threads) + 4095) & ~size_t{4095};
  *begin = std::min(n, per * static_cast<size_t>(t));
  *end = std::min(n, *begin + per);
}

void BM_Memcpy(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0)) * kMiB;
  const int threads = static_cast<int>(state.range(1));
  unsigned char* src = src_buffer();
  unsigned char* dst = dst_buffer();
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      size_t b, e;
      share(n, threads, omp_get_thread_num(), &b, &e);
      if (e > b) std::memcpy(dst + b, src + b, e - b);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
  state.counters["threads"] = threads;
}

uint64_t sum_range(const uint64_t* p, size_t n) {
  // Eight independent accumulators so the adds never limit the loads.
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
    a4 += p[i + 4]; a5 += p[i + 5]; a6 += p[i + 6]; a7 += p[i + 7];
  }
  for (; i < n; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

void BM_Read(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0)) * kMiB;
  const int threads = static_cast<int>(state.range(1));
  const unsigned char* src = src_buffer();
  for (auto _ : state) {
    uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      size_t b, e;
      share(n, threads, omp_get_thread_num(), &b, &e);
      if (e > b) total += sum_range(reinterpret_cast<const uint64_t*>(src + b), (e - b) / 8);
    }
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
  state.counters["threads"] = threads;
}

void sizes(benchmark::internal::Benchmark* b) {
  for (int mib : {16, 64, 128, 192, 256})
    for (int threads : {1, 2}) b->Args({mib, threads});
}

BENCHMARK(BM_Memcpy)->Apply(sizes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Read)->Apply(sizes)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
