#pragma once
// The CUDA kernels the model families beyond Llama need (Gemma, GPT-2, GPT-NeoX, OPT, Phi,
// Falcon, BLOOM): the ops of model/backend.h that cuda/kernels.h and cuda/kernels_train.h
// do not cover (Gemma's (1 + w) RMSNorm, partial rotary and the attention options are
// overloads there), forward and backward, as host functions that launch them on a stream.
// Each has the contract of its CPU reference (named per function), which
// tests/cuda/test_cuda_family_kernels.cpp compares it with: bit for bit where the CPU's
// result is a fixed sequence of float32 operations (slices, scaling, rotary, LayerNorm's
// element-wise part), within a few ulps where a transcendental function (tanh, erf, exp)
// comes from CUDA's library instead of glibc. Backward functions ACCUMULATE (+=) into their
// input gradients unless they say otherwise. All pointers are device pointers.
//
// (The .cu files are C++17 and do not include the model headers: the activation is named by
// this header's own enum, which the backend maps from model_spec.h's Activation.)
#include <cuda_runtime_api.h>

#include <cstdint>

#include "base/dtype.h"

namespace qlora::cuda {

// model_spec.h Activation, value for value.
enum class ActKind : uint8_t { Gelu, GeluTanh, Relu, Relu2 };

// ops.h layernorm_forward: out = (x - mean) rstd w + b per row of C, float64 sums for mean and
// variance as the CPU takes them, rounded once to dtype; stats (T, 2) = (mean, rstd) when not
// null.
// weight_offset 1: Nemotron's LayerNorm1P ((1 + w) rounded to dtype).
void layernorm_forward(float* out, float* stats, const float* x, const float* weight, const float* bias, int64_t T,
                       int64_t C, float eps, ComputeDType dtype, cudaStream_t s, float weight_offset = 0.0f);
// ops_backward.h layernorm_backward (input gradient only; the sums in float64).
void layernorm_backward(float* dinp, const float* dout, const float* x, const float* weight, const float* stats,
                        int64_t T, int64_t C, cudaStream_t s, float weight_offset = 0.0f);

// ops.h geglu_forward: out (N) = gelu_tanh(gate) * up (may alias); ops_backward.h
// geglu_backward: dgate += dout up gelu_tanh'(gate), dup += dout gelu_tanh(gate).
void geglu_forward(float* out, const float* gate, const float* up, int64_t N, cudaStream_t s);
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N,
                    cudaStream_t s);

// ops.h activation_forward (out may alias x) and ops_backward.h activation_backward
// (dx += dout act'(x)).
void activation_forward(float* out, const float* x, int64_t N, ActKind act, cudaStream_t s);
void activation_backward(float* dx, const float* dout, const float* x, int64_t N, ActKind act, cudaStream_t s);

// ops.h softcap_forward in place: x = r(r(tanh(r(x / cap))) * cap), r rounding to dtype.
// Backend::softcap_backward: d (n) *= 1 - (capped / cap)^2, capped the forward's output.
void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype, cudaStream_t s);
void softcap_backward(float* d, const float* capped, int64_t n, float cap, cudaStream_t s);

// ops.h embed_scale_forward in place: x = r(x * r(sqrt(hidden))) (the scale computed on the
// host in float64, then float32, as the CPU does).
void embed_scale(float* x, int64_t n, int64_t hidden, ComputeDType dtype, cudaStream_t s);

// Backend::slice_forward: out (T, groups*width) = columns [offset, offset + width) of each of
// `groups` groups of `stride` columns of in (T, in_width) (stride unused when groups is 1).
// slice_backward adds dout into those columns of din. Throws Error when the slice reaches
// past a row of in.
void slice_forward(float* out, const float* in, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                   int64_t groups, int64_t stride, cudaStream_t s);
void slice_backward(float* din, const float* dout, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                    int64_t groups, int64_t stride, cudaStream_t s);

}  // namespace qlora::cuda
