// MXFP4 decoding (quant/mxfp4.h) on hand-made bytes: the nibble order, the sign codes and
// the scale's full range (the whole-model check against transformers' dequantizer is the
// gpt_oss fixture's mxfp4/, test_gpt_oss.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "formats/ggml_types.h"
#include "quant/mxfp4.h"

using namespace qlora;

TEST(Mxfp4, DecodesLowNibbleFirstTimesThePowerOfTwo) {
  std::vector<uint8_t> blocks(16, 0);
  blocks[0] = 0x21;  // code 1 (0.5) then code 2 (1.0)
  blocks[1] = 0xF8;  // code 8 (-0.0) then code 15 (-6.0)
  blocks[15] = 0x7C;  // code 12 (-2.0) then code 7 (6.0)
  const uint8_t scale = 128;  // x 2
  std::vector<float> out(32, 1.0f);
  mxfp4_decode_rows(blocks.data(), &scale, 1, 1, out.data());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_TRUE(std::signbit(out[2]));
  EXPECT_EQ(out[3], -12.0f);
  EXPECT_EQ(out[30], -4.0f);
  EXPECT_EQ(out[31], 12.0f);
  for (int i = 4; i < 30; ++i) EXPECT_EQ(out[i], 0.0f) << i;
}

TEST(Mxfp4, EveryCodeAtEveryScaleIsExact) {
  // rows x groups awkward (3 x 2), every code in every byte position, scales from 2^-127 to 2^127
  for (int sc : {0, 1, 100, 126, 127, 128, 200, 252}) {
    std::vector<uint8_t> blocks(3 * 2 * 16), scales(3 * 2, static_cast<uint8_t>(sc));
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<uint8_t>((i * 37) & 0xFF);
    std::vector<float> out(3 * 2 * 32);
    EXPECT_EQ(mxfp4_decode_rows(blocks.data(), scales.data(), 3, 2, out.data()), 0);
    for (size_t i = 0; i < blocks.size(); ++i)
      for (int half = 0; half < 2; ++half) {
        const int code = half ? blocks[i] >> 4 : blocks[i] & 0x0F;
        const double want = static_cast<double>(kFp4Values[code]) * std::pow(2.0, sc - 127);
        EXPECT_EQ(static_cast<double>(out[2 * i + static_cast<size_t>(half)]), want) << "scale " << sc << " byte " << i;
      }
  }
}

// Scales from 2^126 on overflow float32 for the larger codes: counted, for the reader to refuse.
TEST(Mxfp4, OverflowingScalesAreCounted) {
  std::vector<uint8_t> blocks(16, 0x77);  // 6.0 everywhere
  const uint8_t scale = 254;
  std::vector<float> out(32);
  EXPECT_EQ(mxfp4_decode_rows(blocks.data(), &scale, 1, 1, out.data()), 32);
}

// llama.cpp's MXFP4 blocks (ggml type 39, 17 bytes): the E8M0 byte first, then the codes with
// the low nibbles the first 16 values and the high nibbles the last 16 (not interleaved as in
// the Hugging Face files); the same numbers. (Whole GGUFs against gguf-py's dequantizer and
// llama.cpp: test_gpt_oss.cpp.)
TEST(Mxfp4, GgmlBlocksSplitTheNibbles) {
  std::vector<uint8_t> block(17, 0);
  block[0] = 128;   // x 2
  block[1] = 0x21;  // value 0: code 1 (0.5); value 16: code 2 (1.0)
  block[16] = 0xF9;  // value 15: code 9 (-0.5); value 31: code 15 (-6.0)
  std::vector<float> out(32, 7.0f);
  dequantize_row_ref(GgmlType::MXFP4, block.data(), out.data(), 32);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[16], 2.0f);
  EXPECT_EQ(out[15], -1.0f);
  EXPECT_EQ(out[31], -12.0f);
  for (int i : {1, 5, 14, 17, 30}) EXPECT_EQ(out[i], 0.0f) << i;
  EXPECT_TRUE(ggml_traits(GgmlType::MXFP4).can_dequantize);
}
