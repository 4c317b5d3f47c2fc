#include "base/dtype.h"

#include <array>
#include <string>

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora {
namespace {
struct Info {
  DType type;
  std::string_view name;
  size_t size;
  bool is_float;
};
constexpr std::array<Info, 15> kInfo{{
    {DType::F64, "F64", 8, true},       {DType::F32, "F32", 4, true},
    {DType::F16, "F16", 2, true},       {DType::BF16, "BF16", 2, true},
    {DType::F8_E4M3, "F8_E4M3", 1, true}, {DType::F8_E5M2, "F8_E5M2", 1, true},
    {DType::I64, "I64", 8, false},      {DType::I32, "I32", 4, false},
    {DType::I16, "I16", 2, false},      {DType::I8, "I8", 1, false},
    {DType::U64, "U64", 8, false},      {DType::U32, "U32", 4, false},
    {DType::U16, "U16", 2, false},      {DType::U8, "U8", 1, false},
    {DType::BOOL, "BOOL", 1, false},
}};
const Info& info(DType t) { return kInfo[static_cast<size_t>(t)]; }
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }
bool dtype_is_float(DType t) { return info(t).is_float; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kInfo)
    if (i.name == name) return i.type;
  return std::nullopt;
}

DType to_dtype(ComputeDType c) {
  switch (c) {
    case ComputeDType::F32: return DType::F32;
    case ComputeDType::BF16: return DType::BF16;
    case ComputeDType::F16: return DType::F16;
  }
  return DType::F32;
}

ComputeDType compute_dtype_from_string(std::string_view s, std::string_view flag) {
  if (s == "fp32" || s == "float32" || s == "f32") return ComputeDType::F32;
  if (s == "bf16" || s == "bfloat16") return ComputeDType::BF16;
  if (s == "fp16" || s == "float16" || s == "f16" || s == "half") return ComputeDType::F16;
  fail(std::string(flag), "unknown dtype " + excerpt(s) + " (expected fp32, bf16 or fp16)");
}

std::string_view torch_dtype_name(ComputeDType c) {
  switch (c) {
    case ComputeDType::F32: return "float32";
    case ComputeDType::BF16: return "bfloat16";
    case ComputeDType::F16: return "float16";
  }
  return "float32";
}

}  // namespace qlora
