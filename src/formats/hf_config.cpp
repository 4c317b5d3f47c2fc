#include "formats/hf_config.h"

#include "formats/config_reader.h"
#include "formats/hf_wrapper.h"
#include "formats/model_family.h"

#include <cmath>
#include <optional>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/json_error.h"
#include "base/mapped_file.h"
#include "base/text_excerpt.h"

namespace qlora {

namespace {

using nlohmann::json;
using namespace config;  // get_int, find_key, ... (formats/config_reader.h)

json parse_file(const std::string& path) {
  const std::string text = python_json_literals(read_text_file(path));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(path, "not valid JSON" + json_error_at(e, text));
  }
  if (!j.is_object()) fail(path, "expected a JSON object");
  return j;
}

}  // namespace

namespace {

// A vision-language config (formats/hf_wrapper.h): its text_config, with the outer keys
// transformers takes from the outer config (tie_word_embeddings: the wrapper model ties its
// lm_head by its own flag) or that configs often keep only there (token ids).
json text_config_of(const json& outer, const HfWrapper& w, const std::string& where) {
  const json* tc = find_key(outer, "text_config");
  json t;
  if (tc && tc->is_object()) {
    t = *tc;
  } else if (w.flat_config && find_key(outer, "hidden_size")) {  // (Qwen2.5-VL's older files)
    t = outer;
    for (const char* k : {"vision_config", "model_type", "architectures"}) t.erase(k);
  } else {
    fail(where, "model_type '" + std::string(w.model_type) +
                    "' (a vision-language model) needs a \"text_config\" object describing its language model");
  }
  if (!find_key(t, "model_type")) t["model_type"] = std::string(w.default_text_type);
  if (!w.text_type_alias.empty() && t["model_type"] == std::string(w.text_type_alias))
    t["model_type"] = std::string(w.text_family);
  // Qwen's multimodal rotary (mrope_section, interleaved or not) gives every section the same
  // position on text: the plain rotary. (rope_type "default" beside it, or "type": "mrope")
  for (const char* k : {"rope_scaling", "rope_parameters"})
    if (json* rp = t.contains(k) ? &t[k] : nullptr; rp && rp->is_object() && rp->contains("mrope_section")) {
      for (const char* m : {"mrope_section", "mrope_interleaved"}) rp->erase(m);
      if (rp->value("type", "") == "mrope") rp->erase("type");
      if (!rp->contains("rope_type")) (*rp)["rope_type"] = "default";
    }
  const json* inner_type = find_key(t, "model_type");
  if (!inner_type->is_string() || find_hf_wrapper(inner_type->get<std::string>()))
    fail(where, "text_config's model_type " + shown(*inner_type) + " is not a language model's");
  const json* tie = find_key(outer, "tie_word_embeddings");
  t["tie_word_embeddings"] = tie && tie->is_boolean() ? tie->get<bool>() : w.default_tied;
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"})
    if (const json* v = find_key(outer, k); v && !find_key(t, k)) t[k] = *v;
  return t;
}

}  // namespace

ModelSpec spec_from_hf_config(const json& original, const std::string& where) {
  if (!original.is_object()) fail(where, "expected a JSON object");
  const json* mt = find_key(original, "model_type");
  if (!mt) fail(where, "missing key 'model_type'");
  if (!mt->is_string())
    fail(where, "key 'model_type' must be a string (such as \"llama\"), not " + std::string(mt->type_name()) + " " +
                    excerpt(mt->dump()));
  if (const HfWrapper* w = find_hf_wrapper(mt->get<std::string>())) {
    ModelSpec s = spec_from_hf_config(text_config_of(original, *w, where), where + " (text_config)");
    s.hf_wrapper = std::string(w->model_type);
    return s;
  }
  const ModelFamily& fam = family_or_fail(mt->get<std::string>(), where);
  json normalized;
  if (fam.normalize_config) {  // the family's own spelling of the shared keys
    normalized = original;
    fam.normalize_config(normalized);
  }
  const json& j = fam.normalize_config ? normalized : original;

  // The keys every family shares, with the family's class defaults; then its own keys.
  ModelSpec s;
  s.family = std::string(fam.model_type);
  s.hidden = get_int(j, "hidden_size", where);
  s.n_layers = get_int(j, "num_hidden_layers", where);
  s.n_heads = get_int(j, "num_attention_heads", where);
  s.n_kv_heads = get_int(j, "num_key_value_heads", where, s.n_heads);
  s.head_dim = get_int(j, "head_dim", where,
                       fam.default_head_dim ? fam.default_head_dim : s.n_heads > 0 ? s.hidden / s.n_heads : 0);
  s.ffn = get_int(j, "intermediate_size", where);
  s.vocab = get_int(j, "vocab_size", where);
  s.max_positions = get_int(j, "max_position_embeddings", where, fam.default_context);
  // transformers >= 5 writes rope_theta and the rope type inside "rope_parameters"; older
  // versions rope_theta at the top level and the type in "rope_scaling". (A rope_parameters
  // keyed by layer type is the family's to read: gemma3_text.)
  s.rope_theta = get_float(j, "rope_theta", where, fam.default_rope_theta);
  if (const json* rp = find_key(j, "rope_parameters"); rp && !rp->is_object())
    fail(where, "rope_parameters " + shown(*rp) + " must be an object");
  if (const json* rp = find_key(j, "rope_parameters"); rp && rp->is_object() && !find_key(*rp, "full_attention")) {
    if (!find_key(j, "rope_theta")) s.rope_theta = get_float(*rp, "rope_theta", where, fam.default_rope_theta);
    s.rope_scaling = parse_rope_scaling(*rp, "rope_parameters", max_positions_hint(j), where);
  }
  if (const json* rs = find_key(j, "rope_scaling")) {
    if (!rs->is_object()) fail(where, "rope_scaling " + shown(*rs) + " must be an object");
    const RopeScaling sc = parse_rope_scaling(*rs, "rope_scaling", s.max_positions, where);
    if (sc.type != RopeScaling::Type::None) s.rope_scaling = sc;
  }
  s.norm_eps = get_float(j, "rms_norm_eps", where, 1e-6f);
  s.tied_embeddings = get_bool(j, "tie_word_embeddings", where, fam.default_tied);
  if (fam.read_config) fam.read_config(j, where, s);
  // Dynamic NTK scaling exists to run past the trained context: up to factor times it.
  if (s.rope_scaling.type == RopeScaling::Type::Dynamic)
    s.max_positions = static_cast<int64_t>(static_cast<double>(s.rope_scaling.original_max_positions) *
                                           static_cast<double>(s.rope_scaling.factor));
  if (s.n_heads > 0 && s.hidden % s.n_heads != 0 && !find_key(j, "head_dim"))
    fail(where, "hidden_size " + std::to_string(s.hidden) + " is not a multiple of num_attention_heads " +
                    std::to_string(s.n_heads));

  // The MLP's activation: silu for the llama family; the tanh GELU for gemma, which older
  // configs spell "gelu" (transformers maps it to the tanh form, as the releases meant).
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (fam.own_activation) break;  // (the family read it)
    const json* act = find_key(j, key);
    if (!act) continue;
    const std::string a = act->is_string() ? act->get<std::string>() : std::string();
    const bool ok = fam.gelu_mlp ? (a == "gelu_pytorch_tanh" || a == "gelu" || a == "gelu_new") : a == "silu";
    if (!ok)
      fail(where, std::string(key) + " " + shown(*act) + " is not supported for " + s.family + " (only " +
                      (fam.gelu_mlp ? "gelu_pytorch_tanh" : "silu") + ")");
  }
  // Partial rotary (phi-4-mini): the first int(head_dim * factor) dims of each head rotate.
  // (transformers >= 5 keeps the factor in rope_parameters, older versions at the top level.)
  const json* pf = find_key(j, "partial_rotary_factor");
  if (const json* rp = find_key(j, "rope_parameters"); !pf && rp && rp->is_object())
    pf = find_key(*rp, "partial_rotary_factor");
  if (pf) {
    if (!pf->is_number() || !(pf->get<double>() > 0.0) || pf->get<double>() > 1.0)
      fail(where, "partial_rotary_factor " + shown(*pf) + " must be a number in (0, 1]");
    if (pf->get<double>() != 1.0) {
      if (!fam.partial_rotary)
        fail(where, "partial_rotary_factor " + shown(*pf) + " is not supported for " + s.family);
      s.rotary_dim = static_cast<int64_t>(static_cast<double>(s.head_dim) * pf->get<double>());
      if (s.rotary_dim % 2 != 0 || s.rotary_dim == 0)
        fail(where, "partial_rotary_factor " + shown(*pf) + " gives " + std::to_string(s.rotary_dim) +
                        " rotary dims of a head of " + std::to_string(s.head_dim) + "; it must be even and positive");
    }
  }
  const std::vector<int> bos = get_ids(j, "bos_token_id", where);
  if (!bos.empty()) s.bos_id = bos[0];
  s.eos_ids = get_ids(j, "eos_token_id", where);
  const std::vector<int> pad = get_ids(j, "pad_token_id", where);
  if (!pad.empty()) s.pad_id = pad[0];
  s.validate(where);
  return s;
}

ModelSpec read_hf_config(const std::string& path) { return spec_from_hf_config(parse_file(path), path); }

json read_config_json(const std::string& path) { return parse_file(path); }

GenerationConfig generation_config_from_json(const json& j, const std::string& where) {
  GenerationConfig g;
  if (!j.is_object()) fail(where, "expected a JSON object");
  const std::vector<int> bos = get_ids(j, "bos_token_id", where);
  if (!bos.empty()) g.bos_id = bos[0];
  g.eos_ids = get_ids(j, "eos_token_id", where);
  const std::vector<int> pad = get_ids(j, "pad_token_id", where);
  if (!pad.empty()) g.pad_id = pad[0];
  if (find_key(j, "do_sample")) g.do_sample = get_bool(j, "do_sample", where, false);
  if (find_key(j, "temperature")) g.temperature = get_float(j, "temperature", where, 1.0f);
  if (find_key(j, "top_p")) g.top_p = get_float(j, "top_p", where, 1.0f);
  if (find_key(j, "repetition_penalty")) g.repetition_penalty = get_float(j, "repetition_penalty", where, 1.0f);
  if (find_key(j, "top_k")) g.top_k = static_cast<int>(get_int(j, "top_k", where));
  if (find_key(j, "max_new_tokens")) g.max_new_tokens = static_cast<int>(get_int(j, "max_new_tokens", where));
  return g;
}

GenerationConfig read_generation_config(const std::string& path) {
  return generation_config_from_json(parse_file(path), path);
}

}  // namespace qlora
