// LFM2 (model_type "lfm2", Lfm2ForCausalLM: Liquid AI's LFM2-350M / 700M / 1.2B / 2.6B): a
// hybrid of gated short-convolution layers (layer_types "conv": in_proj gives B | C | x per
// token, out_proj(C * conv(B * x)) with a causal depthwise conv1d of conv_L_cache taps;
// ModelSpec::la_short_conv) and grouped-query attention layers with per-head q/k RMSNorms
// before the rotary; pre-RMSNorms (operator_norm, ffn_norm), a SwiGLU MLP (w1, w3, w2) whose
// width transformers derives from block_ff_dim (block_auto_adjust_ff_dim), the final norm
// named embedding_norm, a tied head.
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

// Lfm2Config's own spellings: block_ff_dim and tie_embedding win over intermediate_size and
// tie_word_embeddings (its __post_init__ pops them over the fields); norm_eps is the norms' eps.
void lfm2_normalize(json& j) {
  if (!j.contains("num_key_value_heads")) j["num_key_value_heads"] = 8;  // (Lfm2Config's default)
  if (j.contains("block_ff_dim")) j["intermediate_size"] = j["block_ff_dim"];
  if (!j.contains("intermediate_size")) j["intermediate_size"] = 12288;
  if (j.contains("tie_embedding")) j["tie_word_embeddings"] = j["tie_embedding"];
  j["rms_norm_eps"] = j.contains("norm_eps") ? j["norm_eps"] : json(1e-5);
}

// Both families' layers: the short conv's taps, the attention layers' q/k norms, and which layers
// are which (layer_types, or LFM2's full_attn_idxs; neither: every layer attends in LFM2, an error
// for LFM2-MoE, whose config class has no default: need_layer_types).
void read_lfm2_layers(const json& j, const std::string& where, ModelSpec& s, bool need_layer_types = false) {
  s.qk_norm = true;
  s.la_short_conv = true;
  if (config::get_bool(j, "conv_bias", where, false))
    fail(where, "conv_bias: true (biases on the short convolutions and their projections) is not supported; the "
                "released LFM2 models have none");
  s.la_conv_kernel = config::get_int(j, "conv_L_cache", where, 3);
  std::vector<bool> conv(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::layer_type_flags(j, s.n_layers, where, "conv", "full_attention")) {
    conv = std::move(*lt);
  } else if (need_layer_types) {
    fail(where, "layer_types is missing (which layers are \"conv\" and which \"full_attention\"; Lfm2MoeConfig has "
                "no default)");
  } else if (const json* fa = config::find_key(j, "full_attn_idxs"); fa && !fa->is_null()) {
    if (!fa->is_array()) fail(where, "full_attn_idxs must be a list of layer indices, got " + config::shown(*fa));
    conv.assign(conv.size(), true);
    for (const json& v : *fa) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= s.n_layers)
        fail(where, "full_attn_idxs holds " + v.dump() + ", not a layer index below " + std::to_string(s.n_layers));
      conv[static_cast<size_t>(v.get<int64_t>())] = false;
    }
  }
  if (std::find(conv.begin(), conv.end(), true) != conv.end()) s.linear_attn_layers = std::move(conv);
}

void write_lfm2_layers(const ModelSpec& s, ordered_json& j) {
  j["norm_eps"] = j["rms_norm_eps"];
  j.erase("rms_norm_eps");
  j.erase("hidden_act");
  j["conv_bias"] = false;
  j["conv_L_cache"] = s.la_conv_kernel;
  ordered_json types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) types.push_back(s.layer_is_linear_attn(l) ? "conv" : "full_attention");
  j["layer_types"] = types;
}

void lfm2_read(const json& j, const std::string& where, ModelSpec& s) {
  read_lfm2_layers(j, where, s);
  // The MLP's width (Lfm2MLP): 2/3 of intermediate_size, times block_ffn_dim_multiplier and
  // rounded up to block_multiple_of when the multiplier is set.
  if (config::get_bool(j, "block_auto_adjust_ff_dim", where, true)) {
    int64_t f = static_cast<int64_t>(2.0 * static_cast<double>(s.ffn) / 3.0);
    // (absent: Lfm2Config's 1.0; null: no multiplier and no rounding)
    const auto m = j.find("block_ffn_dim_multiplier");
    if (m == j.end() || !m->is_null()) {
      // (a double, as Python multiplies: int(mult * f) must land where transformers' does)
      if (m != j.end() && !m->is_number())
        fail(where, "block_ffn_dim_multiplier must be a number or null, got " + config::shown(*m));
      const double mult = m == j.end() ? 1.0 : m->get<double>();
      if (!(mult > 0.0 && mult < 1e6))
        fail(where, "block_ffn_dim_multiplier must be positive and finite, got " + config::shown(*m));
      const int64_t multiple = config::get_int(j, "block_multiple_of", where, 256);
      if (multiple <= 0 || multiple > (int64_t{1} << 30))
        fail(where, "block_multiple_of must be positive, got " + std::to_string(multiple));
      f = static_cast<int64_t>(mult * static_cast<double>(f));
      f = multiple * ((f + multiple - 1) / multiple);
    }
    s.ffn = f;
  }
}

void lfm2_write(const ModelSpec& s, ordered_json& j) {
  if (!s.la_short_conv || !s.qk_norm || s.qkv_bias || s.o_bias || s.mlp_bias || s.sliding_window > 0 ||
      s.norm_unit_offset || s.mlp != MlpKind::SwiGLU)
    fail("config.json", "not an lfm2 block");
  // (the MLP's width as it is: no adjustment; the other block_* keys, which transformers then
  // ignores, as llama.cpp's converter reads them unconditionally)
  j["block_auto_adjust_ff_dim"] = false;
  j["block_ffn_dim_multiplier"] = 1.0;
  j["block_multiple_of"] = 256;
  write_lfm2_layers(s, j);
}

// LFM2-MoE (lfm2_moe, Lfm2MoeForCausalLM: LFM2-8B-A1B): LFM2's layers with the MLP of the first
// num_dense_layers an intermediate_size-wide SwiGLU (no adjustment) and the others experts of
// moe_intermediate_size (feed_forward.experts.E.w1 / w3 / w2 in its files) behind a sigmoid
// router (feed_forward.gate.weight, a parameter) whose choice adds feed_forward.expert_bias, the
// top k renormalized (sum + 1e-6) and times routed_scaling_factor.
void lfm2_moe_normalize(json& j) {
  if (!j.contains("num_key_value_heads")) j["num_key_value_heads"] = 8;  // (Lfm2MoeConfig's default)
  if (j.contains("tie_embedding")) j["tie_word_embeddings"] = j["tie_embedding"];
  if (!j.contains("intermediate_size")) j["intermediate_size"] = 7168;
  j["rms_norm_eps"] = j.contains("norm_eps") ? j["norm_eps"] : json(1e-5);
}

void lfm2_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  read_lfm2_layers(j, where, s, /*need_layer_types=*/true);
  s.n_experts = config::get_int(j, "num_experts", where, 32);
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 4);
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 1792);
  s.moe_dense_layers = config::get_int(j, "num_dense_layers", where, 2);
  if (s.moe_dense_layers < 0 || s.moe_dense_layers > s.n_layers)
    fail(where, "num_dense_layers " + std::to_string(s.moe_dense_layers) + " is not between 0 and num_hidden_layers (" +
                    std::to_string(s.n_layers) + ")");
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, true);
  s.moe_sigmoid_router = true;
  s.moe_sigmoid_norm_eps = 1e-6f;
  s.moe_router_in_dtype = true;
  s.moe_score_bias = "mlp.expert_bias";
  s.moe_fused_experts = false;  // (its checkpoints: feed_forward.experts.E.w1 / w3 / w2, as transformers saves them)
  s.moe_routed_scale = config::get_float(j, "routed_scaling_factor", where, 1.0f);
  if (!config::get_bool(j, "use_expert_bias", where, true))
    fail(where, "use_expert_bias false (a router without its score bias) is not supported; the released LFM2-MoE "
                "models have one");
}

void lfm2_moe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.la_short_conv || !s.qk_norm || !s.moe() || !s.moe_sigmoid_router || s.shared_expert || s.moe_groups != 1 ||
      s.moe_sigmoid_norm_eps != 1e-6f || s.qkv_bias || s.o_bias || s.mlp_bias || s.sliding_window > 0 ||
      s.norm_unit_offset || s.mlp != MlpKind::SwiGLU)
    fail("config.json", "not an lfm2_moe block");
  write_lfm2_layers(s, j);
  j["num_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["num_dense_layers"] = s.moe_dense_layers;
  j["norm_topk_prob"] = s.norm_topk;
  j["use_expert_bias"] = true;
  j["routed_scaling_factor"] = s.moe_routed_scale;
}

// llama.cpp's lfm2: the attention layers' head_count_kv, 0 on the short-conv layers
// (GgufLlamaHParams::recurrent_layers), the conv's taps in shortconv.l_cache; its
// feed_forward_length is the MLP's width as it is (the converter applies the adjustment).
void lfm2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.qk_norm = true;
  s.la_short_conv = true;
  if (hp.shortconv_l_cache <= 0) fail(hp.path, "lfm2 GGUF without lfm2.shortconv.l_cache (the short conv's taps)");
  s.la_conv_kernel = hp.shortconv_l_cache;
  if (std::find(hp.recurrent_layers.begin(), hp.recurrent_layers.end(), true) != hp.recurrent_layers.end())
    s.linear_attn_layers = hp.recurrent_layers;
}

// llama.cpp's lfm2moe: lfm2's layers, the dense lead (leading_dense_block_count) and experts of
// expert_feed_forward_length behind the sigmoid router (expert_gating_func 2) with exp_probs_b as
// its score bias, always renormalized (its graph's build_moe_ffn).
void lfm2_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  lfm2_gguf(hp, s);
  if (hp.expert_count <= 0) fail(hp.path, "an lfm2moe GGUF without expert_count");
  if (hp.expert_gating_func != 0 && hp.expert_gating_func != 2)
    fail(hp.path, "lfm2moe.expert_gating_func " + std::to_string(hp.expert_gating_func) +
                      ": LFM2-MoE's router is a sigmoid (2)");
  read_deepseek_moe_gguf(hp, s);
  if (s.shared_expert) fail(hp.path, "an lfm2moe GGUF with shared experts (expert_shared_count): LFM2-MoE has none");
  s.shared_expert_gate = true;  // (the default of a model without shared experts)
  s.norm_topk = true;
  s.moe_sigmoid_router = true;
  s.moe_sigmoid_norm_eps = 1e-6f;
  s.moe_router_in_dtype = true;  // (what the checkpoint's model runs; llama.cpp's graph routes in float32)
  s.moe_score_bias = "mlp.expert_bias";
}

}  // namespace

// llama.cpp's names of the short conv's tensors (its converter's tensor map).
constexpr GgufLayerName kLfm2GgufNames[] = {{"shortconv.conv", "linear_attn.conv1d"},
                                           {"shortconv.in_proj", "linear_attn.in_proj_qkv"},
                                           {"shortconv.out_proj", "linear_attn.out_proj"}};
// (lfm2moe's router score bias)
constexpr GgufLayerName kLfm2MoeGgufParams[] = {{"exp_probs_b.bias", "mlp.expert_bias"}};

// Its checkpoint / PEFT names, to the canonical ones (the short conv in the DeltaNet's slots).
// (feed_forward first, so that the reverse renames w1 before it: LFM2-MoE's router, experts and
// expert_bias live under feed_forward too)
constexpr HfRename kLfm2Renames[] = {
    {".feed_forward.", ".mlp."},                      {".w1.", ".gate_proj."},
    {".w3.", ".up_proj."},                            {".w2.", ".down_proj."},
    {".operator_norm.", ".input_layernorm."},         {".ffn_norm.", ".post_attention_layernorm."},
    {".self_attn.out_proj.", ".self_attn.o_proj."},   {".self_attn.q_layernorm.", ".self_attn.q_norm."},
    {".self_attn.k_layernorm.", ".self_attn.k_norm."}, {".conv.in_proj.", ".linear_attn.in_proj_qkv."},
    {".conv.out_proj.", ".linear_attn.out_proj."},    {".conv.conv.", ".linear_attn.conv1d."},
    {"model.embedding_norm.", "model.norm."}};

const ModelFamily kLfm2 = [] {
  ModelFamily f{"lfm2", "Lfm2ForCausalLM", "lfm2", 0, 128000, 1000000.0f, true, false, lfm2_read, lfm2_write, lfm2_gguf};
  f.hf_renames = kLfm2Renames;
  f.gguf_layer_names = kLfm2GgufNames;
  f.gguf_output_norm = "token_embd_norm";
  f.normalize_config = lfm2_normalize;
  return f;
}();

const ModelFamily kLfm2Moe = [] {
  ModelFamily f{"lfm2_moe", "Lfm2MoeForCausalLM", "lfm2moe", 0, 128000, 1000000.0f, true, false, lfm2_moe_read,
                lfm2_moe_write, lfm2_moe_gguf};
  f.hf_renames = kLfm2Renames;
  f.gguf_layer_names = kLfm2GgufNames;
  f.gguf_layer_params = kLfm2MoeGgufParams;
  f.gguf_output_norm = "token_embd_norm";
  f.normalize_config = lfm2_moe_normalize;
  return f;
}();

}  // namespace qlora::families
