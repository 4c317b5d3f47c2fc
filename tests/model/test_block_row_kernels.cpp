// The block-row kernels (model/block_row_kernels.h: GGUF Q5_0 / Q5_1 / Q5_K / Q6_K / Q3_K /
// Q2_K rows kept as stored) at every instruction set this CPU has:
//  * rows_to_f32 against gguf-py's own dequantization of random blocks
//    (tests/fixtures/gguf/dequant_*, tools/make_gguf_fixtures.py): bit for bit, no tolerance;
//  * on larger random matrices (awkward row counts and ranges, several blocks a row),
//    rows_to_f32 bit for bit the scalar definition (ggml's reference dequantization), and the
//    GEMV against a double-precision dot product of those values, within float32 summation
//    error (1e-5 of sum |w x|);
//  * the few-token GEMV: each token's result equal bit for bit to the one-token call.
#include <gtest/gtest.h>

#include "base/simd_levels.h"

#include "formats/gguf_fixture_files.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/float_formats.h"
#include "formats/ggml_types.h"
#include "model/block_row_kernels.h"
#include "model/linear_kernels.h"

using namespace qlora;
using kernels::BlockRowKernels;
using kernels::BlockRows;

namespace {

const GgmlType kTypes[] = {GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q5_K,
                           GgmlType::Q6_K, GgmlType::Q3_K, GgmlType::Q2_K};

std::vector<SimdLevel> levels() { return test::simd_levels_here(); }

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Offsets of a block's fp16 scale fields (formats/ggml_types.h layouts).
std::vector<int> half_fields(GgmlType t) {
  switch (t) {
    case GgmlType::Q5_0: return {0};
    case GgmlType::Q5_1: return {0, 2};
    case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q6_K: return {208};
    case GgmlType::Q3_K: return {108};
    case GgmlType::Q2_K: return {80, 82};
    default: return {};
  }
}

// Random blocks: every byte random, the fp16 fields random finite values of either sign
// (a few subnormal), so every code, scale and bit pattern occurs.
std::vector<uint8_t> random_blocks(GgmlType t, int64_t n, std::mt19937& rng) {
  const GgmlTypeTraits& tr = ggml_traits(t);
  std::vector<uint8_t> b(static_cast<size_t>(n / tr.block_size * tr.type_size));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& v : b) v = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> mag(-12.0f, 1.0f);
  for (size_t off = 0; off < b.size(); off += tr.type_size)
    for (int f : half_fields(t)) {
      float v = std::ldexp(1.0f, static_cast<int>(mag(rng))) * (1.0f + byte(rng) / 256.0f);
      if (byte(rng) < 8) v = std::ldexp(v, -14);  // subnormal in fp16
      if (byte(rng) & 1) v = -v;
      const uint16_t h = f32_to_fp16(v);
      std::memcpy(b.data() + off + f, &h, 2);
    }
  return b;
}

BlockRows view(GgmlType t, const std::vector<uint8_t>& data, int64_t rows, int64_t cols) {
  BlockRows w;
  w.type = t;
  w.data = data.data();
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = cols / ggml_traits(t).block_size * ggml_traits(t).type_size;
  return w;
}

TEST(BlockRowKernels, SupportsTheTypesOfMoreOrFewerThanFourBits) {
  for (GgmlType t : kTypes) EXPECT_TRUE(kernels::block_rows_supported(t)) << ggml_type_name(t);
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F32, GgmlType::IQ4_XS})
    EXPECT_FALSE(kernels::block_rows_supported(t)) << ggml_type_name(t);
}

// gguf-py's values of its own random blocks, read back as one row of blocks and as several.
TEST(BlockRowKernels, RowsAreGgufPysValuesBitForBit) {
  for (GgmlType t : kTypes) {
    const std::string name = std::string(ggml_type_name(t));
    const std::vector<uint8_t> data = test::read_bytes(test::gguf_fixture("dequant_" + name + ".bin"));
    const std::vector<float> want = test::read_f32(test::gguf_fixture("dequant_" + name + ".f32"));
    ASSERT_FALSE(want.empty()) << name;
    const int64_t qk = ggml_traits(t).block_size, n = static_cast<int64_t>(want.size());
    for (int64_t cols : {qk, n}) {
      if (n % cols) continue;
      const int64_t rows = n / cols;
      for (SimdLevel l : levels()) {
        const BlockRowKernels& k = kernels::block_row_kernels_for(l);
        std::vector<float> got(static_cast<size_t>(n), -1.0f);
        k.rows_to_f32(view(t, data, rows, cols), 0, rows, got.data(), cols);
        int bad = 0;
        for (int64_t i = 0; i < n; ++i)
          if (bits(got[i]) != bits(want[i]) && ++bad <= 3)
            ADD_FAILURE() << name << " " << simd_level_name(l) << " value " << i << ": " << got[i] << " vs gguf-py's "
                          << want[i];
        EXPECT_EQ(bad, 0) << name << " " << simd_level_name(l) << " cols " << cols;
      }
    }
  }
}

TEST(BlockRowKernels, EveryLevelMatchesTheScalarDefinitionOnAwkwardSizes) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (GgmlType t : kTypes) {
    const int64_t qk = ggml_traits(t).block_size;
    for (int64_t rows : {1, 3, 7, 18})
      for (int64_t nblk : {1, 3, 5}) {
        const int64_t cols = qk * nblk;
        const std::vector<uint8_t> data = random_blocks(t, rows * cols, rng);
        const BlockRows w = view(t, data, rows, cols);
        std::vector<float> ref(static_cast<size_t>(rows * cols));
        kernels::scalar_block_row_kernels().rows_to_f32(w, 0, rows, ref.data(), cols);
        std::vector<float> x(static_cast<size_t>(kernels::kBlockGemvMaxTokens * cols));
        for (auto& v : x) v = normal(rng);
        const std::string what = std::string(ggml_type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols);
        for (SimdLevel l : levels()) {
          const BlockRowKernels& k = kernels::block_row_kernels_for(l);
          // Rows [r0, r1) into a strided tile (ld > cols): nothing else written.
          const int64_t r0 = rows > 2 ? 1 : 0, r1 = rows, ld = cols + 5;
          std::vector<float> tile(static_cast<size_t>((r1 - r0) * ld), 7.0f);
          k.rows_to_f32(w, r0, r1, tile.data(), ld);
          for (int64_t r = r0; r < r1; ++r) {
            for (int64_t c = 0; c < cols; ++c)
              ASSERT_EQ(bits(tile[(r - r0) * ld + c]), bits(ref[r * cols + c])) << what << " " << simd_level_name(l);
            for (int64_t c = cols; c < ld; ++c) ASSERT_EQ(tile[(r - r0) * ld + c], 7.0f) << what;
          }
          // GEMV over rows [r0, r1) for T tokens against double precision.
          for (int64_t T : {1, 2, 3, 8}) {
            const int64_t ldy = rows + 2;
            std::vector<float> y(static_cast<size_t>(T * ldy), -3.0f);
            k.gemv(w, x.data(), T, y.data(), ldy, r0, r1);
            for (int64_t tt = 0; tt < T; ++tt)
              for (int64_t r = 0; r < rows; ++r) {
                const float got = y[tt * ldy + r];
                if (r < r0) {
                  EXPECT_EQ(got, -3.0f) << what << ": row " << r << " outside the range was written";
                  continue;
                }
                double want = 0.0, mag = 0.0;
                for (int64_t c = 0; c < cols; ++c) {
                  const double p = static_cast<double>(ref[r * cols + c]) * x[tt * cols + c];
                  want += p;
                  mag += std::fabs(p);
                }
                EXPECT_NEAR(got, want, 1e-5 * mag + 1e-30) << what << " " << simd_level_name(l) << " T " << T;
                if (T > 1) {  // token tt alone gives the same bits
                  std::vector<float> y1(static_cast<size_t>(rows), 0.0f);
                  k.gemv(w, x.data() + tt * cols, 1, y1.data(), rows, r, r + 1);
                  EXPECT_EQ(bits(got), bits(y1[r])) << what << " " << simd_level_name(l) << " token " << tt << " of " << T;
                }
              }
          }
        }
      }
  }
}

// gemv_i8 (8-bit activations: the Q8_K / Q8_0 codes and scales of linear_kernels' quantizers) at
// every level against the scalar definition (the reference values times xq * xd in float32):
// the same products up to float32 rounding, 2e-6 of the row's sum |w x|; a token's result the
// same bits whatever T; rows outside the range untouched.
TEST(BlockRowKernels, Int8ActivationGemvMatchesTheScalarDefinition) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto& lin = kernels::scalar_linear_kernels();
  for (GgmlType t : kTypes) {
    const int64_t qk = ggml_traits(t).block_size;
    for (int64_t rows : {1, 7, 18})
      for (int64_t nblk : {1, 3}) {
        const int64_t cols = qk * nblk;
        const std::vector<uint8_t> data = random_blocks(t, rows * cols, rng);
        const BlockRows w = view(t, data, rows, cols);
        constexpr int64_t T = 3;
        std::vector<float> x(static_cast<size_t>(T * cols));
        for (auto& v : x) v = normal(rng);
        std::vector<int8_t> xq(x.size());
        std::vector<float> xd(x.size() / 32);
        for (int64_t tt = 0; tt < T; ++tt)
          (qk == 256 ? lin.quantize_x_q8k : lin.quantize_x_q8)(x.data() + tt * cols, cols, xq.data() + tt * cols,
                                                              xd.data() + tt * (cols / 32));
        std::vector<float> vals(static_cast<size_t>(rows * cols));
        kernels::scalar_block_row_kernels().rows_to_f32(w, 0, rows, vals.data(), cols);
        const int64_t r0 = rows > 2 ? 1 : 0, ldy = rows + 1;
        std::vector<float> ref(static_cast<size_t>(T * ldy), -3.0f);
        kernels::scalar_block_row_kernels().gemv_i8(w, xq.data(), xd.data(), T, ref.data(), ldy, r0, rows);
        const std::string what = std::string(ggml_type_name(t)) + " " + std::to_string(rows) + " x " + std::to_string(cols);
        for (SimdLevel l : levels()) {
          const BlockRowKernels& k = kernels::block_row_kernels_for(l);
          std::vector<float> y(ref.size(), -3.0f);
          k.gemv_i8(w, xq.data(), xd.data(), T, y.data(), ldy, r0, rows);
          for (int64_t tt = 0; tt < T; ++tt)
            for (int64_t r = 0; r < rows; ++r) {
              const float got = y[tt * ldy + r];
              if (r < r0) {
                EXPECT_EQ(got, -3.0f) << what << ": row " << r << " outside the range was written";
                continue;
              }
              double mag = 0.0;
              for (int64_t c = 0; c < cols; ++c)
                mag += std::fabs(static_cast<double>(vals[r * cols + c]) * xq[tt * cols + c] * xd[tt * (cols / 32) + c / 32]);
              EXPECT_NEAR(got, ref[tt * ldy + r], 2e-6 * mag + 1e-30) << what << " " << simd_level_name(l) << " token " << tt;
              std::vector<float> y1(static_cast<size_t>(rows), 0.0f);
              k.gemv_i8(w, xq.data() + tt * cols, xd.data() + tt * (cols / 32), 1, y1.data(), rows, r, r + 1);
              EXPECT_EQ(bits(got), bits(y1[r])) << what << " " << simd_level_name(l) << " token " << tt << " of " << T;
            }
        }
      }
  }
}

}  // namespace

namespace {

// Saturating inputs for gemv_i8: blocks whose every code is the largest or the smallest (all
// bytes 0xFF / 0x00: Q6_K's 63 and 0 with its scales set to -128, Q5_K's 31 with scale and
// minimum 63, Q3_K's scales -32 with codes -4, Q2_K's 15 / 15), against activation codes at
// the int8 extremes (all 127, all -128, alternating, uniform in [-128, 127]) rather than what
// the quantizer makes: the int16 pair sums and int32 block sums at their bounds. Every level
// against the same products in double, within float32 summation error of 512 same-sign terms
// (4e-5 of sum |w x|; an overflowed or saturated sum is off by far more). x's codes go down to
// -128 for every type (quantize_x_q8 keeps Q5_0 / Q5_1's within +-127, but the kernels multiply
// unsigned codes by signed x, with no sign steps that -128 would overflow).
TEST(BlockRowKernels, Int8ActivationGemvAtTheCodesExtremes) {
  std::mt19937 rng(5);
  for (GgmlType t : kTypes) {
    const GgmlTypeTraits& tr = ggml_traits(t);
    const int64_t qk = tr.block_size, cols = 2 * 256, rows = 2;
    const int lowest = -128;
    std::uniform_int_distribution<int> code(lowest, 127);
    for (uint8_t fill : {uint8_t{0xFF}, uint8_t{0x00}}) {
      std::vector<uint8_t> data(static_cast<size_t>(rows * cols / qk * tr.type_size), fill);
      for (size_t off = 0; off < data.size(); off += tr.type_size) {
        for (int f : half_fields(t)) {
          const uint16_t h = f32_to_fp16(0.75f);
          std::memcpy(data.data() + off + f, &h, 2);
        }
        if (t == GgmlType::Q6_K) std::memset(data.data() + off + 192, 0x80, 16);  // scales -128
      }
      const BlockRows w = view(t, data, rows, cols);
      for (int pattern = 0; pattern < 4; ++pattern) {
        constexpr int64_t T = 3;
        std::vector<int8_t> xq(static_cast<size_t>(T * cols));
        for (size_t i = 0; i < xq.size(); ++i)
          xq[i] = static_cast<int8_t>(pattern == 0 ? 127 : pattern == 1 ? lowest : pattern == 2 ? (i & 1 ? 127 : lowest) : code(rng));
        std::vector<float> xd(static_cast<size_t>(T * cols / 32));
        for (size_t j = 0; j < xd.size(); ++j) xd[j] = qk == 256 ? 0.01f * static_cast<float>(1 + j / 8) : 0.01f * (1 + j % 3);
        std::vector<float> vals(static_cast<size_t>(rows * cols));
        kernels::scalar_block_row_kernels().rows_to_f32(w, 0, rows, vals.data(), cols);
        for (SimdLevel l : levels()) {
          std::vector<float> y(static_cast<size_t>(T * rows));
          kernels::block_row_kernels_for(l).gemv_i8(w, xq.data(), xd.data(), T, y.data(), rows, 0, rows);
          for (int64_t tt = 0; tt < T; ++tt)
            for (int64_t r = 0; r < rows; ++r) {
              double mag = 0.0, want = 0.0;
              for (int64_t c = 0; c < cols; ++c) {
                const double p = static_cast<double>(vals[r * cols + c]) * xq[tt * cols + c] * xd[tt * (cols / 32) + c / 32];
                want += p;
                mag += std::fabs(p);
              }
              EXPECT_NEAR(y[tt * rows + r], want, 4e-5 * mag + 1e-30)
                  << ggml_type_name(t) << " bytes " << int(fill) << " pattern " << pattern << " " << simd_level_name(l)
                  << " token " << tt << " row " << r;
            }
        }
      }
    }
  }
}

}  // namespace
