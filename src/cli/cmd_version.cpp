// `qlora version`: build information, and which SIMD kernels this CPU gets.
#include <cstdio>

#include "base/cpu_features.h"
#include "base/parallel.h"
#include "cli/command.h"

namespace {
const bool kRegistered = qlora::cli::register_command(
    "version", "Print version, SIMD level and thread count", [](CLI::App&) -> qlora::cli::Action {
      return [] {
        std::printf("qlora.cpp 0.1.0\nsimd: %s (cpu supports %s)\nthreads: %d\n",
                    qlora::simd_level_name(qlora::simd_level()),
                    qlora::simd_level_name(qlora::cpu_simd_level()), qlora::max_threads());
        return 0;
      };
    });
}  // namespace
