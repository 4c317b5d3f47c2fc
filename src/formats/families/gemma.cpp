// Gemma, Gemma 2 and Gemma 3 (text): (1 + w) RMSNorms rounded once, embeddings scaled by
// sqrt(hidden), a tanh-GELU GeGLU MLP, tied heads; Gemma 2 adds sandwich norms, soft caps,
// query_pre_attn_scalar and alternating sliding windows; Gemma 3 per-head q/k norms and a
// local rotary on its sliding layers.
#include <cmath>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void gemma_read(const json& j, const std::string& where, ModelSpec& s) {
  s.mlp = MlpKind::GeGLU;
  s.norm_unit_offset = s.embed_scale = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
}

// A key whose class default applies when absent and which JSON null turns off.
float nullable_float(const json& j, const char* key, const std::string& where, float dflt) {
  if (!j.contains(key)) return dflt;
  return config::find_key(j, key) ? config::get_float(j, key, where, dflt) : 0.0f;
}

// Gemma 2 and 3: sandwich norms, the score scale, soft caps, the window and which layers
// slide (layer_types, else every `pattern`-th layer is global).
void gemma23_read(const json& j, const std::string& where, ModelSpec& s, float caps, int64_t pattern) {
  gemma_read(j, where, s);
  s.sandwich_norms = true;
  const float qpas = config::get_float(j, "query_pre_attn_scalar", where, 256.0f);
  if (!(qpas > 0.0f)) fail(where, "query_pre_attn_scalar must be positive");
  s.attn_scale = static_cast<float>(std::pow(static_cast<double>(qpas), -0.5));
  s.attn_softcap = nullable_float(j, "attn_logit_softcapping", where, 50.0f * caps);
  s.final_softcap = nullable_float(j, "final_logit_softcapping", where, 30.0f * caps);
  s.sliding_window = j.contains("sliding_window") && !config::find_key(j, "sliding_window")
                         ? 0
                         : config::get_int(j, "sliding_window", where, 4096);
  if (pattern <= 0) fail(where, "sliding_window_pattern must be positive");
  s.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    s.sliding_layers = std::move(*lt);
  } else {
    for (int64_t l = 0; l < s.n_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = (l + 1) % pattern != 0;
  }
}

void gemma2_read(const json& j, const std::string& where, ModelSpec& s) { gemma23_read(j, where, s, 1.0f, 2); }

// Gemma 3: two rotaries. The full-attention layers rotate with rope_theta (and its scaling),
// the sliding ones with rope_local_base_freq; transformers 5 writes both as rope_parameters
// keyed by layer type (the generic reader leaves that form to this function).
void gemma3_read(const json& j, const std::string& where, ModelSpec& s) {
  gemma23_read(j, where, s, 0.0f, config::get_int(j, "sliding_window_pattern", where, 6));
  s.qk_norm = true;
  s.rope_local = true;
  s.rope_theta_local = config::get_float(j, "rope_local_base_freq", where, 10000.0f);
  config::layer_type_rope(j, where, s, 1e6f, 1e4f);
}

void gemma_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias)
    fail("config.json", "a " + s.family + " model with biases on q/k/v but not o (or the reverse) has no config.json form");
  if (s.mlp_bias) fail("config.json", s.family + " has no config.json switch for MLP biases");
  j["attention_bias"] = s.qkv_bias;
}

void gemma23_write(const ModelSpec& s, ordered_json& j) {
  gemma_write(s, j);
  // query_pre_attn_scalar from the scale it gives (scale = qpas^-0.5), rounded back to the
  // integer configs hold.
  j["query_pre_attn_scalar"] = std::lround(1.0 / (static_cast<double>(s.attn_scale) * s.attn_scale));
  j["attn_logit_softcapping"] = s.attn_softcap > 0 ? ordered_json(s.attn_softcap) : ordered_json();
  j["final_logit_softcapping"] = s.final_softcap > 0 ? ordered_json(s.final_softcap) : ordered_json();
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  j["layer_types"] = config::layer_types_json(s);
}

void gemma3_write(const ModelSpec& s, ordered_json& j) {
  gemma23_write(s, j);
  // transformers 5's form: one rotary per layer type.
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"full_attention", config::rope_parameters_json(s.rope_theta, s.rope_scaling)},
                          {"sliding_attention", config::rope_parameters_json(s.rope_theta_local, s.rope_scaling_local)}};
}

void gemma_gguf(const GgufLlamaHParams&, ModelSpec& s) {
  s.mlp = MlpKind::GeGLU;
  s.norm_unit_offset = s.embed_scale = true;
}

// As llama.cpp runs a Gemma 2 GGUF: windows on even layers, the caps from the metadata, and
// the score scale 1/sqrt(head_dim) except Gemma 2 27B's 1/sqrt(hidden / heads) (a GGUF does
// not carry query_pre_attn_scalar; llama.cpp keys it on the 46-layer model type).
void gemma2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  gemma_gguf(hp, s);
  s.sandwich_norms = true;
  s.attn_softcap = hp.attn_softcap;
  s.final_softcap = hp.final_softcap;
  s.sliding_window = hp.sliding_window;
  s.sliding_layers.assign(static_cast<size_t>(hp.num_layers), false);
  for (int64_t l = 0; l < hp.num_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = l % 2 == 0;
  if (hp.num_layers == 46) s.attn_scale = 1.0f / std::sqrt(static_cast<float>(hp.hidden_size / hp.num_heads));
}

// As llama.cpp runs a Gemma 3 GGUF: the sliding layers from the pattern key (else every
// sixth layer global), their own rotary base (rope.freq_base_swa, else 10000) unscaled,
// per-head norms, no caps, and the 27B's (62 layers) score scale 1/sqrt(hidden / heads).
void gemma3_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  gemma_gguf(hp, s);
  s.sandwich_norms = true;
  s.qk_norm = true;
  s.sliding_window = hp.sliding_window;
  s.sliding_layers = hp.swa_layers;
  if (s.sliding_layers.empty())
    for (int64_t l = 0; l < hp.num_layers; ++l) s.sliding_layers.push_back(l % 6 < 5);
  s.rope_local = true;
  s.rope_theta_local = hp.rope_theta_swa > 0 ? hp.rope_theta_swa : 10000.0f;
  if (hp.num_layers == 62) s.attn_scale = 1.0f / std::sqrt(static_cast<float>(hp.hidden_size / hp.num_heads));
}

}  // namespace

const ModelFamily kGemma{"gemma", "GemmaForCausalLM", "gemma", 256, 8192, 10000.0f, true, true,
                         gemma_read, gemma_write, gemma_gguf};
// llama.cpp's Gemma 2/3 norms, where they differ from the shared names: its ffn_norm is the
// MLP's input norm (pre_feedforward_layernorm), post_attention_norm and post_ffw_norm the
// branch-output norms.
constexpr GgufLayerName kGemma23GgufNames[] = {{"ffn_norm", "pre_feedforward_layernorm"},
                                               {"post_attention_norm", "post_attention_layernorm"},
                                               {"post_ffw_norm", "post_feedforward_layernorm"}};
// (built in a lambda: the names come after fields these families leave at their defaults)
const ModelFamily kGemma2 = [] {
  ModelFamily f{"gemma2", "Gemma2ForCausalLM", "gemma2", 256, 8192, 10000.0f, true, true,
                gemma2_read, gemma23_write, gemma2_gguf};
  f.gguf_layer_names = kGemma23GgufNames;
  return f;
}();
const ModelFamily kGemma3Text = [] {
  ModelFamily f{"gemma3_text", "Gemma3ForCausalLM", "gemma3", 256, 8192, 1000000.0f, true, true,
                gemma3_read, gemma3_write, gemma3_gguf};
  f.gguf_layer_names = kGemma23GgufNames;
  return f;
}();

}  // namespace qlora::families
