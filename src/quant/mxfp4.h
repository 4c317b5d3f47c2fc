#pragma once
// MXFP4, the format gpt-oss's checkpoints keep their experts in (OCP microscaling FP4, as
// transformers' integrations/mxfp4.py reads it): a tensor (..., R, C) is stored as
//   <name>_blocks  uint8 (..., R, C / 32, 16): 32 FP4 (E2M1) codes per group, two per byte,
//                  the low nibble first;
//   <name>_scales  uint8 (..., R, C / 32): each group's power of two, biased by 127;
// value = kFp4Values[code] * 2^(scale - 127). Every such value is a float32 exactly (down to
// its subnormals) up to scale 252; from 253 on the larger codes overflow, which a real
// checkpoint never holds: the decoder counts them for the reader to refuse the file.
#include <cstdint>

namespace qlora {

// The 16 E2M1 values: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (codes 8..15).
extern const float kFp4Values[16];

// Decodes `rows` rows of `groups` groups each: out (rows, groups * 32). Returns how many
// values overflowed float32 (0 for any real checkpoint).
int64_t mxfp4_decode_rows(const uint8_t* blocks, const uint8_t* scales, int64_t rows, int64_t groups, float* out);

}  // namespace qlora
