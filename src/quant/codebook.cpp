// The codebooks of bitsandbytes 0.50, built the way bitsandbytes builds them so that every
// float32 bit matches (tests/quant/test_quant_reference.cpp compares them with bnb's).
#include "quant/codebook.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora {
namespace {

// bitsandbytes.functional.get_4bit_type("nf4"): a hard-coded list of Python floats that
// torch.tensor rounds to float32. The literals are doubles cast to float for the same
// double -> float rounding (a float literal would round the decimal directly).
std::array<float, 16> make_nf4() {
  static constexpr double kNF4[16] = {
      -1.0,
      -0.6961928009986877,
      -0.5250730514526367,
      -0.39491748809814453,
      -0.28444138169288635,
      -0.18477343022823334,
      -0.09105003625154495,
      0.0,
      0.07958029955625534,
      0.16093020141124725,
      0.24611230194568634,
      0.33791524171829224,
      0.44070982933044434,
      0.5626170039176941,
      0.7229568362236023,
      1.0,
  };
  std::array<float, 16> c{};
  for (int i = 0; i < 16; ++i) c[i] = static_cast<float>(kNF4[i]);
  return c;
}

// get_4bit_type("fp4"): [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, ...] divided in float32
// by the largest magnitude (12). Bit 3 is the sign, but the "-0" there is the Python int
// -0 == 0, so nibble 8 decodes to +0.0 — as in the quant_map every bnb checkpoint stores
// and in bnb's AVX-512 and torch CPU kernels (only its scalar CPU fallback yields -0.0).
std::array<float, 16> make_fp4() {
  static constexpr float kMagnitudes[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
  std::array<float, 16> c{};
  for (int i = 0; i < 8; ++i) {
    c[i] = kMagnitudes[i] / 12.0f;
    c[i + 8] = i == 0 ? 0.0f : -kMagnitudes[i] / 12.0f;
  }
  return c;
}

// torch.linspace(0.1, 1, steps, dtype=float32) as torch 2.x computes it on x86 CPUs with
// AVX2 (the kernel's `start + step * idx` is compiled into a fused multiply-add): the
// first half counts up from start, the second half down from end.
std::vector<float> torch_linspace_f32(float start, float end, int steps) {
  std::vector<float> v(static_cast<size_t>(steps));
  if (steps == 1) {
    v[0] = start;
    return v;
  }
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  for (int idx = 0; idx < steps; ++idx) {
    v[static_cast<size_t>(idx)] = idx < halfway ? std::fma(step, static_cast<float>(idx), start)
                                                : std::fma(-step, static_cast<float>(steps - idx - 1), end);
  }
  return v;
}

// bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8):
// for exponent i = 0..6 the midpoints of linspace(0.1, 1, k) scaled by 10^(i-6), with
// k = 2^i + 1 (signed, mirrored to negative) or 2^(i+1) + 1 (unsigned); plus 0 and 1;
// sorted. All products are float32 (the Python scalar is rounded to float32 first).
std::array<float, 256> make_dynamic_map(bool is_signed) {
  constexpr int kMaxExponentBits = 7;
  constexpr int kTotalBits = 8;
  constexpr int kNonSignBits = kTotalBits - 1;
  std::vector<float> data;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int fraction_items =
        is_signed ? (1 << (i + kNonSignBits - kMaxExponentBits)) + 1 : (1 << (i + kNonSignBits - kMaxExponentBits + 1)) + 1;
    const std::vector<float> b = torch_linspace_f32(static_cast<float>(0.1), 1.0f, fraction_items);
    const float scale = static_cast<float>(std::pow(10.0, -(kMaxExponentBits - 1) + i));
    std::vector<float> means(b.size() - 1);
    for (size_t j = 0; j + 1 < b.size(); ++j) means[j] = (b[j] + b[j + 1]) / 2.0f;
    for (float m : means) data.push_back(scale * m);
    if (is_signed)
      for (float m : means) data.push_back(-scale * m);
  }
  // additional_items = 2^(non_sign_bits - max_exponent_bits) - 1 = 0 for the defaults.
  data.push_back(0.0f);
  data.push_back(1.0f);
  while (data.size() < 256) data.push_back(0.0f);
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy_n(data.begin(), 256, out.begin());
  return out;
}

}  // namespace

const std::array<float, 16>& codebook_4bit(QuantType t) {
  static const std::array<float, 16> nf4 = make_nf4();
  static const std::array<float, 16> fp4 = make_fp4();
  return t == QuantType::NF4 ? nf4 : fp4;
}

std::string_view quant_type_name(QuantType t) { return t == QuantType::NF4 ? "nf4" : "fp4"; }

QuantType quant_type_from_string(std::string_view s, std::string_view where) {
  std::string lower(s);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "nf4") return QuantType::NF4;
  if (lower == "fp4") return QuantType::FP4;
  fail(where, "unknown 4-bit quantization type " + excerpt(s) + " (expected nf4 or fp4)");
}

const std::array<float, 256>& dynamic_map_8bit(bool is_signed) {
  static const std::array<float, 256> signed_map = make_dynamic_map(true);
  static const std::array<float, 256> unsigned_map = make_dynamic_map(false);
  return is_signed ? signed_map : unsigned_map;
}

}  // namespace qlora
