// libFuzzer target for the safetensors header parser: any byte string must either parse
// or raise qlora::Error — never crash, hang, or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = qlora::parse_safetensors_header(std::span<const uint8_t>(data, size), "fuzz");
    (void)h;
  } catch (const qlora::Error&) {
  }
  return 0;
}
