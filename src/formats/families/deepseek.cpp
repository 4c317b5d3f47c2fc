// DeepSeek-V2 and V3 (model_type "deepseek_v2": DeepSeek-V2, V2-Lite, V2.5, DeepSeek-Coder-V2;
// "deepseek_v3": DeepSeek-V3, R1 and the models built on its block): multi-head latent
// attention (ModelSpec::mla: queries through a low-rank latent with its RMSNorm, keys and
// values from one shared latent plus a rotary key all heads share, value heads narrower than
// the query/key heads, rotary on adjacent pairs), a softmax scale that yarn's mscale_all_dim
// raises, and the MoE of GLM-4.5 (first_k_dense_replace dense layers, ungated shared experts):
//   V3: the sigmoid router with its score bias, expert groups scored by their two best experts,
//       renormalized (norm_topk_prob), times routed_scaling_factor;
//   V2: a float32 softmax router, greedy or limited to the topk_group groups of the best single
//       experts (topk_method group_limited_greedy), never renormalized (transformers' V2 ignores
//       norm_topk_prob), times routed_scaling_factor.
// V3's multi-token-prediction layer (num_nextn_predict_layers) is read past, as transformers does.
#include <cmath>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// An integer key that may be null (q_lora_rank, n_group): `absent` when the config leaves it
// out (the config class's default), `null` when it is null.
int64_t int_or_null(const json& j, const char* key, const std::string& where, int64_t absent, int64_t null) {
  const auto it = j.find(key);  // (config::find_key reads a null as absent)
  if (it == j.end()) return absent;
  if (it->is_null()) return null;
  return config::get_int(j, key, where);
}

// The defaults of transformers' DeepseekV2Config / DeepseekV3Config where config.json leaves
// keys out (0: None there).
struct Defaults {
  int64_t experts, shared, expert_ffn, dense_layers, per_token, groups, topk_groups;
  float routed_scale;
};
constexpr Defaults kV2Defaults{64, 2, 1407, 0, 0, 0, 0, 1.0f};
constexpr Defaults kV3Defaults{256, 1, 2048, 3, 8, 8, 4, 2.5f};

// The latent attention and the MoE keys both versions share.
void deepseek_common(const json& j, const std::string& where, const Defaults& d, ModelSpec& s) {
  const int64_t heads = s.n_heads;
  if (const json* kv = config::find_key(j, "num_key_value_heads"); kv && !kv->is_null() && s.n_kv_heads != heads)
    fail(where, "num_key_value_heads " + std::to_string(s.n_kv_heads) +
                    ": DeepSeek's latent attention expands keys and values to every head (it must equal "
                    "num_attention_heads " + std::to_string(heads) + ")");
  s.n_kv_heads = heads;
  s.mla_q_rank = int_or_null(j, "q_lora_rank", where, 1536, 0);
  s.mla_kv_rank = config::get_int(j, "kv_lora_rank", where, 512);
  s.mla_nope_dim = config::get_int(j, "qk_nope_head_dim", where, 128);
  s.mla_v_dim = config::get_int(j, "v_head_dim", where, 128);
  const int64_t rope = config::get_int(j, "qk_rope_head_dim", where, 64);
  if (s.mla_q_rank < 0 || s.mla_kv_rank <= 0 || s.mla_nope_dim < 0 || rope <= 0 || rope % 2 != 0 || s.mla_v_dim <= 0)
    fail(where, "kv_lora_rank, qk_rope_head_dim (even) and v_head_dim must be positive, q_lora_rank and "
                "qk_nope_head_dim not negative (got " + std::to_string(s.mla_kv_rank) + ", " + std::to_string(rope) + ", " +
                std::to_string(s.mla_v_dim) + ", " + std::to_string(s.mla_q_rank) + ", " + std::to_string(s.mla_nope_dim) + ")");
  s.head_dim = s.mla_nope_dim + rope;
  s.rotary_dim = rope;
  const bool bias = config::get_bool(j, "attention_bias", where, false);
  s.qkv_bias = s.o_bias = bias;  // (q_a_proj, kv_a_proj_with_mqa and o_proj; never q_proj, q_b_proj, kv_b_proj)
  // transformers' yarn_apply_mscale: scores x mscale(factor, mscale_all_dim)^2 beyond 1/sqrt(head).
  s.attn_mscale_all_dim = 0.0f;
  const json* rp = config::find_key(j, "rope_parameters");
  if (!rp || !rp->is_object()) rp = config::find_key(j, "rope_scaling");
  if (s.rope_scaling.type != RopeScaling::Type::None && rp && rp->is_object())
    if (const json* m = config::find_key(*rp, "mscale_all_dim"); m && m->is_number() && m->get<double>() != 0.0)
      s.attn_mscale_all_dim = m->get<float>();
  s.attn_scale = s.mla_attention_scale();

  s.n_experts = d.experts;
  for (const char* k : {"n_routed_experts", "num_local_experts", "num_experts"})
    if (const json* v = config::find_key(j, k); v && !v->is_null()) {
      s.n_experts = config::get_int(j, k, where, 0);
      break;
    }
  if (s.n_experts <= 0) fail(where, "n_routed_experts must be positive");
  s.experts_per_token = int_or_null(j, "num_experts_per_tok", where, d.per_token, 0);
  if (s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "num_experts_per_tok must be between 1 and n_routed_experts (" + std::to_string(s.n_experts) + ")");
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, d.expert_ffn);
  const int64_t shared = int_or_null(j, "n_shared_experts", where, d.shared, 0);
  if (shared < 0) fail(where, "n_shared_experts must not be negative");
  s.shared_expert = shared > 0;
  s.shared_expert_ffn = shared * s.expert_ffn;
  s.shared_expert_gate = false;
  s.moe_dense_layers = int_or_null(j, "first_k_dense_replace", where, d.dense_layers, 0);
  if (s.moe_dense_layers < 0 || s.moe_dense_layers > s.n_layers)
    fail(where, "first_k_dense_replace must be between 0 and num_hidden_layers");
  s.moe_routed_scale = config::get_float(j, "routed_scaling_factor", where, d.routed_scale);
  s.moe_fused_experts = true;
}

// Groups of the router: n_group groups of which topk_group compete (null: one group).
void router_groups(const json& j, const std::string& where, const Defaults& d, ModelSpec& s) {
  s.moe_groups = int_or_null(j, "n_group", where, d.groups > 0 ? d.groups : 1, 1);
  s.moe_topk_groups = int_or_null(j, "topk_group", where, d.topk_groups > 0 ? d.topk_groups : 1, 1);
  if (s.moe_groups <= 0 || s.n_experts % s.moe_groups != 0 || s.moe_topk_groups <= 0 || s.moe_topk_groups > s.moe_groups)
    fail(where, "n_group " + std::to_string(s.moe_groups) + " must divide n_routed_experts " +
                    std::to_string(s.n_experts) + " and topk_group " + std::to_string(s.moe_topk_groups) +
                    " must be between 1 and n_group");
}

void deepseek_v3_read(const json& j, const std::string& where, ModelSpec& s) {
  deepseek_common(j, where, kV3Defaults, s);
  s.rope_interleaved = config::get_bool(j, "rope_interleave", where, true);
  s.moe_sigmoid_router = true;
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, true);
  router_groups(j, where, kV3Defaults, s);
  if (const json* m = config::find_key(j, "topk_method"); m && !m->is_null() && *m != "noaux_tc")
    fail(where, "topk_method " + m->dump() + ": DeepSeek-V3's router is noaux_tc (transformers runs no other)");
  s.mtp_layers = config::get_int(j, "num_nextn_predict_layers", where, config::get_int(j, "num_mtp_layers", where, 1));
  if (s.mtp_layers < 0) fail(where, "num_nextn_predict_layers must not be negative");
}

void deepseek_v2_read(const json& j, const std::string& where, ModelSpec& s) {
  deepseek_common(j, where, kV2Defaults, s);
  s.rope_interleaved = true;  // (complex rotary on adjacent pairs)
  s.moe_softmax_f32 = true;
  s.norm_topk = false;  // (transformers' DeepseekV2TopkRouter never renormalizes)
  const json* m = config::find_key(j, "topk_method");
  const std::string method = m && m->is_string() ? m->get<std::string>() : "greedy";
  if (method == "group_limited_greedy") {
    router_groups(j, where, kV2Defaults, s);
  } else if (method != "greedy") {
    fail(where, "topk_method '" + method + "' is not DeepSeek-V2's (greedy or group_limited_greedy)");
  }
}

// The keys both write, after the shared ones (head_dim there is the rotary dims, as
// transformers' configs keep it).
void deepseek_write_common(const ModelSpec& s, ordered_json& j) {
  if (!s.mla() || !s.moe() || s.shared_expert_gate || s.mlp_bias || s.sliding_window > 0 || s.sandwich_norms ||
      s.qkv_bias != s.o_bias)
    fail("config.json", "not a DeepSeek block");
  j["head_dim"] = s.rope_dims();
  j["num_key_value_heads"] = s.n_heads;
  j["q_lora_rank"] = s.mla_q_rank > 0 ? json(s.mla_q_rank) : json(nullptr);
  j["kv_lora_rank"] = s.mla_kv_rank;
  j["qk_nope_head_dim"] = s.mla_nope_dim;
  j["qk_rope_head_dim"] = s.rope_dims();
  j["v_head_dim"] = s.mla_v_dim;
  j["attention_bias"] = s.qkv_bias;
  if (s.attn_mscale_all_dim != 0.0f) {
    if (!j.contains("rope_scaling")) fail("config.json", "an attention mscale without rotary scaling");
    j["rope_scaling"]["mscale_all_dim"] = s.attn_mscale_all_dim;
  }
  j["n_routed_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["n_shared_experts"] = s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0;
  j["first_k_dense_replace"] = s.moe_dense_layers;
  j["routed_scaling_factor"] = s.moe_routed_scale;
}

void deepseek_v3_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe_sigmoid_router) fail("config.json", "not a deepseek_v3 router");
  deepseek_write_common(s, j);
  j["rope_interleave"] = s.rope_interleaved;
  j["norm_topk_prob"] = s.norm_topk;
  j["n_group"] = s.moe_groups;
  j["topk_group"] = s.moe_topk_groups;
  j["num_nextn_predict_layers"] = s.mtp_layers;
}

void deepseek_v2_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe_softmax_f32 || !s.rope_interleaved) fail("config.json", "not a deepseek_v2 router");
  if (s.norm_topk)
    fail("config.json", "this model renormalizes its top experts (a GGUF's expert_weights_norm), which transformers' "
                        "DeepSeek-V2 never does: no deepseek_v2 config.json runs it");
  deepseek_write_common(s, j);
  j["topk_method"] = s.moe_groups > 1 ? "group_limited_greedy" : "greedy";
  j["n_group"] = s.moe_groups;
  j["topk_group"] = s.moe_topk_groups;
  j["norm_topk_prob"] = false;
}

// As llama.cpp runs a deepseek2 GGUF (convert_hf_to_gguf.py's DeepseekV2Model, both versions):
// the latent ranks, MLA's head sizes (hparams: key_length_mla / value_length_mla, or the older
// files' key_length / value_length), one key/value "head" in the metadata but keys and values
// expanded to every head as transformers does, adjacent-pair rotary, yarn's softmax mscale from
// yarn_log_multiplier (0.1 x mscale_all_dim; mscale taken equal to it, as llama.cpp does, so the
// rotary's own attention factor is 1); the sigmoid router (expert_gating_func 2: V3's) or the
// softmax one (1, or absent: V2's), the dense lead, shared experts of whole expert widths,
// expert_weights_scale (absent or 0: 1) and expert_weights_norm.
void deepseek2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  const std::string& where = hp.path;
  if (hp.kv_lora_rank <= 0) fail(where, "a deepseek2 GGUF without attention.kv_lora_rank");
  if (hp.expert_count <= 0) fail(where, "a deepseek2 GGUF without expert_count");
  s.mla_kv_rank = hp.kv_lora_rank;
  s.mla_q_rank = hp.q_lora_rank;
  s.head_dim = hp.head_dim;
  s.rotary_dim = hp.rope_dim;
  s.mla_nope_dim = hp.head_dim - hp.rope_dim;
  s.mla_v_dim = hp.mla_value_dim;
  s.n_kv_heads = s.n_heads;
  s.rope_interleaved = true;
  s.qkv_bias = s.o_bias = false;
  if (s.rope_scaling.type == RopeScaling::Type::Yarn && hp.yarn_log_mul > 0.0f) {
    s.attn_mscale_all_dim = hp.yarn_log_mul / 0.1f;
    s.rope_scaling.attention_factor = 1.0f;
  }
  s.attn_scale = s.mla_attention_scale();
  read_deepseek_moe_gguf(hp, s);
  if (hp.expert_gating_func == 2) {
    s.family = "deepseek_v3";
    s.moe_sigmoid_router = true;
  } else if (hp.expert_gating_func == 0 || hp.expert_gating_func == 1) {
    s.family = "deepseek_v2";
    s.moe_softmax_f32 = true;
  } else {
    fail(where, "deepseek2.expert_gating_func " + std::to_string(hp.expert_gating_func) +
                    ": DeepSeek's routers are softmax (1) or sigmoid (2)");
  }
}

}  // namespace

// llama.cpp's deepseek2 names for the latent attention's tensors (attn_k_b / attn_v_b: its MLA
// form's split kv_b_proj, joined again by the GGUF reader), and the router's score bias.
constexpr GgufLayerName kDeepseek2GgufNames[] = {
    {"attn_q_a", "self_attn.q_a_proj"},          {"attn_q_a_norm", "self_attn.q_a_layernorm"},
    {"attn_q_b", "self_attn.q_b_proj"},          {"attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa"},
    {"attn_kv_a_norm", "self_attn.kv_a_layernorm"}, {"attn_kv_b", "self_attn.kv_b_proj"},
    {"attn_k_b", "self_attn.k_b_proj"},          {"attn_v_b", "self_attn.v_b_proj"}};
constexpr GgufLayerName kDeepseek2GgufParams[] = {{"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"}};

void read_deepseek_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.ffn = hp.intermediate_size;  // (the dense layers'; the shared experts' below)
  s.moe_dense_layers = hp.leading_dense_blocks;
  s.shared_expert = hp.expert_shared_count > 0;
  s.shared_expert_ffn = hp.expert_shared_count * s.expert_ffn;
  s.shared_expert_gate = false;
  s.moe_routed_scale = hp.expert_weights_scale > 0.0f ? hp.expert_weights_scale : 1.0f;
  s.moe_groups = hp.expert_group_count > 1 ? hp.expert_group_count : 1;
  s.moe_topk_groups = hp.expert_group_count > 1 ? hp.expert_group_used_count : 1;
  s.norm_topk = hp.expert_weights_norm == 1;
  s.moe_fused_experts = true;  // (the loader reads the experts per expert, as the GGUF presents them)
  s.mtp_layers = 0;            // (its blocks are not read: formats/model_loader.cpp)
}

// Their module tree names the shared experts mlp.shared_experts (Qwen2-MoE's canonical
// mlp.shared_expert), as GLM-4.5's does.
constexpr HfRename kDeepseekRenames[] = {{".mlp.shared_experts.", ".mlp.shared_expert."}};

const ModelFamily kDeepseekV3 = [] {
  ModelFamily f{"deepseek_v3", "DeepseekV3ForCausalLM", "deepseek2", 0, 4096, 10000.0f, false, false, deepseek_v3_read,
                deepseek_v3_write, deepseek2_gguf};
  f.hf_renames = kDeepseekRenames;
  f.gguf_layer_names = kDeepseek2GgufNames;
  f.gguf_layer_params = kDeepseek2GgufParams;
  return f;
}();

const ModelFamily kDeepseekV2 = [] {
  ModelFamily f{"deepseek_v2", "DeepseekV2ForCausalLM", "", 0, 2048, 10000.0f, false, false, deepseek_v2_read,
                deepseek_v2_write};
  f.hf_renames = kDeepseekRenames;
  f.gguf_export_arch = "deepseek2";  // (read through deepseek_v3's entry, which picks the version by its router)
  return f;
}();

}  // namespace qlora::families
