// llama.cpp's reference quantizers (ggml-quants.c, quantize_row_*_ref), rewritten from
// their published definition: the search for each block's scale and minimum (make_qkx2_quants
// for Q4_K, make_qx_quants for Q6_K), the 6-bit packing of the K-quants' sub-block scales,
// and the final re-quantization against the rounded fp16 scales. The float expressions keep
// ggml's order of operations: do not "simplify" them.
#include "formats/ggml_quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "base/error.h"
#include "base/float_formats.h"
#include "formats/gguf_writer.h"

namespace qlora {

namespace {

constexpr float kGroupMaxEps = 1e-15f;

// ggml's nearest_int: round to nearest (ties to even) through the float mantissa, valid for
// |f| <= 4194303.
inline int nearest_int(float f) {
  const float v = f + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

// Q4_K's search of one 32-element sub-block: scale and minimum (returned negated in
// *the_min) minimizing the weighted squared error, trying nstep+1 candidate scales.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = diff * diff;
    const float w = weights[i];
    best_error += w * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = diff * diff;
        const float w = weights[i];
        cur_error += w * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Q6_K's search of one 16-element sub-block (ggml's rmse_type 1, weights x²): a signed
// scale trying 19 candidates around nmax / max.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

template <class Block>
std::vector<uint8_t> blocks_out(int64_t n, int block) {
  return std::vector<uint8_t>(static_cast<size_t>(n / block) * sizeof(Block));
}

void check_multiple(int64_t n, int block, const char* type) {
  if (n % block != 0)
    fail("ggml quantize", std::string(type) + " needs a multiple of " + std::to_string(block) + " elements (got " +
                              std::to_string(n) + ")");
}

}  // namespace

std::vector<uint8_t> quantize_q5_0(const float* x, int64_t n) {
  check_multiple(n, kQK5_0, "Q5_0");
  std::vector<uint8_t> out = blocks_out<BlockQ5_0>(n, kQK5_0);
  for (int64_t b = 0; b < n / kQK5_0; ++b) {
    const float* v = x + b * kQK5_0;
    float amax = 0, max = 0;
    for (int j = 0; j < kQK5_0; ++j)
      if (amax < std::fabs(v[j])) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    const float d = max / -16;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    BlockQ5_0 blk{};
    blk.d = f32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const float x0 = v[j] * id;
      const float x1 = v[kQK5_0 / 2 + j] * id;
      const auto xi0 = static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(x0 + 16.5f))));
      const auto xi1 = static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(x1 + 16.5f))));
      blk.qs[j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
      qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
      qh |= ((xi1 & 0x10u) >> 4) << (j + kQK5_0 / 2);
    }
    std::memcpy(blk.qh, &qh, sizeof qh);
    std::memcpy(out.data() + b * sizeof(BlockQ5_0), &blk, sizeof blk);
  }
  return out;
}

std::vector<uint8_t> quantize_q4_k(const float* x, int64_t n) {
  check_multiple(n, kQK_K, "Q4_K");
  std::vector<uint8_t> out = blocks_out<BlockQ4_K>(n, kQK_K);
  uint8_t L[kQK_K];
  uint8_t Laux[32];
  float weights[32];
  float mins[kQK_K / 32];
  float scales[kQK_K / 32];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    BlockQ4_K y{};
    float max_scale = 0;  // as the min is deducted, scales are always positive
    float max_min = 0;
    for (int j = 0; j < kQK_K / 32; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
      const float scale = scales[j];
      if (scale > max_scale) max_scale = scale;
      const float min = mins[j];
      if (min > max_min) max_min = min;
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < kQK_K / 32; ++j) {
      auto ls = static_cast<uint8_t>(nearest_int(inv_scale * scales[j]));
      auto lm = static_cast<uint8_t>(nearest_int(inv_min * mins[j]));
      ls = std::min<uint8_t>(63, ls);
      lm = std::min<uint8_t>(63, lm);
      if (j < 4) {
        y.scales[j] = ls;
        y.scales[j + 4] = lm;
      } else {
        y.scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
        y.scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
        y.scales[j - 0] |= static_cast<uint8_t>((lm >> 4) << 6);
      }
    }
    y.d = f32_to_fp16(max_scale / 63.f);
    y.dmin = f32_to_fp16(max_min / 63.f);
    uint8_t sc, m;
    for (int j = 0; j < kQK_K / 32; ++j) {
      get_scale_min_k4(j, y.scales, &sc, &m);
      const float d = fp16_to_f32(y.d) * sc;
      if (d == 0) continue;
      const float dm = fp16_to_f32(y.dmin) * m;
      for (int ii = 0; ii < 32; ++ii) {
        int l = nearest_int((x[32 * j + ii] + dm) / d);
        l = std::max(0, std::min(15, l));
        L[32 * j + ii] = static_cast<uint8_t>(l);
      }
    }
    uint8_t* q = y.qs;
    for (int j = 0; j < kQK_K; j += 64) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      q += 32;
    }
    std::memcpy(out.data() + i * sizeof(BlockQ4_K), &y, sizeof y);
  }
  return out;
}

std::vector<uint8_t> quantize_q6_k(const float* x, int64_t n) {
  check_multiple(n, kQK_K, "Q6_K");
  std::vector<uint8_t> out = blocks_out<BlockQ6_K>(n, kQK_K);
  int8_t L[kQK_K];
  float scales[kQK_K / 16];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    BlockQ6_K y{};
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < kQK_K / 16; ++ib) {
      const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      const float abs_scale = std::fabs(scale);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scale;
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      y.d = f32_to_fp16(0.f);  // the whole block zero
      std::memcpy(out.data() + i * sizeof(BlockQ6_K), &y, sizeof y);
      continue;
    }
    const float iscale = -128.f / max_scale;
    y.d = f32_to_fp16(1 / iscale);
    for (int ib = 0; ib < kQK_K / 16; ++ib)
      y.scales[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < kQK_K / 16; ++j) {
      const float d = fp16_to_f32(y.d) * y.scales[j];
      if (d == 0) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int(x[16 * j + ii] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + ii] = static_cast<int8_t>(l + 32);
      }
    }
    uint8_t* ql = y.ql;
    uint8_t* qh = y.qh;
    for (int j = 0; j < kQK_K; j += 128) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF;
        const uint8_t q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF;
        const uint8_t q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = static_cast<uint8_t>(q1 | (q3 << 4));
        ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
        qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                     ((L[j + l + 96] >> 4) << 6));
      }
      ql += 64;
      qh += 32;
    }
    std::memcpy(out.data() + i * sizeof(BlockQ6_K), &y, sizeof y);
  }
  return out;
}

std::vector<uint8_t> quantize_ggml(GgmlType t, const float* x, int64_t n) {
  switch (t) {
    case GgmlType::Q4_0: check_multiple(n, kQK4_0, "Q4_0"); return quantize_q4_0(x, n);
    case GgmlType::Q8_0: check_multiple(n, kQK8_0, "Q8_0"); return quantize_q8_0(x, n);
    case GgmlType::Q5_0: return quantize_q5_0(x, n);
    case GgmlType::Q4_K: return quantize_q4_k(x, n);
    case GgmlType::Q6_K: return quantize_q6_k(x, n);
    default: break;
  }
  fail("ggml quantize", "no quantizer for type " + std::string(ggml_traits(t).name));
}

}  // namespace qlora
