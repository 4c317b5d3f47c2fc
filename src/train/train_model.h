#pragma once
// Training forward and backward of a whole llama-family Model with LoRA adapters on
// chosen Linear layers (QLoRA): the base weights stay frozen (4-bit or dense); the input
// gradient dX flows through them (dequantized a tile of rows at a time), and only the
// LoRA A/B matrices receive weight gradients.
//
// Block by block: each layer runs the model's BlockProgram (model/block_program.h, the
// same ops inference runs) keeping the buffers its backward reads (norm rstd, q/k/v,
// attention probabilities, MLP activations, LoRA caches); the backward replays the ops in
// reverse (model/block_run.h). With gradient checkpointing only the block inputs are kept;
// the backward recomputes each block from its input (restoring the dropout generator so
// the masks are identical) and then runs its backward, so activation memory is
// O(layers · T · C) + one block.
//
// Thread-safety: a LoraModel is mutated by forward_backward (gradients); one call at a time.
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lora/lora.h"
#include "lora/lora_model.h"
#include "model/model.h"

namespace qlora {

struct TrainStepOptions {
  bool checkpointing = true;  // keep only block inputs, recompute each block in backward
  bool training = true;       // LoRA dropout active (REQUIRES rng when dropout > 0)
  // dlogits are multiplied by this before the backward (1 / number of micro-batches
  // for gradient accumulation).
  float grad_scale = 1.f;
};

// One sequence of a batch (the spans are borrowed for the call).
struct TrainSequenceRef {
  std::span<const int> inputs, targets;
  std::span<const int32_t> positions;  // empty: 0..T-1
};

// Scratch and caches of forward_backward, reusable across calls (grown on demand). Every
// activation, gradient and scratch buffer is `backend`'s memory, and the steps run there.
class TrainWorkspace {
 public:
  struct Block;  // opaque: caches of one block
  struct Impl;   // opaque: all buffers
  explicit TrainWorkspace(Backend& backend = cpu_backend());
  ~TrainWorkspace();
  TrainWorkspace(TrainWorkspace&&) noexcept;
  TrainWorkspace& operator=(TrainWorkspace&&) noexcept;

 private:
  friend float forward_backward(LoraModel&, TrainWorkspace&, std::span<const int>, std::span<const int>,
                                const TrainStepOptions&, LoraRng*, std::span<const int32_t>);
  friend float forward_loss(const LoraModel&, TrainWorkspace&, std::span<const int>, std::span<const int>,
                            std::span<const int32_t>);
  friend float forward_backward_batch(LoraModel&, TrainWorkspace&, std::span<const TrainSequenceRef>,
                                      const TrainStepOptions&, LoraRng*);
  std::unique_ptr<Impl> impl_;
};

// One sequence: inputs (T), targets (T) (-100 = ignored), positions (T) or empty for
// 0..T-1. Packed sequences (train/sft_dataset.h) restart positions at 0 at each example:
// a token at position p attends only the p tokens before it, so examples never see each
// other and each is computed exactly as it would be alone (rotary angles included).
// Returns the mean cross-entropy loss over non-ignored targets and ACCUMULATES
// grad_scale · d loss / d (A, B) into every LoRA layer's dA/dB (call zero_grad first).
// Throws Error when T exceeds the model's context, sizes differ or positions are not
// runs of 0, 1, 2, ...
float forward_backward(LoraModel& lora, TrainWorkspace& ws, std::span<const int> inputs,
                       std::span<const int> targets, const TrainStepOptions& opt, LoraRng* rng,
                       std::span<const int32_t> positions = {});

// A micro-batch in one pass: the sequences laid end to end go through every Linear as one
// product (B times fewer, larger GEMMs and one dequantization of each weight tile), each
// attending to itself only. Returns the mean loss over ALL the batch's target tokens and
// accumulates grad_scale times its gradient: the same numbers as one forward_backward per
// sequence weighted by its share of the targets (dropout masks come from the generator in
// another order). Memory: activations of all B sequences at once.
// Throws Error as forward_backward for any sequence, or for an empty batch.
float forward_backward_batch(LoraModel& lora, TrainWorkspace& ws, std::span<const TrainSequenceRef> batch,
                             const TrainStepOptions& opt, LoraRng* rng);

// The same loss without dropout and without any backward (evaluation, finite differences).
float forward_loss(const LoraModel& lora, TrainWorkspace& ws, std::span<const int> inputs,
                   std::span<const int> targets, std::span<const int32_t> positions = {});

}  // namespace qlora
