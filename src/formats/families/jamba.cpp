// AI21's Jamba (model_type "jamba", JambaForCausalLM: Jamba-v0.1, Jamba 1.5 / 1.6 / 1.7 Mini and Large,
// AI21-Jamba-Reasoning-3B): a Llama-style pre-norm block whose mixer is attention on the layers where
// i % attn_layer_period == attn_layer_offset -- without positions (Jamba's attention has no rotary)
// -- and a Mamba (1) mixer elsewhere (model/mamba1.h) with RMSNorms carrying weights on its dt, B
// and C (dt_layernorm, b_layernorm, c_layernorm, at rms_norm_eps); the MLP a mixture of experts on
// the layers where i % expert_layer_period == expert_layer_offset (a softmax router over
// num_experts, the top num_experts_per_tok kept as they are -- not renormalized --, SwiGLU experts
// of intermediate_size) and a dense SwiGLU MLP elsewhere. Its files name the mixers self_attn /
// mamba, the MLP feed_forward (the router feed_forward.router), the norms input_layernorm /
// pre_ff_layernorm and the final one final_layernorm.
//
// transformers' JambaMambaMixer multiplies by dt_proj.weight itself unless the model is quantized
// (then it calls the module): as for Falcon-Mamba, dt_proj is adapted only when it is 4-/8-bit.
// PEFT's all-linear adapts the attention's, the mixers' and the dense MLPs' Linears, not the
// experts (3-D parameters) nor the router (a parameter): so does ours.
//
// GGUF both ways as llama.cpp's jamba (head_count_kv per layer, 0 on the Mamba layers; the ssm.* sizes;
// experts as ffn_*_exps on the layers with ffn_gate_inp).
#include <algorithm>
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

// JambaConfig's defaults where config.json leaves keys out (the shared reader's differ).
void jamba_normalize(json& j) {
  const std::pair<const char*, json> defaults[] = {
      {"vocab_size", 65536}, {"hidden_size", 4096},    {"intermediate_size", 14336}, {"num_hidden_layers", 32},
      {"num_attention_heads", 32}, {"rms_norm_eps", 1e-6}};
  for (const auto& [k, v] : defaults)
    if (!j.contains(k) || j[k].is_null()) j[k] = v;
  if (!j.contains("num_key_value_heads")) j["num_key_value_heads"] = 8;
  // (JambaConfig: num_key_value_heads None means num_attention_heads)
  if (j.contains("num_key_value_heads") && j["num_key_value_heads"].is_null()) j["num_key_value_heads"] = j["num_attention_heads"];
}

// Layer l is the `period`-cycle's `offset`-th (transformers' layers_block_type / layers_num_experts).
std::vector<bool> periodic_layers(const json& j, const std::string& where, int64_t n_layers, const char* period_key,
                                  const char* offset_key, int64_t period_default, int64_t offset_default) {
  const int64_t period = config::get_int(j, period_key, where, period_default);
  const int64_t offset = config::get_int(j, offset_key, where, offset_default);
  if (period <= 0 || offset < 0 || offset >= period)
    fail(where, std::string(offset_key) + " (" + std::to_string(offset) + ") must be below " + period_key + " (" +
                    std::to_string(period) + "), both non-negative");
  std::vector<bool> v(static_cast<size_t>(std::max<int64_t>(n_layers, 0)));
  for (int64_t l = 0; l < n_layers; ++l) v[static_cast<size_t>(l)] = l % period == offset;
  return v;
}

void jamba_read(const json& j, const std::string& where, ModelSpec& s) {
  if (s.n_layers <= 0) fail(where, "a Jamba model needs at least one layer");
  // (attention without positions on its layers; Mamba on the others)
  const std::vector<bool> attention = periodic_layers(j, where, s.n_layers, "attn_layer_period", "attn_layer_offset", 8, 4);
  s.nope_layers.assign(static_cast<size_t>(s.n_layers), true);
  std::vector<bool> mamba(attention.size());
  for (size_t l = 0; l < attention.size(); ++l) mamba[l] = !attention[l];
  if (std::find(mamba.begin(), mamba.end(), true) != mamba.end()) {
    const int64_t expand = config::get_int(j, "mamba_expand", where, 2);
    if (expand <= 0 || expand > 64) fail(where, "mamba_expand must be between 1 and 64, got " + std::to_string(expand));
    read_mamba1_keys(j, where, s, std::move(mamba), expand * s.hidden,
                     {"mamba_d_state", "mamba_d_conv", "mamba_conv_bias", "mamba_proj_bias", "mamba_dt_rank"});
    s.la_bcdt_norm = true;
    s.la_bcdt_weights = true;
    s.la_bcdt_eps = s.norm_eps;
  }
  // (experts on their layers, when there are more than one)
  const int64_t experts = config::get_int(j, "num_experts", where, 16);
  if (experts <= 0) fail(where, "num_experts must be positive, got " + std::to_string(experts));
  if (experts > 1) {
    std::vector<bool> moe = periodic_layers(j, where, s.n_layers, "expert_layer_period", "expert_layer_offset", 2, 1);
    if (std::find(moe.begin(), moe.end(), true) != moe.end()) {
      s.n_experts = experts;
      s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 2);
      if (s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
        fail(where, "num_experts_per_tok must be between 1 and num_experts");
      s.norm_topk = false;         // (JambaTopKRouter keeps the top softmax weights as they are)
      s.moe_round_weights = true;  // (... cast to the hidden states' dtype)
      s.expert_ffn = s.ffn;
      s.moe_layer_list = std::move(moe);
    }
  }
  // (output_router_logits: transformers adds the router's auxiliary loss in training; not here -- the
  // released configs leave it off, and the experts are frozen in QLoRA)
}

void jamba_write(const ModelSpec& s, ordered_json& j) {
  if (s.qk_norm || s.qkv_bias || s.o_bias || s.mlp_bias || s.fused_gate_up || s.mlp != MlpKind::SwiGLU || s.shared_expert ||
      s.sliding_window > 0 || (s.hybrid() && !(s.la_mamba1 && s.la_bcdt_weights)))
    fail("config.json", "not a jamba block");
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (s.layer_rotates(l)) fail("config.json", "Jamba's attention has no positions; this model rotates");
  // (the layer pattern back as a period and offset: Jamba's only form)
  // (none at all: the period past the last layer, as a config whose offset no layer reaches reads)
  auto period_of = [&](auto&& is, const char* what, int64_t& period, int64_t& offset) {
    for (period = 1; period <= s.n_layers + 1; ++period) {
      for (offset = 0; offset < period; ++offset) {
        bool ok = true;
        for (int64_t l = 0; l < s.n_layers && ok; ++l) ok = is(l) == (l % period == offset);
        if (ok) return;
      }
    }
    fail("config.json", std::string("Jamba's ") + what + " layers come every period-th from an offset; this model's do not");
  };
  int64_t ap = 0, ao = 0;
  period_of([&](int64_t l) { return !s.layer_is_linear_attn(l); }, "attention", ap, ao);
  j["attn_layer_period"] = ap;
  j["attn_layer_offset"] = ao;
  if (s.moe()) {
    if (s.norm_topk || s.expert_ffn != s.ffn) fail("config.json", "Jamba's experts are as wide as its MLP and not renormalized");
    int64_t ep = 0, eo = 0;
    period_of([&](int64_t l) { return s.layer_moe(l); }, "expert", ep, eo);
    j["num_experts"] = s.n_experts;
    j["num_experts_per_tok"] = s.experts_per_token;
    j["expert_layer_period"] = ep;
    j["expert_layer_offset"] = eo;
  } else {
    j["num_experts"] = 1;
  }
  if (s.hybrid()) {
    if (s.la_value_dim() % s.hidden != 0) fail("config.json", "Jamba's Mamba width is mamba_expand x hidden_size");
    j["mamba_expand"] = s.la_value_dim() / s.hidden;
    j["mamba_d_state"] = s.la_k_dim;
    j["mamba_d_conv"] = s.la_conv_kernel;
    j["mamba_dt_rank"] = s.la_dt_rank;
    j["mamba_conv_bias"] = s.la_conv_bias;
    j["mamba_proj_bias"] = s.la_proj_bias;
  }
  j["use_mamba_kernels"] = false;
  for (const char* k : {"rope_theta", "rope_parameters", "rope_scaling"}) j.erase(k);
  if (s.head_dim * s.n_heads == s.hidden) j.erase("head_dim");  // (JambaAttention reads one when it is there)
}

// As llama.cpp runs a jamba GGUF (its converter's JambaModel): head_count_kv 0 marks the Mamba layers
// (the conv's bias required, no projection biases, the dt / B / C norms with weights at the layers'
// epsilon), no positions anywhere, experts on the layers with a router (ffn_gate_inp), the top
// expert_used_count weights not renormalized, a dense MLP of feed_forward_length elsewhere.
void jamba_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.nope_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true);
  if (std::find(hp.recurrent_layers.begin(), hp.recurrent_layers.end(), true) != hp.recurrent_layers.end()) {
    read_mamba1_gguf(hp, s, hp.recurrent_layers);
    s.la_bcdt_norm = true;
    s.la_bcdt_weights = true;
    s.la_bcdt_eps = s.norm_eps;
  }
  if (s.moe()) {
    s.norm_topk = false;
    s.moe_round_weights = true;
    s.moe_layer_list = hp.moe_layers;
    if (s.expert_ffn != hp.intermediate_size)
      fail(hp.path, "a jamba GGUF whose experts (" + std::to_string(s.expert_ffn) + ") are not as wide as its MLP (" +
                        std::to_string(hp.intermediate_size) + "): Jamba's share intermediate_size");
    s.ffn = hp.intermediate_size;
  }
}

}  // namespace

// Its files: mamba.* / feed_forward.* (the router feed_forward.router), pre_ff_layernorm,
// final_layernorm (the order the renames run in either direction: model_family.h).
constexpr HfRename kJambaRenames[] = {{".mamba.", ".linear_attn."},
                                      {".linear_attn.in_proj.", ".linear_attn.in_proj_qkv."},
                                      {".linear_attn.x_proj.", ".linear_attn.in_proj_b."},
                                      {".linear_attn.dt_proj.", ".linear_attn.in_proj_a."},
                                      {".feed_forward.", ".mlp."},
                                      {".mlp.router.", ".mlp.gate."},
                                      {".pre_ff_layernorm.", ".post_attention_layernorm."},
                                      {"model.final_layernorm.", "model.norm."}};

const ModelFamily kJamba = [] {
  ModelFamily f{"jamba", "JambaForCausalLM", "jamba", 0, 262144, 10000.0f, false, false, jamba_read, jamba_write, jamba_gguf};
  f.hf_renames = kJambaRenames;
  f.normalize_config = jamba_normalize;
  f.gguf_layer_names = kJambaGgufNames;
  f.gguf_layer_params = kMamba1GgufParams;
  f.peft_bypassed_linear = 10;  // dt_proj, when not quantized
  f.peft_bypass_unquantized_only = true;
  return f;
}();

}  // namespace qlora::families
