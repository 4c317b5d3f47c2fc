// Phi-1, Phi-1.5 and Phi-2 (model_type "phi", PhiForCausalLM): one LayerNorm (with bias) per
// block feeding attention and the MLP in parallel (x + attn(ln(x)) + mlp(ln(x))), separate
// q/k/v with biases and an output projection named "dense", partial rotary
// (partial_rotary_factor, 0.5 when the config leaves it out; Phi-2 uses 0.4) in the
// rotate-halves form, a plain fc1 / gelu_new / fc2 MLP with biases, a final LayerNorm
// (final_layernorm) and an untied head with a bias. GGUF both ways as llama.cpp's "phi2"
// (convert_hf_to_gguf.py's Phi2Model keeps the three q/k/v tensors; GGUFs made from the
// original checkpoint's fused Wqkv hold attn_qkv, read as a fused Linear). qk_layernorm
// (per-head LayerNorms on q and k, off in every released Phi) is refused.
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr HfRename kPhiRenames[] = {
    {"model.final_layernorm.", "model.norm."},
    {".self_attn.dense.", ".self_attn.o_proj."},
    {".mlp.fc1.", ".mlp.up_proj."},
    {".mlp.fc2.", ".mlp.down_proj."},
};

// The block every Phi model has; the config only sizes it.
void phi_block(ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.mlp = MlpKind::Plain;
  s.parallel_residual = s.shared_branch_norm = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = true;
  s.head_bias = true;
}

void phi_read(const json& j, const std::string& where, ModelSpec& s) {
  phi_block(s);
  s.act = config::gelu_family_activation(j, "hidden_act", where, "phi", "gelu_new", /*relu_ok=*/false);
  s.norm_eps = config::get_float(j, "layer_norm_eps", where, 1e-5f);
  if (config::get_bool(j, "qk_layernorm", where, false))
    fail(where, "qk_layernorm true (per-head LayerNorms on q and k) is not supported for phi; no released Phi "
                "model uses it");
  // PhiConfig's default partial_rotary_factor is 0.5 (the shared reader applies an explicit one).
  const json* rp = config::find_key(j, "rope_parameters");
  const bool has_factor = config::find_key(j, "partial_rotary_factor") ||
                          (rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor"));
  if (!has_factor) {
    s.rotary_dim = s.head_dim / 2;
    if (s.rotary_dim % 2 != 0 || s.rotary_dim == 0)
      fail(where, "phi's default partial_rotary_factor 0.5 gives " + std::to_string(s.rotary_dim) +
                      " rotary dims of a head of " + std::to_string(s.head_dim) + "; it must be even and positive");
  }
}

void phi_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.mlp != MlpKind::Plain || !s.parallel_residual || !s.shared_branch_norm)
    fail("config.json", "not a phi block");
  if (!s.qkv_bias || !s.o_bias || !s.mlp_bias || !s.head_bias)
    fail("config.json", "phi has biases on every Linear and on the head; this model lacks some");
  if (s.fused_qkv)
    fail("config.json", "this phi model came from a GGUF with a fused attn_qkv; PhiForCausalLM has separate q/k/v, "
                        "so merging it to a Hugging Face directory is not supported (merge it to GGUF)");
  j["hidden_act"] = s.act == Activation::Gelu ? "gelu" : "gelu_new";
  j["layer_norm_eps"] = s.norm_eps;
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
  j["qk_layernorm"] = false;
  j["resid_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
}

// llama.cpp's phi2: the same block; its GELU is the tanh form.
void phi_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  phi_block(s);
  s.act = Activation::GeluTanh;
  s.fused_qkv = hp.fused_qkv;
}

}  // namespace

constexpr GgufLayerName kPhiGgufNames[] = {kFusedQkvGgufName};
const ModelFamily kPhi = [] {
  ModelFamily f{"phi", "PhiForCausalLM", "phi2", 0, 2048, 10000.0f, false, false, phi_read, phi_write, phi_gguf,
                {}, true, kPhiRenames, true};
  f.gguf_layer_names = kPhiGgufNames;
  return f;
}();

}  // namespace qlora::families
