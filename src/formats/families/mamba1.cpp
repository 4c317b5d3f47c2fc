// Mamba (model_type "mamba", MambaForCausalLM: the state-spaces mamba-130m ... 2.8b models in
// Hugging Face form) and Falcon-Mamba (model_type "falcon_mamba", FalconMambaForCausalLM: TII's
// falcon-mamba-7b and Falcon3-Mamba): every layer an RMSNorm, then the Mamba (1) mixer
// (model/mamba1.h; ModelSpec::la_mamba1), then the residual add -- no attention and no MLP
// (ModelSpec::no_mlp); the final norm norm_f; embeddings under backbone.embeddings. Falcon-Mamba
// adds weightless RMSNorms on the mixer's dt, B and C (mixer_rms_eps). The inner width is
// intermediate_size where config.json has it (transformers 5 computes expand x hidden_size, then
// sets the file's leftover keys over it: falcon-mamba-7b says expand 16 and intermediate_size 8192),
// else expand x hidden_size; time_step_rank "auto" is ceil(hidden_size / 16). residual_in_fp32 (the configs' default) keeps the residual adds
// unrounded in bf16 / fp16 (ModelSpec::residual_fp32).
//
// GGUF both ways as llama.cpp's mamba (head_count and feed_forward_length 0, ssm.* sizes;
// ssm.dt_b_c_rms marks Falcon-Mamba, read back as falcon_mamba). llama.cpp's graph runs those
// norms with the layers' layer_norm_rms_epsilon, the GGUF having no key for mixer_rms_eps: a
// falcon_mamba GGUF is read so, as llama.cpp runs it.
//
// transformers' MambaMixer multiplies by dt_proj.weight itself (`self.dt_proj.weight @ time_step`,
// its bias added apart), bypassing an adapter on dt_proj: under PEFT it would do nothing, so for
// mamba all-linear leaves dt_proj out and naming it is refused (ModelFamily::peft_bypassed_linear).
// (Nor can transformers run a bitsandbytes-quantized MambaForCausalLM: dt_proj.weight is then packed
// 4-bit codes that matmul does not dequantize; qlora quantizes and runs it.) FalconMambaMixer takes
// the same shortcut only unquantized: a QLoRA model (config._is_quantized) calls dt_proj(t) - bias,
// so an adapter there is live: falcon_mamba adapts dt_proj when it is quantized (4-/8-bit) and
// leaves it out (refuses it by name) when not. PEFT's refusal of out_proj and conv1d holds for
// both, as for Mamba2.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void mamba1_normalize(json& j) {
  if (!j.contains("hidden_size")) j["hidden_size"] = 768;
  if (!j.contains("vocab_size")) j["vocab_size"] = 50280;
  if (!j.contains("num_hidden_layers")) j["num_hidden_layers"] = 32;
  // (no attention: one placeholder head of the hidden size; no MLP: a placeholder width. The
  // mixer's keys stay under their own names for the reader below.)
  j["num_attention_heads"] = 1;
  j["num_key_value_heads"] = 1;
  if (j["hidden_size"].is_number_integer()) j["head_dim"] = j["hidden_size"];
  if (j.contains("intermediate_size")) j["mamba_inner_size"] = j["intermediate_size"];
  if (j["hidden_size"].is_number_integer()) j["intermediate_size"] = j["hidden_size"];
  j["rms_norm_eps"] = j.contains("layer_norm_epsilon") ? j["layer_norm_epsilon"] : json(1e-5);
}

void mamba1_read(const json& j, const std::string& where, ModelSpec& s) {
  s.residual_fp32 = config::get_bool(j, "residual_in_fp32", where, true);
  s.no_mlp = true;
  if (s.n_layers <= 0) fail(where, "a Mamba model needs at least one layer");
  int64_t inner = 0;
  if (config::find_key(j, "mamba_inner_size")) {
    inner = config::get_int(j, "mamba_inner_size", where);
    if (inner <= 0 || inner > (int64_t{1} << 20)) fail(where, "intermediate_size must be positive, got " + std::to_string(inner));
  } else {
    const int64_t expand = config::get_int(j, "expand", where, 2);
    if (expand <= 0 || expand > 64) fail(where, "expand must be between 1 and 64, got " + std::to_string(expand));
    inner = expand * s.hidden;
  }
  read_mamba1_keys(j, where, s, std::vector<bool>(static_cast<size_t>(s.n_layers), true), inner,
                   {"state_size", "conv_kernel", "use_conv_bias", "use_bias", "time_step_rank"});
  if (s.family == "falcon_mamba") {
    s.la_bcdt_norm = true;
    s.la_bcdt_eps = config::get_float(j, "mixer_rms_eps", where, 1e-6f);
  }
  // (the hidden activation is the conv's: transformers applies hidden_act there; only SiLU here,
  // which the shared reader of hidden_act enforces)
}

void mamba1_write(const ModelSpec& s, ordered_json& j) {
  if (!s.no_mlp || !s.la_mamba1 || s.moe()) fail("config.json", "not a mamba model");
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (!s.layer_is_linear_attn(l)) fail("config.json", "a mamba model has Mamba layers only");
  // (intermediate_size is what transformers runs; expand beside it when it is a whole factor)
  if (s.la_value_dim() % s.hidden == 0) j["expand"] = s.la_value_dim() / s.hidden;
  j["intermediate_size"] = s.la_value_dim();
  j["state_size"] = s.la_k_dim;
  j["conv_kernel"] = s.la_conv_kernel;
  j["use_conv_bias"] = s.la_conv_bias;
  j["use_bias"] = s.la_proj_bias;
  j["time_step_rank"] = s.la_dt_rank;
  j["layer_norm_epsilon"] = j["rms_norm_eps"];
  j["residual_in_fp32"] = s.residual_fp32;
  if (s.la_bcdt_norm) j["mixer_rms_eps"] = s.la_bcdt_eps;
  for (const char* k : {"num_attention_heads", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings",
                        "rope_theta", "head_dim"})
    j.erase(k);
}

// As llama.cpp runs a mamba GGUF (its converter's MambaModel): every layer a Mamba mixer with the
// conv's bias, no projection biases, sized by the ssm.* keys; ssm.dt_b_c_rms: Falcon-Mamba's norms
// (with the layers' epsilon, as llama.cpp's graph runs them); residual_in_fp32 as the configs'
// default (the GGUF does not say; it matters in bf16 / fp16 only).
void mamba1_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.no_mlp = true;
  s.residual_fp32 = true;
  read_mamba1_gguf(hp, s, std::vector<bool>(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), true));
  if (hp.ssm_dt_b_c_rms) {
    s.family = "falcon_mamba";
    s.la_bcdt_norm = true;
    s.la_bcdt_eps = s.norm_eps;
  }
}

}  // namespace

void read_mamba1_keys(const json& j, const std::string& where, ModelSpec& s, std::vector<bool> mamba, int64_t inner,
                      const Mamba1Keys& keys) {
  s.linear_attn_layers = std::move(mamba);
  s.la_mamba1 = true;
  s.la_v_heads = inner;
  s.la_v_dim = 1;
  s.la_k_heads = 1;
  s.la_k_dim = config::get_int(j, keys.state, where, 16);
  s.la_conv_kernel = config::get_int(j, keys.conv, where, 4);
  s.la_conv_bias = config::get_bool(j, keys.conv_bias, where, true);
  s.la_proj_bias = config::get_bool(j, keys.proj_bias, where, false);
  const json* r = config::find_key(j, keys.dt_rank);
  if (!r || (r->is_string() && r->get<std::string>() == "auto"))
    s.la_dt_rank = (s.hidden + 15) / 16;
  else if (r->is_number_integer())
    s.la_dt_rank = r->get<int64_t>();
  else
    fail(where, std::string(keys.dt_rank) + " must be an integer or \"auto\", got " + config::shown(*r));
}

void read_mamba1_gguf(const GgufLlamaHParams& hp, ModelSpec& s, std::vector<bool> mamba) {
  if (hp.ssm_conv_kernel <= 0 || hp.ssm_time_step_rank <= 0 || hp.ssm_state_size <= 0 || hp.ssm_inner_size <= 0)
    fail(hp.path, "a " + hp.architecture + " GGUF with Mamba layers but without its ssm.* sizes (conv_kernel, state_size, "
                  "time_step_rank, inner_size)");
  s.linear_attn_layers = std::move(mamba);
  s.la_mamba1 = true;
  s.la_conv_bias = true;
  s.la_v_heads = hp.ssm_inner_size;
  s.la_v_dim = 1;
  s.la_k_heads = 1;
  s.la_k_dim = hp.ssm_state_size;
  s.la_dt_rank = hp.ssm_time_step_rank;
  s.la_conv_kernel = hp.ssm_conv_kernel;
}

// Its files: backbone.* for model.*, the embeddings, norm_f, each layer's norm and mixer (the order
// the renames run in either direction: model_family.h).
constexpr HfRename kMambaRenames[] = {{"backbone.embeddings.", "model.embed_tokens."},
                                      {"backbone.layers.", "model.layers."},
                                      {".norm.", ".input_layernorm."},
                                      {"backbone.norm_f.", "model.norm."},
                                      {".mixer.", ".linear_attn."},
                                      {".linear_attn.in_proj.", ".linear_attn.in_proj_qkv."},
                                      {".linear_attn.x_proj.", ".linear_attn.in_proj_b."},
                                      {".linear_attn.dt_proj.", ".linear_attn.in_proj_a."}};

namespace {
ModelFamily mamba1_family(std::string_view model_type, std::string_view hf_class, std::string_view gguf_arch) {
  ModelFamily f{model_type, hf_class, gguf_arch, 0, int64_t{1} << 20, 10000.0f, true, false, mamba1_read, mamba1_write,
                mamba1_gguf};
  f.hf_renames = kMambaRenames;
  f.normalize_config = mamba1_normalize;
  f.gguf_layer_names = kMamba1GgufNames;
  f.gguf_layer_params = kMamba1GgufParams;
  f.peft_refuses_out_proj = true;
  return f;
}
}  // namespace

const ModelFamily kMamba = [] {
  ModelFamily f = mamba1_family("mamba", "MambaForCausalLM", "mamba");
  f.peft_bypassed_linear = 10;  // dt_proj
  return f;
}();
// (llama.cpp's converter writes Falcon-Mamba as a mamba GGUF with ssm.dt_b_c_rms; read back through kMamba)
const ModelFamily kFalconMamba = [] {
  ModelFamily f = mamba1_family("falcon_mamba", "FalconMambaForCausalLM", "");
  f.peft_bypassed_linear = 10;  // dt_proj, when not quantized
  f.peft_bypass_unquantized_only = true;
  f.gguf_export_arch = "mamba";
  return f;
}();

}  // namespace qlora::families
