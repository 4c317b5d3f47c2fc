// Exhaustive checks of the narrow float formats against an independent model of each
// format: code values come from sign/exponent/mantissa via ldexp, and rounding is the
// nearest code found by searching the resulting table, ties to the even code.
#include "base/float_formats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <vector>

#include "base/error.h"

namespace qlora {
namespace {

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }
float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

// --- the independent model of a format -------------------------------------------

struct Spec {
  const char* name;
  int exp_bits;
  int man_bits;
  int bias;
  bool finite_only;  // OCP E4M3FN: no inf, the all-ones exponent is a normal binade
  int total_bits() const { return 1 + exp_bits + man_bits; }
  uint32_t sign_bit() const { return 1u << (exp_bits + man_bits); }
};

constexpr Spec kBF16{"bf16", 8, 7, 127, false};
constexpr Spec kFP16{"fp16", 5, 10, 15, false};
constexpr Spec kE4M3{"e4m3", 4, 3, 7, true};
constexpr Spec kE5M2{"e5m2", 5, 2, 15, false};

// The value of a magnitude code read purely by the formula, with no special codes:
// used for the "one past the largest finite" code, which stands for overflow.
double formula_value(const Spec& s, uint32_t mag) {
  const int exp = static_cast<int>(mag >> s.man_bits);
  const int man = static_cast<int>(mag & ((1u << s.man_bits) - 1));
  if (exp == 0) return std::ldexp(man, 1 - s.bias - s.man_bits);
  return std::ldexp(man + (1 << s.man_bits), exp - s.bias - s.man_bits);
}

// The value a code stands for, specials included.
double ref_value(const Spec& s, uint32_t code) {
  const bool neg = (code & s.sign_bit()) != 0;
  const uint32_t mag = code & (s.sign_bit() - 1);
  const uint32_t exp = mag >> s.man_bits;
  const uint32_t man = mag & ((1u << s.man_bits) - 1);
  const uint32_t exp_all_ones = (1u << s.exp_bits) - 1;
  const uint32_t man_all_ones = (1u << s.man_bits) - 1;
  double v;
  if (s.finite_only && exp == exp_all_ones && man == man_all_ones) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (!s.finite_only && exp == exp_all_ones) {
    v = man == 0 ? std::numeric_limits<double>::infinity()
                 : std::numeric_limits<double>::quiet_NaN();
  } else {
    v = formula_value(s, mag);
  }
  return neg ? -v : v;
}

// Non-negative finite codes in increasing order plus one "overflow" entry: the code
// right after the largest finite one, valued by the formula (2^(emax+1) for IEEE-like
// formats, 480 for E4M3FN). Rounding to it means the value overflowed.
struct Table {
  std::vector<double> value;
  std::vector<uint32_t> code;
  uint32_t max_code = 0;
  uint32_t overflow_code() const { return max_code + 1; }
};

Table make_table(const Spec& s) {
  Table t;
  for (uint32_t c = 0; c < s.sign_bit(); ++c) {
    const double v = ref_value(s, c);
    if (!std::isfinite(v)) break;
    t.value.push_back(v);
    t.code.push_back(c);
    t.max_code = c;
  }
  t.value.push_back(formula_value(s, t.max_code + 1));
  t.code.push_back(t.max_code + 1);
  return t;
}

// Brute force: the code nearest |x| over the whole table, ties to the even code.
// Returns overflow_code() when that is the nearest (or |x| is beyond it).
uint32_t nearest_linear(const Table& t, double ax) {
  if (ax >= t.value.back()) return t.overflow_code();
  double best = std::numeric_limits<double>::infinity();
  uint32_t best_code = 0;
  for (size_t i = 0; i < t.value.size(); ++i) {
    const double d = std::fabs(ax - t.value[i]);
    if (d < best || (d == best && (t.code[i] & 1u) == 0)) {
      best = d;
      best_code = t.code[i];
    }
  }
  return best_code;
}

// Same answer by bisection, for the 16-bit tables where a linear scan per input is too slow.
uint32_t nearest_bisect(const Table& t, double ax) {
  if (ax >= t.value.back()) return t.overflow_code();
  const size_t hi = static_cast<size_t>(
      std::upper_bound(t.value.begin(), t.value.end(), ax) - t.value.begin());
  const size_t lo = hi - 1;  // value[0] == 0 <= ax
  if (t.value[lo] == ax) return t.code[lo];
  const double dlo = ax - t.value[lo];
  const double dhi = t.value[hi] - ax;
  if (dlo < dhi) return t.code[lo];
  if (dhi < dlo) return t.code[hi];
  return (t.code[lo] & 1u) == 0 ? t.code[lo] : t.code[hi];
}

// What a correct encoder must return for a non-NaN input.
uint32_t expected_code(const Spec& s, const Table& t, float x, bool saturate, bool linear) {
  const uint32_t sign = std::signbit(x) ? s.sign_bit() : 0u;
  const double ax = std::fabs(static_cast<double>(x));
  uint32_t mag = std::isinf(ax) ? t.overflow_code()
                                : (linear ? nearest_linear(t, ax) : nearest_bisect(t, ax));
  if (mag == t.overflow_code()) {
    // Non-saturating: the overflow code is inf (IEEE-like) or the NaN (E4M3FN).
    mag = saturate ? t.max_code : t.overflow_code();
  }
  return sign | mag;
}

// --- the functions under test, by format ----------------------------------------

struct Impl {
  const Spec* spec_ptr;
  float (*decode)(uint32_t);
  uint32_t (*encode)(float, bool saturate);
  DType dtype;
  bool has_saturate;
  const Spec& spec() const { return *spec_ptr; }
};

const Impl kImpls[] = {
    {&kBF16, [](uint32_t c) { return bf16_to_f32(static_cast<uint16_t>(c)); },
     [](float f, bool) -> uint32_t { return f32_to_bf16(f); }, DType::BF16, false},
    {&kFP16, [](uint32_t c) { return fp16_to_f32(static_cast<uint16_t>(c)); },
     [](float f, bool) -> uint32_t { return f32_to_fp16(f); }, DType::F16, false},
    {&kE4M3, [](uint32_t c) { return fp8_e4m3_to_f32(static_cast<uint8_t>(c)); },
     [](float f, bool sat) -> uint32_t { return f32_to_fp8_e4m3(f, sat); }, DType::F8_E4M3, true},
    {&kE5M2, [](uint32_t c) { return fp8_e5m2_to_f32(static_cast<uint8_t>(c)); },
     [](float f, bool sat) -> uint32_t { return f32_to_fp8_e5m2(f, sat); }, DType::F8_E5M2, true},
};

// Names the format in failure messages instead of dumping the struct's bytes.
void PrintTo(const Impl& impl, std::ostream* os) { *os << impl.spec().name; }

class FormatTest : public ::testing::TestWithParam<Impl> {};

std::string impl_name(const ::testing::TestParamInfo<Impl>& info) { return info.param.spec().name; }

// Float32 inputs that stress rounding: every code's value, the exact midpoints between
// neighbours (including max and the overflow point), one float32 ulp either side of
// each, and random mantissas under every float32 exponent (subnormals included).
std::vector<float> rounding_inputs(const Table& t, int random_per_exponent, uint32_t seed) {
  std::vector<float> in;
  auto both_signs = [&](float v) {
    in.push_back(v);
    in.push_back(-v);
  };
  const float inf = std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < t.value.size(); ++i) {
    if (i + 1 < t.value.size()) {
      const float v = static_cast<float>(t.value[i]);
      both_signs(v);
      both_signs(std::nextafter(v, inf));
      if (v > 0) both_signs(std::nextafter(v, 0.0f));
    }
    if (i > 0) {
      const double mid_d = (t.value[i - 1] + t.value[i]) / 2;
      const float mid = static_cast<float>(mid_d);
      EXPECT_EQ(static_cast<double>(mid), mid_d) << "midpoint not exact in float32";
      both_signs(mid);
      both_signs(std::nextafter(mid, inf));
      both_signs(std::nextafter(mid, 0.0f));
    }
  }
  std::mt19937 rng(seed);
  for (uint32_t e = 0; e < 255; ++e)
    for (int k = 0; k < random_per_exponent; ++k)
      in.push_back(from_bits((static_cast<uint32_t>(rng()) & 0x807FFFFFu) | (e << 23)));
  return in;
}

// --- decoding --------------------------------------------------------------------

TEST_P(FormatTest, DecodeEveryCodeMatchesFormula) {
  const Impl& f = GetParam();
  const uint32_t n = 1u << f.spec().total_bits();
  for (uint32_t c = 0; c < n; ++c) {
    const float got = f.decode(c);
    const double want = ref_value(f.spec(), c);
    const bool neg = (c & f.spec().sign_bit()) != 0;
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << f.spec().name << " code " << c;
      EXPECT_EQ(std::signbit(got), neg) << f.spec().name << " code " << c;
      continue;
    }
    ASSERT_EQ(static_cast<double>(static_cast<float>(want)), want);
    // Bitwise, so that -0 and +0 are told apart.
    EXPECT_EQ(bits(got), bits(static_cast<float>(want)))
        << f.spec().name << " code " << c << " got " << got << " want " << want;
  }
}

TEST(FloatFormats, Bf16NaNDecodingKeepsPayload) {
  // bf16 is the top half of float32: a NaN's payload must come through unchanged.
  for (uint32_t c : {0x7FC0u, 0xFFC0u, 0x7F81u, 0xFFFFu, 0x7FA5u})
    EXPECT_EQ(bits(bf16_to_f32(static_cast<uint16_t>(c))), c << 16);
}

// --- encoding ----------------------------------------------------------------------

TEST_P(FormatTest, EncodeDecodeRoundTripsEveryFiniteCode) {
  const Impl& f = GetParam();
  const uint32_t n = 1u << f.spec().total_bits();
  for (uint32_t c = 0; c < n; ++c) {
    if (!std::isfinite(ref_value(f.spec(), c))) continue;
    for (bool sat : {false, true})
      EXPECT_EQ(f.encode(f.decode(c), sat), c) << f.spec().name << " code " << c << " sat " << sat;
  }
}

TEST_P(FormatTest, EncodeRoundsToNearestEvenLikeBruteForce) {
  const Impl& f = GetParam();
  const Table t = make_table(f.spec());
  const bool small = f.spec().total_bits() == 8;
  // FP8 gets the plain linear scan; 16-bit tables use bisection (checked against the
  // linear scan in BisectAgreesWithLinearScan) since a scan per input is too slow.
  const std::vector<float> in = rounding_inputs(t, small ? 1000 : 6000, 1234);
  int failures = 0;
  for (float x : in) {
    for (bool sat : {false, true}) {
      if (sat && !f.has_saturate) continue;
      const uint32_t want = expected_code(f.spec(), t, x, sat, small);
      const uint32_t got = f.encode(x, sat);
      if (got != want && ++failures <= 20)
        ADD_FAILURE() << f.spec().name << " x=" << x << " (0x" << std::hex << bits(x)
                      << ") sat=" << sat << " got 0x" << got << " want 0x" << want;
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(FloatFormats, BisectAgreesWithLinearScan) {
  std::mt19937 rng(99);
  for (const Spec* s : {&kFP16, &kBF16}) {
    const Table t = make_table(*s);
    std::vector<float> in = rounding_inputs(t, 0, 0);
    std::vector<float> sample;
    for (int i = 0; i < 1500; ++i) sample.push_back(std::fabs(in[rng() % in.size()]));
    for (uint32_t e = 0; e < 255; e += 3)
      sample.push_back(from_bits((static_cast<uint32_t>(rng()) & 0x007FFFFFu) | (e << 23)));
    for (float x : sample)
      ASSERT_EQ(nearest_bisect(t, x), nearest_linear(t, x)) << s->name << " x=" << x;
  }
}

TEST_P(FormatTest, SignedZeros) {
  const Impl& f = GetParam();
  for (bool sat : {false, true}) {
    EXPECT_EQ(f.encode(0.0f, sat), 0u);
    EXPECT_EQ(f.encode(-0.0f, sat), f.spec().sign_bit());
  }
  EXPECT_EQ(bits(f.decode(0)), bits(0.0f));
  EXPECT_EQ(bits(f.decode(f.spec().sign_bit())), bits(-0.0f));
  // Tiny inputs, float32 subnormals included, underflow to a zero of the same sign.
  const float tiny = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(f.encode(tiny, false), 0u);
  EXPECT_EQ(f.encode(-tiny, false), f.spec().sign_bit());
}

TEST_P(FormatTest, SubnormalOutputs) {
  const Impl& f = GetParam();
  const Spec& s = f.spec();
  const int min_exp = 1 - s.bias - s.man_bits;  // the smallest subnormal is 2^min_exp
  const float smallest = std::ldexp(1.0f, min_exp);
  EXPECT_EQ(f.encode(smallest, false), 1u);
  EXPECT_EQ(f.encode(-smallest, false), s.sign_bit() | 1u);
  EXPECT_EQ(f.encode(smallest / 2, false), 0u);             // tie: 0 is even
  EXPECT_EQ(f.encode(smallest * 1.5f, false), 2u);          // tie between 1 and 2
  EXPECT_EQ(f.encode(smallest * 2.5f, false), 2u);          // tie between 2 and 3
  EXPECT_EQ(f.encode(std::nextafter(smallest / 2, 1.0f), false), 1u);
  // The largest subnormal rounds up into the smallest normal when just past halfway.
  const uint32_t largest_sub = (1u << s.man_bits) - 1;
  const float top = std::ldexp(static_cast<float>(largest_sub) + 0.5f, min_exp);
  EXPECT_EQ(f.encode(top, false), largest_sub + 1);
  EXPECT_EQ(f.decode(1), smallest);
  EXPECT_EQ(f.decode(largest_sub), std::ldexp(static_cast<float>(largest_sub), min_exp));
}

TEST_P(FormatTest, InfinityInputs) {
  const Impl& f = GetParam();
  const Table t = make_table(f.spec());
  const float inf = std::numeric_limits<float>::infinity();
  // IEEE-like formats: inf -> inf. E4M3FN has no inf: the non-saturating mode gives NaN.
  EXPECT_EQ(f.encode(inf, false), t.overflow_code());
  EXPECT_EQ(f.encode(-inf, false), f.spec().sign_bit() | t.overflow_code());
  if (f.has_saturate) {
    EXPECT_EQ(f.encode(inf, true), t.max_code);
    EXPECT_EQ(f.encode(-inf, true), f.spec().sign_bit() | t.max_code);
  }
}

TEST_P(FormatTest, NaNInputsStayNaN) {
  const Impl& f = GetParam();
  // Quiet, signalling, payload only in the low bits (which plain truncation would turn
  // into inf), both signs.
  for (uint32_t nan_bits : {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu,
                            0x7FA00000u, 0x7F80FFFFu, 0xFF802000u}) {
    const float x = from_bits(nan_bits);
    for (bool sat : {false, true}) {
      const uint32_t c = f.encode(x, sat);
      const float back = f.decode(c);
      EXPECT_TRUE(std::isnan(back)) << f.spec().name << " 0x" << std::hex << nan_bits << " -> 0x" << c;
      EXPECT_EQ(std::signbit(back), std::signbit(x)) << f.spec().name;
      EXPECT_TRUE(std::isnan(ref_value(f.spec(), c))) << f.spec().name;
    }
  }
}

// --- format-specific edge values -----------------------------------------------------

TEST(FloatFormats, MaxValuesComeFromTheTables) {
  EXPECT_EQ(fp8_e4m3_max(), 448.0f);
  EXPECT_EQ(fp8_e5m2_max(), 57344.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x7E), fp8_e4m3_max());
  EXPECT_EQ(fp8_e5m2_to_f32(0x7B), fp8_e5m2_max());
}

TEST(FloatFormats, KnownEncodings) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_fp8_e4m3(1.0f, false), 0x38);
  EXPECT_EQ(f32_to_fp8_e5m2(1.0f, false), 0x3C);
  EXPECT_EQ(f32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(3.140625f), 0x4049);
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e5m2_to_f32(0x01), std::ldexp(1.0f, -16));
}

TEST(FloatFormats, E4M3Overflow) {
  // 464 is halfway between 448 (0x7E, even) and the missing 480 (0x7F): stays 448.
  EXPECT_EQ(f32_to_fp8_e4m3(464.0f, false), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(std::nextafter(464.0f, 0.0f), false), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(std::nextafter(464.0f, 1e9f), false), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3(std::nextafter(464.0f, 1e9f), true), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(480.0f, false), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3(-1e30f, false), 0xFF);
  EXPECT_EQ(f32_to_fp8_e4m3(-1e30f, true), 0xFE);
  EXPECT_EQ(f32_to_fp8_e4m3(std::numeric_limits<float>::max(), true), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(std::numeric_limits<float>::quiet_NaN(), true), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3(-std::numeric_limits<float>::quiet_NaN(), false), 0xFF);
}

TEST(FloatFormats, E5M2Overflow) {
  // 61440 is halfway between 57344 (0x7B, odd) and 65536 (0x7C, inf): goes to inf.
  EXPECT_EQ(f32_to_fp8_e5m2(61440.0f, false), 0x7C);
  EXPECT_EQ(f32_to_fp8_e5m2(61440.0f, true), 0x7B);
  EXPECT_EQ(f32_to_fp8_e5m2(std::nextafter(61440.0f, 0.0f), false), 0x7B);
  EXPECT_EQ(f32_to_fp8_e5m2(-1e9f, false), 0xFC);
  EXPECT_EQ(f32_to_fp8_e5m2(-1e9f, true), 0xFB);
  EXPECT_TRUE(std::isinf(fp8_e5m2_to_f32(0x7C)));
  EXPECT_TRUE(std::isnan(fp8_e5m2_to_f32(f32_to_fp8_e5m2(std::nanf(""), true))));
}

TEST(FloatFormats, SixteenBitOverflow) {
  EXPECT_EQ(f32_to_fp16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_fp16(65520.0f), 0x7C00);  // tie with the (odd) max goes to inf
  EXPECT_EQ(f32_to_fp16(-1e10f), 0xFC00);
  // FLT_MAX is past the midpoint between bf16's max and 2^128.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::max()), 0xFF80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7F7F7FFFu)), 0x7F7F);
}

TEST(FloatFormats, NaNStaysQuietNaN) {
  // Payload only in the low 16 bits: truncation alone would give inf.
  EXPECT_EQ(f32_to_bf16(from_bits(0x7F800001u)), 0x7FC0);
  EXPECT_EQ(f32_to_bf16(from_bits(0xFF800001u)), 0xFFC0);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7FFFFFFFu)), 0x7FFF);  // no rounding carry into sign
  EXPECT_NE(f32_to_bf16(from_bits(0x7FA00000u)) & 0x0040, 0);  // signalling -> quiet
  EXPECT_EQ(f32_to_fp16(from_bits(0x7F800001u)) & 0x7E00, 0x7E00);
  EXPECT_EQ(f32_to_fp16(from_bits(0xFFC00000u)), 0xFE00);
}

// --- bulk conversions ------------------------------------------------------------

TEST_P(FormatTest, BulkDecodeMatchesScalar) {
  const Impl& f = GetParam();
  const size_t n = size_t{1} << f.spec().total_bits();
  const size_t width = f.spec().total_bits() / 8;
  std::vector<uint8_t> raw(n * width);
  for (size_t c = 0; c < n; ++c)
    for (size_t b = 0; b < width; ++b) raw[c * width + b] = static_cast<uint8_t>(c >> (8 * b));
  std::vector<float> out(n);
  convert_to_f32(f.dtype, raw.data(), out.data(), n);
  for (size_t c = 0; c < n; ++c)
    ASSERT_EQ(bits(out[c]), bits(f.decode(static_cast<uint32_t>(c)))) << f.spec().name << " " << c;
}

TEST_P(FormatTest, BulkEncodeMatchesScalar) {
  const Impl& f = GetParam();
  const Table t = make_table(f.spec());
  std::vector<float> in = rounding_inputs(t, 50, 7);
  for (uint32_t nan_bits : {0x7FC00000u, 0xFF800001u}) in.push_back(from_bits(nan_bits));
  in.push_back(std::numeric_limits<float>::infinity());
  in.push_back(-std::numeric_limits<float>::infinity());
  const size_t width = f.spec().total_bits() / 8;
  // Odd lengths exercise the loop tails after any vectorized body.
  for (size_t n : {in.size(), size_t{0}, size_t{1}, size_t{7}, size_t{33}}) {
    for (bool sat : {false, true}) {
      std::vector<uint8_t> out(n * width + 1, 0xAB);
      convert_from_f32(f.dtype, in.data(), out.data(), n, sat);
      EXPECT_EQ(out[n * width], 0xAB) << "wrote past the end";
      for (size_t i = 0; i < n; ++i) {
        uint32_t got = 0;
        for (size_t b = 0; b < width; ++b) got |= uint32_t{out[i * width + b]} << (8 * b);
        ASSERT_EQ(got, f.encode(in[i], sat)) << f.spec().name << " x=" << in[i] << " sat=" << sat;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, FormatTest, ::testing::ValuesIn(kImpls), impl_name);

TEST(FloatFormats, BulkF32AndF64) {
  const std::vector<float> f = {0.0f, -0.0f, 1.5f, -3.25e-40f, 3.0e38f,
                                std::numeric_limits<float>::infinity()};
  std::vector<double> d(f.size());
  convert_from_f32(DType::F64, f.data(), d.data(), f.size());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(d[i], static_cast<double>(f[i]));
  std::vector<float> back(f.size());
  convert_to_f32(DType::F64, d.data(), back.data(), d.size());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(bits(back[i]), bits(f[i]));
  // Narrowing F64 rounds to nearest.
  const double wide[] = {1.0 + std::ldexp(1.0, -24), 1.0 + 3 * std::ldexp(1.0, -24), 1e300};
  float narrow[3];
  convert_to_f32(DType::F64, wide, narrow, 3);
  EXPECT_EQ(narrow[0], 1.0f);
  EXPECT_EQ(narrow[1], 1.0f + std::ldexp(1.0f, -22));
  EXPECT_TRUE(std::isinf(narrow[2]));
  std::vector<float> copy(f.size());
  convert_to_f32(DType::F32, f.data(), copy.data(), f.size());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(bits(copy[i]), bits(f[i]));
  convert_from_f32(DType::F32, f.data(), copy.data(), f.size());
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(bits(copy[i]), bits(f[i]));
}

TEST(FloatFormats, BulkRejectsNonFloatDtypes) {
  float buf[4] = {};
  uint64_t raw[4] = {};
  for (DType t : {DType::I64, DType::I32, DType::I16, DType::I8, DType::U64, DType::U32,
                  DType::U16, DType::U8, DType::BOOL}) {
    EXPECT_THROW(convert_to_f32(t, raw, buf, 4), Error) << dtype_name(t);
    EXPECT_THROW(convert_from_f32(t, buf, raw, 4), Error) << dtype_name(t);
  }
}

}  // namespace
}  // namespace qlora
