// NVIDIA Nemotron-H (model_type "nemotron_h", NemotronHForCausalLM: Nemotron-H 4B / 8B / 47B / 56B,
// NVIDIA-Nemotron-Nano-9B-v2 / 12B-v2): every layer is an RMSNorm, then one branch, then the
// residual add (ModelSpec::mlp_only_layers): a Mamba2 mixer (Granite 4.0-H's, model/mamba2.h;
// its inner width mamba_num_heads x mamba_head_dim), attention without positions (no rotary, no
// biases: transformers' NemotronHAttention builds q/k/v/o without them whatever attention_bias
// says), or an MLP up_proj -> relu^2 -> down_proj. Which, per layer: layers_block_type
// ("linear_attention" / "mamba", "full_attention" / "attention", "mlp"; also spelled layer_types)
// or the older hybrid_override_pattern ("M", "*", "-"). The Mamba steps are clamped below at
// time_step_min and not above, as transformers' mixer does (its time_step_limit key is unused);
// residual_in_fp32 is unused by transformers' block too. Every tensor sits under
// model.layers.N.mixer (backbone.* in NVIDIA's files, model.* in transformers'); the final norm is
// norm_f. Layers of routed experts ("moe", "E": Nemotron 3 Nano 30B-A3B; transformers'
// NemotronHMoE): DeepSeek-V3's router (sigmoid scores, e_score_correction_bias, groups,
// routed_scaling_factor; model/moe_block.h) over ungated experts, each down(relu^2(up x))
// (ModelSpec::moe_ungated; files mixer.experts.<e>.up_proj / down_proj), plus a shared expert of
// the same form, moe_shared_expert_intermediate_size wide, added without a gate.
#include <algorithm>
#include <cmath>
#include <limits>
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

// The kinds of layer, one letter each as hybrid_override_pattern spells them.
constexpr char kMamba = 'M', kAttention = '*', kMlp = '-', kMoe = 'E';

// The layers' kinds from whichever key the file has ("" when none), each entry a letter of
// hybrid_override_pattern ('?' for an unknown name, refused by nemotron_h_read).
std::string layer_pattern(const json& j) {
  auto text = [](const json& v) { return v.is_string() ? v.get<std::string>() : std::string(); };
  for (const char* key : {"layer_types", "layers_block_type"}) {  // (transformers: layer_types wins)
    if (!j.contains(key) || !j[key].is_array()) continue;
    std::string p;
    for (const json& e : j[key]) {
      const std::string t = text(e);
      p += t == "mamba" || t == "linear_attention"  ? kMamba
           : t == "attention" || t == "full_attention" ? kAttention
           : t == "mlp"                                ? kMlp
           : t == "moe"                                ? kMoe
                                                       : '?';
    }
    return p;
  }
  if (j.contains("hybrid_override_pattern") && j["hybrid_override_pattern"].is_string())
    return j["hybrid_override_pattern"].get<std::string>();
  return "";
}

// NemotronHConfig's spellings into the shared and the hybrids' keys, its defaults where absent.
void nemotron_h_normalize(json& j) {
  // (the config class's older names, which win when present, as its __post_init__ has it)
  const std::pair<const char*, const char*> legacy[] = {
      {"mamba_n_groups", "n_groups"},          {"mamba_d_conv", "conv_kernel"},     {"mamba_expand", "expand"},
      {"mamba_dt_min", "time_step_min"},       {"mamba_dt_max", "time_step_max"},   {"mamba_dt_limit", "time_step_limit"},
      {"mamba_conv_bias", "use_conv_bias"},    {"mamba_chunk_size", "chunk_size"}};
  for (const auto& [old_key, key] : legacy)
    if (j.contains(old_key)) {
      j[key] = j[old_key];
      j.erase(old_key);
    }
  const std::string pattern = layer_pattern(j);
  // (no key: refused below, naming layers_block_type)
  j["num_hidden_layers"] = pattern.empty() ? 4 : static_cast<int64_t>(pattern.size());
  const std::pair<const char*, const char*> keys[] = {{"mamba_num_heads", "mamba_n_heads"}, {"mamba_head_dim", "mamba_d_head"},
                                                      {"ssm_state_size", "mamba_d_state"},  {"n_groups", "mamba_n_groups"},
                                                      {"conv_kernel", "mamba_d_conv"},      {"use_conv_bias", "mamba_conv_bias"},
                                                      {"use_bias", "mamba_proj_bias"}};
  const json defaults[] = {128, 64, 128, 8, 4, true, false};
  for (size_t i = 0; i < std::size(keys); ++i) {
    j[keys[i].second] = j.contains(keys[i].first) ? j[keys[i].first] : defaults[i];
    j.erase(keys[i].first);
  }
  j.erase("expand");
  // (transformers' mixer clamps the steps to [time_step_min, inf), whatever time_step_limit says)
  const json lo = j.contains("time_step_min") && j["time_step_min"].is_number() ? j["time_step_min"] : json(0.001);
  j["time_step_limit"] = json::array({lo, json{{"__float__", "Infinity"}}});
  j["rms_norm_eps"] = j.contains("layer_norm_epsilon") ? j["layer_norm_epsilon"] : json(1e-5);
  const std::pair<const char*, json> shared[] = {{"vocab_size", 131072},         {"hidden_size", 4096},
                                                 {"num_attention_heads", 32},     {"num_key_value_heads", 8},
                                                 {"head_dim", 128},               {"intermediate_size", 21504},
                                                 {"max_position_embeddings", 4096}};
  for (const auto& [k, v] : shared)
    if (!j.contains(k) || j[k].is_null()) j[k] = v;
  j["tie_word_embeddings"] = false;  // (NemotronHForCausalLM keeps its own lm_head whatever the key says)
}

// NemotronHMoE's keys: the router (NemotronHTopkRouter: DeepSeek-V3's, float32, sigmoid scores
// biased for the choice, n_group groups of which topk_group compete), the ungated experts and the
// shared expert (always there: moe_shared_expert_intermediate_size wide).
void read_experts(const json& j, const std::string& where, ModelSpec& s, std::vector<bool> moe_layers) {
  if (const json* lat = config::find_key(j, "moe_latent_size"); lat && !lat->is_null())
    fail(where, "moe_latent_size " + config::shown(*lat) + ": experts behind a latent projection (Nemotron 3 Super's) "
                "are not supported yet");
  s.n_experts = config::get_int(j, "n_routed_experts", where, 8);
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 2);
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 7688);
  s.moe_ungated = true;
  s.moe_layer_list = std::move(moe_layers);
  s.shared_expert = true;
  s.shared_expert_gate = false;
  s.shared_expert_ffn = config::get_int(j, "moe_shared_expert_intermediate_size", where, 7688);
  s.moe_sigmoid_router = true;
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, true);
  s.moe_groups = config::get_int(j, "n_group", where, 1);
  s.moe_topk_groups = config::get_int(j, "topk_group", where, 1);
  s.moe_routed_scale = config::get_float(j, "routed_scaling_factor", where, 1.0f);
  if (s.n_experts <= 0 || s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "n_routed_experts must be positive and num_experts_per_tok between 1 and it (got " +
                    std::to_string(s.n_experts) + ", " + std::to_string(s.experts_per_token) + ")");
}

void nemotron_h_read(const json& j, const std::string& where, ModelSpec& s) {
  const std::string pattern = layer_pattern(j);
  if (pattern.empty())
    fail(where, "a nemotron_h config needs layers_block_type (or hybrid_override_pattern) naming each layer's kind");
  std::vector<bool> mamba(pattern.size(), false), mlp(pattern.size(), false), moe(pattern.size(), false);
  for (size_t l = 0; l < pattern.size(); ++l) {
    const char c = pattern[l];
    if (c != kMamba && c != kAttention && c != kMlp && c != kMoe)
      fail(where, "layer " + std::to_string(l) + "'s kind is not one of linear_attention / mamba (M), full_attention / "
                  "attention (*), mlp (-), moe (E)");
    mamba[l] = c == kMamba;
    mlp[l] = c == kMlp || c == kMoe;
    moe[l] = c == kMoe;
  }
  s.mlp_only_layers = std::move(mlp);
  if (std::find(moe.begin(), moe.end(), true) != moe.end()) read_experts(j, where, s, std::move(moe));
  s.nope_layers.assign(pattern.size(), true);  // (no positions but the Mamba layers')
  s.qkv_bias = s.o_bias = false;
  s.mlp = MlpKind::Plain;
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  auto text = [](const json* v) { return v && v->is_string() ? v->get<std::string>() : std::string(); };
  const json* act = config::find_key(j, "mlp_hidden_act");
  if (act && text(act) != "relu2")
    fail(where, "mlp_hidden_act " + config::shown(*act) + " is not supported for nemotron_h (relu2)");
  s.act = Activation::Relu2;
  const json* mact = config::find_key(j, "mamba_hidden_act");
  if (mact && text(mact) != "silu")
    fail(where, "mamba_hidden_act " + config::shown(*mact) + " is not supported for nemotron_h (silu)");
  // (sliding_window: NemotronHAttention has no window, whatever the key says -- ignored as there)
  if (config::get_int(j, "num_nextn_predict_layers", where, 0) != 0)
    fail(where, "num_nextn_predict_layers: Nemotron-H's multi-token prediction layers are not supported");
  read_mamba2_keys(j, where, s, std::move(mamba), /*inner_from_heads=*/true);
}

void nemotron_h_write(const ModelSpec& s, ordered_json& j) {
  if (!s.single_branch() || s.mlp != MlpKind::Plain || s.act != Activation::Relu2 || s.qkv_bias || s.o_bias ||
      (s.moe() && !(s.moe_ungated && s.moe_sigmoid_router && s.shared_expert && !s.shared_expert_gate)) ||
      (s.hybrid() && !s.la_mamba2) || s.sliding_window > 0 || s.qk_norm ||
      static_cast<int64_t>(s.nope_layers.size()) != s.n_layers ||
      std::find(s.nope_layers.begin(), s.nope_layers.end(), false) != s.nope_layers.end())
    fail("config.json", "not a nemotron_h model");
  if (s.la_dt_max != std::numeric_limits<float>::infinity())
    fail("config.json", "Nemotron-H's Mamba steps have no upper bound in transformers; this model has one");
  ordered_json types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l)
    types.push_back(s.layer_is_linear_attn(l) ? "mamba" : s.layer_has_mixer(l) ? "attention" : s.layer_moe(l) ? "moe" : "mlp");
  j["layers_block_type"] = types;
  // (the older key too, which llama.cpp's converter reads first: from the list it takes only "moe" as
  // an MLP layer; transformers takes the list when both are there)
  std::string pattern;
  for (int64_t l = 0; l < s.n_layers; ++l)
    pattern += s.layer_is_linear_attn(l) ? kMamba : s.layer_has_mixer(l) ? kAttention : s.layer_moe(l) ? kMoe : kMlp;
  j["hybrid_override_pattern"] = pattern;
  if (s.moe()) {
    j["n_routed_experts"] = s.n_experts;
    j["num_experts_per_tok"] = s.experts_per_token;
    j["moe_intermediate_size"] = s.expert_ffn;
    j["moe_shared_expert_intermediate_size"] = s.shared_expert_ffn;
    j["n_shared_experts"] = 1;
    j["moe_latent_size"] = nullptr;
    j["n_group"] = s.moe_groups;
    j["topk_group"] = s.moe_topk_groups;
    j["norm_topk_prob"] = s.norm_topk;
    j["routed_scaling_factor"] = s.moe_routed_scale;
  }
  j["mlp_hidden_act"] = "relu2";
  j["mlp_bias"] = s.mlp_bias;
  j["attention_bias"] = false;
  j["layer_norm_epsilon"] = j["rms_norm_eps"];
  if (s.la_mamba2) {
    j["mamba_num_heads"] = s.la_v_heads;
    j["mamba_head_dim"] = s.la_v_dim;
    j["ssm_state_size"] = s.la_k_dim;
    j["n_groups"] = s.la_k_heads;
    j["conv_kernel"] = s.la_conv_kernel;
    j["use_conv_bias"] = s.la_conv_bias;
    j["use_bias"] = s.la_proj_bias;
    j["time_step_min"] = s.la_dt_min;
  }
  j["mamba_hidden_act"] = "silu";
  for (const char* k : {"rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "hidden_act"})
    j.erase(k);
}

// As llama.cpp runs a nemotron_h GGUF (its converter's NemotronHModel): the Mamba layers those
// whose head_count_kv and feed_forward_length are 0, the MLP layers those with a
// feed_forward_length (mlp_layers), the rest attention; no positions; the ssm.* sizes; the conv's
// bias where the file has it; the steps softplus only (llama.cpp clamps none, and the converter
// keeps no time_step_min).
void nemotron_h_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (hp.expert_count > 0 && hp.architecture != "nemotron_h_moe")
    fail(hp.path, "a nemotron_h GGUF with experts: llama.cpp's nemotron_h graph has none (nemotron_h_moe has)");
  s.mlp_only_layers = hp.mlp_layers;
  if (hp.expert_count > 0) {  // (every MLP layer has the experts: llama.cpp's graph, whatever the file)
    if (hp.moe_latent_size > 0)
      fail(hp.path, "moe_latent_size " + std::to_string(hp.moe_latent_size) + ": experts behind a latent projection "
                    "(Nemotron 3 Super's) are not supported yet");
    if (hp.expert_shared_ffn <= 0)
      fail(hp.path, "nemotron_h_moe.expert_shared_feed_forward_length is missing: llama.cpp's graph adds a shared expert");
    s.moe_layer_list = hp.mlp_layers;
    s.moe_sigmoid_router = true;
    s.shared_expert = true;
    s.shared_expert_gate = false;
    s.shared_expert_ffn = hp.expert_shared_ffn;
    s.moe_routed_scale = hp.expert_weights_scale > 0.0f ? hp.expert_weights_scale : 1.0f;
    s.moe_groups = hp.expert_group_count > 1 ? hp.expert_group_count : 1;
    s.moe_topk_groups = hp.expert_group_count > 1 ? hp.expert_group_used_count : 1;
    s.norm_topk = hp.expert_weights_norm == 1;
  }
  s.nope_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true);
  s.mlp = MlpKind::Plain;
  s.act = Activation::Relu2;
  if (std::find(hp.recurrent_layers.begin(), hp.recurrent_layers.end(), true) == hp.recurrent_layers.end()) return;
  read_mamba2_gguf(hp, s, hp.ssm_conv_bias);
}

}  // namespace

// Its files (transformers' module names; NVIDIA's backbone.* read through stored_alias): the
// embeddings, norm_f, each layer's one norm (input_layernorm whichever its branch; the Mamba
// mixer's own gated norm kept apart through a temporary name), the mixer's tensors by kind.
constexpr HfRename kNemotronHRenames[] = {{"model.embeddings.", "model.embed_tokens."},
                                          {".mixer.norm.", ".mixer.gated_norm."},
                                          {".norm.", ".input_layernorm."},
                                          {"model.norm_f.", "model.norm."},
                                          {".mixer.gated_norm.", ".linear_attn.norm."},
                                          {".mixer.in_proj.", ".linear_attn.in_proj_qkv."},
                                          {".mixer.out_proj.", ".linear_attn.out_proj."},
                                          {".mixer.conv1d.", ".linear_attn.conv1d."},
                                          {".mixer.A_log.", ".linear_attn.A_log."},
                                          {".mixer.D.", ".linear_attn.D."},
                                          {".mixer.dt_bias.", ".linear_attn.dt_bias."},
                                          {".mixer.up_proj.", ".mlp.up_proj."},
                                          {".mixer.down_proj.", ".mlp.down_proj."},
                                          {".mixer.experts.", ".mlp.experts."},
                                          {".mixer.gate.", ".mlp.gate."},
                                          {".mixer.shared_experts.", ".mlp.shared_expert."},
                                          {".mixer.", ".self_attn."}};

// Mamba2's per-layer parameters, and the router's score bias (llama.cpp's exp_probs_b).
constexpr GgufLayerName kNemotronHGgufParams[] = {{"ssm_a", "linear_attn.A_log"},
                                                  {"ssm_d", "linear_attn.D"},
                                                  {"ssm_dt.bias", "linear_attn.dt_bias"},
                                                  {"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"}};

// nemotron_h_moe with experts (its converter's choice: num_experts_per_tok in the config), else nemotron_h.
std::string_view nemotron_h_export_arch(const ModelSpec& s) { return s.moe() ? "nemotron_h_moe" : "nemotron_h"; }

const ModelFamily kNemotronH = [] {
  ModelFamily f{"nemotron_h", "NemotronHForCausalLM", "nemotron_h", 128, 4096, 10000.0f, false, false, nemotron_h_read,
                nemotron_h_write, nemotron_h_gguf};
  f.hf_renames = kNemotronHRenames;
  f.stored_alias = {"backbone.", "model."};
  f.never_tied = true;
  f.normalize_config = nemotron_h_normalize;
  f.own_activation = true;
  f.gguf_layer_names = kMamba2GgufNames;
  f.gguf_layer_params = kNemotronHGgufParams;
  f.gguf_arch_alias = "nemotron_h_moe";
  f.export_arch_for = nemotron_h_export_arch;
  f.peft_refuses_out_proj = true;
  return f;
}();

}  // namespace qlora::families
