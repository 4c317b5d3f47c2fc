#pragma once
// The seam between the model and where its forward pass runs. The CPU forward (model.h's
// forward()) is the reference; a DeviceRunner is a second implementation of the same
// inference forward on another device (today: CUDA, src/cuda/cuda_runner.*). A Model with
// a runner attached (Model::set_runner) sends every forward() there, so generate, chat
// and eval run on the device without knowing it (serve does not offer --device yet: its
// per-request adapter switch would need the runner to hold every adapter).
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace qlora {

class Backend;           // model/backend.h
struct ModelSpec;        // model/model_spec.h
class Model;
class LoraModel;         // train/train_model.h
class LoraRng;           // lora/lora.h
struct TrainStepOptions;  // train/train_model.h

// Per-sequence device state (the device's KV cache), created by DeviceRunner::new_sequence.
class DeviceSequence {
 public:
  virtual ~DeviceSequence() = default;
};

class DeviceRunner {
 public:
  virtual ~DeviceRunner() = default;
  // "cuda:0 NVIDIA H200 (sm_90, 139.8 GiB)": for log lines.
  virtual std::string describe() const = 0;
  // Device bytes the runner holds (weights, scratch), for log lines and the planner.
  virtual size_t device_bytes() const = 0;
  // What the device's memory held, measured: the CUDA context (and library code) this
  // process has there, and the peak of the buffers it allocated. The memory planner's
  // device engine predicts their sum.
  struct Memory {
    uint64_t context = 0, buffers_peak = 0;
    uint64_t peak() const { return context + buffers_peak; }
  };
  virtual Memory device_memory() const = 0;
  // A sequence with room for `capacity` positions (it grows on demand).
  virtual std::unique_ptr<DeviceSequence> new_sequence(int64_t capacity) const = 0;
  // model.h forward()'s contract: runs `tokens` at positions pos0.., whose keys and values
  // are appended to `seq` (positions >= pos0 in it are overwritten); logits (host memory)
  // as there. The caller has checked the token ids and the context length.
  // Calls on one runner are serialized (a runner owns one set of scratch buffers).
  virtual void forward(DeviceSequence& seq, int64_t pos0, std::span<const int> tokens, float* logits,
                       bool all_logits) const = 0;

  // The training step and the evaluation loss of train/train_model.h (forward_backward and
  // forward_loss, same contracts: LoRA gradients accumulate into `lora`'s host dA/dB, the
  // dropout generator advances exactly as on the CPU). The caller has checked the sequence's
  // length and positions; token ids and targets are checked here (Error naming the id).
  // The defaults throw Error: training does not run on this device.
  virtual float forward_backward(LoraModel& lora, std::span<const int> inputs, std::span<const int> targets,
                                 const TrainStepOptions& opt, LoraRng* rng, std::span<const int32_t> positions) const;
  virtual float forward_loss(const LoraModel& lora, std::span<const int> inputs, std::span<const int> targets,
                             std::span<const int32_t> positions) const;
};

// Where a command runs: --device cpu | cuda | cuda:N.
struct DeviceChoice {
  bool cuda = false;
  int index = 0;
  std::string name() const { return cuda ? "cuda:" + std::to_string(index) : "cpu"; }
};
// Parses --device; throws Error naming the flag for anything else.
DeviceChoice parse_device(std::string_view s);

// Throws Error (naming --device) when `d` cannot be used here: a CUDA device in a build
// without the CUDA backend, or a device index this machine does not have. Cheap: meant
// for checking the flag before a model is loaded.
void check_device_available(const DeviceChoice& d);

// Free and total bytes of device memory on `d` (a CUDA device), or false when this build
// has no CUDA backend. Creates the device's context (the run will need it anyway).
bool device_free_memory(const DeviceChoice& d, uint64_t* free_bytes, uint64_t* total_bytes);

// True when this build has the CUDA backend (-DQLORA_CUDA=ON).
bool cuda_backend_built();

// The CUDA backend (cuda/cuda_backend.h) on device `index`, for Model::set_backend: the
// block interpreter then runs every family there. Throws Error when this build has no CUDA
// backend or the device does not exist.
std::shared_ptr<Backend> make_cuda_backend(int index);

// Which of the two CUDA engines runs a model with --device cuda:
//  - Runner: the hand-written llama forward and training step (CudaRunner), decoding one
//    token as a replayed CUDA graph; llama-shaped models only.
//  - Backend: the block interpreter on the CUDA backend (make_cuda_backend), every family
//    the CPU runs; each op launched as it comes.
enum class CudaEngine { Runner, Backend };
// Why the CudaRunner does not run models of `spec` (its family, norm, MLP, fused Linears,
// rotary variant or sliding window), or with LLM.int8 weights (`int8_weights`), or "" when
// it does.
std::string cuda_runner_unsupported(const ModelSpec& spec, bool int8_weights = false);
// The engine for `spec` (and LLM.int8 weights or not). `request` is the QLORA_CUDA_ENGINE
// environment variable: "" or "auto" (the runner where it runs the model, else the backend),
// "runner" (Error saying why when it does not run the model) or "backend". Error naming
// QLORA_CUDA_ENGINE otherwise.
CudaEngine choose_cuda_engine(const ModelSpec& spec, std::string_view request, bool int8_weights = false);
const char* cuda_engine_name(CudaEngine e);

// The CUDA runner for `model` on device `index`: uploads the weights (and the model's
// LoRA adapter, when one is attached: attach it before) to the GPU. Throws Error when this
// build has no CUDA backend, the device does not exist, the GPU cannot hold the model, or
// the model holds something the CUDA backend does not run yet (naming it).
std::shared_ptr<const DeviceRunner> make_cuda_runner(const Model& model, int index);

}  // namespace qlora
