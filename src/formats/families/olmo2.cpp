// OLMo 2 (model_type "olmo2", Olmo2ForCausalLM: OLMo-2 1B / 7B / 13B / 32B and their
// instruct models): Llama's attention and SwiGLU MLP with the norms moved after the
// branches -- x + post_attention_layernorm(attn(x)), then x + post_feedforward_layernorm(mlp(x)),
// no norm before either -- RMSNorms over all of q and all of k (q_norm of q_dim values,
// k_norm of kv_dim) before rotary, and RMSNorms that round once (weight * (x rstd) in
// float32). GGUF both ways as llama.cpp's "olmo2".
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

void olmo2_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) { olmo2_block(s); }

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

}  // namespace qlora::families
