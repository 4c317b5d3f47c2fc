#pragma once
// The CUDA implementation of the backend seam (model/backend.h): every op of a BlockProgram,
// forward and backward, and the model around its blocks, on one GPU, so that any family the
// CPU backend runs runs here through the same block interpreter (issue 12). It is the second
// Backend; the CudaRunner (cuda_runner.h) is the hand-written llama path it will replace.
//
//  - Memory: plain cudaMalloc allocations (never managed memory), counted by
//    device_bytes_in_use(); one stream, which waits for the legacy default stream's copies.
//  - Weights are named by their host objects, as the seam says: each QuantLinear,
//    DenseWeight and norm vector is copied to the GPU the first time an op names it and
//    looked up by its address afterwards. So one backend serves one loaded model: a host
//    object freed and another allocated at the same address would find the old copy.
//  - LoRA A and B are uploaded at every call (they change at every optimizer step and are
//    small); their gradients are computed on the GPU and ADDED to the host LoraLayer's dA and
//    dB, so the optimizers, clipping, checkpoints and exact resume stay the CPU's. Dropout
//    masks are the CPU's very numbers (one draw from the caller's generator per call,
//    expanded on the GPU as lora_forward does).
//  - The frozen Linear's product: one to eight tokens through the fused 4-bit GEMV (weights
//    read once), more through the weight dequantized whole into a workspace and cuBLAS; the
//    backward multiplies by the weight dequantized in float32 (rounded to the compute dtype,
//    as the CPU's dequantize_rows).
//  - The 16-bit products (bf16/fp16 compute) convert a Linear's float32 input to the compute
//    dtype, which is exact because the block programs round every Linear input to it first
//    (the CPU multiplies the same values in float32).
//  - One thread at a time (its maps and workspaces are not locked); bind_thread(), which the
//    block interpreters call at every pass, makes its device the calling thread's current one. Workspaces grow to the largest weight and stay until the
//    backend goes; LoRA A/B are uploaded at every call, and each LoRA backward waits for its
//    gradients (two synchronisations per adapted layer): correctness first.
//  - LLM.int8 weights: the activation side (bitsandbytes' float16 rounding, outlier columns,
//    per-token codes) on the host by the CPU's own function, the product and its epilogue on
//    the GPU (cuda/kernels_int8.h): the CPU's numbers, at a download per product.
//  - Not yet: --int8-activations (an Error naming it).
//
// Written and compiled without a GPU (session 10): tests/cuda/test_cuda_backend.cpp holds it
// against the CPU backend, family by family, and skips where there is no GPU.
#include <memory>

#include "model/backend.h"

namespace qlora::cuda {

// A backend on CUDA device `device`. Throws Error when the device does not exist.
std::unique_ptr<Backend> make_backend(int device);

}  // namespace qlora::cuda
