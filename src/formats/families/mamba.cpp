// Mamba2 (model_type "mamba2", Mamba2ForCausalLM: Mamba-Codestral-7B, the state-spaces mamba2
// models in Hugging Face form): every layer an RMSNorm, then Granite 4.0-H's Mamba2 mixer
// (model/mamba2.h; ModelSpec::la_mamba2), then the residual add -- no attention and no MLP
// (ModelSpec::no_mlp); the final norm norm_f; embeddings under backbone.embeddings. Its config
// spells the mixer's sizes num_heads / head_dim / state_size / n_groups / conv_kernel / expand /
// use_conv_bias / use_bias (read as the mamba_* keys of the hybrids) and has no attention:
// the attention sizes are placeholders nothing uses. residual_in_fp32 (the config's default) keeps
// the residual adds unrounded in bf16 / fp16 (ModelSpec::residual_fp32). Its rms_norm key, which
// transformers 5's Mamba2Config no longer has, is ignored as transformers ignores it: the gated
// norm always runs. GGUF both ways as llama.cpp's mamba2 (head_count and feed_forward_length 0).
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

void mamba2_normalize(json& j) {
  // (the mixer's keys under the hybrids' names; Mamba2Config's defaults where absent)
  const std::pair<const char*, const char*> keys[] = {{"num_heads", "mamba_n_heads"},   {"head_dim", "mamba_d_head"},
                                                      {"state_size", "mamba_d_state"}, {"n_groups", "mamba_n_groups"},
                                                      {"conv_kernel", "mamba_d_conv"}, {"expand", "mamba_expand"},
                                                      {"use_conv_bias", "mamba_conv_bias"}, {"use_bias", "mamba_proj_bias"}};
  const json defaults[] = {128, 64, 128, 8, 4, 2, true, false};
  if (!j.contains("hidden_size")) j["hidden_size"] = 4096;
  for (size_t i = 0; i < std::size(keys); ++i) {
    j[keys[i].second] = j.contains(keys[i].first) ? j[keys[i].first] : defaults[i];
    j.erase(keys[i].first);
  }
  // (no attention: one placeholder head of the hidden size; no MLP: a placeholder width)
  j["num_attention_heads"] = 1;
  j["num_key_value_heads"] = 1;
  if (j.contains("hidden_size")) j["head_dim"] = j["hidden_size"];
  if (j.contains("hidden_size")) j["intermediate_size"] = j["hidden_size"];
  j["rms_norm_eps"] = j.contains("layer_norm_epsilon") ? j["layer_norm_epsilon"] : json(1e-5);
  if (!j.contains("vocab_size")) j["vocab_size"] = 32768;
  if (!j.contains("num_hidden_layers")) j["num_hidden_layers"] = 64;
}

void mamba2_read(const json& j, const std::string& where, ModelSpec& s) {
  s.residual_fp32 = config::get_bool(j, "residual_in_fp32", where, true);
  s.no_mlp = true;
  read_mamba2_keys(j, where, s, std::vector<bool>(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true));
  if (!s.la_mamba2) fail(where, "a Mamba2 model needs at least one layer");
}

void mamba2_write(const ModelSpec& s, ordered_json& j) {
  if (!s.no_mlp || !s.la_mamba2 || s.moe()) fail("config.json", "not a mamba2 model");
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (!s.layer_is_linear_attn(l)) fail("config.json", "a mamba2 model has Mamba layers only");
  ordered_json m;
  write_mamba2_keys(s, m);
  j["num_heads"] = m["mamba_n_heads"];
  j["head_dim"] = m["mamba_d_head"];
  j["state_size"] = m["mamba_d_state"];
  j["n_groups"] = m["mamba_n_groups"];
  j["conv_kernel"] = m["mamba_d_conv"];
  j["expand"] = m["mamba_expand"];
  j["use_conv_bias"] = m["mamba_conv_bias"];
  j["use_bias"] = m["mamba_proj_bias"];
  if (m.contains("time_step_limit")) j["time_step_limit"] = m["time_step_limit"];
  j["layer_norm_epsilon"] = j["rms_norm_eps"];
  j["residual_in_fp32"] = s.residual_fp32;
  for (const char* k : {"num_attention_heads", "num_key_value_heads", "intermediate_size", "rms_norm_eps",
                        "max_position_embeddings", "rope_theta", "hidden_act"})
    j.erase(k);
}

// As llama.cpp runs a mamba2 GGUF (its converter's Mamba2Model): every layer a Mamba2 mixer with the
// conv's bias (its loader requires it), sized by the ssm.* keys, no attention and no MLP;
// residual_in_fp32 as Mamba2Config's default (the GGUF does not say; it matters in bf16 / fp16 only).
void mamba2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.no_mlp = true;
  s.residual_fp32 = true;
  read_mamba2_gguf(hp, s, /*conv_bias=*/true);
}

}  // namespace

// Its files: backbone.* for model.*, the embeddings, norm_f, each layer's norm and mixer (the mixer's
// own gated norm kept apart from the layer's through a temporary name; see model_family.h for the
// order the renames run in either direction).
constexpr HfRename kMamba2Renames[] = {{"backbone.embeddings.", "model.embed_tokens."},
                                       {"backbone.layers.", "model.layers."},
                                       {".mixer.norm.", ".mixer.gated_norm."},
                                       {".norm.", ".input_layernorm."},
                                       {"backbone.norm_f.", "model.norm."},
                                       {".mixer.gated_norm.", ".linear_attn.norm."},
                                       {".mixer.", ".linear_attn."},
                                       {".linear_attn.in_proj.", ".linear_attn.in_proj_qkv."}};

const ModelFamily kMamba2 = [] {
  ModelFamily f{"mamba2", "Mamba2ForCausalLM", "mamba2", 0, int64_t{1} << 20, 10000.0f, false, false, mamba2_read,
                mamba2_write, mamba2_gguf};
  f.hf_renames = kMamba2Renames;
  f.normalize_config = mamba2_normalize;
  f.gguf_layer_names = kMamba2GgufNames;
  f.gguf_layer_params = kMamba2GgufParams;
  f.peft_refuses_out_proj = true;
  return f;
}();

}  // namespace qlora::families
