#pragma once
// Helpers shared by the CUDA tests: skipping without a GPU, seeded random inputs, and
// stories260K loaded the way the GPU-vs-CPU comparisons need it.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/cuda_error.h"
#include "formats/model_loader.h"
#include "model/model.h"
#include "model/model_test_util.h"

// Skips the test, saying so, where this machine has no CUDA device.
#define REQUIRE_GPU()                                                                                 \
  do {                                                                                                \
    if (::qlora::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device here: CUDA test not run"; \
  } while (0)

namespace qlora::test {

// n normal(0, scale) floats from a seeded generator.
inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// stories260K, NF4 + double quant when `nf4` (else dense), in compute dtype `dt`.
inline Model load_stories(bool nf4, ComputeDType dt) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = nf4;
  o.quant.double_quant = nf4;
  o.compute_dtype = dt;
  return Model::load(f.spec, *f.tensors, o);
}

}  // namespace qlora::test
