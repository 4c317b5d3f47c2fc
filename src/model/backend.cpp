#include "model/backend.h"

#include <string>

#include "base/error.h"

namespace qlora {

void Backend::attention_forward_kv16(const AttentionShape&, float*, float*, float*, const float*, const uint16_t*,
                                     const uint16_t*, ComputeDType) {
  fail("attention", std::string("the ") + name() + " backend keeps its KV cache in float32 (16-bit caches: CPU only)");
}

}  // namespace qlora
