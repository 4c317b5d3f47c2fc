#pragma once
// The scratch a block's ops need besides the program's buffers, declared in one place:
// the caller sizes it here, allocates it from its backend (model/backend.h) and hands it to
// the interpreters in BlockRun, and the memory planner (memory/memory_plan.cpp) counts the
// same numbers. No op of a block allocates scratch of its own. (Inside the CPU backend, the
// quantized Linear's product streams its weight through a bounded per-thread tile of at
// most 2 MiB, model/quant_linear.cpp, which the planner counts per thread.)
#include <cstdint>
#include <vector>

#include "lora/lora.h"
#include "model/block_program.h"

namespace qlora {

// What a run of the block needs scratch for.
struct BlockScratchQuery {
  int64_t tokens = 0;    // T: the tokens of one call (a training batch: all its sequences)
  int64_t keys = 0;      // inference: the keys attention reads (the KV cache's capacity)
  int64_t longest = 0;   // training: the batch's longest sequence
  bool training = false; // probabilities are kept (no score scratch); with backward: gradients
  bool backward = false;
  // The adapted Linears (those of the blocks and project_in/out alike; repeats are fine) and
  // whether dropout is on (it only acts when training).
  struct Lora {
    int64_t in = 0, out = 0, r = 0;
  };
  std::vector<Lora> lora;
  bool lora_dropout = false;
};

// Floats of each scratch buffer.
struct BlockScratchFloats {
  int64_t scores = 0;       // attention forward at inference: attention_scratch_floats(T, Tk, NH)
  int64_t raw_scores = 0;   // softcap attention backward: one head's Q Kᵀ of the longest sequence
  int64_t dprobs = 0;       // attention backward: (NH, T_i, T_i) of the longest sequence
  int64_t weight_tile = 0;  // Linear backward: dequantized rows of the largest frozen weight
  LoraScratchFloats lora;   // LoRA's temporaries, the largest adapted Linear's
  // All of them in one arena (each part rounded up to 64 bytes).
  int64_t total() const;
};
BlockScratchFloats block_scratch_floats(const BlockProgram& p, const BlockScratchQuery& q);

// The scratch itself: pointers into one arena of total() floats (null where a size is 0).
struct BlockScratch {
  float* scores = nullptr;
  float* raw_scores = nullptr;
  float* dprobs = nullptr;
  float* weight_tile = nullptr;
  LoraScratch lora;
  // Lays the parts of `f` out in `arena` (REQUIRES f.total() floats there).
  static BlockScratch carve(float* arena, const BlockScratchFloats& f);
};

}  // namespace qlora
