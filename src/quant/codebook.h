#pragma once
// The codebooks of bitsandbytes 0.50: NF4, its FP4 (E2M1 variant, bit 3 = sign) and the
// 8-bit "dynamic" maps used for double quantization and 8-bit optimizer state.
#include <array>
#include <string_view>

namespace qlora {

enum class QuantType { NF4, FP4 };

// The 16 values a 4-bit code decodes to (times the block's absmax), by nibble 0..15.
const std::array<float, 16>& codebook_4bit(QuantType t);
std::string_view quant_type_name(QuantType t);  // "nf4" / "fp4"
// "nf4" / "fp4"; throws Error naming `where` otherwise.
QuantType quant_type_from_string(std::string_view s, std::string_view where = "--quant");

// bitsandbytes.functional.create_dynamic_map(signed=is_signed) as float32, 256 entries,
// sorted ascending exactly as bitsandbytes returns it.
const std::array<float, 256>& dynamic_map_8bit(bool is_signed);

}  // namespace qlora
