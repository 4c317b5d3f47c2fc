// base/openmp_wait.h: which commands get a bounded OpenMP spin.
#include "base/openmp_wait.h"

#include <strings.h>

namespace qlora {

std::optional<std::string> decode_spin_count(std::string_view command, const char* gomp_spincount,
                                             const char* omp_wait_policy) {
  if (command != "generate" && command != "chat" && command != "serve") return std::nullopt;
  if (gomp_spincount) return std::nullopt;  // the user's own choice
  if (omp_wait_policy && strcasecmp(omp_wait_policy, "active") == 0) return std::nullopt;
  return std::to_string(kDecodeSpinCount);
}

}  // namespace qlora
