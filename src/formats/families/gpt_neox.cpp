// GPT-NeoX (model_type "gpt_neox": Pythia, GPT-NeoX-20B, ...): LayerNorm with biases, a
// plain GELU MLP, one fused query_key_value Linear laid out per head (q | k | v within
// each head), partial rotary (rotary_pct, 0.25 by default), biases on every Linear, the
// parallel residual (use_parallel_residual) and an untied embed_out head. Its checkpoint
// names differ from the canonical ones; kNeoXRenames maps them (PEFT's module paths too).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kNeoXRenames[] = {
    {"gpt_neox.embed_in.", "model.embed_tokens."},
    {"gpt_neox.final_layer_norm.", "model.norm."},
    {"embed_out.", "lm_head."},
    {"gpt_neox.layers.", "model.layers."},
    {".attention.query_key_value.", ".self_attn.qkv_proj."},
    {".attention.dense.", ".self_attn.o_proj."},
    {".mlp.dense_h_to_4h.", ".mlp.up_proj."},
    {".mlp.dense_4h_to_h.", ".mlp.down_proj."},
};

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Gelu: return "gelu";
    case Activation::GeluTanh: return "gelu_new";
    case Activation::Relu: return "relu";
    case Activation::Relu2:
    case Activation::Xielu: break;  // (not gpt_neox activations: its reader refuses them)
  }
  return "gelu";
}

void neox_read(const json& j, const std::string& where, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = config::gelu_family_activation(j, "hidden_act", where, "gpt_neox", "gelu", /*relu_ok=*/true);
  s.fused_qkv = s.qkv_per_head = true;
  s.parallel_residual = config::get_bool(j, "use_parallel_residual", where, true);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, true);
  s.mlp_bias = true;
  s.norm_eps = config::get_float(j, "layer_norm_eps", where, 1e-5f);
  if (config::find_key(j, "num_key_value_heads") && s.n_kv_heads != s.n_heads)
    fail(where, "gpt_neox has no grouped key/value heads (num_key_value_heads differs from num_attention_heads)");
  // Older configs: rotary_emb_base and rotary_pct at the top level (GPTNeoXConfig's defaults
  // 10000 and 0.25 when neither form is there).
  if (const json* b = config::find_key(j, "rotary_emb_base")) {
    if (!b->is_number() || !(b->get<double>() > 0)) fail(where, "rotary_emb_base must be a positive number");
    if (!config::find_key(j, "rope_theta")) s.rope_theta = b->get<float>();
  }
  const json* rp = config::find_key(j, "rope_parameters");
  const bool has_factor = config::find_key(j, "partial_rotary_factor") ||
                          (rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor"));
  if (!has_factor) {
    const json* pct = config::find_key(j, "rotary_pct");
    const double f = pct && pct->is_number() ? pct->get<double>() : 0.25;
    if (!(f > 0.0) || f > 1.0) fail(where, "rotary_pct must be in (0, 1]");
    const int64_t dims = static_cast<int64_t>(static_cast<double>(s.head_dim) * f);
    if (dims % 2 != 0 || dims == 0) fail(where, "rotary_pct gives an odd or zero number of rotary dims");
    s.rotary_dim = dims == s.head_dim ? 0 : dims;
  }
}

void neox_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain || !s.fused_qkv)
    fail("config.json", "not a gpt_neox block");
  if (!s.qkv_per_head)
    fail("config.json", "this gpt_neox model came from a GGUF, whose query_key_value is reordered; merging it to a "
                        "Hugging Face directory is not supported yet (merge it to GGUF)");
  if (s.qkv_bias != s.o_bias || !s.mlp_bias) fail("config.json", "gpt_neox has biases on all attention Linears or none, and always on the MLP");
  j["hidden_act"] = activation_name(s.act);
  j["layer_norm_eps"] = s.norm_eps;
  j["use_parallel_residual"] = s.parallel_residual;
  j["attention_bias"] = s.qkv_bias;
  const double pct = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
  j["rotary_pct"] = pct;  // (older transformers)
  j["partial_rotary_factor"] = pct;
  j["rotary_emb_base"] = s.rope_theta;
}

// llama.cpp's gptneox GGUF: its converter reorders query_key_value from per head (q k v of
// head 0, of head 1, ...) to all q, then all k, then all v.
void neox_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.act = Activation::Gelu;
  s.fused_qkv = true;
  s.qkv_per_head = false;
  s.parallel_residual = hp.parallel_residual;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
}

}  // namespace

constexpr GgufLayerName kNeoXGgufNames[] = {kFusedQkvGgufName};
const ModelFamily kGptNeoX = [] {
  ModelFamily f{"gpt_neox", "GPTNeoXForCausalLM", "gptneox", 0, 2048, 10000.0f, false, false, neox_read,
                neox_write, neox_gguf, {}, true, kNeoXRenames, true};
  f.gguf_layer_names = kNeoXGgufNames;
  return f;
}();

}  // namespace qlora::families
