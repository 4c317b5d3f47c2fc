// Phi-3 / Phi-3.5 / Phi-4-mini (model_type "phi3"): Llama's block with q, k, v fused into one
// Linear (self_attn.qkv_proj) and gate, up into another (mlp.gate_up_proj) -- also the
// modules PEFT adapts --, an optional sliding window on every layer, partial rotary
// (Phi-4-mini's partial_rotary_factor 0.75) and LongRope (the 128k-context variants).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void phi3_read(const json& j, const std::string& where, ModelSpec& s) {
  s.fused_qkv = s.fused_gate_up = true;
  s.sliding_window = config::get_int(j, "sliding_window", where, 0);
  if (s.sliding_window < 0)
    fail(where, "sliding_window must be positive or null, got " + std::to_string(s.sliding_window));
  // Phi3Config reads the older "su" and "yarn" rope types as longrope; its
  // original_max_position_embeddings sits at the top level (default 4096).
  const int64_t original = config::get_int(j, "original_max_position_embeddings", where, 4096);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const json* rp = config::find_key(j, key);
    if (!rp || !rp->is_object()) continue;
    const json* t = config::find_key(*rp, "rope_type");
    if (!t) t = config::find_key(*rp, "type");
    const std::string type = t && t->is_string() ? t->get<std::string>() : "";
    if (type == "longrope" || type == "su" || type == "yarn")
      s.rope_scaling = config::parse_longrope(*rp, key, s.max_positions, original, where);
  }
}

void phi3_write(const ModelSpec& s, ordered_json& j) {
  if (!s.fused_qkv || !s.fused_gate_up) fail("config.json", "phi3 always fuses qkv_proj and gate_up_proj");
  if (s.qkv_bias || s.o_bias || s.mlp_bias) fail("config.json", "phi3 has no config.json switch for biases");
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  if (s.rotary_dim > 0)
    j["partial_rotary_factor"] = static_cast<double>(s.rotary_dim) / static_cast<double>(s.head_dim);
  if (s.rope_scaling.type == RopeScaling::Type::LongRope)
    j["original_max_position_embeddings"] = s.rope_scaling.original_max_positions;
}

void phi3_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.fused_qkv = s.fused_gate_up = true;
  s.sliding_window = hp.sliding_window;  // (0 for Phi-4, which has none)
}

}  // namespace

// llama.cpp's phi3 keeps the fused Linears (convert_hf_to_gguf.py's Phi3MiniModel): its
// ffn_up is gate_up_proj, gate rows then up rows.
constexpr GgufLayerName kPhi3GgufNames[] = {kFusedQkvGgufName, {"ffn_up", "mlp.gate_up_proj"}};
const ModelFamily kPhi3 = [] {
  ModelFamily f{"phi3", "Phi3ForCausalLM", "phi3", 0, 4096, 10000.0f, false, false, phi3_read, phi3_write, phi3_gguf,
                {}, true};
  f.gguf_layer_names = kPhi3GgufNames;
  return f;
}();

}  // namespace qlora::families
