#pragma once
// Internal: the inner loops of the Adam updates of this folder, one table of function
// pointers per instruction set, chosen at run time like quant/blockwise_kernels.h.
//
// The loop bodies live once, in adam_kernels_impl.h, and are compiled twice: for baseline
// x86-64 (adam_kernels.cpp) and with AVX2+FMA (adam_kernels_avx2.cpp), where std::fma is
// one instruction instead of a libm call; the AVX2 file also has an intrinsics version of
// the fused 8-bit update. Both perform the same
// IEEE operations in the same order (-ffp-contract=off everywhere; every fusion is an
// explicit std::fma), so they are bit-identical; tests/optim/test_adamw8bit.cpp checks
// every level against the scalar references of adamw8bit.h.
#include <cstdint>
#include <vector>

#include "base/cpu_features.h"
#include "optim/adamw.h"
#include "optim/adamw8bit.h"

namespace qlora::adam_kernels {

// The per-step constants of torch's AdamW (optim/adamw.h).
struct TorchAdamWScalars {
  bool do_decay = false;
  float decay = 1;
  float w1 = 0;  // 1 - β1, the lerp weight
  bool w1_small = true;
  float b2 = 0, one_minus_b2 = 0;
  float neg_step_size = 0;  // -lr / (1 - β1^t)
  float bc2_sqrt = 1;       // sqrt(1 - β2^t)
  float eps = 0;
  static TorchAdamWScalars make(const AdamWConfig& cfg, double lr, int64_t t);
};

// The two dynamic maps and their 65536-entry code tables (quant/blockwise_kernels.h),
// built once for the process, each followed by 4 zero bytes (for 32-bit gathers).
struct Adam8bitTables {
  const float* code1;  // signed dynamic map: first moment
  const float* code2;  // unsigned dynamic map: second moment
  std::vector<uint8_t> lut1, lut2;
};
const Adam8bitTables& adam8bit_tables();

struct AdamKernels {
  // Blocks [b0, b1) (of 256) of the fused 8-bit update of a parameter of n elements.
  void (*adam8bit_blocks)(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1,
                          float* absmax2, const Adam8bitStepScalars& s, int64_t b0, int64_t b1);
  // bnb's 32-bit update of n elements.
  void (*adam32bnb)(float* p, const float* g, int64_t n, float* m, float* v, const Adam8bitStepScalars& s);
  // torch's AdamW update of n elements.
  void (*torch_adamw)(float* p, const float* g, float* m, float* v, int64_t n, const TorchAdamWScalars& s);
};

const AdamKernels& scalar_kernels();
const AdamKernels& avx2_kernels();  // only when cpu_simd_level() >= AVX2
// Kernels of `level` (AVX-512 machines use the AVX2 ones); throws Error when the CPU lacks it.
const AdamKernels& kernels_for(SimdLevel level);
// kernels_for(simd_level()), chosen once.
const AdamKernels& active_kernels();

}  // namespace qlora::adam_kernels
