// GPT-2 (model_type "gpt2") and GPT-BigCode (below). GPT-2: learned absolute positions (wpe), LayerNorm with biases, one
// fused c_attn (q | k | v), gelu_new MLP, biases everywhere, a tied head, and Conv1D
// weights stored (in, out) -- PEFT adapts them with fan_in_fan_out, its A and B having the
// usual (r, in) / (out, r) shapes. Its config.json spells the shared keys its own way
// (n_embd, n_layer, n_head, n_positions, n_inner, layer_norm_epsilon, activation_function).
#include <cmath>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kGpt2Renames[] = {
    {"transformer.wte.", "model.embed_tokens."},
    {"transformer.wpe.", "model.embed_positions."},
    {"transformer.ln_f.", "model.norm."},
    {"transformer.h.", "model.layers."},
    {".ln_1.", ".input_layernorm."},
    {".ln_2.", ".post_attention_layernorm."},
    {".attn.c_attn.", ".self_attn.qkv_proj."},
    {".attn.c_proj.", ".self_attn.o_proj."},
    {".mlp.c_fc.", ".mlp.up_proj."},
    {".mlp.c_proj.", ".mlp.down_proj."},
};

void gpt2_normalize(json& j) {
  config::alias_key(j, "hidden_size", "n_embd");
  config::alias_key(j, "num_hidden_layers", "n_layer");
  config::alias_key(j, "num_attention_heads", "n_head");
  config::alias_key(j, "max_position_embeddings", "n_positions");
  // n_inner: the MLP width, null meaning 4 x n_embd.
  if (!j.contains("intermediate_size")) {
    if (j.contains("n_inner") && !j["n_inner"].is_null())
      j["intermediate_size"] = j["n_inner"];
    else if (j.contains("hidden_size") && j["hidden_size"].is_number_integer())
      j["intermediate_size"] = 4 * j["hidden_size"].get<int64_t>();
  }
}

// GPT-2's block (GPT-BigCode's too): learned positions, LayerNorms, a plain MLP, fused c_attn,
// biases everywhere.
void gpt2_block(ModelSpec& s) {
  s.positional = PositionalKind::Learned;
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.fused_qkv = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
}

// Their sizes under GPT-2's config.json names.
void write_gpt2_sizes(const ModelSpec& s, ordered_json& j) {
  j["n_embd"] = s.hidden;
  j["n_layer"] = s.n_layers;
  j["n_head"] = s.n_heads;
  j["n_positions"] = s.max_positions;
  j["n_inner"] = s.ffn;
  j["layer_norm_epsilon"] = s.norm_eps;
}

void gpt2_read(const json& j, const std::string& where, ModelSpec& s) {
  gpt2_block(s);
  s.norm_eps = config::get_float(j, "layer_norm_epsilon", where, 1e-5f);
  if (config::find_key(j, "num_key_value_heads") && s.n_kv_heads != s.n_heads)
    fail(where, "gpt2 has no grouped key/value heads");
  s.act = config::gelu_family_activation(j, "activation_function", where, "gpt2", "gelu_new", /*relu_ok=*/true);
  if (!config::get_bool(j, "scale_attn_weights", where, true))
    fail(where, "scale_attn_weights false (unscaled attention scores) is not supported");
  if (config::get_bool(j, "scale_attn_by_inverse_layer_idx", where, false))
    fail(where, "scale_attn_by_inverse_layer_idx is not supported");
  if (config::get_bool(j, "reorder_and_upcast_attn", where, false))
    fail(where, "reorder_and_upcast_attn is not supported");
}

void gpt2_write(const ModelSpec& s, ordered_json& j) {
  if (s.positional != PositionalKind::Learned || s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain ||
      !s.fused_qkv || s.qkv_per_head)
    fail("config.json", "not a gpt2 block");
  write_gpt2_sizes(s, j);
  j["activation_function"] = s.act == Activation::Gelu ? "gelu" : s.act == Activation::Relu ? "relu" : "gelu_new";
}

// llama.cpp's gpt2 GGUF: the same block; its Linears are already (out, in) there.
void gpt2_gguf(const GgufLlamaHParams&, ModelSpec& s) {
  gpt2_block(s);
  s.act = Activation::GeluTanh;  // (llama.cpp's gpt2 graph: ggml_gelu, the tanh form)
}

}  // namespace

// GPT-BigCode (model_type "gpt_bigcode", GPTBigCodeForCausalLM: StarCoder / StarCoderBase, SantaCoder,
// WizardCoder, OctoCoder, TinyStarCoder): GPT-2's block and config keys, but nn.Linear weights (out, in),
// the tanh GELU by default, and with multi_query (the default) one key/value head: c_attn's rows are
// q (n_embd) | k | v (a head each); without it, per head q | k | v (gpt_neox's layout). A scale_attn_weights
// false leaves the scores unscaled (a GGUF cannot carry that, nor a ReLU MLP: refused there). GGUF both ways as llama.cpp's "starcoder" (multi-query only, as its
// converter writes head_count_kv 1).
void gpt_bigcode_read(const json& j, const std::string& where, ModelSpec& s) {
  gpt2_block(s);
  s.norm_eps = config::get_float(j, "layer_norm_epsilon", where, 1e-5f);
  s.act = config::gelu_family_activation(j, "activation_function", where, "gpt_bigcode", "gelu_pytorch_tanh",
                                         /*relu_ok=*/true);
  // (multi_query alone decides, as in transformers: the num_key_value_heads transformers 5 writes
  // beside it is not read there)
  const bool mqa = config::get_bool(j, "multi_query", where, true);
  s.n_kv_heads = mqa ? 1 : s.n_heads;
  s.qkv_per_head = !mqa;
  if (!config::get_bool(j, "scale_attn_weights", where, true)) s.attn_scale = 1.0f;
  if (config::get_bool(j, "add_cross_attention", where, false))
    fail(where, "add_cross_attention: GPT-BigCode's cross-attention (an encoder-decoder use) is not supported");
}

void gpt_bigcode_write(const ModelSpec& s, ordered_json& j) {
  const bool mqa = s.n_kv_heads == 1 && !s.qkv_per_head;
  if (!mqa && !s.qkv_per_head && s.n_kv_heads == s.n_heads)
    fail("config.json", "this gpt_bigcode model came from a GGUF, whose c_attn rows are reordered (q | k | v); "
                        "merging it to a Hugging Face directory is not supported yet (merge it to GGUF)");
  if (s.positional != PositionalKind::Learned || s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain ||
      !s.fused_qkv || (!mqa && !(s.qkv_per_head && s.n_kv_heads == s.n_heads)) || !s.qkv_bias || !s.o_bias ||
      !s.mlp_bias || (s.attn_scale != 0.0f && s.attn_scale != 1.0f))
    fail("config.json", "not a gpt_bigcode block");
  write_gpt2_sizes(s, j);
  j["activation_function"] = s.act == Activation::Gelu ? "gelu" : s.act == Activation::Relu ? "relu" : "gelu_pytorch_tanh";
  j["multi_query"] = mqa;
  j["scale_attn_weights"] = s.attn_scale != 1.0f;
}

// llama.cpp's starcoder GGUF: the same block, one key/value head (its converter's head_count_kv),
// q | k | v rows; its graph's GELU is the tanh form.

constexpr GgufLayerName kGpt2GgufNames[] = {kFusedQkvGgufName};  // (converter: Conv1D transposed to (out, in))
const ModelFamily kGpt2{"gpt2",     "GPT2LMHeadModel", "gpt2",      0,     1024, 10000.0f, true, false, gpt2_read,
                        gpt2_write, gpt2_gguf,         {},          false, kGpt2Renames, true, gpt2_normalize,
                        true,       nullptr,           "transformer.", kGpt2GgufNames};

const ModelFamily kGptBigCode = [] {
  ModelFamily f{"gpt_bigcode", "GPTBigCodeForCausalLM", "starcoder", 0, 1024, 10000.0f, true, false, gpt_bigcode_read,
                gpt_bigcode_write, gpt2_gguf};
  f.hf_renames = kGpt2Renames;
  f.own_activation = true;
  f.normalize_config = gpt2_normalize;
  f.base_prefix = "transformer.";
  f.gguf_layer_names = kGpt2GgufNames;
  return f;
}();

}  // namespace qlora::families
