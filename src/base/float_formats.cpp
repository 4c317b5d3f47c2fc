#include "base/float_formats.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "base/error.h"

namespace qlora {
namespace {

constexpr uint32_t kF32AbsMask = 0x7FFFFFFFu;
constexpr uint32_t kF32Inf = 0x7F800000u;

inline uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
inline float float_of(uint32_t u) { return std::bit_cast<float>(u); }

// Branch-free choice between two bit patterns. Plain ?: on values that came from float
// arithmetic gets turned back into branches (GCC won't speculate a float op that might
// trap), which stops the bulk loops from vectorizing; a mask keeps them straight-line.
inline uint32_t pick(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}

// --- bfloat16 -------------------------------------------------------------------
// bf16 is the top half of a float32, so decoding is a shift and encoding is a
// rounded truncation. Both are branch-free so the bulk loops vectorize.

inline float bf16_decode(uint16_t h) { return float_of(uint32_t{h} << 16); }

inline uint16_t bf16_encode(float f) {
  const uint32_t x = bits_of(f);
  // Adding 0x7FFF (+1 when the kept LSB is odd) rounds to nearest even; a carry out
  // of the mantissa bumps the exponent, and past the largest finite value lands on inf.
  const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
  // A NaN whose payload lives only in the low 16 bits would truncate to inf; keeping
  // sign and high payload and setting the quiet bit matches AVX512-BF16 hardware.
  const uint32_t quiet_nan = (x >> 16) | 0x0040u;
  return static_cast<uint16_t>((x & kF32AbsMask) > kF32Inf ? quiet_nan : rounded);
}

// --- float16 --------------------------------------------------------------------
// Branch-free bit manipulation (after F. Giesen's half<->float routines) rather than
// F16C, so the library stays baseline x86-64 and the loops auto-vectorize.

inline float fp16_decode(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t a = uint32_t{h & 0x7FFFu} << 13;  // exponent+mantissa in f32 position
  const uint32_t exp = a & 0x0F800000u;
  // Rebias 15 -> 127. Inf/NaN need the f32 exponent all ones, i.e. a further 128-16.
  const uint32_t normal = a + ((127u - 15u) << 23);
  const uint32_t special = normal + ((128u - 16u) << 23);
  // Subnormal: give it an implicit 1 at 2^-14, then subtract 2^-14 exactly in float.
  const uint32_t subnormal =
      bits_of(float_of(a + (113u << 23)) - float_of(113u << 23));
  const uint32_t mag = pick(exp == 0x0F800000u, special, pick(exp == 0, subnormal, normal));
  return float_of(sign | mag);
}

inline uint16_t fp16_encode(float f) {
  const uint32_t x = bits_of(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & kF32AbsMask;
  // Normal results: rebias 127 -> 15 and round the 13 dropped bits to nearest even
  // (unsigned wrap-around is fine: this candidate is only used when a is large enough).
  const uint32_t normal = (a + ((15u - 127u) << 23) + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
  // Subnormal results: adding 0.5 aligns the 10 kept bits at the bottom of the float32
  // mantissa, and the FPU's own round-to-nearest-even does the rounding (this assumes
  // the default rounding mode; FTZ/DAZ don't matter, the sum is always normal).
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t subnormal = bits_of(float_of(a) + float_of(kDenormMagic)) - kDenormMagic;
  // NaN keeps sign and high payload bits and is made quiet, as F16C does.
  const uint32_t special = a > kF32Inf ? (0x7E00u | ((a >> 13) & 0x01FFu)) : 0x7C00u;
  // 0x47800000 is 2^16: everything from there up is inf (or NaN); values in
  // [65520, 65536) round up into the inf code through the normal path.
  const uint32_t mag = pick(a >= 0x47800000u, special, pick(a < 0x38800000u, subnormal, normal));
  return static_cast<uint16_t>(sign | mag);
}

// --- FP8 ------------------------------------------------------------------------

// Rounds a finite non-negative float32 (its bits, `a`) to nearest-even in a format with
// `M` mantissa bits and exponent bias `Bias`, pretending the exponent range has no top.
// Returns the magnitude code; a code past the format's largest finite one means overflow,
// which the caller maps to NaN, inf or max depending on format and mode.
template <int M, int Bias>
uint32_t round_magnitude(uint32_t a) {
  const int exp32 = static_cast<int>(a >> 23);
  uint32_t sig = a & 0x007FFFFFu;
  int e = -126;  // float32 subnormals share the smallest normal exponent
  if (exp32 != 0) {
    sig |= 0x00800000u;
    e = exp32 - 127;
  }
  const int te = e + Bias;  // biased exponent in the target format
  // Normal targets keep M bits after the implicit one; subnormal targets (te < 1)
  // shift further right, one bit per binade below the smallest normal.
  const int shift = 23 - M + (te < 1 ? 1 - te : 0);
  // The implicit one lands at bit M of `q` and adds exactly one exponent step to the
  // base, which is why the base uses te - 1.
  const uint32_t base = te > 1 ? static_cast<uint32_t>(te - 1) << M : 0u;
  if (shift > 24) return 0;  // below half the smallest subnormal: sig < 2^24 <= half
  uint32_t q = sig >> shift;
  const uint32_t rem = sig & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  // base is a multiple of 2^M, so q's LSB is the code's LSB: "even" is well defined.
  // A carry out of the mantissa rolls into the exponent field, as it should.
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return base + q;
}

// E4M3FN: S.1111.111 is the only NaN, so S.1111.110 is the largest finite code.
constexpr uint8_t kE4M3NaN = 0x7F;
constexpr uint8_t kE4M3MaxCode = 0x7E;
// E5M2 is IEEE-like: S.11111.00 is inf, so S.11110.11 is the largest finite code.
constexpr uint8_t kE5M2Inf = 0x7C;
constexpr uint8_t kE5M2NaN = 0x7F;  // the quiet NaN torch produces
constexpr uint8_t kE5M2MaxCode = 0x7B;

inline float fp8_e4m3_decode(uint8_t v) {
  const uint32_t sign = uint32_t{v & 0x80u} << 24;
  const uint32_t mag = v & 0x7Fu;
  if (mag == kE4M3NaN) return float_of(sign | 0x7FC00000u);
  const uint32_t exp = mag >> 3;
  const uint32_t man = mag & 0x7u;
  if (exp == 0) {
    // Subnormals are man * 2^(1 - 7 - 3); the product is exact in float.
    const float v_abs = static_cast<float>(man) * float_of((127u - 9u) << 23);
    return float_of(sign | bits_of(v_abs));
  }
  return float_of(sign | ((exp - 7u + 127u) << 23) | (man << 20));
}

inline uint8_t fp8_e4m3_encode(float f, bool saturate) {
  const uint32_t x = bits_of(f);
  const uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80u);
  const uint32_t a = x & kF32AbsMask;
  if (a > kF32Inf) return sign | kE4M3NaN;
  // No infinity code exists, so inf is an overflow like any other.
  uint32_t code = a == kF32Inf ? kE4M3NaN : round_magnitude<3, 7>(a);
  if (code > kE4M3MaxCode) code = saturate ? kE4M3MaxCode : kE4M3NaN;
  return static_cast<uint8_t>(sign | code);
}

// E5M2 has the exact layout of float16's top byte (1-5-2 vs 1-5-10, same bias).
inline float fp8_e5m2_decode(uint8_t v) { return fp16_decode(static_cast<uint16_t>(v << 8)); }

inline uint8_t fp8_e5m2_encode(float f, bool saturate) {
  const uint32_t x = bits_of(f);
  const uint8_t sign = static_cast<uint8_t>((x >> 24) & 0x80u);
  const uint32_t a = x & kF32AbsMask;
  if (a > kF32Inf) return sign | kE5M2NaN;
  // Rounding through float16 first would double-round, so round directly.
  uint32_t code = a == kF32Inf ? kE5M2Inf : round_magnitude<2, 15>(a);
  if (code > kE5M2MaxCode) code = saturate ? kE5M2MaxCode : kE5M2Inf;
  return static_cast<uint8_t>(sign | code);
}

// Every FP8 code decoded once; bulk decoding is then a table lookup.
template <float (*Decode)(uint8_t)>
const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = Decode(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

template <float (*Decode)(uint8_t)>
float max_finite() {
  float m = 0.0f;
  for (float v : fp8_table<Decode>())
    if (std::isfinite(v) && v > m) m = v;
  return m;
}

[[noreturn]] void not_a_float(DType t) {
  fail("float conversion", "dtype " + std::string(dtype_name(t)) + " is not a float type");
}

}  // namespace

float bf16_to_f32(uint16_t h) { return bf16_decode(h); }
uint16_t f32_to_bf16(float f) { return bf16_encode(f); }
float fp16_to_f32(uint16_t h) { return fp16_decode(h); }
uint16_t f32_to_fp16(float f) { return fp16_encode(f); }
float fp8_e4m3_to_f32(uint8_t v) { return fp8_e4m3_decode(v); }
uint8_t f32_to_fp8_e4m3(float f, bool saturate) { return fp8_e4m3_encode(f, saturate); }
float fp8_e5m2_to_f32(uint8_t v) { return fp8_e5m2_decode(v); }
uint8_t f32_to_fp8_e5m2(float f, bool saturate) { return fp8_e5m2_encode(f, saturate); }

float fp8_e4m3_max() {
  static const float m = max_finite<fp8_e4m3_decode>();
  return m;
}
float fp8_e5m2_max() {
  static const float m = max_finite<fp8_e5m2_decode>();
  return m;
}

void convert_to_f32(DType src, const void* in, float* out, size_t n) {
  switch (src) {
    case DType::F64: {
      const auto* p = static_cast<const double*>(in);
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      return;
    }
    case DType::F32:
      if (n) std::memmove(out, in, n * sizeof(float));
      return;
    case DType::F16: {
      const auto* p = static_cast<const uint16_t*>(in);
      for (size_t i = 0; i < n; ++i) out[i] = fp16_decode(p[i]);
      return;
    }
    case DType::BF16: {
      const auto* p = static_cast<const uint16_t*>(in);
      for (size_t i = 0; i < n; ++i) out[i] = bf16_decode(p[i]);
      return;
    }
    case DType::F8_E4M3: {
      const auto& t = fp8_table<fp8_e4m3_decode>();
      const auto* p = static_cast<const uint8_t*>(in);
      for (size_t i = 0; i < n; ++i) out[i] = t[p[i]];
      return;
    }
    case DType::F8_E5M2: {
      const auto& t = fp8_table<fp8_e5m2_decode>();
      const auto* p = static_cast<const uint8_t*>(in);
      for (size_t i = 0; i < n; ++i) out[i] = t[p[i]];
      return;
    }
    default:
      not_a_float(src);
  }
}

void convert_from_f32(DType dst, const float* in, void* out, size_t n, bool saturate) {
  switch (dst) {
    case DType::F64: {
      auto* p = static_cast<double*>(out);
      for (size_t i = 0; i < n; ++i) p[i] = in[i];
      return;
    }
    case DType::F32:
      if (n) std::memmove(out, in, n * sizeof(float));
      return;
    case DType::F16: {
      auto* p = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < n; ++i) p[i] = fp16_encode(in[i]);
      return;
    }
    case DType::BF16: {
      auto* p = static_cast<uint16_t*>(out);
      for (size_t i = 0; i < n; ++i) p[i] = bf16_encode(in[i]);
      return;
    }
    case DType::F8_E4M3: {
      auto* p = static_cast<uint8_t*>(out);
      for (size_t i = 0; i < n; ++i) p[i] = fp8_e4m3_encode(in[i], saturate);
      return;
    }
    case DType::F8_E5M2: {
      auto* p = static_cast<uint8_t*>(out);
      for (size_t i = 0; i < n; ++i) p[i] = fp8_e5m2_encode(in[i], saturate);
      return;
    }
    default:
      not_a_float(dst);
  }
}

}  // namespace qlora
