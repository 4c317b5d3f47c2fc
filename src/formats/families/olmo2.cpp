// OLMo 2 (model_type "olmo2", Olmo2ForCausalLM: OLMo-2 1B / 7B / 13B / 32B and their
// instruct models): Llama's attention and SwiGLU MLP with the norms moved after the
// branches -- x + post_attention_layernorm(attn(x)), then x + post_feedforward_layernorm(mlp(x)),
// no norm before either -- RMSNorms over all of q and all of k (q_norm of q_dim values,
// k_norm of kv_dim) before rotary, and RMSNorms that round once (weight * (x rstd) in
// float32). GGUF both ways as llama.cpp's "olmo2".
#include <algorithm>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void olmo2_block(ModelSpec& s) {
  s.sandwich_norms = true;
  s.pre_norms = false;
  s.qk_norm = s.qk_norm_full = true;
  s.norm_round_once = true;
}

void olmo2_read(const json& j, const std::string& where, ModelSpec& s) {
  olmo2_block(s);
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  if (const json* c = config::find_key(j, "clip_qkv"); c && !c->is_null())
    fail(where, "clip_qkv is not supported for olmo2 (no released OLMo 2 sets it)");
}

void olmo2_write(const ModelSpec& s, ordered_json& j) {
  if (s.pre_norms || !s.sandwich_norms || !s.qk_norm_full || s.mlp_bias || s.qkv_bias != s.o_bias)
    fail("config.json", "not an olmo2 block");
  j["attention_bias"] = s.qkv_bias;
}

// llama.cpp's olmo2 graph runs OLMo 3 too: with attention.sliding_window, the layers of
// sliding_window_pattern (default: three of four) slide and rotate unscaled; the others take
// the file's rope scaling. Both with rope.freq_base: llama.cpp 0.3.36 reads
// rope.freq_base_swa for olmo2 but its graph does not use it (measured: a fixture whose
// sliding layers had another base differed by 0.88 in llama.cpp, 6e-6 with one base), and
// OLMo 3's releases have one base anyway.
void olmo2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  olmo2_block(s);
  if (hp.sliding_window <= 0) return;
  s.family = "olmo3";
  s.sliding_window = hp.sliding_window;
  if (!hp.swa_layers.empty()) {
    s.sliding_layers = hp.swa_layers;
  } else {
    s.sliding_layers.assign(static_cast<size_t>(hp.num_layers), false);
    for (int64_t l = 0; l < hp.num_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = l % 4 < 3;
  }
  s.rope_local = true;
  s.rope_theta_local = hp.rope_theta;
  s.rope_scaling_local = RopeScaling{};
}

// OLMo 3: OLMo 2's block with sliding windows on layer_types' "sliding_attention" layers (by
// default three of every four) and a rotary per layer type, as Olmo3Config reads them:
// rope_parameters keyed by layer type, or the older top-level rope_theta / rope_scaling,
// which go to the full-attention layers only while the sliding ones keep rope_theta 500000
// (Olmo3Config pops rope_theta once for both: measured on transformers 5.23).
void olmo3_read(const json& j, const std::string& where, ModelSpec& s) {
  olmo2_read(j, where, s);
  s.sliding_window = j.contains("sliding_window") && !config::find_key(j, "sliding_window")
                         ? 0
                         : config::get_int(j, "sliding_window", where, 4096);
  if (s.sliding_window < 0) fail(where, "sliding_window must be positive or null");
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    s.sliding_layers = std::move(*lt);
  } else {
    s.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
    for (int64_t l = 0; l < s.n_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = (l + 1) % 4 != 0;
  }
  if (!config::layer_type_rope(j, where, s, 500000.0f, 500000.0f)) {
    s.rope_local = true;  // (the generic reader put the top-level keys in rope_theta / rope_scaling)
    s.rope_theta_local = 500000.0f;
    s.rope_scaling_local = RopeScaling{};
  }
}

void olmo3_write(const ModelSpec& s, ordered_json& j) {
  olmo2_write(s, j);
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  j["layer_types"] = config::layer_types_json(s);
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {
      {"full_attention", config::rope_parameters_json(s.rope_theta, s.rope_scaling)},
      {"sliding_attention", config::rope_parameters_json(s.rope_local ? s.rope_theta_local : s.rope_theta,
                                                         s.rope_local ? s.rope_scaling_local : s.rope_scaling)}};
}

}  // namespace

// llama.cpp's olmo2 names the two norms post_attention_norm and post_ffw_norm.
constexpr GgufLayerName kOlmo2GgufNames[] = {{"post_attention_norm", "post_attention_layernorm"},
                                             {"post_ffw_norm", "post_feedforward_layernorm"}};
const ModelFamily kOlmo2 = [] {
  ModelFamily f{"olmo2", "Olmo2ForCausalLM", "olmo2", 0, 2048, 10000.0f, false, false, olmo2_read, olmo2_write,
                olmo2_gguf};
  f.gguf_layer_names = kOlmo2GgufNames;
  return f;
}();
// (its GGUFs are llama.cpp's olmo2 with a window: read by the olmo2 entry, written as olmo2)
const ModelFamily kOlmo3 = [] {
  ModelFamily f{"olmo3", "Olmo3ForCausalLM", "", 0, 2048, 500000.0f, false, false, olmo3_read, olmo3_write,
                nullptr, "olmo2"};
  f.gguf_layer_names = kOlmo2GgufNames;
  return f;
}();

}  // namespace qlora::families
