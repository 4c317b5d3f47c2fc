// Our ggml quantizers (formats/ggml_quantize.h) against the bytes libggml itself wrote for
// the same float32 inputs (tests/fixtures/ggml_quant/reference.json, made by
// tools/make_ggml_quant_fixtures.py with llama-cpp-python's libggml-base: the
// quantize_row_*_ref path llama-quantize takes without an importance matrix): Q4_0, Q5_0,
// Q8_0, Q4_K and Q6_K, on smooth, heavy-tailed and edge-case blocks (all zero, constant,
// subnormal scale, alternating signs, one outlier, all negative). Every byte must match.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/ggml_quantize.h"

using namespace qlora;

namespace {

std::vector<float> lcg_uniform(int64_t n, uint32_t seed) {
  std::vector<float> out(static_cast<size_t>(n));
  uint32_t s = seed;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    out[static_cast<size_t>(i)] = static_cast<float>(s >> 8) * 0x1.0p-24f;
  }
  return out;
}

// The generator of tools/make_ggml_quant_fixtures.py, float32 operation for operation.
std::vector<float> inputs(const std::string& kind, int64_t n, uint32_t seed, double scale_d) {
  const float scale = static_cast<float>(scale_d);  // as np.float32(python float)
  std::vector<float> x(static_cast<size_t>(n));
  if (kind == "uniform") {
    const auto u = lcg_uniform(n, seed);
    for (int64_t i = 0; i < n; ++i) x[i] = (u[i] - 0.5f) * scale;
  } else if (kind == "bell") {
    const auto u = lcg_uniform(4 * n, seed);
    for (int64_t i = 0; i < n; ++i)
      x[i] = (((u[4 * i] + u[4 * i + 1]) + u[4 * i + 2]) + u[4 * i + 3] - 2.0f) * scale;
    for (int64_t i = 0; i < n; i += 97) x[i] = x[i] * 20.0f;
  } else if (kind == "special") {
    const int64_t block = n / 6;
    const auto u0 = lcg_uniform(block, 7);
    std::vector<float> u(u0.size());
    for (size_t i = 0; i < u.size(); ++i) u[i] = u0[i] - 0.5f;
    for (int64_t i = 0; i < block; ++i) {
      x[i] = 0.0f;
      x[block + i] = 0.25f;
      x[2 * block + i] = u[i] * static_cast<float>(1e-30);
      x[3 * block + i] = (i % 2 == 0 ? 1.0f : -1.0f) * static_cast<float>(0.03);
      x[4 * block + i] = u[i] * static_cast<float>(0.01);
      x[5 * block + i] = -std::fabs(u[i]) * 3.0f;
    }
    x[4 * block + 5] = 1000.0f;
  }
  return x;
}

std::string hex(const std::vector<uint8_t>& b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (uint8_t c : b) {
    s.push_back(d[c >> 4]);
    s.push_back(d[c & 15]);
  }
  return s;
}

GgmlType type_named(const std::string& t) {
  if (t == "Q4_0") return GgmlType::Q4_0;
  if (t == "Q5_0") return GgmlType::Q5_0;
  if (t == "Q8_0") return GgmlType::Q8_0;
  if (t == "Q4_K") return GgmlType::Q4_K;
  if (t == "Q6_K") return GgmlType::Q6_K;
  throw std::runtime_error("unknown type " + t);
}

TEST(GgmlQuantize, BytesEqualLibggml) {
  std::ifstream f(std::string(QLORA_FIXTURE_DIR) + "/ggml_quant/reference.json");
  ASSERT_TRUE(f) << "missing fixture";
  const auto j = nlohmann::json::parse(f);
  int compared = 0;
  for (const auto& c : j["cases"]) {
    const int64_t rows = c["rows"], cols = c["cols"];
    const std::vector<float> x = inputs(c["kind"], rows * cols, c["seed"].get<uint32_t>(), c["scale"].get<double>());
    for (const auto& [tname, want] : c["bytes"].items()) {
      const std::vector<uint8_t> got = quantize_ggml(type_named(tname), x.data(), rows * cols);
      const std::string g = hex(got), w = want.get<std::string>();
      ASSERT_EQ(g.size(), w.size()) << c["kind"] << " " << tname;
      if (g != w) {
        size_t first = 0;
        while (first < g.size() && g[first] == w[first]) ++first;
        ADD_FAILURE() << c["kind"] << " " << rows << "x" << cols << " " << tname << ": first differing byte "
                      << first / 2 << " of " << g.size() / 2;
      }
      ++compared;
    }
  }
  EXPECT_EQ(compared, 20);
}

TEST(GgmlQuantize, RejectsBadSizesAndTypes) {
  std::vector<float> x(100, 1.0f);
  EXPECT_THROW(quantize_ggml(GgmlType::Q4_K, x.data(), 100), Error);
  EXPECT_THROW(quantize_ggml(GgmlType::Q8_0, x.data(), 100), Error);
  EXPECT_THROW(quantize_ggml(GgmlType::Q2_K, x.data(), 96), Error);
}

}  // namespace
