#pragma once
// The mixture-of-experts op of a BlockProgram (BlockOpKind::Moe): a router picks each
// token's experts and the block's MLP output is their weighted sum, as transformers 5's
// MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock / OlmoeSparseMoeBlock compute it:
//   p = softmax(float32(router x)); the experts_per_token largest of p (ties: the lower
//   expert first, as torch.topk), divided by their sum when spec.norm_topk, rounded to the
//   compute dtype when spec.moe_round_weights (Qwen, OLMoE; Mixtral keeps float32);
//   out = sum over the chosen experts e, in increasing e, of round(w_e * expert_e(x)), each
//   add rounded to the compute dtype (index_add_ into a compute-dtype tensor), where
//   expert_e(x) = down_e(act(gate_e x) * up_e x) with every product rounded;
//   Qwen2-MoE adds round(round(sigmoid(shared_gate x)) * shared), rounded.
// Routing is decided on the host, so the op needs a host-addressable backend (the CPU's);
// the experts' products go through the backend's linear_forward / linear_backward, so they
// run on its 4-bit, int8 and bf16 kernels.
#include <cstdint>
#include <memory>

#include "model/block_run.h"

namespace qlora {

// What a training forward of the op keeps for its backward (the routing, each expert's
// products and the LoRA caches), so that the backward does not run the experts again.
// Host memory; owned by the caller's per-block training state (BlockRun::moe_saved).
struct MoeSaved;
struct MoeSavedDeleter {
  void operator()(MoeSaved* p) const;
};
using MoeSavedPtr = std::unique_ptr<MoeSaved, MoeSavedDeleter>;
MoeSavedPtr make_moe_saved();
// Floats a MoeSaved holds for a layer of `s` over T tokens with the adapter's ranks (at most):
// for the memory planner.
int64_t moe_saved_floats(const ModelSpec& s, int64_t T, int64_t max_lora_r);

// out (T, C) = the op above of x (T, C); shared: the shared expert's output (T, C), or null.
// When r.training and r.moe_saved are set, keeps what moe_backward reads there.
// Throws Error when r.backend is not host-addressable.
// router_in: what the router reads when it is not x (Gemma 4's: the block's stream), else null.
void moe_forward(const BlockRun& r, float* out, const float* x, const float* shared, const float* router_in = nullptr);

// LoRA: r.adapter's router, shared-gate and expert adapters (LoraModel::find_router, ...)
// are applied unmerged, as PEFT's ParamWrapper computes W + scaling B A (no dropout).
//
// Given dout (T, C) for the forward above of the same x (from r.moe_saved when that forward
// kept its state there for this layer and T, else recomputed here): accumulates dx (T, C) += d loss / dx (through the experts and through
// the routing weights' dependence on x), when shared is set dshared (T, C), and the
// gradients of `adapter`'s router, shared-gate and expert adapters.
// (Gemma 4: the routing's gradient goes to drouter_in (T, C), accumulated, for router_in.)
void moe_backward(const BlockRun& r, LoraModel& adapter, float* dx, float* dshared, const float* dout,
                  const float* x, const float* shared, float* drouter_in = nullptr, const float* router_in = nullptr);

}  // namespace qlora
