// OLMo (model_type "olmo", OlmoForCausalLM: OLMo-1B-hf, OLMo-7B-hf, OLMo-1.7-7B): Llama's
// attention and SwiGLU MLP with LayerNorms that have neither weights nor biases (eps 1e-5,
// fixed), and optionally q, k and v clamped to [-clip_qkv, clip_qkv] after their projections.
// GGUF both ways as llama.cpp's "olmo" (q/k rows permuted as its llama converter does; the
// clamp as attention.clamp_kqv).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void olmo_block(ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.norm_bias = s.norm_weights = false;
  s.norm_eps = 1e-5f;  // (OlmoLayerNorm's, whatever the config says)
}

void olmo_read(const json& j, const std::string& where, ModelSpec& s) {
  olmo_block(s);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  if (const json* c = config::find_key(j, "clip_qkv"); c && !c->is_null()) {
    s.clip_qkv = config::get_float(j, "clip_qkv", where, 0.0f);
    if (!(s.clip_qkv > 0.0f)) fail(where, "clip_qkv must be positive or null");
  }
}

void olmo_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.norm_weights || s.norm_bias || s.mlp != MlpKind::SwiGLU || s.mlp_bias ||
      s.qkv_bias != s.o_bias)
    fail("config.json", "not an olmo block");
  j["attention_bias"] = s.qkv_bias;
  j["clip_qkv"] = s.clip_qkv > 0.0f ? ordered_json(s.clip_qkv) : ordered_json();
}

void olmo_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  olmo_block(s);
  s.clip_qkv = hp.clamp_kqv;
}

}  // namespace

const ModelFamily kOlmo{"olmo", "OlmoForCausalLM", "olmo", 0, 2048, 10000.0f, false, false, olmo_read, olmo_write,
                        olmo_gguf};

}  // namespace qlora::families
