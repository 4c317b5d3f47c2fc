// Qwen3.5 (model_type "qwen3_5_text", Qwen3_5ForCausalLM; the Qwen3.5 checkpoints on the Hub
// are vision-language "qwen3_5" ones whose text_config is this, formats/hf_wrapper.h): a
// hybrid of gated DeltaNet layers (layer_types "linear_attention", model/delta_net.h) and
// gated attention layers ("full_attention": q_proj yields the query and an output gate per
// head, per-head q/k norms, rotary on the first quarter of each head), every RMSNorm scaling
// by (1 + w) in float32 (Qwen3_5RMSNorm) except the DeltaNet's gated norm, a SwiGLU MLP.
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void qwen3_5_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qk_norm = true;
  s.norm_unit_offset = true;
  s.attn_output_gate = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.la_k_heads = config::get_int(j, "linear_num_key_heads", where, 16);
  s.la_v_heads = config::get_int(j, "linear_num_value_heads", where, 32);
  s.la_k_dim = config::get_int(j, "linear_key_head_dim", where, 128);
  s.la_v_dim = config::get_int(j, "linear_value_head_dim", where, 128);
  s.la_conv_kernel = config::get_int(j, "linear_conv_kernel_dim", where, 4);
  // layer_types, or (Qwen3_5TextConfig's default) every full_attention_interval-th layer full.
  std::vector<bool> linear(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::layer_type_flags(j, s.n_layers, where, "linear_attention", "full_attention")) {
    linear = std::move(*lt);
  } else {
    const int64_t every = config::get_int(j, "full_attention_interval", where, 4);
    if (every <= 0) fail(where, "full_attention_interval must be positive, got " + std::to_string(every));
    for (int64_t l = 0; l < s.n_layers; ++l) linear[static_cast<size_t>(l)] = (l + 1) % every != 0;
  }
  s.linear_attn_layers = std::move(linear);
  // partial_rotary_factor defaults to 0.25 (the shared reader takes it when the config has it).
  const json* rp = config::find_key(j, "rope_parameters");
  if (!config::find_key(j, "partial_rotary_factor") && !(rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor")))
    s.rotary_dim = s.head_dim / 4;
}

void qwen3_5_write(const ModelSpec& s, ordered_json& j) {
  if (!s.hybrid() || !s.attn_output_gate || !s.qk_norm || !s.norm_unit_offset || s.qkv_bias != s.o_bias ||
      s.mlp_bias || s.sliding_window > 0)
    fail("config.json", "not a qwen3_5_text block");
  j["attention_bias"] = s.qkv_bias;
  j["linear_num_key_heads"] = s.la_k_heads;
  j["linear_num_value_heads"] = s.la_v_heads;
  j["linear_key_head_dim"] = s.la_k_dim;
  j["linear_value_head_dim"] = s.la_v_dim;
  j["linear_conv_kernel_dim"] = s.la_conv_kernel;
  ordered_json types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) types.push_back(s.layer_is_linear_attn(l) ? "linear_attention" : "full_attention");
  j["layer_types"] = types;
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
}

// Qwen3.5-MoE (qwen3_5_moe_text: Qwen3.5-35B-A3B, 122B-A10B, 397B-A17B): the same hybrid
// block with every MLP a router over experts of moe_intermediate_size (softmax, top
// num_experts_per_tok renormalized, weights in the compute dtype) plus a shared expert behind a
// sigmoid gate (Qwen2-MoE's), the experts stored fused (mlp.experts.gate_up_proj / down_proj).
void qwen3_5_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  qwen3_5_read(j, where, s);
  s.n_experts = config::get_int(j, "num_experts", where, 256);
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 8);
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 512);
  s.norm_topk = true;  // (Qwen3_5MoeTopKRouter always renormalizes)
  s.moe_round_weights = true;
  s.moe_fused_experts = true;
  s.shared_expert = true;
  s.ffn = config::get_int(j, "shared_expert_intermediate_size", where, 512);
}

void qwen3_5_moe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.shared_expert || !s.norm_topk) fail("config.json", "not a qwen3_5_moe_text block");
  ModelSpec dense = s;
  dense.n_experts = 0;
  dense.shared_expert = false;
  qwen3_5_write(dense, j);
  j.erase("intermediate_size");
  j["num_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["shared_expert_intermediate_size"] = s.ffn;
}

// (Qwen3_5MoeTextConfig has no intermediate_size: the shared expert's is the dense MLP width.)
void qwen3_5_moe_normalize(json& j) {
  if (!j.contains("intermediate_size"))
    j["intermediate_size"] = j.value("shared_expert_intermediate_size", 512);
}

// Qwen3-Next (model_type "qwen3_next", Qwen3NextForCausalLM: Qwen3-Next-80B-A3B): Qwen3.5-MoE's
// hybrid before it, its DeltaNet's projections fused per key head (in_proj_qkvz, in_proj_ba:
// ModelSpec::la_fused_qkvz), its top-k renormalized by norm_topk_prob, the experts one tensor
// per expert in its files. Dense MLP layers (mlp_only_layers, decoder_sparse_step) are refused.
void qwen3_next_read(const json& j, const std::string& where, ModelSpec& s) {
  qwen3_5_read(j, where, s);
  s.la_fused_qkvz = true;
  s.n_experts = config::get_int(j, "num_experts", where, 512);
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 10);
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 512);
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, true);
  s.moe_round_weights = true;
  if (config::get_int(j, "decoder_sparse_step", where, 1) != 1)
    fail(where, "decoder_sparse_step other than 1 (dense MLP layers between the MoE ones) is not supported");
  if (const json* m = config::find_key(j, "mlp_only_layers"); m && !m->is_null() && !(m->is_array() && m->empty()))
    fail(where, "mlp_only_layers " + config::shown(*m) + " (dense MLP layers) is not supported");
  const int64_t shared = config::get_int(j, "shared_expert_intermediate_size", where, 512);
  s.shared_expert = shared > 0;
  s.ffn = shared > 0 ? shared : s.expert_ffn;
}

void qwen3_next_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.la_fused_qkvz) fail("config.json", "not a qwen3_next block");
  ModelSpec dense = s;
  dense.n_experts = 0;
  dense.shared_expert = false;
  qwen3_5_write(dense, j);
  j["num_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["norm_topk_prob"] = s.norm_topk;
  j["shared_expert_intermediate_size"] = s.shared_expert ? s.ffn : 0;
  j["decoder_sparse_step"] = 1;
  j["mlp_only_layers"] = ordered_json::array();
}

// llama.cpp's qwen35: the DeltaNet's sizes from its ssm.* keys, every full_attention_interval-th
// layer attending (as its loader, and its converter, which writes only the interval).
void qwen3_5_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.qk_norm = true;
  s.norm_unit_offset = true;
  s.attn_output_gate = true;
  if (hp.ssm_conv_kernel <= 0)
    fail("qwen35 GGUF", "the ssm.* metadata keys of its gated DeltaNet layers are missing");
  s.la_k_heads = hp.ssm_group_count;
  s.la_v_heads = hp.ssm_time_step_rank;
  s.la_k_dim = hp.ssm_state_size;
  s.la_v_dim = hp.ssm_inner_size / hp.ssm_time_step_rank;
  s.la_conv_kernel = hp.ssm_conv_kernel;
  s.linear_attn_layers.assign(static_cast<size_t>(s.n_layers), false);
  for (int64_t l = 0; l < s.n_layers; ++l)
    s.linear_attn_layers[static_cast<size_t>(l)] = (l + 1) % hp.full_attention_interval != 0;
}

// llama.cpp's qwen35moe: qwen35 with the experts (spec_from_gguf reads their sizes and counts,
// presented one tensor per expert) and the always renormalized top-k.
void qwen3_5_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  qwen3_5_gguf(hp, s);
  s.norm_topk = true;
  s.moe_round_weights = true;
}

// llama.cpp's qwen3next: qwen35's keys, its projections presented fused again (GgufSource), top-k
// renormalized (its graph always does).
void qwen3_next_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  qwen3_5_gguf(hp, s);
  s.la_fused_qkvz = true;
  s.norm_topk = true;
  s.moe_round_weights = true;
}

}  // namespace

// llama.cpp's qwen3next names: qwen35's, with b and a in one tensor as transformers has them,
// in_proj_qkvz split in two by its converter (rejoined by the reader), or whole in older files.
constexpr GgufLayerName kQwen3NextGgufNames[] = {{"attn_qkv", "linear_attn.in_proj_qkv"}, {"attn_gate", "linear_attn.in_proj_z"},
                                                {"ssm_in", "linear_attn.in_proj_qkvz"},   {"ssm_ba", "linear_attn.in_proj_ba"},
                                                {"ssm_norm", "linear_attn.norm"},         {"ssm_out", "linear_attn.out_proj"},
                                                {"ssm_conv1d", "linear_attn.conv1d"},
                                                {"post_attention_norm", "post_attention_layernorm"}};

// llama.cpp's qwen35 names (its converter's tensor map).
constexpr GgufLayerName kQwen35GgufNames[] = {{"attn_qkv", "linear_attn.in_proj_qkv"}, {"attn_gate", "linear_attn.in_proj_z"},
                                             {"ssm_beta", "linear_attn.in_proj_b"},   {"ssm_alpha", "linear_attn.in_proj_a"},
                                             {"ssm_norm", "linear_attn.norm"},        {"ssm_out", "linear_attn.out_proj"},
                                             {"ssm_conv1d", "linear_attn.conv1d"},
                                             {"post_attention_norm", "post_attention_layernorm"}};
const ModelFamily kQwen3Next = [] {
  ModelFamily f{"qwen3_next", "Qwen3NextForCausalLM", "qwen3next", 256, 32768, 10000.0f, false, false, qwen3_next_read,
                qwen3_next_write, qwen3_next_gguf};
  f.partial_rotary = true;
  f.gguf_layer_names = kQwen3NextGgufNames;
  return f;
}();

const ModelFamily kQwen3_5MoeText = [] {
  ModelFamily f{"qwen3_5_moe_text", "Qwen3_5MoeForCausalLM", "qwen35moe", 256, 32768, 10000.0f, false, false,
                qwen3_5_moe_read, qwen3_5_moe_write, qwen3_5_moe_gguf};
  f.partial_rotary = true;
  f.normalize_config = qwen3_5_moe_normalize;
  f.gguf_layer_names = kQwen35GgufNames;
  return f;
}();

const ModelFamily kQwen3_5Text = [] {
  ModelFamily f{"qwen3_5_text", "Qwen3_5ForCausalLM", "qwen35", 256, 32768, 10000.0f, false, false, qwen3_5_read,
                qwen3_5_write, qwen3_5_gguf};
  f.partial_rotary = true;
  f.gguf_layer_names = kQwen35GgufNames;
  return f;
}();

}  // namespace qlora::families
