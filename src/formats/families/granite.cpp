// IBM Granite (model_type "granite", GraniteForCausalLM: granite-3.x 2B / 8B and their
// instruct models): Llama's block with four multipliers -- the embeddings times
// embedding_multiplier, attention scores scaled by attention_multiplier (instead of
// 1/sqrt(head_dim)), each branch output times residual_multiplier before its residual add,
// and the logits divided by logits_scaling. GGUF both ways as llama.cpp's "granite" (q/k rows
// permuted as its llama converter does; the multipliers under embedding_scale,
// attention.scale, residual_scale and logit_scale).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

// The mamba_* keys of GraniteMoeHybridConfig and BambaConfig (the same Mamba2 mixer), for the
// layers flagged in `mamba` (none: no Mamba layers, the keys unread).
void read_mamba2_keys(const nlohmann::json& j, const std::string& where, ModelSpec& s, std::vector<bool> mamba,
                      bool inner_from_heads) {
  using nlohmann::json;
  auto text = [](const json* v) { return v && v->is_string() ? v->get<std::string>() : std::string(); };
  if (std::find(mamba.begin(), mamba.end(), true) == mamba.end()) return;
  s.linear_attn_layers = std::move(mamba);
  s.la_mamba2 = true;
  s.la_v_heads = config::get_int(j, "mamba_n_heads", where, 128);
  int64_t inner = 0;
  if (inner_from_heads) {  // (Nemotron-H: heads x head size, whatever mamba_expand says)
    const int64_t d_head = config::get_int(j, "mamba_d_head", where, 64);
    if (s.la_v_heads <= 0 || s.la_v_heads > 65536 || d_head <= 0 || d_head > 65536)
      fail(where, "mamba_num_heads and mamba_head_dim must be positive, got " + std::to_string(s.la_v_heads) + " and " +
                      std::to_string(d_head));
    inner = s.la_v_heads * d_head;
  } else {
    const int64_t expand = config::get_int(j, "mamba_expand", where, 2);
    if (expand <= 0 || expand > 64) fail(where, "mamba_expand must be between 1 and 64, got " + std::to_string(expand));
    inner = expand * s.hidden;
  }
  s.la_k_heads = config::get_int(j, "mamba_n_groups", where, 1);
  s.la_k_dim = config::get_int(j, "mamba_d_state", where, 256);
  s.la_conv_kernel = config::get_int(j, "mamba_d_conv", where, 4);
  if (s.la_v_heads <= 0 || inner % s.la_v_heads != 0)
    fail(where, "mamba_n_heads (" + std::to_string(s.la_v_heads) + ") must divide mamba_expand * hidden_size (" +
                    std::to_string(inner) + ")");
  const json* dh = config::find_key(j, "mamba_d_head");
  s.la_v_dim = !dh || text(dh) == "auto" ? inner / s.la_v_heads : config::get_int(j, "mamba_d_head", where);
  if (s.la_v_dim * s.la_v_heads != inner)
    fail(where, "mamba_d_head (" + std::to_string(s.la_v_dim) + ") times mamba_n_heads (" + std::to_string(s.la_v_heads) +
                    ") is not mamba_expand * hidden_size (" + std::to_string(inner) + ")");
  if (s.la_k_heads <= 0 || s.la_v_heads % s.la_k_heads != 0)
    fail(where, "mamba_n_groups (" + std::to_string(s.la_k_heads) + ") must divide mamba_n_heads (" +
                    std::to_string(s.la_v_heads) + ")");
  s.la_conv_bias = config::get_bool(j, "mamba_conv_bias", where, true);
  s.la_proj_bias = config::get_bool(j, "mamba_proj_bias", where, false);
  if (const json* lim = config::find_key(j, "time_step_limit")) {
    const bool pair = lim->is_array() && lim->size() == 2;
    const double lo = pair ? config::python_float((*lim)[0]).value_or(-1.0) : -1.0;
    const double hi = pair ? config::python_float((*lim)[1]).value_or(-1.0) : -1.0;
    if (!(lo >= 0.0 && lo <= hi))
      fail(where, "time_step_limit must be two increasing non-negative bounds, got " + config::shown(*lim));
    s.la_dt_min = static_cast<float>(lo);
    s.la_dt_max = static_cast<float>(hi);
  }
}

void read_mamba2_gguf(const GgufLlamaHParams& hp, ModelSpec& s, bool conv_bias) {
  if (hp.ssm_conv_kernel <= 0 || hp.ssm_time_step_rank <= 0 || hp.ssm_group_count <= 0 || hp.ssm_state_size <= 0 ||
      hp.ssm_inner_size <= 0)
    fail(hp.path, "a " + hp.architecture + " GGUF with Mamba layers but without its ssm.* sizes (conv_kernel, state_size, "
                  "group_count, time_step_rank, inner_size)");
  s.linear_attn_layers = hp.recurrent_layers;
  s.la_mamba2 = true;
  s.la_conv_bias = conv_bias;
  s.la_v_heads = hp.ssm_time_step_rank;
  s.la_v_dim = hp.ssm_inner_size / hp.ssm_time_step_rank;
  s.la_k_heads = hp.ssm_group_count;
  s.la_k_dim = hp.ssm_state_size;
  s.la_conv_kernel = hp.ssm_conv_kernel;
}

// The same keys written back (a model without Mamba layers: sizes transformers' validation accepts).
void write_mamba2_keys(const ModelSpec& s, nlohmann::ordered_json& j) {
  using nlohmann::ordered_json;
  if (!s.la_mamba2) {
    j["mamba_expand"] = 1;
    j["mamba_n_heads"] = 1;
    j["mamba_d_head"] = s.hidden;
    return;
  }
  if (s.la_value_dim() % s.hidden != 0)
    fail("config.json", "a Mamba inner width that is no multiple of hidden_size cannot be written as mamba_expand");
  j["mamba_expand"] = s.la_value_dim() / s.hidden;
  j["mamba_n_heads"] = s.la_v_heads;
  j["mamba_n_groups"] = s.la_k_heads;
  j["mamba_d_state"] = s.la_k_dim;
  j["mamba_d_head"] = s.la_v_dim;
  j["mamba_d_conv"] = s.la_conv_kernel;
  j["mamba_conv_bias"] = s.la_conv_bias;
  j["mamba_proj_bias"] = s.la_proj_bias;
  if (s.la_dt_min != 0.0f || !std::isinf(s.la_dt_max)) {  // (the default (0, inf) left out)
    // (JSON has no infinity: transformers 5 writes and reads it as {"__float__": "Infinity"})
    ordered_json hi = s.la_dt_max;
    if (std::isinf(s.la_dt_max)) hi = ordered_json{{"__float__", "Infinity"}};
    j["time_step_limit"] = ordered_json::array({s.la_dt_min, hi});
  }
}

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void granite_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  const float attn = config::get_float(j, "attention_multiplier", where, 1.0f);
  s.embed_multiplier = config::get_float(j, "embedding_multiplier", where, 1.0f);
  s.residual_multiplier = config::get_float(j, "residual_multiplier", where, 1.0f);
  s.logit_divisor = config::get_float(j, "logits_scaling", where, 1.0f);
  for (float m : {attn, s.embed_multiplier, s.residual_multiplier, s.logit_divisor})
    if (!(m > 0.0f))
      fail(where, "granite's attention_multiplier, embedding_multiplier, residual_multiplier and logits_scaling "
                  "must be positive");
  s.attn_scale = attn;
}

void granite_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias) fail("config.json", "granite has biases on all attention Linears or none");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
  j["attention_multiplier"] = s.attn_scale > 0.0f ? s.attn_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  j["embedding_multiplier"] = s.embed_multiplier;
  j["residual_multiplier"] = s.residual_multiplier;
  j["logits_scaling"] = s.logit_divisor;
}

void granite_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (hp.attention_scale > 0.0f) s.attn_scale = hp.attention_scale;
  s.embed_multiplier = hp.embedding_scale;
  s.residual_multiplier = hp.residual_scale;
  s.logit_divisor = hp.logit_scale;
}

// IBM Granite MoE (model_type "granitemoe", GraniteMoeForCausalLM: granite-3.0-1b-a400m,
// granite-3.0-3b-a800m and their instruct models): Granite's block and multipliers with every
// MLP a mixture of experts -- the router's logits in the compute dtype, a softmax over the top
// num_experts_per_tok of them (the renormalized top probabilities) rounded to the compute
// dtype, SwiGLU experts of intermediate_size stored fused (block_sparse_moe.input_linear
// (E, 2F, C): gate rows then up rows; output_linear (E, C, F)).
void granitemoe_block(ModelSpec& s) {
  s.norm_topk = true;
  s.moe_round_weights = true;
  s.moe_fused_experts = true;
  s.moe_granite = true;
  s.shared_expert = false;
  s.expert_ffn = s.ffn;
}

void granitemoe_read(const json& j, const std::string& where, ModelSpec& s) {
  granite_read(j, where, s);
  if (s.mlp_bias) fail(where, "mlp_bias: Granite MoE's experts have no biases");
  for (const char* k : {"num_local_experts", "num_experts"})
    if (config::find_key(j, k)) {
      s.n_experts = config::get_int(j, k, where);
      break;
    }
  if (s.n_experts <= 0) fail(where, "num_local_experts must be positive");
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 2);
  if (s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "num_experts_per_tok must be between 1 and num_local_experts");
  granitemoe_block(s);
}

void granitemoe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe_granite || s.shared_expert || s.expert_ffn != s.ffn || !s.norm_topk)
    fail("config.json", "not a granitemoe block");
  granite_write(s, j);
  j["num_local_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
}

// As llama.cpp runs a granitemoe GGUF (convert_hf_to_gguf.py's GraniteMoeModel: granite's
// multipliers, input_linear split into ffn_gate_exps / ffn_up_exps).
void granitemoe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  granite_gguf(hp, s);
  if (hp.expert_count <= 0) fail(hp.path, "a granitemoe GGUF without expert_count");
  s.ffn = s.expert_ffn;
  granitemoe_block(s);
}

// IBM Granite 4.0 (model_type "granitemoehybrid", GraniteMoeHybridForCausalLM: granite-4.0-h-micro,
// -h-1b, -h-350m, and granite-4.0-micro, -1b, -350m without Mamba layers): Granite's block and
// multipliers, its MLP a SwiGLU of shared_intermediate_size stored fused (shared_mlp.input_linear:
// gate rows then up rows; output_linear), and the layers of layer_types "mamba" Mamba2 mixers
// (ModelSpec::la_mamba2; mamba.in_proj, conv1d with its bias, A_log, dt_bias, D, the gated group
// norm, out_proj) instead of attention. position_embedding_type "rope" rotates; anything else
// (the -H models' "nope", the config class's null) leaves positions to the Mamba layers.
// With num_local_experts > 0 (granite-4.0-h-tiny, -h-small) the MLP is granitemoe's router and
// fused experts of intermediate_size plus shared_mlp as an ungated shared expert.
// Transformers 5's spelling of layer_types ("linear_attention", "full_attention") is read too,
// and layers_block_type, its old key.
void granitemoehybrid_normalize(json& j) {
  if (!j.contains("layer_types") && j.contains("layers_block_type")) j["layer_types"] = j["layers_block_type"];
  if (json* lt = j.contains("layer_types") ? &j["layer_types"] : nullptr; lt && lt->is_array())
    for (json& e : *lt) {
      const std::string t = e.is_string() ? e.get<std::string>() : std::string();
      if (t == "linear_attention") e = "mamba";
      if (t == "full_attention") e = "attention";
    }
  if (!j.contains("intermediate_size")) j["intermediate_size"] = 11008;  // (the experts' width; the MLP's: shared_intermediate_size)
  if (!j.contains("rms_norm_eps")) j["rms_norm_eps"] = 1e-6;  // (GraniteMoeHybridConfig's default)
}

void granitemoehybrid_read(const json& j, const std::string& where, ModelSpec& s) {
  granite_read(j, where, s);
  if (s.mlp_bias) fail(where, "mlp_bias: Granite 4.0's MLPs have no biases");
  const int64_t experts_ffn = s.ffn;
  s.ffn = config::get_int(j, "shared_intermediate_size", where, 1024);
  s.fused_gate_up = true;
  const int64_t experts = config::get_int(j, "num_local_experts", where, 8);
  if (experts < 0) fail(where, "num_local_experts must not be negative");
  if (experts > 0) {  // (granite-4.0-h-tiny, -h-small: granitemoe's experts and router beside shared_mlp)
    s.n_experts = experts;
    s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 2);
    if (s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
      fail(where, "num_experts_per_tok must be between 1 and num_local_experts");
    granitemoe_block(s);
    s.expert_ffn = experts_ffn;
    s.shared_expert = true;
    s.shared_expert_gate = false;
  }
  // (strings compared as std::string: GCC 12 warns falsely on json == "literal")
  auto text = [](const json* v) { return v && v->is_string() ? v->get<std::string>() : std::string(); };
  const json* pe = config::find_key(j, "position_embedding_type");
  const std::string pos = text(pe);
  if (pe && pos != "rope" && pos != "nope")
    fail(where, "position_embedding_type must be \"rope\", \"nope\" or null, got " + config::shown(*pe));
  if (pos != "rope") s.nope_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true);
  // (GraniteMoeHybridConfig's default: every layer a Mamba layer)
  std::vector<bool> mamba = config::layer_type_flags(j, s.n_layers, where, "mamba", "attention")
                                .value_or(std::vector<bool>(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true));
  read_mamba2_keys(j, where, s, std::move(mamba));
}

// IBM's Bamba (model_type "bamba", BambaForCausalLM: Bamba-9B v1 / v2): Llama's block with Granite
// 4.0-H's Mamba2 layers on every layer but attn_layer_indices; the attention rotates half of each
// head (BambaConfig fixes partial_rotary_factor at 0.5); its files name the MLP feed_forward and the
// norms pre_ff_layernorm / final_layernorm. llama.cpp writes it as a granitehybrid GGUF (with the
// rotary on), which reads back as bamba (gguf.h's granitehybrid_is_bamba).
// BambaConfig's defaults where config.json leaves keys out, and its fixed half rotary: whatever
// partial_rotary_factor the file names, transformers rotates half (bamba_read sets it).
void bamba_normalize(json& j) {
  if (!j.contains("num_key_value_heads")) j["num_key_value_heads"] = 8;
  if (!j.contains("rms_norm_eps")) j["rms_norm_eps"] = 1e-5;
  if (!j.contains("intermediate_size")) j["intermediate_size"] = 14336;
  j.erase("partial_rotary_factor");
  for (const char* k : {"rope_parameters", "rope_scaling"})
    if (j.contains(k) && j[k].is_object()) j[k].erase("partial_rotary_factor");
}

void bamba_read(const json& j, const std::string& where, ModelSpec& s) {
  const float z_loss = config::get_float(j, "z_loss_coefficient", where, 0.0f);
  if (z_loss != 0.0f)
    fail(where, "z_loss_coefficient " + std::to_string(z_loss) + ": BambaForCausalLM adds a z-loss to the training loss, "
                "which is not supported; the released models' configs have 0");
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  if (s.mlp_bias) fail(where, "mlp_bias: Bamba's MLP biases are not supported (the released models have none)");
  if (s.head_dim % 4 != 0) fail(where, "Bamba rotates half of each head: head size " + std::to_string(s.head_dim) +
                                           " must be a multiple of 4");
  s.rotary_dim = s.head_dim / 2;
  std::vector<bool> mamba(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true);
  if (const json* ai = config::find_key(j, "attn_layer_indices")) {
    if (!ai->is_array()) fail(where, "attn_layer_indices must be a list of layer indices, got " + config::shown(*ai));
    for (const json& v : *ai) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= s.n_layers)
        fail(where, "attn_layer_indices holds " + v.dump() + ", not a layer index below " + std::to_string(s.n_layers));
      mamba[static_cast<size_t>(v.get<int64_t>())] = false;
    }
  }
  read_mamba2_keys(j, where, s, std::move(mamba));
}

void bamba_write(const ModelSpec& s, ordered_json& j) {
  if (s.fused_gate_up || s.mlp != MlpKind::SwiGLU || s.qk_norm || s.mlp_bias || s.sliding_window > 0 || s.moe() ||
      !s.nope_layers.empty() || s.rotary_dim != s.head_dim / 2 || (s.hybrid() && !s.la_mamba2) ||
      s.qkv_bias != s.o_bias)
    fail("config.json", "not a bamba block");
  if (s.embed_multiplier != 1.0f || s.residual_multiplier != 1.0f || s.logit_divisor != 1.0f ||
      (s.attn_scale > 0.0f && std::fabs(s.attn_scale * std::sqrt(static_cast<float>(s.head_dim)) - 1.0f) > 1e-6f))
    fail("config.json", "Bamba has no Granite multipliers or attention scale; this model has them");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = false;
  j["attn_rotary_emb"] = s.rotary_dim;  // (Bamba-9B's key, llama.cpp's converter reads the rotary width from it)
  ordered_json idx = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (!s.layer_is_linear_attn(l)) idx.push_back(l);
  j["attn_layer_indices"] = idx;
  write_mamba2_keys(s, j);
}

void granitemoehybrid_write(const ModelSpec& s, ordered_json& j) {
  if (s.rotary_dim != 0 && s.rotary_dim != s.head_dim)
    fail("config.json", "granitemoehybrid rotates whole heads; this model rotates " + std::to_string(s.rotary_dim) +
                            " of " + std::to_string(s.head_dim) + " (Bamba's form, read from a granitehybrid GGUF): "
                            "no Hugging Face config expresses it");
  if (!s.fused_gate_up || s.mlp != MlpKind::SwiGLU || s.qk_norm || s.mlp_bias || s.sliding_window > 0 ||
      (s.hybrid() && !s.la_mamba2) ||
      (s.moe() && (!s.moe_granite || !s.shared_expert || s.shared_expert_gate || s.has_dense_mlp_layers())))
    fail("config.json", "not a granitemoehybrid block");
  const bool rope = s.nope_layers.empty() || std::find(s.nope_layers.begin(), s.nope_layers.end(), false) != s.nope_layers.end();
  if (rope && !s.nope_layers.empty()) fail("config.json", "granitemoehybrid rotates on every layer or on none");
  granite_write(s, j);
  j.erase("mlp_bias");
  j["shared_intermediate_size"] = s.ffn;
  j["intermediate_size"] = s.moe() ? s.expert_ffn : s.ffn;
  j["num_local_experts"] = s.moe() ? s.n_experts : 0;
  j["num_experts_per_tok"] = s.moe() ? s.experts_per_token : 0;
  j["position_embedding_type"] = rope ? "rope" : "nope";
  ordered_json types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) types.push_back(s.layer_is_linear_attn(l) ? "mamba" : "attention");
  j["layer_types"] = types;
  write_mamba2_keys(s, j);
}

// As llama.cpp runs a granitehybrid GGUF (its converter's GraniteHybridModel): granite's
// multipliers; the Mamba layers those whose head_count_kv is 0, sized by the ssm.* keys
// (time_step_rank: the heads; group_count, state_size, inner_size, conv_kernel), always with the
// conv's bias (its graph adds it); no rotary where rope.scaling.finetuned is false (the -H
// models); the MLP split into ffn_gate / ffn_up (read back fused); with experts,
// feed_forward_length is theirs and expert_shared_feed_forward_length the shared_mlp's.
void granitehybrid_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  granite_gguf(hp, s);
  const bool bamba = granitehybrid_is_bamba(hp);
  if (bamba) s.family = "bamba";  // (its MLP as stored, gate_proj / up_proj; half of each head rotates)
  s.fused_gate_up = !bamba;
  if (hp.expert_count > 0) {
    granitemoe_block(s);
    s.expert_ffn = hp.intermediate_size;
    if (hp.expert_shared_ffn <= 0)
      fail(hp.path, "a granitehybrid GGUF with experts but no expert_shared_feed_forward_length (Granite 4.0's shared_mlp "
                    "beside them)");
    s.ffn = hp.expert_shared_ffn;
    s.shared_expert = true;
    s.shared_expert_gate = false;
  }
  if (!hp.rope_finetuned) s.nope_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true);
  if (std::find(hp.recurrent_layers.begin(), hp.recurrent_layers.end(), true) == hp.recurrent_layers.end()) return;
  read_mamba2_gguf(hp, s, /*conv_bias=*/true);  // (its graph adds the bias)
}

}  // namespace

const ModelFamily kGranite{"granite", "GraniteForCausalLM", "granite", 0, 2048, 10000.0f, false, false,
                           granite_read, granite_write, granite_gguf};

// Granite MoE's files: the experts fused under block_sparse_moe.input_linear / output_linear
// (weight suffix and all: transformers 5's module tree calls them block_sparse_moe.experts.
// gate_up_proj / down_proj), the router block_sparse_moe.router.layer.
constexpr HfRename kGraniteMoeRenames[] = {{".block_sparse_moe.input_linear.weight.", ".mlp.experts.gate_up_proj."},
                                           {".block_sparse_moe.output_linear.weight.", ".mlp.experts.down_proj."},
                                           {".block_sparse_moe.router.layer.", ".mlp.gate."}};
// Granite 4.0's files: the Mamba layers under mamba. (in_proj in the DeltaNet's in_proj_qkv
// slot), the MLP under shared_mlp (input_linear = gate_up_proj) -- with experts, the shared
// expert beside granitemoe's experts and router.
constexpr HfRename kGraniteMoeHybridRenames[] = {{".mamba.", ".linear_attn."},
                                                 {".linear_attn.in_proj.", ".linear_attn.in_proj_qkv."},
                                                 {".shared_mlp.input_linear.", ".mlp.gate_up_proj."},
                                                 {".shared_mlp.output_linear.", ".mlp.down_proj."}};
constexpr HfRename kGraniteMoeHybridMoeRenames[] = {
    {".mamba.", ".linear_attn."},
    {".linear_attn.in_proj.", ".linear_attn.in_proj_qkv."},
    {".shared_mlp.input_linear.", ".mlp.shared_expert.gate_up_proj."},
    {".shared_mlp.output_linear.", ".mlp.shared_expert.down_proj."},
    {".block_sparse_moe.input_linear.weight.", ".mlp.experts.gate_up_proj."},
    {".block_sparse_moe.output_linear.weight.", ".mlp.experts.down_proj."},
    {".block_sparse_moe.router.layer.", ".mlp.gate."}};
std::span<const HfRename> granitemoehybrid_renames(const ModelSpec& s) {
  if (s.moe()) return kGraniteMoeHybridMoeRenames;
  return kGraniteMoeHybridRenames;
}
// Without Mamba layers (granite-4.0-micro) llama.cpp's converter writes a granite GGUF (granitemoe
// with experts: not written here, its reader has no shared experts).
std::string_view granitemoehybrid_export_arch(const ModelSpec& s) {
  if (s.hybrid()) return "granitehybrid";
  return s.moe() ? "" : "granite";
}
const ModelFamily kGraniteMoeHybrid = [] {
  ModelFamily f{"granitemoehybrid", "GraniteMoeHybridForCausalLM", "granitehybrid", 0, 2048, 10000.0f, false, false,
                granitemoehybrid_read, granitemoehybrid_write, granitehybrid_gguf};
  f.hf_renames = kGraniteMoeHybridRenames;
  f.renames_for = granitemoehybrid_renames;
  f.export_arch_for = granitemoehybrid_export_arch;
  f.no_gguf_form = "with experts and no Mamba layers it would be llama.cpp's granitemoe with a shared expert, which is "
                   "not written here";
  f.normalize_config = granitemoehybrid_normalize;
  f.gguf_layer_names = kMamba2GgufNames;
  f.gguf_layer_params = kMamba2GgufParams;
  return f;
}();

// Bamba's files: the Mamba layers as Granite 4.0-H's, the MLP under feed_forward.
constexpr HfRename kBambaRenames[] = {{".mamba.", ".linear_attn."},
                                      {".linear_attn.in_proj.", ".linear_attn.in_proj_qkv."},
                                      {".feed_forward.", ".mlp."},
                                      {".pre_ff_layernorm.", ".post_attention_layernorm."},
                                      {"model.final_layernorm.", "model.norm."}};
std::string_view bamba_export_arch(const ModelSpec& s) { return s.hybrid() ? "granitehybrid" : ""; }
const ModelFamily kBamba = [] {
  ModelFamily f{"bamba", "BambaForCausalLM", "", 0, 262144, 10000.0f, false, false, bamba_read, bamba_write, nullptr};
  f.hf_renames = kBambaRenames;
  f.gguf_export_arch = "granitehybrid";
  f.export_arch_for = bamba_export_arch;
  f.no_gguf_form = "a Bamba without Mamba layers has no llama.cpp form here (its granite graph rotates whole heads)";
  f.normalize_config = bamba_normalize;
  return f;
}();

const ModelFamily kGraniteMoe = [] {
  ModelFamily f{"granitemoe", "GraniteMoeForCausalLM", "granitemoe", 0, 4096, 10000.0f, false, false, granitemoe_read,
                granitemoe_write, granitemoe_gguf};
  f.hf_renames = kGraniteMoeRenames;
  return f;
}();

}  // namespace qlora::families
