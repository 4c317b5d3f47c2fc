#pragma once
// What SIMD the running CPU supports, detected once. Kernels are chosen from this at
// run time; QLORA_SIMD=scalar|avx2|avx512|amx in the environment caps the choice (for
// tests and benchmarks): AMX tiles are used only when it is unset or "amx".
namespace qlora {

enum class SimdLevel { Scalar = 0, AVX2 = 1, AVX512 = 2 };

// Highest level both supported by the CPU and allowed by QLORA_SIMD.
SimdLevel simd_level();
// What the CPU itself supports, ignoring QLORA_SIMD.
SimdLevel cpu_simd_level();
const char* simd_level_name(SimdLevel l);

// The CPU has AVX512-VNNI (CPUID.(7,0):ECX bit 11: VPDPBUSD), whatever QLORA_SIMD says.
bool cpu_has_avx512_vnni();
// The CPU has AMX tiles with bf16 dot products (CPUID.(7,0):EDX bits 24 AMX-TILE and 22
// AMX-BF16), whatever the OS allows.
bool cpu_has_amx_bf16();
// AMX bf16 tiles may be used by this process: the CPU has them, QLORA_SIMD is unset or
// "amx", and Linux granted the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once,
// for the whole process, on the first call). False everywhere else, never an error.
bool amx_tiles_enabled();

}  // namespace qlora
