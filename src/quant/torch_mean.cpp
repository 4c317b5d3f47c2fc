// See torch_mean.h. The structure follows SumKernel.cpp function by function
// (multi_row_sum, row_sum, vectorized_inner_sum, two_pass_reduction) so that it can be
// checked against it; only the float additions and their order matter.
#include "quant/torch_mean.h"

#include <algorithm>
#include <array>
#include <bit>
#include <vector>

namespace qlora {
namespace {

constexpr int kLanes = 8;                // Vectorized<float>::size() of the AVX2 kernel
constexpr int64_t kGrainSize = 32768;    // at::internal::GRAIN_SIZE

// A value of the sum: one float (scalar path) or a vector of 8 lanes added lane-wise.
template <int L>
struct Acc {
  std::array<float, L> v{};
  void add(const Acc& o) {
    for (int i = 0; i < L; ++i) v[i] += o.v[i];
  }
};

template <int L>
Acc<L> load(const float* x, int64_t element) {
  Acc<L> a;
  for (int i = 0; i < L; ++i) a.v[i] = x[element * L + i];
  return a;
}

// c10 CeilLog2: 1 for x <= 2, else floor(log2(x - 1)) + 1.
int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  return static_cast<int64_t>(std::bit_width(static_cast<uint64_t>(x - 1)));
}

// multi_row_sum<acc, nrows = 4>: rows of 4 consecutive elements, summed into 4 levels of
// accumulators; level j is folded into j+1 every 2^(level_power * j) rows.
template <int L>
std::array<Acc<L>, 4> multi_row_sum(const float* x, int64_t rows) {
  constexpr int kLevels = 4;
  constexpr int kRows = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(rows) / kLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  std::array<std::array<Acc<L>, kRows>, kLevels> acc{};
  int64_t i = 0;
  while (i + level_step <= rows) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int k = 0; k < kRows; ++k) acc[0][k].add(load<L>(x, i * kRows + k));
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kRows; ++k) {
        acc[j][k].add(acc[j - 1][k]);
        acc[j - 1][k] = Acc<L>{};
      }
      const int64_t mask = level_mask << (j * level_power);
      if ((i & mask) != 0) break;
    }
  }
  for (; i < rows; ++i)
    for (int k = 0; k < kRows; ++k) acc[0][k].add(load<L>(x, i * kRows + k));
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < kRows; ++k) acc[0][k].add(acc[j][k]);
  return acc[0];
}

// row_sum: the elements as a (-1, 4) array, the leftover elements into column 0, then
// columns 1..3 into column 0.
template <int L>
Acc<L> row_sum(const float* x, int64_t size) {
  const int64_t rows = size / 4;
  std::array<Acc<L>, 4> partial = multi_row_sum<L>(x, rows);
  for (int64_t i = rows * 4; i < size; ++i) partial[0].add(load<L>(x, i));
  for (int k = 1; k < 4; ++k) partial[0].add(partial[k]);
  return partial[0];
}

// One call of the reduction loop over a contiguous range: vectorized_inner_sum when the
// range holds at least one vector, scalar_inner_sum otherwise.
float inner_sum(const float* x, int64_t n) {
  if (n >= kLanes) {
    const int64_t vec_size = n / kLanes;
    const Acc<kLanes> vacc = row_sum<kLanes>(x, vec_size);
    float final_acc = 0.0f;
    for (int64_t k = vec_size * kLanes; k < n; ++k) final_acc += x[k];
    for (int k = 0; k < kLanes; ++k) final_acc += vacc.v[k];
    return final_acc;
  }
  return row_sum<1>(x, n).v[0];
}

}  // namespace

float torch_cpu_sum_f32(const float* x, int64_t n, int num_threads) {
  // The output starts at 0 and the loop adds its result into it.
  if (n < kGrainSize || num_threads <= 1) return 0.0f + inner_sum(x, n);
  // two_pass_reduction: at::parallel_for gives thread t the range [t*chunk, (t+1)*chunk),
  // each into its own zero-initialized slot; the slots are then summed as a tensor.
  const int64_t nt = std::min<int64_t>(num_threads, (n + kGrainSize - 1) / kGrainSize);
  const int64_t chunk = (n + nt - 1) / nt;
  std::vector<float> slots(static_cast<size_t>(num_threads), 0.0f);
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t b = t * chunk;
    if (b < n) slots[static_cast<size_t>(t)] = 0.0f + inner_sum(x + b, std::min(n, b + chunk) - b);
  }
  return 0.0f + inner_sum(slots.data(), static_cast<int64_t>(slots.size()));
}

float torch_cpu_mean_f32(const float* x, int64_t n, int num_threads) {
  return torch_cpu_sum_f32(x, n, num_threads) / static_cast<float>(n);
}

}  // namespace qlora
