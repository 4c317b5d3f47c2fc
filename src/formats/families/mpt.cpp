// MPT (model_type "mpt", MptForCausalLM: MosaicML's MPT-7B / -30B and their Instruct, Chat and
// StoryWriter variants, as transformers runs them): ALiBi positions (build_mpt_alibi_tensor's slopes with
// its bias maximum 8: transformers ignores attn_config.alibi_bias_max), LayerNorms without biases, one fused Wqkv (rows q | k | v, clamped to
// attn_config.clip_qkv when set), an MLP 4 x d_model wide with the exact GELU, no biases anywhere
// (transformers builds none whatever no_bias says), a tied head. attn_config.softmax_scale replaces
// 1/sqrt(head_dim). What transformers' MptAttention does not run is refused rather than ignored:
// qk_ln, multi-query attention, learned positions instead of ALiBi, an expansion_ratio other than 4.
// GGUF both ways as llama.cpp's "mpt" (attention.max_alibi_bias, attention.clamp_kqv).
#include <cmath>
#include <string>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kMptRenames[] = {
    {"transformer.wte.", "model.embed_tokens."},
    {"transformer.norm_f.", "model.norm."},
    {"transformer.blocks.", "model.layers."},
    {".norm_1.", ".input_layernorm."},
    {".norm_2.", ".post_attention_layernorm."},
    {".attn.Wqkv.", ".self_attn.qkv_proj."},
    {".attn.out_proj.", ".self_attn.o_proj."},
    {".ffn.up_proj.", ".mlp.up_proj."},
    {".ffn.down_proj.", ".mlp.down_proj."},
};

void mpt_normalize(json& j) {
  config::alias_key(j, "hidden_size", "d_model");
  config::alias_key(j, "num_attention_heads", "n_heads");
  config::alias_key(j, "num_hidden_layers", "n_layers");
  if (j.contains("max_seq_len")) j["max_position_embeddings"] = j["max_seq_len"];  // (MptConfig's name wins)
  // (MptConfig's defaults; MptMLP is 4 x d_model whatever expansion_ratio says: checked in mpt_read)
  const std::pair<const char*, json> defaults[] = {{"hidden_size", 2048}, {"num_attention_heads", 16},
                                                   {"num_hidden_layers", 24}, {"max_position_embeddings", 2048},
                                                   {"vocab_size", 50368}};
  for (const auto& [k, v] : defaults)
    if (!j.contains(k)) j[k] = v;
  if (j["hidden_size"].is_number_integer()) j["intermediate_size"] = 4 * j["hidden_size"].get<int64_t>();
  j.erase("num_key_value_heads");
}

void mpt_read(const json& j, const std::string& where, ModelSpec& s) {
  s.positional = PositionalKind::Alibi;
  s.alibi_mpt = true;
  s.norm = NormKind::LayerNorm;
  s.norm_bias = false;
  s.norm_eps = config::get_float(j, "layer_norm_epsilon", where, 1e-5f);
  s.mlp = MlpKind::Plain;
  s.act = Activation::Gelu;  // (nn.GELU(approximate="none"))
  s.fused_qkv = true;
  if (config::get_int(j, "expansion_ratio", where, 4) != 4)
    fail(where, "expansion_ratio " + std::to_string(config::get_int(j, "expansion_ratio", where, 4)) +
                    ": transformers' MptMLP is 4 x d_model wide whatever it says, so such a checkpoint does not load "
                    "there either");
  const json* ac = config::find_key(j, "attn_config");
  if (ac && !ac->is_null() && !ac->is_object())
    fail(where, "attn_config must be an object (MptAttentionConfig's fields), got " + config::shown(*ac));
  const json a = ac && ac->is_object() ? *ac : json::object();
  if (const json* t = config::find_key(a, "attn_type"); t && !(t->is_string() && t->get<std::string>() == "multihead_attention"))
    fail(where, "attn_config.attn_type " + config::shown(*t) + ": transformers' MptAttention is multi-head only");
  if (config::get_bool(a, "qk_ln", where, false))
    fail(where, "attn_config.qk_ln: transformers' MptAttention has no q/k LayerNorms (the checkpoint's would be dropped)");
  if (!config::get_bool(a, "alibi", where, true))
    fail(where, "attn_config.alibi false (learned positions): transformers' MPT runs ALiBi only");
  if (config::get_bool(a, "prefix_lm", where, false) || config::get_bool(a, "attn_uses_sequence_id", where, false))
    fail(where, "attn_config.prefix_lm / attn_uses_sequence_id: not run by transformers' MPT, not supported");
  // (attn_config.alibi_bias_max: transformers' MptModel builds its ALiBi with the default 8 whatever the
  // config says; llama.cpp's converter writes the config's value -- the same for every released MPT)
  (void)config::get_float(a, "alibi_bias_max", where, 8.0f);
  if (const json* c = config::find_key(a, "clip_qkv"); c && !c->is_null())
    s.clip_qkv = config::get_float(a, "clip_qkv", where, 0.0f);
  if (const json* sc = config::find_key(a, "softmax_scale"); sc && !sc->is_null()) {
    s.attn_scale = config::get_float(a, "softmax_scale", where, 0.0f);
    if (!(s.attn_scale > 0.0f) || !std::isfinite(s.attn_scale))
      fail(where, "attn_config.softmax_scale must be positive (or null: 1/sqrt(head_dim)), got " + config::shown(*sc));
  }
}

void mpt_write(const ModelSpec& s, ordered_json& j) {
  if (s.positional != PositionalKind::Alibi || s.alibi_falcon || s.norm != NormKind::LayerNorm || s.norm_bias ||
      s.mlp != MlpKind::Plain || !s.fused_qkv || s.qkv_per_head || s.qkv_grouped || s.n_kv_heads != s.n_heads ||
      s.qkv_bias || s.o_bias || s.mlp_bias || s.ffn != 4 * s.hidden || s.act != Activation::Gelu)
    fail("config.json", "not an mpt block");
  j["d_model"] = s.hidden;
  j["n_heads"] = s.n_heads;
  j["n_layers"] = s.n_layers;
  j["max_seq_len"] = s.max_positions;
  j["expansion_ratio"] = 4;
  j["layer_norm_epsilon"] = s.norm_eps;
  j["no_bias"] = true;
  ordered_json a;
  a["attn_type"] = "multihead_attention";
  a["alibi"] = true;
  // (an int in MptAttentionConfig, which refuses 8.0; transformers runs 8 whatever it says)
  if (s.alibi_bias_max != 8.0f)
    fail("config.json", "this model's ALiBi takes a bias maximum of " + std::to_string(s.alibi_bias_max) +
                            " (from a GGUF); transformers' MPT runs 8 whatever its config says");
  a["alibi_bias_max"] = 8;
  a["clip_qkv"] = s.clip_qkv > 0.0f ? ordered_json(s.clip_qkv) : ordered_json(nullptr);
  a["softmax_scale"] = s.attn_scale > 0.0f ? ordered_json(s.attn_scale) : ordered_json(nullptr);
  a["qk_ln"] = false;
  j["attn_config"] = a;
  for (const char* k : {"hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                        "max_position_embeddings", "intermediate_size", "rms_norm_eps", "rope_theta", "hidden_act",
                        "head_dim"})
    j.erase(k);
}

// llama.cpp's mpt GGUF: the same block; its ALiBi slopes are llama.cpp's with attention.max_alibi_bias
// (the same series as MPT's, computed another way), the clamp attention.clamp_kqv.
void mpt_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (!(hp.max_alibi_bias > 0.0f))
    fail(hp.path, "an mpt GGUF without attention.max_alibi_bias (0: learned positions, which transformers' MPT does "
                  "not run) is not supported");
  s.positional = PositionalKind::Alibi;
  s.alibi_bias_max = hp.max_alibi_bias;
  s.norm = NormKind::LayerNorm;
  s.norm_bias = false;
  s.mlp = MlpKind::Plain;
  s.act = Activation::Gelu;
  s.fused_qkv = true;
  s.clip_qkv = hp.clamp_kqv;
}

}  // namespace

constexpr GgufLayerName kMptGgufNames[] = {kFusedQkvGgufName};
const ModelFamily kMpt = [] {
  ModelFamily f{"mpt", "MptForCausalLM", "mpt", 0, 2048, 10000.0f, true, false, mpt_read, mpt_write, mpt_gguf};
  f.hf_renames = kMptRenames;
  f.own_activation = true;
  f.normalize_config = mpt_normalize;
  f.base_prefix = "transformer.";
  f.gguf_layer_names = kMptGgufNames;
  return f;
}();

}  // namespace qlora::families
