// MXFP4 decoding (quant/mxfp4.h). Scalar: it runs once per weight, when a model loads.
#include "quant/mxfp4.h"

#include <cmath>

namespace qlora {

const float kFp4Values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

int64_t mxfp4_decode_rows(const uint8_t* blocks, const uint8_t* scales, int64_t rows, int64_t groups, float* out) {
  int64_t overflows = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t i = r * groups + g;
      const int e = static_cast<int>(scales[i]) - 127;
      const uint8_t* b = blocks + i * 16;
      float* o = out + i * 32;
      for (int k = 0; k < 16; ++k) {
        o[2 * k] = std::ldexp(kFp4Values[b[k] & 0x0F], e);
        o[2 * k + 1] = std::ldexp(kFp4Values[b[k] >> 4], e);
        overflows += std::isinf(o[2 * k]) + std::isinf(o[2 * k + 1]);
      }
    }
  return overflows;
}

}  // namespace qlora
