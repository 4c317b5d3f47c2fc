#include "model/model_spec.h"

#include <cmath>
#include <string>

#include "base/error.h"

namespace qlora {

std::string layer_tensor_name(int64_t layer, const std::string& module, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + module + "." + suffix;
}

std::string xielu_tensor_name(int64_t layer, int i) {
  static constexpr const char* kNames[4] = {"alpha_p", "alpha_n", "beta", "eps"};
  return layer_tensor_name(layer, "mlp.act_fn", kNames[i]);
}

std::string qk_head_norm_module(bool key, int64_t head) {
  return std::string(key ? "self_attn.k_layernorm.norms." : "self_attn.q_layernorm.norms.") + std::to_string(head);
}

std::string fused_expert_tensor(int part) {
  static constexpr const char* kNames[4] = {"gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"};
  return std::string("mlp.experts.") + kNames[part];
}

std::string fused_expert_name(int64_t layer, int part) {
  return "model.layers." + std::to_string(layer) + "." + fused_expert_tensor(part);
}

std::string expert_module(int64_t expert, int part) {
  static constexpr const char* kParts[3] = {"gate_proj", "up_proj", "down_proj"};
  return "mlp.experts." + std::to_string(expert) + "." + kParts[part];
}

void ModelSpec::validate(const std::string& where) const {
  auto positive = [&](int64_t v, const char* what) {
    if (v <= 0) fail(where, std::string(what) + " must be positive, got " + std::to_string(v));
  };
  positive(hidden, "hidden size");
  positive(n_layers, "number of layers");
  positive(n_heads, "number of attention heads");
  positive(n_kv_heads, "number of key/value heads");
  positive(head_dim, "head dimension");
  positive(ffn, "MLP hidden size");
  positive(vocab, "vocabulary size");
  positive(max_positions, "maximum positions");
  // Guard against absurd numbers from corrupt files before anything is allocated.
  const int64_t kMax = int64_t{1} << 24;
  if (hidden > kMax || ffn > kMax || vocab > (int64_t{1} << 26) || n_layers > 4096 || n_heads > 4096 ||
      head_dim > 65536)
    fail(where, "implausibly large model dimensions (" + summary() + ")");
  if (n_heads % n_kv_heads != 0)
    fail(where, "number of attention heads (" + std::to_string(n_heads) +
                    ") is not a multiple of the number of key/value heads (" + std::to_string(n_kv_heads) + ")");
  if (positional == PositionalKind::Rotary && head_dim % 2 != 0)
    fail(where, "rotary embeddings need an even head dimension, got " + std::to_string(head_dim));
  if (!(rope_theta > 0.0f)) fail(where, "rope theta must be positive");
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0)
    fail(where, "rotary dimensions " + std::to_string(rotary_dim) + " must be even and at most the head dimension " +
                    std::to_string(head_dim));
  for (const RopeScaling* sc : {&rope_scaling, &rope_scaling_local})
    if (sc->type == RopeScaling::Type::LongRope &&
        (static_cast<int64_t>(sc->short_factor.size()) != rope_dims() / 2 ||
         static_cast<int64_t>(sc->long_factor.size()) != rope_dims() / 2))
      fail(where, "longrope short_factor and long_factor need " + std::to_string(rope_dims() / 2) +
                      " values each (half the rotary dimensions), got " + std::to_string(sc->short_factor.size()) +
                      " and " + std::to_string(sc->long_factor.size()));
  if (!(norm_eps >= 0.0f)) fail(where, "norm epsilon must be non-negative");

  if (alibi_falcon && positional != PositionalKind::Alibi) fail(where, "Falcon's ALiBi form without ALiBi");
  if (positional == PositionalKind::Alibi && (attn_softcap > 0.0f || sliding_window > 0))
    fail(where, "ALiBi with soft-capped or sliding-window attention is not a known variant");
  if ((qkv_grouped && (!fused_qkv || qkv_per_head)) || (shared_branch_norm && !parallel_residual))
    fail(where, "grouped fused q/k/v needs a fused qkv Linear; one norm per block needs the parallel residual");
  if (qkv_per_head && (!fused_qkv || n_kv_heads != n_heads))
    fail(where, "per-head fused q/k/v needs a fused qkv Linear and as many key/value heads as query heads");
  if (mla()) {
    if (mla_q_rank < 0 || mla_kv_rank > kMax || mla_q_rank > kMax || mla_nope_dim < 0 || mla_v_dim <= 0 ||
        positional != PositionalKind::Rotary || rotary_dim <= 0 || head_dim != mla_nope_dim + rotary_dim)
      fail(where, "latent attention needs positive kv_lora_rank, v_head_dim and qk_rope_head_dim and a head of "
                  "qk_nope_head_dim + qk_rope_head_dim (got " + std::to_string(head_dim) + " = " +
                  std::to_string(mla_nope_dim) + " + " + std::to_string(rotary_dim) + ")");
    if (v_norm || kv_shared_layers > 0 || ple() || layer_scalar || q_pos_scale_beta != 0.0f)
      fail(where, "latent attention with value norms, shared keys and values, per-layer inputs, layer scalars or a "
                  "per-position query scale is not a known variant");
    if (mla_v_dim > head_dim)
      fail(where, "latent attention with value heads (v_head_dim " + std::to_string(mla_v_dim) +
                      ") wider than the query/key heads (" + std::to_string(head_dim) +
                      ") is not supported (every released DeepSeek model has them narrower)");
    if (n_kv_heads != n_heads || fused_qkv || qk_norm || clip_qkv > 0.0f || attn_output_gate || hybrid() ||
        has_global_geometry() || sandwich_norms || post_norm || parallel_residual || attn_sinks)
      fail(where, "latent attention is built for DeepSeek's block (as many key/value heads as heads; no fused, "
                  "normed, clamped or gated q/k/v)");
  }
  if (qk_norm_round_once && (!qk_norm || norm != NormKind::RMSNorm))
    fail(where, "q/k norms rounded once are RMSNorms over q and k (MiniMax-M2's): this model has none");
  if (embed_dim < 0 || embed_dim > kMax) fail(where, "implausible embedding width " + std::to_string(embed_dim));
  if (post_norm && (parallel_residual || sandwich_norms || shared_branch_norm || qk_norm))
    fail(where, "post-norm blocks with a parallel residual, sandwich, shared or q/k norms are not a known variant");
  if (!pre_norms && (!sandwich_norms || parallel_residual || post_norm || norm != NormKind::RMSNorm))
    fail(where, "blocks without pre-norms are built with post-branch RMSNorms on a sequential block (OLMo 2) only");
  if (!norm_weights && (norm != NormKind::LayerNorm || norm_bias))
    fail(where, "norms without weights are LayerNorms without biases (OLMo's)");
  // (a fused projection is clamped whole: MPT's, its rows q | k | v)
  if (!(clip_qkv >= 0.0f) || !std::isfinite(clip_qkv) ||
      (clip_qkv > 0.0f && ((fused_qkv && (qkv_per_head || qkv_grouped)) || qk_norm)))
    fail(where, "clip_qkv must be non-negative, and is built for separate q/k/v projections, or one fused q | k | v, "
                "without q/k norms");
  if ((alibi_mpt || alibi_bias_max != 8.0f) && (positional != PositionalKind::Alibi || alibi_falcon ||
                                                !(alibi_bias_max > 0.0f) || !std::isfinite(alibi_bias_max)))
    fail(where, "MPT's ALiBi (alibi_bias_max " + std::to_string(alibi_bias_max) + ") needs ALiBi positions and a "
                "positive alibi_bias_max");
  if (qk_norm_full && !qk_norm) fail(where, "a q/k norm over all heads needs q/k norms");
  if (qk_norm_after_rope && (!qk_norm || qk_norm_full || qk_norm_head_weights || positional != PositionalKind::Rotary))
    fail(where, "q/k norms after the rotary are built for per-head norms with one shared weight on a rotary model");
  if ((qk_norm_head_weights && (!qk_norm || qk_norm_full)) || (qk_norm_tensor_per_head && !qk_norm_head_weights))
    fail(where, "per-head q/k norm weights need per-head q/k norms");
  if (projects_embeddings() && (embed_scale || embed_norm))
    fail(where, "projected embeddings with scaled or normalized embeddings are not a known variant");
  if (norm == NormKind::LayerNorm && norm_unit_offset && (!norm_bias || !norm_weights))
    fail(where, "a (1 + w) LayerNorm (Nemotron's) has weights and biases");
  if (sliding_window < 0) fail(where, "sliding window must be non-negative, got " + std::to_string(sliding_window));
  if (!nope_layers.empty() && static_cast<int64_t>(nope_layers.size()) != n_layers)
    fail(where, "no_rope_layers names " + std::to_string(nope_layers.size()) + " layers, the model has " +
                    std::to_string(n_layers));
  if (!sliding_layers.empty() && static_cast<int64_t>(sliding_layers.size()) != n_layers)
    fail(where, "layer_types names " + std::to_string(sliding_layers.size()) + " layers, the model has " +
                    std::to_string(n_layers));
  if (attn_scale < 0.0f || attn_softcap < 0.0f || final_softcap < 0.0f || !std::isfinite(attn_scale) ||
      !std::isfinite(attn_softcap) || !std::isfinite(final_softcap))
    fail(where, "attention scale and soft caps must be finite and non-negative");
  for (float m : {embed_multiplier, residual_multiplier, logit_divisor, logit_multiplier})
    if (!(m > 0.0f) || !std::isfinite(m))
      fail(where, "embedding, residual and logit multipliers must be positive and finite, got " + std::to_string(m));
  if (n_experts < 0 || n_experts > 4096) fail(where, "implausible number of experts " + std::to_string(n_experts));
  if (moe()) {
    if (experts_per_token < 1 || experts_per_token > n_experts)
      fail(where, "experts per token must be between 1 and the number of experts (" + std::to_string(n_experts) +
                      "), got " + std::to_string(experts_per_token));
    if (expert_ffn <= 0 || expert_ffn > kMax)
      fail(where, "expert MLP size must be positive, got " + std::to_string(expert_ffn));
    // (fused_gate_up: Granite 4.0's shared expert, shared_mlp.input_linear)
    if ((mlp != MlpKind::SwiGLU && !(moe_gemma4 && mlp == MlpKind::GeGLU) && !(moe_ungated && mlp == MlpKind::Plain)) ||
        (fused_gate_up && !(moe_granite && shared_expert)) || parallel_residual || post_norm || mlp_bias)
      fail(where, "mixture-of-experts blocks are built with bias-free SwiGLU experts (GeGLU: Gemma 4's; plain up -> "
                  "act -> down: Nemotron 3's) on a sequential pre-norm block");
    if (moe_ungated && (mlp != MlpKind::Plain || moe_fused_experts || moe_gpt_oss || moe_gemma4 || moe_llama4 || moe_granite))
      fail(where, "ungated experts (Nemotron 3's) are stored one tensor per expert beside a plain MLP");
    if (moe_gemma4 && (!moe_fused_experts || shared_expert || !sandwich_norms || moe_gpt_oss))
      fail(where, "Gemma 4's MoE block has fused experts beside a dense MLP, between sandwich norms");
    if (moe_fused_experts && moe_gpt_oss) fail(where, "gpt-oss's experts have their own fused layout");
    if (moe_gpt_oss && (shared_expert || !(swiglu_limit > 0.0f) || !std::isfinite(swiglu_limit) ||
                        !std::isfinite(swiglu_alpha)))
      fail(where, "gpt-oss experts need a positive, finite swiglu_limit and a finite swiglu_alpha, and no shared expert");
    if (moe_dense_layers < 0 || moe_dense_layers > n_layers)
      fail(where, "first_k_dense_replace must be between 0 and the number of layers, got " + std::to_string(moe_dense_layers));
    if (!moe_layer_list.empty() && static_cast<int64_t>(moe_layer_list.size()) != n_layers)
      fail(where, "moe_layers marks " + std::to_string(moe_layer_list.size()) + " layers, the model has " +
                      std::to_string(n_layers));
    if (!moe_layer_list.empty() && moe_dense_layers != 0)
      fail(where, "MoE layers are listed (moe_layers) or start at first_k_dense_replace, not both");
    if (moe_llama4 && (!shared_expert || shared_expert_gate || moe_f32_router() || moe_gemma4 || moe_gpt_oss ||
                       moe_granite || moe_router_linear || norm_topk || moe_round_weights))
      fail(where, "Llama 4's router (sigmoid weights on the experts' inputs, an ungated shared expert) takes no other "
                  "routing");
    if (has_dense_mlp_layers() && (moe_gemma4 || moe_gpt_oss))
      fail(where, "dense MLP layers beside the MoE ones are not a Gemma 4 or gpt-oss form");
    if (shared_expert_ffn < 0 || shared_expert_ffn > kMax) fail(where, "implausible shared expert size");
    if (!shared_expert_gate && !shared_expert) fail(where, "ungated shared experts are configured, but there are none (a shared-expert count of 0?)");
    if (moe_sigmoid_router || moe_softmax_f32) {  // (groups: DeepSeek-V3's sigmoid, V2's softmax)
      if (moe_groups < 1 || n_experts % moe_groups != 0 || moe_topk_groups < 1 || moe_topk_groups > moe_groups)
        fail(where, "n_group (" + std::to_string(moe_groups) + ") must divide the " + std::to_string(n_experts) +
                        " experts and topk_group (" + std::to_string(moe_topk_groups) + ") be between 1 and it");
      if (moe_sigmoid_router && moe_groups > 1 && n_experts / moe_groups < 2)
        fail(where, "each expert group scores its two best experts: groups need at least two");
      if (experts_per_token > moe_topk_groups * (n_experts / moe_groups))
        fail(where, "num_experts_per_tok exceeds the experts of the topk_group groups it may choose from");
      if (moe_gemma4 || moe_gpt_oss || moe_biased_softmax || (moe_sigmoid_router && moe_softmax_f32))
        fail(where, "DeepSeek's routers (V3's sigmoid, V2's float32 softmax) take no other routing");
    } else if (moe_groups != 1 || moe_topk_groups != 1) {
      fail(where, "expert groups are built for DeepSeek's routers only");
    }
    if (!(moe_routed_scale > 0.0f) || !std::isfinite(moe_routed_scale))
      fail(where, "routed_scaling_factor must be positive and finite");
    if (moe_routed_scale != 1.0f && !moe_sigmoid_router && !moe_softmax_f32)
      fail(where, "routed_scaling_factor is built for DeepSeek's routers (and GLM-4.5's) only");
    if (moe_granite && shared_expert && (shared_expert_gate || !fused_gate_up))
      fail(where, "Granite MoE's shared expert (Granite 4.0's shared_mlp) is ungated and fused (input_linear)");
    if (moe_biased_softmax && (moe_sigmoid_router || moe_gemma4 || moe_gpt_oss || !(moe_norm_min >= 0.0f)))
      fail(where, "ERNIE 4.5's router (a float32 softmax with a score bias) takes no other routing");
  } else if (shared_expert) {
    fail(where, "a shared expert without experts");
  }
  if (hybrid()) {
    if (static_cast<int64_t>(linear_attn_layers.size()) != n_layers)
      fail(where, "layer_types names " + std::to_string(linear_attn_layers.size()) + " layers, the model has " +
                      std::to_string(n_layers));
    if (la_mamba2 && (la_short_conv || la_fused_qkvz))
      fail(where, "Mamba2 layers are neither short convolutions nor Qwen3-Next's fused DeltaNet");
    if (la_mamba1 && (la_mamba2 || la_short_conv || la_fused_qkvz || la_v_dim != 1 || la_k_heads != 1))
      fail(where, "Mamba (1) layers are channels of one value and one group of B and C, nothing else");
    if (la_mamba1 && (la_dt_rank <= 0 || la_dt_rank > 65536))
      fail(where, "time_step_rank must be positive, got " + std::to_string(la_dt_rank));
    if (la_bcdt_weights && !la_bcdt_norm) fail(where, "weights for the dt / B / C norms of a mixer without them");
    if (la_mamba1 && !(la_bcdt_eps > 0.0f && std::isfinite(la_bcdt_eps)))
      fail(where, "mixer_rms_eps must be positive and finite");
    if (la_mamba2 && !(la_dt_min >= 0.0f && la_dt_min <= la_dt_max))
      fail(where, "time_step_limit must be two increasing non-negative bounds, got " + std::to_string(la_dt_min) + ", " +
                      std::to_string(la_dt_max));
    if (la_short_conv) {
      if (la_fused_qkvz || la_k_heads != 0 || la_v_heads != 0)
        fail(where, "short-convolution layers (LFM2's) have no DeltaNet heads");
    } else {
      for (int64_t v : {la_k_heads, la_v_heads, la_k_dim, la_v_dim})
        if (v <= 0 || v > 65536) fail(where, "linear attention head counts and sizes must be positive, got " + std::to_string(v));
    }
    if (!la_short_conv && la_v_heads % la_k_heads != 0)
      fail(where, "linear_num_value_heads (" + std::to_string(la_v_heads) + ") is not a multiple of linear_num_key_heads (" +
                      std::to_string(la_k_heads) + ")");
    if (la_conv_kernel < 1 || la_conv_kernel > 64)
      fail(where, std::string(la_short_conv ? "conv_L_cache" : "linear_conv_kernel_dim") +
                      " must be between 1 and 64, got " + std::to_string(la_conv_kernel));
    if (no_mlp && (moe() || fused_gate_up || shared_branch_norm))
      fail(where, "layers without an MLP (Mamba2's) have no experts or fused MLP");
    if (fused_qkv || post_norm || parallel_residual || !pre_norms || sandwich_norms || norm != NormKind::RMSNorm)
      fail(where, "linear-attention layers are built on a sequential pre-RMSNorm block with separate q/k/v (Qwen3.5's)");
  }
  if (single_branch()) {  // (Nemotron-H: one branch per layer, between one pre-norm and the residual add)
    if (static_cast<int64_t>(mlp_only_layers.size()) != n_layers)
      fail(where, "layers_block_type names " + std::to_string(mlp_only_layers.size()) + " layers, the model has " +
                      std::to_string(n_layers));
    for (int64_t l = 0; l < n_layers; ++l) {
      if (!layer_has_mixer(l) && layer_is_linear_attn(l))
        fail(where, "layer " + std::to_string(l) + " is both an MLP layer and a Mamba layer");
      if (layer_moe(l) && layer_has_mixer(l))  // (Nemotron 3's experts: a layer of their own)
        fail(where, "layer " + std::to_string(l) + " has experts but is not an MLP layer");
    }
    if (no_mlp || (moe() && !moe_ungated) || fused_qkv || fused_gate_up || post_norm || parallel_residual || !pre_norms || sandwich_norms ||
        shared_branch_norm || norm != NormKind::RMSNorm || mla() || qk_norm || attn_sinks || has_global_geometry() ||
        layer_scalar || ple() || residual_multiplier != 1.0f)
      fail(where, "layers of one branch each (Nemotron-H's) are built on a pre-RMSNorm block with separate q/k/v and "
                  "an unfused MLP");
  }
  if (has_global_geometry() || global_kv_heads != 0 || global_k_eq_v) {
    if (global_head_dim <= 0 || global_head_dim > 65536 || global_head_dim % 2 != 0)
      fail(where, "global_head_dim must be positive and even, got " + std::to_string(global_head_dim));
    if (global_kv_heads < 0 || (global_kv_heads > 0 && n_heads % global_kv_heads != 0))
      fail(where, "number of attention heads (" + std::to_string(n_heads) +
                      ") is not a multiple of num_global_key_value_heads (" + std::to_string(global_kv_heads) + ")");
    if (sliding_layers.empty() || hybrid() || !rope_local)
      fail(where, "full-attention layers of their own geometry need layer_types naming them, a rope of their own "
                  "(rope_parameters per layer type) and no linear attention");
    if (fused_qkv || clip_qkv > 0.0f || attn_output_gate || qk_norm_full || qk_norm_head_weights ||
        qk_norm_after_rope || positional != PositionalKind::Rotary || rotary_dim != 0 || rope_interleaved)
      fail(where, "full-attention layers of their own geometry are built for separate q/k/v projections with "
                  "per-head q/k norms before a whole-head rotary (Gemma 4's)");
  }
  if (ple_dim < 0 || ple_dim > kMax || (ple() && (ple_vocab <= 0 || ple_vocab > vocab || !layer_scalar)))
    fail(where, "hidden_size_per_layer_input / vocab_size_per_layer_input must be positive and at most the vocabulary "
                "(Gemma 4's per-layer inputs)");
  if (kv_shared_layers != 0 || double_wide_shared_mlp) {
    if (kv_shared_layers < 0 || kv_shared_layers >= n_layers || !v_norm || sliding_layers.empty())
      fail(where, "num_kv_shared_layers must leave some layers with keys and values (Gemma 4's), got " +
                      std::to_string(kv_shared_layers));
    for (int64_t l = n_layers - kv_shared_layers; l < n_layers; ++l)
      if (kv_source(l) == l)
        fail(where, "shared layer " + std::to_string(l) + " has no earlier " +
                        (layer_global(l) ? "full-attention" : "sliding") + " layer whose keys and values it can use");
  }
  if (q_pos_scale_beta != 0.0f && (!std::isfinite(q_pos_scale_beta) || q_pos_scale_period <= 0 || q_pos_scale_offset < 0))
    fail(where, "llama_4_scaling_beta needs a finite beta and a positive original_max_position_embeddings");
  if (qk_l2_norm && (qk_norm || positional != PositionalKind::Rotary || mla() || hybrid() || has_global_geometry()))
    fail(where, "Llama 4's weightless q/k norms are built for a rotary model without q/k norm weights");
  if (window_chunked && sliding_window <= 0) fail(where, "chunked attention needs a positive attention_chunk_size");
  if (bos_id >= vocab) fail(where, "bos token id " + std::to_string(bos_id) + " is outside the vocabulary");
  for (int e : eos_ids)
    if (e >= vocab) fail(where, "eos token id " + std::to_string(e) + " is outside the vocabulary");
}

std::array<BlockLinearSpec, kBlockLinearCount> ModelSpec::block_linears(int64_t layer) const {
  auto l = block_linears();
  if (moe() && !layer_moe(layer)) {  // (GLM-4.5, DeepSeek: the dense layers before the MoE ones)
    const auto& m = kBlockLinearModules;
    // (Nemotron 3's dense MLP layers beside the MoE ones: plain, up and down only)
    l[4] = mlp == MlpKind::Plain ? BlockLinearSpec{nullptr, 0, 0, false} : BlockLinearSpec{m[4], ffn, hidden, mlp_bias};
    l[5] = {m[5], ffn, hidden, mlp_bias};
    l[6] = {m[6], hidden, ffn, mlp_bias};
  }
  if (layer_ffn(layer) != ffn) {  // (Gemma 4's double-wide MLPs; the shared experts beside dense layers)
    l[4].out = l[5].out = layer_ffn(layer);
    l[6].in = layer_ffn(layer);
  }
  if (!layer_global(layer)) return l;
  const AttentionGeometry g = attention_geometry(true);
  l[0].out = g.q_dim();
  l[1].out = l[2].out = g.kv_dim();
  l[3].in = g.q_dim();
  return l;
}

std::array<BlockLinearSpec, kBlockLinearCount> ModelSpec::block_linears() const {
  const auto& m = kBlockLinearModules;
  const BlockLinearSpec absent{nullptr, 0, 0, false};
  std::array<BlockLinearSpec, kBlockLinearCount> l = {{{m[0], q_dim(), hidden, qkv_bias},
                                                       {m[1], kv_dim(), hidden, qkv_bias},
                                                       {m[2], kv_dim(), hidden, qkv_bias},
                                                       {m[3], hidden, q_dim(), o_bias},
                                                       {m[4], ffn, hidden, mlp_bias},
                                                       {m[5], ffn, hidden, mlp_bias},
                                                       {m[6], hidden, ffn, mlp_bias},
                                                       absent, absent, absent, absent, absent, absent, absent, absent}};
  if (ple()) {
    l[kPleGateLinear] = {m[kPleGateLinear], ple_dim, hidden, false};
    l[kPleProjLinear] = {m[kPleProjLinear], hidden, ple_dim, false};
  }
  if (attn_output_gate) l[0].out = 2 * q_dim();  // (per head: the query, then its gate)
  if (mla()) {  // (DeepSeek's latent attention: q_a / q_b or q_proj, kv_a, kv_b, o)
    l[0] = mla_q_rank > 0 ? BlockLinearSpec{"self_attn.q_a_proj", mla_q_rank, hidden, qkv_bias}
                          : BlockLinearSpec{"self_attn.q_proj", q_dim(), hidden, false};
    l[1] = {"self_attn.kv_a_proj_with_mqa", mla_kv_rank + rope_dims(), hidden, qkv_bias};
    l[2] = {"self_attn.kv_b_proj", n_heads * (mla_nope_dim + mla_v_dim), mla_kv_rank, false};
    l[3] = {m[3], hidden, n_heads * mla_v_dim, o_bias};
    if (mla_q_rank > 0) l[kMlaQbLinear] = {m[kMlaQbLinear], q_dim(), mla_q_rank, false};
  }
  if (hybrid()) {
    l[7] = {m[7], la_conv_dim(), hidden, false};
    l[8] = {m[8], la_value_dim(), hidden, false};
    l[9] = {m[9], la_v_heads, hidden, false};
    l[10] = {m[10], la_v_heads, hidden, false};
    l[11] = {m[11], hidden, la_value_dim(), false};
    if (la_short_conv) {  // (LFM2: in_proj gives B | C | x, out_proj maps back)
      l[7] = {m[7], 3 * hidden, hidden, false};
      l[11] = {m[11], hidden, hidden, false};
      l[8] = l[9] = l[10] = absent;
    }
    if (la_mamba1) {  // (in_proj gives x | z, x_proj dt | B | C, dt_proj the steps, out_proj maps back)
      l[7] = {m[7], 2 * la_value_dim(), hidden, la_proj_bias};
      l[9] = {m[9], la_dt_rank + 2 * la_k_dim, la_value_dim(), false};
      l[10] = {m[10], la_value_dim(), la_dt_rank, true};
      l[11] = {m[11], hidden, la_value_dim(), la_proj_bias};
      l[8] = absent;
    }
    if (la_mamba2) {  // (in_proj gives z | xBC | dt, out_proj maps the inner width back)
      l[7] = {m[7], la_value_dim() + la_conv_dim() + la_v_heads, hidden, la_proj_bias};
      l[11] = {m[11], hidden, la_value_dim(), la_proj_bias};
      l[8] = l[9] = l[10] = absent;
    }
    if (la_fused_qkvz) {
      l[7] = {"linear_attn.in_proj_qkvz", 2 * la_key_dim() + 2 * la_value_dim(), hidden, false};
      l[9] = {"linear_attn.in_proj_ba", 2 * la_v_heads, hidden, false};
      l[8] = l[10] = absent;
    }
  }
  if (fused_qkv) {
    l[0] = {"self_attn.qkv_proj", q_dim() + 2 * kv_dim(), hidden, qkv_bias};
    l[1] = l[2] = absent;
  }
  if (fused_gate_up) {
    l[4] = {"mlp.gate_up_proj", 2 * ffn, hidden, mlp_bias};
    l[5] = absent;
  }
  if (mlp == MlpKind::Plain) l[4] = absent;  // up, act, down: no gate
  if (no_mlp) l[4] = l[5] = l[6] = absent;
  if (moe() && !moe_gemma4) {  // the experts are not among the seven; the shared expert is (Gemma 4: its dense MLP)
    if (shared_expert && fused_gate_up) {  // (Granite 4.0's shared_mlp: input_linear = gate | up)
      l[4].module = "mlp.shared_expert.gate_up_proj";
      l[6].module = "mlp.shared_expert.down_proj";
    } else if (shared_expert) {
      if (l[4].module) l[4].module = "mlp.shared_expert.gate_proj";  // (a plain MLP's shared expert: up, down)
      l[5].module = "mlp.shared_expert.up_proj";
      l[6].module = "mlp.shared_expert.down_proj";
    } else {
      l[4] = l[5] = l[6] = absent;
    }
  }
  return l;
}

std::vector<TensorSpec> ModelSpec::tensors() const {
  std::vector<TensorSpec> t;
  // Weights of Linears [b, e), then their biases (the order Hugging Face checkpoints list).
  auto linears = [&](int64_t l, int b, int e) {
    const auto lin = block_linears(l);
    for (int i = b; i < e; ++i)
      if (lin[i].module && layer_has_linear(l, i)) t.push_back({layer_tensor_name(l, lin[i].module), {lin[i].out, lin[i].in}});
    for (int i = b; i < e; ++i)
      if (lin[i].module && layer_has_linear(l, i) && lin[i].bias)
        t.push_back({layer_tensor_name(l, lin[i].module, "bias"), {lin[i].out}});
  };
  const bool ln = norm == NormKind::LayerNorm && norm_bias;  // (each norm has a bias)
  const int64_t E = embed_width();
  t.push_back({"model.embed_tokens.weight", {vocab, E}});
  if (ple()) {  // (Gemma 4's per-layer inputs)
    t.push_back({"model.embed_tokens_per_layer.weight", {ple_vocab, n_layers * ple_dim}});
    t.push_back({"model.per_layer_model_projection.weight", {n_layers * ple_dim, hidden}});
    t.push_back({"model.per_layer_projection_norm.weight", {ple_dim}});
  }
  if (projects_embeddings()) t.push_back({"model.project_in.weight", {hidden, E}});
  if (positional == PositionalKind::Learned)
    t.push_back({"model.embed_positions.weight", {max_positions + position_offset, hidden}});
  if (embed_norm) {
    t.push_back({"model.embed_norm.weight", {hidden}});
    t.push_back({"model.embed_norm.bias", {hidden}});
  }
  for (int64_t l = 0; l < n_layers; ++l) {
    if (pre_norms && norm_weights) t.push_back({layer_tensor_name(l, "input_layernorm"), {hidden}});
    if (ln) t.push_back({layer_tensor_name(l, "input_layernorm", "bias"), {hidden}});
    if (layer_is_linear_attn(l)) {  // the gated DeltaNet's (transformers' module order)
      const std::string prefix = "model.layers." + std::to_string(l) + ".linear_attn.";
      if (!la_short_conv && !la_mamba1) {
        t.push_back({prefix + "dt_bias", {la_v_heads}});
        t.push_back({prefix + "A_log", {la_v_heads}});
      }
      t.push_back({layer_tensor_name(l, "linear_attn.conv1d"), {la_conv_dim(), 1, la_conv_kernel}});
      if (la_conv_bias) t.push_back({layer_tensor_name(l, "linear_attn.conv1d", "bias"), {la_conv_dim()}});
      if (la_mamba2) t.push_back({prefix + "D", {la_v_heads}});
      if (la_mamba1) {  // (A_log per channel and state, D per channel; no gated norm)
        t.push_back({prefix + "A_log", {la_v_heads, la_k_dim}});
        t.push_back({prefix + "D", {la_v_heads}});
        if (la_bcdt_weights) {  // (Jamba's dt / B / C norms)
          t.push_back({prefix + "dt_layernorm.weight", {la_dt_rank}});
          t.push_back({prefix + "b_layernorm.weight", {la_k_dim}});
          t.push_back({prefix + "c_layernorm.weight", {la_k_dim}});
        }
      }
      if (!la_short_conv && !la_mamba1) t.push_back({layer_tensor_name(l, "linear_attn.norm"), {la_mamba2 ? la_value_dim() : la_v_dim}});
      linears(l, 7, 12);
    }
    linears(l, 0, 3);  // q, k, v
    linears(l, 3, 4);  // o
    if (mla()) {  // (the latents' norms, the query latent's up-projection)
      if (mla_q_rank > 0) t.push_back({layer_tensor_name(l, "self_attn.q_a_layernorm"), {mla_q_rank}});
      t.push_back({layer_tensor_name(l, "self_attn.kv_a_layernorm"), {mla_kv_rank}});
      linears(l, kMlaQbLinear, kMlaQbLinear + 1);
    }
    if (sandwich_norms) {
      if (pre_norms) t.push_back({layer_tensor_name(l, "pre_feedforward_layernorm"), {hidden}});
      t.push_back({layer_tensor_name(l, "post_feedforward_layernorm"), {hidden}});
    }
    if (qk_norm && (layer_global(l) || layer_kv_shared(l))) {  // (Gemma 4: each layer its own head size)
      t.push_back({layer_tensor_name(l, "self_attn.q_norm"), {layer_geometry(l).head_dim}});
      if (!layer_kv_shared(l)) t.push_back({layer_tensor_name(l, "self_attn.k_norm"), {layer_geometry(l).head_dim}});
    } else if (qk_norm && !layer_is_linear_attn(l)) {
      if (qk_norm_tensor_per_head) {
        for (int64_t h = 0; h < n_heads; ++h)
          t.push_back({layer_tensor_name(l, qk_head_norm_module(false, h)), {head_dim}});
        for (int64_t h = 0; h < n_kv_heads; ++h)
          t.push_back({layer_tensor_name(l, qk_head_norm_module(true, h)), {head_dim}});
      } else if (qk_norm_head_weights) {
        t.push_back({layer_tensor_name(l, "self_attn.q_norm"), {n_heads, head_dim}});
        t.push_back({layer_tensor_name(l, "self_attn.k_norm"), {n_kv_heads, head_dim}});
      } else {
        t.push_back({layer_tensor_name(l, "self_attn.q_norm"), {qk_norm_full ? q_dim() : head_dim}});
        t.push_back({layer_tensor_name(l, "self_attn.k_norm"), {qk_norm_full ? kv_dim() : head_dim}});
      }
    }
    if (attn_sinks) t.push_back({"model.layers." + std::to_string(l) + ".self_attn.sinks", {n_heads}});
    if (!shared_branch_norm && layer_has_mlp(l) && !single_branch() && norm_weights) {
      t.push_back({layer_tensor_name(l, "post_attention_layernorm"), {hidden}});
      if (ln) t.push_back({layer_tensor_name(l, "post_attention_layernorm", "bias"), {hidden}});
    }
    if (layer_moe(l) && moe_gpt_oss) {  // router with a bias, experts fused
      t.push_back({layer_tensor_name(l, kMoeRouterModule), {n_experts, hidden}});
      t.push_back({layer_tensor_name(l, kMoeRouterModule, "bias"), {n_experts}});
      t.push_back({fused_expert_name(l, 0), {n_experts, hidden, 2 * expert_ffn}});
      t.push_back({fused_expert_name(l, 1), {n_experts, 2 * expert_ffn}});
      t.push_back({fused_expert_name(l, 2), {n_experts, expert_ffn, hidden}});
      t.push_back({fused_expert_name(l, 3), {n_experts, hidden}});
    } else if (layer_moe(l) && moe_gemma4) {  // (Gemma 4: the router's own scales and the experts' norms)
      t.push_back({layer_tensor_name(l, kMoeRouterModule), {n_experts, hidden}});
      t.push_back({"model.layers." + std::to_string(l) + ".router.scale", {hidden}});
      t.push_back({"model.layers." + std::to_string(l) + ".router.per_expert_scale", {n_experts}});
      t.push_back({fused_expert_name(l, 0), {n_experts, 2 * expert_ffn, hidden}});
      t.push_back({fused_expert_name(l, 2), {n_experts, hidden, expert_ffn}});
      for (const char* n : {"post_feedforward_layernorm_1", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_2"})
        t.push_back({layer_tensor_name(l, n), {hidden}});
    } else if (layer_moe(l) && moe_fused_experts && moe_llama4) {  // (Llama 4's: (in, out), then the router)
      t.push_back({fused_expert_name(l, 0), {n_experts, hidden, 2 * expert_ffn}});
      t.push_back({fused_expert_name(l, 2), {n_experts, expert_ffn, hidden}});
      t.push_back({layer_tensor_name(l, kMoeRouterModule), {n_experts, hidden}});
    } else if (layer_moe(l) && moe_fused_experts) {  // (transformers 5's fused experts)
      t.push_back({layer_tensor_name(l, kMoeRouterModule), {n_experts, hidden}});
      if (moe_has_score_bias())
        t.push_back({"model.layers." + std::to_string(l) + "." + moe_score_bias,
                     moe_score_bias_rows ? std::vector<int64_t>{1, n_experts} : std::vector<int64_t>{n_experts}});
      t.push_back({fused_expert_name(l, 0), {n_experts, 2 * expert_ffn, hidden}});
      t.push_back({fused_expert_name(l, 2), {n_experts, hidden, expert_ffn}});
      if (shared_expert && shared_expert_gate) t.push_back({layer_tensor_name(l, kMoeSharedGateModule), {1, hidden}});
    } else if (layer_moe(l)) {  // (the Hub's order: router, experts, then the shared expert)
      t.push_back({layer_tensor_name(l, kMoeRouterModule), {n_experts, hidden}});
      if (moe_has_score_bias())
        t.push_back({"model.layers." + std::to_string(l) + "." + moe_score_bias,
                     moe_score_bias_rows ? std::vector<int64_t>{1, n_experts} : std::vector<int64_t>{n_experts}});
      for (int64_t e = 0; e < n_experts; ++e)
        for (int part = moe_ungated ? 1 : 0; part < 3; ++part)
          t.push_back({layer_tensor_name(l, expert_module(e, part)),
                       part == 2 ? std::vector<int64_t>{hidden, expert_ffn} : std::vector<int64_t>{expert_ffn, hidden}});
      if (shared_expert && shared_expert_gate) t.push_back({layer_tensor_name(l, kMoeSharedGateModule), {1, hidden}});
    }
    linears(l, 4, 7);  // gate, up, down (MoE: the shared expert's)
    if (act == Activation::Xielu && layer_has_mlp(l))  // (alpha_p, alpha_n: (1); beta, eps: 0-dimensional)
      for (int i = 0; i < 4; ++i) t.push_back({xielu_tensor_name(l, i), i < 2 ? std::vector<int64_t>{1} : std::vector<int64_t>{}});
    if (ple()) {
      linears(l, kPleGateLinear, kPleProjLinear + 1);
      t.push_back({layer_tensor_name(l, "post_per_layer_input_norm"), {hidden}});
    }
    if (layer_scalar) t.push_back({"model.layers." + std::to_string(l) + ".layer_scalar", {1}});
  }
  if (final_norm && norm_weights) {
    t.push_back({"model.norm.weight", {hidden}});
    if (ln) t.push_back({"model.norm.bias", {hidden}});
  }
  if (projects_embeddings()) t.push_back({"model.project_out.weight", {E, hidden}});
  if (!tied_embeddings) t.push_back({"lm_head.weight", {vocab, E}});
  if (head_bias) t.push_back({"lm_head.bias", {vocab}});
  return t;
}

int64_t ModelSpec::num_params() const {
  int64_t n = 0;
  for (const auto& t : tensors()) {
    int64_t p = 1;
    for (int64_t d : t.shape) p *= d;
    n += p;
  }
  return n;
}

std::string ModelSpec::summary() const {
  // (a vision-language checkpoint: its language model, which is what runs)
  return (hf_wrapper.empty() ? "" : "the language model of a " + hf_wrapper + " (vision tower not loaded; text only), ") +
         family + ": " + std::to_string(n_layers) + " layers, hidden " + std::to_string(hidden) + ", heads " +
         std::to_string(n_heads) + "/" + std::to_string(n_kv_heads) + " x " + std::to_string(head_dim) +
         (mla() ? " (latent attention: kv rank " + std::to_string(mla_kv_rank) +
                      (mla_q_rank > 0 ? ", q rank " + std::to_string(mla_q_rank) : "") + ", values " +
                      std::to_string(mla_v_dim) + ")"
                : "") +
         (has_global_geometry() ? " (full-attention layers " + std::to_string(n_heads) + "/" +
                                      std::to_string(attention_geometry(true).kv_heads) + " x " +
                                      std::to_string(global_head_dim) + (global_k_eq_v ? ", values = keys" : "") + ")"
                                : "") +
         ", ffn " +
         std::to_string(ffn) + ", vocab " + std::to_string(vocab) + (tied_embeddings ? ", tied embeddings" : "") +
         (moe() ? ", " + std::to_string(n_experts) + " experts (" + std::to_string(experts_per_token) +
                      " per token) of ffn " + std::to_string(expert_ffn) + (shared_expert ? " + a shared expert" : "")
                : "");
}

}  // namespace qlora
