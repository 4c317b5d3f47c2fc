#pragma once
// Element types of tensors, with the names safetensors uses on disk.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qlora {

enum class DType : uint8_t {
  F64, F32, F16, BF16, F8_E4M3, F8_E5M2,
  I64, I32, I16, I8, U64, U32, U16, U8, BOOL,
};

// Bytes per element.
size_t dtype_size(DType t);
// The safetensors spelling: "F32", "BF16", "F8_E4M3", ...
std::string_view dtype_name(DType t);
// Inverse of dtype_name; nullopt for an unknown name.
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

// The dtypes computation may run in (--compute-dtype).
enum class ComputeDType : uint8_t { F32, BF16, F16 };
DType to_dtype(ComputeDType c);
// "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16"; throws Error naming `flag` otherwise.
ComputeDType compute_dtype_from_string(std::string_view s, std::string_view flag = "--compute-dtype");
// The torch spelling used in bitsandbytes' quant-state JSON: "float32", "bfloat16", "float16".
std::string_view torch_dtype_name(ComputeDType c);

}  // namespace qlora
