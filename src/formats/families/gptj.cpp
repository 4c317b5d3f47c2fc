// GPT-J (model_type "gptj", GPTJForCausalLM: GPT-J-6B and its fine-tunes): one LayerNorm
// (ln_1, with bias) feeding attention and the MLP in parallel (x + attn(ln(x)) + mlp(ln(x))),
// q/k/v/out_proj without biases, rotary on the first rotary_dim dims of each head in
// rotate_every_two form (adjacent pairs: ModelSpec::rope_interleaved), a fc_in / gelu_new /
// fc_out MLP with biases, ln_f, and an untied head with a bias. Its config.json spells the
// shared keys as gpt2 does (n_embd, n_layer, n_head, n_positions, n_inner). llama.cpp has no
// GPT-J graph, so there is no GGUF form.
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kGptjRenames[] = {
    {"transformer.wte.", "model.embed_tokens."},
    {"transformer.ln_f.", "model.norm."},
    {"transformer.h.", "model.layers."},
    {".ln_1.", ".input_layernorm."},
    {".attn.q_proj.", ".self_attn.q_proj."},
    {".attn.k_proj.", ".self_attn.k_proj."},
    {".attn.v_proj.", ".self_attn.v_proj."},
    {".attn.out_proj.", ".self_attn.o_proj."},
    {".mlp.fc_in.", ".mlp.up_proj."},
    {".mlp.fc_out.", ".mlp.down_proj."},
};

void gptj_normalize(json& j) {
  config::alias_key(j, "hidden_size", "n_embd");
  config::alias_key(j, "num_hidden_layers", "n_layer");
  config::alias_key(j, "num_attention_heads", "n_head");
  config::alias_key(j, "max_position_embeddings", "n_positions");
  if (!j.contains("intermediate_size")) {  // n_inner: the MLP width, null meaning 4 x n_embd
    if (j.contains("n_inner") && !j["n_inner"].is_null())
      j["intermediate_size"] = j["n_inner"];
    else if (j.contains("hidden_size") && j["hidden_size"].is_number_integer())
      j["intermediate_size"] = 4 * j["hidden_size"].get<int64_t>();
  }
}

void gptj_read(const json& j, const std::string& where, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.parallel_residual = s.shared_branch_norm = true;
  s.mlp_bias = s.head_bias = true;
  s.rope_interleaved = true;
  s.norm_eps = config::get_float(j, "layer_norm_epsilon", where, 1e-5f);
  if (config::find_key(j, "num_key_value_heads") && s.n_kv_heads != s.n_heads)
    fail(where, "gptj has no grouped key/value heads");
  s.act = config::gelu_family_activation(j, "activation_function", where, "gptj", "gelu_new", /*relu_ok=*/false);
  const int64_t rot = config::get_int(j, "rotary_dim", where, 64);
  if (rot <= 0 || rot > s.head_dim || rot % 2 != 0)
    fail(where, "rotary_dim " + std::to_string(rot) + " must be even and at most the head size " +
                    std::to_string(s.head_dim));
  s.rotary_dim = rot == s.head_dim ? 0 : rot;
}

void gptj_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain || !s.parallel_residual || !s.shared_branch_norm ||
      !s.rope_interleaved || s.fused_qkv || s.qkv_bias || s.o_bias || !s.mlp_bias || !s.head_bias)
    fail("config.json", "not a gptj block");
  j["n_embd"] = s.hidden;
  j["n_layer"] = s.n_layers;
  j["n_head"] = s.n_heads;
  j["n_positions"] = s.max_positions;
  j["n_inner"] = s.ffn;
  j["rotary_dim"] = s.rope_dims();
  j["layer_norm_epsilon"] = s.norm_eps;
  j["activation_function"] = s.act == Activation::Gelu ? "gelu" : "gelu_new";
}

}  // namespace

const ModelFamily kGptj{"gptj",     "GPTJForCausalLM", "",           0,     2048, 10000.0f, false, false, gptj_read,
                        gptj_write, nullptr,           {},           false, kGptjRenames, true, gptj_normalize,
                        false,      nullptr,           "transformer."};

}  // namespace qlora::families
