// Swiss AI's Apertus (model_type "apertus", ApertusForCausalLM: Apertus-8B / -70B, 2509): Llama's
// attention with per-head q/k RMSNorms (after the projections, before the rotary, as Qwen3's) and an
// ungated MLP up_proj -> xIELU -> down_proj, xIELU with four parameters per layer (mlp.act_fn.alpha_p,
// alpha_n, beta, eps: XieluParams); its norms are attention_layernorm / feedforward_layernorm; the
// rotary llama3-scaled by default (ApertusConfig: rope_theta 12e6, factor 8 over 8192 positions).
// GGUF both ways as llama.cpp's "apertus" (its converter leaves q/k unpermuted and writes the xIELU
// parameters as per-layer arrays xielu.alpha_p / alpha_n / beta / eps, as stored: its graph applies
// the softplus).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void apertus_block(ModelSpec& s) {
  s.qk_norm = true;
  s.mlp = MlpKind::Plain;
  s.act = Activation::Xielu;
}

// ApertusConfig's rotary when config.json has none (its __post_init__ fills it in; saved configs carry it).
void apertus_normalize(json& j) {
  for (const char* k : {"rope_parameters", "rope_scaling"})  // (null as absent: the class's default then)
    if (const json* v = config::find_key(j, k); v && !v->is_null()) return;
  j.erase("rope_scaling");
  // (its theta too: the class's default dict wins over a top-level rope_theta, as convert_rope_params_to_dict
  // only fills in what the dict lacks)
  j["rope_theta"] = 12000000.0;
  j["rope_parameters"] = {{"rope_type", "llama3"},           {"rope_theta", 12000000.0},
                          {"factor", 8.0},                   {"original_max_position_embeddings", 8192},
                          {"low_freq_factor", 1.0},          {"high_freq_factor", 4.0}};
}

void apertus_read(const json& j, const std::string& where, ModelSpec& s) {
  apertus_block(s);
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);  // (ApertusConfig's default)
  const json* a = config::find_key(j, "hidden_act");
  if (a && !(a->is_string() && a->get<std::string>() == "xielu"))
    fail(where, "hidden_act " + config::shown(*a) + " is not supported for apertus (xielu)");
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
}

void apertus_write(const ModelSpec& s, ordered_json& j) {
  if (!s.qk_norm || s.mlp != MlpKind::Plain || s.act != Activation::Xielu || s.qkv_bias != s.o_bias || s.mlp_bias ||
      s.norm != NormKind::RMSNorm)
    fail("config.json", "not an apertus block");
  j["hidden_act"] = "xielu";
  j["attention_bias"] = s.qkv_bias;
  // (an unscaled rotary said explicitly: without it ApertusConfig, and our reader, take llama3)
  if (s.rope_scaling.type == RopeScaling::Type::None) j["rope_scaling"] = {{"rope_type", "default"}, {"rope_theta", s.rope_theta}};
}

void apertus_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) { apertus_block(s); }

// Its module tree's norm names.
constexpr HfRename kApertusRenames[] = {{".attention_layernorm.", ".input_layernorm."},
                                        {".feedforward_layernorm.", ".post_attention_layernorm."}};

}  // namespace

const ModelFamily kApertus = [] {
  ModelFamily f{"apertus", "ApertusForCausalLM", "apertus", 0, 65536, 12000000.0f, false, false, apertus_read,
                apertus_write, apertus_gguf};
  f.hf_renames = kApertusRenames;
  f.own_activation = true;
  f.normalize_config = apertus_normalize;
  return f;
}();

}  // namespace qlora::families
