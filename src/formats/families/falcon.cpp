// Falcon (model_type "falcon"; older "RefinedWeb" / "RefinedWebModel" configs are not read):
// rotary, LayerNorm with biases, a GELU MLP, one fused query_key_value in one of three
// layouts -- grouped per key/value head (new_decoder_architecture: 40B/180B and Falcon 2),
// multi-query (q heads, then one k, then one v: 7B), or per head (plain multi-head) --,
// the parallel residual with one shared norm (7B) or two (ln_attn / ln_mlp, the new
// architecture), or the sequential block (parallel_attn false). Biases only where the
// config says (bias). falcon-rw-1b/7b (alibi true) use ALiBi in Falcon's own form (bf16
// bias added before the score scaling; ops.h AlibiBias) instead of rotary. GGUF both ways
// (llama.cpp's falcon: the parallel block without biases, rotary).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// (The new architecture's two norms are ln_attn / ln_mlp; the others keep input_layernorm
// and post_attention_layernorm.)
constexpr HfRename kFalconNewArchRenames[] = {
    {"transformer.word_embeddings.", "model.embed_tokens."},
    {"transformer.ln_f.", "model.norm."},
    {"transformer.h.", "model.layers."},
    {".ln_attn.", ".input_layernorm."},
    {".ln_mlp.", ".post_attention_layernorm."},
    {".self_attention.query_key_value.", ".self_attn.qkv_proj."},
    {".self_attention.dense.", ".self_attn.o_proj."},
    {".mlp.dense_h_to_4h.", ".mlp.up_proj."},
    {".mlp.dense_4h_to_h.", ".mlp.down_proj."},
};
constexpr HfRename kFalconRenames[] = {
    {"transformer.word_embeddings.", "model.embed_tokens."},
    {"transformer.ln_f.", "model.norm."},
    {"transformer.h.", "model.layers."},
    {".self_attention.query_key_value.", ".self_attn.qkv_proj."},
    {".self_attention.dense.", ".self_attn.o_proj."},
    {".mlp.dense_h_to_4h.", ".mlp.up_proj."},
    {".mlp.dense_4h_to_h.", ".mlp.down_proj."},
};

std::span<const HfRename> falcon_renames(const ModelSpec& s) {
  // (two norms in a parallel block: the new architecture, or its GGUF)
  if (s.parallel_residual && !s.shared_branch_norm) return kFalconNewArchRenames;
  return kFalconRenames;
}

void falcon_normalize(json& j) {
  config::alias_key(j, "num_hidden_layers", "n_layer");
  config::alias_key(j, "num_attention_heads", "n_head");
  if (!j.contains("intermediate_size")) {
    if (j.contains("ffn_hidden_size") && !j["ffn_hidden_size"].is_null())
      j["intermediate_size"] = j["ffn_hidden_size"];
    else if (j.contains("hidden_size") && j["hidden_size"].is_number_integer())
      j["intermediate_size"] = 4 * j["hidden_size"].get<int64_t>();
  }
}

void falcon_read(const json& j, const std::string& where, ModelSpec& s) {
  // falcon-rw-1b / 7b: ALiBi in Falcon's form instead of rotary.
  if (config::get_bool(j, "alibi", where, false)) {
    s.positional = PositionalKind::Alibi;
    s.alibi_falcon = true;
  }
  s.norm = NormKind::LayerNorm;
  s.norm_eps = config::get_float(j, "layer_norm_epsilon", where, 1e-5f);
  s.mlp = MlpKind::Plain;
  const json* a = config::find_key(j, "activation");
  const std::string act = a && a->is_string() ? a->get<std::string>() : (a ? "" : "gelu");
  if (act != "gelu") fail(where, "activation " + (a ? config::shown(*a) : std::string("?")) + " is not supported (gelu)");
  s.act = Activation::Gelu;
  s.fused_qkv = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = config::get_bool(j, "bias", where, false);
  const bool new_arch = config::get_bool(j, "new_decoder_architecture", where, false);
  const bool multi_query = config::get_bool(j, "multi_query", where, true);
  const bool parallel = config::get_bool(j, "parallel_attn", where, true);
  if (new_arch) {
    s.n_kv_heads = config::get_int(j, "num_kv_heads", where, s.n_heads);
    s.qkv_grouped = true;
    s.parallel_residual = true;  // (the new architecture always adds both branches)
    const int64_t n_ln = config::get_int(j, "num_ln_in_parallel_attn", where, 2);
    if (n_ln != 1 && n_ln != 2) fail(where, "num_ln_in_parallel_attn must be 1 or 2");
    s.shared_branch_norm = n_ln == 1;
  } else {
    s.n_kv_heads = multi_query ? 1 : s.n_heads;
    s.qkv_per_head = !multi_query;
    s.parallel_residual = parallel;
    s.shared_branch_norm = parallel;
  }
}

void falcon_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain || !s.fused_qkv || s.act != Activation::Gelu)
    fail("config.json", "not a falcon block");
  if (!s.qkv_grouped && !s.qkv_per_head && s.n_kv_heads > 1)
    fail("config.json", "this falcon model came from a GGUF, whose query_key_value is regrouped (all q, k, v); merging "
                        "it to a Hugging Face directory is not supported: merge to GGUF instead");
  if (s.qkv_bias != s.o_bias || s.qkv_bias != s.mlp_bias) fail("config.json", "falcon has biases on every Linear or none");
  j.erase("head_dim");  // (a read-only property of FalconConfig: hidden_size / num_attention_heads)
  j["layer_norm_epsilon"] = s.norm_eps;
  j["bias"] = s.qkv_bias;
  j["alibi"] = s.positional == PositionalKind::Alibi;
  j["ffn_hidden_size"] = s.ffn;
  j["activation"] = "gelu";
  if (s.qkv_grouped) {
    j["new_decoder_architecture"] = true;
    j["num_kv_heads"] = s.n_kv_heads;
    j["num_ln_in_parallel_attn"] = s.shared_branch_norm ? 1 : 2;
    j["parallel_attn"] = true;
  } else {
    j["new_decoder_architecture"] = false;
    j["multi_query"] = !s.qkv_per_head;
    j["parallel_attn"] = s.parallel_residual;
  }
}

// llama.cpp's falcon GGUF (falcon-7b, the new architecture's 40B/180B): its converter
// regroups query_key_value to all q, all k, all v; a parallel block without biases, with
// one norm (attn_norm) or two (attn_norm_2 for the attention, attn_norm for the MLP).
void falcon_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = Activation::Gelu;
  s.fused_qkv = true;
  s.qkv_grouped = s.qkv_per_head = false;
  s.parallel_residual = true;
  s.shared_branch_norm = !hp.falcon_two_norms;
}

}  // namespace

constexpr GgufLayerName kFalconGgufNames[] = {kFusedQkvGgufName};
const ModelFamily kFalcon{"falcon",     "FalconForCausalLM", "falcon", 0,     2048, 10000.0f, true, false, falcon_read,
                          falcon_write, falcon_gguf,         {},       false, kFalconRenames, true, falcon_normalize,
                          false,        falcon_renames,      {},       kFalconGgufNames};

}  // namespace qlora::families
