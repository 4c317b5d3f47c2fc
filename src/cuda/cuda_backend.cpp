// CudaBackend (cuda/cuda_backend.h): the seam's ops on the kernels of cuda/kernels*.h and
// cuBLAS, each with the contract model/backend.h gives it and its CPU backend counterpart's
// numbers (within float32 summation order and CUDA's transcendental functions; the kernel
// tests bound each).
#include "cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/error.h"
#include "cuda/blas.h"
#include "cuda/cuda_error.h"
#include "cuda/device_buffer.h"
#include "cuda/device_weights.h"
#include "cuda/kernels.h"
#include "cuda/kernels_family.h"
#include "cuda/kernels_int8.h"
#include "cuda/kernels_train.h"
#include "lora/lora.h"
#include "model/model_spec.h"
#include "model/ops.h"
#include "model/device_runner.h"
#include "model/quant_linear.h"
#include "quant/int8.h"

namespace qlora::cuda {

namespace {

ActKind act_kind(Activation a) {
  switch (a) {
    case Activation::Gelu: return ActKind::Gelu;
    case Activation::GeluTanh: return ActKind::GeluTanh;
    case Activation::Relu: return ActKind::Relu;
    case Activation::Relu2: return ActKind::Relu2;
    case Activation::Xielu: fail("cuda", "xIELU (Apertus) has no CUDA kernel yet: run it with --device cpu");
  }
  return ActKind::Relu;
}

// A block Linear's frozen weight on the device: 4-bit as the CPU packs it, or dense.
struct DeviceLinearWeight {
  bool q4 = false, int8 = false;
  DeviceQ4 w4;
  DeviceDense dense;
  DeviceBuffer<int8_t> cb;   // LLM.int8: (out, in) codes
  DeviceBuffer<float> scb;   // (out) row absmax
  float int8_threshold = 0;  // the outlier threshold of its activations
  DeviceBuffer<float> bias;
  int64_t in = 0, out = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), name_("cuda:" + std::to_string(device)) {
    describe_ = describe_device(device);  // Error naming the device when it does not exist
    QLORA_CUDA_CHECK(cudaSetDevice(device));
    QLORA_CUDA_CHECK(cudaFree(nullptr));  // creates the context now, so it can be measured
    QLORA_CUDA_CHECK(cudaStreamCreate(&stream_));  // blocking: waits for the default stream's copies
    blas_ = std::make_unique<Blas>();
    blas_->set_stream(stream_);
    context_bytes_ = device_context_bytes();  // (as the CudaRunner measures it)
  }
  ~CudaBackend() override {
    if (stream_) cudaStreamSynchronize(stream_);
    blas_.reset();  // its handle is bound to the stream
    if (stream_) cudaStreamDestroy(stream_);
  }

  const char* name() const override { return name_.c_str(); }
  std::string describe() const override { return describe_; }
  void bind_thread() override { QLORA_CUDA_CHECK(cudaSetDevice(device_)); }
  // The buffers' counts are the process's device allocations (device_buffer.h), shared with
  // anything else of ours on the GPU: one model's engine per process.
  Memory memory() const override {
    Memory m;
    m.context = context_bytes_;
    m.in_use = device_bytes_in_use();
    m.peak = device_bytes_peak();
    return m;
  }

  // ---- memory ----
  bool host_addressable() const override { return false; }
  void* allocate_bytes(size_t bytes) override {
    if (bytes == 0) return nullptr;
    bind_thread();  // (states may be made on a thread that has not run a forward yet)
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail(name_, "out of GPU memory: asked for " + std::to_string(bytes >> 20) + " MiB, " +
                      std::to_string(free_b >> 20) + " MiB of " + std::to_string(total_b >> 20) + " MiB free");
    }
    sizes_[p] = bytes;
    note_device_alloc(bytes);
    return p;
  }
  void release(void* p) noexcept override {
    if (!p) return;
    cudaStreamSynchronize(stream_);  // no op issued before may still use it
    cudaFree(p);
    auto it = sizes_.find(p);
    if (it != sizes_.end()) {
      note_device_free(it->second);
      sizes_.erase(it);
    }
  }
  void upload_bytes(void* dst, const void* host, size_t bytes) override {
    if (!bytes) return;
    QLORA_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_));
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host memory may be reused at once
  }
  void download_bytes(void* host, const void* src, size_t bytes) override {
    if (!bytes) return;
    QLORA_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream_));
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy_bytes(void* dst, const void* src, size_t bytes) override {
    if (!bytes || dst == src) return;
    const auto* d = static_cast<const char*>(dst);
    const auto* s = static_cast<const char*>(src);
    if (d < s + bytes && s < d + bytes) {  // overlapping: cudaMemcpy's result is undefined, stage it
      stage_.reserve(bytes);
      QLORA_CUDA_CHECK(cudaMemcpyAsync(stage_.data(), src, bytes, cudaMemcpyDeviceToDevice, stream_));
      src = stage_.data();
    }
    QLORA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void zero_bytes(void* dst, size_t bytes) override {
    if (bytes) QLORA_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
  }
  void synchronize() override { QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  // ---- a block's ops ----
  void norm_forward(const ModelSpec& s, float* out, float* stats, const float* in, const float* weight,
                    const float* bias, int64_t rows, int64_t C, ComputeDType dtype, bool round_once) override {
    if (s.norm == NormKind::LayerNorm)
      cuda::layernorm_forward(out, stats, in, vec(weight, C), vec(bias, C), rows, C, s.norm_eps, dtype, stream_,
                              s.norm_offset());
    else
      rmsnorm_forward(out, stats, in, vec(weight, C), rows, C, s.norm_eps, dtype, s.norm_offset(),
                      s.norm_round_once || round_once, stream_);
  }
  void norm_backward(const ModelSpec& s, float* din, const float* dout, const float* in, const float* weight,
                     const float* stats, int64_t rows, int64_t C) override {
    if (s.norm == NormKind::LayerNorm)
      layernorm_backward(din, dout, in, vec(weight, C), stats, rows, C, stream_, s.norm_offset());
    else
      rmsnorm_backward(din, dout, in, vec(weight, C), stats, rows, C, s.norm_offset(), stream_);
  }

  void linear_forward(float* y, const float* x, int64_t T, const QuantLinear& W, const LoraLayer* lora,
                      LoraCache* cache, bool training, LoraRng* rng, const LoraScratch& scratch) override {
    if (T <= 0) return;
    const DeviceLinearWeight& L = linear(W);
    const ComputeDType dt = W.dtype();
    if (L.int8) {
      // The activation side on the host, by the CPU's own function (bitsandbytes' rules: float16
      // rounding, outlier columns, per-token absmax); the product, its epilogue, the bias, the
      // outlier columns and the rounding in one kernel (cuda/kernels_int8.h).
      const int64_t K = L.in;
      int8_x_.resize(static_cast<size_t>(T * K));
      download_bytes(int8_x_.data(), x, int8_x_.size() * sizeof(float));  // (waits: int8_act_ is free again)
      quantize_int8_activations(int8_x_.data(), T, K, L.int8_threshold, int8_act_);
      const int64_t n_out = static_cast<int64_t>(int8_act_.outlier_cols.size());
      int8_ca_.reserve(static_cast<size_t>(T * K));
      int8_ca_.upload_async(int8_act_.ca.data(), static_cast<size_t>(T * K), stream_);
      int8_sca_.reserve(static_cast<size_t>(T));
      int8_sca_.upload_async(int8_act_.sca.data(), static_cast<size_t>(T), stream_);
      int8_oc_.reserve(static_cast<size_t>(std::max<int64_t>(n_out, 1)));
      if (n_out) int8_oc_.upload_async(int8_act_.outlier_cols.data(), static_cast<size_t>(n_out), stream_);
      int8_linear_forward(y, int8_ca_.data(), int8_sca_.data(), L.cb.data(), L.scb.data(),
                          L.bias.size() ? L.bias.data() : nullptr, x, int8_oc_.data(), n_out, T, L.out, K, dt, stream_);
      if (lora) lora_forward(y, cache, *lora, x, T, training, rng, scratch);
      return;
    }
    if (!L.q4) {
      dense_matmul(y, L.dense, x, T);
    } else if (T <= 8) {
      gemv_q4(L.w4.view, x, static_cast<int>(T), y, L.out, stream_);
    } else if (dt == ComputeDType::F32) {
      wf32_.reserve(static_cast<size_t>(L.in * L.out));
      dequantize_q4(L.w4.view, DenseType::F32, wf32_.data(), stream_);
      blas_->sgemm_nt(T, L.out, L.in, 1.0f, x, L.in, wf32_.data(), L.in, 0.0f, y, L.out);
    } else {
      // x holds values representable in the compute dtype (rounded as on the CPU), so the
      // conversion is exact; the weight is rounded once, as the CPU's dequantized panels.
      const DenseType t = dense_type_of(dt);
      wh16_.reserve(static_cast<size_t>(L.in * L.out));
      dequantize_q4(L.w4.view, t, wh16_.data(), stream_);
      x16_.reserve(static_cast<size_t>(T * L.in));
      f32_to_half(x16_.data(), x, T * L.in, t, stream_);
      blas_->gemm16_nt(t, T, L.out, L.in, 1.0f, x16_.data(), L.in, wh16_.data(), L.in, 0.0f, y, L.out);
    }
    if (L.bias.size()) cuda::add_bias(y, L.bias.data(), T, L.out, stream_);
    round_activations(y, T * L.out, dt, stream_);
    if (lora) lora_forward(y, cache, *lora, x, T, training, rng, scratch);
  }

  void linear_backward(float* dx, const float* dy, const float* x, int64_t T, const QuantLinear& W, LoraLayer* lora,
                       const LoraCache* cache, float* /*tile*/, const LoraScratch& scratch) override {
    if (T <= 0) return;
    const DeviceLinearWeight& L = linear(W);
    if (dx) {
      // dx (T, in) += dy (T, out) · W, W dequantized whole in float32 and rounded to the
      // compute dtype (the CPU's dequantize_rows), then one cuBLAS product.
      const float* w = nullptr;
      if (L.q4) {
        wf32_.reserve(static_cast<size_t>(L.in * L.out));
        dequantize_q4(L.w4.view, DenseType::F32, wf32_.data(), stream_);
        round_activations(wf32_.data(), L.in * L.out, W.dtype(), stream_);
        w = wf32_.data();
      } else if (L.int8) {  // CB * (SCB / 127), rounded: QuantLinear::dequantize_rows
        wf32_.reserve(static_cast<size_t>(L.in * L.out));
        int8_dequantize_rows(wf32_.data(), L.cb.data(), L.scb.data(), L.out, L.in, W.dtype(), stream_);
        w = wf32_.data();
      } else {
        w = dense_f32(L.dense);
      }
      blas_->sgemm_nn(T, L.in, L.out, 1.0f, dy, L.out, w, L.in, 1.0f, dx, L.in);
    }
    if (lora) lora_backward(dx, *lora, dy, x, *cache, T, scratch);
  }

  void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                    bool interleaved) override {
    cuda::rope_forward(x, cos, sin, T, NH, HS, rot, interleaved, stream_);
  }
  void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot,
                     bool interleaved) override {
    cuda::rope_backward(dx, cos, sin, T, NH, HS, rot, interleaved, stream_);
  }

  void attention_forward(const AttentionShape& a, float* out, float* att, float* /*scratch*/, const float* q,
                         const float* k, const float* v) override {
    const AttentionOptions o = options(a);
    if (att) {
      // The training kernel writes probabilities (NH, T, Tk) with Tk = q_pos0 + T.
      check(a.Tk == a.q_pos0 + a.T, name_, "attention probabilities need Tk = q_pos0 + T");
      attention_forward_train(out, att, q, k, v, a.T, a.q_pos0, a.NH, a.NKV, a.HS, a.key_start, o, stream_);
    } else {
      cuda::attention_forward(out, q, k, v, a.T, a.q_pos0, a.NH, a.NKV, a.HS, a.key_start, o, stream_);
    }
  }
  void attention_backward(const AttentionShape& a, float* dq, float* dk, float* dv, float* dprobs, float* /*raw*/,
                          const float* dout, const float* q, const float* k, const float* v,
                          const float* att) override {
    check(a.Tk == a.q_pos0 + a.T, name_, "attention backward needs Tk = q_pos0 + T");
    cuda::attention_backward(dq, dk, dv, dprobs, dout, q, k, v, att, a.T, a.q_pos0, a.NH, a.NKV, a.HS, a.key_start,
                             a.scale, a.softcap, stream_);
  }

  void gated_act_forward(MlpKind mlp, float* out, const float* gate, const float* up, int64_t N) override {
    if (mlp == MlpKind::GeGLU)
      geglu_forward(out, gate, up, N, stream_);
    else
      swiglu_forward(out, gate, up, N, stream_);
  }
  void gated_act_backward(MlpKind mlp, float* dgate, float* dup, const float* dout, const float* gate,
                          const float* up, int64_t N) override {
    if (mlp == MlpKind::GeGLU)
      geglu_backward(dgate, dup, dout, gate, up, N, stream_);
    else
      swiglu_backward(dgate, dup, dout, gate, up, N, stream_);
  }
  void act_forward(Activation act, float* out, const float* x, int64_t N, const XieluParams* /*xp*/) override {
    activation_forward(out, x, N, act_kind(act), stream_);
  }
  void act_backward(Activation act, float* dx, const float* dout, const float* x, int64_t N,
                    const XieluParams* /*xp*/) override {
    activation_backward(dx, dout, x, N, act_kind(act), stream_);
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t N) override {
    cuda::residual_forward(out, a, b, N, stream_);
  }
  void residual_backward(float* da, float* db, const float* dout, int64_t N) override {
    if (da) cuda::axpy(da, 1.0f, dout, N, stream_);  // da + dout * 1: exactly da + dout
    if (db) cuda::axpy(db, 1.0f, dout, N, stream_);
  }
  void slice_forward(float* out, const float* in, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                     int64_t groups, int64_t stride) override {
    cuda::slice_forward(out, in, T, in_width, offset, width, groups, stride, stream_);
  }
  void slice_backward(float* din, const float* dout, int64_t T, int64_t in_width, int64_t offset, int64_t width,
                      int64_t groups, int64_t stride) override {
    cuda::slice_backward(din, dout, T, in_width, offset, width, groups, stride, stream_);
  }
  void round(float* x, int64_t n, ComputeDType dtype) override { round_activations(x, n, dtype, stream_); }

  // ---- the model around its blocks ----
  void embedding_forward(float* out, std::span<const int> ids, const DenseWeight& table) override {
    const int64_t V = table.rows();
    for (int id : ids)
      if (id < 0 || id >= V)
        fail("embedding", "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(V));
    const DeviceDense& d = dense(table);
    const int32_t* dev = upload_ints(ids);
    cuda::embedding_forward(out, dev, static_cast<int64_t>(ids.size()), d.data(), d.type, d.cols, stream_);
  }
  void embed_scale(float* x, int64_t n, int64_t hidden, ComputeDType dtype) override {
    cuda::embed_scale(x, n, hidden, dtype, stream_);
  }
  void layernorm_forward(float* out, const float* in, const float* weight, const float* bias, int64_t rows, int64_t C,
                         float eps, ComputeDType dtype) override {
    cuda::layernorm_forward(out, nullptr, in, vec(weight, C), vec(bias, C), rows, C, eps, dtype, stream_);
  }
  void dense_forward(float* y, const float* x, int64_t n, const DenseWeight& W) override {
    if (n > 0) dense_matmul(y, dense(W), x, n);
  }
  void add_bias(float* y, const float* bias, int64_t n, int64_t width) override {
    if (n > 0) cuda::add_bias(y, vec(bias, width), n, width, stream_);
  }
  // dx (n, cols) += dy (n, rows) · W. A 16-bit W (the head in bf16/fp16 compute) is widened
  // to float32 at most kHeadChunkFloats at a time (64 MiB: a 256k-vocabulary head would be
  // 2.4 GB whole), each chunk of rows one cuBLAS product.
  static constexpr int64_t kHeadChunkFloats = int64_t{1} << 24;
  void dense_backward(float* dx, const float* dy, int64_t n, const DenseWeight& W, float* /*tile*/) override {
    if (n <= 0) return;
    const DeviceDense& d = dense(W);
    if (d.type == DenseType::F32) {
      blas_->sgemm_nn(n, d.cols, d.rows, 1.0f, dy, d.rows, d.f32.data(), d.cols, 1.0f, dx, d.cols);
      return;
    }
    const int64_t chunk = std::clamp<int64_t>(kHeadChunkFloats / std::max<int64_t>(d.cols, 1), 1, d.rows);
    wf32_.reserve(static_cast<size_t>(chunk * d.cols));
    for (int64_t r0 = 0; r0 < d.rows; r0 += chunk) {
      const int64_t nr = std::min(chunk, d.rows - r0);
      half_to_f32(wf32_.data(), d.h16.data() + r0 * d.cols, nr * d.cols, d.type == DenseType::BF16, stream_);
      blas_->sgemm_nn(n, d.cols, nr, 1.0f, dy + r0, d.rows, wf32_.data(), d.cols, 1.0f, dx, d.cols);
    }
  }
  void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype) override {
    cuda::softcap_forward(x, n, cap, dtype, stream_);
  }
  void softcap_backward(float* d, const float* capped, int64_t n, float cap) override {
    cuda::softcap_backward(d, capped, n, cap, stream_);
  }
  float cross_entropy(float* dlogits, const float* logits, std::span<const int> targets, int64_t V) override {
    const int64_t M = static_cast<int64_t>(targets.size());
    if (M == 0) return 0.0f;
    for (int t : targets)
      check(t >= 0 && t < V, "cross_entropy", "target " + std::to_string(t) + " outside the vocabulary");
    const int32_t* dev = upload_ints(targets);
    row_loss_.reserve(static_cast<size_t>(M));
    cross_entropy_forward_backward(row_loss_.data(), dlogits, logits, dev, M, V, 1.0f / static_cast<float>(M), -100,
                                   stream_);
    std::vector<float> rows(static_cast<size_t>(M));
    download_bytes(rows.data(), row_loss_.data(), rows.size() * sizeof(float));
    double sum = 0.0;
    for (float r : rows) sum += r;
    return static_cast<float>(sum / static_cast<double>(M));
  }
  void scale(float* x, int64_t n, float s) override { cuda::scale(x, s, n, stream_); }
  void axpy(float* y, float alpha, const float* x, int64_t n) override { cuda::axpy(y, alpha, x, n, stream_); }
  void clamp(float* out, const float* in, int64_t n, float limit) override { cuda::clamp(out, in, n, limit, stream_); }
  void clamp_backward(float* din, const float* dout, const float* in, int64_t n, float limit) override {
    cuda::clamp_backward(din, dout, in, n, limit, stream_);
  }
  void gather_rows(float* dst, const float* src, std::span<const int64_t> idx, int64_t width) override {
    const int32_t* dev = upload_indices(idx);
    cuda::gather_rows(dst, src, dev, static_cast<int64_t>(idx.size()), width, stream_);
  }
  void scatter_rows(float* dst, const float* src, std::span<const int64_t> idx, int64_t width) override {
    const int32_t* dev = upload_indices(idx);
    cuda::scatter_rows(dst, src, dev, static_cast<int64_t>(idx.size()), width, stream_);
  }

 private:
  // ---- weights, by their host objects ----
  const DeviceLinearWeight& linear(const QuantLinear& W) {
    auto it = linears_.find(&W);
    if (it != linears_.end()) return it->second;
    if (W.uses_int8_activations())
      fail(name_, "8-bit activations (--int8-activations) are a CPU decoding mode; load the model without them");
    DeviceLinearWeight L;
    L.in = W.in_features();
    L.out = W.out_features();
    if (const Quantized4bit* q = W.q4()) {
      L.q4 = true;
      L.w4 = upload_q4(*q, L.out, L.in, W.dtype());
    } else if (const Quantized8bit* q8 = W.q8()) {
      L.int8 = true;
      L.cb = DeviceBuffer<int8_t>(q8->codes);
      L.scb = DeviceBuffer<float>(q8->scb);
      L.int8_threshold = W.int8_threshold();
    } else {
      L.dense = upload_dense(*W.dense());
    }
    if (!W.bias().empty()) L.bias = DeviceBuffer<float>(W.bias());
    return linears_.emplace(&W, std::move(L)).first->second;
  }
  const DeviceDense& dense(const DenseWeight& W) {
    auto it = denses_.find(&W);
    if (it != denses_.end()) return it->second;
    return denses_.emplace(&W, upload_dense(W)).first->second;
  }
  // A float32 view of a dense device weight (16-bit ones widened into a workspace).
  const float* dense_f32(const DeviceDense& d) {
    if (d.type == DenseType::F32) return d.f32.data();
    wf32_.reserve(static_cast<size_t>(d.rows * d.cols));
    half_to_f32(wf32_.data(), d.h16.data(), d.rows * d.cols, d.type == DenseType::BF16, stream_);
    return wf32_.data();
  }
  // A norm's weight or bias vector (n floats) on the device; null stays null.
  const float* vec(const float* host, int64_t n) {
    if (!host) return nullptr;
    auto it = vectors_.find(host);
    if (it != vectors_.end() && static_cast<int64_t>(it->second.size()) == n) return it->second.data();
    DeviceBuffer<float> b(static_cast<size_t>(n));
    b.upload(host, static_cast<size_t>(n));
    return (vectors_[host] = std::move(b)).data();
  }
  const int32_t* upload_ints(std::span<const int> v) {
    ints_.reserve(std::max<size_t>(v.size(), 1));
    ints_.upload_async(reinterpret_cast<const int32_t*>(v.data()), v.size(), stream_);
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return ints_.data();
  }
  const int32_t* upload_indices(std::span<const int64_t> idx) {
    std::vector<int32_t> v(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) {
      check(idx[i] >= 0 && idx[i] <= INT32_MAX, name_, "row index out of range");
      v[i] = static_cast<int32_t>(idx[i]);
    }
    ints_.reserve(std::max<size_t>(v.size(), 1));
    ints_.upload_async(v.data(), v.size(), stream_);
    QLORA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return ints_.data();
  }
  AttentionOptions options(const AttentionShape& a) {
    // (gpt-oss's sinks: no kernel takes them yet; gpt-oss's MoE layers are refused before this)
    check(a.sinks == nullptr, name_, "attention sinks (gpt-oss) run on the CPU backend only for now (use --device cpu)");
    AttentionOptions o;
    o.scale = a.scale;
    o.softcap = a.softcap;
    if (a.alibi) {
      if (alibi_host_ != a.alibi->slopes) {
        alibi_host_ = a.alibi->slopes;
        alibi_ = DeviceBuffer<float>(alibi_host_);
      }
      o.alibi_slopes = alibi_.data();
      o.alibi_bf16_product = a.alibi->bf16_product;
      o.alibi_divisor = a.alibi->divisor;
    }
    return o;
  }

  void dense_matmul(float* y, const DeviceDense& W, const float* x, int64_t T) {
    if (T <= 8) {
      gemv_dense(W.data(), W.type, W.rows, W.cols, x, static_cast<int>(T), y, W.rows, stream_);
    } else if (W.type == DenseType::F32) {
      blas_->sgemm_nt(T, W.rows, W.cols, 1.0f, x, W.cols, W.f32.data(), W.cols, 0.0f, y, W.rows);
    } else {
      x16_.reserve(static_cast<size_t>(T * W.cols));
      f32_to_half(x16_.data(), x, T * W.cols, W.type, stream_);
      blas_->gemm16_nt(W.type, T, W.rows, W.cols, 1.0f, x16_.data(), W.cols, W.h16.data(), W.cols, 0.0f, y, W.rows);
    }
  }

  // ---- LoRA (lora/lora.h's lora_forward / lora_backward, step for step) ----
  struct DeviceAB {
    DeviceBuffer<float> A, B;
  };
  DeviceAB& upload_ab(const LoraLayer& L) {
    DeviceAB& d = lora_[&L];
    d.A.reserve(L.A.size());
    d.B.reserve(L.B.size());
    d.A.upload_async(L.A.data(), L.A.size(), stream_);
    d.B.upload_async(L.B.data(), L.B.size(), stream_);
    return d;
  }
  void lora_forward(float* y, LoraCache* cache, const LoraLayer& L, const float* x, int64_t T, bool training,
                    LoraRng* rng, const LoraScratch& scratch) {
    const int64_t in = L.in, out = L.out, r = L.r;
    const bool drop = training && L.dropout > 0.f;
    if (cache) cache->masked = drop;
    const float* xin = x;
    if (drop) {
      check(rng != nullptr, L.module_path, "LoRA dropout in training needs a random generator");
      check(cache != nullptr && cache->mask != nullptr, L.module_path,
            "LoRA dropout in training needs a cache with room for its mask");
      const uint64_t call_seed = rng->next_u64();  // the CPU's one draw per call
      lora_dropout_mask(cache->mask, T, in, call_seed, L.dropout, stream_);
      multiply(scratch.x, x, cache->mask, T * in, stream_);
      xin = scratch.x;
    }
    DeviceAB& d = upload_ab(L);
    float* h = cache ? cache->h : scratch.h;
    blas_->sgemm_nt(T, r, in, 1.0f, xin, in, d.A.data(), in, 0.0f, h, r);
    blas_->sgemm_nt(T, out, r, 1.0f, h, r, d.B.data(), r, 0.0f, scratch.y, out);
    cuda::axpy(y, L.scaling, scratch.y, T * out, stream_);  // y += tmp * scaling, as the CPU
  }
  void lora_backward(float* dx, LoraLayer& L, const float* dy, const float* x, const LoraCache& cache, int64_t T,
                     const LoraScratch& scratch) {
    const int64_t in = L.in, out = L.out, r = L.r;
    const bool drop = cache.masked;
    check(cache.h != nullptr, L.module_path, "lora_backward: no cache from the forward");
    const float s = L.scaling;
    DeviceAB& d = upload_ab(L);
    // dh (T, r) = scaling · dy B
    float* dh = scratch.x;
    blas_->sgemm_nn(T, r, out, 1.0f, dy, out, d.B.data(), r, 0.0f, dh, r);
    cuda::scale(dh, s, T * r, stream_);
    // dB (out, r) += scaling · dyᵀ h   (the product here, the sum into the host gradient)
    float* db = scratch.y;
    blas_->sgemm_tn(out, r, T, 1.0f, dy, out, cache.h, r, 0.0f, db, r);
    // dA (r, in) += dhᵀ dropout(x)
    const float* xin = x;
    if (drop) {
      multiply(scratch.drop, x, cache.mask, T * in, stream_);
      xin = scratch.drop;
    }
    da_.reserve(static_cast<size_t>(r * in));
    blas_->sgemm_tn(r, in, T, 1.0f, dh, r, xin, in, 0.0f, da_.data(), in);
    // dx (T, in) += mask ⊙ (dh A)
    if (dx) {
      if (!drop) {
        blas_->sgemm_nn(T, in, r, 1.0f, dh, r, d.A.data(), in, 1.0f, dx, in);
      } else {
        blas_->sgemm_nn(T, in, r, 1.0f, dh, r, d.A.data(), in, 0.0f, scratch.drop, in);
        multiply_add(dx, scratch.drop, cache.mask, T * in, stream_);
      }
    }
    std::vector<float> hb(static_cast<size_t>(out * r)), ha(static_cast<size_t>(r * in));
    download_bytes(hb.data(), db, hb.size() * sizeof(float));
    download_bytes(ha.data(), da_.data(), ha.size() * sizeof(float));
    for (size_t k = 0; k < hb.size(); ++k) L.dB[k] += hb[k] * s;
    for (size_t k = 0; k < ha.size(); ++k) L.dA[k] += ha[k];
  }

  int device_;
  std::string name_, describe_;
  uint64_t context_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Blas> blas_;
  std::unordered_map<void*, size_t> sizes_;
  std::unordered_map<const QuantLinear*, DeviceLinearWeight> linears_;
  std::unordered_map<const DenseWeight*, DeviceDense> denses_;
  std::unordered_map<const float*, DeviceBuffer<float>> vectors_;
  std::unordered_map<const LoraLayer*, DeviceAB> lora_;
  std::vector<float> alibi_host_;
  DeviceBuffer<float> alibi_, wf32_, row_loss_, da_;
  DeviceBuffer<uint16_t> wh16_, x16_;
  DeviceBuffer<int32_t> ints_;
  DeviceBuffer<char> stage_;
  // LLM.int8's activation side: the input on the host, its codes, and their device copies.
  std::vector<float> int8_x_;
  Int8Activations int8_act_;
  DeviceBuffer<int8_t> int8_ca_;
  DeviceBuffer<float> int8_sca_;
  DeviceBuffer<int32_t> int8_oc_;
};

}  // namespace

std::unique_ptr<Backend> make_backend(int device) { return std::make_unique<CudaBackend>(device); }

}  // namespace qlora::cuda

namespace qlora {

std::shared_ptr<Backend> make_cuda_backend(int index) { return cuda::make_backend(index); }

}  // namespace qlora
