#pragma once
// The backward passes of the forward ops in ops.h, one free function each (llm.c style):
// input gradients first, then the output gradient, then the forward's inputs and caches,
// then dimensions. Every backward ACCUMULATES into its input gradients (+=), so a tensor
// that feeds two ops simply receives both contributions; callers zero gradient buffers
// once before the backward pass. Shapes are in the comments, with the names of ops.h:
// T = tokens, C = hidden size, NH / NKV = query / key-value heads, HS = head size.
//
// Embeddings are frozen in QLoRA, so there is no embedding_backward. Forward-side rounding
// to a bf16/fp16 compute dtype (rmsnorm_forward's `dtype`, round_activations) is treated
// as the identity by the backward (straight-through), as autograd does for .to(dtype).
//
// Residual connections need no function: for out = a + b the output gradient flows
// unchanged to both inputs (da += dout, db += dout); residual_backward spells it out.
#include <cstdint>

#include "model/model_spec.h"

namespace qlora {

// RMSNorm, forward out = weight * (inp * rstd), rstd = 1 / sqrt(mean(inp^2) + eps) per row.
// dinp (T, C) += d out / d inp applied to dout (T, C);
// dweight (C) += sum_t dout * inp * rstd when not null (the weight is frozen in QLoRA).
// inp (T, C) and weight (C) are the forward's inputs, rstd (T) its cache.
// dinp must not alias dout or inp. weight_offset as rmsnorm_forward's (the scale is
// weight_offset + weight).
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t T, int64_t C, float weight_offset = 0.0f);

// RoPE is a rotation, so its backward is the rotation by the opposite angle, in place:
// dx (T, NH, HS) holds d loss / d rotated on entry and d loss / d unrotated on return.
// cos/sin (T, HS/2) are the tables the forward used. (Not accumulating: it transforms the
// gradient of q or k in place, like the forward transforms q or k.)
// rot as rope_forward's (the pass-through dims' gradient is unchanged).
void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot = 0,
                   bool interleaved = false);

// Causal grouped-query attention, the backward of attention_forward with the same layout:
// dq (T, NH*HS) += ...; dk, dv (Tk, NKV*HS) += ... (each kv head sums the contributions
// of its NH/NKV query heads; keys no query attends to get nothing);
// datt_scratch (NH, T, Tk) is scratch, overwritten (on return it holds d loss / d (q·k),
// i.e. the gradient of the scaled scores times the scale, masked entries 0);
// dout (T, NH*HS); q (T, NH*HS), k, v (Tk, NKV*HS) the forward's inputs (rotated q and k);
// att (NH, T, Tk) the probabilities the forward cached (REQUIRED, not null).
// key_start, scale, softcap: as attention_forward's (the same values the forward used; with a
// softcap the raw scores are recomputed from q and k for the tanh's derivative).
// REQUIRES q_pos0 + T <= Tk, NH % NKV == 0. Gradient buffers must not alias the inputs.
// raw_scratch: attention_backward_scratch_floats(T, Tk, softcap) floats (null when that is 0),
// the softcap's recomputed scores of one head.
int64_t attention_backward_scratch_floats(int64_t T, int64_t Tk, float softcap);
void attention_backward(float* dq, float* dk, float* dv, float* datt_scratch, float* raw_scratch, const float* dout,
                        const float* q,
                        const float* k, const float* v, const float* att, int64_t T, int64_t Tk, int64_t q_pos0,
                        int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start = nullptr, float scale = 0.0f,
                        float softcap = 0.0f);

// SwiGLU, forward out = silu(gate) * up:
// dgate (N) += dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)));
// dup (N) += dout * silu(gate). dout, gate, up (N).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N);

// GeGLU, forward out = gelu_tanh(gate) * up (ops.h geglu_forward):
// dgate (N) += dout * up * gelu_tanh'(gate); dup (N) += dout * gelu_tanh(gate).
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N);

// LayerNorm (ops.h layernorm_forward), w.r.t. its input only (weight and bias are frozen):
// dinp (T, C) += rstd (w dout - mean(w dout) - xhat mean(w dout xhat)), xhat = (x - mean) rstd.
// stats (T, 2) are the forward's (mean, rstd). dinp must not alias dout or inp.
void layernorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* stats,
                        int64_t T, int64_t C, float weight_offset = 0.0f);
// out = act(x): dx (N) += dout * act'(x) (xp: xIELU's parameters, as for activation_forward; its
// parameters themselves are frozen: no gradient for them).
void activation_backward(float* dx, const float* dout, const float* x, int64_t N, Activation act,
                         const XieluParams* xp = nullptr);
// out = a + b: da (N) += dout, db (N) += dout (either may be null).
void residual_backward(float* da, float* db, const float* dout, int64_t N);

// Linear layer Y (T, out) = X (T, in) · Wᵀ with W (out, in) row-major, backward w.r.t. X:
// dinp (T, in) += dout (T, out) · W (out, in).
// `dout_stride` is the distance between rows of dout (0 means `out`), so a caller holding
// only rows [o0, o1) of W (a 4-bit weight dequantized a slab at a time) can pass
// W = those rows, dout = dout + o0, out = o1 - o0, dout_stride = the full out.
// Multi-threaded (OpenMP). From 8 tokens up it is one sgemm_nn (model/gemm.h: oneDNN when
// built with it; else the SIMD gemm_rows kernel of linear_kernels.h on W transposed 64
// columns at a time, thread-local scratch of 64 * (out + T) floats); fewer tokens use axpy
// rows. w_stride: the distance between W's rows (0: in); a tile dequantized for this call
// should use sgemm_padded_ld(in) (model/gemm.h says why). dinp must not alias dout or W.
void matmul_backward_input(float* dinp, const float* dout, const float* W, int64_t T, int64_t in, int64_t out,
                           int64_t dout_stride = 0, int64_t w_stride = 0);

// The same backward w.r.t. the weight (LoRA's A and B): dW (out, in) += dYᵀ · X,
// i.e. dW[o, i] += sum_t dout[t, o] * inp[t, i]. dout (T, out), inp (T, in).
// Multi-threaded (OpenMP): one sgemm_tn (oneDNN), or without it the same gemm_rows kernel
// on doutᵀ (a temporary of out * T floats) and inp transposed 64 columns at a time.
// dW must not alias dout or inp.
void matmul_backward_weight(float* dW, const float* dout, const float* inp, int64_t T, int64_t in, int64_t out);

// Scalar single-threaded definitions of the two above (the tests' reference).
void matmul_backward_input_ref(float* dinp, const float* dout, const float* W, int64_t T, int64_t in, int64_t out,
                               int64_t dout_stride = 0);
void matmul_backward_weight_ref(float* dW, const float* dout, const float* inp, int64_t T, int64_t in,
                                int64_t out);

// Softmax cross-entropy over logits (T, V) with integer targets (T), fused with its backward.
// Returns the mean loss over positions whose target != ignore_index (0 when there are none;
// PyTorch would return NaN). losses (T) receives each position's loss (0 where ignored)
// when not null. dlogits (T, V) is WRITTEN (not accumulated) with the gradient of the mean
// loss: (softmax(logits) - onehot(target)) / num_valid, and zeros on ignored rows.
// dlogits may be the same pointer as logits (in place, to save a (T, V) buffer).
// Throws Error when a target is neither ignore_index nor in [0, V).
float cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits, const int* targets,
                                     int64_t T, int64_t V, int ignore_index = -100);

}  // namespace qlora
