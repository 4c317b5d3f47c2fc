#pragma once
// Weights copied to the GPU in the layouts the kernels read (cuda/kernels.h): a 4-bit
// weight with its quantization constants, exactly as the CPU holds them (nothing is
// re-quantized or dequantized on the way), and dense matrices in their storage dtype.
#include <cstdint>

#include "cuda/device_buffer.h"
#include "cuda/kernels.h"
#include "quant/quant_state.h"

namespace qlora {
class DenseWeight;
}

namespace qlora::cuda {

struct DeviceQ4 {
  DeviceBuffer<uint8_t> packed, absmax_q;
  DeviceBuffer<float> code, absmax, nested_absmax, nested_code;
  Q4Device view;  // points into the buffers above (valid while this object lives; moves keep it)
  size_t bytes() const {
    return packed.bytes() + absmax_q.bytes() + code.bytes() + absmax.bytes() + nested_absmax.bytes() +
           nested_code.bytes();
  }
};

// Uploads `q` as a (rows, cols) weight whose dequantized values the kernels round to
// `round_to`. REQUIRES rows * cols == q.state.numel().
DeviceQ4 upload_q4(const Quantized4bit& q, int64_t rows, int64_t cols, ComputeDType round_to);

// A dense matrix on the device in float32 or a 16-bit type.
struct DeviceDense {
  DenseType type = DenseType::F32;
  int64_t rows = 0, cols = 0;
  DeviceBuffer<float> f32;
  DeviceBuffer<uint16_t> h16;
  const void* data() const { return type == DenseType::F32 ? static_cast<const void*>(f32.data()) : h16.data(); }
  size_t bytes() const { return f32.bytes() + h16.bytes(); }
};

DeviceDense upload_dense(const DenseWeight& w);

}  // namespace qlora::cuda
