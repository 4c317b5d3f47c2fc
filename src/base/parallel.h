#pragma once
// Parallel loops over independent chunks (OpenMP underneath). Work smaller than
// `min_per_thread` items per thread runs on the calling thread: spinning up threads
// for a few kilobytes costs more than it saves.
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace qlora {

inline int max_threads() { return omp_get_max_threads(); }

// Calls fn(begin, end) on disjoint ranges covering [0, n).
template <class Fn>
void parallel_for_range(int64_t n, int64_t min_per_thread, Fn&& fn) {
  if (n <= 0) return;
  int64_t nt = std::min<int64_t>(max_threads(), std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread)));
  if (nt <= 1) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(nt))
  {
    int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t b = n * t / T, e = n * (t + 1) / T;
    if (b < e) fn(b, e);
  }
}

}  // namespace qlora
