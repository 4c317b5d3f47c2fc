#pragma once
// 8-bit AdamW as bitsandbytes 0.50.2 does it on CPU tensors (bnb.optim.AdamW8bit:
// optim_bits 8, block-wise, percentile clipping off, max_unorm 0, gnorm_scale 1), bit for
// bit — tests/optim/test_adamw8bit.cpp replays steps recorded from bitsandbytes.
//
// Parameters of >= 4096 elements (bnb's min_8bit_size) keep both moments as uint8 codes
// in blocks of 256, each block with a float32 absmax: m with the signed dynamic map, v with
// the unsigned one (create_dynamic_map(signed=True/False), quant/codebook.h). One step is
// bitsandbytes/backends/cpu/ops.py `_optimizer_update_8bit_blockwise_cpu` ("adam"):
//   m, v  = dequantize(codes, absmax)                code[q] * absmax[block]
//   m     = m·β1;  m = fma(g, 1-β1, m)               mul_(β1).add_(g, alpha=1-β1)
//   v     = v·β2;  v = fma((1-β2)·g, g, v)           mul_(β2).addcmul_(g, g, value=1-β2)
//   denom = sqrt(v) / sqrt(1-β2^t) + eps
//   p     = p·(1 - lr·wd)                            only when wd > 0
//   p     = p + (-lr/(1-β1^t))·m / denom             addcdiv_
//   codes, absmax = quantize_blockwise(m / v)        libbitsandbytes_cpu: absmax = max|x|,
//                                                    code through the 65536-entry table of
//                                                    quant/blockwise.h (not always nearest)
// Smaller parameters keep float32 moments and get bnb's 32-bit update
// (`_optimizer_update_32bit_cpu`, "adam"), which differs from torch's AdamW in where eps
// goes and in rounding:
//   m = m·β1; m = fma(g, 1-β1, m);  v = v·β2; v = fma((1-β2)·g, g, v)
//   p = p·(1 - lr·wd)  (wd > 0)
//   p = fma(m / (sqrt(v) + eps·sqrt(1-β2^t)), -lr·sqrt(1-β2^t)/(1-β1^t), p)
// Scalars are computed in double (Python floats) and rounded to float32 where torch does.
// The fused multiply-adds are where torch's CPU kernels fuse (add with alpha is an fmadd,
// addcmul is contracted); addcdiv is not.
//
// Note: bitsandbytes' CUDA kernel (kOptimizerStatic8bit2StateBlockwise) is a different
// computation: eps·sqrt(1-β2^t) inside the denominator, weight decay applied after the
// step, and codes by a nearest-value binary search with a sign fix-up. We follow the CPU
// backend, which is what bitsandbytes itself runs on CPU tensors.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "optim/adamw.h"
#include "optim/paged_buffer.h"

namespace qlora {

class SafeTensorsWriter;
class SafeTensorsFile;

// The per-step constants of both updates, derived from (config, lr, t) as bnb does.
struct Adam8bitStepScalars {
  float beta1 = 0, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0;
  bool do_decay = false;
  float decay = 1;  // 1 - lr·wd
  // 8-bit update
  float correction2 = 1;  // sqrt(1 - β2^t)
  float eps = 0;
  float step_size = 0;  // -lr / (1 - β1^t)
  // 32-bit update (small tensors)
  float eps32 = 0;        // eps · sqrt(1 - β2^t)
  float step_size32 = 0;  // -lr · sqrt(1 - β2^t) / (1 - β1^t)

  static Adam8bitStepScalars make(const AdamWConfig& cfg, double lr, int64_t t);
};

constexpr int kAdam8bitBlocksize = 256;      // bnb's blockwise optimizers hard-code it
constexpr int64_t kAdam8bitMinSize = 4096;   // bnb's min_8bit_size default
inline bool adam8bit_uses_8bit(int64_t n) { return n >= kAdam8bitMinSize; }

// One 8-bit step of a parameter of n elements: p updated in place, codes q1/q2 (n bytes
// each) and absmax1/absmax2 (ceil(n/256) floats each) read and rewritten.
// The reference is bnb's sequence literally (dequantize all, update all, quantize all, with
// the scalar references of quant/blockwise.h); the fast version fuses the three per block,
// runs blocks on all threads, needs no temporary of size n and uses AVX2 when the CPU has
// it (optim/adam_kernels.h). They are bit-identical.
void adam8bit_update_ref(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1,
                         float* absmax2, const Adam8bitStepScalars& s);
void adam8bit_update(float* p, const float* g, int64_t n, uint8_t* q1, uint8_t* q2, float* absmax1, float* absmax2,
                     const Adam8bitStepScalars& s);
// bnb's 32-bit step (for parameters below min_8bit_size), m and v float32: the scalar
// reference and the dispatched (AVX2 when available) version, bit-identical.
void adam32bnb_update_ref(float* p, const float* g, int64_t n, float* m, float* v, const Adam8bitStepScalars& s);
void adam32bnb_update(float* p, const float* g, int64_t n, float* m, float* v, const Adam8bitStepScalars& s);

class AdamW8bit {
 public:
  // `paged_dir`: nullopt keeps the state in ordinary memory; a value puts all of it in one
  // file-backed mapping in that directory ("" = the system temp dir; see paged_buffer.h).
  // Throws Error on duplicate names, value/grad size mismatch, invalid hyperparameters, or
  // (paged) when the state file cannot be created.
  AdamW8bit(std::vector<AdamWParam> params, AdamWConfig cfg, std::optional<std::string> paged_dir = std::nullopt);

  void step(double lr);
  void step() { step(cfg_.lr); }

  int64_t steps_taken() const { return step_; }
  const AdamWConfig& config() const { return cfg_; }
  size_t num_params() const { return params_.size(); }
  const AdamWParam& param(size_t i) const { return params_[i]; }
  // Whether parameter i has 8-bit state (else float32 state1/state2).
  bool is_8bit(size_t i) const { return slots_[i].is_8bit; }
  std::span<const uint8_t> codes1(size_t i) const;  // 8-bit only
  std::span<const uint8_t> codes2(size_t i) const;
  std::span<const float> absmax1(size_t i) const;
  std::span<const float> absmax2(size_t i) const;
  std::span<const float> state1_f32(size_t i) const;  // float32 only
  std::span<const float> state2_f32(size_t i) const;

  // Bytes of state: codes, absmax and float32 moments (not the alignment padding between
  // arrays, at most 63 bytes per array).
  size_t state_bytes() const { return state_bytes_; }
  const StateBuffer& buffer() const { return buf_; }

  // Checkpoint state, bnb's names: "<prefix><name>.state1"/".state2" (U8[n] codes, or F32[n]
  // below min_8bit_size), "<prefix><name>.absmax1"/".absmax2" (F32[ceil(n/256)], 8-bit
  // only), metadata "<prefix>step". The writer borrows this optimizer's buffers: write it
  // before the next step().
  void save_state(SafeTensorsWriter& w, std::string_view prefix = "optimizer.") const;
  // Restores what save_state wrote; checks every tensor before changing anything. Throws
  // Error naming the file and key when a tensor is missing or has the wrong size or dtype,
  // or the step is absent or invalid.
  void load_state(const SafeTensorsFile& f, std::string_view prefix = "optimizer.");

 private:
  struct Slot {
    bool is_8bit = false;
    int64_t n = 0, blocks = 0;
    size_t off1 = 0, off2 = 0, off_absmax1 = 0, off_absmax2 = 0;  // byte offsets in buf_
  };
  std::vector<AdamWParam> params_;
  AdamWConfig cfg_;
  std::vector<Slot> slots_;
  StateBuffer buf_;
  size_t state_bytes_ = 0;
  int64_t step_ = 0;
};

// Validates AdamWConfig and the parameter list as AdamW does (shared by the optimizers of
// this folder). Throws Error naming `who`.
void validate_adamw_params(const std::vector<AdamWParam>& params, const AdamWConfig& cfg, std::string_view who);

}  // namespace qlora
