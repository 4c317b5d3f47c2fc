// The public blockwise functions of quant/blockwise.h: pick the kernel set once from
// simd_level() and split large tensors across threads on block boundaries.
#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "quant/blockwise.h"
#include "quant/blockwise_kernels.h"

namespace qlora {
namespace kernels {

const Quant4Search& quant4_search(QuantType t) {
  static const auto make = [](QuantType type) {
    const auto& code = codebook_4bit(type);
    Quant4Search s{};
    int order[16];
    for (int i = 0; i < 16; ++i) order[i] = i;
    std::stable_sort(order, order + 16, [&](int a, int b) { return code[a] < code[b]; });
    for (int i = 0; i < 15; ++i) s.mid[i] = (code[order[i]] + code[order[i + 1]]) / 2.0f;
    s.mid[15] = std::numeric_limits<float>::infinity();
    for (int i = 0; i < 16; ++i) s.order[i] = order[i];
    int k = 0;
    while (k < 15 && !(s.mid[k] >= 0.0f)) ++k;
    s.zero_code = order[k];
    return s;
  };
  static const Quant4Search nf4 = make(QuantType::NF4), fp4 = make(QuantType::FP4);
  return t == QuantType::NF4 ? nf4 : fp4;
}

const uint8_t* quant8_lut(const float* code256) {
  struct Cache {
    std::array<float, 256> code{};
    std::vector<uint8_t> lut;
  };
  thread_local Cache cache;
  if (!cache.lut.empty() && std::memcmp(cache.code.data(), code256, sizeof(float) * 256) == 0)
    return cache.lut.data();
  cache.lut = build_8bit_lut(code256);
  cache.lut.resize(cache.lut.size() + 4, 0);  // room for 32-bit gathers at the last entry
  std::memcpy(cache.code.data(), code256, sizeof(float) * 256);
  return cache.lut.data();
}

const BlockwiseKernels& scalar_kernels() {
  static const BlockwiseKernels k = {
      quantize_4bit_ref,           dequantize_4bit_f32_ref,     dequantize_4bit_bf16_ref,
      dequantize_4bit_f16_ref,     quantize_8bit_blockwise_ref, dequantize_8bit_blockwise_ref,
  };
  return k;
}

const BlockwiseKernels& kernels_for(SimdLevel level) {
  check(static_cast<int>(level) <= static_cast<int>(cpu_simd_level()), "blockwise kernels",
        std::string("this CPU does not support ") + simd_level_name(level));
  switch (level) {
    case SimdLevel::AVX512: return avx512_kernels();
    case SimdLevel::AVX2: return avx2_kernels();
    case SimdLevel::Scalar: break;
  }
  return scalar_kernels();
}

const BlockwiseKernels& active_kernels() {
  static const BlockwiseKernels& k = kernels_for(simd_level());
  return k;
}

namespace {

// Below this many elements per thread, starting threads costs more than it saves
// (dequantization writes ~4 bytes per element at several GB/s: 64K elements is tens of
// microseconds, an OpenMP fork a few). Quantization does more work per element.
constexpr int64_t kMinDequantPerThread = int64_t{1} << 16;
constexpr int64_t kMinQuantPerThread = int64_t{1} << 14;

// Calls fn(first_element, element_count, first_block) on disjoint runs of whole blocks
// covering [0, n); every run but the last is a multiple of blocksize long, so each run is
// a valid tensor of its own for the kernels.
template <class Fn>
void for_block_ranges(int64_t n, int blocksize, int64_t min_elems_per_thread, Fn&& fn) {
  if (n <= 0) return;
  const int64_t nb = num_blocks(n, blocksize);
  const int64_t min_blocks = std::max<int64_t>(1, min_elems_per_thread / blocksize);
  parallel_for_range(nb, min_blocks, [&](int64_t b0, int64_t b1) {
    const int64_t first = b0 * blocksize;
    const int64_t last = std::min(n, b1 * blocksize);
    fn(first, last - first, b0);
  });
}

void check_args(int64_t n, int blocksize, const char* where) {
  check_blocksize(blocksize, where);
  check(n >= 0, where, "negative element count");
}

}  // namespace

void run_quantize_4bit(const BlockwiseKernels& k, const float* x, int64_t n, int blocksize, QuantType t,
                       uint8_t* packed, float* absmax) {
  check_args(n, blocksize, "quantize_4bit");
  for_block_ranges(n, blocksize, kMinQuantPerThread, [&](int64_t i, int64_t len, int64_t b) {
    k.quantize_4bit(x + i, len, blocksize, t, packed + i / 2, absmax + b);
  });
}

void run_dequantize_4bit_f32(const BlockwiseKernels& k, const uint8_t* packed, const float* absmax, int64_t n,
                             int blocksize, QuantType t, float* out) {
  check_args(n, blocksize, "dequantize_4bit");
  for_block_ranges(n, blocksize, kMinDequantPerThread, [&](int64_t i, int64_t len, int64_t b) {
    k.dequantize_4bit_f32(packed + i / 2, absmax + b, len, blocksize, t, out + i);
  });
}

void run_dequantize_4bit_bf16(const BlockwiseKernels& k, const uint8_t* packed, const float* absmax, int64_t n,
                              int blocksize, QuantType t, uint16_t* out) {
  check_args(n, blocksize, "dequantize_4bit");
  for_block_ranges(n, blocksize, kMinDequantPerThread, [&](int64_t i, int64_t len, int64_t b) {
    k.dequantize_4bit_bf16(packed + i / 2, absmax + b, len, blocksize, t, out + i);
  });
}

void run_dequantize_4bit_f16(const BlockwiseKernels& k, const uint8_t* packed, const float* absmax, int64_t n,
                             int blocksize, QuantType t, uint16_t* out) {
  check_args(n, blocksize, "dequantize_4bit");
  for_block_ranges(n, blocksize, kMinDequantPerThread, [&](int64_t i, int64_t len, int64_t b) {
    k.dequantize_4bit_f16(packed + i / 2, absmax + b, len, blocksize, t, out + i);
  });
}

void run_quantize_8bit_blockwise(const BlockwiseKernels& k, const float* x, int64_t n, int blocksize,
                                 const float* code256, uint8_t* q, float* absmax) {
  check_args(n, blocksize, "quantize_8bit_blockwise");
  for_block_ranges(n, blocksize, kMinQuantPerThread, [&](int64_t i, int64_t len, int64_t b) {
    k.quantize_8bit_blockwise(x + i, len, blocksize, code256, q + i, absmax + b);
  });
}

void run_dequantize_8bit_blockwise(const BlockwiseKernels& k, const uint8_t* q, const float* absmax, int64_t n,
                                   int blocksize, const float* code256, float* out) {
  check_args(n, blocksize, "dequantize_8bit_blockwise");
  for_block_ranges(n, blocksize, kMinDequantPerThread, [&](int64_t i, int64_t len, int64_t b) {
    k.dequantize_8bit_blockwise(q + i, absmax + b, len, blocksize, code256, out + i);
  });
}

}  // namespace kernels

void quantize_4bit(const float* x, int64_t n, int blocksize, QuantType t, uint8_t* packed, float* absmax) {
  kernels::run_quantize_4bit(kernels::active_kernels(), x, n, blocksize, t, packed, absmax);
}

void dequantize_4bit_f32(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                         float* out) {
  kernels::run_dequantize_4bit_f32(kernels::active_kernels(), packed, absmax, n, blocksize, t, out);
}

void dequantize_4bit_bf16(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                          uint16_t* out) {
  kernels::run_dequantize_4bit_bf16(kernels::active_kernels(), packed, absmax, n, blocksize, t, out);
}

void dequantize_4bit_f16(const uint8_t* packed, const float* absmax, int64_t n, int blocksize, QuantType t,
                         uint16_t* out) {
  kernels::run_dequantize_4bit_f16(kernels::active_kernels(), packed, absmax, n, blocksize, t, out);
}

void quantize_8bit_blockwise(const float* x, int64_t n, int blocksize, const float* code256, uint8_t* q,
                             float* absmax) {
  kernels::run_quantize_8bit_blockwise(kernels::active_kernels(), x, n, blocksize, code256, q, absmax);
}

void dequantize_8bit_blockwise(const uint8_t* q, const float* absmax, int64_t n, int blocksize,
                               const float* code256, float* out) {
  kernels::run_dequantize_8bit_blockwise(kernels::active_kernels(), q, absmax, n, blocksize, code256, out);
}

}  // namespace qlora
