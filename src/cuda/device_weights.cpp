#include "cuda/device_weights.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <optional>
#include <vector>

#include "base/error.h"
#include "model/quant_linear.h"

namespace qlora::cuda {

DeviceQ4 upload_q4(const Quantized4bit& q_in, int64_t rows, int64_t cols, ComputeDType round_to) {
  check(rows * cols == q_in.state.numel(), "cuda::upload_q4", "the shape does not match the quantized tensor");
  // A GGUF's Q4_1 / Q4_K blocks kept as stored carry a minimum per block, which the CUDA
  // kernels do not take yet: those go to the GPU as NF4 of their values (blocks of 64), said
  // once. (Code books alone -- Q4_0, IQ4_NL, IQ4_XS, MXFP4 -- run as stored.)
  std::optional<Quantized4bit> requantized;
  if (q_in.state.has_min()) {
    static std::once_flag said;
    std::call_once(said, [&] {
      std::fprintf(stderr, "note: the CUDA backend runs this GGUF's %s weights re-quantized to NF4 (their per-block "
                           "minimums are not on the GPU yet)\n", q_in.state.ggml_source.c_str());
    });
    std::vector<float> v(static_cast<size_t>(q_in.state.numel()));
    dequantize_tensor_4bit(q_in, v.data());
    requantized = quantize_tensor_4bit(v.data(), q_in.state.shape, QuantType::NF4, 64, false, round_to);
  }
  const Quantized4bit& q = requantized ? *requantized : q_in;
  const QuantState& st = q.state;
  DeviceQ4 d;
  d.packed = DeviceBuffer<uint8_t>(q.packed);
  d.code = DeviceBuffer<float>(std::vector<float>(st.code.begin(), st.code.end()));
  if (st.nested) {
    d.absmax_q = DeviceBuffer<uint8_t>(st.absmax_q);
    d.nested_absmax = DeviceBuffer<float>(st.nested_absmax);
    d.nested_code = DeviceBuffer<float>(std::vector<float>(st.nested_code.begin(), st.nested_code.end()));
  } else {
    d.absmax = DeviceBuffer<float>(st.block_absmax());  // (a GGUF's fp16 scales widened here)
  }
  Q4Device& v = d.view;
  v.packed = d.packed.data();
  v.rows = rows;
  v.cols = cols;
  v.blocksize = st.blocksize;
  v.code = d.code.data();
  v.round_to = round_to;
  if (st.nested) {
    v.absmax_q = d.absmax_q.data();
    v.nested_absmax = d.nested_absmax.data();
    v.nested_code = d.nested_code.data();
    v.nested_blocksize = st.nested_blocksize;
    v.offset = st.offset;
  } else {
    v.absmax = d.absmax.data();
  }
  return d;
}

DeviceDense upload_dense(const DenseWeight& w) {
  DeviceDense d;
  d.type = dense_type_of(w.dtype());
  d.rows = w.rows();
  d.cols = w.cols();
  const size_t n = static_cast<size_t>(w.rows() * w.cols());
  if (d.type == DenseType::F32 && w.packed()) {
    // (a GGUF's Q8_0 head, blocks kept as stored, or a 16-bit table held so: widened here a
    // slab of rows (~4 MB) at a time, so the host never holds a float32 copy of the whole table)
    d.f32.resize(n);
    const int64_t cols = std::max<int64_t>(w.cols(), 1);
    const int64_t slab = std::max<int64_t>(1, (int64_t{1} << 20) / cols);
    std::vector<float> rows(static_cast<size_t>(std::min(w.rows(), slab) * cols));
    for (int64_t r0 = 0; r0 < w.rows(); r0 += slab) {
      const int64_t r1 = std::min(w.rows(), r0 + slab);
      w.rows_to_f32(r0, r1, rows.data());
      d.f32.upload(rows.data(), static_cast<size_t>((r1 - r0) * cols), static_cast<size_t>(r0 * cols));
    }
  } else if (d.type == DenseType::F32) {
    d.f32.resize(n);
    d.f32.upload(w.f32_data(), n);
  } else {
    d.h16.resize(n);
    d.h16.upload(w.h16_data(), n);
  }
  return d;
}

}  // namespace qlora::cuda
