#include "formats/hf_config.h"

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

// A config value as JSON, short and escaped (a config.json is input like any other).
std::string shown(const json& v) { return safe_message(v.dump(), kExcerptBytes); }

const json* find_key(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t get_int(const json& j, const char* key, const std::string& where, std::optional<int64_t> dflt = {}) {
  const json* v = find_key(j, key);
  if (!v) {
    if (dflt) return *dflt;
    fail(where, std::string("missing key '") + key + "'");
  }
  if (!v->is_number_integer()) fail(where, std::string("key '") + key + "' must be an integer, got " + shown(*v));
  return v->get<int64_t>();
}

float get_float(const json& j, const char* key, const std::string& where, float dflt) {
  const json* v = find_key(j, key);
  if (!v) return dflt;
  if (!v->is_number()) fail(where, std::string("key '") + key + "' must be a number, got " + shown(*v));
  return v->get<float>();
}

bool get_bool(const json& j, const char* key, const std::string& where, bool dflt) {
  const json* v = find_key(j, key);
  if (!v) return dflt;
  if (!v->is_boolean()) fail(where, std::string("key '") + key + "' must be true or false, got " + shown(*v));
  return v->get<bool>();
}

// An id or a list of ids (eos_token_id may be either).
std::vector<int> get_ids(const json& j, const char* key, const std::string& where) {
  const json* v = find_key(j, key);
  std::vector<int> ids;
  if (!v) return ids;
  auto one = [&](const json& e) {
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > (int64_t{1} << 30))
      fail(where, std::string("key '") + key + "' must hold token ids, got " + shown(*v));
    ids.push_back(e.get<int>());
  };
  if (v->is_array())
    for (const json& e : *v) one(e);
  else
    one(*v);
  return ids;
}

// max_position_embeddings before the spec has it (yarn's default factor needs it).
int64_t s_max_positions_hint(const json& j) {
  const json* v = find_key(j, "max_position_embeddings");
  return v && v->is_number_integer() ? v->get<int64_t>() : 0;
}

// The rope type of a rope_parameters / rope_scaling object ("rope_type", or the older
// "type") and its parameters, as transformers' rope init functions read them.
RopeScaling parse_rope_scaling(const json& rp, const char* key, int64_t max_positions, const std::string& where) {
  RopeScaling sc;
  const json* t = find_key(rp, "rope_type");
  if (!t) t = find_key(rp, "type");
  const std::string type = t && t->is_string() ? t->get<std::string>() : "default";
  const std::string in = std::string(key) + " " + shown(rp);
  auto num = [&](const char* k, std::optional<float> dflt) -> float {
    const json* v = find_key(rp, k);
    if (!v) {
      if (!dflt) fail(where, in + ": rope_type " + type + " needs '" + k + "'");
      return *dflt;
    }
    if (!v->is_number()) fail(where, in + ": '" + k + "' must be a number");
    return v->get<float>();
  };
  auto positive = [&](const char* k, float v) {
    if (!(v > 0.0f) || !std::isfinite(v)) fail(where, in + ": '" + k + "' must be positive");
    return v;
  };
  if (type == "default") return sc;
  if (type == "linear") {
    sc.type = RopeScaling::Type::Linear;
    sc.factor = positive("factor", num("factor", std::nullopt));
  } else if (type == "llama3") {
    sc.type = RopeScaling::Type::Llama3;
    sc.factor = positive("factor", num("factor", std::nullopt));
    sc.low_freq_factor = positive("low_freq_factor", num("low_freq_factor", std::nullopt));
    sc.high_freq_factor = positive("high_freq_factor", num("high_freq_factor", std::nullopt));
    sc.original_max_positions = static_cast<int64_t>(num("original_max_position_embeddings", std::nullopt));
    if (sc.high_freq_factor <= sc.low_freq_factor) fail(where, in + ": high_freq_factor must exceed low_freq_factor");
  } else if (type == "yarn") {
    sc.type = RopeScaling::Type::Yarn;
    sc.original_max_positions = static_cast<int64_t>(num("original_max_position_embeddings", std::nullopt));
    if (sc.original_max_positions <= 0) fail(where, in + ": original_max_position_embeddings must be positive");
    const json* f = find_key(rp, "factor");
    sc.factor = f ? positive("factor", num("factor", std::nullopt))
                  : static_cast<float>(static_cast<double>(max_positions) / static_cast<double>(sc.original_max_positions));
    auto mscale_of = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
    if (find_key(rp, "attention_factor")) {
      sc.attention_factor = positive("attention_factor", num("attention_factor", std::nullopt));
    } else {
      const float ms = num("mscale", 0.0f), msa = num("mscale_all_dim", 0.0f);
      sc.attention_factor = ms != 0.0f && msa != 0.0f
                                ? static_cast<float>(mscale_of(sc.factor, ms) / mscale_of(sc.factor, msa))
                                : static_cast<float>(mscale_of(sc.factor, 1.0));
    }
    sc.beta_fast = num("beta_fast", 32.0f);
    sc.beta_slow = num("beta_slow", 1.0f);
    if (sc.beta_fast == 0.0f) sc.beta_fast = 32.0f;  // transformers: `get("beta_fast") or 32`
    if (sc.beta_slow == 0.0f) sc.beta_slow = 1.0f;
    if (const json* tr = find_key(rp, "truncate")) {
      if (!tr->is_boolean()) fail(where, in + ": 'truncate' must be true or false");
      sc.truncate = tr->get<bool>();
    }
  } else {
    fail(where, in + ": rope_type " + excerpt(type) + " is not supported yet (default, linear, llama3, yarn)");
  }
  if (const json* pf = find_key(rp, "partial_rotary_factor"); pf && !(pf->is_number() && pf->get<double>() == 1.0))
    fail(where, in + ": partial_rotary_factor " + shown(*pf) + " is not supported");
  return sc;
}

json parse_file(const std::string& path) {
  const std::string text = read_text_file(path);
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

ModelSpec spec_from_hf_config(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, "expected a JSON object");
  const json* mt = find_key(j, "model_type");
  if (!mt || !mt->is_string()) fail(where, "missing key 'model_type'");
  const std::string type = mt->get<std::string>();
  if (type != "llama" && type != "mistral" && type != "qwen2" && type != "qwen3" && type != "gemma" &&
      type != "gemma2" && type != "gemma3_text") {
    const char* hint = type == "gemma3" ? " (a Gemma 3 with vision: only the text-only gemma3_text models, e.g. "
                                          "gemma-3-1b / 270m, load for now)"
                                        : "";
    fail(where, "model_type " + excerpt(type) + " is not supported (supported: llama, mistral, qwen2, qwen3, gemma, "
                                                 "gemma2, gemma3_text)" + hint);
  }
  const bool gemma = type == "gemma" || type == "gemma2" || type == "gemma3_text";

  ModelSpec s;
  s.family = type;
  s.hidden = get_int(j, "hidden_size", where);
  s.n_layers = get_int(j, "num_hidden_layers", where);
  s.n_heads = get_int(j, "num_attention_heads", where);
  s.n_kv_heads = get_int(j, "num_key_value_heads", where, s.n_heads);
  // Qwen3Config's head_dim defaults to 128 whatever the hidden size; the others derive it.
  s.head_dim = get_int(j, "head_dim", where,
                       type == "qwen3" ? 128 : gemma ? 256 : s.n_heads > 0 ? s.hidden / s.n_heads : 0);
  s.ffn = get_int(j, "intermediate_size", where);
  s.vocab = get_int(j, "vocab_size", where);
  const int64_t default_ctx = type == "llama" ? 2048 : type == "mistral" ? 4096 * 32 : gemma ? 8192 : 32768;
  s.max_positions = get_int(j, "max_position_embeddings", where, default_ctx);
  // transformers >= 5 writes rope_theta and the rope type inside "rope_parameters"; older
  // versions rope_theta at the top level and the type in "rope_scaling".
  s.rope_theta = get_float(j, "rope_theta", where, type == "gemma3_text" ? 1000000.0f : 10000.0f);
  const json* rope_params = find_key(j, "rope_parameters");
  if (type == "gemma3_text") {
    // Two rotaries: the full-attention layers' (rope_theta, rope_scaling) and the sliding
    // layers' own base (rope_local_base_freq), in transformers 5 as rope_parameters keyed by
    // layer type.
    s.rope_local = true;
    s.rope_theta_local = get_float(j, "rope_local_base_freq", where, 10000.0f);
    if (rope_params && rope_params->is_object() && find_key(*rope_params, "full_attention")) {
      for (const char* lt : {"full_attention", "sliding_attention"}) {
        const json* p = find_key(*rope_params, lt);
        if (!p || !p->is_object()) fail(where, std::string("rope_parameters needs an object for '") + lt + "'");
        const bool full = std::string(lt) == "full_attention";
        (full ? s.rope_theta : s.rope_theta_local) = get_float(*p, "rope_theta", where, full ? 1000000.0f : 10000.0f);
        (full ? s.rope_scaling : s.rope_scaling_local) =
            parse_rope_scaling(*p, "rope_parameters", s_max_positions_hint(j), where);
      }
    } else if (rope_params && rope_params->is_object()) {
      if (!find_key(j, "rope_theta")) s.rope_theta = get_float(*rope_params, "rope_theta", where, 1000000.0f);
      s.rope_scaling = parse_rope_scaling(*rope_params, "rope_parameters", s_max_positions_hint(j), where);
    }
  } else if (rope_params && rope_params->is_object()) {
    if (!find_key(j, "rope_theta")) s.rope_theta = get_float(*rope_params, "rope_theta", where, 10000.0f);
    s.rope_scaling = parse_rope_scaling(*rope_params, "rope_parameters", s_max_positions_hint(j), where);
  }
  s.norm_eps = get_float(j, "rms_norm_eps", where, 1e-6f);
  s.tied_embeddings = get_bool(j, "tie_word_embeddings", where, gemma);
  if (type == "qwen2") {
    s.qkv_bias = true;
  } else if (type == "qwen3") {
    s.qk_norm = true;
    s.qkv_bias = s.o_bias = get_bool(j, "attention_bias", where, false);
  } else if (gemma) {
    s.mlp = MlpKind::GeGLU;
    s.norm_unit_offset = s.embed_scale = true;
    s.qkv_bias = s.o_bias = get_bool(j, "attention_bias", where, false);
    if (type == "gemma2" || type == "gemma3_text") {
      s.sandwich_norms = true;
      s.qk_norm = type == "gemma3_text";  // Gemma 3 normalizes each head of q and k, (1 + w) too
      const float caps = type == "gemma2" ? 1.0f : 0.0f;  // Gemma 3 has no soft caps by default
      // Gemma2Config's / Gemma3TextConfig's defaults where a config leaves them out.
      const float qpas = get_float(j, "query_pre_attn_scalar", where, 256.0f);
      if (!(qpas > 0.0f)) fail(where, "query_pre_attn_scalar must be positive");
      s.attn_scale = static_cast<float>(std::pow(static_cast<double>(qpas), -0.5));
      s.attn_softcap = find_key(j, "attn_logit_softcapping") || !j.contains("attn_logit_softcapping")
                           ? get_float(j, "attn_logit_softcapping", where, 50.0f * caps)
                           : 0.0f;
      s.final_softcap = find_key(j, "final_logit_softcapping") || !j.contains("final_logit_softcapping")
                            ? get_float(j, "final_logit_softcapping", where, 30.0f * caps)
                            : 0.0f;
      s.sliding_window = find_key(j, "sliding_window") || !j.contains("sliding_window")
                             ? get_int(j, "sliding_window", where, 4096)
                             : 0;
    }
  } else if (type == "llama") {
    s.qkv_bias = s.o_bias = get_bool(j, "attention_bias", where, false);
    s.mlp_bias = get_bool(j, "mlp_bias", where, false);
  }
  // Sliding-window attention: mistral's applies to every layer; qwen2/qwen3 turn theirs on
  // per layer (use_sliding_window, max_window_layers, layer_types), which is not implemented.
  if (type == "mistral") {
    s.sliding_window = get_int(j, "sliding_window", where, 0);
    if (s.sliding_window < 0) fail(where, "sliding_window must be positive or null, got " + std::to_string(s.sliding_window));
  } else if (type == "gemma2" || type == "gemma3_text") {
    // layer_types, or the config class's default: gemma2 slides on even layers (0, 2, ...);
    // gemma3 on all but every sliding_window_pattern-th (default 6: 5 local, 1 global).
    const int64_t pattern = type == "gemma2" ? 2 : get_int(j, "sliding_window_pattern", where, 6);
    if (pattern <= 0) fail(where, "sliding_window_pattern must be positive");
    s.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
    const json* lt = find_key(j, "layer_types");
    if (lt && (!lt->is_array() || static_cast<int64_t>(lt->size()) != s.n_layers))
      fail(where, "layer_types must list one entry per layer (" + std::to_string(s.n_layers) + ")");
    for (int64_t l = 0; l < s.n_layers; ++l) {
      if (!lt) {
        s.sliding_layers[static_cast<size_t>(l)] = (l + 1) % pattern != 0;
        continue;
      }
      const json& e = (*lt)[static_cast<size_t>(l)];
      const std::string t = e.is_string() ? e.get<std::string>() : "";
      if (t != "sliding_attention" && t != "full_attention")
        fail(where, "layer_types[" + std::to_string(l) + "] " + shown(e) + " is not supported");
      s.sliding_layers[static_cast<size_t>(l)] = t == "sliding_attention";
    }
  } else if (type == "qwen2" || type == "qwen3") {
    bool sliding = get_bool(j, "use_sliding_window", where, false);
    if (const json* lt = find_key(j, "layer_types"); lt && lt->is_array())
      for (const json& t : *lt) sliding = sliding || (t.is_string() && t.get<std::string>() == "sliding_attention");
    if (sliding) fail(where, "per-layer sliding-window attention (use_sliding_window / layer_types) is not supported yet");
  }
  if (s.n_heads > 0 && s.hidden % s.n_heads != 0 && !find_key(j, "head_dim"))
    fail(where, "hidden_size " + std::to_string(s.hidden) + " is not a multiple of num_attention_heads " +
                    std::to_string(s.n_heads));

  // The MLP's activation: silu for the llama family; the tanh GELU for gemma, which older
  // configs spell "gelu" (transformers maps it to the tanh form, as the releases meant).
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    const json* act = find_key(j, key);
    if (!act) continue;
    const std::string a = act->is_string() ? act->get<std::string>() : std::string();
    const bool ok = gemma ? (a == "gelu_pytorch_tanh" || a == "gelu" || a == "gelu_new") : a == "silu";
    if (!ok)
      fail(where, std::string(key) + " " + shown(*act) + " is not supported for " + type + " (only " +
                      (gemma ? "gelu_pytorch_tanh" : "silu") + ")");
  }
  if (const json* rs = find_key(j, "rope_scaling")) {
    if (!rs->is_object()) fail(where, "rope_scaling " + shown(*rs) + " must be an object");
    const RopeScaling sc = parse_rope_scaling(*rs, "rope_scaling", s.max_positions, where);
    if (sc.type != RopeScaling::Type::None) s.rope_scaling = sc;
  }
  if (const json* pf = find_key(j, "partial_rotary_factor")) {
    if (!pf->is_number() || pf->get<double>() != 1.0)
      fail(where, "partial_rotary_factor " + shown(*pf) + " is not supported");
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
