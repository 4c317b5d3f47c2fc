#pragma once
// The GGUF model fixtures' reference logits (tests/fixtures/gguf/<stem>.json, written by
// tools/make_gguf_fixtures.py: a prompt, transformers' and llama.cpp's logits on the file) and
// the comparisons the tests make with them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qlora::test {

// tests/fixtures/gguf/<stem>.json, parsed. (Keep the result alive while iterating its items().)
inline nlohmann::json gguf_logits_reference(const std::string& stem) {
  std::ifstream in(std::string(QLORA_FIXTURE_DIR) + "/gguf/" + stem + ".json");
  return nlohmann::json::parse(in);
}

// A JSON array of rows, flattened.
inline std::vector<float> flat_rows(const nlohmann::json& rows) {
  std::vector<float> v;
  for (const auto& r : rows)
    for (const auto& x : r) v.push_back(x.get<float>());
  return v;
}

inline float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

inline float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// The largest logit's index in row `row` of (rows, vocab) logits.
inline int argmax_row(const std::vector<float>& v, size_t row, int64_t vocab) {
  const auto b = v.begin() + static_cast<std::ptrdiff_t>(row * static_cast<size_t>(vocab));
  return static_cast<int>(std::max_element(b, b + vocab) - b);
}

}  // namespace qlora::test
