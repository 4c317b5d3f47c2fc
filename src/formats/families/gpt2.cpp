// GPT-2 (model_type "gpt2"): learned absolute positions (wpe), LayerNorm with biases, one
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

void gpt2_read(const json& j, const std::string& where, ModelSpec& s) {
  s.positional = PositionalKind::Learned;
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.fused_qkv = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
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
  j["n_embd"] = s.hidden;
  j["n_layer"] = s.n_layers;
  j["n_head"] = s.n_heads;
  j["n_positions"] = s.max_positions;
  j["n_inner"] = s.ffn;
  j["layer_norm_epsilon"] = s.norm_eps;
  j["activation_function"] = s.act == Activation::Gelu ? "gelu" : s.act == Activation::Relu ? "relu" : "gelu_new";
}

// llama.cpp's gpt2 GGUF: the same block; its Linears are already (out, in) there.
void gpt2_gguf(const GgufLlamaHParams&, ModelSpec& s) {
  s.positional = PositionalKind::Learned;
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = Activation::GeluTanh;  // (llama.cpp's gpt2 graph: ggml_gelu, the tanh form)
  s.fused_qkv = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
}

}  // namespace

constexpr GgufLayerName kGpt2GgufNames[] = {kFusedQkvGgufName};  // (converter: Conv1D transposed to (out, in))
const ModelFamily kGpt2{"gpt2",     "GPT2LMHeadModel", "gpt2",      0,     1024, 10000.0f, true, false, gpt2_read,
                        gpt2_write, gpt2_gguf,         {},          false, kGpt2Renames, true, gpt2_normalize,
                        true,       nullptr,           "transformer.", kGpt2GgufNames};

}  // namespace qlora::families
