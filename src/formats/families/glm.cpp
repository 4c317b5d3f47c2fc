// GLM-4 (model_type "glm4", Glm4ForCausalLM: GLM-4-9B-0414, GLM-4-32B-0414, GLM-Z1): a
// pre-norm block with a second norm after each branch (Gemma 2's sandwich norms, named
// post_self_attn_layernorm, post_attention_layernorm (the MLP's input norm) and
// post_mlp_layernorm), q/k/v biases, gate and up in one Linear (mlp.gate_up_proj), and rotary
// on the first half of each head in adjacent pairs (partial_rotary_factor, 0.5 when the config
// leaves it out, as Glm4Config does).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void glm4_block(ModelSpec& s) {
  s.sandwich_norms = true;
  s.fused_gate_up = true;
  s.rope_interleaved = true;
}

void glm4_read(const json& j, const std::string& where, ModelSpec& s) {
  glm4_block(s);
  s.qkv_bias = config::get_bool(j, "attention_bias", where, true);
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1.5625e-07f);
  // (the shared reader takes partial_rotary_factor when the config has it)
  const json* rp = config::find_key(j, "rope_parameters");
  if (!config::find_key(j, "partial_rotary_factor") && !(rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor")))
    s.rotary_dim = s.head_dim / 2;
}

void glm4_write(const ModelSpec& s, ordered_json& j) {
  if (!s.sandwich_norms || !s.fused_gate_up || !s.rope_interleaved || s.o_bias || s.mlp_bias || s.qk_norm ||
      !s.pre_norms || s.sliding_window > 0)
    fail("config.json", "not a glm4 block");
  j["attention_bias"] = s.qkv_bias;
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
}

void glm4_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) { glm4_block(s); }

}  // namespace

// Its checkpoints' names for the sandwich norms, in the order to apply them (the MLP's
// input norm first, before post_self_attn_layernorm takes the canonical name it frees).
constexpr HfRename kGlm4Renames[] = {{".post_attention_layernorm.", ".pre_feedforward_layernorm."},
                                     {".post_self_attn_layernorm.", ".post_attention_layernorm."},
                                     {".post_mlp_layernorm.", ".post_feedforward_layernorm."}};
// llama.cpp's glm4 names the two post-branch norms post_attention_norm and post_ffw_norm, the
// MLP's input norm ffn_norm.
constexpr GgufLayerName kGlm4GgufNames[] = {{"post_attention_norm", "post_attention_layernorm"},
                                            {"ffn_norm", "pre_feedforward_layernorm"},
                                            {"post_ffw_norm", "post_feedforward_layernorm"},
                                            {"ffn_up", "mlp.gate_up_proj"}};
const ModelFamily kGlm4 = [] {
  ModelFamily f{"glm4", "Glm4ForCausalLM", "glm4", 128, 131072, 10000.0f, false, false, glm4_read, glm4_write,
                glm4_gguf};
  f.partial_rotary = true;
  f.hf_renames = kGlm4Renames;
  f.gguf_layer_names = kGlm4GgufNames;
  return f;
}();

}  // namespace qlora::families
