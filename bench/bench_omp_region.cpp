// What one OpenMP parallel region costs on this machine: a region whose body does nothing, on
// 2 threads (start, wake the worker, join). Under OMP_WAIT_POLICY=passive, which the tests and
// benchmarks use (spinning threads wreck timings on 2 shared cores), the worker sleeps between
// regions and every region pays a wake-up; a 2-thread decode step runs a few hundred regions,
// so this number bounds it (bench/RESULTS.md session 12). Compare the two policies:
//
//   OMP_WAIT_POLICY=passive build/bench_omp_region
//   OMP_WAIT_POLICY=active build/bench_omp_region
#include <benchmark/benchmark.h>
#include <omp.h>

namespace {

void BM_ParallelRegion(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  volatile int sink = 0;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      if (omp_get_thread_num() == 0) sink = sink + 1;
    }
  }
}
BENCHMARK(BM_ParallelRegion)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
