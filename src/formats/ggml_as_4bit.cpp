#include "formats/ggml_as_4bit.h"

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "base/parallel.h"

namespace qlora {

namespace {

constexpr int kBlock = 32;  // every kept type has one scale per 32 values

uint16_t read_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// 32 values whose nibbles ggml stores "split" (value j in the low nibble of byte j, value
// j + 16 in its high nibble) into bitsandbytes' order (value 2i in the high nibble of byte
// i, 2i + 1 in the low): out receives 16 bytes.
void split_nibbles_to_bnb(const uint8_t* qs, uint8_t* out) {
  uint8_t v[kBlock];
  for (int j = 0; j < 16; ++j) {
    v[j] = qs[j] & 0x0F;
    v[j + 16] = qs[j] >> 4;
  }
  for (int i = 0; i < 16; ++i) out[i] = static_cast<uint8_t>((v[2 * i] << 4) | v[2 * i + 1]);
}

// Per stored block of the type: the 4-bit values of its 32-value groups into `packed`, the
// groups' scales into `scale` and minimums into `min` (null for types without).
using BlockFn = void (*)(const uint8_t* blk, uint8_t* packed, float* scale, float* min);

// The types whose block of 32 has an fp16 scale (and Q4_1 an fp16 minimum) keep those 16 bits
// as stored (QuantState::absmax_f16 / block_min_f16, widened exactly where used): 4.5 and 5
// bits per value as in the file, where float32 made them 5 and 6.
using HalfBlockFn = void (*)(const uint8_t* blk, uint8_t* packed, uint16_t* scale, uint16_t* min);

void q4_0_block(const uint8_t* b, uint8_t* packed, uint16_t* scale, uint16_t*) {
  scale[0] = read_u16(b);
  split_nibbles_to_bnb(b + 2, packed);
}

void q4_1_block(const uint8_t* b, uint8_t* packed, uint16_t* scale, uint16_t* min) {
  scale[0] = read_u16(b);
  min[0] = read_u16(b + 2);
  split_nibbles_to_bnb(b + 4, packed);
}

void iq4_nl_block(const uint8_t* b, uint8_t* packed, uint16_t* scale, uint16_t*) {
  scale[0] = read_u16(b);
  split_nibbles_to_bnb(b + 2, packed);
}

void mxfp4_block(const uint8_t* b, uint8_t* packed, float* scale, float*) {
  scale[0] = std::ldexp(1.0f, static_cast<int>(b[0]) - 128);  // ggml's E8M0 halved (codes doubled)
  split_nibbles_to_bnb(b + 1, packed);
}

// The types whose scale per 32 is an integer code times one float per 256 (Q4_K's d * sc_j,
// IQ4_XS's d * (ls_j - 32)) keep it in that form, as a double-quantized absmax: the 6-bit
// codes in absmax_q, d in nested_absmax (nested_blocksize 8 blocks of 32), the code's value in
// nested_code, offset -0.0 -- nested_code[q] * d + (-0.0) is ggml's d * sc exactly (the same
// float32 product; adding -0.0 changes no value, not even a zero's sign, where +0.0 would
// turn ggml's -0 * x into +0). 1 + 4/8 bytes per 32 values instead of 4.
// min_q / dmin: Q4_K's minimums in the same form (QuantState::block_min_q / block_min_d), null
// for IQ4_XS.
using NestedBlockFn = void (*)(const uint8_t* blk, uint8_t* packed, uint8_t* scale_q, float* d, uint8_t* min_q,
                               float* dmin);

// Q4_K: 256 values; per 64, 32 bytes whose low nibbles are the first 32 values and high
// nibbles the next 32, each 32 with its 6-bit scale and minimum.
void q4_k_block(const uint8_t* b, uint8_t* packed, uint8_t* scale_q, float* d_out, uint8_t* min_q, float* dmin_out) {
  const auto blk = [&] {
    BlockQ4_K x;
    std::memcpy(&x, b, sizeof x);
    return x;
  }();
  dmin_out[0] = fp16_to_f32(blk.dmin);  // (each minimum -(dmin * m): d1*q + (-m1) is ggml's d1*q - m1 exactly)
  d_out[0] = fp16_to_f32(blk.d);
  for (int j = 0; j < 8; ++j) q4_k_scale_min(j, blk.scales, &scale_q[j], &min_q[j]);
  for (int g = 0; g < 4; ++g) {
    const uint8_t* q = blk.qs + 32 * g;
    uint8_t lo[kBlock], hi[kBlock];
    for (int l = 0; l < 32; ++l) {
      lo[l] = q[l] & 0x0F;
      hi[l] = q[l] >> 4;
    }
    for (int i = 0; i < 16; ++i) {
      packed[(2 * g) * 16 + i] = static_cast<uint8_t>((lo[2 * i] << 4) | lo[2 * i + 1]);
      packed[(2 * g + 1) * 16 + i] = static_cast<uint8_t>((hi[2 * i] << 4) | hi[2 * i + 1]);
    }
  }
}

// IQ4_XS: 256 values in 8 groups of 32, each with a 6-bit scale (ls - 32) times d.
void iq4_xs_block(const uint8_t* b, uint8_t* packed, uint8_t* scale_q, float* d_out, uint8_t*, float*) {
  BlockIQ4_XS x;
  std::memcpy(&x, b, sizeof x);
  d_out[0] = fp16_to_f32(x.d);
  for (int j = 0; j < 8; ++j) {
    const int ls = ((x.scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((x.scales_h >> (2 * j)) & 3) << 4);
    scale_q[j] = static_cast<uint8_t>(ls);
    split_nibbles_to_bnb(x.qs + 16 * j, packed + 16 * j);
  }
}

struct Kind {
  BlockFn fn = nullptr;          // scales as floats, or
  NestedBlockFn nested = nullptr;  // 6-bit scale codes times one d per 256, or
  HalfBlockFn half = nullptr;    // fp16 scales (and minimums) as stored
  int code_bias = 0;             // nested: the scale code q means q + code_bias (IQ4_XS: -32)
  bool has_min = false;
  std::array<float, 16> code{};
};

std::array<float, 16> code_from(const int8_t* v) {
  std::array<float, 16> c{};
  for (int i = 0; i < 16; ++i) c[static_cast<size_t>(i)] = static_cast<float>(v[i]);
  return c;
}

std::optional<Kind> kind_of(GgmlType t) {
  std::array<float, 16> ramp{}, centered{};
  for (int i = 0; i < 16; ++i) {
    ramp[static_cast<size_t>(i)] = static_cast<float>(i);
    centered[static_cast<size_t>(i)] = static_cast<float>(i - 8);
  }
  switch (t) {
    case GgmlType::Q4_0: return Kind{nullptr, nullptr, q4_0_block, 0, false, centered};
    case GgmlType::Q4_1: return Kind{nullptr, nullptr, q4_1_block, 0, true, ramp};
    case GgmlType::Q4_K: return Kind{nullptr, q4_k_block, nullptr, 0, true, ramp};
    case GgmlType::IQ4_NL: return Kind{nullptr, nullptr, iq4_nl_block, 0, false, code_from(kIQ4NLValues)};
    case GgmlType::IQ4_XS: return Kind{nullptr, iq4_xs_block, nullptr, -32, false, code_from(kIQ4NLValues)};
    case GgmlType::MXFP4: return Kind{mxfp4_block, nullptr, nullptr, 0, false, code_from(kE2M1Doubled)};
    default: return std::nullopt;
  }
}

}  // namespace

bool ggml_type_keeps_as_4bit(GgmlType t) { return kind_of(t).has_value(); }

std::optional<Quantized4bit> ggml_blocks_as_4bit(GgmlType t, std::span<const uint8_t> data, int64_t rows, int64_t cols,
                                                 ComputeDType dtype, const std::string& where) {
  const std::optional<Kind> k = kind_of(t);
  if (!k) return std::nullopt;
  const GgmlTypeTraits& tr = ggml_traits(t);
  check(rows > 0 && cols > 0 && cols % tr.block_size == 0, where,
        std::string(tr.name) + " rows of " + std::to_string(cols) + " values are not whole blocks of " +
            std::to_string(tr.block_size));
  const int64_t n = rows * cols;
  const auto nbytes = ggml_nbytes(t, n);
  check(nbytes && static_cast<uint64_t>(*nbytes) == data.size(), where,
        std::string(tr.name) + " data of " + std::to_string(data.size()) + " bytes does not fit " +
            std::to_string(rows) + "x" + std::to_string(cols));
  const int64_t stored_blocks = n / tr.block_size, groups_per = tr.block_size / kBlock;
  Quantized4bit q;
  q.packed.resize(static_cast<size_t>(n / 2));
  QuantState& s = q.state;
  s.type = QuantType::NF4;  // (nominal: ggml_source and code say what the values are)
  s.ggml_source = std::string(tr.name);
  s.blocksize = kBlock;
  s.dtype = dtype;
  s.shape = {rows, cols};
  s.code = k->code;
  if (k->has_min && k->half) s.block_min_f16.resize(static_cast<size_t>(n / kBlock));
  if (k->has_min && k->nested) {
    s.block_min_q.resize(static_cast<size_t>(n / kBlock));
    s.block_min_d.resize(static_cast<size_t>(stored_blocks));
    s.block_min_group = static_cast<int>(groups_per);
  }
  if (k->has_min && !k->half && !k->nested) s.block_min.resize(static_cast<size_t>(n / kBlock));
  if (k->half) {
    s.absmax_f16.resize(static_cast<size_t>(n / kBlock));
  } else if (k->nested) {
    s.nested = true;
    s.nested_blocksize = static_cast<int>(groups_per);  // one d per stored block
    s.offset = -0.0f;
    s.nested_code.fill(0.0f);
    for (int i = 0; i < 64; ++i) s.nested_code[static_cast<size_t>(i)] = static_cast<float>(i + k->code_bias);
    s.absmax_q.resize(static_cast<size_t>(n / kBlock));
    s.nested_absmax.resize(static_cast<size_t>(stored_blocks));
  } else {
    s.absmax.resize(static_cast<size_t>(n / kBlock));
  }
  parallel_for_range(stored_blocks, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint8_t* blk = data.data() + b * tr.type_size;
      uint8_t* packed = q.packed.data() + b * tr.block_size / 2;
      if (k->half) {
        k->half(blk, packed, s.absmax_f16.data() + b * groups_per,
                k->has_min ? s.block_min_f16.data() + b * groups_per : nullptr);
        continue;
      }
      if (k->nested)
        k->nested(blk, packed, s.absmax_q.data() + b * groups_per, s.nested_absmax.data() + b,
                  k->has_min ? s.block_min_q.data() + b * groups_per : nullptr,
                  k->has_min ? s.block_min_d.data() + b : nullptr);
      else
        k->fn(blk, packed, s.absmax.data() + b * groups_per, k->has_min ? s.block_min.data() + b * groups_per : nullptr);
    }
  });
  return q;
}

int64_t ggml_kept_constant_bytes(GgmlType t, int64_t n) {
  const std::optional<Kind> k = kind_of(t);
  if (!k) return 0;
  const int64_t groups = n / kBlock, stored = n / ggml_traits(t).block_size, bytes = k->half ? 2 : 4;
  if (k->nested) return groups + stored * 4 + 4 /* offset */ + (k->has_min ? groups + stored * 4 : 0);
  return groups * bytes + (k->has_min ? groups * bytes : 0);
}

Quantized4bit permute_4bit_rows(const Quantized4bit& q, std::span<const int64_t> src_row) {
  const QuantState& s = q.state;
  check(s.shape.size() == 2 && s.shape[1] % s.blocksize == 0 &&
            (!s.nested || (s.shape[1] / s.blocksize) % s.nested_blocksize == 0) &&
            (s.block_min_q.empty() || (s.shape[1] / s.blocksize) % s.block_min_group == 0) &&
            static_cast<int64_t>(src_row.size()) == s.shape[0],
        "permute_4bit_rows",
        "needs a 2-D weight of whole blocks (and whole nested blocks) per row and one source row per row");
  const int64_t rows = s.shape[0], cols = s.shape[1], bpr = cols / s.blocksize;
  const int64_t npr = s.nested ? bpr / s.nested_blocksize : 0;  // nested absmax per row
  Quantized4bit out = q;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t from = src_row[static_cast<size_t>(r)];
    check(from >= 0 && from < rows, "permute_4bit_rows", "row index out of range");
    std::memcpy(out.packed.data() + r * cols / 2, q.packed.data() + from * cols / 2, static_cast<size_t>(cols / 2));
    if (s.nested) {
      std::memcpy(out.state.absmax_q.data() + r * bpr, s.absmax_q.data() + from * bpr, static_cast<size_t>(bpr));
      std::memcpy(out.state.nested_absmax.data() + r * npr, s.nested_absmax.data() + from * npr,
                  static_cast<size_t>(npr) * 4);
    } else if (!s.absmax_f16.empty()) {
      std::memcpy(out.state.absmax_f16.data() + r * bpr, s.absmax_f16.data() + from * bpr, static_cast<size_t>(bpr) * 2);
    } else {
      std::memcpy(out.state.absmax.data() + r * bpr, s.absmax.data() + from * bpr, static_cast<size_t>(bpr) * 4);
    }
    if (!s.block_min.empty())
      std::memcpy(out.state.block_min.data() + r * bpr, s.block_min.data() + from * bpr, static_cast<size_t>(bpr) * 4);
    if (!s.block_min_f16.empty())
      std::memcpy(out.state.block_min_f16.data() + r * bpr, s.block_min_f16.data() + from * bpr,
                  static_cast<size_t>(bpr) * 2);
    if (!s.block_min_q.empty()) {  // (whole groups per row: checked with the nested scales above)
      const int64_t gpr = bpr / s.block_min_group;
      std::memcpy(out.state.block_min_q.data() + r * bpr, s.block_min_q.data() + from * bpr, static_cast<size_t>(bpr));
      std::memcpy(out.state.block_min_d.data() + r * gpr, s.block_min_d.data() + from * gpr, static_cast<size_t>(gpr) * 4);
    }
  }
  return out;
}

}  // namespace qlora
