#include "base/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace qlora {
namespace {
// AVX512-BF16 is CPUID.(EAX=7,ECX=1):EAX[5]; read it directly because not every
// compiler's __builtin_cpu_supports knows the name.
bool cpu_has_avx512_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 5) & 1u;
}
// F16C is CPUID.1:ECX[29]; clang 14's __builtin_cpu_supports does not know "f16c".
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c >> 29) & 1u;
}
}  // namespace

SimdLevel cpu_simd_level() {
  static const SimdLevel level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vbmi") && cpu_has_avx512_bf16() &&
        __builtin_cpu_supports("fma"))
      return SimdLevel::AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c())
      return SimdLevel::AVX2;
    return SimdLevel::Scalar;
  }();
  return level;
}

SimdLevel simd_level() {
  SimdLevel cpu = cpu_simd_level();
  const char* env = std::getenv("QLORA_SIMD");
  if (!env) return cpu;
  SimdLevel cap = cpu;
  if (!std::strcmp(env, "scalar")) cap = SimdLevel::Scalar;
  else if (!std::strcmp(env, "avx2")) cap = SimdLevel::AVX2;
  else if (!std::strcmp(env, "avx512")) cap = SimdLevel::AVX512;
  else if (!std::strcmp(env, "amx")) cap = SimdLevel::AVX512;
  return static_cast<int>(cap) < static_cast<int>(cpu) ? cap : cpu;
}

bool cpu_has_avx512_vnni() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (c >> 11) & 1u;
}

bool cpu_has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return ((d >> 24) & 1u) && ((d >> 22) & 1u);
}

bool amx_tiles_enabled() {
  static const bool granted = [] {
    if (!cpu_has_amx_bf16()) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    // The tile data (8 KiB of state) is off for every process until it asks for it.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  const char* env = std::getenv("QLORA_SIMD");
  return granted && (!env || !std::strcmp(env, "amx"));
}

const char* simd_level_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::AVX2: return "avx2";
    case SimdLevel::AVX512: return "avx512";
  }
  return "?";
}

}  // namespace qlora
