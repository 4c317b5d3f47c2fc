#pragma once
// Helpers shared by the CUDA tests: skipping without a GPU, seeded random inputs, and
// stories260K loaded the way the GPU-vs-CPU comparisons need it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
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

// Every element within tol * (|want| + floor) of want (the first five misses named).
inline void expect_rel(const std::vector<float>& got, const std::vector<float>& want, double tol, double floor,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= tol * (std::fabs(want[i]) + floor)) && ++bad <= 5)
      ADD_FAILURE() << what << " [" << i << "] got " << got[i] << " want " << want[i];
  }
  EXPECT_EQ(bad, 0) << what;
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
