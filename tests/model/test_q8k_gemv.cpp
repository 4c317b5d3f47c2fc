// A GGUF's Q4_K / IQ4_XS weights on 8-bit activations the way llama.cpp multiplies them
// (model/linear_kernels.h: quantize_x_q8k, gemv_q8k_i8), at every instruction set this CPU has:
//  * quantize_x_q8k gives llama.cpp's own Q8_K codes and scales (quantize_row_q8_K_ref, from
//    tests/fixtures/gguf/q8k_dot/, tools/make_q8k_dot_fixtures.py) byte for byte;
//  * gemv_q8k_i8 on rows ggml's quantizer wrote gives ggml_vec_dot_<type>_q8_K's values up to
//    float summation order (the integer sums are the same; 2e-6 of the row's sum |w| |x|);
//  * on random blocks of awkward shapes and row ranges, every level against the scalar
//    definition, the few-token form against the one-token one bit for bit, and the whole
//    product within the 8-bit activations' error of the float32 one;
//  * QuantLinear takes this path for such weights under --int8-activations (and only then).
#include <gtest/gtest.h>

#include "base/simd_levels.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/float_formats.h"
#include "formats/ggml_as_4bit.h"
#include "formats/ggml_types.h"
#include "formats/gguf_fixture_files.h"
#include "model/block_row_kernels.h"
#include "model/linear_kernels.h"
#include "model/quant_linear.h"

using namespace qlora;

namespace {

std::vector<SimdLevel> levels() { return test::simd_levels_here(); }

const char* level_name(SimdLevel l) {
  return l == SimdLevel::Scalar ? "scalar" : l == SimdLevel::AVX2 ? "avx2" : "avx512";
}

std::string fixture(const std::string& name) { return test::gguf_fixture("q8k_dot/" + name); }

struct Fixture {
  int64_t cols = 0, rows = 0, tokens = 0;
  std::vector<float> x;      // tokens x cols
  std::vector<uint8_t> q8k;  // llama.cpp's block_q8_K per 256 of each token
};

Fixture load_fixture() {
  Fixture f;
  std::ifstream in(fixture("manifest.json"));
  EXPECT_TRUE(in.good()) << "cannot open " << fixture("manifest.json");
  if (!in.good()) return f;
  const nlohmann::json j = nlohmann::json::parse(in);
  f.cols = j.at("cols");
  f.rows = j.at("rows");
  f.tokens = j.at("tokens");
  f.x = test::read_f32(fixture("x.f32"));
  f.q8k = test::read_bytes(fixture("x.q8k"));
  EXPECT_EQ(static_cast<int64_t>(f.x.size()), f.tokens * f.cols);
  return f;
}

constexpr size_t kQ8KBytes = 4 + 256 + 32;  // float d, int8 qs[256], int16 bsums[16]

// Random GGML blocks of type t (rows x cols): every byte random, the fp16 scale fields random
// finite values of either sign and moderate size.
std::vector<uint8_t> random_blocks(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const GgmlTypeTraits& tr = ggml_traits(t);
  std::vector<uint8_t> b(static_cast<size_t>(rows * cols / tr.block_size * tr.type_size));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& v : b) v = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> mag(0.001f, 0.02f);
  const std::vector<int> halves = t == GgmlType::Q4_K ? std::vector<int>{0, 2} : std::vector<int>{0};
  for (size_t off = 0; off < b.size(); off += tr.type_size)
    for (int f : halves) {
      const float v = (byte(rng) & 1 ? -1.0f : 1.0f) * mag(rng);
      const uint16_t h = f32_to_fp16(v);
      std::memcpy(b.data() + off + f, &h, 2);
    }
  return b;
}

// Random Q4_0 blocks (fp16 scale, 16 bytes of nibbles).
std::vector<uint8_t> random_q4_0(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<uint8_t> b(static_cast<size_t>(rows * cols / 32 * 18));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& v : b) v = static_cast<uint8_t>(byte(rng));
  for (size_t off = 0; off < b.size(); off += 18) {
    const uint16_t h = f32_to_fp16(0.01f * static_cast<float>(1 + byte(rng) % 5));
    std::memcpy(b.data() + off, &h, 2);
  }
  return b;
}

}  // namespace

TEST(Q8KGemv, QuantizesActivationsAsLlamaCppBitForBit) {
  const Fixture f = load_fixture();
  ASSERT_GT(f.cols, 0);
  ASSERT_EQ(f.q8k.size(), static_cast<size_t>(f.tokens * (f.cols / 256)) * kQ8KBytes);
  for (SimdLevel lv : levels()) {
    const auto& k = kernels::linear_kernels_for(lv);
    for (int64_t t = 0; t < f.tokens; ++t) {
      std::vector<int8_t> q(static_cast<size_t>(f.cols), 99);
      std::vector<float> d(static_cast<size_t>(f.cols / 32), -1.0f);
      k.quantize_x_q8k(f.x.data() + t * f.cols, f.cols, q.data(), d.data());
      for (int64_t b = 0; b < f.cols / 256; ++b) {
        const uint8_t* blk = f.q8k.data() + (static_cast<size_t>(t * (f.cols / 256) + b)) * kQ8KBytes;
        float want_d;
        std::memcpy(&want_d, blk, 4);
        for (int j = 0; j < 8; ++j)
          EXPECT_EQ(std::bit_cast<uint32_t>(d[static_cast<size_t>(b * 8 + j)]), std::bit_cast<uint32_t>(want_d))
              << level_name(lv) << " token " << t << " block " << b;
        for (int i = 0; i < 256; ++i)
          ASSERT_EQ(q[static_cast<size_t>(b * 256 + i)], static_cast<int8_t>(blk[4 + i]))
              << level_name(lv) << " token " << t << " block " << b << " value " << i;
      }
    }
  }
}

// The rules llama.cpp's quantize_row_q8_K_ref has that random data rarely meets: the FIRST value
// of the largest magnitude sets the sign (-127 / m), an all-zero block is all zero; and ours
// where it has none: a block holding a NaN or an infinity gets codes 0 and a NaN scale (so the
// product is NaN, as float32's would be), a block too small for 127 / m is taken as zero. The
// per-32 quantizer the same for non-finite blocks. Every level alike.
TEST(Q8KGemv, QuantizerEdgeCases) {
  std::vector<float> x(4 * 256, 0.0f);
  for (int i = 0; i < 256; ++i) x[static_cast<size_t>(i)] = 0.01f * static_cast<float>(i % 7 - 3);
  x[10] = 2.0f, x[20] = -2.0f;            // block 0: +2 first: its code -127, -2's +127
  x[256 + 10] = -2.0f, x[256 + 20] = 2.0f;  // block 1: -2 first: its code -127
  x[512 + 3] = std::numeric_limits<float>::quiet_NaN();
  x[512 + 4] = 1.0f;
  x[768 + 5] = 1e-38f;  // 127 / 1e-38 overflows
  for (SimdLevel lv : levels()) {
    const auto& k = kernels::linear_kernels_for(lv);
    std::vector<int8_t> q(x.size(), 99);
    std::vector<float> d(x.size() / 32, -1.0f);
    k.quantize_x_q8k(x.data(), static_cast<int64_t>(x.size()), q.data(), d.data());
    EXPECT_EQ(q[10], -127) << level_name(lv);
    EXPECT_EQ(q[20], 127) << level_name(lv);
    EXPECT_EQ(d[0], -2.0f / 127.0f) << level_name(lv);
    EXPECT_EQ(q[256 + 10], -127) << level_name(lv);
    EXPECT_EQ(q[256 + 20], 127) << level_name(lv);
    EXPECT_EQ(d[8], 2.0f / 127.0f) << level_name(lv);
    for (int i = 512; i < 1024; ++i) ASSERT_EQ(q[static_cast<size_t>(i)], 0) << level_name(lv) << " value " << i;
    for (int j = 16; j < 24; ++j) EXPECT_TRUE(std::isnan(d[static_cast<size_t>(j)])) << level_name(lv);
    for (int j = 24; j < 32; ++j) EXPECT_EQ(d[static_cast<size_t>(j)], 0.0f) << level_name(lv);
    // per 32: the NaN's block, and an infinity's
    std::vector<float> y(64, 0.5f);
    y[7] = std::numeric_limits<float>::quiet_NaN();
    y[40] = -std::numeric_limits<float>::infinity();
    std::vector<int8_t> q8(64, 99);
    std::vector<float> d8(2, -1.0f);
    k.quantize_x_q8(y.data(), 64, q8.data(), d8.data());
    for (int i = 0; i < 64; ++i) ASSERT_EQ(q8[static_cast<size_t>(i)], 0) << level_name(lv) << " value " << i;
    EXPECT_TRUE(std::isnan(d8[0]) && std::isnan(d8[1])) << level_name(lv);
  }
}

TEST(Q8KGemv, GivesLlamaCppsDotProducts) {
  const Fixture f = load_fixture();
  ASSERT_GT(f.cols, 0);
  for (const GgmlType t : {GgmlType::Q4_K, GgmlType::IQ4_XS}) {
    const std::string name(ggml_type_name(t));
    const std::vector<uint8_t> blocks = test::read_bytes(fixture(name + ".bin"));
    const std::vector<float> want = test::read_f32(fixture(name + ".dot.f32"));
    ASSERT_EQ(static_cast<int64_t>(want.size()), f.tokens * f.rows) << name;
    const auto q = ggml_blocks_as_4bit(t, blocks, f.rows, f.cols, ComputeDType::F32, name);
    ASSERT_TRUE(q.has_value()) << name;
    const kernels::Q4Matrix m = q4_matrix_view(*q, f.rows, f.cols, ComputeDType::F32);
    ASSERT_TRUE(m.q8k_form) << name;
    // The scale of float32 summation error: sum |w| |x| over the row (values of ggml's blocks).
    std::vector<float> w(static_cast<size_t>(f.rows * f.cols));
    kernels::scalar_linear_kernels().dequant_rows_q4(m, 0, f.rows, w.data());
    for (SimdLevel lv : levels()) {
      const auto& k = kernels::linear_kernels_for(lv);
      for (int64_t tok = 0; tok < f.tokens; ++tok) {
        std::vector<int8_t> xq(static_cast<size_t>(f.cols));
        std::vector<float> xd(static_cast<size_t>(f.cols / 32));
        k.quantize_x_q8k(f.x.data() + tok * f.cols, f.cols, xq.data(), xd.data());
        std::vector<float> y(static_cast<size_t>(f.rows), NAN);
        k.gemv_q8k_i8(m, xq.data(), xd.data(), y.data(), 0, f.rows);
        for (int64_t r = 0; r < f.rows; ++r) {
          double scale = 0.0;
          for (int64_t c = 0; c < f.cols; ++c)
            scale += std::fabs(w[static_cast<size_t>(r * f.cols + c)] * f.x[static_cast<size_t>(tok * f.cols + c)]);
          EXPECT_NEAR(y[static_cast<size_t>(r)], want[static_cast<size_t>(tok * f.rows + r)], 2e-6 * scale + 1e-7)
              << name << " " << level_name(lv) << " token " << tok << " row " << r;
        }
      }
    }
  }
}

// The types kept as the file's blocks (model/block_row_kernels.h gemv_i8) give llama.cpp's products too.
TEST(Q8KGemv, BlockTypesGiveLlamaCppsDotProducts) {
  const Fixture f = load_fixture();
  ASSERT_GT(f.cols, 0);
  for (const GgmlType t : {GgmlType::Q6_K, GgmlType::Q5_K, GgmlType::Q3_K, GgmlType::Q2_K}) {
    const std::string name(ggml_type_name(t));
    const std::vector<uint8_t> blocks = test::read_bytes(fixture(name + ".bin"));
    const std::vector<float> want = test::read_f32(fixture(name + ".dot.f32"));
    ASSERT_EQ(static_cast<int64_t>(want.size()), f.tokens * f.rows) << name;
    kernels::BlockRows w;
    w.type = t;
    w.data = blocks.data();
    w.rows = f.rows;
    w.cols = f.cols;
    w.row_bytes = static_cast<int64_t>(blocks.size()) / f.rows;
    std::vector<float> vals(static_cast<size_t>(f.rows * f.cols));
    kernels::scalar_block_row_kernels().rows_to_f32(w, 0, f.rows, vals.data(), f.cols);
    for (SimdLevel lv : levels()) {
      std::vector<int8_t> xq(f.x.size());
      std::vector<float> xd(f.x.size() / 32);
      for (int64_t tok = 0; tok < f.tokens; ++tok)
        kernels::linear_kernels_for(lv).quantize_x_q8k(f.x.data() + tok * f.cols, f.cols, xq.data() + tok * f.cols,
                                                       xd.data() + tok * (f.cols / 32));
      std::vector<float> y(static_cast<size_t>(f.tokens * f.rows), NAN);
      kernels::block_row_kernels_for(lv).gemv_i8(w, xq.data(), xd.data(), f.tokens, y.data(), f.rows, 0, f.rows);
      for (int64_t tok = 0; tok < f.tokens; ++tok)
        for (int64_t r = 0; r < f.rows; ++r) {
          double scale = 0.0;
          for (int64_t c = 0; c < f.cols; ++c)
            scale += std::fabs(vals[static_cast<size_t>(r * f.cols + c)] * f.x[static_cast<size_t>(tok * f.cols + c)]);
          EXPECT_NEAR(y[static_cast<size_t>(tok * f.rows + r)], want[static_cast<size_t>(tok * f.rows + r)],
                      2e-6 * scale + 1e-7)
              << name << " " << level_name(lv) << " token " << tok << " row " << r;
        }
    }
  }
}

TEST(Q8KGemv, EveryLevelMatchesTheScalarDefinitionOnAwkwardShapes) {
  std::mt19937 rng(7);
  struct Shape {
    int64_t rows, cols, r0, r1;
  };
  const Shape shapes[] = {{1, 256, 0, 1}, {13, 768, 3, 13}, {37, 512, 5, 36}, {9, 2816, 0, 9}};
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::IQ4_XS}) {
    for (const Shape& s : shapes) {
      const std::vector<uint8_t> blocks = random_blocks(t, s.rows, s.cols, rng);
      const auto q = ggml_blocks_as_4bit(t, blocks, s.rows, s.cols, ComputeDType::F32, "random");
      ASSERT_TRUE(q.has_value());
      const kernels::Q4Matrix m = q4_matrix_view(*q, s.rows, s.cols, ComputeDType::F32);
      ASSERT_TRUE(m.q8k_form);
      constexpr int64_t T = 3;
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> x(static_cast<size_t>(T * s.cols));
      for (auto& v : x) v = nd(rng);
      x[5] = 30.0f;  // an outlier in token 0
      const auto& scalar = kernels::scalar_linear_kernels();
      std::vector<int8_t> xq(x.size());
      std::vector<float> xd(x.size() / 32);
      for (int64_t tok = 0; tok < T; ++tok)
        scalar.quantize_x_q8k(x.data() + tok * s.cols, s.cols, xq.data() + tok * s.cols, xd.data() + tok * (s.cols / 32));
      std::vector<float> ref(static_cast<size_t>(T * s.rows), 0.0f);
      for (int64_t tok = 0; tok < T; ++tok)
        scalar.gemv_q8k_i8(m, xq.data() + tok * s.cols, xd.data() + tok * (s.cols / 32), ref.data() + tok * s.rows,
                           s.r0, s.r1);
      // The float32 product of the same weights, and the error 8-bit activations may add: half a
      // step of each 256-block's scale per value.
      std::vector<float> w(static_cast<size_t>(s.rows * s.cols));
      scalar.dequant_rows_q4(m, 0, s.rows, w.data());
      std::vector<double> size(ref.size(), 0.0);  // sum |w x|: the scale of float32 summation error
      for (int64_t tok = 0; tok < T; ++tok)
        for (int64_t r = s.r0; r < s.r1; ++r) {
          double exact = 0.0, bound = 0.0;
          for (int64_t c = 0; c < s.cols; ++c) {
            const double wv = w[static_cast<size_t>(r * s.cols + c)];
            exact += wv * x[static_cast<size_t>(tok * s.cols + c)];
            size[static_cast<size_t>(tok * s.rows + r)] += std::fabs(wv * x[static_cast<size_t>(tok * s.cols + c)]);
            bound += std::fabs(wv) * 0.5 * std::fabs(xd[static_cast<size_t>(tok * (s.cols / 32) + c / 32)]) * 1.0001;
          }
          EXPECT_NEAR(ref[static_cast<size_t>(tok * s.rows + r)], exact, bound + 1e-4 * std::fabs(exact) + 1e-6)
              << ggml_type_name(t) << " rows " << s.rows << " cols " << s.cols << " token " << tok << " row " << r;
        }
      for (SimdLevel lv : levels()) {
        const auto& k = kernels::linear_kernels_for(lv);
        std::vector<int8_t> q2(x.size());
        std::vector<float> d2(x.size() / 32);
        for (int64_t tok = 0; tok < T; ++tok)
          k.quantize_x_q8k(x.data() + tok * s.cols, s.cols, q2.data() + tok * s.cols, d2.data() + tok * (s.cols / 32));
        ASSERT_EQ(q2, xq) << level_name(lv);
        ASSERT_EQ(d2, xd) << level_name(lv);
        std::vector<float> y(ref.size(), 0.0f), multi(ref.size(), 0.0f);
        for (int64_t tok = 0; tok < T; ++tok)
          k.gemv_q8k_i8(m, xq.data() + tok * s.cols, xd.data() + tok * (s.cols / 32), y.data() + tok * s.rows, s.r0,
                        s.r1);
        k.gemv_q8k_i8_multi(m, xq.data(), xd.data(), T, multi.data(), s.rows, s.r0, s.r1);
        for (size_t i = 0; i < ref.size(); ++i) {
          // the same integer sums; float32 order only (the minimums' term cancels much of the
          // scales' term, so relative to the row's size)
          EXPECT_NEAR(y[i], ref[i], 2e-6 * size[i] + 1e-7) << level_name(lv) << " element " << i;
          EXPECT_EQ(std::bit_cast<uint32_t>(multi[i]), std::bit_cast<uint32_t>(y[i])) << level_name(lv) << " element " << i;
        }
        for (int64_t tok = 0; tok < T; ++tok) {
          for (int64_t r = 0; r < s.rows; ++r) {
            if (r < s.r0 || r >= s.r1) {
              EXPECT_EQ(y[static_cast<size_t>(tok * s.rows + r)], 0.0f) << "row " << r << " outside the range written";
            }
          }
        }
      }
    }
  }
}

// QuantLinear: a Q4_K weight under --int8-activations takes the Q8_K kernels (its result is the
// kernel's), a Q4_0 weight keeps the per-32 ones, and without the option the float32 path.
TEST(Q8KGemv, QuantLinearTakesItForQ4KUnderInt8Activations) {
  std::mt19937 rng(11);
  const int64_t rows = 24, cols = 512;
  const std::vector<uint8_t> blocks = random_blocks(GgmlType::Q4_K, rows, cols, rng);
  auto q = ggml_blocks_as_4bit(GgmlType::Q4_K, blocks, rows, cols, ComputeDType::F32, "random");
  ASSERT_TRUE(q.has_value());
  QuantLinear lin(std::move(*q), ComputeDType::F32);
  std::vector<float> x(static_cast<size_t>(cols));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  const auto& k = kernels::active_linear_kernels();
  std::vector<int8_t> xq(x.size());
  std::vector<float> xd(x.size() / 32);
  k.quantize_x_q8k(x.data(), cols, xq.data(), xd.data());
  std::vector<float> want(static_cast<size_t>(rows));
  k.gemv_q8k_i8(lin.q4_view(), xq.data(), xd.data(), want.data(), 0, rows);
  std::vector<float> flt(static_cast<size_t>(rows));
  k.gemv_q4(lin.q4_view(), x.data(), flt.data(), 0, rows);

  std::vector<float> y(static_cast<size_t>(rows));
  lin.forward(y.data(), x.data(), 1);
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(y[static_cast<size_t>(r)], flt[static_cast<size_t>(r)]);
  lin.set_int8_activations(true);
  ASSERT_TRUE(lin.uses_int8_activations());
  lin.forward(y.data(), x.data(), 1);
  bool any_differs = false;
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(y[static_cast<size_t>(r)], want[static_cast<size_t>(r)]) << "row " << r;
    any_differs = any_differs || y[static_cast<size_t>(r)] != flt[static_cast<size_t>(r)];
  }
  EXPECT_TRUE(any_differs) << "8-bit activations should change some value";
  // Two tokens: each token's values the one-token product's.
  std::vector<float> x2(2 * x.size()), y2(2 * static_cast<size_t>(rows));
  std::copy(x.begin(), x.end(), x2.begin());
  std::copy(x.begin(), x.end(), x2.begin() + cols);
  lin.forward(y2.data(), x2.data(), 2);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(y2[static_cast<size_t>(r)], want[static_cast<size_t>(r)]);
    EXPECT_EQ(y2[static_cast<size_t>(rows + r)], want[static_cast<size_t>(r)]);
  }

  // One input into a Q4_K weight and a Q4_0 one (a block's q/k/v of mixed types): each gets its
  // own quantization of x (Q8_K, Q8_0), exactly as alone.
  const std::vector<uint8_t> b40 = random_q4_0(rows, cols, rng);
  auto q40 = ggml_blocks_as_4bit(GgmlType::Q4_0, b40, rows, cols, ComputeDType::F32, "random");
  ASSERT_TRUE(q40.has_value());
  QuantLinear other(std::move(*q40), ComputeDType::F32);
  other.set_int8_activations(true);
  std::vector<float> alone(static_cast<size_t>(rows)), ya(static_cast<size_t>(rows)), yb(static_cast<size_t>(rows));
  other.forward(alone.data(), x.data(), 1);
  const QuantLinear* ws[] = {&lin, &other};
  float* ys[] = {ya.data(), yb.data()};
  forward_same_input(ws, ys, x.data(), 1);
  EXPECT_EQ(ya, want);
  EXPECT_EQ(yb, alone);
  // ... and the Q4_0 one on the per-32 kernels
  std::vector<int8_t> q32(x.size());
  std::vector<float> d32(x.size() / 32);
  k.quantize_x_q8(x.data(), cols, q32.data(), d32.data());
  std::vector<float> per32(static_cast<size_t>(rows));
  k.gemv_q4_i8(other.q4_view(), q32.data(), d32.data(), per32.data(), 0, rows);
  EXPECT_EQ(alone, per32);
}
