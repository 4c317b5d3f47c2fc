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
  if (j.contains("block_ff_dim")) j["intermediate_size"] = j["block_ff_dim"];
  if (!j.contains("intermediate_size")) j["intermediate_size"] = 12288;
  if (j.contains("tie_embedding")) j["tie_word_embeddings"] = j["tie_embedding"];
  j["rms_norm_eps"] = j.contains("norm_eps") ? j["norm_eps"] : json(1e-5);
}

void lfm2_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qk_norm = true;
  s.la_short_conv = true;
  if (config::get_bool(j, "conv_bias", where, false))
    fail(where, "conv_bias: true (biases on the short convolutions and their projections) is not supported; the "
                "released LFM2 models have none");
  s.la_conv_kernel = config::get_int(j, "conv_L_cache", where, 3);
  // The MLP's width (Lfm2MLP): 2/3 of intermediate_size, times block_ffn_dim_multiplier and
  // rounded up to block_multiple_of when the multiplier is set.
  if (config::get_bool(j, "block_auto_adjust_ff_dim", where, true)) {
    int64_t f = static_cast<int64_t>(2.0 * static_cast<double>(s.ffn) / 3.0);
    // (absent: Lfm2Config's 1.0; null: no multiplier and no rounding)
    const auto m = j.find("block_ffn_dim_multiplier");
    if (m == j.end() || !m->is_null()) {
      const double mult = config::get_float(j, "block_ffn_dim_multiplier", where, 1.0f);
      const int64_t multiple = config::get_int(j, "block_multiple_of", where, 256);
      if (multiple <= 0) fail(where, "block_multiple_of must be positive, got " + std::to_string(multiple));
      f = static_cast<int64_t>(mult * static_cast<double>(f));
      f = multiple * ((f + multiple - 1) / multiple);
    }
    s.ffn = f;
  }
  // layer_types, or full_attn_idxs (absent: every layer attends, as Lfm2Config's default).
  std::vector<bool> conv(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (const json* lt = config::find_key(j, "layer_types"); lt && !lt->is_null()) {
    if (!lt->is_array() || static_cast<int64_t>(lt->size()) != s.n_layers)
      fail(where, "layer_types must list one type per layer (" + std::to_string(s.n_layers) + ")");
    for (size_t l = 0; l < lt->size(); ++l) {
      const json& t = (*lt)[l];
      const std::string v = t.is_string() ? t.get<std::string>() : std::string();
      if (v != "conv" && v != "full_attention")
        fail(where, "layer_types[" + std::to_string(l) + "] is " + t.dump() + "; LFM2 layers are \"conv\" or \"full_attention\"");
      conv[l] = v == "conv";
    }
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

void lfm2_write(const ModelSpec& s, ordered_json& j) {
  if (!s.la_short_conv || !s.qk_norm || s.qkv_bias || s.o_bias || s.mlp_bias || s.sliding_window > 0 ||
      s.norm_unit_offset || s.mlp != MlpKind::SwiGLU)
    fail("config.json", "not an lfm2 block");
  // (the MLP's width as it is: no adjustment)
  j["block_auto_adjust_ff_dim"] = false;
  j["norm_eps"] = j["rms_norm_eps"];
  j.erase("rms_norm_eps");
  j.erase("hidden_act");
  j["conv_bias"] = false;
  j["conv_L_cache"] = s.la_conv_kernel;
  ordered_json types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) types.push_back(s.layer_is_linear_attn(l) ? "conv" : "full_attention");
  j["layer_types"] = types;
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

}  // namespace

// llama.cpp's names of the short conv's tensors (its converter's tensor map).
constexpr GgufLayerName kLfm2GgufNames[] = {{"shortconv.conv", "linear_attn.conv1d"},
                                           {"shortconv.in_proj", "linear_attn.in_proj_qkv"},
                                           {"shortconv.out_proj", "linear_attn.out_proj"}};

// Its checkpoint / PEFT names, to the canonical ones (the short conv in the DeltaNet's slots).
constexpr HfRename kLfm2Renames[] = {
    {".operator_norm.", ".input_layernorm."},         {".ffn_norm.", ".post_attention_layernorm."},
    {".self_attn.out_proj.", ".self_attn.o_proj."},   {".self_attn.q_layernorm.", ".self_attn.q_norm."},
    {".self_attn.k_layernorm.", ".self_attn.k_norm."}, {".feed_forward.w1.", ".mlp.gate_proj."},
    {".feed_forward.w3.", ".mlp.up_proj."},           {".feed_forward.w2.", ".mlp.down_proj."},
    {".conv.in_proj.", ".linear_attn.in_proj_qkv."},  {".conv.out_proj.", ".linear_attn.out_proj."},
    {".conv.conv.", ".linear_attn.conv1d."},          {"model.embedding_norm.", "model.norm."}};

const ModelFamily kLfm2 = [] {
  ModelFamily f{"lfm2", "Lfm2ForCausalLM", "lfm2", 0, 128000, 1000000.0f, true, false, lfm2_read, lfm2_write, lfm2_gguf};
  f.hf_renames = kLfm2Renames;
  f.gguf_layer_names = kLfm2GgufNames;
  f.gguf_output_norm = "token_embd_norm";
  f.normalize_config = lfm2_normalize;
  return f;
}();

}  // namespace qlora::families
