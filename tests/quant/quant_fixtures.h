#pragma once
// Helpers shared by the quant tests: reading the fixtures tools/make_quant_fixtures.py
// wrote with bitsandbytes, and comparing floats bit for bit.
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"

namespace qlora::testing {

inline std::string quant_fixture(const std::string& name) {
  return std::string(QLORA_FIXTURE_DIR) + "/quant/" + name;
}

// The raw elements of a fixture tensor, which must have dtype `want`.
template <class T>
std::vector<T> raw(const SafeTensorsFile& f, const std::string& name, DType want) {
  const SafeTensorInfo& t = f.at(name);
  EXPECT_EQ(t.dtype, want) << name;
  auto b = f.data(t);
  std::vector<T> v(b.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
  return v;
}

inline std::vector<float> f32s(const SafeTensorsFile& f, const std::string& name) {
  return raw<float>(f, name, DType::F32);
}
inline std::vector<uint8_t> u8s(const SafeTensorsFile& f, const std::string& name) {
  return raw<uint8_t>(f, name, DType::U8);
}

inline nlohmann::json cases(const SafeTensorsFile& f) { return nlohmann::json::parse(f.metadata().at("cases")); }

inline uint32_t bits(float v) { return std::bit_cast<uint32_t>(v); }

// Index of the first element whose bits differ, or -1.
inline int64_t first_bit_mismatch(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (bits(a[i]) != bits(b[i])) return static_cast<int64_t>(i);
  return -1;
}

}  // namespace qlora::testing
