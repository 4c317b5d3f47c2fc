#pragma once
// Mamba2's selective state space layer (transformers' Mamba2Mixer / BambaMixer /
// GraniteMoeHybridMambaLayer, the "SSD" of Dao & Gu) as ops of the block program
// (block_program.h), each with its hand-written backward. Host memory (the CPU backend).
//
// The layer: z | xBC | dt = in_proj(h); xBC = silu(conv1d(xBC) + bias) (delta_net.h's causal
// conv); x | B | C = xBC; y = the scan below; out = out_proj(norm(y, z)).
//
// The scan comes in two builds of one source (mamba2_kernels_inl.h): the baseline instruction
// set's (the reference) and AVX-512's, chosen at run time by simd_level() (QLORA_SIMD caps it).
//
// Rounding follows transformers' torch path (mamba2_chunk_scan, which its training and prefill
// run) in bf16/fp16 (dtype F32: none): dt + dt_bias and its softplus in the dtype, then the scan
// in float32 on the (rounded) conv outputs; y stays float32 into the norm, whose product with
// its weight is rounded once. Backwards treat rounding as the identity. Decoding a token from a
// cache rounds the same way (one path for prefill and decode); transformers' own single-token path
// (mamba2_selective_state_update) rounds more in bf16/fp16 (dt * B, the state before its product
// with C, and the norm's input), so bf16 greedy decoding can part from transformers' generate where
// two tokens are near-tied (float32: the same model).
#include <cstdint>
#include <limits>

#include "base/cpu_features.h"
#include "base/dtype.h"

namespace qlora {

struct SsmShape {
  int64_t H = 0, P = 0;  // heads and their size: x is (H * P) = the layer's inner width
  int64_t G = 1, N = 0;  // groups of B and C (H a multiple of G) and the state size
  // time_step_limit: each step is clamped to [dt_min, dt_max] (transformers' default (0, inf)).
  float dt_min = 0.0f, dt_max = std::numeric_limits<float>::infinity();
  int64_t inner() const { return H * P; }
  int64_t xbc_width() const { return H * P + 2 * G * N; }
  int64_t state_floats() const { return H * P * N; }
};

// Per head h (group g = h / (H / G)) and token t, from xbc = x | B | C (T, xbc_width) and the raw
// time steps dt (T, H):
//   step = clamp(softplus(dt[t, h] + dt_bias[h]), dt_min, dt_max), a = exp(step * -exp(A_log[h]))
//   S = a S + step x_t B_t^T   (S the (P, N) state of the head)
//   y[t, h] = S C_t + D[h] x_t
// with S `state` ((H, P, N), updated in place: decoding continues from it) or zeros when null.
// y (T, H * P), float32 (transformers hands the norm the scan's float32 output).
void ssm_scan_forward(const SsmShape& sh, float* y, const float* xbc, const float* dt, const float* A_log,
                      const float* dt_bias, const float* D, int64_t T, float* state, ComputeDType dtype);
// The gradients of the forward from a zero state over T tokens, ACCUMULATED (+=) into dxbc
// (T, xbc_width) and ddt (T, H). A_log, dt_bias and D are frozen (no gradients). Recomputes
// the states a chunk at a time (a checkpoint every kSsmChunk tokens).
inline constexpr int64_t kSsmChunk = 16;
void ssm_scan_backward(const SsmShape& sh, float* dxbc, float* ddt, const float* dy, const float* xbc, const float* dt,
                       const float* A_log, const float* dt_bias, const float* D, int64_t T, ComputeDType dtype);

// ---- the gated RMSNorm (MambaRMSNormGated with norm_before_gate false) --------------------
// Per token and each of G groups of D / G columns: u = y * silu(z), out = round(w * u * rstd),
// rstd = 1 / sqrt(mean(u^2) + eps) (kept in rstd (T, G) when not null). z is the gate.
void ssm_norm_forward(float* out, float* rstd, const float* y, const float* z, const float* w, int64_t T, int64_t D,
                      int64_t G, float eps, ComputeDType dtype);
// (accumulates dy and dz; REQUIRES the rstd the forward kept)
void ssm_norm_backward(float* dy, float* dz, const float* dout, const float* y, const float* z, const float* w,
                       const float* rstd, int64_t T, int64_t D, int64_t G);

struct Mamba2Kernels {
  decltype(&ssm_scan_forward) scan_forward;
  decltype(&ssm_scan_backward) scan_backward;
};
const Mamba2Kernels& scalar_mamba2_kernels();
const Mamba2Kernels& avx512_mamba2_kernels();  // only when cpu_simd_level() >= AVX512
const Mamba2Kernels& mamba2_kernels_for(SimdLevel level);

}  // namespace qlora
