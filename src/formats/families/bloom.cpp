// BLOOM (model_type "bloom"): ALiBi instead of position embeddings, a LayerNorm on the
// token embeddings (word_embeddings_layernorm), LayerNorm with biases, one fused
// query_key_value laid out per head, a tanh-GELU MLP, biases everywhere, a tied head.
// Its config.json may spell the shared keys its own way (n_embed, n_layer, n_head).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kBloomRenames[] = {
    {"transformer.word_embeddings.", "model.embed_tokens."},
    {"transformer.word_embeddings_layernorm.", "model.embed_norm."},
    {"transformer.ln_f.", "model.norm."},
    {"transformer.h.", "model.layers."},
    {".self_attention.query_key_value.", ".self_attn.qkv_proj."},
    {".self_attention.dense.", ".self_attn.o_proj."},
    {".mlp.dense_h_to_4h.", ".mlp.up_proj."},
    {".mlp.dense_4h_to_h.", ".mlp.down_proj."},
};

void bloom_normalize(json& j) {
  config::alias_key(j, "hidden_size", "n_embed");
  config::alias_key(j, "num_hidden_layers", "n_layer");
  config::alias_key(j, "num_attention_heads", "n_head");
  if (!j.contains("intermediate_size") && j.contains("hidden_size") && j["hidden_size"].is_number_integer())
    j["intermediate_size"] = 4 * j["hidden_size"].get<int64_t>();  // BloomMLP: 4 x hidden
}

void bloom_read(const json& j, const std::string& where, ModelSpec& s) {
  s.positional = PositionalKind::Alibi;
  s.embed_norm = true;
  s.norm = NormKind::LayerNorm;
  s.norm_eps = config::get_float(j, "layer_norm_epsilon", where, 1e-5f);
  s.mlp = MlpKind::Plain;
  s.act = Activation::GeluTanh;  // bloom_gelu_forward: the tanh approximation
  s.fused_qkv = s.qkv_per_head = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
  if (config::get_bool(j, "apply_residual_connection_post_layernorm", where, false))
    fail(where, "apply_residual_connection_post_layernorm (residuals from the normed input) is not supported");
  if (config::find_key(j, "num_key_value_heads") && s.n_kv_heads != s.n_heads)
    fail(where, "bloom has no grouped key/value heads");
}

void bloom_write(const ModelSpec& s, ordered_json& j) {
  if (s.positional != PositionalKind::Alibi || !s.embed_norm || s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain)
    fail("config.json", "not a bloom block");
  if (!s.qkv_per_head)
    fail("config.json", "this bloom model came from a GGUF, whose query_key_value is reordered; merging it to a "
                        "Hugging Face directory is not supported yet (merge it to GGUF)");
  j["n_layer"] = s.n_layers;
  j["n_head"] = s.n_heads;
  j["layer_norm_epsilon"] = s.norm_eps;
  j["apply_residual_connection_post_layernorm"] = false;
}

// llama.cpp's bloom GGUF: its converter reorders query_key_value as gptneox's does (all q,
// all k, all v).
void bloom_gguf(const GgufLlamaHParams&, ModelSpec& s) {
  s.positional = PositionalKind::Alibi;
  s.embed_norm = true;
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = Activation::GeluTanh;
  s.fused_qkv = true;
  s.qkv_per_head = false;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
}

}  // namespace

constexpr GgufLayerName kBloomGgufNames[] = {kFusedQkvGgufName};
const ModelFamily kBloom = [] {
  ModelFamily f{"bloom", "BloomForCausalLM", "bloom", 0, 2048, 10000.0f, true, false, bloom_read,
                bloom_write, bloom_gguf, {}, false, kBloomRenames, true, bloom_normalize, false};
  f.gguf_layer_names = kBloomGgufNames;
  return f;
}();

}  // namespace qlora::families
