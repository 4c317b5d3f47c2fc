#pragma once
// The CUDA implementation of the inference forward (model/device_runner.h): a copy of the
// model's weights on the GPU (4-bit weights stay packed exactly as on the CPU; dense ones
// in the compute dtype), a KV cache per sequence on the GPU, and the same sequence of ops
// as model.cpp's forward(), each a kernel from cuda/kernels.h:
//   1..8 tokens: fused 4-bit (or dense) matrix-vector products, weights read once;
//   more tokens: the weight dequantized into a scratch buffer, then a cuBLAS GEMM
//   (float32 for fp32 compute; bf16/fp16 inputs with float32 accumulation otherwise).
// Activations stay float32, rounded to the compute dtype where the CPU rounds them, so the
// logits agree with the CPU backend's within float32 (or bf16/fp16) rounding.
#include <memory>

#include "model/device_runner.h"

namespace qlora {

class Model;

namespace cuda {

// Throws Error when the model holds something this runner cannot run (named), the device
// does not exist, or the GPU has no room for the weights.
std::shared_ptr<const DeviceRunner> make_runner(const Model& model, int device);

}  // namespace cuda
}  // namespace qlora
