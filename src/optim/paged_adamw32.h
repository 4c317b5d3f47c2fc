#pragma once
// AdamW with float32 state held in a StateBuffer (paged_buffer.h): the arithmetic of
// optim/adamw.h (torch.optim.AdamW, bit for bit), with m and v in one file-backed mapping
// the kernel may write back and evict under memory pressure (transformers' optim
// "paged_adamw_32bit"). tests/optim/test_optimizer.cpp checks every step against AdamW.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "optim/adamw.h"
#include "optim/paged_buffer.h"

namespace qlora {

class SafeTensorsWriter;
class SafeTensorsFile;

// One torch-AdamW step of n elements (optim/adamw.h spells out the arithmetic); `t` is the
// 1-based step. Single-threaded: callers split large tensors.
void torch_adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWConfig& cfg, double lr,
                        int64_t t);

class PagedAdamW32 {
 public:
  // `paged_dir`: directory of the state file ("" = the system temp dir). Throws Error as
  // AdamW does, or naming the directory when the state file cannot be created.
  PagedAdamW32(std::vector<AdamWParam> params, AdamWConfig cfg, const std::string& paged_dir);

  void step(double lr);
  void step() { step(cfg_.lr); }
  int64_t steps_taken() const { return step_; }
  size_t num_params() const { return params_.size(); }
  std::span<const float> exp_avg(size_t i) const;
  std::span<const float> exp_avg_sq(size_t i) const;
  size_t state_bytes() const { return state_bytes_; }
  const StateBuffer& buffer() const { return buf_; }

  // The checkpoint layout of AdamW: "<prefix><name>.exp_avg" / ".exp_avg_sq" (F32) and
  // metadata "<prefix>step". The writer borrows the mapping: write before the next step().
  void save_state(SafeTensorsWriter& w, std::string_view prefix = "optimizer.") const;
  // Checks every tensor before changing anything; Errors name the file and key.
  void load_state(const SafeTensorsFile& f, std::string_view prefix = "optimizer.");

 private:
  std::vector<AdamWParam> params_;
  AdamWConfig cfg_;
  std::vector<size_t> off_m_, off_v_;
  StateBuffer buf_;
  size_t state_bytes_ = 0;
  int64_t step_ = 0;
};

}  // namespace qlora
