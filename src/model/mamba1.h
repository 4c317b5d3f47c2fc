#pragma once
// Mamba (1)'s selective scan (transformers' MambaMixer / FalconMambaMixer, llama.cpp's mamba;
// Gu & Dao's S6) as an op of the block program (block_program.h), with its hand-written
// backward. Host memory (the CPU backend).
//
// The layer around it: x | z = in_proj(h); x = silu(conv1d(x) + bias) (delta_net.h's causal conv);
// dt_raw | B | C = x_proj(x) (Falcon-Mamba: each through a weightless RMSNorm); dt = dt_proj(dt_raw)
// (its bias included); y = the scan below; out = out_proj(y * silu(z)).
//
// Unlike Mamba2's scan (mamba2.h: one decay per head) every channel has its own decay per state:
// A is (channels, state). B and C are one per token, shared by every channel.
//
// Rounding in bf16/fp16 (dtype F32: none) follows transformers' torch path (mamba_selective_scan)
// where it touches the inputs: the softplus of the step in the dtype, then the scan in float32.
// What differs in half precision (float32: the same model): the output stays float32
// (transformers rounds S C to the dtype before adding D x); dt_proj's bias is added inside the
// Linear, rounded once (transformers rounds W t, then adds the rounded bias in the dtype); one path
// for prefill and decode (transformers' single-token selective_state_update rounds x D, the sum and
// the gate in the dtype too). Backwards treat rounding as the identity.
//
// Two builds of one source (mamba1_kernels_inl.h): the baseline instruction set's (the reference,
// on the scalar activation kernels) and AVX-512's (on the AVX2 softplus and exp), chosen at run time
// by simd_level() (QLORA_SIMD caps it).
#include <cstdint>

#include "base/cpu_features.h"
#include "base/dtype.h"

namespace qlora {

struct Ssm1Shape {
  int64_t D = 0;  // channels (the layer's inner width)
  int64_t N = 0;  // state size
  int64_t state_floats() const { return D * N; }
};

// Per channel d and token t, from the conv's outputs x (T, D), dt_proj's outputs dt (T, D, its bias
// included) and bc (T, 2N: B then C):
//   step = softplus(dt[t, d]), S[d] = exp(step A[d]) * S[d] + step x[t, d] B_t, A (D, N) = -exp(A_log)
//   y[t, d] = S[d] . C_t + Dskip[d] x[t, d]
// with S `state` ((D, N), updated in place: decoding continues from it) or zeros when null.
// y (T, D) float32.
void ssm1_scan_forward(const Ssm1Shape& sh, float* y, const float* x, const float* dt, const float* bc,
                       const float* A, const float* Dskip, int64_t T, float* state, ComputeDType dtype);
// The gradients of that forward from a zero state over T tokens, ACCUMULATED (+=) into dx (T, D),
// ddt (T, D) and dbc (T, 2N). A and Dskip are frozen (no gradients).
void ssm1_scan_backward(const Ssm1Shape& sh, float* dx, float* ddt, float* dbc, const float* dy, const float* x,
                        const float* dt, const float* bc, const float* A, const float* Dskip, int64_t T,
                        ComputeDType dtype);
// The mixer's dt / B / C RMSNorms (Falcon-Mamba's weightless ones, Jamba's dt_layernorm, b_layernorm,
// c_layernorm): per token, each of `parts` consecutive segments of `width` normalized over itself,
// out = round(w_p * round(x * rstd)) as transformers' RMSNorms round (w (parts * width): each
// part's weights); rstd (T * parts) kept when not null. Backward ACCUMULATES into din (weights
// frozen; rounding as the identity), REQUIRES the forward's rstd.
void ssm1_norm_forward(float* out, float* rstd, const float* in, const float* w, int64_t T, int64_t parts, int64_t width,
                       float eps, ComputeDType dtype);
void ssm1_norm_backward(float* din, const float* dout, const float* in, const float* w, const float* rstd, int64_t T,
                        int64_t parts, int64_t width);

// Channels a thread takes at a time, and the floats of scratch one thread's backward uses for T
// tokens (the block's states and decays at every token; for the memory planner).
inline constexpr int64_t kSsm1Block = 8;
inline int64_t ssm1_backward_thread_floats(const Ssm1Shape& sh, int64_t T) {
  return 2 * T * kSsm1Block * sh.N + 2 * T * kSsm1Block + 2 * T * sh.N + 2 * kSsm1Block * sh.N;
}

struct Mamba1Kernels {
  decltype(&ssm1_scan_forward) scan_forward;
  decltype(&ssm1_scan_backward) scan_backward;
};
const Mamba1Kernels& scalar_mamba1_kernels();
const Mamba1Kernels& avx512_mamba1_kernels();  // only when cpu_simd_level() >= AVX512
const Mamba1Kernels& mamba1_kernels_for(SimdLevel level);

}  // namespace qlora
