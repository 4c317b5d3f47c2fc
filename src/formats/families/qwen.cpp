// Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm, head_dim of its own).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// Qwen turns sliding windows on per layer (use_sliding_window, max_window_layers,
// layer_types), which is not implemented: refuse rather than run a different model.
void refuse_sliding(const json& j, const std::string& where) {
  bool sliding = config::get_bool(j, "use_sliding_window", where, false);
  if (const json* lt = config::find_key(j, "layer_types"); lt && lt->is_array())
    for (const json& t : *lt) sliding = sliding || (t.is_string() && t.get<std::string>() == "sliding_attention");
  if (sliding) fail(where, "per-layer sliding-window attention (use_sliding_window / layer_types) is not supported yet");
}

void qwen2_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = true;
  refuse_sliding(j, where);
}

void qwen2_write(const ModelSpec& s, ordered_json&) {
  if (!s.qkv_bias) fail("config.json", "qwen2 always has q/k/v biases; this model has none");
  if (s.o_bias || s.mlp_bias) fail("config.json", "qwen2 has no config.json switch for o_proj or MLP biases");
}

void qwen3_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qk_norm = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  refuse_sliding(j, where);
}

void qwen3_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias)
    fail("config.json", "a qwen3 model with biases on q/k/v but not o (or the reverse) has no config.json form");
  if (s.mlp_bias) fail("config.json", "qwen3 has no config.json switch for MLP biases");
  j["attention_bias"] = s.qkv_bias;
}

void qwen3_gguf(const GgufLlamaHParams&, ModelSpec& s) { s.qk_norm = true; }

}  // namespace

const ModelFamily kQwen2{"qwen2", "Qwen2ForCausalLM", "qwen2", 0, 32768, 10000.0f, false, false,
                         qwen2_read, qwen2_write, nullptr};
// Qwen3Config's head_dim defaults to 128 whatever the hidden size.
const ModelFamily kQwen3{"qwen3", "Qwen3ForCausalLM", "qwen3", 128, 32768, 10000.0f, false, false,
                         qwen3_read, qwen3_write, qwen3_gguf};

}  // namespace qlora::families
