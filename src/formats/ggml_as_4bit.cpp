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

void q4_0_block(const uint8_t* b, uint8_t* packed, float* scale, float*) {
  scale[0] = fp16_to_f32(read_u16(b));
  split_nibbles_to_bnb(b + 2, packed);
}

void q4_1_block(const uint8_t* b, uint8_t* packed, float* scale, float* min) {
  scale[0] = fp16_to_f32(read_u16(b));
  min[0] = fp16_to_f32(read_u16(b + 2));
  split_nibbles_to_bnb(b + 4, packed);
}

void iq4_nl_block(const uint8_t* b, uint8_t* packed, float* scale, float*) {
  scale[0] = fp16_to_f32(read_u16(b));
  split_nibbles_to_bnb(b + 2, packed);
}

void mxfp4_block(const uint8_t* b, uint8_t* packed, float* scale, float*) {
  scale[0] = std::ldexp(1.0f, static_cast<int>(b[0]) - 128);  // ggml's E8M0 halved (codes doubled)
  split_nibbles_to_bnb(b + 1, packed);
}

// Q4_K: 256 values; per 64, 32 bytes whose low nibbles are the first 32 values and high
// nibbles the next 32, each 32 with its 6-bit scale and minimum.
void q4_k_block(const uint8_t* b, uint8_t* packed, float* scale, float* min) {
  const auto blk = [&] {
    BlockQ4_K x;
    std::memcpy(&x, b, sizeof x);
    return x;
  }();
  const float d = fp16_to_f32(blk.d), dmin = fp16_to_f32(blk.dmin);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    q4_k_scale_min(j, blk.scales, &sc, &m);
    scale[j] = d * static_cast<float>(sc);
    min[j] = -(dmin * static_cast<float>(m));  // d1*q + (-m1) is ggml's d1*q - m1 exactly
  }
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
void iq4_xs_block(const uint8_t* b, uint8_t* packed, float* scale, float*) {
  BlockIQ4_XS x;
  std::memcpy(&x, b, sizeof x);
  const float d = fp16_to_f32(x.d);
  for (int j = 0; j < 8; ++j) {
    const int ls = ((x.scales_l[j / 2] >> (4 * (j % 2))) & 0xF) | (((x.scales_h >> (2 * j)) & 3) << 4);
    scale[j] = d * static_cast<float>(ls - 32);
    split_nibbles_to_bnb(x.qs + 16 * j, packed + 16 * j);
  }
}

struct Kind {
  BlockFn fn;
  bool has_min;
  std::array<float, 16> code;
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
    case GgmlType::Q4_0: return Kind{q4_0_block, false, centered};
    case GgmlType::Q4_1: return Kind{q4_1_block, true, ramp};
    case GgmlType::Q4_K: return Kind{q4_k_block, true, ramp};
    case GgmlType::IQ4_NL: return Kind{iq4_nl_block, false, code_from(kIQ4NLValues)};
    case GgmlType::IQ4_XS: return Kind{iq4_xs_block, false, code_from(kIQ4NLValues)};
    case GgmlType::MXFP4: return Kind{mxfp4_block, false, code_from(kE2M1Doubled)};
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
  s.absmax.resize(static_cast<size_t>(n / kBlock));
  if (k->has_min) s.block_min.resize(static_cast<size_t>(n / kBlock));
  parallel_for_range(stored_blocks, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      k->fn(data.data() + b * tr.type_size, q.packed.data() + b * tr.block_size / 2, s.absmax.data() + b * groups_per,
            k->has_min ? s.block_min.data() + b * groups_per : nullptr);
  });
  return q;
}

Quantized4bit permute_4bit_rows(const Quantized4bit& q, std::span<const int64_t> src_row) {
  const QuantState& s = q.state;
  check(s.shape.size() == 2 && !s.nested && s.shape[1] % s.blocksize == 0 &&
            static_cast<int64_t>(src_row.size()) == s.shape[0],
        "permute_4bit_rows", "needs a 2-D weight of whole blocks per row and one source row per row");
  const int64_t rows = s.shape[0], cols = s.shape[1], bpr = cols / s.blocksize;
  Quantized4bit out = q;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t from = src_row[static_cast<size_t>(r)];
    check(from >= 0 && from < rows, "permute_4bit_rows", "row index out of range");
    std::memcpy(out.packed.data() + r * cols / 2, q.packed.data() + from * cols / 2, static_cast<size_t>(cols / 2));
    std::memcpy(out.state.absmax.data() + r * bpr, s.absmax.data() + from * bpr, static_cast<size_t>(bpr) * 4);
    if (!s.block_min.empty())
      std::memcpy(out.state.block_min.data() + r * bpr, s.block_min.data() + from * bpr, static_cast<size_t>(bpr) * 4);
  }
  return out;
}

}  // namespace qlora
