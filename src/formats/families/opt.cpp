// OPT (model_type "opt": facebook/opt-125m, 350m, 1.3b, 2.7b, 6.7b, ...): learned positions
// read at an offset of 2, LayerNorm with biases, separate q/k/v/out_proj and fc1/fc2 Linears
// with biases, ReLU, a tied head. Two block forms: pre-norm with a final LayerNorm (most),
// and opt-350m's post-norm blocks (do_layer_norm_before false, no final norm) with its
// 512-wide embeddings taken to the 1024-wide blocks and back by project_in / project_out
// (word_embed_proj_dim != hidden_size).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kOptRenames[] = {
    {"model.decoder.embed_tokens.", "model.embed_tokens."},
    {"model.decoder.embed_positions.", "model.embed_positions."},
    {"model.decoder.final_layer_norm.", "model.norm."},
    {"model.decoder.project_in.", "model.project_in."},
    {"model.decoder.project_out.", "model.project_out."},
    {"model.decoder.layers.", "model.layers."},
    {".self_attn_layer_norm.", ".input_layernorm."},
    {".final_layer_norm.", ".post_attention_layernorm."},
    {".self_attn.out_proj.", ".self_attn.o_proj."},
    {".fc1.", ".mlp.up_proj."},
    {".fc2.", ".mlp.down_proj."},
};

void opt_normalize(json& j) {
  config::alias_key(j, "intermediate_size", "ffn_dim");
}

void opt_read(const json& j, const std::string& where, ModelSpec& s) {
  s.positional = PositionalKind::Learned;
  s.position_offset = 2;
  s.norm = NormKind::LayerNorm;
  s.norm_eps = 1e-5f;  // nn.LayerNorm's default: OPT's config has no key for it
  s.mlp = MlpKind::Plain;
  s.qkv_bias = s.o_bias = s.mlp_bias = config::get_bool(j, "enable_bias", where, true);
  const json* a = config::find_key(j, "activation_function");
  const std::string act = a && a->is_string() ? a->get<std::string>() : (a ? "" : "relu");
  if (act == "relu")
    s.act = Activation::Relu;
  else if (act == "gelu")
    s.act = Activation::Gelu;
  else if (act == "gelu_new" || act == "gelu_pytorch_tanh")
    s.act = Activation::GeluTanh;
  else
    fail(where, "activation_function " + (a ? config::shown(*a) : std::string("?")) +
                    " is not supported for opt (relu, gelu, gelu_new)");
  // opt-350m: post-norm blocks, and then no final norm (transformers' OPTDecoder).
  s.post_norm = !config::get_bool(j, "do_layer_norm_before", where, true);
  s.final_norm = !s.post_norm && !config::get_bool(j, "_remove_final_layer_norm", where, false);
  if (const json* p = config::find_key(j, "word_embed_proj_dim"); p && !p->is_null()) {
    if (!p->is_number_integer() || p->get<int64_t>() <= 0)
      fail(where, "word_embed_proj_dim " + config::shown(*p) + " is not a positive integer");
    if (p->get<int64_t>() != s.hidden) s.embed_dim = p->get<int64_t>();
  }
  if (!config::get_bool(j, "layer_norm_elementwise_affine", where, true))
    fail(where, "layer_norm_elementwise_affine false (norms without weights) is not supported");
}

void opt_write(const ModelSpec& s, ordered_json& j) {
  if (s.positional != PositionalKind::Learned || s.position_offset != 2 || s.norm != NormKind::LayerNorm ||
      s.mlp != MlpKind::Plain || s.fused_qkv)
    fail("config.json", "not an opt block");
  if (!(s.qkv_bias && s.o_bias && s.mlp_bias) && (s.qkv_bias || s.o_bias || s.mlp_bias))
    fail("config.json", "opt has biases on every Linear or on none");
  j["ffn_dim"] = s.ffn;
  j["word_embed_proj_dim"] = s.embed_width();
  j["do_layer_norm_before"] = !s.post_norm;
  if (!s.post_norm && !s.final_norm) j["_remove_final_layer_norm"] = true;
  j["enable_bias"] = s.qkv_bias;
  j["activation_function"] = s.act == Activation::Relu ? "relu" : s.act == Activation::Gelu ? "gelu" : "gelu_new";
}

}  // namespace

const ModelFamily kOpt{"opt",     "OPTForCausalLM", "", 0,     2048, 10000.0f, true, false, opt_read,
                       opt_write, nullptr,          {}, false, kOptRenames, true, opt_normalize, false};

}  // namespace qlora::families
