// LoRA dropout masks: the scalar definition and the run-time choice of kernel.
#include "lora/dropout_mask.h"

#include "base/cpu_features.h"
#include "lora/lora.h"

namespace qlora {

void fill_dropout_mask_scalar(float* mask, int64_t t0, int64_t t1, int64_t in, uint64_t call_seed, float p,
                              float keep_scale) {
  for (int64_t t = t0; t < t1; ++t) {
    LoraRng row(dropout_row_seed(call_seed, t));
    float* m = mask + t * in;
    int64_t i = 0;
    for (; i + 2 <= in; i += 2) {
      const uint64_t r = row.next_u64();
      const float u0 = static_cast<float>((r >> 8) & 0xFFFFFFu) * 0x1.0p-24f;
      const float u1 = static_cast<float>(r >> 40) * 0x1.0p-24f;
      m[i] = u0 < p ? 0.f : keep_scale;
      m[i + 1] = u1 < p ? 0.f : keep_scale;
    }
    if (i < in) m[i] = row.next_float() < p ? 0.f : keep_scale;
  }
}

void fill_dropout_mask(float* mask, int64_t t0, int64_t t1, int64_t in, uint64_t call_seed, float p,
                       float keep_scale) {
  if (simd_level() >= SimdLevel::AVX2)
    kernels::fill_dropout_mask_avx2(mask, t0, t1, in, call_seed, p, keep_scale);
  else
    fill_dropout_mask_scalar(mask, t0, t1, in, call_seed, p, keep_scale);
}

}  // namespace qlora
