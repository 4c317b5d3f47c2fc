#pragma once
// The LoRA adapters of a Model: one LoraLayer per adapted block Linear, found by (layer,
// Linear), then those of the Linears outside the blocks (OPT's project_in / project_out). Used by training (train/train_model.h), by adapters loaded for inference
// (lora/adapter_loader.h) and by the merge; it lives here, beside LoraLayer, so that
// inference and export need nothing from train/.
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lora/lora.h"
#include "model/block_scratch.h"
#include "model/model.h"

namespace qlora {

// The seven Linear layers of a llama block, in module order.
enum class BlockLinear : int { Q = 0, K, V, O, Gate, Up, Down };
inline constexpr int kBlockLinears = kBlockLinearCount;
// "model.layers.<l>.self_attn.q_proj", ..., "model.layers.<l>.mlp.down_proj" (the model's
// own module names, as its Hugging Face checkpoint and PEFT spell them: phi3's fused
// "self_attn.qkv_proj" in the q slot, gpt_neox's "gpt_neox.layers.<l>.attention.
// query_key_value"); "" for a Linear the family does not have (k, v of a fused model).
std::string block_linear_path(const ModelSpec& spec, int64_t layer, BlockLinear which);
const QuantLinear& block_linear(const LayerWeights& L, BlockLinear which);

// The other adaptable parts of a mixture-of-experts layer, by module path (transformers 5's,
// the same for every MoE family):
//   "model.layers.<l>.mlp.gate": the router (PEFT's target_parameters "gate.weight");
//   "model.layers.<l>.mlp.shared_expert_gate": Qwen2-MoE's shared-expert gate (an nn.Linear);
//   "model.layers.<l>.mlp.experts.<e>.gate_up_proj" / ".down_proj": one expert's part (ours:
//     PEFT keeps all experts of a layer in one stacked pair, peft_adapter.h converts).
std::string moe_router_path(int64_t layer);
// The same as PEFT names the module for this model (gpt-oss's router is mlp.router).
std::string moe_router_module_path(const ModelSpec& spec, int64_t layer);
std::string moe_shared_gate_path(const ModelSpec& spec, int64_t layer);
// (as the model names it: under a vision-language wrapper, model.language_model.layers.<l>...)
std::string moe_expert_path(const ModelSpec& spec, int64_t layer, int64_t expert, int part /* 0 gate_up, 1 down */);
// "model.layers.<l>.mlp.experts", the module whose parameters PEFT adapts (as the model names it).
std::string moe_experts_module(const ModelSpec& spec, int64_t layer);

// The LoRA adapters attached to a Model (which is borrowed, never modified).
class LoraModel {
 public:
  // One LoraLayer per Linear that cfg.targets(); A kaiming-uniform from cfg.seed (each
  // layer its own derived seed), B zero. Throws Error when cfg is invalid or targets
  // no Linear of the model.
  LoraModel(const Model& model, const LoraConfig& cfg);

  const Model& model() const { return *model_; }
  const LoraConfig& config() const { return cfg_; }
  std::vector<LoraLayer>& layers() { return layers_; }
  const std::vector<LoraLayer>& layers() const { return layers_; }
  // The adapter of block `l`'s Linear `which`, or null when it has none.
  LoraLayer* find(int64_t l, BlockLinear which);
  const LoraLayer* find(int64_t l, BlockLinear which) const;
  // The adapter of a Linear outside the blocks (project_in / project_out), or null.
  LoraLayer* find(ModelLinear which);
  const LoraLayer* find(ModelLinear which) const;
  // Mixture-of-experts layers: the adapter of layer l's router, of its shared-expert gate,
  // and of expert e's gate_up (part 0: (2 expert_ffn, hidden); ungated experts' up, (expert_ffn, hidden))
  // or down (part 1), or null.
  const LoraLayer* find_router(int64_t l) const;
  const LoraLayer* find_shared_gate(int64_t l) const;
  const LoraLayer* find_expert(int64_t l, int64_t e, int part) const;
  LoraLayer* find_router(int64_t l) { return const_cast<LoraLayer*>(std::as_const(*this).find_router(l)); }
  LoraLayer* find_shared_gate(int64_t l) { return const_cast<LoraLayer*>(std::as_const(*this).find_shared_gate(l)); }
  LoraLayer* find_expert(int64_t l, int64_t e, int part) {
    return const_cast<LoraLayer*>(std::as_const(*this).find_expert(l, e, part));
  }
  void zero_grad();
  int64_t num_trainable() const;

 private:
  void add_moe_layers(const Model& model);  // the router, shared-expert gate and experts
  const Model* model_;
  LoraConfig cfg_;
  std::vector<LoraLayer> layers_;
  std::vector<std::array<int, kBlockLinears>> index_;  // per block: index into layers_ or -1
  std::array<int, kModelLinearCount> model_index_{-1, -1, -1};
  struct MoeIndex {
    int router = -1, shared_gate = -1;
    std::vector<int> gate_up, down;  // per expert, or empty
  };
  std::vector<MoeIndex> moe_index_;  // per block (MoE models)
  const LoraLayer* at(int i) const { return i < 0 ? nullptr : &layers_[static_cast<size_t>(i)]; }
};

// Adds the adapter's Linears (their shapes and whether any has dropout) to a block scratch
// query, so that the LoRA part of the scratch covers every adapted Linear. Null: nothing.
void add_lora_to_scratch_query(BlockScratchQuery& q, const LoraModel* adapter);

}  // namespace qlora
