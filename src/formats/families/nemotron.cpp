// Nemotron (model_type "nemotron", NemotronForCausalLM: Nemotron-4 / Minitron 4B and 8B,
// Nemotron-Mini-4B): Llama's attention with LayerNorm1P norms -- LayerNorms with biases whose
// weight is 1 + w -- a plain up_proj / relu^2 / down_proj MLP, partial rotary
// (partial_rotary_factor, 0.5 when the config leaves it out) in rotate_half form and an
// untied head. GGUF both ways as llama.cpp's "nemotron" (its converter stores the norms'
// 1 + w, as for Gemma).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void nemotron_block(ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.norm_unit_offset = true;
  s.mlp = MlpKind::Plain;
  s.act = Activation::Relu2;
}

void nemotron_read(const json& j, const std::string& where, ModelSpec& s) {
  nemotron_block(s);
  s.norm_eps = config::get_float(j, "norm_eps", where, 1e-5f);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  const json* a = config::find_key(j, "hidden_act");
  const std::string act = a && a->is_string() ? a->get<std::string>() : (a ? "" : "relu2");
  if (act != "relu2")
    fail(where, "hidden_act " + (a ? config::shown(*a) : std::string("?")) + " is not supported for nemotron (relu2)");
  // NemotronConfig's default partial_rotary_factor is 0.5 (the shared reader applies an explicit one).
  const json* rp = config::find_key(j, "rope_parameters");
  if (!config::find_key(j, "partial_rotary_factor") &&
      !(rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor"))) {
    s.rotary_dim = s.head_dim / 2;
    if (s.rotary_dim % 2 != 0 || s.rotary_dim == 0)
      fail(where, "nemotron's default partial_rotary_factor 0.5 gives " + std::to_string(s.rotary_dim) +
                      " rotary dims of a head of " + std::to_string(s.head_dim) + "; it must be even and positive");
  }
}

void nemotron_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || !s.norm_unit_offset || s.mlp != MlpKind::Plain || s.act != Activation::Relu2 ||
      s.qkv_bias != s.o_bias)
    fail("config.json", "not a nemotron block");
  j["norm_eps"] = s.norm_eps;
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
  j["hidden_act"] = "relu2";
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
}

void nemotron_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) { nemotron_block(s); }

}  // namespace

const ModelFamily kNemotron = [] {
  ModelFamily f{"nemotron", "NemotronForCausalLM", "nemotron", 0, 4096, 10000.0f, false, false, nemotron_read,
                nemotron_write, nemotron_gguf, {}, true, {}, true};
  return f;
}();

}  // namespace qlora::families
