#pragma once
// Internal to src/cuda: the CUDA runner's state, shared by its inference forward
// (cuda_runner.cpp) and its training step (cuda_train.cpp). Not a public interface: use
// model/device_runner.h.
#include <cuda_runtime_api.h>

#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "cuda/blas.h"
#include "cuda/device_buffer.h"
#include "cuda/device_weights.h"
#include "cuda/kernels.h"
#include "model/device_runner.h"
#include "model/model.h"

namespace qlora {
struct LoraLayer;
namespace cuda {

struct DeviceLora {
  int64_t r = 0;
  float scaling = 0.f;
  DeviceBuffer<float> A, B;  // (r, in), (out, r)
};

// One block Linear: 4-bit (packed + constants) or dense, with its bias and LoRA.
struct DeviceLinear {
  int64_t out = 0, in = 0;
  bool q4 = false;
  DeviceQ4 w4;
  DeviceDense dense;
  DeviceBuffer<float> bias;
  std::unique_ptr<DeviceLora> lora;
  size_t bytes() const {
    return w4.bytes() + dense.bytes() + bias.bytes() + (lora ? lora->A.bytes() + lora->B.bytes() : 0);
  }
};


struct DeviceLayer {
  DeviceBuffer<float> input_norm, post_norm;
  DeviceLinear lin[kBlockLinearCount];  // q, k, v, o, gate, up, down
};

class CudaSequence : public DeviceSequence {
 public:
  int64_t capacity = 0;
  DeviceBuffer<float> k, v;  // (L, capacity, KVD)
};

class CudaRunner : public DeviceRunner {
 public:
  CudaRunner(const Model& model, int device);
  ~CudaRunner() override;
  std::string describe() const override { return describe_; }
  size_t device_bytes() const override;
  Memory device_memory() const override;
  std::unique_ptr<DeviceSequence> new_sequence(int64_t capacity) const override;
  void forward(DeviceSequence& seq, int64_t pos0, std::span<const int> tokens, float* logits,
               bool all_logits) const override;
  // Training (cuda_train.cpp).
  float forward_backward(LoraModel& lora, std::span<const int> inputs, std::span<const int> targets,
                         const TrainStepOptions& opt, LoraRng* rng, std::span<const int32_t> positions) const override;
  float forward_loss(const LoraModel& lora, std::span<const int> inputs, std::span<const int> targets,
                     std::span<const int32_t> positions) const override;

  struct TrainState;  // cuda_train.cpp
  struct TrainStateDeleter {
    void operator()(TrainState* p) const;
  };

 private:
  // y (T, out) = x W^T + b, rounded to the compute dtype (no LoRA).
  void base_linear(float* y, const DeviceLinear& L, const float* x, int64_t T) const;
  // tile (out, in) = W as float32, exactly the values the CPU's backward multiplies with.
  void weight_f32(float* tile, const DeviceLinear& L) const;
  // The training forward (logits of the positions with a target) and the loss.
  float train_forward(TrainState& ts, const LoraModel& lm, std::span<const int> inputs, std::span<const int> targets,
                      std::span<const int32_t> positions, bool keep_all, bool training, LoraRng* rng) const;
  void train_block_forward(TrainState& ts, int64_t blk, int64_t l, float* xout, const float* xin, bool training) const;
  void train_block_backward(TrainState& ts, int64_t blk, int64_t l, float* dx, const float* xin) const;
  // y (T, out) = x W^T + b, rounded to the compute dtype, then + LoRA.
  void linear(float* y, const DeviceLinear& L, const float* x, int64_t T) const;
  // y (T, rows) = x · Wᵀ for a dense weight (lm_head).
  void dense_matmul(float* y, const DeviceDense& W, const float* x, int64_t T) const;
  void init(const Model& model);  // the constructor's work
  void release_handles();         // stream, pinned buffers, graph (constructor failure, destructor)
  void ensure_scratch(int64_t T) const;
  void grow(CudaSequence& seq, int64_t capacity) const;
  // One token with its logits (decoding): the whole step enqueued by decode_ops, replayed
  // as a CUDA graph once it has run eagerly for this sequence buffer.
  void decode(CudaSequence& seq, int64_t pos, int token, float* logits) const;
  void decode_ops(CudaSequence& seq) const;

  ModelSpec spec_;
  ComputeDType dt_;
  int device_ = 0;
  std::string describe_;
  uint64_t context_bytes_ = 0;  // measured after the context, stream and cuBLAS exist
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Blas> blas_;
  DeviceDense embed_, lm_head_;
  bool tied_ = false;
  DeviceBuffer<float> final_norm_;
  std::vector<DeviceLayer> layers_;
  int64_t max_linear_numel_ = 0, max_lora_r_ = 0;

  mutable std::mutex mu_;
  mutable int64_t scratch_T_ = 0;
  mutable DeviceBuffer<float> x_, h_, q_, k_, v_, att_, o_, gate_, up_, cos_, sin_, lora_tmp_, logits_;
  mutable DeviceBuffer<int32_t> tokens_;
  mutable DeviceBuffer<float> wscratch_f32_;     // a dequantized weight (prefill, fp32 compute)
  mutable DeviceBuffer<uint16_t> wscratch_h16_;  // a dequantized weight (prefill, 16-bit compute)
  mutable DeviceBuffer<uint16_t> x16_;           // activations as bf16/fp16 for the GEMM
  mutable DeviceBuffer<float> lora_out_;         // B (A x) before the scaling
  mutable std::unique_ptr<TrainState, TrainStateDeleter> train_;  // training buffers, made on first use
  // Decoding: pinned host staging (token and position; the rotary row; the logits), the
  // token and position on the device, and the captured step. QLORA_CUDA_GRAPHS=0: no graphs.
  int32_t* h_step_ = nullptr;
  float* h_rope_ = nullptr;
  float* h_logits_ = nullptr;
  mutable DeviceBuffer<int32_t> d_step_;
  mutable bool use_graphs_ = true;
  mutable cudaGraphExec_t graph_ = nullptr;
  // Everything a captured step has baked in: the sequence's keys, values and capacity, and
  // every scratch buffer the step touches (a longer prompt or an all-logits call can
  // reallocate them). A graph replays only for exactly the same buffers.
  struct SeqKey {
    std::vector<const void*> ptrs;
    int64_t capacity = 0;
    bool operator==(const SeqKey&) const = default;
  };
  mutable SeqKey graph_key_, warm_key_;
};


// Uploads one block Linear (and its inference LoRA, when `lo` is not null). `where` names
// it in errors.
DeviceLinear upload_linear(const QuantLinear& q, const LoraLayer* lo, const std::string& where);

}  // namespace cuda
}  // namespace qlora
