#pragma once
// The CUDA kernels of the training step's backward pass and optimizer, as host functions
// that launch them on a stream. Same contracts as their CPU references, which the tests
// compare them with (model/ops_backward.h, optim/adam_kernels.h, optim/grad_clip.h):
// backward functions ACCUMULATE (+=) into their input gradients unless they say otherwise.
// All pointers are device pointers.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels.h"

namespace qlora {
struct AdamWConfig;
}

namespace qlora::cuda {

// The per-step constants of torch's AdamW (adam_kernels::TorchAdamWScalars, copied field by
// field: the .cu files are C++17 and cannot include the optimizer headers).
struct AdamWStepScalars {
  bool do_decay = false, w1_small = true;
  float decay = 1, w1 = 0, b2 = 0, one_minus_b2 = 0, neg_step_size = 0, bc2_sqrt = 1, eps = 0;
};
// TorchAdamWScalars::make(cfg, lr, step), as the CPU's update computes them.
AdamWStepScalars adamw_step_scalars(const AdamWConfig& cfg, double lr, int64_t step);

// ops_backward.h rmsnorm_backward without the (frozen) weight gradient:
// dinp (T, C) += r w dout - (r^3 / C) x Σ_j w_j dout_j x_j (the sum in float64).
void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t T, int64_t C, cudaStream_t s);
// The same with ops_backward.h's weight_offset (Gemma: the scale is 1 + w).
void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t T, int64_t C, float weight_offset, cudaStream_t s);

// In place on dx (T, NH, HS): the rotation by the opposite angle (ops_backward.h).
void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, cudaStream_t s);
// The same on the first rot dims of each head (partial rotary; rot 0 means HS).
void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                   bool interleaved, cudaStream_t s);
void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                   cudaStream_t s);

// dgate (N) += dout · up · σ(g) (1 + g (1 - σ(g)));  dup (N) += dout · silu(g).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N,
                     cudaStream_t s);

// attention_forward that also writes the probabilities att (NH, T, Tk) (zeros outside each
// query's window) for the backward: Tk = q_pos0 + T keys.
void attention_forward_train(float* out, float* att, const float* q, const float* k, const float* v, int64_t T,
                             int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start,
                             cudaStream_t s);
// The same with a family's scale, softcap or ALiBi (cuda/kernels.h AttentionOptions).
void attention_forward_train(float* out, float* att, const float* q, const float* k, const float* v, int64_t T,
                             int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start,
                             const AttentionOptions& o, cudaStream_t s);

// ops_backward.h attention_backward: dq (T, NH*HS) +=, dk, dv (Tk, NKV*HS) +=; datt (NH, T,
// Tk) scratch, written with d loss / d(q·k) (masked entries 0). Deterministic (no atomics):
// one pass per query row for dq, one per key row for dk and dv.
void attention_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, int64_t T, int64_t q_pos0, int64_t NH,
                        int64_t NKV, int64_t HS, const int32_t* key_start, cudaStream_t s);
// The same with the forward's scale (0: 1/sqrt(HS)) and softcap (0: none; the raw scores are
// recomputed from q and k for tanh's derivative). ALiBi needs nothing more: its bias does not
// depend on q or k.
void attention_backward(float* dq, float* dk, float* dv, float* datt, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, int64_t T, int64_t q_pos0, int64_t NH,
                        int64_t NKV, int64_t HS, const int32_t* key_start, float scale, float softcap,
                        cudaStream_t s);

// ops_backward.h cross_entropy_forward_backward, targets already validated: row_loss (T)
// gets each row's loss (0 where ignored), dlogits (T, V) is WRITTEN with
// (softmax - onehot) · inv_valid (zeros on ignored rows); may alias logits.
void cross_entropy_forward_backward(float* row_loss, float* dlogits, const float* logits, const int32_t* targets,
                                    int64_t T, int64_t V, float inv_valid, int ignore_index, cudaStream_t s);

// torch's AdamW update of n elements, bit-identical to the CPU's (optim/adam_kernels.h):
// the same float32 operations, fused exactly where torch fuses them.
void adamw_torch(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStepScalars& sc,
                 cudaStream_t s);

// *out (one double, device) += Σ g_i² over n elements (float64 accumulation).
void sum_squares(double* out, const float* g, int64_t n, cudaStream_t s);

// x (n) *= c.
void scale(float* x, float c, int64_t n, cudaStream_t s);

// LoRA dropout multipliers, the very numbers lora_forward (lora/lora.cpp) draws on the CPU
// for the same call seed: row t comes from LoraRng(call_seed ^ (0x9E3779B97F4A7C15 · (t+1))),
// two 24-bit uniforms per 64-bit draw; mask = u < p ? 0 : 1/(1-p). mask (T, in).
void lora_dropout_mask(float* mask, int64_t T, int64_t in, uint64_t call_seed, float p, cudaStream_t s);

// out (n) = a · b (may alias a).
void multiply(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);
// y (n) += a · b (rounded product, then rounded sum: no fused multiply-add).
void multiply_add(float* y, const float* a, const float* b, int64_t n, cudaStream_t s);
// out (M, C) = rows idx[i] of x (T, C).
void gather_rows(float* out, const float* x, const int32_t* idx, int64_t M, int64_t C, cudaStream_t s);
// out (T, C) rows idx[i] = x (M, C) row i (the other rows are left as they are).
void scatter_rows(float* out, const float* x, const int32_t* idx, int64_t M, int64_t C, cudaStream_t s);
// out (n) = 16-bit values (bf16 when bf16 is true, else fp16) as float32.
void half_to_f32(float* out, const uint16_t* x, int64_t n, bool bf16, cudaStream_t s);

}  // namespace qlora::cuda
