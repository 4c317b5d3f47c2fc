#pragma once
// The optimizers `qlora train --optim` offers, behind one interface so the trainer, its
// checkpoints and the memory planner do not care which one runs. Names follow
// transformers' TrainingArguments.optim, which QLoRA users already type:
//   adamw_torch (alias adamw_32bit)  AdamW, float32 state (optim/adamw.h, bit-exact with torch)
//   adamw_8bit  (alias adamw_bnb_8bit) AdamW with both moments 8-bit blockwise (bitsandbytes)
//   paged_adamw_32bit / paged_adamw_8bit  the same, state in a file-backed mapping the
//                                         kernel may page out under memory pressure
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "optim/adamw.h"

namespace qlora {

class SafeTensorsWriter;
class SafeTensorsFile;

enum class OptimKind { AdamW32, AdamW8bit, PagedAdamW32, PagedAdamW8bit };

// Throws Error naming "--optim" and listing the accepted names on an unknown name.
OptimKind optim_kind_from_string(std::string_view name);
const char* optim_kind_name(OptimKind k);  // canonical name, e.g. "paged_adamw_8bit"
bool optim_is_paged(OptimKind k);
bool optim_is_8bit(OptimKind k);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every parameter with learning rate `lr` (from a schedule).
  virtual void step(double lr) = 0;
  virtual int64_t steps_taken() const = 0;
  // Checkpoint state under `prefix` (tensors and metadata; the writer may borrow this
  // optimizer's buffers: write it before the next step()). load_state restores exactly
  // what save_state wrote, so a resumed run continues bit for bit; it throws Error naming
  // the file and key when something is missing or has the wrong size/dtype, or when the
  // file holds the state of a different optimizer kind.
  virtual void save_state(SafeTensorsWriter& w, std::string_view prefix = "optimizer.") const = 0;
  virtual void load_state(const SafeTensorsFile& f, std::string_view prefix = "optimizer.") = 0;
  // Bytes of optimizer state (moments, quantization constants), resident or paged.
  virtual size_t state_bytes() const = 0;
};

// `paged_dir`: directory for the paged optimizers' state file (created if needed, the
// file removed when the optimizer is destroyed); ignored by the non-paged kinds.
std::unique_ptr<Optimizer> make_optimizer(OptimKind kind, std::vector<AdamWParam> params, const AdamWConfig& cfg,
                                          const std::string& paged_dir = {});

}  // namespace qlora
