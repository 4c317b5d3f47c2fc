#pragma once
// GGML tensor element types (as stored in GGUF files) and their dequantization to
// float32.
//
// Every quantized type stores a tensor row as a sequence of fixed-size blocks of
// `block_size` elements taking `type_size` bytes each. The packed block structs below
// ARE the on-disk layout (little-endian, no padding; checked by static_assert), and the
// scalar `dequantize_row_*_ref` functions in ggml_types.cpp are the definition of each
// format, written after llama.cpp's ggml-quants.c reference. Results are bit-identical
// to the `gguf` Python package's numpy dequantizer (gguf.quants.dequantize): both
// evaluate the same float32 expressions in the same order (see
// tests/formats/test_gguf_dequant.cpp).
//
// Thread-safety: every function here is pure (no shared state) and may be called
// from any thread.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace qlora {

// The numeric ids are the ones in GGUF files (ggml.h's enum ggml_type).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3,
  // 4 and 5 (Q4_2, Q4_3) were removed from ggml long ago.
  Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21,
  IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  // 31..33 (Q4_0_4_4, Q4_0_4_8, Q4_0_8_8) were removed from ggml.
  TQ1_0 = 34, TQ2_0 = 35,
  // 36..38 (IQ4_NL_4_4, ...) were removed from ggml.
  MXFP4 = 39,
  NVFP4 = 40,  // 4 E2M1 sub-blocks of 16 with unsigned E4M3 scales (NVIDIA's NVFP4)
  Q1_0 = 41, Q2_0 = 42,  // 1-bit (+-d) and 2-bit ((q-1)*d) blocks with one fp16 scale
};

// Size facts of one type. A row of n elements (n a multiple of block_size) takes
// n / block_size * type_size bytes.
struct GgmlTypeTraits {
  std::string_view name;  // "F32", "Q4_K", ... (ggml's spelling, upper case)
  int64_t block_size = 1;
  int64_t type_size = 0;
  bool can_dequantize = false;  // dequantize() supports it
};

// Traits of the type with file id `id`; nullopt for an id ggml does not define
// (including the removed ones).
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id);
// Traits of a defined type (REQUIRES: t is one of the enumerators above).
const GgmlTypeTraits& ggml_traits(GgmlType t);
std::string_view ggml_type_name(GgmlType t);

// Bytes taken by `n` elements of type t; nullopt when n is negative, not a multiple of
// the block size, or the byte count overflows int64.
std::optional<int64_t> ggml_nbytes(GgmlType t, int64_t n);

// ---- packed block layouts (ggml-common.h) ---------------------------------------
// fp16 fields are raw IEEE binary16 bits. Blocks inside a mapped file may be only
// byte-aligned: the dequantizers copy each block before reading it.
inline constexpr int kQK4_0 = 32, kQK4_1 = 32, kQK5_0 = 32, kQK5_1 = 32, kQK8_0 = 32;
inline constexpr int kQK_K = 256;        // super-block size of the K-quants
inline constexpr int kKScaleSize = 12;  // packed 6-bit scales+mins of Q4_K/Q5_K

struct BlockQ4_0 {  // x = d * (q - 8), q 4-bit; element j in the low nibble of qs[j],
  uint16_t d;       // element j+16 in the high nibble
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 2 + kQK4_0 / 2);

struct BlockQ4_1 {  // x = d * q + m, q 4-bit, nibble order as Q4_0
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ4_1) == 4 + kQK4_1 / 2);

struct BlockQ5_0 {  // x = d * (q - 16), q 5-bit: 4 low bits as Q4_0, bit 4 from qh
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == 6 + kQK5_0 / 2);

struct BlockQ5_1 {  // x = d * q + m, q 5-bit as Q5_0
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 8 + kQK5_1 / 2);

struct BlockQ8_0 {  // x = d * q, q int8
  uint16_t d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 2 + kQK8_0);

struct BlockQ2_K {  // 16 sub-blocks of 16: x = d*(sc&15) * q - dmin*(sc>>4), q 2-bit
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;
  uint16_t dmin;
};
static_assert(sizeof(BlockQ2_K) == 2 * 2 + kQK_K / 16 + kQK_K / 4);

struct BlockQ3_K {  // 16 sub-blocks of 16: x = d*(sc-32) * (q - 4*!hbit), q 2-bit + hmask
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];  // 16 6-bit scales
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 2 + kQK_K / 4 + kQK_K / 8 + 12);

struct BlockQ4_K {  // 8 sub-blocks of 32: x = d*sc * q - dmin*m, q 4-bit, 6-bit sc/m
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 2 * 2 + kKScaleSize + kQK_K / 2);

struct BlockQ5_K {  // as Q4_K with a fifth bit per element in qh
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 2 * 2 + kKScaleSize + kQK_K / 8 + kQK_K / 2);

struct BlockQ6_K {  // 16 sub-blocks of 16: x = d*sc * (q - 32), q 6-bit, sc int8
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 2 + kQK_K / 16 + 3 * kQK_K / 4);

// The i-quants (ikawrakow's "importance" quants): groups of 8 weights (IQ3: 4) stored as an
// index into a fixed code book (formats/ggml_iq_grids.h) plus signs, or (IQ4) 4-bit indices
// into a 16-value non-linear table. Every super-block scale is fp16.
struct BlockIQ2_XXS {  // per 32: 4 grid bytes, then 4x7 sign bits + a 4-bit scale (u32)
  uint16_t d;
  uint16_t qs[kQK_K / 8];
};
static_assert(sizeof(BlockIQ2_XXS) == 2 + kQK_K / 4);

struct BlockIQ2_XS {  // qs: 9-bit grid index | 7-bit sign index; two 4-bit scales per 32
  uint16_t d;
  uint16_t qs[kQK_K / 8];
  uint8_t scales[kQK_K / 32];
};
static_assert(sizeof(BlockIQ2_XS) == 2 + kQK_K / 4 + kQK_K / 32);

struct BlockIQ2_S {  // qs: 32 low index bytes then 32 sign bytes; qh: 2 index bits per 8
  uint16_t d;
  uint8_t qs[kQK_K / 4];
  uint8_t qh[kQK_K / 32];
  uint8_t scales[kQK_K / 32];
};
static_assert(sizeof(BlockIQ2_S) == 2 + kQK_K / 4 + kQK_K / 16);

struct BlockIQ3_XXS {  // qs: 64 grid bytes (4 values each), then per 32 a u32 of signs + scale
  uint16_t d;
  uint8_t qs[3 * kQK_K / 8];
};
static_assert(sizeof(BlockIQ3_XXS) == 2 + 3 * kQK_K / 8);

struct BlockIQ3_S {  // 9-bit grid indices (qh the 9th bits), explicit signs, 4-bit odd scales
  uint16_t d;
  uint8_t qs[kQK_K / 4];
  uint8_t qh[kQK_K / 32];
  uint8_t signs[kQK_K / 8];
  uint8_t scales[kQK_K / 64];
};
static_assert(sizeof(BlockIQ3_S) == 2 + 13 * (kQK_K / 32) + kQK_K / 64);

struct BlockIQ1_S {  // 11-bit indices into the {-1,0,1} grid; qh: index bits, scale, delta sign
  uint16_t d;
  uint8_t qs[kQK_K / 8];
  uint16_t qh[kQK_K / 32];
};
static_assert(sizeof(BlockIQ1_S) == 2 + kQK_K / 8 + kQK_K / 16);

struct BlockIQ1_M {  // as IQ1_S with 3-bit scales per 16; the fp16 scale spread over scales
  uint8_t qs[kQK_K / 8];
  uint8_t qh[kQK_K / 16];
  uint8_t scales[kQK_K / 32];
};
static_assert(sizeof(BlockIQ1_M) == kQK_K / 8 + kQK_K / 16 + kQK_K / 32);

inline constexpr int kQK4_NL = 32;
struct BlockIQ4_NL {  // x = d * kvalues_iq4nl[q], nibble order as Q4_0
  uint16_t d;
  uint8_t qs[kQK4_NL / 2];
};
static_assert(sizeof(BlockIQ4_NL) == 2 + kQK4_NL / 2);

struct BlockIQ4_XS {  // 8 sub-blocks of 32: x = d*(ls-32) * kvalues_iq4nl[q], ls 6-bit
  uint16_t d;
  uint16_t scales_h;
  uint8_t scales_l[kQK_K / 64];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockIQ4_XS) == 4 + kQK_K / 64 + kQK_K / 2);

// The ternary types (BitNet b1.58 / TriLMs): x = d * t, t in {-1, 0, 1}.
struct BlockTQ1_0 {  // 5 trits per byte (base-3 fixed point) in qs, 4 per byte in qh
  uint8_t qs[(kQK_K - 4 * kQK_K / 64) / 5];
  uint8_t qh[kQK_K / 64];
  uint16_t d;
};
static_assert(sizeof(BlockTQ1_0) == 2 + 4 * 13);

struct BlockTQ2_0 {  // 2 bits per trit, stored as t + 1
  uint8_t qs[kQK_K / 4];
  uint16_t d;
};
static_assert(sizeof(BlockTQ2_0) == 2 + kQK_K / 4);

inline constexpr int kQK_NVFP4 = 64, kQK_NVFP4_SUB = 16, kQK1_0 = 128, kQK2_0 = 64;
struct BlockNVFP4 {  // 4 sub-blocks of 16 E2M1 codes (nibbles split as Q4_0), each with a UE4M3 scale
  uint8_t d[kQK_NVFP4 / kQK_NVFP4_SUB];
  uint8_t qs[kQK_NVFP4 / 2];
};
static_assert(sizeof(BlockNVFP4) == 4 + kQK_NVFP4 / 2);

struct BlockQ1_0 {  // x = bit ? d : -d, element j bit j%8 of qs[j/8]
  uint16_t d;
  uint8_t qs[kQK1_0 / 8];
};
static_assert(sizeof(BlockQ1_0) == 2 + kQK1_0 / 8);

struct BlockQ2_0 {  // x = (q - 1) * d, q 2-bit, element j bits 2*(j%4) of qs[j/4]
  uint16_t d;
  uint8_t qs[kQK2_0 / 4];
};
static_assert(sizeof(BlockQ2_0) == 2 + kQK2_0 / 4);

// IQ4_NL / IQ4_XS's non-linear code book (kvalues_iq4nl) and MXFP4 / NVFP4's E2M1 values
// doubled (kvalues_mxfp4: integers; ggml halves the scales to match).
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
inline constexpr int8_t kE2M1Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// The 6-bit scale and minimum of sub-block j (0..7) of a Q4_K / Q5_K super-block's 12
// scale bytes.
void q4_k_scale_min(int j, const uint8_t* scales, uint8_t* sc, uint8_t* m);

// ---- dequantization --------------------------------------------------------------
// Scalar reference: dequantizes `n` elements (REQUIRES: n a multiple of the block
// size, `src` holding ggml_nbytes(t, n) bytes, `dst` n floats). Throws Error for a
// type with can_dequantize == false.
void dequantize_row_ref(GgmlType t, const uint8_t* src, float* dst, int64_t n);

// Dequantizes a whole tensor of `dst.size()` elements from `src`, in parallel over
// blocks for big tensors. Throws Error (prefixed with `where`) when the type cannot be
// dequantized, dst.size() is not a multiple of the block size, or src.size() is not
// exactly ggml_nbytes(t, dst.size()).
void dequantize(GgmlType t, std::span<const uint8_t> src, std::span<float> dst,
                std::string_view where = {});

}  // namespace qlora
