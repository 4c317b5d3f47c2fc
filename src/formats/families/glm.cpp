// GLM-4 (model_type "glm4", Glm4ForCausalLM: GLM-4-9B-0414, GLM-4-32B-0414, GLM-Z1): a
// pre-norm block with a second norm after each branch (Gemma 2's sandwich norms, named
// post_self_attn_layernorm, post_attention_layernorm (the MLP's input norm) and
// post_mlp_layernorm), q/k/v biases, gate and up in one Linear (mlp.gate_up_proj), and rotary
// on the first half of each head in adjacent pairs (partial_rotary_factor, 0.5 when the config
// leaves it out, as Glm4Config does).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void glm4_block(ModelSpec& s) {
  s.sandwich_norms = true;
  s.fused_gate_up = true;
  s.rope_interleaved = true;
}

void glm4_read(const json& j, const std::string& where, ModelSpec& s) {
  glm4_block(s);
  s.qkv_bias = config::get_bool(j, "attention_bias", where, true);
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1.5625e-07f);
  // (the shared reader takes partial_rotary_factor when the config has it)
  const json* rp = config::find_key(j, "rope_parameters");
  if (!config::find_key(j, "partial_rotary_factor") && !(rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor")))
    s.rotary_dim = s.head_dim / 2;
}

void glm4_write(const ModelSpec& s, ordered_json& j) {
  if (!s.sandwich_norms || !s.fused_gate_up || !s.rope_interleaved || s.o_bias || s.mlp_bias || s.qk_norm ||
      !s.pre_norms || s.sliding_window > 0)
    fail("config.json", "not a glm4 block");
  j["attention_bias"] = s.qkv_bias;
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
}

void glm4_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) { glm4_block(s); }

// GLM-4.5 / 4.6 / 4.7 (glm4_moe; transformers' Glm4MoeForCausalLM): Llama's pre-norm block with
// q/k/v biases (attention_bias), optional per-head q/k norms (use_qk_norm), rotate_half rotary on
// the first partial_rotary_factor (0.5) of each head; the first first_k_dense_replace layers a
// SwiGLU MLP, the others n_routed_experts experts behind DeepSeek-V3's sigmoid router (groups,
// score bias, routed_scaling_factor) plus n_shared_experts shared experts, ungated. Its
// multi-token-prediction layers (model.layers.<num_hidden_layers + i>.*) are not run.
void glm4_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = config::get_bool(j, "attention_bias", where, false);
  s.qk_norm = config::get_bool(j, "use_qk_norm", where, false);
  const json* rp = config::find_key(j, "rope_parameters");
  if (!config::find_key(j, "partial_rotary_factor") && !(rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor")))
    s.rotary_dim = s.head_dim / 2;  // (Glm4MoeConfig's default 0.5)
  for (const char* k : {"n_routed_experts", "num_local_experts", "num_experts"})
    if (config::find_key(j, k)) {
      s.n_experts = config::get_int(j, k, where, 0);
      break;
    }
  if (s.n_experts <= 0) fail(where, "n_routed_experts must be positive");
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 8);
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 1408);
  const int64_t shared = config::get_int(j, "n_shared_experts", where, 1);
  if (shared < 0) fail(where, "n_shared_experts must not be negative");
  s.shared_expert = shared > 0;
  s.shared_expert_ffn = shared * s.expert_ffn;
  s.shared_expert_gate = false;
  s.moe_dense_layers = config::get_int(j, "first_k_dense_replace", where, 1);
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, true);
  s.moe_sigmoid_router = true;
  s.moe_groups = config::get_int(j, "n_group", where, 1);
  s.moe_topk_groups = config::get_int(j, "topk_group", where, 1);
  s.moe_routed_scale = config::get_float(j, "routed_scaling_factor", where, 1.0f);
  s.moe_fused_experts = true;
  s.mtp_layers = config::get_int(j, "num_nextn_predict_layers", where, 1);
  if (s.mtp_layers < 0) fail(where, "num_nextn_predict_layers must not be negative");
}

void glm4_moe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.moe_sigmoid_router || s.shared_expert_gate || s.o_bias || s.mlp_bias || s.sliding_window > 0 ||
      s.rope_interleaved || s.sandwich_norms)
    fail("config.json", "not a glm4_moe block");
  j["attention_bias"] = s.qkv_bias;
  j["use_qk_norm"] = s.qk_norm;
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
  j["n_routed_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["n_shared_experts"] = s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0;
  j["first_k_dense_replace"] = s.moe_dense_layers;
  j["norm_topk_prob"] = s.norm_topk;
  j["n_group"] = s.moe_groups;
  j["topk_group"] = s.moe_topk_groups;
  j["routed_scaling_factor"] = s.moe_routed_scale;
  j["num_nextn_predict_layers"] = s.mtp_layers;
}

// As llama.cpp runs a glm4moe GGUF (convert_hf_to_gguf.py's Glm4MoeModel): the dense lead
// (leading_dense_block_count), shared experts of expert_shared_count x the experts' width,
// sigmoid gating (expert_gating_func 2, or absent) with exp_probs_b as the score bias,
// expert_weights_scale (absent or 0: none, as llama.cpp reads it), groups only where
// expert_group_count says, per-head q/k norms where their tensors are.
void glm4_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  const std::string& where = hp.path;
  if (hp.expert_count <= 0) fail(where, "a glm4moe GGUF without expert_count");
  if (hp.expert_gating_func != 0 && hp.expert_gating_func != 2)
    fail(where, "glm4moe.expert_gating_func " + std::to_string(hp.expert_gating_func) +
                    ": GLM-4.5's router is a sigmoid (2)");
  s.qk_norm = hp.qk_norm_tensors;
  read_deepseek_moe_gguf(hp, s);
  s.moe_sigmoid_router = true;
}

}  // namespace

// Its checkpoints' names for the sandwich norms, in the order to apply them (the MLP's
// input norm first, before post_self_attn_layernorm takes the canonical name it frees).
constexpr HfRename kGlm4Renames[] = {{".post_attention_layernorm.", ".pre_feedforward_layernorm."},
                                     {".post_self_attn_layernorm.", ".post_attention_layernorm."},
                                     {".post_mlp_layernorm.", ".post_feedforward_layernorm."}};
// llama.cpp's glm4 names the two post-branch norms post_attention_norm and post_ffw_norm, the
// MLP's input norm ffn_norm.
constexpr GgufLayerName kGlm4GgufNames[] = {{"post_attention_norm", "post_attention_layernorm"},
                                            {"ffn_norm", "pre_feedforward_layernorm"},
                                            {"post_ffw_norm", "post_feedforward_layernorm"},
                                            {"ffn_up", "mlp.gate_up_proj"}};
// transformers' module tree names GLM-4.5's shared experts mlp.shared_experts (Qwen2-MoE's
// canonical mlp.shared_expert).
constexpr HfRename kGlm4MoeRenames[] = {{".mlp.shared_experts.", ".mlp.shared_expert."}};
// llama.cpp's glm4moe names its attention output norm post_attention_norm, the router's score
// bias exp_probs_b.bias.
constexpr GgufLayerName kGlm4MoeGgufNames[] = {{"post_attention_norm", "post_attention_layernorm"}};
constexpr GgufLayerName kGlm4MoeGgufParams[] = {{"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"}};
const ModelFamily kGlm4Moe = [] {
  ModelFamily f{"glm4_moe", "Glm4MoeForCausalLM", "glm4moe", 0, 131072, 10000.0f, false, false, glm4_moe_read,
                glm4_moe_write, glm4_moe_gguf};
  f.partial_rotary = true;
  f.hf_renames = kGlm4MoeRenames;
  f.gguf_layer_names = kGlm4MoeGgufNames;
  f.gguf_layer_params = kGlm4MoeGgufParams;
  return f;
}();

const ModelFamily kGlm4 = [] {
  ModelFamily f{"glm4", "Glm4ForCausalLM", "glm4", 128, 131072, 10000.0f, false, false, glm4_read, glm4_write,
                glm4_gguf};
  f.partial_rotary = true;
  f.hf_renames = kGlm4Renames;
  f.gguf_layer_names = kGlm4GgufNames;
  return f;
}();

}  // namespace qlora::families
