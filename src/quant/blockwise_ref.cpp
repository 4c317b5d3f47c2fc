// The scalar reference kernels: the definition of the 4-bit and 8-bit blockwise formats,
// bit-exact with what bitsandbytes 0.50.2 computes on CPU (tools/make_quant_fixtures.py
// says which bitsandbytes code path each function follows, and why).
//
// Every float operation here is written out in the order bitsandbytes performs it; do not
// "simplify" x / a into x * (1 / a) or the reverse, and keep this file free of fused
// multiply-adds except where bitsandbytes itself uses one (std::fma below).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "quant/blockwise.h"
#include "quant/blockwise_kernels.h"

namespace qlora {
namespace {

// torch.clamp(absmax, min=1e-38): the Python float rounded to float32 (a subnormal).
const float kAbsmaxFloor = static_cast<float>(1e-38);

// torch semantics for max/clamp: NaN propagates.
inline float nan_max(float a, float b) { return (std::isnan(a) || a > b) ? a : b; }
inline float torch_clamp(float v, float lo, float hi) {
  if (std::isnan(v)) return v;
  return v < lo ? lo : (v > hi ? hi : v);
}

// The 4-bit nearest-code search of backends/default/ops.py: codes sorted ascending (a
// stable sort, so FP4's two zeros keep nibble 0 before nibble 8), float32 midpoints
// (sorted[i] + sorted[i+1]) / 2, and torch.bucketize(v, mids) = the first i with
// mids[i] >= v (15 when none, NaN included). A value on a midpoint gets the lower code.
struct Search4 {
  std::array<float, 15> mid{};
  std::array<uint8_t, 16> order{};
  uint8_t zero_code = 0;  // the code of 0.0, which pads an odd element count

  explicit Search4(QuantType t) {
    const auto& code = codebook_4bit(t);
    std::array<int, 16> idx{};
    for (int i = 0; i < 16; ++i) idx[i] = i;
    // insertion sort: stable, and 16 elements
    for (int i = 1; i < 16; ++i)
      for (int j = i; j > 0 && code[idx[j]] < code[idx[j - 1]]; --j) std::swap(idx[j], idx[j - 1]);
    for (int i = 0; i < 16; ++i) order[i] = static_cast<uint8_t>(idx[i]);
    for (int i = 0; i < 15; ++i) mid[i] = (code[idx[i]] + code[idx[i + 1]]) / 2.0f;
    zero_code = encode(0.0f);
  }
  uint8_t encode(float v) const {
    int i = 0;
    while (i < 15 && !(mid[i] >= v)) ++i;
    return order[i];
  }
};

const Search4& search4(QuantType t) {
  static const Search4 nf4(QuantType::NF4), fp4(QuantType::FP4);
  return t == QuantType::NF4 ? nf4 : fp4;
}

inline uint8_t nibble_at(const uint8_t* packed, int64_t i) {
  const uint8_t b = packed[i >> 1];
  return (i & 1) ? (b & 0x0F) : (b >> 4);
}

// Emulates x86 cvttss2si: truncation, and 0x80000000 for NaN or out of int32 range.
inline int32_t cvtt_f32_i32(float f) {
  if (!(f > -2147483904.0f && f < 2147483648.0f)) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(f);
}

}  // namespace

// libbitsandbytes_cpu's 8-bit search table: entry i is the code nearest to
// (2i)/65535 - 1, found by walking the float32 midpoints (code[j] + code[j+1]) * 0.5
// upward (code256 is sorted ascending, as bitsandbytes requires).
std::vector<uint8_t> kernels::build_8bit_lut(const float* code) {
  constexpr int kLut = 65536;
  std::array<float, 255> mid{};
  for (int j = 0; j < 255; ++j) mid[j] = (code[j] + code[j + 1]) * 0.5f;
  std::vector<uint8_t> lut(kLut);
  int c = 0;
  for (int i = 0; i < kLut; ++i) {
    const float fi = static_cast<float>(i);
    const float val = (fi + fi) / 65535.0f - 1.0f;
    while (c < 255 && mid[c] < val) ++c;
    lut[static_cast<size_t>(i)] = static_cast<uint8_t>(c);
  }
  return lut;
}

void check_blocksize(int blocksize, const char* where) {
  const bool ok = blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
  check(ok, where,
        "blocksize " + std::to_string(blocksize) + " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096");
}

// bitsandbytes backends/default/ops.py quantize_4bit. Full blocks: absmax = max|x| (0 for
// an all-zero block), scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1). The partial
// last block divides instead, x / max(absmax, 1e-38), and stores the clamped absmax.
void quantize_4bit_ref(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax) {
  if (n <= 0) return;
  const Search4& s = search4(t);
  const int64_t rem = n % blocksize;
  const int64_t full = n - rem;
  auto put = [&](int64_t i, uint8_t code) {
    uint8_t& b = packed[i >> 1];
    b = (i & 1) ? static_cast<uint8_t>((b & 0xF0) | code) : static_cast<uint8_t>(code << 4);
  };
  for (int64_t b0 = 0; b0 < full; b0 += blocksize) {
    float am = 0.0f;
    for (int64_t i = b0; i < b0 + blocksize; ++i) am = nan_max(am, std::fabs(x[i]));
    absmax[b0 / blocksize] = am;
    const float scale = 1.0f / nan_max(am, kAbsmaxFloor);  // clamp(min=1e-38), then reciprocal
    for (int64_t i = b0; i < b0 + blocksize; ++i) put(i, s.encode(torch_clamp(x[i] * scale, -1.0f, 1.0f)));
  }
  if (rem) {
    float am = 0.0f;
    for (int64_t i = full; i < n; ++i) am = nan_max(am, std::fabs(x[i]));
    am = nan_max(am, kAbsmaxFloor);
    absmax[full / blocksize] = am;
    for (int64_t i = full; i < n; ++i) put(i, s.encode(torch_clamp(x[i] / am, -1.0f, 1.0f)));
  }
  if (n & 1) put(n, s.zero_code);  // torch pads the scaled tensor with 0.0
}

// out = code[nibble] * absmax in float32; bf16/fp16 round that product once (nearest-even).
void dequantize_4bit_f32_ref(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                             float* out) {
  const auto& code = codebook_4bit(t);
  for (int64_t i = 0; i < n; ++i) out[i] = code[nibble_at(packed, i)] * absmax[i / blocksize];
}

void dequantize_4bit_bf16_ref(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                              uint16_t* out) {
  const auto& code = codebook_4bit(t);
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(code[nibble_at(packed, i)] * absmax[i / blocksize]);
}

void dequantize_4bit_f16_ref(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                             uint16_t* out) {
  const auto& code = codebook_4bit(t);
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_fp16(code[nibble_at(packed, i)] * absmax[i / blocksize]);
}

// libbitsandbytes_cpu quantize_cpu (cquantize_blockwise_cpu_fp32) as 0.50.2 ships it.
// absmax = max|x| ignoring NaN; an all-zero block gets code 0 everywhere. Otherwise
// v = clamp(x * (1/absmax), -1, 1) is not matched to the nearest code directly: it picks
// entry trunc(fma(65535, (v + 1) * 0.5, 0.5)) of the 65536-entry table above. (Near 0 the
// dynamic map is denser than the table, so this is often not the nearest code — but it is
// what bitsandbytes stores.)
void quantize_8bit_blockwise_ref(const float* x, int64_t n, int blocksize, const float* code256, uint8_t* q,
                                 float* absmax) {
  if (n <= 0) return;
  const std::vector<uint8_t> lut = kernels::build_8bit_lut(code256);
  for (int64_t b0 = 0; b0 < n; b0 += blocksize) {
    const int64_t b1 = std::min<int64_t>(n, b0 + blocksize);
    float am = -std::numeric_limits<float>::infinity();
    for (int64_t i = b0; i < b1; ++i) {
      const float a = std::fabs(x[i]);
      if (a > am) am = a;  // std::max(am, a): a NaN never wins
    }
    if (!(am > 0.0f)) am = 0.0f;  // maxss(0, am)
    absmax[b0 / blocksize] = am;
    if (am == 0.0f) {
      for (int64_t i = b0; i < b1; ++i) q[i] = 0;
      continue;
    }
    const float inv = 1.0f / am;
    for (int64_t i = b0; i < b1; ++i) {
      float v = x[i] * inv;
      if (-1.0f > v)
        v = -1.0f;
      else if (v > 1.0f)
        v = 1.0f;
      const float t = (v + 1.0f) * 0.5f;
      // bnb's compiler fuses this multiply-add; for t in [0, 1] the truncated result equals
      // that of a separately rounded 65535 * t + 0.5 (checked for every float t), so fast
      // kernels may use either.
      const int32_t idx = cvtt_f32_i32(std::fma(65535.0f, t, 0.5f));
      q[i] = lut[static_cast<uint16_t>(idx)];
    }
  }
}

void dequantize_8bit_blockwise_ref(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                                   const float* code256, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = code256[q[i]] * absmax[i / blocksize];
}

}  // namespace qlora
