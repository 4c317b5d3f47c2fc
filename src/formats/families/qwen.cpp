// Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm, head_dim of its own);
// both with sliding windows on the layers their config says.
#include <algorithm>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// Qwen's per-layer sliding windows, as transformers' Qwen2Config / Qwen3Config read them:
// only with use_sliding_window is there a window (sliding_window, else none at all); the
// layers that slide are layer_types' "sliding_attention" ones or, without layer_types,
// those from max_window_layers on.
void qwen_sliding(const json& j, const std::string& where, ModelSpec& s) {
  s.sliding_window = 0;
  s.sliding_layers.clear();
  if (!config::get_bool(j, "use_sliding_window", where, false)) return;
  if (j.contains("sliding_window") && !config::find_key(j, "sliding_window")) return;  // null: no window
  const int64_t window = config::get_int(j, "sliding_window", where, 4096);
  if (window <= 0) fail(where, "sliding_window must be positive or null, got " + std::to_string(window));
  std::vector<bool> slides(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    slides = std::move(*lt);
  } else {
    const int64_t from = config::get_int(j, "max_window_layers", where, 28);
    for (int64_t l = std::max<int64_t>(from, 0); l < s.n_layers; ++l) slides[static_cast<size_t>(l)] = true;
  }
  if (std::find(slides.begin(), slides.end(), true) == slides.end()) return;
  s.sliding_window = window;
  s.sliding_layers = std::move(slides);
}

// The inverse: use_sliding_window, sliding_window and layer_types (transformers 4.53+ and 5
// read layer_types; max_window_layers is written too when the sliding layers are a suffix,
// for older versions).
void qwen_write_sliding(const ModelSpec& s, ordered_json& j) {
  const bool any = s.sliding_window > 0;
  j["use_sliding_window"] = any;
  j["sliding_window"] = any ? ordered_json(s.sliding_window) : ordered_json();
  if (!any) return;
  ordered_json types = ordered_json::array();
  int64_t first = s.n_layers;
  bool suffix = true;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const bool sl = s.layer_slides(l);
    types.push_back(sl ? "sliding_attention" : "full_attention");
    if (sl && first == s.n_layers) first = l;
    if (!sl && first < s.n_layers) suffix = false;
  }
  j["layer_types"] = types;
  if (suffix) j["max_window_layers"] = first;
}

void qwen2_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = true;
  qwen_sliding(j, where, s);
}

void qwen2_write(const ModelSpec& s, ordered_json& j) {
  if (!s.qkv_bias) fail("config.json", "qwen2 always has q/k/v biases; this model has none");
  if (s.o_bias || s.mlp_bias) fail("config.json", "qwen2 has no config.json switch for o_proj or MLP biases");
  qwen_write_sliding(s, j);
}

void qwen3_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qk_norm = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  qwen_sliding(j, where, s);
}

void qwen3_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias)
    fail("config.json", "a qwen3 model with biases on q/k/v but not o (or the reverse) has no config.json form");
  if (s.mlp_bias) fail("config.json", "qwen3 has no config.json switch for MLP biases");
  j["attention_bias"] = s.qkv_bias;
  qwen_write_sliding(s, j);
}

void qwen3_gguf(const GgufLlamaHParams&, ModelSpec& s) { s.qk_norm = true; }

}  // namespace

const ModelFamily kQwen2{"qwen2", "Qwen2ForCausalLM", "qwen2", 0, 32768, 10000.0f, false, false,
                         qwen2_read, qwen2_write, nullptr};
// Qwen3Config's head_dim defaults to 128 whatever the hidden size.
const ModelFamily kQwen3{"qwen3", "Qwen3ForCausalLM", "qwen3", 128, 32768, 10000.0f, false, false,
                         qwen3_read, qwen3_write, qwen3_gguf};

}  // namespace qlora::families
