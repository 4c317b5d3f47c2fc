// EXAONE 4.0 (model_type "exaone4", Exaone4ForCausalLM: EXAONE-4.0-1.2B / 32B): OLMo 2's
// block shape -- no norm before the branches, RMSNorms after attention and after the MLP --
// with Qwen3's per-head q/k RMSNorm (one head_dim weight), GQA and SwiGLU; and, when the
// config has a sliding_window, windows on layer_types' "sliding_attention" layers with
// rotary on those only (the full-attention layers have no position encoding at all), as
// Exaone4Attention applies it. Without a window every layer rotates and attends to all.
#include <algorithm>
#include <cstddef>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void exaone4_block(ModelSpec& s);

void exaone4_read(const json& j, const std::string& where, ModelSpec& s) {
  exaone4_block(s);
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);
  if (config::get_bool(j, "attention_bias", where, false)) fail(where, "attention_bias is not an exaone4 option");
  s.sliding_window = j.contains("sliding_window") && !config::find_key(j, "sliding_window")
                         ? 0
                         : config::get_int(j, "sliding_window", where, 4096);
  if (s.sliding_window < 0) fail(where, "sliding_window must be positive or null");
  if (s.sliding_window == 0) return;  // (every layer full, every layer rotates)
  std::vector<bool> slides(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    slides = std::move(*lt);
  } else if (const json* p = config::find_key(j, "sliding_window_pattern"); p && p->is_number_integer()) {
    const int64_t n = p->get<int64_t>();
    if (n <= 0) fail(where, "sliding_window_pattern must be positive, got " + std::to_string(n));
    for (int64_t l = 0; l < s.n_layers; ++l) slides[static_cast<size_t>(l)] = (l + 1) % n != 0;
  } else if (p) {
    fail(where, "sliding_window_pattern " + config::shown(*p) + " without layer_types is not supported");
  } else {
    for (int64_t l = 0; l < s.n_layers; ++l) slides[static_cast<size_t>(l)] = (l + 1) % 4 != 0;
  }
  s.sliding_layers = slides;
  s.nope_layers.assign(slides.size(), false);
  for (size_t l = 0; l < slides.size(); ++l) s.nope_layers[l] = !slides[l];
}

void exaone4_block(ModelSpec& s) {
  s.sandwich_norms = true;
  s.pre_norms = false;
  s.qk_norm = true;
}

// As llama.cpp runs an exaone4 GGUF: windows only on the 64-layer model (EXAONE 4.0 32B:
// three layers of four, attention.sliding_window or 4096, rotary on those only); every other
// size attends to everything and rotates every layer (its loader reads no pattern key).
void exaone4_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  exaone4_block(s);
  if (hp.num_layers != 64) return;
  s.sliding_window = hp.sliding_window > 0 ? hp.sliding_window : 4096;
  s.sliding_layers.assign(64, false);
  s.nope_layers.assign(64, false);
  for (size_t l = 0; l < 64; ++l) {
    s.sliding_layers[l] = (l + 1) % 4 != 0;
    s.nope_layers[l] = !s.sliding_layers[l];
  }
}

void exaone4_write(const ModelSpec& s, ordered_json& j) {
  if (s.pre_norms || !s.sandwich_norms || !s.qk_norm || s.qk_norm_full || s.qkv_bias || s.o_bias || s.mlp_bias)
    fail("config.json", "not an exaone4 block");
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (s.layer_rotates(l) != (s.sliding_window == 0 || s.layer_slides(l)))
      fail("config.json", "exaone4 rotates exactly its sliding layers (or, without a window, every layer)");
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  j["layer_types"] = config::layer_types_json(s);
}

}  // namespace

// llama.cpp's exaone4 names the two norms as its olmo2 does.
constexpr GgufLayerName kExaone4GgufNames[] = {{"post_attention_norm", "post_attention_layernorm"},
                                               {"post_ffw_norm", "post_feedforward_layernorm"}};
const ModelFamily kExaone4 = [] {
  ModelFamily f{"exaone4", "Exaone4ForCausalLM", "exaone4", 0, 2048, 10000.0f, false, false, exaone4_read,
                exaone4_write, exaone4_gguf};
  f.gguf_layer_names = kExaone4GgufNames;
  return f;
}();

}  // namespace qlora::families
