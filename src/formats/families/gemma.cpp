// Gemma, Gemma 2 and Gemma 3 (text): (1 + w) RMSNorms rounded once, embeddings scaled by
// sqrt(hidden), a tanh-GELU GeGLU MLP, tied heads; Gemma 2 adds sandwich norms, soft caps,
// query_pre_attn_scalar and alternating sliding windows; Gemma 3 per-head q/k norms and a
// local rotary on its sliding layers. Gemma 4 (gemma4_text) below.
#include <cmath>
#include <optional>
#include <utility>

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

// Gemma 4 (gemma4_text; transformers' Gemma4TextConfig / Gemma4TextModel): plain-weight RMSNorms
// computed in float32 and rounded once, per-head q/k norms and a weightless v norm, scores
// unscaled, and full-attention layers of their own geometry (global_head_dim, with
// attention_k_eq_v num_global_key_value_heads and values taken from the key projection)
// rotating with the proportional rope over the whole head; each block's output times its
// layer_scalar. E2B / E4B add per-layer inputs, shared keys and values and double-wide MLPs,
// 26B-A4B an MoE block beside the dense MLP (model/model_spec.h). Bidirectional attention
// (use_bidirectional_attention "all") is refused by name.
void gemma4_read(const json& j, const std::string& where, ModelSpec& s) {
  s.mlp = MlpKind::GeGLU;
  s.embed_scale = true;
  s.norm_round_once = true;
  s.sandwich_norms = true;
  s.qk_norm = true;
  s.v_norm = true;
  s.layer_scalar = true;
  s.attn_scale = 1.0f;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.final_softcap = nullable_float(j, "final_logit_softcapping", where, 0.0f);
  if (config::find_key(j, "attn_logit_softcapping") && nullable_float(j, "attn_logit_softcapping", where, 0.0f) > 0.0f)
    fail(where, "attn_logit_softcapping is not part of Gemma 4's attention (transformers' Gemma4TextAttention has none)");
  // E2B / E4B: per-layer inputs (the class default: 256 values per layer), layers attending over
  // an earlier layer's keys and values, their MLPs twice as wide.
  s.act = Activation::GeluTanh;  // (the per-layer inputs' gate)
  s.ple_dim = config::get_int(j, "hidden_size_per_layer_input", where, 256);
  if (s.ple_dim < 0) fail(where, "hidden_size_per_layer_input must be non-negative");
  if (s.ple()) s.ple_vocab = config::get_int(j, "vocab_size_per_layer_input", where, 262144);
  s.kv_shared_layers = config::get_int(j, "num_kv_shared_layers", where, 0);
  s.double_wide_shared_mlp = config::get_bool(j, "use_double_wide_mlp", where, false) && s.kv_shared_layers > 0;
  if (config::get_bool(j, "enable_moe_block", where, false)) {  // (26B-A4B)
    s.n_experts = config::get_int(j, "num_experts", where, 0);
    s.experts_per_token = config::get_int(j, "top_k_experts", where, 0);
    s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 0);
    if (s.n_experts <= 0 || s.experts_per_token <= 0 || s.expert_ffn <= 0)
      fail(where, "enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size");
    s.norm_topk = true;
    s.moe_fused_experts = true;
    s.moe_gemma4 = true;
  }
  if (const json* b = config::find_key(j, "use_bidirectional_attention"); b && !b->is_null())
    if (!b->is_string() || b->get<std::string>() != "vision")
      fail(where, "use_bidirectional_attention " + b->dump() + ": only causal text attention (null or \"vision\") runs");
  s.sliding_window = config::get_int(j, "sliding_window", where, 512);
  s.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    s.sliding_layers = std::move(*lt);
  } else {
    for (int64_t l = 0; l < s.n_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = (l + 1) % 6 != 0;
  }
  if (s.n_layers > 0) s.sliding_layers.back() = false;  // (transformers forces the last layer to full attention)
  // Rotary: per layer type (transformers 5's rope_parameters), else the class defaults --
  // sliding layers theta 1e4, full-attention ones proportional over a quarter of the head at 1e6.
  s.rope_local = true;
  s.rope_theta_local = 10000.0f;
  if (!config::layer_type_rope(j, where, s, 1e6f, 1e4f)) {
    if (config::find_key(j, "rope_parameters") || config::find_key(j, "rope_scaling") || config::find_key(j, "rope_theta"))
      fail(where, "Gemma 4's rotary is given per layer type: rope_parameters {\"full_attention\": ..., "
                  "\"sliding_attention\": ...}");
    s.rope_theta = 1e6f;
    s.rope_scaling = RopeScaling{};
    s.rope_scaling.type = RopeScaling::Type::Proportional;
    s.rope_scaling.rotated_fraction = 0.25f;
    s.rope_scaling_local = RopeScaling{};
  }
  s.rope_local = true;
  // The full-attention layers' geometry: per_layer_config as transformers 5 saves it (layer
  // index -> head_dim / num_key_value_heads), else Gemma4TextConfig.__post_init__'s from
  // global_head_dim (class default 512) and, for attention_k_eq_v models only,
  // num_global_key_value_heads.
  s.global_k_eq_v = config::get_bool(j, "attention_k_eq_v", where, false);
  s.global_kv_heads = 0;
  const json* plc = config::find_key(j, "per_layer_config");
  if (plc && !plc->is_null()) {
    if (!plc->is_object()) fail(where, "per_layer_config must map layer indices to their overrides");
    std::optional<std::pair<int64_t, int64_t>> geo;  // (head_dim, kv heads) of every entry
    int64_t entries = 0;
    for (auto it = plc->begin(); it != plc->end(); ++it) {
      const std::string in = "per_layer_config[\"" + it.key() + "\"]";
      int64_t l = -1;
      try {
        size_t used = 0;
        l = std::stoll(it.key(), &used);
        if (used != it.key().size()) l = -1;
      } catch (const std::exception&) {
      }
      if (l < 0 || l >= s.n_layers) fail(where, in + ": not a layer index of the model's " + std::to_string(s.n_layers));
      if (s.sliding_layers[static_cast<size_t>(l)])
        fail(where, in + ": overrides on a sliding layer are not supported (Gemma 4's are on its full-attention layers)");
      if (!it.value().is_object()) fail(where, in + " must be an object");
      for (auto kv = it.value().begin(); kv != it.value().end(); ++kv)
        if (kv.key() != "head_dim" && kv.key() != "num_key_value_heads")
          fail(where, in + ": override of '" + kv.key() + "' is not supported (head_dim, num_key_value_heads)");
      const std::pair<int64_t, int64_t> g = {config::get_int(it.value(), "head_dim", where, s.head_dim),
                                             config::get_int(it.value(), "num_key_value_heads", where, s.n_kv_heads)};
      if (geo && *geo != g) fail(where, in + ": the full-attention layers must share one geometry");
      geo = g;
      ++entries;
    }
    int64_t full = 0;
    for (int64_t l = 0; l < s.n_layers; ++l) full += s.sliding_layers[static_cast<size_t>(l)] ? 0 : 1;
    if (entries != full)
      fail(where, "per_layer_config overrides " + std::to_string(entries) + " layers; the model has " +
                      std::to_string(full) + " full-attention layers, which must share one geometry");
    s.global_head_dim = geo ? geo->first : s.head_dim;
    s.global_kv_heads = geo ? geo->second : 0;
  } else {
    s.global_head_dim = config::get_int(j, "global_head_dim", where, 512);
    if (s.global_k_eq_v)  // (the key/value head override applies to the models that share them only)
      if (const json* g = config::find_key(j, "num_global_key_value_heads"); g && !g->is_null())
        s.global_kv_heads = config::get_int(j, "num_global_key_value_heads", where, 0);
  }
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

void gemma4_write(const ModelSpec& s, ordered_json& j) {
  gemma_write(s, j);
  j.erase("num_experts_per_tok");
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("hidden_act");
  j["hidden_activation"] = "gelu_pytorch_tanh";
  j["final_logit_softcapping"] = s.final_softcap > 0 ? ordered_json(s.final_softcap) : ordered_json();
  j["sliding_window"] = s.sliding_window;
  j["layer_types"] = config::layer_types_json(s);
  j["rope_parameters"] = {{"full_attention", config::rope_parameters_json(s.rope_theta, s.rope_scaling)},
                          {"sliding_attention", config::rope_parameters_json(s.rope_theta_local, s.rope_scaling_local)}};
  // (the full-attention layers' geometry as transformers 5 saves it)
  j["attention_k_eq_v"] = s.global_k_eq_v;
  ordered_json plc = ordered_json::object();
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (s.layer_global(l))
      plc[std::to_string(l)] = {{"head_dim", s.global_head_dim}, {"num_key_value_heads", s.attention_geometry(true).kv_heads}};
  j["per_layer_config"] = plc;
  j["hidden_size_per_layer_input"] = s.ple_dim;
  j["vocab_size_per_layer_input"] = s.ple() ? s.ple_vocab : s.vocab;
  j["num_kv_shared_layers"] = s.kv_shared_layers;
  j["enable_moe_block"] = s.moe();
  j["num_experts"] = s.moe() ? ordered_json(s.n_experts) : ordered_json();
  j["top_k_experts"] = s.moe() ? ordered_json(s.experts_per_token) : ordered_json();
  j["moe_intermediate_size"] = s.moe() ? ordered_json(s.expert_ffn) : ordered_json();
  j["use_double_wide_mlp"] = s.double_wide_shared_mlp;
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

// As llama.cpp runs a gemma4 GGUF (its converter: convert_hf_to_gguf.py's Gemma4Model): plain
// norms, unscaled scores, the sliding layers' geometry under the _swa keys and the full ones' under
// the plain keys, per-layer key/value heads and MLP widths as arrays, values = keys where a full
// layer has no attn_v, the proportional rope as rope_freqs (1 for each rotated pair, 1e30 for the
// others), the last shared_kv_layers layers over the keys and values of layer
// n_layer - shared - (sliding ? 2 : 1).
void gemma4_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  const std::string& where = hp.path;
  s.mlp = MlpKind::GeGLU;
  s.act = Activation::GeluTanh;
  s.embed_scale = true;
  s.norm_unit_offset = false;
  s.norm_round_once = true;
  s.sandwich_norms = true;
  s.qk_norm = true;
  s.v_norm = true;
  s.layer_scalar = hp.layer_output_scale;
  s.attn_scale = 1.0f;  // (llama.cpp's gemma4 fixes it: no metadata key)
  s.final_softcap = hp.final_softcap;
  if (hp.attn_softcap > 0.0f) fail(where, "gemma4.attn_logit_softcapping: Gemma 4's attention has no soft cap");
  if (hp.head_dim_swa <= 0) fail(where, "metadata key 'gemma4.attention.key_length_swa' missing (the sliding layers' head size)");
  if (hp.swa_layers.empty()) fail(where, "metadata key 'gemma4.attention.sliding_window_pattern' missing");
  if (hp.rope_dim != hp.head_dim || hp.rope_dim_swa != hp.head_dim_swa)
    fail(where, "gemma4.rope.dimension_count / _swa differ from the head sizes: Gemma 4 rotates whole heads (a "
                "partial rotary is rope_freqs.weight)");
  s.head_dim = hp.head_dim_swa;
  s.global_head_dim = hp.head_dim;
  s.rotary_dim = 0;
  s.sliding_window = hp.sliding_window;
  s.sliding_layers = hp.swa_layers;
  s.rope_local = true;
  s.rope_theta_local = hp.rope_theta_swa > 0.0f ? hp.rope_theta_swa : hp.rope_theta;  // (llama.cpp's fallback)
  s.rope_scaling_local = RopeScaling{};
  // Key/value heads: one value, or one per layer that must be one value per layer type.
  const int64_t L = hp.num_layers;
  std::optional<int64_t> kv_slide, kv_full;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t kv = hp.kv_heads_per_layer.empty() ? hp.num_kv_heads : hp.kv_heads_per_layer[static_cast<size_t>(l)];
    std::optional<int64_t>& t = hp.swa_layers[static_cast<size_t>(l)] ? kv_slide : kv_full;
    if (t && *t != kv)
      fail(where, "gemma4.attention.head_count_kv gives layers of one type different key/value heads (layer " +
                      std::to_string(l) + "): not a Gemma 4 form");
    t = kv;
  }
  s.n_kv_heads = kv_slide.value_or(hp.num_kv_heads);
  s.global_kv_heads = kv_full && *kv_full != s.n_kv_heads ? *kv_full : 0;
  // Values = keys: the full layers with keys of their own and no attn_v.
  s.kv_shared_layers = hp.shared_kv_layers;
  std::optional<bool> k_eq_v;
  for (int64_t l = 0; l < L - s.kv_shared_layers; ++l) {
    const bool absent = l < static_cast<int64_t>(hp.attn_v_absent.size()) && hp.attn_v_absent[static_cast<size_t>(l)];
    if (hp.swa_layers[static_cast<size_t>(l)]) {
      if (absent) fail(where, "sliding layer " + std::to_string(l) + " has attn_k but no attn_v (only Gemma 4's full "
                              "layers take their values from the keys)");
    } else {
      if (k_eq_v && *k_eq_v != absent)
        fail(where, "some full-attention layers have attn_v and others not (layer " + std::to_string(l) + ")");
      k_eq_v = absent;
    }
  }
  s.global_k_eq_v = k_eq_v.value_or(false);
  // llama.cpp's shared layers read layer n_kv_from_start - 2 (sliding) or - 1 (full): the last
  // two layers with their own keys and values must be a sliding one then a full one, which makes
  // that the last earlier layer of each type (transformers' rule, ModelSpec::kv_source).
  if (s.kv_shared_layers > 0) {
    const int64_t n = L - s.kv_shared_layers;
    if (n < 2 || !hp.swa_layers[static_cast<size_t>(n - 2)] || hp.swa_layers[static_cast<size_t>(n - 1)])
      fail(where, "gemma4.attention.shared_kv_layers: the last two layers with their own keys and values are not a "
                  "sliding then a full-attention layer, which llama.cpp's layer sharing assumes");
  }
  // MLP widths: one, or the double-wide MLPs of the shared layers.
  if (!hp.ffn_per_layer.empty()) {
    const int64_t base = hp.ffn_per_layer[0];
    for (int64_t l = 0; l < L; ++l)
      if (hp.ffn_per_layer[static_cast<size_t>(l)] != (l >= L - s.kv_shared_layers ? 2 * base : base))
        fail(where, "gemma4.feed_forward_length per layer is not one width with the shared layers' twice as wide "
                    "(layer " + std::to_string(l) + ")");
    s.ffn = base;
    s.double_wide_shared_mlp = true;
  }
  s.ple_dim = hp.per_layer_input_dim;
  s.ple_vocab = s.ple() ? hp.vocab_size : 0;  // (llama.cpp reads per_layer_token_embd over the vocabulary)
  // The full layers' rotary: rope_freqs.weight (read as factors) is the proportional rope's
  // rotated pairs (1) and the others (1e30, no rotation).
  RopeScaling& rs = s.rope_scaling;
  if (rs.type == RopeScaling::Type::Factors) {
    int64_t n_rot = 0;
    const std::vector<float> f = rs.freq_factors;  // (a copy: rs is reset below)
    while (n_rot < static_cast<int64_t>(f.size()) && f[static_cast<size_t>(n_rot)] == 1.0f) ++n_rot;
    for (size_t i = static_cast<size_t>(n_rot); i < f.size(); ++i)
      if (!(f[i] >= 1e20f))
        fail(where, "rope_freqs.weight is not Gemma 4's proportional rope (1 for each rotated pair, then 1e30): value " +
                        std::to_string(f[i]) + " at " + std::to_string(i));
    rs = RopeScaling{};
    if (n_rot < static_cast<int64_t>(f.size())) {
      rs.type = RopeScaling::Type::Proportional;
      // (the fraction whose int(fraction * dims / 2) is n_rot, as ops.cpp rounds it)
      float frac = static_cast<float>(2.0 * static_cast<double>(n_rot) / static_cast<double>(hp.head_dim));
      while (std::floor(static_cast<double>(frac) * static_cast<double>(hp.head_dim) / 2.0) < static_cast<double>(n_rot))
        frac = std::nextafter(frac, 1.0f);
      rs.rotated_fraction = frac;
    }
  } else if (rs.type != RopeScaling::Type::None) {
    fail(where, "gemma4 with rope scaling metadata: Gemma 4's full layers rotate by rope_freqs.weight only");
  }
  if (s.moe()) {
    s.norm_topk = true;
    s.moe_fused_experts = true;
    s.moe_gemma4 = true;
  }
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

// Gemma 4's MoE parts as the canonical MoE names (its files': layers.N.router.proj, layers.N.experts.*).
constexpr HfRename kGemma4Renames[] = {{".router.proj.", ".mlp.gate."}, {".experts.", ".mlp.experts."}};
// llama.cpp's gemma4 names (convert_hf_to_gguf.py's Gemma4Model; gguf-py 0.19's tensor_mapping):
// Gemma 2/3's norms, the MoE block's, the per-layer input branch's.
constexpr GgufLayerName kGemma4GgufNames[] = {{"ffn_norm", "pre_feedforward_layernorm"},
                                              {"post_attention_norm", "post_attention_layernorm"},
                                              {"post_ffw_norm", "post_feedforward_layernorm"},
                                              {"pre_ffw_norm_2", "pre_feedforward_layernorm_2"},
                                              {"post_ffw_norm_1", "post_feedforward_layernorm_1"},
                                              {"post_ffw_norm_2", "post_feedforward_layernorm_2"},
                                              {"inp_gate", "per_layer_input_gate"},
                                              {"proj", "per_layer_projection"},
                                              {"post_norm", "post_per_layer_input_norm"}};
// ... and those without a .weight on both sides: layer_scalar (one value), the router's scales,
// the fused experts as transformers holds them ((E, 2F, C) gate rows first; (E, C, F)).
constexpr GgufLayerName kGemma4GgufParams[] = {{"layer_output_scale.weight", "layer_scalar"},
                                               {"ffn_gate_inp.scale", "router.scale"},
                                               {"ffn_down_exps.scale", "router.per_expert_scale"},
                                               {"ffn_gate_up_exps.weight", "mlp.experts.gate_up_proj"},
                                               {"ffn_down_exps.weight", "mlp.experts.down_proj"}};
const ModelFamily kGemma4Text = [] {
  ModelFamily f{"gemma4_text", "Gemma4ForCausalLM", "gemma4", 256, 131072, 1000000.0f, true, true,
                gemma4_read, gemma4_write, gemma4_gguf};
  f.hf_renames = kGemma4Renames;
  f.gguf_layer_names = kGemma4GgufNames;
  f.gguf_layer_params = kGemma4GgufParams;
  return f;
}();

}  // namespace qlora::families
