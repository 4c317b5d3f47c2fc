#pragma once
// AdamW with torch.optim.AdamW's exact float32 arithmetic (single-tensor path,
// foreach=False, fused=False, amsgrad=False, maximize=False), per step t (1-based):
//   p  = p * (1 - lr·wd)                          decoupled weight decay, first
//   m  = lerp(m, g, 1 - β1)                       = fma(1-β1, g - m, m)
//   v  = v·β2 + (1-β2)·g·g                        = fma((1-β2)·g, g, v·β2)
//   denom = sqrt(v) / sqrt(1 - β2^t) + eps
//   p  = p + (-lr / (1 - β1^t)) · m / denom
// Scalars are computed in double (as Python does) and rounded to float32 once. The two
// fused multiply-adds are where torch's CPU kernels (built with FMA contraction) fuse;
// with them the 10-step reference in tests/optim matches torch bit for bit.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/dtype.h"

namespace qlora {

class SafeTensorsWriter;
class SafeTensorsFile;
struct SafeTensorInfo;

struct AdamWConfig {
  double lr = 2e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // transformers' TrainingArguments default (torch's own is 0.01)
};

// A parameter the optimizer updates in place, with its gradient. Spans are borrowed:
// the storage must outlive the optimizer and must not be reallocated.
struct AdamWParam {
  std::string name;  // names the state tensors in checkpoints
  std::span<float> value;
  std::span<const float> grad;
};

// Parses metadata "<prefix>step" of a checkpoint; throws Error naming the file and key.
int64_t read_step_metadata(const SafeTensorsFile& f, std::string_view prefix);
// Optimizer-state tensor `key` of a checkpoint, checked to be `dtype` with `numel` elements;
// throws Error naming the file and key otherwise (every optimizer's load_state uses it).
const SafeTensorInfo& read_state_tensor(const SafeTensorsFile& f, const std::string& key, DType dtype, int64_t numel);

class AdamW {
 public:
  // Throws Error on duplicate names, value/grad size mismatch or invalid hyperparameters.
  AdamW(std::vector<AdamWParam> params, AdamWConfig cfg);

  // One update of every parameter with learning rate `lr` (from a schedule).
  void step(double lr);
  void step() { step(cfg_.lr); }

  int64_t steps_taken() const { return step_; }
  const AdamWConfig& config() const { return cfg_; }
  size_t num_params() const { return params_.size(); }
  const AdamWParam& param(size_t i) const { return params_[i]; }
  std::span<const float> exp_avg(size_t i) const { return m_[i]; }
  std::span<const float> exp_avg_sq(size_t i) const { return v_[i]; }

  // Checkpoint state: tensors "<prefix><name>.exp_avg" and "<prefix><name>.exp_avg_sq"
  // (F32, 1-D) and metadata "<prefix>step". The writer borrows this optimizer's buffers:
  // write it before the next step().
  void save_state(SafeTensorsWriter& w, std::string_view prefix = "optimizer.") const;
  // Restores what save_state wrote. Throws Error naming the file and key when a tensor
  // is missing, has the wrong size or dtype, or the step is absent or invalid.
  void load_state(const SafeTensorsFile& f, std::string_view prefix = "optimizer.");

 private:
  std::vector<AdamWParam> params_;
  AdamWConfig cfg_;
  std::vector<std::vector<float>> m_, v_;
  int64_t step_ = 0;
};

}  // namespace qlora
