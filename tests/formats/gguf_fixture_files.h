#pragma once
// Reading the GGUF tests' fixture files (tests/fixtures/gguf/, tools/make_gguf_fixtures.py):
// raw bytes and little-endian float32 arrays, a missing file reported as a test failure.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace qlora::test {

// tests/fixtures/gguf/<name>.
inline std::string gguf_fixture(const std::string& name) { return std::string(QLORA_FIXTURE_DIR) + "/gguf/" + name; }

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::vector<float> read_f32(const std::string& path) {
  const auto b = read_bytes(path);
  std::vector<float> v(b.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

}  // namespace qlora::test
