#pragma once
// Running a BlockProgram (model/block_program.h) on a backend (model/backend.h): its
// forward (inference and training) and, for training, its backward, the ops replayed in
// reverse through their hand-written backwards. Every op goes through the backend; the
// caller owns every buffer and the declared scratch (model/block_scratch.h), all of it the
// backend's memory; nothing here allocates.
#include <cstdint>
#include <span>
#include <vector>

#include "base/dtype.h"
#include "lora/lora.h"
#include "model/backend.h"
#include "model/block_program.h"
#include "model/block_scratch.h"

namespace qlora {

struct LayerWeights;
class KVCache;
class LoraModel;

// One layer's run of the program over T tokens: one sequence, or (training) a batch of
// sequences laid end to end, which go through every Linear as one product and through
// attention one by one.
struct BlockRun {
  Backend* backend = &cpu_backend();
  const BlockProgram* program = nullptr;
  const LayerWeights* weights = nullptr;
  ComputeDType dtype = ComputeDType::F32;
  int64_t layer = 0;
  int64_t T = 0;
  // (T) each query token's ModelSpec::q_pos_scale, host memory, or null (none: every model
  // but Ministral 3's; the CPU backend only).
  const float* q_scale = nullptr;
  // Training: the lengths of the batch's sequences (summing to T); empty = one sequence.
  std::span<const int64_t> segments;
  // Training with packed examples (positions restarting at 0): the examples' lengths, where a
  // hybrid model's DeltaNet starts again from a zero state, as attention starts each example's
  // keys afresh; empty = segments.
  std::span<const int64_t> recurrent_segments;
  // Storage of each buffer (program->buffers() order), T tokens each (probabilities:
  // NH * T * Tk, or for a batch NH * T_i * T_i per sequence, one after the other).
  // Training-only buffers may be null at inference.
  std::vector<float*> buf;
  // This layer's rotary tables (T, head_dim / 2) and key window (T) or null (causal).
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* key_start = nullptr;  // (for a batch: relative to each sequence's start)
  // Inference: the keys and values go into `cache` at positions pos0.., and attention reads
  // the cache's pos0 + T positions. Null when training (the block's own T keys).
  KVCache* cache = nullptr;
  int64_t pos0 = 0;
  // Batched decoding (instead of cache): row t of the T rows is the next token of the
  // sequence whose keys and values are caches[t], at position caches[t]->length() (each
  // cache's length is advanced by the caller after the last layer); key_start then holds
  // each row's absolute first visible key, or is null (causal).
  std::span<KVCache* const> caches;
  // The adapter (may be null) and, when training, one LoraCache per block Linear
  // (kBlockLinearCount of them) and whether dropout is active (then rng is REQUIRED).
  const LoraModel* adapter = nullptr;
  LoraCache* lora_caches = nullptr;
  bool training = false;
  LoraRng* rng = nullptr;
  // The declared scratch (block_scratch_floats of this run's query).
  BlockScratch scratch;
  // Mixture-of-experts layers in training: where the op's forward keeps what its backward
  // reads (model/moe_block.h); null: the backward recomputes it.
  struct MoeSaved* moe_saved = nullptr;
  // Training a model with shared-KV layers (Gemma 4 E2B / E4B): on a producer layer's backward,
  // the gradients (T, its kv dim) the shared layers' attention left for its keys (after the
  // rotary) and values, added to its attention's (null: none). A shared layer's own keys and
  // values are the producer's, bound by the caller to its attention op's k and v buffers.
  const float* shared_dk = nullptr;
  const float* shared_dv = nullptr;
  // Gemma 4's per-layer inputs of this layer (T, ple_dim) (ModelSpec::ple), and when training
  // where their gradient accumulates (null: not wanted).
  const float* ple = nullptr;
  float* dple = nullptr;
};

// A hybrid model's gated delta rule heads (model/delta_net.h).
struct DeltaRuleShape delta_rule_shape(const ModelSpec& s);
struct SsmShape ssm_shape(const ModelSpec& s);
struct Ssm1Shape ssm1_shape(const ModelSpec& s);  // (Mamba 1's channels and state)

// The program's attention heads, scale, softcap and ALiBi bias (the per-call sizes, key
// window and positions left for the caller to fill).
AttentionShape attention_heads(const BlockProgram& p, const BlockOp& attention);

// Runs the ops in order, writing every buffer the program's ops write.
void block_forward(const BlockRun& r);

// The backward of the forward that filled r.buf (with r.lora_caches): grad[b] is the
// gradient storage of buffer b (same sizes as r.buf; every non-null one is zeroed here
// first, except the output's, which holds d loss / d output on entry). On return
// grad[program->input()] holds d loss / d input. LoRA gradients of `adapter` accumulate.
// Scratch: r.scratch's dprobs, raw_scores, weight_tile and LoRA parts (a backward query).
void block_backward(const BlockRun& r, LoraModel& adapter, const std::vector<float*>& grad);

}  // namespace qlora
