// SmolLM3 (model_type "smollm3", SmolLM3ForCausalLM: SmolLM3-3B): Llama's block with rotary
// left out on some layers (no_rope_layers, 1 = rotates; by default every fourth layer,
// no_rope_layer_interval 4, is NoPE), optional sliding windows (use_sliding_window, on the
// layer_types "sliding_attention" layers) and a tied head. GGUF both ways as llama.cpp's
// "smollm3", which permutes q/k as its llama converter does and makes every fourth layer NoPE.
#include <algorithm>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void smollm3_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  s.nope_layers = config::nope_layers(j, s.n_layers, where, /*empty_is_default=*/false);
  // Windows only with use_sliding_window and a sliding_window, on layer_types' sliding layers
  // (SmolLM3Config derives those from the NoPE layers when layer_types is absent).
  s.sliding_window = 0;
  if (!config::get_bool(j, "use_sliding_window", where, false)) return;
  const json* w = config::find_key(j, "sliding_window");
  if (!w || w->is_null()) return;
  const int64_t window = config::get_int(j, "sliding_window", where, 0);
  if (window <= 0) fail(where, "sliding_window must be positive or null, got " + std::to_string(window));
  std::vector<bool> slides(static_cast<size_t>(s.n_layers), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    slides = std::move(*lt);
  } else {
    for (int64_t l = 0; l < s.n_layers; ++l) slides[static_cast<size_t>(l)] = !s.layer_rotates(l);
  }
  if (std::find(slides.begin(), slides.end(), true) == slides.end()) return;
  s.sliding_window = window;
  s.sliding_layers = std::move(slides);
}

void smollm3_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias) fail("config.json", "smollm3 has biases on all attention Linears or none");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
  ordered_json rope = ordered_json::array(), types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) {
    rope.push_back(s.layer_rotates(l) ? 1 : 0);
    types.push_back(s.layer_slides(l) ? "sliding_attention" : "full_attention");
  }
  j["no_rope_layers"] = rope;
  j["use_sliding_window"] = s.sliding_window > 0;
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  j["layer_types"] = types;
}

void smollm3_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.nope_layers = config::every_nth_layer(hp.num_layers, 4);  // (llama.cpp's smollm3 graph: every fourth layer)
  if (std::find(s.nope_layers.begin(), s.nope_layers.end(), true) == s.nope_layers.end()) s.nope_layers.clear();
}

}  // namespace

const ModelFamily kSmolLm3{"smollm3", "SmolLM3ForCausalLM", "smollm3", 0, 32768, 2000000.0f, true, false,
                           smollm3_read, smollm3_write, smollm3_gguf};

}  // namespace qlora::families
