#include "formats/ggml_types.h"

#include "formats/ggml_iq_grids.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"

// Bit-exactness with the references (ggml's scalar code, gguf-py's numpy) needs every
// a*b + c rounded twice, never fused: GCC in ISO C++ mode does not contract; tell clang.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

namespace qlora {

static_assert(std::endian::native == std::endian::little, "GGUF data is little-endian; big-endian hosts are not supported");

namespace {

constexpr int64_t QK_K = kQK_K;

struct TypeRow {
  uint32_t id;
  GgmlTypeTraits traits;
};

// ggml's type_traits table (ggml.c): name, block size, bytes per block.
constexpr std::array<TypeRow, 35> kTypes{{
    {0, {"F32", 1, 4, true}},
    {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},
    {3, {"Q4_1", 32, 20, true}},
    {6, {"Q5_0", 32, 22, true}},
    {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},
    {9, {"Q8_1", 32, 36, false}},
    {10, {"Q2_K", 256, 84, true}},
    {11, {"Q3_K", 256, 110, true}},
    {12, {"Q4_K", 256, 144, true}},
    {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},
    {15, {"Q8_K", 256, 292, false}},
    {16, {"IQ2_XXS", 256, 66, true}},
    {17, {"IQ2_XS", 256, 74, true}},
    {18, {"IQ3_XXS", 256, 98, true}},
    {19, {"IQ1_S", 256, 50, true}},
    {20, {"IQ4_NL", 32, 18, true}},
    {21, {"IQ3_S", 256, 110, true}},
    {22, {"IQ2_S", 256, 82, true}},
    {23, {"IQ4_XS", 256, 136, true}},
    {24, {"I8", 1, 1, true}},
    {25, {"I16", 1, 2, true}},
    {26, {"I32", 1, 4, true}},
    {27, {"I64", 1, 8, true}},
    {28, {"F64", 1, 8, true}},
    {29, {"IQ1_M", 256, 56, true}},
    {30, {"BF16", 1, 2, true}},
    {34, {"TQ1_0", 256, 54, true}},
    {35, {"TQ2_0", 256, 66, true}},
    {39, {"MXFP4", 32, 17, true}},
    {40, {"NVFP4", 64, 36, true}},
    {41, {"Q1_0", 128, 18, true}},
    {42, {"Q2_0", 64, 18, true}},
}};

const TypeRow* find_row(uint32_t id) {
  for (const auto& r : kTypes)
    if (r.id == id) return &r;
  return nullptr;
}

inline float h2f(uint16_t h) { return fp16_to_f32(h); }

template <class Block>
inline Block load_block(const uint8_t* p) {
  Block b;
  std::memcpy(&b, p, sizeof(Block));
  return b;
}

// ---- scalar references (one block each; llama.cpp ggml-quants.c) ------------------

void deq_q4_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ4_0>(p);
  const float d = h2f(b.d);
  for (int j = 0; j < kQK4_0 / 2; ++j) {
    const int x0 = (b.qs[j] & 0x0F) - 8;
    const int x1 = (b.qs[j] >> 4) - 8;
    y[j] = static_cast<float>(x0) * d;
    y[j + kQK4_0 / 2] = static_cast<float>(x1) * d;
  }
}

void deq_q4_1(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ4_1>(p);
  const float d = h2f(b.d), m = h2f(b.m);
  for (int j = 0; j < kQK4_1 / 2; ++j) {
    const int x0 = b.qs[j] & 0x0F;
    const int x1 = b.qs[j] >> 4;
    y[j] = static_cast<float>(x0) * d + m;
    y[j + kQK4_1 / 2] = static_cast<float>(x1) * d + m;
  }
}

void deq_q5_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ5_0>(p);
  const float d = h2f(b.d);
  uint32_t qh;
  std::memcpy(&qh, b.qh, sizeof qh);
  for (int j = 0; j < kQK5_0 / 2; ++j) {
    const uint8_t xh0 = static_cast<uint8_t>(((qh >> (j + 0)) << 4) & 0x10);
    const uint8_t xh1 = static_cast<uint8_t>((qh >> (j + 12)) & 0x10);
    const int x0 = ((b.qs[j] & 0x0F) | xh0) - 16;
    const int x1 = ((b.qs[j] >> 4) | xh1) - 16;
    y[j] = static_cast<float>(x0) * d;
    y[j + kQK5_0 / 2] = static_cast<float>(x1) * d;
  }
}

void deq_q5_1(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ5_1>(p);
  const float d = h2f(b.d), m = h2f(b.m);
  uint32_t qh;
  std::memcpy(&qh, b.qh, sizeof qh);
  for (int j = 0; j < kQK5_1 / 2; ++j) {
    const uint8_t xh0 = static_cast<uint8_t>(((qh >> (j + 0)) << 4) & 0x10);
    const uint8_t xh1 = static_cast<uint8_t>((qh >> (j + 12)) & 0x10);
    const int x0 = (b.qs[j] & 0x0F) | xh0;
    const int x1 = (b.qs[j] >> 4) | xh1;
    y[j] = static_cast<float>(x0) * d + m;
    y[j + kQK5_1 / 2] = static_cast<float>(x1) * d + m;
  }
}

void deq_q8_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ8_0>(p);
  const float d = h2f(b.d);
  for (int j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
}

void deq_q2_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ2_K>(p);
  const float d = h2f(b.d), min = h2f(b.dmin);
  const uint8_t* q = b.qs;
  int is = 0;
  for (int n = 0; n < QK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      uint8_t sc = b.scales[is++];
      float dl = d * static_cast<float>(sc & 0xF), ml = min * static_cast<float>(sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
      sc = b.scales[is++];
      dl = d * static_cast<float>(sc & 0xF);
      ml = min * static_cast<float>(sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16] >> shift) & 3) - ml;
      shift += 2;
    }
    q += 32;
  }
}

void deq_q3_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ3_K>(p);
  const float d_all = h2f(b.d);
  // Unpack the 16 6-bit scales: low 4 bits from bytes 0..7 (low nibbles for 0..7,
  // high nibbles for 8..15), high 2 bits from bytes 8..11.
  int8_t scales[16];
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? (b.scales[j] & 0x0F) : (b.scales[j - 8] >> 4);
    const int hi = (b.scales[8 + (j % 4)] >> (2 * (j / 4))) & 3;
    scales[j] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
  const uint8_t* q = b.qs;
  const uint8_t* hm = b.hmask;
  uint8_t m = 1;
  int is = 0;
  for (int n = 0; n < QK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      float dl = d_all * static_cast<float>(scales[is++]);
      for (int l = 0; l < 16; ++l)
        *y++ = dl * static_cast<float>(((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      dl = d_all * static_cast<float>(scales[is++]);
      for (int l = 0; l < 16; ++l)
        *y++ = dl * static_cast<float>(((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
      shift += 2;
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) { q4_k_scale_min(j, q, d, m); }

void deq_q4_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ4_K>(p);
  const float d = h2f(b.d), min = h2f(b.dmin);
  const uint8_t* q = b.qs;
  int is = 0;
  uint8_t sc, m;
  for (int j = 0; j < QK_K; j += 64) {
    get_scale_min_k4(is + 0, b.scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = min * static_cast<float>(m);
    get_scale_min_k4(is + 1, b.scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc), m2 = min * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void deq_q5_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ5_K>(p);
  const float d = h2f(b.d), min = h2f(b.dmin);
  const uint8_t* ql = b.qs;
  const uint8_t* qh = b.qh;
  int is = 0;
  uint8_t sc, m;
  unsigned u1 = 1, u2 = 2;
  for (int j = 0; j < QK_K; j += 64) {
    get_scale_min_k4(is + 0, b.scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = min * static_cast<float>(m);
    get_scale_min_k4(is + 1, b.scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc), m2 = min * static_cast<float>(m);
    for (int l = 0; l < 32; ++l)
      *y++ = d1 * static_cast<float>((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l)
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void deq_q6_k(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ6_K>(p);
  const float d = h2f(b.d);
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  const int8_t* sc = b.scales;
  for (int n = 0; n < QK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// Plain element types: one element per "block".
template <class T>
inline T load_elem(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void deq_f32(const uint8_t* p, float* y) { *y = load_elem<float>(p); }
void deq_f16(const uint8_t* p, float* y) { *y = h2f(load_elem<uint16_t>(p)); }
void deq_bf16(const uint8_t* p, float* y) { *y = bf16_to_f32(load_elem<uint16_t>(p)); }
void deq_f64(const uint8_t* p, float* y) { *y = static_cast<float>(load_elem<double>(p)); }
void deq_i8(const uint8_t* p, float* y) { *y = static_cast<float>(load_elem<int8_t>(p)); }
void deq_i16(const uint8_t* p, float* y) { *y = static_cast<float>(load_elem<int16_t>(p)); }
void deq_i32(const uint8_t* p, float* y) { *y = static_cast<float>(load_elem<int32_t>(p)); }
void deq_i64(const uint8_t* p, float* y) { *y = static_cast<float>(load_elem<int64_t>(p)); }

// ggml's E2M1 code book doubled: integers, and code 8 is +0 (quant/mxfp4.h's kFp4Values'
// -0.0 would give a -0.0 where ggml and gguf-py give +0.0).
constexpr const int8_t* kE2M1x2 = kE2M1Doubled;

// MXFP4 (gpt-oss's experts): one E8M0 byte e, then 16 bytes of E2M1 codes, the low nibbles
// the block's first 16 values and the high nibbles its last 16 (ggml's usual split, unlike
// the Hugging Face files' interleaved pairs: quant/mxfp4.h). ggml keeps the codes doubled
// and the scale halved, 2^(e - 128): the value is the same E2M1 number times 2^(e - 127),
// exactly.
void deq_mxfp4(const uint8_t* p, float* y) {
  const int e = static_cast<int>(p[0]) - 128;
  for (int j = 0; j < 16; ++j) {
    y[j] = std::ldexp(static_cast<float>(kE2M1x2[p[1 + j] & 0x0F]), e);
    y[j + 16] = std::ldexp(static_cast<float>(kE2M1x2[p[1 + j] >> 4]), e);
  }
}

// ---- i-quants, ternary and 1-/2-bit types (ggml-quants.c's dequantize_row_iq*, _tq*) ----
// Each product is evaluated as ggml writes it (scale * grid value * sign, left to right);
// gguf-py's numpy does the same, so the results are bit-identical to both.

constexpr const int8_t* kValuesIQ4NL = kIQ4NLValues;

// ksigns_iq2xs: 7 stored sign bits, the 8th chosen so that the count of minus signs is even.
constexpr std::array<uint8_t, 128> make_ksigns() {
  std::array<uint8_t, 128> k{};
  for (int i = 0; i < 128; ++i) k[i] = static_cast<uint8_t>(i | ((std::popcount(static_cast<unsigned>(i)) & 1) << 7));
  return k;
}
constexpr std::array<uint8_t, 128> kSignsIQ2 = make_ksigns();
constexpr float kIQ1Delta = 0.125f;  // IQ1S_DELTA / IQ1M_DELTA

inline uint8_t grid_byte(uint64_t v, int j) { return static_cast<uint8_t>(v >> (8 * j)); }
inline float signed_one(uint8_t signs, int j) { return (signs >> j) & 1 ? -1.f : 1.f; }
// 8 values of an IQ2 grid vector: db * magnitude * sign, left to right as ggml.
inline void iq2_group(uint64_t g, float db, uint8_t signs, float* y) {
  for (int j = 0; j < 8; ++j) y[j] = db * static_cast<float>(grid_byte(g, j)) * signed_one(signs, j);
}
// An IQ2_XS / IQ2_S 4-bit sub-scale s: d * (0.5 + s) * 0.25.
inline float iq2_scale(float d, int s) { return d * (0.5f + static_cast<float>(s)) * 0.25f; }

void deq_iq2_xxs(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ2_XXS>(p);
  const float d = h2f(b.d);
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    uint32_t aux[2];
    std::memcpy(aux, b.qs + 4 * ib, sizeof aux);
    const float db = d * (0.5f + static_cast<float>(aux[1] >> 28)) * 0.25f;
    for (int l = 0; l < 4; ++l) {
      const uint64_t g = iq_grids::kIq2xxsGrid[(aux[0] >> (8 * l)) & 0xFF];
      const uint8_t signs = kSignsIQ2[(aux[1] >> (7 * l)) & 127];
      iq2_group(g, db, signs, y);
      y += 8;
    }
  }
}

void deq_iq2_xs(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ2_XS>(p);
  const float d = h2f(b.d);
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const float db[2] = {iq2_scale(d, b.scales[ib] & 0xF), iq2_scale(d, b.scales[ib] >> 4)};
    for (int l = 0; l < 4; ++l) {
      const uint16_t q = b.qs[4 * ib + l];
      const uint64_t g = iq_grids::kIq2xsGrid[q & 511];
      const uint8_t signs = kSignsIQ2[q >> 9];
      iq2_group(g, db[l / 2], signs, y);
      y += 8;
    }
  }
}

void deq_iq2_s(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ2_S>(p);
  const float d = h2f(b.d);
  const uint8_t* qs = b.qs;
  const uint8_t* signs = b.qs + QK_K / 8;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const float db[2] = {iq2_scale(d, b.scales[ib] & 0xF), iq2_scale(d, b.scales[ib] >> 4)};
    for (int l = 0; l < 4; ++l) {
      const int idx = qs[l] | ((b.qh[ib] << (8 - 2 * l)) & 0x300);
      const uint64_t g = iq_grids::kIq2sGrid[idx];
      iq2_group(g, db[l / 2], signs[l], y);
      y += 8;
    }
    qs += 4;
    signs += 4;
  }
}

void deq_iq3_xxs(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ3_XXS>(p);
  const float d = h2f(b.d);
  const uint8_t* qs = b.qs;
  const uint8_t* scales_and_signs = b.qs + QK_K / 4;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    uint32_t aux;
    std::memcpy(&aux, scales_and_signs + 4 * ib, sizeof aux);
    const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
    for (int l = 0; l < 4; ++l) {
      const uint8_t signs = kSignsIQ2[(aux >> (7 * l)) & 127];
      const uint32_t g1 = iq_grids::kIq3xxsGrid[qs[2 * l]], g2 = iq_grids::kIq3xxsGrid[qs[2 * l + 1]];
      for (int j = 0; j < 4; ++j) {
        y[j] = db * static_cast<float>(grid_byte(g1, j)) * signed_one(signs, j);
        y[j + 4] = db * static_cast<float>(grid_byte(g2, j)) * signed_one(signs, j + 4);
      }
      y += 8;
    }
    qs += 8;
  }
}

void deq_iq3_s(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ3_S>(p);
  const float d = h2f(b.d);
  const uint8_t* qs = b.qs;
  const uint8_t* signs = b.signs;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    // Sub-block ib's scale: nibble ib%2 of scales[ib/2], as the odd integer 1 + 2*s.
    const float db = d * static_cast<float>(1 + 2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF));
    const int qh = b.qh[ib];
    for (int l = 0; l < 4; ++l) {
      const uint32_t g1 = iq_grids::kIq3sGrid[qs[2 * l] | ((qh << (8 - 2 * l)) & 256)];
      const uint32_t g2 = iq_grids::kIq3sGrid[qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256)];
      for (int j = 0; j < 4; ++j) {
        y[j] = db * static_cast<float>(grid_byte(g1, j)) * signed_one(signs[l], j);
        y[j + 4] = db * static_cast<float>(grid_byte(g2, j)) * signed_one(signs[l], j + 4);
      }
      y += 8;
    }
    qs += 8;
    signs += 4;
  }
}

// One group of 8 from the {-1, 0, 1} grid: dl * (g + delta).
inline void iq1_group(uint64_t g, float dl, float delta, float* y) {
  for (int j = 0; j < 8; ++j) y[j] = dl * (static_cast<float>(static_cast<int8_t>(grid_byte(g, j))) + delta);
}

void deq_iq1_s(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ1_S>(p);
  const float d = h2f(b.d);
  const uint8_t* qs = b.qs;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const unsigned qh = b.qh[ib];
    const float dl = d * static_cast<float>(2 * ((qh >> 12) & 7) + 1);
    const float delta = qh & 0x8000 ? -kIQ1Delta : kIQ1Delta;
    for (int l = 0; l < 4; ++l) {
      iq1_group(iq_grids::kIq1sGrid[qs[l] | (((qh >> (3 * l)) & 7) << 8)], dl, delta, y);
      y += 8;
    }
    qs += 4;
  }
}

void deq_iq1_m(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ1_M>(p);
  uint16_t sc[4];
  std::memcpy(sc, b.scales, sizeof sc);
  // The fp16 super-block scale is the top nibbles of the four scale words.
  const uint16_t dbits = static_cast<uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) |
                                               (sc[3] & 0xF000));
  const float d = h2f(dbits);
  const uint8_t* qs = b.qs;
  const uint8_t* qh = b.qh;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const float dl1 = d * static_cast<float>(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 7) + 1);
    const float dl2 = d * static_cast<float>(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 7) + 1);
    const int idx[4] = {qs[0] | ((qh[0] << 8) & 0x700), qs[1] | ((qh[0] << 4) & 0x700),
                        qs[2] | ((qh[1] << 8) & 0x700), qs[3] | ((qh[1] << 4) & 0x700)};
    const float delta[4] = {qh[0] & 0x08 ? -kIQ1Delta : kIQ1Delta, qh[0] & 0x80 ? -kIQ1Delta : kIQ1Delta,
                            qh[1] & 0x08 ? -kIQ1Delta : kIQ1Delta, qh[1] & 0x80 ? -kIQ1Delta : kIQ1Delta};
    for (int l = 0; l < 4; ++l) {
      iq1_group(iq_grids::kIq1sGrid[idx[l]], l < 2 ? dl1 : dl2, delta[l], y);
      y += 8;
    }
    qs += 4;
    qh += 2;
  }
}

void deq_iq4_nl(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ4_NL>(p);
  const float d = h2f(b.d);
  for (int j = 0; j < kQK4_NL / 2; ++j) {
    y[j] = d * static_cast<float>(kValuesIQ4NL[b.qs[j] & 0xF]);
    y[j + kQK4_NL / 2] = d * static_cast<float>(kValuesIQ4NL[b.qs[j] >> 4]);
  }
}

void deq_iq4_xs(const uint8_t* p, float* y) {
  const auto b = load_block<BlockIQ4_XS>(p);
  const float d = h2f(b.d);
  const uint8_t* qs = b.qs;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const int ls = ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((b.scales_h >> (2 * ib)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * static_cast<float>(kValuesIQ4NL[qs[j] & 0xF]);
      y[j + 16] = dl * static_cast<float>(kValuesIQ4NL[qs[j] >> 4]);
    }
    y += 32;
    qs += 16;
  }
}

// TQ1_0 keeps 5 trits in a byte as a base-3 fraction scaled to 256: multiplying by 3^n
// (mod 256) brings trit n to the top, and (q * 3) >> 8 reads it.
inline float trit(uint8_t byte, int pow3) {
  const uint8_t q = static_cast<uint8_t>(byte * pow3);
  return static_cast<float>(((static_cast<int>(q) * 3) >> 8) - 1);
}

void deq_tq1_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockTQ1_0>(p);
  const float d = h2f(b.d);
  constexpr int kPow3[5] = {1, 3, 9, 27, 81};
  constexpr int nqs = static_cast<int>(sizeof b.qs);  // 48: one run of 32 bytes, one of 16
  for (int j = 0; j < nqs - nqs % 32; j += 32)
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 32; ++m) *y++ = trit(b.qs[j + m], kPow3[n]) * d;
  for (int j = nqs - nqs % 32; j < nqs; j += 16)
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 16; ++m) *y++ = trit(b.qs[j + m], kPow3[n]) * d;
  for (int n = 0; n < 4; ++n)
    for (int j = 0; j < static_cast<int>(sizeof b.qh); ++j) *y++ = trit(b.qh[j], kPow3[n]) * d;
}

void deq_tq2_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockTQ2_0>(p);
  const float d = h2f(b.d);
  for (int j = 0; j < QK_K / 4; j += 32)
    for (int l = 0; l < 4; ++l)
      for (int m = 0; m < 32; ++m) *y++ = static_cast<float>(((b.qs[j + m] >> (2 * l)) & 3) - 1) * d;
}

// Unsigned E4M3 (bias 7, no sign; 0 and 0x7F read as 0), halved as ggml keeps NVFP4's
// scales (its code book is E2M1 doubled). Every such value is exact in float32.
float ue4m3_half(uint8_t x) {
  if (x == 0 || x == 0x7F) return 0.0f;
  const int e = (x >> 3) & 0xF, m = x & 7;
  const float raw = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
  return raw * 0.5f;
}

void deq_nvfp4(const uint8_t* p, float* y) {
  const auto b = load_block<BlockNVFP4>(p);
  for (int s = 0; s < kQK_NVFP4 / kQK_NVFP4_SUB; ++s) {
    const float d = ue4m3_half(b.d[s]);
    const uint8_t* q = b.qs + s * (kQK_NVFP4_SUB / 2);
    for (int j = 0; j < kQK_NVFP4_SUB / 2; ++j) {
      y[j] = static_cast<float>(kE2M1x2[q[j] & 0x0F]) * d;
      y[j + kQK_NVFP4_SUB / 2] = static_cast<float>(kE2M1x2[q[j] >> 4]) * d;
    }
    y += kQK_NVFP4_SUB;
  }
}

void deq_q1_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ1_0>(p);
  const float d = h2f(b.d);
  for (int j = 0; j < kQK1_0; ++j) y[j] = (b.qs[j / 8] >> (j % 8)) & 1 ? d : -d;
}

void deq_q2_0(const uint8_t* p, float* y) {
  const auto b = load_block<BlockQ2_0>(p);
  const float d = h2f(b.d);
  for (int j = 0; j < kQK2_0; ++j) y[j] = static_cast<float>(((b.qs[j / 4] >> (2 * (j % 4))) & 3) - 1) * d;
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return deq_f32;
    case GgmlType::F16: return deq_f16;
    case GgmlType::BF16: return deq_bf16;
    case GgmlType::F64: return deq_f64;
    case GgmlType::I8: return deq_i8;
    case GgmlType::I16: return deq_i16;
    case GgmlType::I32: return deq_i32;
    case GgmlType::I64: return deq_i64;
    case GgmlType::Q4_0: return deq_q4_0;
    case GgmlType::Q4_1: return deq_q4_1;
    case GgmlType::Q5_0: return deq_q5_0;
    case GgmlType::Q5_1: return deq_q5_1;
    case GgmlType::Q8_0: return deq_q8_0;
    case GgmlType::Q2_K: return deq_q2_k;
    case GgmlType::Q3_K: return deq_q3_k;
    case GgmlType::Q4_K: return deq_q4_k;
    case GgmlType::Q5_K: return deq_q5_k;
    case GgmlType::Q6_K: return deq_q6_k;
    case GgmlType::MXFP4: return deq_mxfp4;
    case GgmlType::IQ2_XXS: return deq_iq2_xxs;
    case GgmlType::IQ2_XS: return deq_iq2_xs;
    case GgmlType::IQ2_S: return deq_iq2_s;
    case GgmlType::IQ3_XXS: return deq_iq3_xxs;
    case GgmlType::IQ3_S: return deq_iq3_s;
    case GgmlType::IQ1_S: return deq_iq1_s;
    case GgmlType::IQ1_M: return deq_iq1_m;
    case GgmlType::IQ4_NL: return deq_iq4_nl;
    case GgmlType::IQ4_XS: return deq_iq4_xs;
    case GgmlType::TQ1_0: return deq_tq1_0;
    case GgmlType::TQ2_0: return deq_tq2_0;
    case GgmlType::NVFP4: return deq_nvfp4;
    case GgmlType::Q1_0: return deq_q1_0;
    case GgmlType::Q2_0: return deq_q2_0;
    default: return nullptr;
  }
}

// Whole blocks [b0, b1) of a tensor.
void dequantize_blocks(GgmlType t, BlockFn fn, const uint8_t* src, float* dst, int64_t b0, int64_t b1) {
  const auto& tr = ggml_traits(t);
  if (t == GgmlType::F32) {  // plain copy
    std::memcpy(dst + b0, src + b0 * 4, static_cast<size_t>(b1 - b0) * 4);
    return;
  }
  for (int64_t b = b0; b < b1; ++b) fn(src + b * tr.type_size, dst + b * tr.block_size);
}

}  // namespace

void q4_k_scale_min(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id) {
  const TypeRow* r = find_row(id);
  if (!r) return std::nullopt;
  return r->traits;
}

const GgmlTypeTraits& ggml_traits(GgmlType t) {
  const TypeRow* r = find_row(static_cast<uint32_t>(t));
  if (!r) fail("ggml", "unknown GGML type id " + std::to_string(static_cast<uint32_t>(t)));
  return r->traits;
}

std::string_view ggml_type_name(GgmlType t) {
  const TypeRow* r = find_row(static_cast<uint32_t>(t));
  return r ? r->traits.name : std::string_view("unknown");
}

std::optional<int64_t> ggml_nbytes(GgmlType t, int64_t n) {
  const TypeRow* r = find_row(static_cast<uint32_t>(t));
  if (!r || n < 0 || n % r->traits.block_size != 0) return std::nullopt;
  const int64_t blocks = n / r->traits.block_size;
  if (blocks > INT64_MAX / r->traits.type_size) return std::nullopt;
  return blocks * r->traits.type_size;
}

void dequantize_row_ref(GgmlType t, const uint8_t* src, float* dst, int64_t n) {
  BlockFn fn = block_fn(t);
  if (!fn) fail("ggml", "dequantization of type " + std::string(ggml_type_name(t)) + " is not supported");
  const auto& tr = ggml_traits(t);
  const int64_t nb = n / tr.block_size;
  for (int64_t b = 0; b < nb; ++b) fn(src + b * tr.type_size, dst + b * tr.block_size);
}

void dequantize(GgmlType t, std::span<const uint8_t> src, std::span<float> dst, std::string_view where) {
  const std::string_view w = where.empty() ? std::string_view("ggml") : where;
  BlockFn fn = block_fn(t);
  if (!fn) fail(w, "dequantization of type " + std::string(ggml_type_name(t)) + " is not supported");
  const auto& tr = ggml_traits(t);
  const int64_t n = static_cast<int64_t>(dst.size());
  auto nbytes = ggml_nbytes(t, n);
  if (!nbytes)
    fail(w, std::to_string(n) + " elements is not a multiple of the " + std::string(tr.name) + " block size " +
                std::to_string(tr.block_size));
  if (static_cast<uint64_t>(*nbytes) != src.size())
    fail(w, std::string(tr.name) + " data of " + std::to_string(src.size()) + " bytes, expected " +
                std::to_string(*nbytes) + " for " + std::to_string(n) + " elements");
  const int64_t nb = n / tr.block_size;
  // Aim for >= 64K elements per thread: below that threads cost more than they save.
  const int64_t min_blocks = std::max<int64_t>(1, (int64_t{1} << 16) / tr.block_size);
  parallel_for_range(nb, min_blocks, [&](int64_t b0, int64_t b1) {
    dequantize_blocks(t, fn, src.data(), dst.data(), b0, b1);
  });
}

}  // namespace qlora
