// GGML dequantization (src/formats/ggml_types.*) against gguf-py's numpy reference
// (gguf.quants.dequantize, gguf 0.19.0) on random blocks: tests/fixtures/gguf/dequant_*
// from tools/make_gguf_fixtures.py. The fp16 scale fields hold random finite values
// (subnormals included); every other byte is random.
//
// The i-quants, TQ1_0 / TQ2_0, MXFP4, NVFP4, Q1_0 and Q2_0 fixtures hold ggml's own C
// dequantization (libggml-base's dequantize_row_*), which the script checked equal to
// gguf-py's bit for bit where gguf-py has the type (all but Q1_0 / Q2_0).
//
// Tolerance: none. Our scalar code and gguf-py evaluate the same float32 expressions
// in the same order (Q4_1: q*d + m; K-quants: (d*sc)*q - (dmin*m); Q6_K: (d*sc)*q), and
// neither fuses multiply-add, so every element must be bit-identical (NaN payloads of
// the F16/BF16 random bit patterns: both sides must be NaN).
#include <gtest/gtest.h>

#include "gguf_fixture_files.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/ggml_types.h"

using namespace qlora;

namespace {


std::string fixture(const std::string& name) { return test::gguf_fixture(name); }
using test::read_bytes;
using test::read_f32;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Bit-exact comparison; NaN matches NaN. Returns the number of mismatches (first few printed).
size_t count_mismatches(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const bool same = (std::isnan(want[i]) && std::isnan(got[i])) || bits(want[i]) == bits(got[i]);
    if (!same && ++bad <= 5)
      ADD_FAILURE() << what << " element " << i << ": got " << got[i] << " want " << want[i];
  }
  return bad;
}

struct Case {
  const char* name;
  GgmlType type;
};

class DequantFixture : public ::testing::TestWithParam<Case> {};

TEST_P(DequantFixture, MatchesGgufPyExactly) {
  const Case c = GetParam();
  const auto raw = read_bytes(fixture(std::string("dequant_") + c.name + ".bin"));
  const auto want = read_f32(fixture(std::string("dequant_") + c.name + ".f32"));
  ASSERT_FALSE(want.empty());
  const int64_t n = static_cast<int64_t>(want.size());
  ASSERT_EQ(ggml_nbytes(c.type, n).value(), static_cast<int64_t>(raw.size()));

  std::vector<float> got(want.size(), -12345.0f);
  dequantize(c.type, raw, got);
  EXPECT_EQ(count_mismatches(got, want, c.name), 0u);

  // The row reference gives the same, and so does dequantizing block by block.
  std::vector<float> ref(want.size());
  dequantize_row_ref(c.type, raw.data(), ref.data(), n);
  EXPECT_EQ(count_mismatches(ref, want, std::string(c.name) + " (row ref)"), 0u);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantFixture,
                         ::testing::Values(Case{"F32", GgmlType::F32}, Case{"F16", GgmlType::F16},
                                           Case{"BF16", GgmlType::BF16}, Case{"Q4_0", GgmlType::Q4_0},
                                           Case{"Q4_1", GgmlType::Q4_1}, Case{"Q5_0", GgmlType::Q5_0},
                                           Case{"Q5_1", GgmlType::Q5_1}, Case{"Q8_0", GgmlType::Q8_0},
                                           Case{"Q2_K", GgmlType::Q2_K}, Case{"Q3_K", GgmlType::Q3_K},
                                           Case{"Q4_K", GgmlType::Q4_K}, Case{"Q5_K", GgmlType::Q5_K},
                                           Case{"Q6_K", GgmlType::Q6_K}, Case{"IQ2_XXS", GgmlType::IQ2_XXS},
                                           Case{"IQ2_XS", GgmlType::IQ2_XS}, Case{"IQ2_S", GgmlType::IQ2_S},
                                           Case{"IQ3_XXS", GgmlType::IQ3_XXS}, Case{"IQ3_S", GgmlType::IQ3_S},
                                           Case{"IQ1_S", GgmlType::IQ1_S}, Case{"IQ1_M", GgmlType::IQ1_M},
                                           Case{"IQ4_NL", GgmlType::IQ4_NL}, Case{"IQ4_XS", GgmlType::IQ4_XS},
                                           Case{"TQ1_0", GgmlType::TQ1_0}, Case{"TQ2_0", GgmlType::TQ2_0},
                                           Case{"MXFP4", GgmlType::MXFP4}, Case{"NVFP4", GgmlType::NVFP4},
                                           Case{"Q1_0", GgmlType::Q1_0}, Case{"Q2_0", GgmlType::Q2_0}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

TEST(GgmlTypes, BlockSizesMatchTraits) {
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ4_0)), ggml_traits(GgmlType::Q4_0).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ4_1)), ggml_traits(GgmlType::Q4_1).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ5_0)), ggml_traits(GgmlType::Q5_0).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ5_1)), ggml_traits(GgmlType::Q5_1).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ8_0)), ggml_traits(GgmlType::Q8_0).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ2_K)), ggml_traits(GgmlType::Q2_K).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ3_K)), ggml_traits(GgmlType::Q3_K).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ4_K)), ggml_traits(GgmlType::Q4_K).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ5_K)), ggml_traits(GgmlType::Q5_K).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ6_K)), ggml_traits(GgmlType::Q6_K).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ2_XXS)), ggml_traits(GgmlType::IQ2_XXS).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ2_XS)), ggml_traits(GgmlType::IQ2_XS).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ2_S)), ggml_traits(GgmlType::IQ2_S).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ3_XXS)), ggml_traits(GgmlType::IQ3_XXS).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ3_S)), ggml_traits(GgmlType::IQ3_S).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ1_S)), ggml_traits(GgmlType::IQ1_S).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ1_M)), ggml_traits(GgmlType::IQ1_M).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ4_NL)), ggml_traits(GgmlType::IQ4_NL).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockIQ4_XS)), ggml_traits(GgmlType::IQ4_XS).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockTQ1_0)), ggml_traits(GgmlType::TQ1_0).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockTQ2_0)), ggml_traits(GgmlType::TQ2_0).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockNVFP4)), ggml_traits(GgmlType::NVFP4).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ1_0)), ggml_traits(GgmlType::Q1_0).type_size);
  EXPECT_EQ(static_cast<int64_t>(sizeof(BlockQ2_0)), ggml_traits(GgmlType::Q2_0).type_size);
  EXPECT_EQ(ggml_traits(GgmlType::NVFP4).block_size, 64);
  EXPECT_EQ(ggml_traits(GgmlType::Q1_0).block_size, 128);
  EXPECT_EQ(ggml_traits(GgmlType::IQ4_NL).block_size, 32);
  EXPECT_EQ(ggml_traits(GgmlType::Q6_K).block_size, 256);
  EXPECT_EQ(ggml_type_name(GgmlType::Q4_K), "Q4_K");
  EXPECT_EQ(ggml_type_name(GgmlType::BF16), "BF16");
}

TEST(GgmlTypes, UnknownAndRemovedIds) {
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 43u, 1000u, 0xFFFFFFFFu})
    EXPECT_FALSE(ggml_type_traits(id).has_value()) << id;
  for (uint32_t id : {0u, 1u, 2u, 3u, 8u, 12u, 14u, 16u, 23u, 29u, 30u, 34u, 39u, 40u, 41u, 42u})
    EXPECT_TRUE(ggml_type_traits(id).has_value()) << id;
  // Q8_1 / Q8_K are ggml's internal activation types: never dequantized from a file.
  EXPECT_FALSE(ggml_traits(GgmlType::Q8_1).can_dequantize);
  EXPECT_FALSE(ggml_traits(GgmlType::Q8_K).can_dequantize);
}

TEST(GgmlTypes, Nbytes) {
  EXPECT_EQ(ggml_nbytes(GgmlType::Q4_0, 64).value(), 36);
  EXPECT_EQ(ggml_nbytes(GgmlType::Q4_K, 512).value(), 288);
  EXPECT_EQ(ggml_nbytes(GgmlType::F16, 3).value(), 6);
  EXPECT_FALSE(ggml_nbytes(GgmlType::Q4_0, 33).has_value());
  EXPECT_FALSE(ggml_nbytes(GgmlType::Q8_0, -32).has_value());
  EXPECT_FALSE(ggml_nbytes(GgmlType::F64, INT64_MAX).has_value());  // overflow
}

TEST(GgmlTypes, DequantizeRejectsBadInput) {
  std::vector<uint8_t> raw(18);
  std::vector<float> out(32);
  EXPECT_NO_THROW(dequantize(GgmlType::Q4_0, raw, out));
  std::vector<float> out_bad(31);
  EXPECT_THROW(dequantize(GgmlType::Q4_0, raw, out_bad), Error);  // not a block multiple
  std::vector<uint8_t> short_raw(17);
  EXPECT_THROW(dequantize(GgmlType::Q4_0, short_raw, out), Error);  // wrong byte count
  std::vector<uint8_t> q8k(292);
  std::vector<float> out256(256);
  try {
    dequantize(GgmlType::Q8_K, q8k, out256, "model.gguf: tensor 'x'");
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q8_K"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.gguf"), std::string::npos) << e.what();
  }
}

// A big tensor goes through the parallel path: same result as the scalar row reference.
TEST(GgmlTypes, ParallelMatchesReference) {
  for (auto [name, type] : {std::pair{"Q4_1", GgmlType::Q4_1}, std::pair{"Q6_K", GgmlType::Q6_K},
                            std::pair{"Q8_0", GgmlType::Q8_0}, std::pair{"IQ2_XXS", GgmlType::IQ2_XXS},
                            std::pair{"IQ4_XS", GgmlType::IQ4_XS}, std::pair{"TQ1_0", GgmlType::TQ1_0}}) {
    const auto block = read_bytes(fixture(std::string("dequant_") + name + ".bin"));
    std::vector<uint8_t> raw;
    for (int r = 0; r < 512; ++r) raw.insert(raw.end(), block.begin(), block.end());
    const auto& tr = ggml_traits(type);
    const int64_t n = static_cast<int64_t>(raw.size()) / tr.type_size * tr.block_size;
    std::vector<float> par(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
    dequantize(type, raw, par);
    dequantize_row_ref(type, raw.data(), ref.data(), n);
    EXPECT_EQ(count_mismatches(par, ref, name), 0u);
  }
}

// Hand-made blocks with known values (independent of gguf-py).
TEST(GgmlTypes, HandMadeBlocks) {
  // Q8_0: d = 0.5 (fp16 0x3800), q = -3 -> -1.5
  BlockQ8_0 b8{};
  b8.d = 0x3800;
  for (int i = 0; i < 32; ++i) b8.qs[i] = static_cast<int8_t>(i - 16);
  std::vector<uint8_t> raw(sizeof b8);
  std::memcpy(raw.data(), &b8, sizeof b8);
  std::vector<float> out(32);
  dequantize(GgmlType::Q8_0, raw, out);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], 0.5f * static_cast<float>(i - 16));

  // Q4_0: d = 2, low nibble j -> element j, high nibble -> element j+16; value (q-8)*d.
  BlockQ4_0 b4{};
  b4.d = 0x4000;  // 2.0
  for (int j = 0; j < 16; ++j) b4.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  raw.assign(sizeof b4, 0);
  std::memcpy(raw.data(), &b4, sizeof b4);
  dequantize(GgmlType::Q4_0, raw, out);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 2.0f * static_cast<float>(j - 8));
    EXPECT_EQ(out[j + 16], 2.0f * static_cast<float>(15 - j - 8));
  }
}

}  // namespace
