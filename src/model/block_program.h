#pragma once
// One definition of a decoder block, as data: the ops of its forward pass in order, over
// declared buffers. Everything that runs or sizes a block reads this one definition:
//   * inference (model/model.cpp) runs the ops forward, attention reading the KV cache;
//   * training (train/train_model.cpp) runs them forward keeping what the backward reads,
//     then replays them in reverse through the hand-written op backwards (ops_backward.h),
//     recomputing the forward first under gradient checkpointing;
//   * the memory planner (memory/memory_plan.cpp) sums the declared buffers.
// A family's variant (qk-norm, sandwich norms, GeGLU, ...) is a different list of ops, so
// it exists once and inference and training cannot disagree on it (rounding included:
// every op says whether its output is rounded to the compute dtype).
//
// Buffers are (T, width) float32 activations of T tokens, except the attention
// probabilities, (NH, T, Tk). Two buffers are bound by the caller: the block input and
// the block output (the residual stream).
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_spec.h"
#include "model/ops.h"

namespace qlora {

// The norm weights of a block, by what they normalize (LayerWeights::norm).
// Unit: a head_dim-wide norm with unit weight and zero bias, unrounded (the first half of
// ModelSpec::qk_norm_head_weights' norms; a ScaleColumns op applies the weights).
// VHead: Gemma 4's v_norm, a head_dim-wide RMSNorm with unit weight, rounded.
// PostFfn1, PreFfn2, PostFfn2: Gemma 4's MoE block (the dense MLP's output norm, the experts'
// input and output norms).
// PostPle: Gemma 4's post_per_layer_input_norm.
// QLatent, KvLatent: DeepSeek's latent attention's q_a_layernorm and kv_a_layernorm.
enum class NormRole : uint8_t {
  Input, PostAttention, PreFfn, PostFfn, QHead, KHead, Unit, VHead, PostFfn1, PreFfn2, PostFfn2, PostPle, QLatent,
  KvLatent
};

enum class BlockOpKind : uint8_t {
  Norm,       // out = norm(in0) with a weight (and rstd, or LayerNorm's mean and rstd, kept in
              // aux when training); RMSNorm or LayerNorm (+ bias) by the spec
  Linear,     // out = W in0 (+ bias) (+ LoRA)
  Rope,       // in place on out (== in0): rotary on each head, the layer's tables (from column
              // `offset` of each head: DeepSeek's queries rotate their last dims)
  Attention,  // out = attention(q = in0, k = in1, v = in2); probabilities in aux
  GatedAct,   // out = act(in0) * in1: SwiGLU or GeGLU by the spec's mlp
  Act,        // out = act(in0): the plain MLP's activation (spec.act)
  Residual,   // out = in0 + in1
  Slice,      // out = columns [offset, offset + width) of in0 (a fused Linear's part), or of each
              // of `groups` groups of group_stride columns (per-head fused q/k/v)
  Scale,      // out = in0 * factor (Granite's residual_multiplier on a branch output), or with
              // layer_factor the layer's scalar (Gemma 4's layer_scalar on the block output)
  Clamp,      // out = clamp(in0, -factor, factor) (OLMo's clip_qkv)
  ScaleColumns,  // out = in0 * w[column], w the norm weight of `norm` (per-head q/k norm weights)
  Moe,        // out = the routed experts of in0 (+ sigmoid(shared_gate in0) * in1 when in1 is
              // the shared expert's output; Gemma 4: routed by in2); model/moe_block.h
  // The gated DeltaNet of a hybrid model's linear-attention layers (model/delta_net.h):
  CausalConv,  // out = silu(causal depthwise conv1d of in0) (the conv's state: the cache's); LFM2's
               // short conv (spec.la_short_conv): without the SiLU
  DeltaRule,   // out = the gated delta rule over q|k|v = in0, rate logits in1, decay inputs in2
  GatedNorm,   // out = RMSNorm(in0, per value head) * silu(in1) (aux: rstd)
  OutputGate,  // out = in0 * sigmoid(in1) (gated attention's output gate)
  Gather,      // out = columns gather_columns(gather) of in0, in that order (Qwen3-Next's fused
               // in_proj_qkvz / in_proj_ba rearranged into q|k|v, z, b and a)
  PleMul,      // out = in0 * the layer's per-layer inputs (BlockRun::ple; Gemma 4 E2B / E4B)
  Mul,         // out = in0 * in1 elementwise (LFM2's short conv: B * x, C * conv(B x))
  // Mamba2's (model/mamba2.h; spec.la_mamba2):
  SsmScan,     // out = the selective scan over x|B|C = in0 with raw time steps in1 (float32, unrounded)
  SsmNorm,     // out = RMSNorm(in0 * silu(in1)) per group of la_k_heads (aux: rstd)
  // Mamba (1)'s (model/mamba1.h; spec.la_mamba1):
  Ssm1Scan,    // out = the selective scan of x = in0 with steps in1 (dt_proj's outputs) and B | C = in2
               // (float32, unrounded)
  SsmBcdtNorm,  // out = RMSNorm of each of rows_per_token parts of `width` a token, part p times its own
                // weights (la_dt_norm for dt's one part, la_bc_norm for B | C's two), the spec's
                // la_bcdt_eps, rounded as an RMSNorm (Falcon-Mamba's and Jamba's; aux: rstd)
  Concat,      // out = per group g of `groups`: in0's g-th `width` columns, then in1's g-th `width1`
               // (broadcast: in1's only `width1`, the same for every group; in1 -1: zeros)
               // (DeepSeek's keys: each head's own dims | the shared rotary key; values padded)
};

// Which layers an op runs on: every layer, or (hybrid models) the attention layers only or
// the linear-attention layers only, or (Gemma 4, ModelSpec::has_global_geometry) the sliding
// layers' attention or the full-attention layers' (each of its own geometry).
// (GLM-4.5 / DeepSeek: MoeLayers and DenseMlpLayers, the layers whose MLP is the mixture of
// experts or a dense one, ModelSpec::layer_moe.)
// (Llama 4: RotaryLayers and NopeLayers, the layers that rotate and those that do not:
// ModelSpec::layer_rotates.)
enum class LayerMixer : uint8_t {
  All, Attention, Linear, SlidingAttention, GlobalAttention, MoeLayers, DenseMlpLayers, RotaryLayers, NopeLayers
};
// Which branch of the block an op belongs to, for models whose layers have one branch each
// (Nemotron-H: ModelSpec::single_branch): the mixer's ops (its norm through x_mid's residual
// add) run on the layers with a mixer, the MLP's (its norm through x_out's add) on those with an
// MLP, and on the others a copy stands in for the missing branch's residual add.
enum class BranchPart : uint8_t { Both, Mixer, NoMixer, Mlp, NoMlp };

struct BlockOp {
  BlockOpKind kind;
  int out = -1;                  // buffer index
  int in0 = -1, in1 = -1, in2 = -1;
  int aux = -1;                  // Norm: rstd; Attention: probabilities (training only)
  bool round = false;            // round out to the compute dtype afterwards
  // Norm: which weight, and rows of `width` floats per token (per-head norms: heads, head_dim).
  NormRole norm = NormRole::Input;
  int64_t rows_per_token = 1, width = 0;
  int linear = -1;               // Linear: index in kBlockLinearModules order
  int64_t heads = 0;             // Rope: heads in the buffer (and width: the rotated dims); Attention: query heads
  int64_t kv_heads = 0;          // Attention: key/value heads
  int64_t head_dim = 0;          // Rope, Attention: the head size
  bool layer_factor = false;     // Scale: by the layer's scalar (LayerWeights::layer_scalar)
  bool query = false;            // Rope: the queries' (BlockRun::q_scale applies after it)
  int64_t offset = 0;            // Slice: first column
  int64_t groups = 1, group_stride = 0;
  float factor = 1.0f;           // Scale
  int64_t width1 = 0;            // Concat: in1's columns per group
  bool broadcast = false;        // Concat: in1 is one group for all
  int gather = -1;               // Gather: index of its column list (BlockProgram::gather_columns)
  LayerMixer mixer = LayerMixer::All;
  BranchPart part = BranchPart::Both;
  // Computes keys or values: skipped on layers that attend over another layer's (Gemma 4's
  // shared-KV layers: ModelSpec::layer_kv_shared).
  bool kv_only = false;
  // Whether this op runs on layer l of spec s.
  bool runs_on(const ModelSpec& s, int64_t l) const {
    if (kv_only && s.layer_kv_shared(l)) return false;
    switch (part) {
      case BranchPart::Both: break;
      case BranchPart::Mixer: if (!s.layer_has_mixer(l)) return false; break;
      case BranchPart::NoMixer: if (s.layer_has_mixer(l)) return false; break;
      case BranchPart::Mlp: if (!s.layer_has_mlp(l)) return false; break;
      case BranchPart::NoMlp: if (s.layer_has_mlp(l)) return false; break;
    }
    switch (mixer) {
      case LayerMixer::All: return true;
      case LayerMixer::Attention: return !s.layer_is_linear_attn(l);
      case LayerMixer::Linear: return s.layer_is_linear_attn(l);
      case LayerMixer::SlidingAttention: return !s.layer_global(l);
      case LayerMixer::GlobalAttention: return s.layer_global(l);
      case LayerMixer::MoeLayers: return s.layer_moe(l);
      case LayerMixer::DenseMlpLayers: return !s.layer_moe(l);
      case LayerMixer::RotaryLayers: return s.layer_rotates(l);
      case LayerMixer::NopeLayers: return !s.layer_rotates(l);
    }
    return false;
  }
};

struct BlockBuffer {
  std::string name;
  int64_t width = 0;       // floats per token (ignored for probabilities)
  bool probs = false;      // (NH, T, Tk) attention probabilities
  bool training_only = false;  // rstd and probabilities: only the backward reads them
  bool saved = false;      // read by some op's backward: kept per block when training
  // An MLP buffer of a model whose layers' MLPs differ in width (Gemma 4's double-wide MLPs;
  // GLM-4.5's dense layers and shared experts): ModelSpec::layer_ffn(l) wide on layer l, `width`
  // the widest (false: width everywhere).
  bool per_layer_mlp = false;
};

class BlockProgram {
 public:
  // The block of `spec`'s family (the same for every layer; per-layer differences, the
  // sliding window and the local rotary tables, are looked up by layer when run).
  static BlockProgram for_spec(const ModelSpec& spec);

  const std::vector<BlockOp>& ops() const { return ops_; }
  const std::vector<BlockBuffer>& buffers() const { return buffers_; }
  int input() const { return input_; }    // the block input (bound by the caller)
  int output() const { return output_; }  // the block output (bound by the caller)
  const ModelSpec& spec() const { return spec_; }
  // A Gather op's columns of its input, one per output column.
  const std::vector<int32_t>& gather_columns(int gather) const { return gathers_.at(static_cast<size_t>(gather)); }
  // ALiBi models: the attention bias (ops.h), else null.
  const AlibiBias* alibi() const { return alibi_.slopes.empty() ? nullptr : &alibi_; }

  // Floats of buffer b for T tokens (probabilities: NH * T * Tk): the most of any layer, and
  // on layer l (what its ops read and write).
  int64_t floats(int b, int64_t T, int64_t Tk) const;
  int64_t floats_on(int b, int64_t l, int64_t T, int64_t Tk) const;
  // The same for a batch: `tokens` in all, and probabilities of NH * probs_per_head floats
  // (the sum over the batch's sequences of T_i * T_i).
  int64_t batch_floats(int b, int64_t tokens, int64_t probs_per_head) const;
  // ... on layer l (Gemma 4's narrower MLPs).
  int64_t batch_floats_on(int b, int64_t l, int64_t tokens, int64_t probs_per_head) const;
  // Floats training keeps per block for its backward (saved buffers other than the input
  // and output), and the floats of the other (transient) buffers, for B sequences of T tokens.
  int64_t saved_floats(int64_t T, int64_t B = 1) const;
  // Whether some op that runs on layer l reads or writes buffer b (a hybrid model's layers
  // use their own kind's buffers only; every buffer for other models), and the saved floats
  // of layer l's buffers alone.
  bool used_on(int b, int64_t l) const;
  int64_t saved_floats_on(int64_t l, int64_t T, int64_t B = 1) const;
  int64_t transient_floats(int64_t T, int64_t B = 1) const;
  // Whether the backward keeps a gradient for buffer b (all but rstd and probabilities),
  // and the floats of those gradients for B x T tokens (the output's comes from the caller).
  bool has_grad(int b) const { return !buffers_.at(static_cast<size_t>(b)).training_only; }
  int64_t gradient_floats(int64_t T, int64_t B = 1) const;

  // Inference storage: buffers whose lives do not overlap share a slot (greedy, in op
  // order). slot_of()[b] is -1 for the bound input/output and for training-only buffers.
  struct Slots {
    std::vector<int> slot_of;          // per buffer
    std::vector<int64_t> slot_width;   // floats per token of each slot
  };
  const Slots& inference_slots() const { return slots_; }
  int64_t inference_floats(int64_t T) const;  // sum of slot widths x T

 private:
  int buffer(std::string name, int64_t width, bool training_only = false, bool probs = false);
  bool kv_only_ = false;  // stamped on the ops being added
  void op(BlockOp o) {
    o.mixer = mixer_;
    o.part = part_;
    o.kv_only = kv_only_;
    ops_.push_back(o);
  }
  // The hybrid model's gated DeltaNet, writing `out` (the branch output, C wide) from h.
  void build_delta_net(int out, int h);
  // LFM2's gated short convolution (spec.la_short_conv), the same way.
  void build_short_conv(int out, int h);
  // Mamba2's mixer (spec.la_mamba2), the same way.
  void build_mamba2(int out, int h);
  // Mamba (1)'s mixer (spec.la_mamba1), the same way.
  void build_mamba1(int out, int h);
  void add_gather(int out, int in, std::vector<int32_t> columns);
  void finish();
  // Op builders (block_program.cpp): each appends one op over declared buffers.
  void add_norm(int out, int in, NormRole role, int64_t rows, int64_t width, int rstd);
  void add_linear(int out, int in, int which);
  void add_rope(int buf, int64_t heads, bool query = false);
  void add_concat(int out, int a, int b, int64_t groups, int64_t wa, int64_t wb, bool broadcast);
  // DeepSeek's latent attention: q, k and v (head_dim-wide heads, values zero-padded) from h.
  void build_latent_qkv(int q, int k, int v, int h);
  void add_slice(int out, int in, int64_t offset, int64_t width, int64_t groups = 1, int64_t stride = 0);
  void add_clamp(int out, int in, float limit);  // (rounded)
  void add_scale(int out, int in, float factor);  // (rounded)
  void add_residual(int out, int a, int b);
  void add_attention(int out, int q, int k, int v);  // (declares its probabilities buffer)
  void add_act(int out, int in);
  // The post-norm block (spec.post_norm), after x_in is declared.
  void build_post_norm();

  ModelSpec spec_;
  AlibiBias alibi_;
  std::vector<BlockOp> ops_;
  std::vector<BlockBuffer> buffers_;
  int input_ = -1, output_ = -1;
  Slots slots_;
  LayerMixer mixer_ = LayerMixer::All;  // stamped on the ops being added
  BranchPart part_ = BranchPart::Both;   // (the same)
  ModelSpec::AttentionGeometry geometry_;  // the attention ops' being added
  std::vector<std::vector<int32_t>> gathers_;  // Gather ops' column lists
};

}  // namespace qlora
