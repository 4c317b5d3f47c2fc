// The linear kernels of every instruction set this CPU has, against the scalar definitions:
// the fused 4-bit GEMV against dequantize-then-matvec, on awkward sizes (rows and columns
// that are not multiples of anything, blocks spanning rows, odd element counts), every
// block size class, NF4 and FP4, plain and double-quantized absmax, and every compute dtype.
#include <array>
#include <bit>
#include <gtest/gtest.h>

#include "base/simd_levels.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "base/cpu_features.h"
#include "base/float_formats.h"
#include "model/linear_kernels.h"
#include "model/linear_kernels_inl.h"
#include "quant/blockwise.h"
#include "quant/codebook.h"

using namespace qlora;
using kernels::LinearKernels;
using kernels::Q4Matrix;

namespace {

std::vector<SimdLevel> levels() { return test::simd_levels_here(); }

struct Q4Data {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
  std::vector<uint8_t> absmax_q;
  std::vector<float> nested_absmax;
  std::vector<float> nested_code;
  std::vector<float> block_min;
  std::vector<uint16_t> absmax_f16, block_min_f16;
  std::vector<uint8_t> block_min_q;
  std::vector<float> block_min_d;
  Q4Matrix m;
};

// with_min: a random signed minimum per block (a GGUF Q4_1 / Q4_K weight kept as stored).
// nested_bs: the double-quantized absmax's blocks (bitsandbytes' 256; a GGUF's Q4_K / IQ4_XS
// scale codes: 8, with offset -0.0). half (not nested): the absmax and minimums held as fp16
// (a GGUF's Q4_0 / Q4_1 / IQ4_NL as stored), subnormals among them. A GGUF Q4_K's form (nested_bs
// 8, with_min): the minimums too as 6-bit codes times a float per 8 blocks, negated.
Q4Data random_q4(int64_t rows, int64_t cols, int blocksize, QuantType t, bool nested, ComputeDType rt,
                 std::mt19937& rng, bool with_min = false, int nested_bs = 256, bool half = false) {
  Q4Data d;
  const int64_t n = rows * cols;
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> pos(0.01f, 3.0f);
  d.packed.resize((n + 1) / 2);
  for (auto& b : d.packed) b = static_cast<uint8_t>(byte(rng));
  if (nested) {
    d.absmax_q.resize(blocks);
    for (auto& b : d.absmax_q) b = static_cast<uint8_t>(byte(rng));
    d.nested_absmax.resize((blocks + nested_bs - 1) / nested_bs);
    for (auto& a : d.nested_absmax) a = pos(rng);
    const auto& dyn = dynamic_map_8bit(true);
    d.nested_code.assign(dyn.begin(), dyn.end());
  } else {
    d.absmax.resize(blocks);
    for (auto& a : d.absmax) a = pos(rng);
  }
  d.m.packed = d.packed.data();
  d.m.rows = rows;
  d.m.cols = cols;
  d.m.blocksize = blocksize;
  d.m.code = codebook_4bit(t).data();
  if (nested) {
    d.m.absmax_q = d.absmax_q.data();
    d.m.nested_absmax = d.nested_absmax.data();
    d.m.nested_code = d.nested_code.data();
    d.m.nested_blocksize = nested_bs;
    d.m.offset = nested_bs == 256 ? 0.25f : -0.0f;
  } else if (half) {
    d.absmax_f16.resize(d.absmax.size());
    for (size_t b = 0; b < d.absmax.size(); ++b) d.absmax_f16[b] = b % 7 == 3 ? uint16_t{0x0123} : f32_to_fp16(d.absmax[b]);
    d.m.absmax_f16 = d.absmax_f16.data();
  } else {
    d.m.absmax = d.absmax.data();
  }
  if (with_min) {
    std::uniform_real_distribution<float> signed_min(-2.0f, 2.0f);
    d.block_min.resize(blocks);
    for (auto& v : d.block_min) v = signed_min(rng);
    if (nested && nested_bs == 8) {
      std::uniform_int_distribution<int> m6(0, 63);
      d.block_min_q.resize(blocks);
      for (auto& q : d.block_min_q) q = static_cast<uint8_t>(m6(rng));
      d.block_min_d.resize((blocks + 7) / 8);
      for (auto& v : d.block_min_d) v = pos(rng) * 0.03f;
      d.m.block_min_q = d.block_min_q.data();
      d.m.block_min_d = d.block_min_d.data();
      d.m.block_min_group = 8;
    } else if (half) {
      d.block_min_f16.resize(blocks);
      for (int64_t b = 0; b < blocks; ++b) d.block_min_f16[b] = b % 5 == 1 ? uint16_t{0x8042} : f32_to_fp16(d.block_min[b]);
      d.m.block_min_f16 = d.block_min_f16.data();
    } else {
      d.m.block_min = d.block_min.data();
    }
  }
  d.m.round_to = rt;
  return d;
}

// The forms a 4-bit weight's constants take (kForms of them), each test's loop over them:
// 0 float32 absmax; 1 bitsandbytes' double quantization; 2 float32 absmax and minimums; 3 a GGUF
// Q4_K's (6-bit scale and minimum codes times a float per 8 blocks); 4 a Q4_1's (fp16 scale and
// minimum); 5 a Q4_0's / IQ4_NL's (fp16 scale).
constexpr int kForms = 6;
Q4Data random_q4_form(int64_t rows, int64_t cols, int blocksize, QuantType t, ComputeDType rt, std::mt19937& rng,
                      int form) {
  return random_q4(rows, cols, blocksize, t, form == 1 || form == 3, rt, rng, form >= 2 && form <= 4,
                   form == 3 ? 8 : 256, form >= 4);
}

std::vector<float> random_vec(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

struct Size {
  int64_t rows, cols;
};
const Size kSizes[] = {{1, 1},     {3, 7},     {5, 33},     {17, 64},    {13, 96}, {7, 100},
                       {9, 129},   {6, 256},   {64, 576},   {33, 1000},  {2, 4097}};

}  // namespace

TEST(LinearKernels, ScalarDequantMatchesBitsandbytesReference) {
  // With float32 absmax and no rounding, the kernels' weights are exactly bitsandbytes'
  // dequantize_4bit (the quant module's reference).
  std::mt19937 rng(1);
  for (QuantType t : {QuantType::NF4, QuantType::FP4})
    for (int bs : {32, 64, 256}) {
      auto d = random_q4(11, 37, bs, t, false, ComputeDType::F32, rng);
      std::vector<float> ours(11 * 37), ref(11 * 37);
      kernels::scalar_linear_kernels().dequant_rows_q4(d.m, 0, 11, ours.data());
      dequantize_4bit_f32_ref(d.packed.data(), d.absmax.data(), 11 * 37, bs, t, ref.data());
      EXPECT_EQ(ours, ref);
    }
}

// A weight with a minimum per block: the scalar definition is code * absmax + min, the product
// and the sum rounded apart (ggml's d * q + m), then rounded to the compute dtype; with fp16
// scales and minimums (a GGUF's Q4_1 as stored) the same on their exact float32 values.
TEST(LinearKernels, ScalarDequantWithBlockMinimumsIsProductThenSum) {
  std::mt19937 rng(21);
  for (bool half : {false, true})
  for (ComputeDType rt : {ComputeDType::F32, ComputeDType::BF16}) {
    auto d = random_q4(7, 96, 32, QuantType::FP4, false, rt, rng, /*with_min=*/true, 256, half);
    std::vector<float> got(7 * 96);
    kernels::scalar_linear_kernels().dequant_rows_q4(d.m, 0, 7, got.data());
    for (int64_t i = 0; i < 7 * 96; ++i) {
      const uint8_t byte = d.packed[static_cast<size_t>(i / 2)];
      const size_t b = static_cast<size_t>(i / 32);
      const float a = half ? fp16_to_f32(d.absmax_f16[b]) : d.absmax[b];
      const float m = half ? fp16_to_f32(d.block_min_f16[b]) : d.block_min[b];
      const float prod = d.m.code[(i & 1) ? (byte & 0x0F) : (byte >> 4)] * a;
      volatile float sum = prod + m;
      const float want = rt == ComputeDType::BF16 ? bf16_to_f32(f32_to_bf16(sum)) : static_cast<float>(sum);
      ASSERT_EQ(got[static_cast<size_t>(i)], want) << i;
    }
  }
}

TEST(LinearKernels, DequantRowsIsBitExactOnEveryLevel) {
  std::mt19937 rng(2);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (const Size& s : kSizes)
      for (int bs : {32, 64, 4096})
        for (int variant = 0; variant < kForms; ++variant)
          for (ComputeDType rt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16}) {
            auto d = random_q4_form(s.rows, s.cols, bs, QuantType::NF4, rt, rng, variant);
            // Every sub-range of rows, so row starts land on odd nibbles and mid-block.
            for (int64_t r0 : {int64_t{0}, s.rows / 2, s.rows - 1}) {
              const int64_t n = (s.rows - r0) * s.cols;
              std::vector<float> a(n), b(n);
              kernels::scalar_linear_kernels().dequant_rows_q4(d.m, r0, s.rows, a.data());
              k.dequant_rows_q4(d.m, r0, s.rows, b.data());
              ASSERT_EQ(a, b) << simd_level_name(lv) << " " << s.rows << "x" << s.cols << " bs " << bs << " variant "
                              << variant << " r0 " << r0;
            }
          }
  }
}

// The bf16 GEMM's A rows decoded from 4-bit codes: every level bit for bit bf16 of the float32
// dequantized rows, at a stride wider than the rows (nothing past cols written), on every
// sub-range of rows.
// Each case of the bf16 kernels' tests: every size, block size class, plain and double-quantized
// absmax, rounded to bf16 or not; fn(size, blocksize, matrix, its float32 dequantized rows).
template <class Fn>
void for_each_bf16_case(unsigned seed, Fn&& fn) {
  std::mt19937 rng(seed);
  for (const Size& s : kSizes)
    for (int bs : {32, 64, 4096})
      for (int variant = 0; variant < kForms; ++variant)
        for (ComputeDType rt : {ComputeDType::BF16, ComputeDType::F32}) {
          auto d = random_q4_form(s.rows, s.cols, bs, QuantType::NF4, rt, rng, variant);
          std::vector<float> w(static_cast<size_t>(s.rows * s.cols));
          kernels::scalar_linear_kernels().dequant_rows_q4(d.m, 0, s.rows, w.data());
          SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " bs " << bs << " variant " << variant);
          fn(s, bs, d, w);
        }
}

TEST(LinearKernels, DequantRowsBf16IsBitExactOnEveryLevel) {
  for_each_bf16_case(13, [](const Size& s, int bs, const Q4Data& d, const std::vector<float>& w) {
    const int64_t ld = s.cols + 40;
    for (int64_t r0 : {int64_t{0}, s.rows / 2, s.rows - 1})
      for (SimdLevel lv : levels()) {
        std::vector<uint16_t> got(static_cast<size_t>((s.rows - r0) * ld), 0x5555);
        kernels::linear_kernels_for(lv).dequant_rows_q4_bf16(d.m, r0, s.rows, got.data(), ld);
        for (int64_t r = r0; r < s.rows; ++r)
          for (int64_t c = 0; c < ld; ++c) {
            const uint16_t want = c < s.cols ? f32_to_bf16(w[r * s.cols + c]) : 0x5555;
            ASSERT_EQ(got[(r - r0) * ld + c], want) << simd_level_name(lv) << " bs " << bs << " r " << r
                                                    << " c " << c;
          }
      }
  });
}

// The bf16 GEMM's panels packed from 4-bit codes: every level bit for bit the scalar
// definition, which holds bf16 of the dequantized rows at the documented positions; every
// panel of awkward shapes (odd rows, columns that are not whole chunks, a last partial panel,
// blocks spanning rows), padding past the rows included.
TEST(LinearKernels, PackQ4Bf16PanelIsBitExactOnEveryLevel) {
  for_each_bf16_case(12, [](const Size& s, int bs, const Q4Data& d, const std::vector<float>& w) {
    const int64_t Kp = (s.rows + 31) / 32 * 32 + 32;  // (one step of padding past the rows too)
    for (int64_t n0 = 0; n0 < s.cols; n0 += 32) {
      std::vector<uint16_t> ref(static_cast<size_t>(Kp / 32 * 1024), 0xAAAA);
      kernels::scalar_linear_kernels().pack_q4_bf16_panel(d.m, n0, Kp, ref.data());
      for (int64_t k = 0; k < Kp; ++k)
        for (int64_t c = 0; c < 32; ++c) {
          const uint16_t want = k < s.rows && n0 + c < s.cols ? f32_to_bf16(w[k * s.cols + n0 + c]) : 0;
          ASSERT_EQ(ref[(k / 32) * 1024 + (c / 16) * 512 + ((k % 32) / 2) * 32 + 2 * (c % 16) + k % 2], want)
              << s.rows << "x" << s.cols << " n0 " << n0 << " k " << k << " c " << c;
        }
      for (SimdLevel lv : levels()) {
        std::vector<uint16_t> got(ref.size(), 0x5555);
        kernels::linear_kernels_for(lv).pack_q4_bf16_panel(d.m, n0, Kp, got.data());
        ASSERT_EQ(got, ref) << simd_level_name(lv) << " bs " << bs << " n0 " << n0;
      }
    }
  });
}

// Integer-ramp code books (a GGUF's Q4_0: -8..7; Q4_1 / Q4_K: 0..15), which the AVX2 GEMV
// converts instead of looking up.
const std::array<float, 16> kRampQ4_0 = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};
const std::array<float, 16> kRampQ4_1 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

TEST(LinearKernels, FusedGemvMatchesDequantizeThenMatvec) {
  std::mt19937 rng(3);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (const Size& s : kSizes)
      for (int bs : {32, 64, 128, 4096})
        for (int book = 0; book < 4; ++book)  // NF4, FP4, Q4_0's ramp, Q4_1's ramp
          for (int variant = 0; variant < kForms; ++variant)
            for (ComputeDType rt : {ComputeDType::F32, ComputeDType::BF16, ComputeDType::F16}) {
              const QuantType t = book == 1 ? QuantType::FP4 : QuantType::NF4;
              auto d = random_q4_form(s.rows, s.cols, bs, t, rt, rng, variant);
              if (book >= 2) d.m.code = (book == 2 ? kRampQ4_0 : kRampQ4_1).data();
              const auto x = random_vec(s.cols, rng);
              std::vector<float> w(s.rows * s.cols);
              kernels::scalar_linear_kernels().dequant_rows_q4(d.m, 0, s.rows, w.data());
              std::vector<float> y(s.rows, -1.0f);
              // Split the rows in two calls to exercise r0 > 0.
              const int64_t mid = s.rows / 2;
              k.gemv_q4(d.m, x.data(), y.data(), 0, mid);
              k.gemv_q4(d.m, x.data(), y.data(), mid, s.rows);
              for (int64_t r = 0; r < s.rows; ++r) {
                double ref = 0, mag = 0;
                for (int64_t c = 0; c < s.cols; ++c) {
                  ref += static_cast<double>(w[r * s.cols + c]) * x[c];
                  mag += std::fabs(static_cast<double>(w[r * s.cols + c]) * x[c]);
                }
                ASSERT_NEAR(y[r], ref, 1e-5 * mag + 1e-6)
                    << simd_level_name(lv) << " " << s.rows << "x" << s.cols << " bs " << bs << " row " << r;
              }
            }
  }
}

TEST(LinearKernels, MultiTokenGemvMatchesSingleTokenGemv) {
  std::mt19937 rng(31);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (const Size& s : kSizes)
      for (int bs : {32, 64})
        for (int64_t T = 1; T <= kernels::kMaxGemvTokens; ++T) {
          auto d = random_q4_form(s.rows, s.cols, bs, QuantType::NF4, ComputeDType::F32, rng, (T + bs) % kForms);
          const auto x = random_vec(T * s.cols, rng);
          const int64_t ldy = s.rows + 3;
          std::vector<float> y(T * ldy, 7.0f), ref(T * ldy, 7.0f);
          k.gemv_q4_multi(d.m, x.data(), T, y.data(), ldy, 0, s.rows);
          for (int64_t t = 0; t < T; ++t)
            kernels::scalar_linear_kernels().gemv_q4(d.m, x.data() + t * s.cols, ref.data() + t * ldy, 0, s.rows);
          for (size_t i = 0; i < y.size(); ++i)
            ASSERT_NEAR(y[i], ref[i], 1e-4f * (1 + std::fabs(ref[i])))
                << simd_level_name(lv) << " " << s.rows << "x" << s.cols << " T " << T << " at " << i;
        }
  }
}

TEST(LinearKernels, DenseGemvMatchesReference) {
  std::mt19937 rng(4);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (const Size& s : kSizes) {
      const auto wf = random_vec(s.rows * s.cols, rng);
      const auto x = random_vec(s.cols, rng);
      std::vector<uint16_t> wb(wf.size()), wh(wf.size());
      std::vector<float> wbf(wf.size()), whf(wf.size());
      for (size_t i = 0; i < wf.size(); ++i) {
        wb[i] = f32_to_bf16(wf[i]);
        wh[i] = f32_to_fp16(wf[i]);
        wbf[i] = bf16_to_f32(wb[i]);
        whf[i] = fp16_to_f32(wh[i]);
      }
      auto check_rows = [&](const std::vector<float>& w, const std::vector<float>& y, const char* what) {
        for (int64_t r = 0; r < s.rows; ++r) {
          double ref = 0, mag = 0;
          for (int64_t c = 0; c < s.cols; ++c) {
            ref += static_cast<double>(w[r * s.cols + c]) * x[c];
            mag += std::fabs(static_cast<double>(w[r * s.cols + c]) * x[c]);
          }
          ASSERT_NEAR(y[r], ref, 1e-5 * mag + 1e-6) << simd_level_name(lv) << " " << what << " " << s.rows << "x"
                                                     << s.cols << " row " << r;
        }
      };
      std::vector<float> y(s.rows);
      k.gemv_f32(wf.data(), s.cols, x.data(), y.data(), 0, s.rows);
      check_rows(wf, y, "f32");
      k.gemv_bf16(wb.data(), s.cols, x.data(), y.data(), 0, s.rows);
      check_rows(wbf, y, "bf16");
      k.gemv_f16(wh.data(), s.cols, x.data(), y.data(), 0, s.rows);
      check_rows(whf, y, "f16");
    }
  }
}

// 8-bit rows in blocks of 32 with a float32 scale each (a GGUF's Q8_0 head): every SIMD
// level against a double-precision sum, on awkward row counts and ranges, codes at both
// ends of int8.
TEST(LinearKernels, Q8GemvMatchesReference) {
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> code(-128, 127);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (int64_t rows : {1, 3, 17, 37})
      for (int64_t cols : {32, 64, 96, 576}) {
        const int64_t nb = cols / kernels::kQ8Block;
        std::vector<int8_t> q(static_cast<size_t>(rows * cols));
        for (auto& c : q) c = static_cast<int8_t>(code(rng));
        q[0] = -128;
        q.back() = 127;
        std::vector<float> sc = random_vec(rows * nb, rng);
        const auto x = random_vec(cols, rng);
        std::vector<float> y(static_cast<size_t>(rows), -7.0f);
        const int64_t r0 = rows > 2 ? 1 : 0;  // (a range not starting at 0: y indexed by absolute row)
        k.gemv_q8(q.data(), sc.data(), cols, x.data(), y.data(), r0, rows);
        if (r0 == 1) {
          ASSERT_EQ(y[0], -7.0f) << "wrote outside [r0, r1)";
        }
        for (int64_t r = r0; r < rows; ++r) {
          double ref = 0, mag = 0;
          for (int64_t c = 0; c < cols; ++c) {
            const double v = static_cast<double>(sc[static_cast<size_t>(r * nb + c / 32)]) * q[static_cast<size_t>(r * cols + c)] * x[c];
            ref += v;
            mag += std::fabs(v);
          }
          ASSERT_NEAR(y[r], ref, 1e-5 * mag + 1e-6) << simd_level_name(lv) << " " << rows << "x" << cols << " row " << r;
        }
      }
  }
}

// The few-token 16-bit product (batched decoding's head held in bf16 / fp16 under float32
// compute): at every level, each token's row equals that level's one-token gemv_bf16 /
// gemv_f16 bit for bit, for 1..8 tokens, on row lengths with every kind of tail and a range not
// starting at 0, writing nothing outside it; the scalar one is within float32 rounding of the
// products in double.
TEST(LinearKernels, H16GemvMultiEqualsOneTokenAtATime) {
  std::mt19937 rng(23);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (bool bf16 : {true, false})
      for (int64_t rows : {1, 5, 37})
        for (int64_t cols : {1, 7, 16, 17, 31, 33, 100, 576}) {
          const std::vector<float> wf = random_vec(rows * cols, rng);
          std::vector<uint16_t> w(wf.size());
          convert_from_f32(bf16 ? DType::BF16 : DType::F16, wf.data(), w.data(), w.size());
          for (int64_t T = 1; T <= kernels::kMaxGemvTokens; ++T) {
            const auto x = random_vec(T * cols, rng);
            const int64_t ldy = rows + 3, r0 = rows > 2 ? 2 : 0;
            std::vector<float> y(static_cast<size_t>(T * ldy), -7.0f), one(static_cast<size_t>(rows));
            k.gemv_h16_multi(w.data(), bf16, cols, x.data(), T, y.data(), ldy, r0, rows);
            for (int64_t t = 0; t < T; ++t) {
              (bf16 ? k.gemv_bf16 : k.gemv_f16)(w.data(), cols, x.data() + t * cols, one.data(), r0, rows);
              for (int64_t r = 0; r < ldy; ++r) {
                const float got = y[static_cast<size_t>(t * ldy + r)];
                if (r < r0 || r >= rows) {
                  ASSERT_EQ(got, -7.0f) << simd_level_name(lv) << " wrote outside [r0, r1) at token " << t << " row " << r;
                  continue;
                }
                ASSERT_EQ(got, one[static_cast<size_t>(r)]) << simd_level_name(lv) << (bf16 ? " bf16" : " f16") << " T " << T
                                                            << " " << rows << "x" << cols << " token " << t << " row " << r;
                double ref = 0, mag = 0;
                for (int64_t c = 0; c < cols; ++c) {
                  const double wv = bf16 ? bf16_to_f32(w[static_cast<size_t>(r * cols + c)])
                                         : fp16_to_f32(w[static_cast<size_t>(r * cols + c)]);
                  ref += wv * x[static_cast<size_t>(t * cols + c)];
                  mag += std::fabs(wv * x[static_cast<size_t>(t * cols + c)]);
                }
                ASSERT_NEAR(got, ref, 1e-5 * mag + 1e-6) << simd_level_name(lv) << " " << rows << "x" << cols;
              }
            }
          }
        }
  }
}

// The few-token 8-bit product (batched decoding's head): at every level, each token's row
// equals that level's one-token gemv_q8 bit for bit, for 1..8 tokens, on awkward row counts
// and a range not starting at 0, writing nothing outside it.
TEST(LinearKernels, Q8GemvMultiEqualsOneTokenAtATime) {
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> code(-128, 127);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (int64_t rows : {1, 5, 37})
      for (int64_t cols : {32, 96, 576}) {
        const int64_t nb = cols / kernels::kQ8Block;
        std::vector<int8_t> q(static_cast<size_t>(rows * cols));
        for (auto& c : q) c = static_cast<int8_t>(code(rng));
        const std::vector<float> sc = random_vec(rows * nb, rng);
        for (int64_t T = 1; T <= kernels::kMaxGemvTokens; ++T) {
          const auto x = random_vec(T * cols, rng);
          const int64_t ldy = rows + 3, r0 = rows > 2 ? 2 : 0;
          std::vector<float> y(static_cast<size_t>(T * ldy), -7.0f), one(static_cast<size_t>(rows));
          k.gemv_q8_multi(q.data(), sc.data(), cols, x.data(), T, y.data(), ldy, r0, rows);
          for (int64_t t = 0; t < T; ++t) {
            k.gemv_q8(q.data(), sc.data(), cols, x.data() + t * cols, one.data(), r0, rows);
            for (int64_t r = 0; r < ldy; ++r) {
              const float got = y[static_cast<size_t>(t * ldy + r)];
              if (r < r0 || r >= rows)
                ASSERT_EQ(got, -7.0f) << simd_level_name(lv) << " wrote outside [r0, r1) at token " << t << " row " << r;
              else
                ASSERT_EQ(got, one[static_cast<size_t>(r)])
                    << simd_level_name(lv) << " T " << T << " " << rows << "x" << cols << " token " << t << " row " << r;
            }
          }
        }
      }
  }
}

TEST(LinearKernels, GemmRowsMatchesReference) {
  std::mt19937 rng(5);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (int64_t T : {1, 2, 3, 4, 5, 7, 13})
      for (int64_t K : {1, 3, 15, 16, 17, 64, 100})
        for (int64_t N : {1, 3, 4, 5, 16, 17}) {
          const int64_t ldx = K + 2, ldw = K + 5, ldy = N + 3;
          const auto x = random_vec(T * ldx, rng);
          const auto w = random_vec(N * ldw, rng);
          std::vector<float> y(T * ldy, 123.0f);
          k.gemm_rows(x.data(), ldx, T, w.data(), ldw, N, K, y.data(), ldy);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < ldy; ++n) {
              if (n >= N) {
                ASSERT_EQ(y[t * ldy + n], 123.0f) << "wrote outside the output";
                continue;
              }
              double ref = 0, mag = 0;
              for (int64_t kk = 0; kk < K; ++kk) {
                ref += static_cast<double>(x[t * ldx + kk]) * w[n * ldw + kk];
                mag += std::fabs(static_cast<double>(x[t * ldx + kk]) * w[n * ldw + kk]);
              }
              ASSERT_NEAR(y[t * ldy + n], ref, 1e-5 * mag + 1e-6)
                  << simd_level_name(lv) << " T " << T << " K " << K << " N " << N;
            }
        }
  }
}

TEST(LinearKernels, DotAndAxpyMatchReference) {
  std::mt19937 rng(6);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (int64_t n : {0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100}) {
      const auto a = random_vec(n + 1, rng), b = random_vec(n + 1, rng);
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        ref += double(a[i]) * b[i];
        mag += std::fabs(double(a[i]) * b[i]);
      }
      EXPECT_NEAR(k.dot(a.data(), b.data(), n), ref, 1e-5 * mag + 1e-6) << simd_level_name(lv) << " n " << n;
      std::vector<float> y = b, want = b;
      for (int64_t i = 0; i < n; ++i) want[i] = b[i] + 0.75f * a[i];
      k.axpy(0.75f, a.data(), y.data(), n);
      for (int64_t i = 0; i <= n; ++i) EXPECT_NEAR(y[i], want[i], 1e-6f) << simd_level_name(lv) << " n " << n;
    }
  }
}

TEST(LinearKernels, AttentionRowKernelsMatchScalar) {
  // Scores of `heads` queries against `count` keys and the probability-weighted sums of values,
  // with rows `ld` floats apart (a key/value head's slice of the KV cache) and the scores and
  // probabilities in rows `lds` apart: every SIMD level against the scalar definitions (dot and
  // axpy in a loop), on counts, head sizes and head counts around the kernels' steps (8 keys,
  // 8/16/32/64 floats, 3 and 6 heads per pass).
  std::mt19937 rng(41);
  for (SimdLevel lv : levels()) {
    const LinearKernels& k = kernels::linear_kernels_for(lv);
    for (int64_t heads : {1, 3, 7})
      for (int64_t count : {0, 1, 7, 8, 9, 17, 33})
        for (int64_t n : {1, 7, 8, 31, 32, 33, 64, 80, 100}) {
          const int64_t ld = n + 5, lds = count + 3;
          const auto q = random_vec(heads * n, rng), kv = random_vec(std::max<int64_t>(count, 1) * ld, rng);
          const auto p = random_vec(heads * lds, rng);
          std::vector<float> s(heads * lds, 9.0f), sref(s), o(heads * n, 9.0f), oref(o);
          k.attn_scores(q.data(), heads, kv.data(), ld, count, n, 0.125f, s.data(), lds);
          kernels::scalar_linear_kernels().attn_scores(q.data(), heads, kv.data(), ld, count, n, 0.125f, sref.data(),
                                                       lds);
          for (int64_t h = 0; h < heads; ++h)
            for (int64_t j = 0; j < lds; ++j) {  // j >= count: untouched
              double mag = 0;
              for (int64_t i = 0; j < count && i < n; ++i) mag += std::fabs(double(q[h * n + i]) * kv[j * ld + i]);
              ASSERT_NEAR(s[h * lds + j], sref[h * lds + j], 1e-6 * mag * 0.125 + 1e-7)
                  << simd_level_name(lv) << " scores heads " << heads << " count " << count << " n " << n << " h "
                  << h << " j " << j;
            }
          k.attn_weighted_sum(p.data(), lds, heads, kv.data(), ld, count, n, o.data());
          kernels::scalar_linear_kernels().attn_weighted_sum(p.data(), lds, heads, kv.data(), ld, count, n,
                                                             oref.data());
          for (int64_t h = 0; h < heads; ++h)
            for (int64_t i = 0; i < n; ++i) {
              double mag = 0;
              for (int64_t j = 0; j < count; ++j) mag += std::fabs(double(p[h * lds + j]) * kv[j * ld + i]);
              ASSERT_NEAR(o[h * n + i], oref[h * n + i], 1e-6 * mag + 1e-7)
                  << simd_level_name(lv) << " weighted sum heads " << heads << " count " << count << " n " << n
                  << " h " << h << " i " << i;
            }
        }
  }
}

TEST(LinearKernels, AttentionRowKernelsOn16BitRowsMatchScalar) {
  // attn_scores16 / attn_weighted_sum16 (a 16-bit KV cache) on every level against the scalar
  // float32 kernels run on the rows widened: the same sums up to their order.
  std::mt19937 rng(43);
  const auto& sk = kernels::scalar_linear_kernels();
  for (ComputeDType t : {ComputeDType::BF16, ComputeDType::F16})
    for (SimdLevel lv : levels()) {
      const LinearKernels& k = kernels::linear_kernels_for(lv);
      for (int64_t heads : {1, 3, 7})
        for (int64_t count : {0, 1, 9, 33})
          for (int64_t n : {7, 32, 64, 80}) {
            const int64_t ld = n + 6, lds = count + 3;
            const auto q = random_vec(heads * n, rng), kvf = random_vec(std::max<int64_t>(count, 1) * ld, rng);
            const auto p = random_vec(heads * lds, rng);
            std::vector<uint16_t> kv(kvf.size());
            convert_from_f32(to_dtype(t), kvf.data(), kv.data(), kv.size());
            std::vector<float> wide(kv.size());
            sk.widen16(t, kv.data(), wide.data(), static_cast<int64_t>(kv.size()));
            std::vector<float> s(heads * lds, 9.0f), sref(s), o(heads * n, 9.0f), oref(o);
            k.attn_scores16(t, q.data(), heads, kv.data(), ld, count, n, 0.125f, s.data(), lds);
            sk.attn_scores(q.data(), heads, wide.data(), ld, count, n, 0.125f, sref.data(), lds);
            for (int64_t h = 0; h < heads; ++h)
              for (int64_t j = 0; j < lds; ++j) {
                double mag = 0;
                for (int64_t i = 0; j < count && i < n; ++i) mag += std::fabs(double(q[h * n + i]) * wide[j * ld + i]);
                ASSERT_NEAR(s[h * lds + j], sref[h * lds + j], 1e-6 * mag * 0.125 + 1e-7)
                    << simd_level_name(lv) << " scores16 heads " << heads << " count " << count << " n " << n;
              }
            k.attn_weighted_sum16(t, p.data(), lds, heads, kv.data(), ld, count, n, o.data());
            sk.attn_weighted_sum(p.data(), lds, heads, wide.data(), ld, count, n, oref.data());
            for (int64_t h = 0; h < heads; ++h)
              for (int64_t i = 0; i < n; ++i) {
                double mag = 0;
                for (int64_t j = 0; j < count; ++j) mag += std::fabs(double(p[h * lds + j]) * wide[j * ld + i]);
                ASSERT_NEAR(o[h * n + i], oref[h * n + i], 1e-6 * mag + 1e-7)
                    << simd_level_name(lv) << " weighted sum16 heads " << heads << " count " << count << " n " << n;
              }
          }
    }
}

TEST(LinearKernels, Widen16IsExactOnEveryLevel) {
  // Every 16-bit pattern, bf16 and f16, against the scalar definition (float_formats'
  // decoders): bit for bit, except that a NaN only has to stay a NaN. An odd count and an
  // offset start exercise the tails.
  std::vector<uint16_t> all(65536 + 3);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i * 7919u);
  for (ComputeDType t : {ComputeDType::BF16, ComputeDType::F16}) {
    std::vector<float> ref(all.size());
    kernels::scalar_linear_kernels().widen16(t, all.data(), ref.data(), static_cast<int64_t>(all.size()));
    EXPECT_EQ(ref[0], 0.0f);
    for (SimdLevel lv : levels()) {
      std::vector<float> out(all.size(), -1.0f);
      kernels::linear_kernels_for(lv).widen16(t, all.data() + 1, out.data() + 1, static_cast<int64_t>(all.size()) - 1);
      EXPECT_EQ(out[0], -1.0f);
      for (size_t i = 1; i < all.size(); ++i) {
        if (std::isnan(ref[i])) {
          ASSERT_TRUE(std::isnan(out[i])) << simd_level_name(lv) << " pattern " << all[i];
        } else {
          ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(ref[i]))
              << simd_level_name(lv) << (t == ComputeDType::F16 ? " f16" : " bf16") << " pattern " << all[i];
        }
      }
    }
  }
}

// ---- 8-bit activations (opt-in decoding) ------------------------------------------------

TEST(LinearKernels, QuantizeXQ8IsBitExactOnEveryLevel) {
  std::mt19937 rng(21);
  for (int64_t n : {32, 64, 576, 1536}) {
    auto x = random_vec(n, rng);
    for (int64_t i = 32; i < std::min<int64_t>(n, 64); ++i) x[i] = 0.0f;  // an all-zero block: d = 0, q = 0
    x[0] = 3.5f;                                                            // the block's max, exactly 127
    std::vector<int8_t> q_ref(n);
    std::vector<float> d_ref(n / 32);
    kernels::scalar_linear_kernels().quantize_x_q8(x.data(), n, q_ref.data(), d_ref.data());
    EXPECT_EQ(q_ref[0], 127);
    if (n > 32) {
      EXPECT_EQ(d_ref[1], 0.0f);
      EXPECT_EQ(q_ref[40], 0);
    }
    // The definition: q = nearest-even(x / d) with d = max|x| / 127, within one step of x.
    for (int64_t i = 0; i < n; ++i) {
      const float d = d_ref[i / 32];
      ASSERT_LE(std::fabs(q_ref[i] * d - x[i]), 0.5f * d * 1.0001f + 1e-30f) << i;
    }
    for (SimdLevel lv : levels()) {
      std::vector<int8_t> q(n, 99);
      std::vector<float> d(n / 32, -1.0f);
      kernels::linear_kernels_for(lv).quantize_x_q8(x.data(), n, q.data(), d.data());
      EXPECT_EQ(q, q_ref) << simd_level_name(lv) << " n " << n;
      EXPECT_EQ(d, d_ref) << simd_level_name(lv) << " n " << n;
    }
  }
}

TEST(LinearKernels, Int8ActivationGemvMatchesScalarAndBoundsItsError) {
  // gemv_q4_i8 on every level against the scalar definition (the same integer dot products,
  // float sums in another order), and the scalar definition against the exact float GEMV
  // within the error the two roundings allow: per weight |w| <= absmax, the code rounded to
  // 1/127 of the code book's max (x absmax) and x to 1/127 of its chunk's max.
  std::mt19937 rng(22);
  const auto& scalar = kernels::scalar_linear_kernels();
  // (With minimums per block -- a GGUF Q4_1 / Q4_K weight -- the same bound holds: the
  // minimums are not rounded, and the activations' rounding is bounded through |w|.)
  // (And the integer ramps a GGUF's Q4_0 / Q4_1 / Q4_K hold, which the AVX2 kernel multiplies
  // without a lookup or sign steps for 0..15.)
  for (int book = 0; book < 4; ++book)  // NF4, FP4, Q4_0's ramp, Q4_1's ramp
    for (int bs : {32, 64, 256})
      for (int variant = 0; variant < kForms; ++variant)
        for (Size s : {Size{1, 32}, Size{5, 96}, Size{17, 576}, Size{3, 1056}, Size{7, 128}, Size{6, 1536}}) {
          const QuantType t = book == 1 ? QuantType::FP4 : QuantType::NF4;
          auto d = random_q4_form(s.rows, s.cols, bs, t, ComputeDType::F32, rng, variant);
          if (book >= 2) d.m.code = (book == 2 ? kRampQ4_0 : kRampQ4_1).data();
          const auto x = random_vec(s.cols, rng);
          std::vector<int8_t> xq(s.cols);
          std::vector<float> xd(s.cols / 32);
          scalar.quantize_x_q8(x.data(), s.cols, xq.data(), xd.data());
          std::vector<float> ref(s.rows), exact(s.rows);
          const int64_t r0 = s.rows > 2 ? 1 : 0;
          scalar.gemv_q4_i8(d.m, xq.data(), xd.data(), ref.data(), r0, s.rows);
          scalar.gemv_q4(d.m, x.data(), exact.data(), r0, s.rows);
          float cmax = 0.0f;
          for (int k = 0; k < 16; ++k) cmax = std::max(cmax, std::fabs(d.m.code[k]));
          for (int64_t r = r0; r < s.rows; ++r) {
            double bound = 0.0, mag = 0.0;
            for (int64_t c = 0; c < s.cols; ++c) {
              // |absmax|: a signed nested code book can make a random block's absmax negative
              const double a = std::fabs(d.m.block_absmax((r * s.cols + c) / bs));
              const double w = kernels::detail::q4_weight(d.m, r * s.cols + c);
              bound += (0.5 / 127.0) * (cmax * a * std::fabs(x[c]) + std::fabs(w) * 127.0 * xd[c / 32] * 1.0001);
              mag += std::fabs(w * x[c]);
            }
            ASSERT_NEAR(ref[r], exact[r], bound + 1e-5 * mag + 1e-6) << "row " << r << " " << s.rows << "x" << s.cols;
          }
          for (SimdLevel lv : levels()) {
            std::vector<float> y(s.rows, -7.0f);
            kernels::linear_kernels_for(lv).gemv_q4_i8(d.m, xq.data(), xd.data(), y.data(), r0, s.rows);
            if (r0 == 1) {
              ASSERT_EQ(y[0], -7.0f) << "wrote outside [r0, r1)";
            }
            for (int64_t r = r0; r < s.rows; ++r) {
              double mag = 0.0;
              for (int64_t c = 0; c < s.cols; ++c) {
                const int64_t b = (r * s.cols + c) / bs;
                mag += (std::fabs(d.m.block_absmax(b) * cmax) + (d.m.has_min() ? std::fabs(d.m.block_min_value(b)) : 0.0)) *
                       127.0 * xd[c / 32];
              }
              ASSERT_NEAR(y[r], ref[r], 1e-6 * mag + 1e-6) << simd_level_name(lv) << " row " << r;
            }
          }
        }
}

TEST(LinearKernels, Int8ActivationQ8GemvMatchesScalar) {
  std::mt19937 rng(23);
  std::uniform_int_distribution<int> code(-128, 127);
  const auto& scalar = kernels::scalar_linear_kernels();
  for (int64_t rows : {1, 3, 37})
    for (int64_t cols : {32, 64, 96, 576}) {
      const int64_t nb = cols / 32;
      std::vector<int8_t> q(rows * cols);
      for (auto& c : q) c = static_cast<int8_t>(code(rng));
      q[0] = -128;
      const auto sc = random_vec(rows * nb, rng), x = random_vec(cols, rng);
      std::vector<int8_t> xq(cols);
      std::vector<float> xd(nb);
      scalar.quantize_x_q8(x.data(), cols, xq.data(), xd.data());
      std::vector<float> ref(rows);
      scalar.gemv_q8_i8(q.data(), sc.data(), cols, xq.data(), xd.data(), ref.data(), 0, rows);
      for (int64_t r = 0; r < rows; ++r) {  // the definition, in float64
        double want = 0.0, mag = 0.0;
        for (int64_t c = 0; c < cols; ++c) {
          const double v = static_cast<double>(sc[r * nb + c / 32]) * xd[c / 32] * q[r * cols + c] * xq[c];
          want += v;
          mag += std::fabs(v);
        }
        ASSERT_NEAR(ref[r], want, 1e-6 * mag + 1e-6);
      }
      for (SimdLevel lv : levels()) {
        std::vector<float> y(rows);
        kernels::linear_kernels_for(lv).gemv_q8_i8(q.data(), sc.data(), cols, xq.data(), xd.data(), y.data(), 0, rows);
        for (int64_t r = 0; r < rows; ++r) {
          double mag = 0.0;
          for (int64_t c = 0; c < cols; ++c) mag += std::fabs(static_cast<double>(sc[r * nb + c / 32]) * xd[c / 32] * 128 * 127);
          ASSERT_NEAR(y[r], ref[r], 1e-6 * mag + 1e-6) << simd_level_name(lv);
        }
      }
    }
}

// The few-token int8 products (batched decoding with --int8-activations): at every level, for
// 1..8 tokens, each token's row equals that level's one-token kernel bit for bit (the VNNI ones
// decode each weight step once for all tokens), on shapes the VNNI kernel takes (rows of whole
// 64-weight steps; blocks of 32 -- two per step -- or more) and ones it hands to the AVX2
// kernel, plain and nested absmax and minimums per block, a range not starting at 0, nothing
// written outside it.
TEST(LinearKernels, Int8GemvMultiEqualsOneTokenAtATime) {
  std::mt19937 rng(31);
  const auto& scalar = kernels::scalar_linear_kernels();
  std::uniform_int_distribution<int> code(-128, 127);
  for (int bs : {32, 64, 256})
    for (int variant = 0; variant < kForms; ++variant)
      for (Size s : {Size{5, 96}, Size{17, 576}, Size{6, 1536}}) {
        auto d = random_q4_form(s.rows, s.cols, bs, QuantType::NF4, ComputeDType::F32, rng, variant);
        std::vector<int8_t> q8(static_cast<size_t>(s.rows * s.cols));
        for (auto& c : q8) c = static_cast<int8_t>(code(rng));
        const std::vector<float> q8s = random_vec(s.rows * s.cols / 32, rng);
        for (int64_t T = 1; T <= kernels::kMaxGemvTokens; ++T) {
          const auto x = random_vec(T * s.cols, rng);
          std::vector<int8_t> xq(static_cast<size_t>(T * s.cols));
          std::vector<float> xd(static_cast<size_t>(T * s.cols / 32));
          for (int64_t t = 0; t < T; ++t)
            scalar.quantize_x_q8(x.data() + t * s.cols, s.cols, xq.data() + t * s.cols, xd.data() + t * (s.cols / 32));
          const int64_t ldy = s.rows + 2, r0 = s.rows > 2 ? 1 : 0;
          for (SimdLevel lv : levels()) {
            const LinearKernels& k = kernels::linear_kernels_for(lv);
            for (bool head : {false, true}) {
              std::vector<float> y(static_cast<size_t>(T * ldy), -7.0f), one(static_cast<size_t>(s.rows));
              if (head)
                k.gemv_q8_i8_multi(q8.data(), q8s.data(), s.cols, xq.data(), xd.data(), T, y.data(), ldy, r0, s.rows);
              else
                k.gemv_q4_i8_multi(d.m, xq.data(), xd.data(), T, y.data(), ldy, r0, s.rows);
              for (int64_t t = 0; t < T; ++t) {
                const int8_t* xt = xq.data() + t * s.cols;
                const float* dt = xd.data() + t * (s.cols / 32);
                if (head)
                  k.gemv_q8_i8(q8.data(), q8s.data(), s.cols, xt, dt, one.data(), r0, s.rows);
                else
                  k.gemv_q4_i8(d.m, xt, dt, one.data(), r0, s.rows);
                for (int64_t r = 0; r < ldy; ++r) {
                  const float got = y[static_cast<size_t>(t * ldy + r)];
                  if (r < r0 || r >= s.rows)
                    ASSERT_EQ(got, -7.0f) << simd_level_name(lv) << " wrote outside [r0, r1)";
                  else
                    ASSERT_EQ(got, one[static_cast<size_t>(r)])
                        << simd_level_name(lv) << (head ? " q8" : " q4") << " bs " << bs << " variant " << variant << " "
                        << s.rows << "x" << s.cols << " T " << T << " token " << t << " row " << r;
                }
              }
            }
          }
        }
      }
}
