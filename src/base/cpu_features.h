#pragma once
// What SIMD the running CPU supports, detected once. Kernels are chosen from this at
// run time; QLORA_SIMD=scalar|avx2|avx512 in the environment caps the choice (for
// tests and benchmarks).
namespace qlora {

enum class SimdLevel { Scalar = 0, AVX2 = 1, AVX512 = 2 };

// Highest level both supported by the CPU and allowed by QLORA_SIMD.
SimdLevel simd_level();
// What the CPU itself supports, ignoring QLORA_SIMD.
SimdLevel cpu_simd_level();
const char* simd_level_name(SimdLevel l);

}  // namespace qlora
