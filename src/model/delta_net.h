#pragma once
// The gated DeltaNet of hybrid models' linear-attention layers (Qwen3.5, Qwen3-Next;
// transformers' Qwen3_5GatedDeltaNet), as four ops of the block program (block_program.h),
// each with its hand-written backward. Host memory (the CPU backend); every function is the
// plain reference and the fast path at once: loops the compiler vectorizes, OpenMP over
// channels or heads.
//
// The conv and the rule, the hot loops, come in two builds of one source
// (delta_net_kernels_inl.h): the baseline instruction set's (the reference) and AVX-512's,
// chosen at run time by simd_level() (QLORA_SIMD caps it).
//
// Rounding follows transformers in bf16/fp16 (dtype F32: none): the conv's output is rounded
// before and after its SiLU; the decay and the rule itself run in float32 (transformers casts
// q, k, v, beta and g to float32 inside the rule) with beta = sigmoid(b) rounded first; the
// rule's output is rounded once. Backwards treat rounding as the identity (autograd's .to).
#include <cstdint>

#include "base/cpu_features.h"
#include "base/dtype.h"

namespace qlora {

// ---- causal depthwise conv1d (+ SiLU) (linear_attn.conv1d, LFM2's conv.conv, Mamba2's conv1d) ---
// out (T, C) = silu(y) (silu false: y, LFM2's short conv), y[t, c] = bias[c] + sum_j w[c, j] x[t + j - (K - 1), c]
// over the K taps (bias null: none; Mamba2's conv has one), the inputs before t = 0 taken from `state` ((K - 1, C): the previous K - 1
// inputs, oldest first), or zeros when state is null. With update_state (REQUIRES state) the
// state becomes the last K - 1 inputs of prev | x (decoding continues from it).
// Rounding: silu(round(y)) rounded (transformers' conv output in the dtype, then its SiLU), or
// round(y).
void causal_conv_forward(float* out, const float* x, int64_t T, int64_t C, const float* w, const float* bias, int64_t K,
                         float* state, bool update_state, bool silu, ComputeDType dtype);
// dx (T, C) += d loss / d x for the forward from zeros (a training sequence), given dout. (The
// taps and bias are frozen: no gradients.)
void causal_conv_backward(float* dx, const float* dout, const float* x, int64_t T, int64_t C, const float* w,
                          const float* bias, int64_t K, bool silu, ComputeDType dtype);

// ---- the gated delta rule ---------------------------------------------------------------
struct DeltaRuleShape {
  int64_t Hk = 0, Hv = 0;  // key heads (also the queries'), value heads (a multiple of Hk)
  int64_t dk = 0, dv = 0;  // their sizes
  int64_t qkv_width() const { return 2 * Hk * dk + Hv * dv; }
  int64_t state_floats() const { return Hv * dk * dv; }
};
// Per token t and value head h (key head h / (Hv / Hk)), from qkv = q | k | v (T, qkv_width):
//   q = l2norm(q) / sqrt(dk), k = l2norm(k)  (x * rsqrt(sum x^2 + 1e-6))
//   beta = sigmoid(b[t, h]), g = -exp(A_log[h]) * softplus(a[t, h] + dt_bias[h])
//   S = exp(g) S;  S += k ((v - S^T k) beta)^T;  out[t, h] = S^T q
// with S the (dk, dv) state of the head: `state` ((Hv, dk, dv), updated in place) or zeros
// when null. out (T, Hv * dv).
void delta_rule_forward(const DeltaRuleShape& sh, float* out, const float* qkv, const float* b, const float* a,
                        const float* A_log, const float* dt_bias, int64_t T, float* state, ComputeDType dtype);
// The gradients of the forward from a zero state over T tokens, ACCUMULATED (+=, as every
// backward of ops_backward.h) into dqkv (T, qkv_width), db and da (T, Hv). A_log and dt_bias are frozen (no gradients).
// Recomputes the states a chunk at a time (a checkpoint every kDeltaRuleChunk tokens), so its
// scratch is O(T / chunk + chunk) states per thread, allocated here.
inline constexpr int64_t kDeltaRuleChunk = 16;
void delta_rule_backward(const DeltaRuleShape& sh, float* dqkv, float* db, float* da, const float* dout,
                         const float* qkv, const float* b, const float* a, const float* A_log, const float* dt_bias,
                         int64_t T, ComputeDType dtype);

// ---- the gated RMSNorm (linear_attn.norm, Qwen3_5RMSNormGated) -------------------------
// Per row of D: out = round(round(w * round(x rstd)) * silu(z)), rstd = 1 / sqrt(mean(x^2) + eps)
// (kept in rstd, one per row). rows = T * heads.
void gated_norm_forward(float* out, float* rstd, const float* x, const float* z, const float* w, int64_t rows,
                        int64_t D, float eps, ComputeDType dtype);
// (accumulates dx and dz)
void gated_norm_backward(float* dx, float* dz, const float* dout, const float* x, const float* z, const float* w,
                         const float* rstd, int64_t rows, int64_t D, ComputeDType dtype);

// ---- gated attention's output gate ------------------------------------------------------
// out = round(x * round(sigmoid(g))) over n values; the backward accumulates dx and dg.
void output_gate_forward(float* out, const float* x, const float* g, int64_t n, ComputeDType dtype);
void output_gate_backward(float* dx, float* dg, const float* dout, const float* x, const float* g, int64_t n,
                          ComputeDType dtype);

struct DeltaNetKernels {
  decltype(&causal_conv_forward) conv_forward;
  decltype(&causal_conv_backward) conv_backward;
  decltype(&delta_rule_forward) rule_forward;
  decltype(&delta_rule_backward) rule_backward;
};
const DeltaNetKernels& scalar_delta_net_kernels();
const DeltaNetKernels& avx512_delta_net_kernels();  // only when cpu_simd_level() >= AVX512
const DeltaNetKernels& delta_net_kernels_for(SimdLevel level);

}  // namespace qlora
