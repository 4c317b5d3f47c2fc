// Definitions for formats/config_reader.h.
#include "formats/config_reader.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora::config {

// A config value as JSON, short and escaped (a config.json is input like any other).
std::string shown(const json& v) { return safe_message(v.dump(), kExcerptBytes); }

const json* find_key(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t get_int(const json& j, const char* key, const std::string& where, std::optional<int64_t> dflt) {
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
Activation gelu_family_activation(const json& j, const char* key, const std::string& where, const std::string& family,
                                  const char* dflt, bool relu_ok) {
  const json* a = find_key(j, key);
  const std::string act = a && a->is_string() ? a->get<std::string>() : (a ? "" : dflt);
  if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") return Activation::GeluTanh;
  if (act == "gelu") return Activation::Gelu;
  if (act == "relu" && relu_ok) return Activation::Relu;
  fail(where, std::string(key) + " " + (a ? shown(*a) : std::string("?")) + " is not supported for " + family +
                  " (gelu_new, gelu_pytorch_tanh, gelu_fast, gelu" + (relu_ok ? ", relu)" : ")"));
}

std::vector<bool> every_nth_layer(int64_t layers, int64_t interval) {
  std::vector<bool> v(static_cast<size_t>(std::max<int64_t>(layers, 0)), false);
  for (int64_t l = 0; l < layers; ++l) v[static_cast<size_t>(l)] = (l + 1) % interval == 0;
  return v;
}

std::vector<bool> nope_layers(const json& j, int64_t n_layers, const std::string& where, bool empty_is_default) {
  std::vector<bool> nope;
  const json* nr = find_key(j, "no_rope_layers");
  if (nr && !(empty_is_default && nr->is_array() && nr->empty())) {
    if (!nr->is_array() || static_cast<int64_t>(nr->size()) != n_layers)
      fail(where, "no_rope_layers must list one 0/1 per layer (" + std::to_string(n_layers) + ")");
    nope.assign(static_cast<size_t>(n_layers), false);
    for (int64_t l = 0; l < n_layers; ++l) {
      const json& e = (*nr)[static_cast<size_t>(l)];
      if (!e.is_boolean() && (!e.is_number_integer() || (e.get<int64_t>() != 0 && e.get<int64_t>() != 1)))
        fail(where, "no_rope_layers[" + std::to_string(l) + "] " + shown(e) + " must be 0 or 1");
      nope[static_cast<size_t>(l)] = e.is_boolean() ? !e.get<bool>() : e.get<int64_t>() == 0;
    }
  } else {
    const int64_t interval = get_int(j, "no_rope_layer_interval", where, 4);
    if (interval <= 0) fail(where, "no_rope_layer_interval must be positive, got " + std::to_string(interval));
    nope = every_nth_layer(n_layers, interval);
  }
  if (std::find(nope.begin(), nope.end(), true) == nope.end()) nope.clear();
  return nope;
}

std::optional<std::vector<bool>> layer_type_flags(const json& j, int64_t n_layers, const std::string& where,
                                                  const char* flagged, const char* other) {
  const json* lt = find_key(j, "layer_types");
  if (!lt) return std::nullopt;
  if (!lt->is_array() || static_cast<int64_t>(lt->size()) != n_layers)
    fail(where, "layer_types must list one type per layer (" + std::to_string(n_layers) + ")");
  std::vector<bool> flags(static_cast<size_t>(n_layers), false);
  for (int64_t l = 0; l < n_layers; ++l) {
    const json& e = (*lt)[static_cast<size_t>(l)];
    const std::string t = e.is_string() ? e.get<std::string>() : "";
    if (t != flagged && t != other)
      fail(where, "layer_types[" + std::to_string(l) + "] " + shown(e) + " is not supported (this model's layers are \"" +
                      flagged + "\" or \"" + other + "\")");
    flags[static_cast<size_t>(l)] = t == flagged;
  }
  return flags;
}

std::optional<std::vector<bool>> sliding_layer_types(const json& j, int64_t n_layers, const std::string& where) {
  return layer_type_flags(j, n_layers, where, "sliding_attention", "full_attention");
}

std::optional<double> python_float(const json& v) {
  if (v.is_number()) return v.get<double>();
  const json* s = &v;
  if (v.is_object() && v.size() == 1 && v.contains("__float__")) s = &v["__float__"];
  if (!s->is_string()) return std::nullopt;
  const std::string t = s->get<std::string>();
  if (t == "Infinity" || t == "inf" || t == "+inf" || t == "+Infinity") return std::numeric_limits<double>::infinity();
  if (t == "-Infinity" || t == "-inf") return -std::numeric_limits<double>::infinity();
  if (t == "NaN" || t == "nan") return std::numeric_limits<double>::quiet_NaN();
  return std::nullopt;
}

std::string python_json_literals(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (std::string_view word : {"-Infinity", "Infinity", "NaN"}) {
      const size_t end = i + word.size();
      const bool bounded = end >= text.size() || !(std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_');
      if (text.substr(i, word.size()) == word && bounded) {
        out += "{\"__float__\": \"";
        out += word;
        out += "\"}";
        i = end - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

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

void alias_key(json& j, const char* shared, const char* own) {
  if (!j.contains(shared) && j.contains(own)) j[shared] = j[own];
}

bool layer_type_rope(const json& j, const std::string& where, ModelSpec& s, float full_theta, float sliding_theta) {
  const json* rp = find_key(j, "rope_parameters");
  if (!rp || !rp->is_object() || !find_key(*rp, "full_attention")) return false;
  for (const char* lt : {"full_attention", "sliding_attention"}) {
    const json* p = find_key(*rp, lt);
    if (!p || !p->is_object()) fail(where, std::string("rope_parameters needs an object for '") + lt + "'");
    const bool full = std::string(lt) == "full_attention";
    (full ? s.rope_theta : s.rope_theta_local) = get_float(*p, "rope_theta", where, full ? full_theta : sliding_theta);
    (full ? s.rope_scaling : s.rope_scaling_local) = parse_rope_scaling(*p, "rope_parameters", max_positions_hint(j), where);
  }
  s.rope_local = true;
  return true;
}

nlohmann::ordered_json rope_scaling_json(const RopeScaling& rs) {
  using oj = nlohmann::ordered_json;
  switch (rs.type) {
    case RopeScaling::Type::None: return oj();
    case RopeScaling::Type::Linear: return {{"rope_type", "linear"}, {"factor", rs.factor}};
    case RopeScaling::Type::Llama3:
      return {{"rope_type", "llama3"},
              {"factor", rs.factor},
              {"low_freq_factor", rs.low_freq_factor},
              {"high_freq_factor", rs.high_freq_factor},
              {"original_max_position_embeddings", rs.original_max_positions}};
    case RopeScaling::Type::Yarn:
      return {{"rope_type", "yarn"},
              {"factor", rs.factor},
              {"original_max_position_embeddings", rs.original_max_positions},
              {"attention_factor", rs.attention_factor},
              {"beta_fast", rs.beta_fast},
              {"beta_slow", rs.beta_slow},
              {"truncate", rs.truncate}};
    case RopeScaling::Type::LongRope:
      return {{"rope_type", "longrope"},
              {"short_factor", rs.short_factor},
              {"long_factor", rs.long_factor},
              {"factor", rs.factor},
              {"attention_factor", rs.attention_factor},
              {"original_max_position_embeddings", rs.original_max_positions}};
    case RopeScaling::Type::Dynamic: return {{"rope_type", "dynamic"}, {"factor", rs.factor}};
    case RopeScaling::Type::Proportional:
      return {{"rope_type", "proportional"}, {"partial_rotary_factor", rs.rotated_fraction}, {"factor", rs.factor}};
    case RopeScaling::Type::Factors: break;
  }
  fail("config.json", "this model's rotary frequencies come from a GGUF rope_freqs tensor, which config.json "
                      "cannot express; merge it to GGUF instead");
}

nlohmann::ordered_json layer_types_json(const ModelSpec& s) {
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) types.push_back(s.layer_slides(l) ? "sliding_attention" : "full_attention");
  return types;
}

nlohmann::ordered_json rope_parameters_json(float theta, const RopeScaling& rs) {
  nlohmann::ordered_json o = {{"rope_type", rs.type == RopeScaling::Type::None ? "default" : rs.name()},
                              {"rope_theta", theta}};
  const nlohmann::ordered_json sc = rope_scaling_json(rs);
  if (sc.is_object())
    for (auto it = sc.begin(); it != sc.end(); ++it)
      if (it.key() != "rope_type") o[it.key()] = it.value();
  return o;
}

// max_position_embeddings before the spec has it (yarn's default factor needs it).
int64_t max_positions_hint(const json& j) {
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
  if (type == "longrope" || type == "su") return parse_longrope(rp, key, max_positions, 0, where);
  if (type == "linear") {
    sc.type = RopeScaling::Type::Linear;
    sc.factor = positive("factor", num("factor", std::nullopt));
  } else if (type == "llama3") {
    sc.type = RopeScaling::Type::Llama3;
    sc.factor = positive("factor", num("factor", std::nullopt));
    sc.low_freq_factor = positive("low_freq_factor", num("low_freq_factor", std::nullopt));
    sc.high_freq_factor = positive("high_freq_factor", num("high_freq_factor", std::nullopt));
    sc.original_max_positions = static_cast<int64_t>(num("original_max_position_embeddings", std::nullopt));
    // (equal factors: no band between the two, as Llama 4's released configs have them)
    if (sc.high_freq_factor < sc.low_freq_factor) fail(where, in + ": high_freq_factor must not be below low_freq_factor");
  } else if (type == "proportional") {  // (Gemma 4's full-attention layers)
    sc.type = RopeScaling::Type::Proportional;
    sc.factor = positive("factor", num("factor", 1.0f));
    sc.rotated_fraction = num("partial_rotary_factor", 1.0f);
    if (!(sc.rotated_fraction > 0.0f) || sc.rotated_fraction > 1.0f)
      fail(where, in + ": 'partial_rotary_factor' must be in (0, 1]");
  } else if (type == "dynamic") {
    sc.type = RopeScaling::Type::Dynamic;
    sc.factor = positive("factor", num("factor", std::nullopt));
    if (sc.factor < 1.0f) fail(where, in + ": a dynamic factor below 1 shrinks the context");
    sc.original_max_positions = max_positions;  // (transformers: config.max_position_embeddings)
    if (sc.original_max_positions <= 0) fail(where, in + ": dynamic scaling needs max_position_embeddings");
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
    fail(where, in + ": rope_type " + excerpt(type) + " is not supported yet (default, linear, dynamic, llama3, yarn, longrope, proportional)");
  }
  return sc;
}

RopeScaling parse_longrope(const json& rp, const char* key, int64_t max_positions, int64_t original_max,
                           const std::string& where) {
  const std::string in = std::string(key) + " " + shown(rp);
  RopeScaling sc;
  sc.type = RopeScaling::Type::LongRope;
  auto factors = [&](const char* k) {
    const json* v = find_key(rp, k);
    if (!v || !v->is_array() || v->empty()) fail(where, in + ": longrope needs a list '" + std::string(k) + "'");
    std::vector<float> f;
    for (const json& e : *v) {
      if (!e.is_number() || !(e.get<double>() > 0)) fail(where, in + ": '" + std::string(k) + "' must hold positive numbers");
      f.push_back(e.get<float>());
    }
    return f;
  };
  sc.short_factor = factors("short_factor");
  sc.long_factor = factors("long_factor");
  sc.original_max_positions = original_max;
  if (const json* o = find_key(rp, "original_max_position_embeddings")) {
    if (!o->is_number_integer()) fail(where, in + ": 'original_max_position_embeddings' must be an integer");
    sc.original_max_positions = o->get<int64_t>();
  }
  if (sc.original_max_positions <= 0) fail(where, in + ": longrope needs original_max_position_embeddings");
  // transformers' _compute_longrope_parameters: the factor is the context's growth unless
  // given, and the attention factor follows from it unless given.
  double factor = static_cast<double>(max_positions) / static_cast<double>(sc.original_max_positions);
  if (const json* f = find_key(rp, "factor"); f && f->is_number()) factor = f->get<double>();
  sc.factor = static_cast<float>(factor);
  if (const json* a = find_key(rp, "attention_factor"); a && a->is_number()) {
    sc.attention_factor = a->get<float>();
  } else {
    sc.attention_factor = factor <= 1.0 ? 1.0f
                                        : static_cast<float>(std::sqrt(1.0 + std::log(factor) /
                                                                             std::log(static_cast<double>(sc.original_max_positions))));
  }
  return sc;
}

}  // namespace qlora::config
