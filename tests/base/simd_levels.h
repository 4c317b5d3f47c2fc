#pragma once
// The instruction-set levels this CPU runs (base/cpu_features.h), scalar first: the kernel
// tests compare every level's kernels against the scalar definitions.
#include <vector>

#include "base/cpu_features.h"

namespace qlora::test {

inline std::vector<SimdLevel> simd_levels_here() {
  std::vector<SimdLevel> l = {SimdLevel::Scalar};
  if (cpu_simd_level() >= SimdLevel::AVX2) l.push_back(SimdLevel::AVX2);
  if (cpu_simd_level() >= SimdLevel::AVX512) l.push_back(SimdLevel::AVX512);
  return l;
}

}  // namespace qlora::test
