// Parsing `random:` model sources (random_spec.h): presets, key=value overrides, the
// canonical name and the notice.
#include "model/random_spec.h"

#include <charconv>
#include <cmath>
#include <map>
#include <optional>

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora {

namespace {

struct Preset {
  const char* name;
  int64_t hidden, layers, ffn, heads, kv_heads, vocab, max_pos;
  float rope_theta, norm_eps;
  bool tied;
};

// The shapes of the released checkpoints' config.json (LLaMA-1: the paper's table 2 with
// the released intermediate sizes, context 2048, rms_norm_eps 1e-6).
constexpr Preset kPresets[] = {
    {"smollm2-135m", 576, 30, 1536, 9, 3, 49152, 8192, 100000.0f, 1e-5f, true},
    {"tinyllama-1.1b", 2048, 22, 5632, 32, 4, 32000, 2048, 10000.0f, 1e-5f, false},
    {"llama-7b", 4096, 32, 11008, 32, 32, 32000, 2048, 10000.0f, 1e-6f, false},
    {"llama-13b", 5120, 40, 13824, 40, 40, 32000, 2048, 10000.0f, 1e-6f, false},
    {"llama-33b", 6656, 60, 17920, 52, 52, 32000, 2048, 10000.0f, 1e-6f, false},
    {"llama-65b", 8192, 80, 22016, 64, 64, 32000, 2048, 10000.0f, 1e-6f, false},
    {"llama3-8b", 4096, 32, 14336, 32, 8, 128256, 8192, 500000.0f, 1e-5f, false},
};

// In the order the canonical name lists them.
enum class Kind { Int, Bool, Float, Seed };
struct Key {
  const char* name;
  Kind kind;
};
constexpr Key kKeys[] = {{"hidden", Kind::Int},    {"layers", Kind::Int},        {"ffn", Kind::Int},
                         {"heads", Kind::Int},     {"kv_heads", Kind::Int},      {"head_dim", Kind::Int},
                         {"vocab", Kind::Int},     {"tied", Kind::Bool},         {"max_pos", Kind::Int},
                         {"rope_theta", Kind::Float}, {"norm_eps", Kind::Float}, {"seed", Kind::Seed}};
constexpr const char* kRequired[] = {"hidden", "layers", "ffn", "heads", "vocab"};

std::string preset_list() {
  std::string s;
  for (const Preset& p : kPresets) s += (s.empty() ? "" : ", ") + std::string(p.name);
  return s;
}

std::string key_list() {
  std::string s;
  for (const Key& k : kKeys) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A value as written, checked against its key's kind; returns it in a normal spelling.
struct Value {
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string text;  // for the canonical name
};

Value parse_value(std::string_view where, const Key& key, std::string_view v) {
  Value out;
  const auto bad = [&](const char* what) {
    fail(where, "key '" + std::string(key.name) + "': " + excerpt(v) + " is not " + what);
  };
  const char* b = v.data();
  const char* e = v.data() + v.size();
  switch (key.kind) {
    case Kind::Int: {
      auto r = std::from_chars(b, e, out.i);
      if (v.empty() || r.ec != std::errc() || r.ptr != e || out.i <= 0) bad("a positive integer");
      out.text = std::to_string(out.i);
      break;
    }
    case Kind::Seed: {
      auto r = std::from_chars(b, e, out.u);
      if (v.empty() || r.ec != std::errc() || r.ptr != e) bad("a non-negative integer");
      out.text = std::to_string(out.u);
      break;
    }
    case Kind::Bool:
      if (v == "1" || v == "true") out.i = 1;
      else if (v == "0" || v == "false") out.i = 0;
      else bad("0, 1, true or false");
      out.text = std::to_string(out.i);
      break;
    case Kind::Float: {
      auto r = std::from_chars(b, e, out.f);
      if (v.empty() || r.ec != std::errc() || r.ptr != e || !std::isfinite(out.f)) bad("a finite number");
      if (std::string_view(key.name) == "rope_theta" && !(out.f > 0)) bad("a positive number");
      if (std::string_view(key.name) == "norm_eps" && out.f < 0) bad("a non-negative number");
      out.text = std::string(v);
      break;
    }
  }
  return out;
}

}  // namespace

bool is_random_model(std::string_view model) {
  return model.substr(0, kRandomModelPrefix.size()) == kRandomModelPrefix;
}

std::vector<std::string> random_model_presets() {
  std::vector<std::string> n;
  for (const Preset& p : kPresets) n.emplace_back(p.name);
  return n;
}

RandomModelSpec parse_random_model(std::string_view model) {
  const std::string where(model);
  if (!is_random_model(model)) fail(where, "not a random model (expected random:PRESET or random:key=value,...)");
  std::string_view rest = model.substr(kRandomModelPrefix.size());
  const std::string usage = "give a preset (" + preset_list() +
                            ") or an explicit shape such as random:hidden=4096,layers=32,ffn=11008,heads=32,"
                            "kv_heads=32,vocab=32000 (keys: " + key_list() + ")";
  if (trim(rest).empty()) fail(where, "names no shape; " + usage);

  // Split on commas; the first item may be a preset (no '=').
  std::vector<std::string_view> items;
  while (true) {
    const size_t c = rest.find(',');
    items.push_back(trim(rest.substr(0, c)));
    if (c == std::string_view::npos) break;
    rest.remove_prefix(c + 1);
  }
  RandomModelSpec r;
  const Preset* preset = nullptr;
  size_t first = 0;
  if (items[0].find('=') == std::string_view::npos) {
    for (const Preset& p : kPresets)
      if (items[0] == p.name) preset = &p;
    if (!preset) fail(where, "unknown preset " + excerpt(items[0]) + "; " + usage);
    r.preset = preset->name;
    first = 1;
  }
  std::map<std::string, Value> given;  // by key name
  for (size_t i = first; i < items.size(); ++i) {
    const std::string_view item = items[i];
    if (item.empty()) fail(where, "has an empty item (two commas in a row, or a trailing comma)");
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      fail(where, excerpt(item) + " is not key=value" + (i == 0 ? "" : " (a preset can only come first)") + "; " +
                      usage);
    const std::string_view k = trim(item.substr(0, eq));
    const Key* key = nullptr;
    for (const Key& kk : kKeys)
      if (k == kk.name) key = &kk;
    if (!key) fail(where, "unknown key " + excerpt(k) + " (valid keys: " + key_list() + ")");
    if (given.count(key->name)) fail(where, "key '" + std::string(key->name) + "' is given twice");
    given[key->name] = parse_value(where, *key, trim(item.substr(eq + 1)));
  }
  if (!preset)
    for (const char* k : kRequired)
      if (!given.count(k))
        fail(where, "missing '" + std::string(k) +
                        "': an explicit shape needs hidden, layers, ffn, heads and vocab (or start with a preset: " +
                        preset_list() + ")");

  ModelSpec& s = r.spec;
  s.family = "llama";
  if (preset) {
    s.hidden = preset->hidden;
    s.n_layers = preset->layers;
    s.ffn = preset->ffn;
    s.n_heads = preset->heads;
    s.n_kv_heads = preset->kv_heads;
    s.vocab = preset->vocab;
    s.max_positions = preset->max_pos;
    s.rope_theta = preset->rope_theta;
    s.norm_eps = preset->norm_eps;
    s.tied_embeddings = preset->tied;
  } else {
    s.max_positions = 4096;
    s.norm_eps = 1e-5f;
  }
  auto get = [&](const char* k) -> const Value* {
    auto it = given.find(k);
    return it == given.end() ? nullptr : &it->second;
  };
  if (auto v = get("hidden")) s.hidden = v->i;
  if (auto v = get("layers")) s.n_layers = v->i;
  if (auto v = get("ffn")) s.ffn = v->i;
  if (auto v = get("heads")) {
    s.n_heads = v->i;
    if (!preset) s.n_kv_heads = v->i;  // as config.json without num_key_value_heads
  }
  if (auto v = get("kv_heads")) s.n_kv_heads = v->i;
  if (auto v = get("vocab")) s.vocab = v->i;
  if (auto v = get("tied")) s.tied_embeddings = v->i != 0;
  if (auto v = get("max_pos")) s.max_positions = v->i;
  if (auto v = get("rope_theta")) s.rope_theta = static_cast<float>(v->f);
  if (auto v = get("norm_eps")) s.norm_eps = static_cast<float>(v->f);
  if (auto v = get("seed")) r.seed = v->u;
  if (auto v = get("head_dim")) {
    s.head_dim = v->i;
  } else {
    if (s.hidden % s.n_heads != 0)
      fail(where, "hidden " + std::to_string(s.hidden) + " is not a multiple of heads " + std::to_string(s.n_heads) +
                      " (give head_dim=N)");
    s.head_dim = s.hidden / s.n_heads;
  }
  // The built-in byte tokenizer's specials (formats/byte_tokenizer.h); a --tokenizer
  // replaces them when the model is opened.
  s.bos_id = s.vocab > 1 ? 1 : -1;
  s.eos_ids.clear();
  if (s.vocab > 2) s.eos_ids = {2};
  s.validate(where);

  r.canonical = std::string(kRandomModelPrefix) + r.preset;
  for (const Key& k : kKeys) {
    const Value* v = get(k.name);
    if (!v || (k.kind == Kind::Seed && v->u == 0)) continue;
    if (r.canonical.size() > kRandomModelPrefix.size()) r.canonical += ",";
    r.canonical += std::string(k.name) + "=" + v->text;
  }
  return r;
}

std::string random_model_notice(const RandomModelSpec& r) {
  std::string shape = r.canonical.substr(kRandomModelPrefix.size());
  // The seed is named on its own (it is the canonical form's last item when not 0).
  const std::string seed_item = ",seed=" + std::to_string(r.seed);
  if (r.seed != 0 && shape.size() > seed_item.size() &&
      shape.compare(shape.size() - seed_item.size(), seed_item.size(), seed_item) == 0)
    shape.erase(shape.size() - seed_item.size());
  return "random weights (" + shape + " shape, seed " + std::to_string(r.seed) +
         "): NOT a trained model \u2014 for speed and memory measurements only";
}

void refuse_random_model(std::string_view model, std::string_view command) {
  if (!is_random_model(model)) return;
  fail(model, std::string(command) +
                  " needs a real model's weights; a random: model is generated in memory for speed and memory "
                  "measurements only and has nothing worth writing out");
}

}  // namespace qlora
