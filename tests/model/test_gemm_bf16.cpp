// The bf16 tile GEMM (model/gemm_bf16.h): the tile driver over the emulated tile
// instructions against a float64 reference of the same bf16 products, on shapes that are no
// multiple of a tile in any dimension, both layouts, with and without accumulation and with
// leading dimensions wider than the rows; the AMX instructions and the AVX-512 BF16 dot
// products against the same reference where the CPU has them (skipped, saying so, elsewhere);
// and the public calls' choice and fallback.
#include "model/gemm_bf16.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <cstdio>
#include <random>
#include <tuple>
#include <vector>

#include "base/cpu_features.h"
#include "base/float_formats.h"
#include "model/gemm.h"
#include "model/linear_kernels.h"

using namespace qlora;
using gemm_bf16_tiles::Impl;

namespace {

float to_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

std::vector<float> random_bf16(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = to_bf16(d(g));
  return v;
}

struct Case {
  int64_t M, N, K;
};

// Y (M, N) as double sums of the bf16-rounded operands' products, plus y0 when accumulating.
std::vector<double> reference(const Case& c, const std::vector<float>& x, int64_t ldx, const std::vector<float>& w,
                              int64_t ldw, bool nt, const std::vector<float>& y0, int64_t ldy, bool accumulate,
                              std::vector<double>* abs_sum) {
  std::vector<double> y(static_cast<size_t>(c.M * c.N));
  abs_sum->assign(y.size(), 0.0);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(to_bf16(x[m * ldx + k])) *
                         static_cast<double>(to_bf16(nt ? w[n * ldw + k] : w[k * ldw + n]));
        s += p;
        a += std::fabs(p);
      }
      const size_t i = static_cast<size_t>(m * c.N + n);
      if (accumulate) s += y0[m * ldy + n];
      y[i] = s;
      (*abs_sum)[i] = a + (accumulate ? std::fabs(y0[m * ldy + n]) : 0.0);
    }
  return y;
}

// One call of the tile kernel (`impl`) against the reference: every output within float32
// summation error (K additions, each off by at most an ulp of the running sum).
void check(Impl impl, const Case& c, bool nt, bool accumulate, uint32_t seed) {
  const int64_t ldx = c.K + 3, ldy = c.N + 5;
  const int64_t ldw = nt ? c.K + 1 : c.N + 2;
  const std::vector<float> x = random_bf16(static_cast<size_t>(c.M * ldx), seed);
  const std::vector<float> w = random_bf16(static_cast<size_t>((nt ? c.N : c.K) * ldw), seed + 1);
  std::vector<float> y = random_bf16(static_cast<size_t>(c.M * ldy), seed + 2);
  const std::vector<float> y0 = y;
  std::vector<double> abs_sum;
  const std::vector<double> want = reference(c, x, ldx, w, ldw, nt, y0, ldy, accumulate, &abs_sum);
  (nt ? gemm_bf16_tiles::nt : gemm_bf16_tiles::nn)(impl, c.M, c.N, c.K, x.data(), ldx, w.data(), ldw, y.data(), ldy,
                                                     accumulate);
  const double eps = std::ldexp(1.0, -23) * static_cast<double>(c.K + 2);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      const size_t i = static_cast<size_t>(m * c.N + n);
      ASSERT_NEAR(y[m * ldy + n], want[i], eps * abs_sum[i] + 1e-30)
          << (nt ? "nt" : "nn") << " M " << c.M << " N " << c.N << " K " << c.K << " accumulate " << accumulate
          << " at (" << m << ", " << n << ")";
    }
    // Columns past N (inside the leading dimension) are never written.
    for (int64_t n = c.N; n < ldy; ++n) ASSERT_EQ(y[m * ldy + n], y0[m * ldy + n]) << "wrote past N";
  }
}

const Case kCases[] = {{1, 1, 1},   {1, 33, 70},  {15, 17, 31}, {16, 16, 32}, {17, 31, 33},
                       {32, 32, 64}, {33, 65, 97}, {40, 7, 300},  {70, 100, 5}};

TEST(GemmBf16Tiles, EmulatedMatchesReference) {
  uint32_t seed = 1;
  for (const Case& c : kCases)
    for (bool nt : {true, false})
      for (bool acc : {false, true}) check(Impl::Emulated, c, nt, acc, seed += 3);
}

// W given a panel of rows at a time (fill, called from the threads for their own panels; the
// tiles then run with W's rows as the A operand, tile_gemm_w_rows) gives the same result as W
// given whole, bit for bit: the same products summed in the same order.
void check_rows(Impl impl) {
  for (const Case& c : kCases) {
    const int64_t ldw = c.K + 1;
    const std::vector<float> x = random_bf16(static_cast<size_t>(c.M * c.K), 70);
    const std::vector<float> w = random_bf16(static_cast<size_t>(c.N * ldw), 71);
    for (bool acc : {true, false}) {
      std::vector<float> whole(static_cast<size_t>(c.M * c.N), 1.0f), rows(whole);
      std::atomic<int64_t> filled{0};
      const std::function<void(int64_t, int64_t, float*)> fill = [&](int64_t r0, int64_t r1, float* out) {
        ASSERT_LE(r1 - r0, 32) << "a panel is 32 rows";
        for (int64_t r = r0; r < r1; ++r) std::copy_n(w.data() + r * ldw, c.K, out + (r - r0) * c.K);
        filled += r1 - r0;
      };
      gemm_bf16_tiles::nt(impl, c.M, c.N, c.K, x.data(), c.K, w.data(), ldw, whole.data(), c.N, acc);
      gemm_bf16_tiles::nt_rows(impl, c.M, c.N, c.K, x.data(), c.K, fill, rows.data(), c.N, acc);
      EXPECT_EQ(rows, whole) << "M " << c.M << " N " << c.N << " K " << c.K << " accumulate " << acc;
      EXPECT_EQ(filled.load(), c.N) << "every row filled once";
    }
  }
}

TEST(GemmBf16Tiles, EmulatedRowSourceEqualsMatrix) { check_rows(Impl::Emulated); }

TEST(GemmBf16Tiles, HardwareRowSourceEqualsMatrix) {
  if (!amx_tiles_enabled()) GTEST_SKIP() << "no AMX bf16 tiles: hardware kernel not run";
  check_rows(Impl::Hardware);
}

TEST(GemmBf16Tiles, HardwareMatchesReference) {
  if (!amx_tiles_enabled()) GTEST_SKIP() << "this CPU (or QLORA_SIMD) has no AMX bf16 tiles: hardware kernel not run";
  uint32_t seed = 101;
  for (const Case& c : kCases)
    for (bool nt : {true, false})
      for (bool acc : {false, true}) check(Impl::Hardware, c, nt, acc, seed += 3);
  EXPECT_TRUE(gemm_bf16_fast()) << "the first-use check refused the AMX kernel";
}
// The same driver with each block on AVX-512 BF16 dot products (VDPBF16PS), where the CPU has
// them (AMD Zen 4, Intel Cooper Lake and later): float32 sums in the instruction's own order,
// within the same bound as the tiles.
bool avx512_bf16_here() { return simd_level() >= SimdLevel::AVX512; }

TEST(GemmBf16Tiles, Avx512Bf16MatchesReference) {
  if (!avx512_bf16_here()) GTEST_SKIP() << "this CPU (or QLORA_SIMD) has no AVX-512 BF16: dot-product kernel not run";
  uint32_t seed = 201;
  for (const Case& c : kCases)
    for (bool nt : {true, false})
      for (bool acc : {false, true}) check(Impl::Avx512Bf16, c, nt, acc, seed += 3);
  // Long reductions: many steps of 32 K values, every row pass (12 + 12 + 8) and a partial
  // last block in both M and N.
  check(Impl::Avx512Bf16, {77, 45, 1111}, true, true, 9);
  check(Impl::Avx512Bf16, {64, 96, 2048}, false, false, 10);
}

TEST(GemmBf16Tiles, Avx512Bf16RowSourceEqualsMatrix) {
  if (!avx512_bf16_here()) GTEST_SKIP() << "no AVX-512 BF16: dot-product kernel not run";
  check_rows(Impl::Avx512Bf16);
}

TEST(GemmBf16Tiles, Avx512Bf16AgreesWithTheEmulatedTiles) {
  if (!avx512_bf16_here()) GTEST_SKIP() << "no AVX-512 BF16: dot-product kernel not run";
  // The same packed operands through both: only the order of float32 sums differs.
  const Case c{37, 45, 77};
  const std::vector<float> x = random_bf16(static_cast<size_t>(c.M * c.K), 31);
  const std::vector<float> w = random_bf16(static_cast<size_t>(c.N * c.K), 32);
  std::vector<float> dot(static_cast<size_t>(c.M * c.N), 0.5f), emu(dot);
  gemm_bf16_tiles::nt(Impl::Avx512Bf16, c.M, c.N, c.K, x.data(), c.K, w.data(), c.K, dot.data(), c.N, true);
  gemm_bf16_tiles::nt(Impl::Emulated, c.M, c.N, c.K, x.data(), c.K, w.data(), c.K, emu.data(), c.N, true);
  for (size_t i = 0; i < dot.size(); ++i) ASSERT_NEAR(dot[i], emu[i], 1e-4 * c.K) << i;
}

// X split in two bf16 parts (an input gradient through a bf16 weight): float32 X, not
// rounded, is carried to 2^-17 of each value; against the float64 product of the unrounded X.
void check_split(Impl impl, const Case& c, bool accumulate, uint32_t seed) {
  const int64_t ldx = c.K + 2, ldw = c.N + 1, ldy = c.N + 3;
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(c.M * ldx));
  for (float& v : x) v = d(g);  // float32 values: most are not bf16
  const std::vector<float> w = random_bf16(static_cast<size_t>(c.K * ldw), seed + 1);
  std::vector<float> y = random_bf16(static_cast<size_t>(c.M * ldy), seed + 2);
  const std::vector<float> y0 = y;
  gemm_bf16_tiles::split_x_nn(impl, c.M, c.N, c.K, x.data(), ldx, w.data(), ldw, y.data(), ldy, accumulate);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      double s = accumulate ? y0[m * ldy + n] : 0.0, a = accumulate ? std::fabs(y0[m * ldy + n]) : 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(x[m * ldx + k]) * w[k * ldw + n];
        s += p;
        a += std::fabs(p);
      }
      const double tol = (std::ldexp(1.0, -16) + std::ldexp(1.0, -23) * static_cast<double>(2 * c.K + 2)) * a;
      ASSERT_NEAR(y[m * ldy + n], s, tol + 1e-30) << "M " << c.M << " N " << c.N << " K " << c.K << " at (" << m
                                                   << ", " << n << ")";
    }
}

TEST(GemmBf16Tiles, EmulatedSplitXCarriesFloat32Operands) {
  uint32_t seed = 300;
  for (const Case& c : kCases)
    for (bool acc : {false, true}) check_split(Impl::Emulated, c, acc, seed += 3);
}

// A finite X past bf16's largest value (which rounds to inf) is split at the largest rather
// than into inf - inf = NaN: 3e38 stays finite and close; FLT_MAX itself may end as ±inf
// (its low part rounds up by 2^-16 of it), never NaN. NaN passes through.
TEST(GemmBf16Tiles, SplitXKeepsHugeFiniteValuesFinite) {
  const float big = std::numeric_limits<float>::max();
  const float x[3] = {big, -big, 3.0e38f};
  const float w[1] = {1.0f};
  float y[3] = {};
  gemm_bf16_tiles::split_x_nn(Impl::Emulated, 3, 1, 1, x, 1, w, 1, y, 1, false);  // y_m = x_m · 1
  EXPECT_FALSE(std::isnan(y[0]));
  EXPECT_GE(y[0], 0.999f * big);
  EXPECT_LE(y[1], -0.999f * big);
  EXPECT_NEAR(y[2], 3.0e38f, 3.0e38f * 1e-5f);
  const float inf_nan[2] = {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  const float one[2] = {1.0f, 0.0f};
  float r[2] = {};
  gemm_bf16_tiles::split_x_nn(Impl::Emulated, 1, 1, 2, inf_nan, 2, one, 1, r, 1, false);
  EXPECT_TRUE(std::isnan(r[0])) << "inf times 1 plus NaN times 0";
}

TEST(GemmBf16Tiles, Avx512Bf16SplitXCarriesFloat32Operands) {
  if (!avx512_bf16_here()) GTEST_SKIP() << "no AVX-512 BF16: the dot-product split product not run";
  uint32_t seed = 500;
  for (const Case& c : kCases)
    for (bool acc : {false, true}) check_split(Impl::Avx512Bf16, c, acc, seed += 3);
}

TEST(GemmBf16Tiles, HardwareSplitXCarriesFloat32Operands) {
  if (!amx_tiles_enabled()) GTEST_SKIP() << "no AMX bf16 tiles: the hardware split product not run";
  uint32_t seed = 400;
  for (const Case& c : kCases)
    for (bool acc : {false, true}) check_split(Impl::Hardware, c, acc, seed += 3);
}

// Operands that are not bf16 values are rounded to nearest even on the way into the tiles.
TEST(GemmBf16Tiles, NonBf16OperandsAreRoundedToNearestEven) {
  // bf16's ulp at 1 is 2^-7: 1 + 2^-8 is a tie (to even: 1), 1 + 3·2^-8 too (to 1 + 2^-6),
  // 1 + 3·2^-9 is past half an ulp (to 1 + 2^-7).
  const float x[3] = {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -9)};
  const float w[3] = {1.0f, 1.0f, 1.0f};
  for (Impl impl : {Impl::Emulated, Impl::Avx512Bf16}) {
    if (impl == Impl::Avx512Bf16 && !avx512_bf16_here()) continue;
    float y = 0;
    gemm_bf16_tiles::nt(impl, 1, 1, 3, x, 3, w, 3, &y, 1, false);
    EXPECT_EQ(y, 1.0f + (1.0f + std::ldexp(1.0f, -6)) + (1.0f + std::ldexp(1.0f, -7)));
  }
}

// K = 0: Y = 0, or Y untouched when accumulating; empty M or N: nothing written.
TEST(GemmBf16Tiles, EmptyReductionAndEmptyOutputs) {
  std::vector<float> y(6, 3.0f);
  gemm_bf16_tiles::nt(Impl::Emulated, 2, 3, 0, nullptr, 1, nullptr, 1, y.data(), 3, true);
  EXPECT_EQ(y, std::vector<float>(6, 3.0f));
  gemm_bf16_tiles::nn(Impl::Emulated, 2, 3, 0, nullptr, 1, nullptr, 3, y.data(), 3, false);
  EXPECT_EQ(y, std::vector<float>(6, 0.0f));
  gemm_bf16_tiles::nt(Impl::Emulated, 0, 3, 4, nullptr, 4, nullptr, 4, y.data(), 3, false);
  gemm_bf16_tiles::nt(Impl::Emulated, 2, 0, 4, nullptr, 4, nullptr, 4, y.data(), 3, false);
  EXPECT_EQ(y, std::vector<float>(6, 0.0f)) << "an empty M or N writes nothing";
}

// The public calls: on tiles where AMX is there, else the float32 GEMM of the same values;
// either way within float32 summation error of the reference.
TEST(GemmBf16, PublicCallsMatchTheFloat32Product) {
  const Case c{45, 70, 130};
  for (bool nt : {true, false}) {
    const int64_t ldw = nt ? c.K : c.N;
    const std::vector<float> x = random_bf16(static_cast<size_t>(c.M * c.K), 9);
    const std::vector<float> w = random_bf16(static_cast<size_t>((nt ? c.N : c.K) * ldw), 10);
    std::vector<float> got(static_cast<size_t>(c.M * c.N)), want(got.size());
    (nt ? gemm_bf16_nt : gemm_bf16_nn)(c.M, c.N, c.K, x.data(), c.K, w.data(), ldw, got.data(), c.N, false);
    (nt ? sgemm_fallback::nt : sgemm_fallback::nn)(c.M, c.N, c.K, x.data(), c.K, w.data(), ldw, want.data(), c.N,
                                                   false);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4) << (nt ? "nt " : "nn ") << i;
  }
  {  // W from a row source (without tiles: slabs through the float32 GEMM)
    const std::vector<float> x = random_bf16(static_cast<size_t>(c.M * c.K), 11);
    const std::vector<float> w = random_bf16(static_cast<size_t>(c.N * c.K), 12);
    std::vector<float> got(static_cast<size_t>(c.M * c.N), 2.0f), want(got);
    gemm_bf16_nt_rows(
        c.M, c.N, c.K, x.data(), c.K,
        [&](int64_t r0, int64_t r1, float* out) { std::copy(w.begin() + r0 * c.K, w.begin() + r1 * c.K, out); },
        got.data(), c.N, true);
    sgemm_fallback::nt(c.M, c.N, c.K, x.data(), c.K, w.data(), c.K, want.data(), c.N, true);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4) << "rows " << i;
  }
  if (!amx_tiles_enabled() && !avx512_bf16_here()) {
    EXPECT_FALSE(gemm_bf16_fast());
    EXPECT_STREQ(gemm_bf16_backend_name(), sgemm_backend_name());
  } else if (!amx_tiles_enabled()) {
    EXPECT_TRUE(gemm_bf16_fast());
    EXPECT_FALSE(gemm_bf16_split_x_fast()) << "the split product does not pay on dot products";
    EXPECT_STREQ(gemm_bf16_backend_name(), "AVX-512 BF16 dot products");
  }
}

// A 4-bit weight's panels packed straight from its codes (gemm_bf16_nn_panels with
// kernels::pack_q4_bf16_panel), and its rows decoded straight to bf16 for the forward
// (gemm_bf16_nt_rows_bf16), give bit for bit the product of the dequantized float32 weight
// through the matrix path (gemm_bf16_rounded_x_nn on the engine; the split on the forced
// emulation, as on AMX): the same B panels, the same blocks. Columns that are whole 32-column
// chunks (the AVX-512 packing) and columns that are not (the scalar one), odd rows, blocks of
// 32 and 64, plain and double-quantized absmax.
TEST(GemmBf16, Q4PanelsAndRowsEqualTheDequantizedWeightsProducts) {
  struct Shape {
    int64_t M, K, N;  // dX (M, N) += dY (M, K) · W (K rows, N columns)
    int blocksize;
    bool nested;
  };
  for (const Shape sh : {Shape{37, 77, 96, 64, false}, Shape{20, 64, 45, 32, false}, Shape{64, 130, 64, 64, true},
                         Shape{9, 33, 128, 32, true}}) {
    SCOPED_TRACE(::testing::Message() << sh.M << "x" << sh.K << "x" << sh.N << " bs " << sh.blocksize << " nested "
                                      << sh.nested);
    std::mt19937 g(5);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> pos(0.01f, 3.0f);
    const int64_t n = sh.K * sh.N, blocks = (n + sh.blocksize - 1) / sh.blocksize;
    std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2)), absmax_q(static_cast<size_t>(blocks));
    for (auto& b : packed) b = static_cast<uint8_t>(byte(g));
    for (auto& b : absmax_q) b = static_cast<uint8_t>(byte(g));
    std::vector<float> absmax(static_cast<size_t>(blocks)), nested_absmax(static_cast<size_t>((blocks + 255) / 256)),
        nested_code(256);
    for (float& a : absmax) a = pos(g);
    for (float& a : nested_absmax) a = pos(g);
    for (int i = 0; i < 256; ++i) nested_code[static_cast<size_t>(i)] = (i - 127.5f) / 128.0f;
    const float nf4[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1848077f, -0.0910500f, 0.0f,
                           0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f, 0.4407098f, 0.5626170f, 0.7229568f, 1.0f};
    kernels::Q4Matrix m;
    m.packed = packed.data();
    m.rows = sh.K;
    m.cols = sh.N;
    m.blocksize = sh.blocksize;
    m.code = nf4;
    if (sh.nested) {
      m.absmax_q = absmax_q.data();
      m.nested_absmax = nested_absmax.data();
      m.nested_code = nested_code.data();
      m.offset = 0.125f;
    } else {
      m.absmax = absmax.data();
    }
    m.round_to = ComputeDType::BF16;
    std::vector<float> w(static_cast<size_t>(n));
    kernels::scalar_linear_kernels().dequant_rows_q4(m, 0, sh.K, w.data());
    std::vector<float> x(static_cast<size_t>(sh.M * sh.K));
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (float& v : x) v = d(g);  // a float32 gradient: rounded (or split) on the way in
    const kernels::LinearKernels& kern = kernels::active_linear_kernels();
    auto panels = [&](float* y) {
      gemm_bf16_nn_panels(
          sh.M, sh.N, sh.K, x.data(), sh.K, [&](int64_t n0, int64_t Kp, uint16_t* b) { kern.pack_q4_bf16_panel(m, n0, Kp, b); },
          y, sh.N, /*accumulate=*/true);
    };
    // The forward's rows decoded straight to bf16 (gemm_bf16_nt_rows_bf16 with
    // kernels::dequant_rows_q4_bf16) against the float32 rows' product: W as (K rows of N) is
    // the nt operand of a product over N, with a bf16 X (M, N).
    std::vector<float> xf(static_cast<size_t>(sh.M * sh.N));
    for (float& v : xf) v = to_bf16(d(g));
    for (bool force : {true, false}) {
      if (!force && !gemm_bf16_fast()) continue;  // (no bf16 unit: the forced emulation only)
      gemm_bf16_tiles::force_emulation_for_tests(force);
      std::vector<float> got(static_cast<size_t>(sh.M * sh.N), 0.5f), want(got);
      panels(got.data());
      (gemm_bf16_split_x_fast() ? gemm_bf16_split_x_nn : gemm_bf16_rounded_x_nn)(sh.M, sh.N, sh.K, x.data(), sh.K,
                                                                              w.data(), sh.N, want.data(), sh.N, true);
      std::vector<float> fwd(static_cast<size_t>(sh.M * sh.K), 0.25f), fwd_want(fwd);
      gemm_bf16_nt_rows_bf16(
          sh.M, sh.K, sh.N, xf.data(), sh.N,
          [&](int64_t r0, int64_t r1, uint16_t* o, int64_t ld) { kern.dequant_rows_q4_bf16(m, r0, r1, o, ld); },
          fwd.data(), sh.K, /*accumulate=*/true);
      gemm_bf16_nt_rows(
          sh.M, sh.K, sh.N, xf.data(), sh.N,
          [&](int64_t r0, int64_t r1, float* o) { std::copy(w.begin() + r0 * sh.N, w.begin() + r1 * sh.N, o); },
          fwd_want.data(), sh.K, /*accumulate=*/true);
      const auto stats = gemm_bf16_tiles::forced_stats();
      gemm_bf16_tiles::force_emulation_for_tests(false);
      EXPECT_EQ(got, want) << (force ? "forced emulation" : gemm_bf16_backend_name());
      EXPECT_EQ(fwd, fwd_want) << "rows in bf16, " << (force ? "forced emulation" : gemm_bf16_backend_name());
      if (force) {
        EXPECT_EQ(stats.inexact_operands, 0u);
      }
    }
  }
}

// pack_bf16_panel (a bf16 head's input gradient): the dispatched packing bit for bit the
// scalar one, which puts W's values at the documented positions, on awkward shapes (K odd, a
// last partial panel, a row stride wider than N, padding past K).
TEST(GemmBf16, Bf16PanelPackingIsBitExact) {
  for (const auto& [K, N] : {std::pair<int64_t, int64_t>{77, 45}, {64, 96}, {1, 3}, {130, 576}}) {
    const int64_t ldw = N + 7, Kp = (K + 31) / 32 * 32 + 32;
    std::vector<uint16_t> w(static_cast<size_t>(K * ldw));
    std::mt19937 g(3);
    for (uint16_t& v : w) v = static_cast<uint16_t>(g());
    for (int64_t n0 = 0; n0 < N; n0 += 32) {
      std::vector<uint16_t> ref(static_cast<size_t>(Kp / 32 * 1024), 0xAAAA), got(ref.size(), 0x5555);
      pack_bf16_panel_scalar(w.data(), ldw, K, N, n0, Kp, ref.data());
      pack_bf16_panel(w.data(), ldw, K, N, n0, Kp, got.data());
      ASSERT_EQ(got, ref) << K << "x" << N << " n0 " << n0;
      for (int64_t k = 0; k < Kp; ++k)
        for (int64_t c = 0; c < 32; ++c)
          ASSERT_EQ(ref[(k / 32) * 1024 + (c / 16) * 512 + ((k % 32) / 2) * 32 + 2 * (c % 16) + k % 2],
                    k < K && n0 + c < N ? w[k * ldw + n0 + c] : 0)
              << K << "x" << N << " n0 " << n0 << " k " << k << " c " << c;
    }
  }
}

}  // namespace

// The bf16 compute path's use of the tile GEMM, exercised on any CPU by forcing the emulated
// tiles: a prompt's forward and a training step of every backend family in bf16 (and llama
// with dense bf16 Linears), whose Linears hand the GEMM bf16 operands only (the promise the
// AMX packing relies on), with logits and loss within bf16 rounding of the unforced run's
// (the float32 GEMM here; the AMX tiles on AMX hosts) and LoRA gradients within 1e-4.
#include "formats/model_loader.h"
#include "lora/lora_model.h"
#include "model/backend_test_families.h"
#include "model/model.h"
#include "train/train_model.h"

namespace {

TEST(GemmBf16, Bf16ForwardAndTrainingGiveTheTilesBf16OperandsOnly) {
  std::vector<std::string> runs = test::kBackendFamilies;
  runs.push_back("llama dense");  // --quant none: the bf16 DenseWeight Linears
  for (const std::string& run : runs) {
    const bool dense = run == "llama dense";
    const std::string f = dense ? "llama" : run;
    ModelFiles files = open_model_files(test::family_fixture_dir(f));
    ModelLoadOptions o;
    o.quant.quantize = !dense;
    o.quant.type = QuantType::NF4;
    o.quant.blocksize = 64;
    o.compute_dtype = ComputeDType::BF16;
    const Model m = Model::load(files.spec, *files.tensors, o);
    const ModelSpec& s = m.spec();
    const std::vector<int> prompt = test::some_tokens(s, 24, 2);
    auto logits = [&] {
      InferenceState st(m, 32);
      std::vector<float> out(prompt.size() * static_cast<size_t>(s.vocab));
      forward(m, st, prompt, out.data(), /*all_logits=*/true);
      return out;
    };
    LoraConfig c;
    c.r = 4;
    c.alpha = 8;
    c.all_linear = true;
    // A training step; `grads` gets every LoRA gradient (dA then dB of each layer).
    auto loss = [&](std::vector<float>* grads) {
      LoraModel lm(m, c);
      test::set_test_adapter_b(lm, 31, 7, 0.03f);
      TrainWorkspace ws;
      // (16 + 10 tokens: the backward's products through the weight take the tiles from 8 on)
      std::vector<int> in1 = test::some_tokens(s, 16, 4), in2 = test::some_tokens(s, 10, 5);
      std::vector<int> t1(in1.begin() + 1, in1.end()), t2(in2.begin() + 1, in2.end());
      t1.push_back(1);
      t2.push_back(-100);
      const TrainSequenceRef batch[2] = {{in1, t1, {}}, {in2, t2, {}}};
      TrainStepOptions opt;
      LoraRng rng(3);
      const float l = forward_backward_batch(lm, ws, batch, opt, &rng);
      for (const LoraLayer& L : lm.layers()) {
        grads->insert(grads->end(), L.dA.begin(), L.dA.end());
        grads->insert(grads->end(), L.dB.begin(), L.dB.end());
      }
      return l;
    };
    const std::vector<float> want = logits();
    std::vector<float> want_grads, got_grads;
    const float want_loss = loss(&want_grads);
    gemm_bf16_tiles::force_emulation_for_tests(true);
    const std::vector<float> got = logits();
    const float got_loss = loss(&got_grads);
    const gemm_bf16_tiles::ForcedStats st = gemm_bf16_tiles::forced_stats();
    gemm_bf16_tiles::force_emulation_for_tests(false);
    EXPECT_GT(st.calls, 0u) << run << ": the bf16 products never reached the tile GEMM";
    EXPECT_EQ(st.inexact_operands, 0u) << run << ": an operand was not a bf16 value";
    float scale = 0, worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::fabs(want[i]));
      worst = std::max(worst, std::fabs(got[i] - want[i]));
    }
    EXPECT_LE(worst, 0.03f * scale) << run << ": logits";
    EXPECT_NEAR(got_loss, want_loss, 0.01f * want_loss) << run << ": training loss";
    // The gradients through the tiles (the split product) against the unforced run's: the
    // split carries the float32 gradient to 2^-17 (measured 4e-6 .. 6e-6 of the norm against
    // the float32 GEMM). Where the unforced run multiplies on AVX-512 BF16 dot products, its
    // input gradients take the gradient rounded to bf16 (2^-9 per value, as bitsandbytes
    // does), and the two differ by that (measured 0.28% .. 0.41% of the norm).
    const bool unforced_rounds = gemm_bf16_fast() && !gemm_bf16_split_x_fast();
    ASSERT_EQ(got_grads.size(), want_grads.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want_grads.size(); ++i) {
      diff += (static_cast<double>(got_grads[i]) - want_grads[i]) * (static_cast<double>(got_grads[i]) - want_grads[i]);
      norm += static_cast<double>(want_grads[i]) * want_grads[i];
    }
    std::printf("[ bf16 tiles ] %s: logits %.2g of scale, loss %.6f vs %.6f, gradients %.2g relative\n", run.c_str(),
                static_cast<double>(worst / scale), static_cast<double>(got_loss), static_cast<double>(want_loss),
                std::sqrt(diff / norm));
    EXPECT_LE(std::sqrt(diff), (unforced_rounds ? 1e-2 : 1e-4) * std::sqrt(norm)) << run << ": LoRA gradients";
  }
}

}  // namespace

#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/model_test_util.h"

namespace {

std::vector<double> metric_losses(const std::string& path) {
  std::ifstream f(path);
  std::vector<double> out;
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

// `qlora train` without --compute-dtype picks bf16 where the bf16 products run on tiles and
// says so; fp32 elsewhere. Run here both ways: as this CPU decides, and with the tiles
// emulated (QLORA_BF16_TILES=emulate), where it must train as an explicit --compute-dtype
// bf16 run does (the same numbers up to the GEMM's summation order).
TEST(GemmBf16, TrainPicksBf16WhereTheTilesAreAndSaysSo) {
  test::TempDir tmp("train_auto_dtype");
  const std::string data = tmp.path("text.txt");
  {
    std::ifstream in(test::data_dir() + "/text/tinyshakespeare.txt");
    std::string text(4000, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    test::write_file(data, text);
  }
  auto train = [&](const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> a = {"train",      "--model",   test::stories_bin(), "--tokenizer", test::stories_tok(),
                                  "--data",     data,        "--out",             out,           "--max-steps",
                                  "4",          "--seq-len", "64",                "--lora-r",    "4"};
    a.insert(a.end(), extra.begin(), extra.end());
    const test::CliResult r = test::run_cli(a);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r;
  };
  const test::CliResult here = train(tmp.path("here"), {});
  EXPECT_NE(here.err.find(gemm_bf16_fast() ? "compute dtype: bf16 (auto" : "compute dtype: fp32 (auto"),
            std::string::npos)
      << here.err;
  const test::CliResult explicit_bf16 = train(tmp.path("bf16"), {"--compute-dtype", "bf16"});
  EXPECT_EQ(explicit_bf16.err.find("compute dtype:"), std::string::npos) << "an explicit choice is not announced";
  setenv("QLORA_BF16_TILES", "emulate", 1);
  const test::CliResult emulated = train(tmp.path("emulated"), {});
  unsetenv("QLORA_BF16_TILES");
  EXPECT_NE(emulated.err.find("compute dtype: bf16 (auto: this CPU multiplies bf16 on emulated"), std::string::npos)
      << emulated.err;
  const std::vector<double> a = metric_losses(tmp.path("bf16/metrics.jsonl")),
                            b = metric_losses(tmp.path("emulated/metrics.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 5e-3 * a[i]) << "step " << i + 1;
}

}  // namespace

// The AVX2 packings against the scalar reference, bit for bit: operands with NaN (quiet and
// signalling, payload in the low bits only), ±inf, ±0, subnormals, values that round up to
// inf, on panels with edges in N and K and both layouts, and the split X.
#include "base/cpu_features.h"
#include "model/gemm_bf16_tiles.h"

namespace {

std::vector<float> awkward_values(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 3.0f);
  const uint32_t specials[] = {0x7FC00000u, 0x7F800001u, 0xFF800003u, 0x7F800000u, 0xFF800000u, 0x00000000u,
                               0x80000000u, 0x00000001u, 0x807FFFFFu, 0x7F7FFFFFu, 0x3F808000u, 0x3F818000u};
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    if (i % 7 == 3) {
      const uint32_t u = specials[(i / 7) % (sizeof specials / sizeof specials[0])];
      std::memcpy(&v[i], &u, 4);
    } else {
      v[i] = d(g);
    }
  }
  return v;
}

TEST(GemmBf16Pack, Avx2MatchesScalarBitForBit) {
  if (cpu_simd_level() < SimdLevel::AVX2) GTEST_SKIP() << "no AVX2 here";
  using namespace gemm_bf16_detail;
  for (auto [N, K] : {std::pair<int64_t, int64_t>{1, 1}, {5, 33}, {32, 32}, {40, 70}, {64, 100}, {33, 31}}) {
    const int64_t Kp = round_up(K, kK);
    for (bool nt : {true, false}) {
      const int64_t ldw = nt ? K + 3 : N + 5;
      const std::vector<float> w = awkward_values(static_cast<size_t>((nt ? N : K) * ldw), 11);
      for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
        std::vector<uint16_t> a(static_cast<size_t>(Kp / kK * kBPanelPerK), 0xAAAA), b(a.size(), 0x5555);
        pack_b_scalar(w.data(), ldw, nt, N, K, n0, Kp, a.data());
        pack_b_avx2(w.data(), ldw, nt, N, K, n0, Kp, b.data());
        ASSERT_EQ(a, b) << (nt ? "nt" : "nn") << " N " << N << " K " << K << " n0 " << n0;
      }
    }
    const int64_t M = N, Mp = round_up(M, kBlock), ldx = K + 2;
    const std::vector<float> x = awkward_values(static_cast<size_t>(M * ldx), 12);
    for (bool split : {false, true}) {
      std::vector<uint16_t> a(static_cast<size_t>(Mp * Kp), 0xAAAA), b(a.size(), 0x5555), la(a), lb(b);
      pack_a_rows_scalar(x.data(), ldx, M, K, Kp, 0, Mp, a.data(), split ? la.data() : nullptr);
      pack_a_rows_avx2(x.data(), ldx, M, K, Kp, 0, Mp, b.data(), split ? lb.data() : nullptr);
      ASSERT_EQ(a, b) << "A, M " << M << " K " << K;
      if (split) {
        ASSERT_EQ(la, lb) << "A's low part, M " << M << " K " << K;
      }
    }
  }
}

}  // namespace
