#include "lora/peft_adapter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "base/atomic_file.h"
#include "base/error.h"
#include "formats/safetensors.h"

namespace qlora {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// PEFT's rank_pattern / alpha_pattern key for the MoE experts' gate_up_proj (all-linear).
constexpr const char* kGateUpPattern = ".*\\.gate_up_proj";

// "model.layers.<l>.mlp.experts.<e>.gate_up_proj" / ".down_proj" (lora_model.h
// moe_expert_path): the experts module, expert and part (0 gate_up, 1 down); false otherwise.
// (Granite MoE's: ".block_sparse_moe.experts.<e>..."; Nemotron 3's ungated experts:
// ".mixer.experts.<e>.up_proj" / ".down_proj")
bool parse_expert_path(std::string_view path, std::string* module, int64_t* expert, int* part) {
  std::string_view kExperts = ".mlp.experts.";
  size_t at = path.find(kExperts);
  for (std::string_view other : {".block_sparse_moe.experts.", ".feed_forward.experts.", ".mixer.experts."}) {
    if (at != std::string_view::npos) break;
    kExperts = other;
    at = path.find(kExperts);
  }
  if (at == std::string_view::npos) return false;
  std::string_view rest = path.substr(at + kExperts.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0) return false;
  const std::string_view num = rest.substr(0, dot), name = rest.substr(dot + 1);
  if (num.find_first_not_of("0123456789") != std::string_view::npos || num.size() > 9) return false;
  const bool ungated = kExperts == ".mixer.experts.";
  if (name != (ungated ? "up_proj" : "gate_up_proj") && name != "down_proj") return false;
  *module = std::string(path.substr(0, at + kExperts.size() - 1));
  *expert = std::stoll(std::string(num));
  *part = name == "down_proj" ? 1 : 0;
  return true;
}

// PEFT nests a ParamWrapper per targeted parameter of the experts module, the first of the
// module's parameters (gate_up_proj; the ungated experts' up_proj) innermost: with both targeted, gate_up's weights are
// under "<module>.base_layer", down's under "<module>"; with one, under "<module>".
std::string stacked_expert_path(const std::string& module, int part, bool both) {
  return part == 0 && both ? module + ".base_layer" : module;
}

}  // namespace

std::string peft_lora_key(std::string_view module_path, char which) {
  std::string k(kPeftKeyPrefix);
  k += module_path;
  k += which == 'A' ? ".lora_A.weight" : ".lora_B.weight";
  return k;
}

static json number_like_python(double v) {
  // PEFT writes lora_alpha as given: an int stays an int in the JSON.
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15) return json(static_cast<int64_t>(v));
  return json(v);
}

json peft_adapter_config_json(const LoraConfig& cfg, std::string_view base_model, std::span<const LoraLayer> layers) {
  json targets = json::array();
  // A vision-language model's language model (formats/hf_wrapper.h): module names such as
  // q_proj would also match the vision tower's in PEFT, so the adapted modules are listed
  // by their full paths, as all-linear's are.
  const bool wrapped = std::any_of(layers.begin(), layers.end(),
                                   [](const LoraLayer& l) {
                                     return l.module_path.starts_with("model.language_model.") ||
                                            l.module_path.starts_with("language_model.model.");  // (Llama 4's)
                                   });
  if (cfg.all_linear || (wrapped && cfg.target_regex.empty())) {
    std::vector<std::string> paths;
    for (const auto& l : layers) {
      std::string m;
      int64_t e = 0;
      int part = 0;
      // (the experts and the router are target_parameters, not modules)
      if (parse_expert_path(l.module_path, &m, &e, &part) || cfg.targets_parameter(l.module_path + ".weight")) continue;
      paths.push_back(l.module_path);
    }
    std::sort(paths.begin(), paths.end());
    paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
    for (auto& p : paths) targets.push_back(p);
  } else if (!cfg.target_regex.empty()) {
    targets = cfg.target_regex;
  } else {
    std::vector<std::string> t = cfg.target_modules;
    std::sort(t.begin(), t.end());
    t.erase(std::unique(t.begin(), t.end()), t.end());
    for (auto& p : t) targets.push_back(p);
  }
  // nlohmann::json objects are ordered by key, as PEFT's json.dump(sort_keys=True).
  json j = json::object();
  j["alora_invocation_tokens"] = nullptr;
  j["alpha_pattern"] = json::object();
  j["arrow_config"] = nullptr;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = std::string(base_model);
  j["bias"] = "none";
  j["corda_config"] = nullptr;
  j["ensure_weight_tying"] = false;
  j["eva_config"] = nullptr;
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = cfg.fan_in_fan_out;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["kasa_config"] = nullptr;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["loftq_config"] = json::object();
  j["lora_alpha"] = number_like_python(cfg.alpha);
  j["lora_bias"] = false;
  j["lora_dropout"] = cfg.dropout;
  j["lora_ga_config"] = nullptr;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["monteclora_config"] = nullptr;
  j["peft_type"] = "LORA";
  j["peft_version"] = "0.21.2";  // the PEFT release whose layout this file follows
  j["qalora_group_size"] = 16;
  j["r"] = cfg.r;
  j["rank_pattern"] = json::object();
  if (cfg.gate_up_r > 0 && (cfg.gate_up_r != cfg.r || cfg.gate_up_alpha != cfg.alpha)) {
    j["rank_pattern"][kGateUpPattern] = cfg.gate_up_r;
    j["alpha_pattern"] = json::object();
    j["alpha_pattern"][kGateUpPattern] = number_like_python(cfg.gate_up_alpha);
  }
  j["revision"] = nullptr;
  j["target_modules"] = std::move(targets);
  j["target_parameters"] = nullptr;
  if (!cfg.target_parameters.empty()) j["target_parameters"] = cfg.target_parameters;
  j["task_type"] = "CAUSAL_LM";
  j["trainable_token_indices"] = nullptr;
  j["use_bdlora"] = nullptr;
  j["use_dora"] = false;
  j["use_qalora"] = false;
  j["use_rslora"] = cfg.use_rslora;
  j["velora_config"] = nullptr;
  return j;
}

static bool is_null_or_empty(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return true;
  if ((it->is_object() || it->is_array() || it->is_string()) && it->empty()) return true;
  return false;
}

static bool is_false_or_absent(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() || (it->is_boolean() && !it->get<bool>());
}

LoraConfig parse_peft_adapter_config(const json& j, std::string_view where) {
  const std::string w(where);
  check(j.is_object(), where, "adapter config is not a JSON object");
  auto get = [&](const char* key) -> const json& {
    auto it = j.find(key);
    if (it == j.end()) fail(where, std::string("missing key '") + key + "'");
    return *it;
  };
  const json& pt = get("peft_type");
  check(pt.is_string(), where, "'peft_type' must be a string");
  check(pt.get<std::string>() == "LORA", where, "peft_type is '" + pt.get<std::string>() + "', only LORA is supported");

  LoraConfig c;
  const json& r = get("r");
  check(r.is_number_integer(), where, "'r' must be an integer");
  check(r.get<int64_t>() >= 1 && r.get<int64_t>() <= (1 << 20), where, "'r' out of range");
  c.r = r.get<int>();
  if (auto it = j.find("lora_alpha"); it != j.end()) {
    check(it->is_number(), where, "'lora_alpha' must be a number");
    c.alpha = it->get<double>();
  } else {
    c.alpha = 8.0;  // PEFT's LoraConfig default
  }
  if (auto it = j.find("lora_dropout"); it != j.end() && !it->is_null()) {
    check(it->is_number(), where, "'lora_dropout' must be a number");
    c.dropout = it->get<double>();
  } else {
    c.dropout = 0.0;
  }
  if (auto it = j.find("use_rslora"); it != j.end() && !it->is_null()) {
    check(it->is_boolean(), where, "'use_rslora' must be true or false");
    c.use_rslora = it->get<bool>();
  }
  const json& tm = get("target_modules");
  if (tm.is_string()) {
    // "all-linear", or a regular expression matched against whole module paths (PEFT's
    // re.fullmatch)
    check(!tm.get<std::string>().empty(), where, "'target_modules' is an empty string");
    if (tm.get<std::string>() == "all-linear") c.all_linear = true;
    else c.target_regex = tm.get<std::string>();
  } else {
    check(tm.is_array(), where, "'target_modules' must be a list of module names or \"all-linear\"");
    for (const auto& t : tm) {
      check(t.is_string() && !t.get<std::string>().empty(), where, "'target_modules' entries must be non-empty strings");
      c.target_modules.push_back(t.get<std::string>());
    }
  }
  if (auto it = j.find("bias"); it != j.end() && !it->is_null())
    check(it->is_string() && it->get<std::string>() == "none", where, "only bias \"none\" is supported");
  check(is_false_or_absent(j, "use_dora"), where, "DoRA adapters (use_dora) are not supported");
  check(is_false_or_absent(j, "lora_bias"), where, "lora_bias is not supported");
  // fan_in_fan_out: whether it fits the model's Linears is checked when the adapter is attached.
  if (auto it = j.find("fan_in_fan_out"); it != j.end() && it->is_boolean()) c.fan_in_fan_out = it->get<bool>();
  if (auto it = j.find("target_parameters"); it != j.end() && !it->is_null()) {
    check(it->is_array(), where, "'target_parameters' must be a list of parameter names");
    for (const auto& t : *it) {
      check(t.is_string() && !t.get<std::string>().empty(), where, "'target_parameters' entries must be non-empty strings");
      c.target_parameters.push_back(t.get<std::string>());
    }
  }
  // The one rank / alpha pattern supported: PEFT's all-linear on MoE experts' gate_up_proj.
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (is_null_or_empty(j, key)) continue;
    const json& p = j.at(key);
    check(p.is_object() && p.size() == 1 && p.contains(kGateUpPattern) && p.at(kGateUpPattern).is_number(), where,
          std::string("per-module ") + key + " is not supported (only {\"" + kGateUpPattern +
              "\": ...}, which PEFT's all-linear writes for mixture-of-experts models)");
    if (std::string(key) == "rank_pattern") {
      check(p.at(kGateUpPattern).is_number_integer() && p.at(kGateUpPattern).get<int64_t>() >= 1 &&
                p.at(kGateUpPattern).get<int64_t>() <= (1 << 20),
            where, "rank_pattern's gate_up_proj rank must be a positive integer");
      c.gate_up_r = p.at(kGateUpPattern).get<int>();
    } else {
      c.gate_up_alpha = p.at(kGateUpPattern).get<double>();
    }
  }
  if (c.gate_up_r > 0 && c.gate_up_alpha == 0.0) c.gate_up_alpha = c.alpha;
  if (c.gate_up_r == 0 && c.gate_up_alpha != 0.0) c.gate_up_r = c.r;
  check(is_null_or_empty(j, "modules_to_save"), where, "modules_to_save (fully trained modules) is not supported");
  check(is_null_or_empty(j, "layers_to_transform"), where, "layers_to_transform is not supported");
  check(is_null_or_empty(j, "layer_replication"), where, "layer_replication is not supported");
  c.validate(where);
  return c;
}

namespace {

// Throws Error naming `path` and the tensor `key` when `v` holds a NaN or an infinity.
void check_finite_weights(std::span<const float> v, const std::string& path, const std::string& key) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      fail(path, "tensor '" + key + "' holds a non-finite value (" + (std::isnan(v[i]) ? "NaN" : "inf") +
                     " at element " + std::to_string(i) + "): the adapter comes from a run that diverged");
}

}  // namespace

void save_peft_adapter(const std::string& dir, const LoraConfig& cfg, std::string_view base_model,
                       std::span<const LoraLayer> layers) {
  cfg.validate(dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  check(!ec, dir, "cannot create directory: " + ec.message());
  const std::string wpath = (fs::path(dir) / kPeftWeightsFile).string();
  const std::string cpath = (fs::path(dir) / kPeftConfigFile).string();

  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  std::set<std::string> seen;
  // Non-finite numbers never reach a file: a diverged run must stop, not save garbage.
  for (const auto& l : layers) {
    check_finite_weights(l.A, wpath, peft_lora_key(l.module_path, 'A'));
    check_finite_weights(l.B, wpath, peft_lora_key(l.module_path, 'B'));
  }
  // MoE experts: one LoRA per expert here, one stacked pair per (layer, parameter) in PEFT's
  // file: A (r E, in) with expert e's rows at e r .. e r + r - 1, B (out, r E) with expert
  // e's column k at k E + e (ParamWrapper's reshape to (E, r, in) and (out, r, E)).
  std::map<std::pair<std::string, int>, std::vector<const LoraLayer*>> experts;
  for (const auto& l : layers) {
    check(seen.insert(l.module_path).second, wpath, "two LoRA layers for module '" + l.module_path + "'");
    std::string module;
    int64_t e = 0;
    int part = 0;
    if (parse_expert_path(l.module_path, &module, &e, &part)) {
      auto& v = experts[{module, part}];
      if (static_cast<int64_t>(v.size()) <= e) v.resize(static_cast<size_t>(e + 1), nullptr);
      v[static_cast<size_t>(e)] = &l;
      continue;
    }
    check(l.r == cfg.r, wpath, "layer '" + l.module_path + "' has r " + std::to_string(l.r) + ", config r " + std::to_string(cfg.r));
    check(static_cast<int64_t>(l.A.size()) == l.r * l.in && static_cast<int64_t>(l.B.size()) == l.out * l.r, wpath,
          "layer '" + l.module_path + "' A/B sizes do not match its shape");
    w.add(peft_lora_key(l.module_path, 'A'), DType::F32, {l.r, l.in},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(l.A.data()), l.A.size() * sizeof(float)));
    w.add(peft_lora_key(l.module_path, 'B'), DType::F32, {l.out, l.r},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(l.B.data()), l.B.size() * sizeof(float)));
  }
  std::vector<std::vector<float>> stacked;  // (kept alive until the file is written)
  for (const auto& [key, v] : experts) {
    const auto& [module, part] = key;
    const int64_t E = static_cast<int64_t>(v.size());
    const LoraLayer* l0 = v[0];
    for (int64_t e = 0; e < E; ++e)
      check(v[static_cast<size_t>(e)] && v[static_cast<size_t>(e)]->r == l0->r && v[static_cast<size_t>(e)]->in == l0->in &&
                v[static_cast<size_t>(e)]->out == l0->out,
            wpath, "the experts of '" + module + "' do not all have LoRA layers of one shape (expert " +
                       std::to_string(e) + ")");
    // (swapped: PEFT's in is our out; its A our B^T, its B our A^T)
    const bool sw = l0->peft_swapped;
    const int64_t r = l0->r, in = sw ? l0->out : l0->in, out = sw ? l0->in : l0->out;
    std::vector<float> A(static_cast<size_t>(r * E * in)), B(static_cast<size_t>(out * r * E));
    for (int64_t e = 0; e < E; ++e) {
      const LoraLayer& l = *v[static_cast<size_t>(e)];
      check(l.peft_swapped == sw, wpath, "the experts of '" + module + "' mix PEFT's two layouts");
      for (int64_t k = 0; k < r; ++k)
        for (int64_t i = 0; i < in; ++i)
          A[static_cast<size_t>(e * r * in + k * in + i)] =
              sw ? l.B[static_cast<size_t>(i * r + k)] : l.A[static_cast<size_t>(k * in + i)];
      for (int64_t o = 0; o < out; ++o)
        for (int64_t k = 0; k < r; ++k)
          B[static_cast<size_t>(o * r * E + k * E + e)] =
              sw ? l.A[static_cast<size_t>(k * out + o)] : l.B[static_cast<size_t>(o * r + k)];
    }
    const std::string path = stacked_expert_path(module, part, experts.count({module, 1 - part}) != 0);
    stacked.push_back(std::move(A));
    w.add(peft_lora_key(path, 'A'), DType::F32, {r * E, in},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(stacked.back().data()), stacked.back().size() * 4));
    stacked.push_back(std::move(B));
    w.add(peft_lora_key(path, 'B'), DType::F32, {out, r * E},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(stacked.back().data()), stacked.back().size() * 4));
  }
  // Each file is replaced atomically; the pair is not (a crash in between leaves new
  // weights beside the old config, which the reader's shape checks then catch).
  w.write(wpath);
  write_file_atomic(cpath, peft_adapter_config_json(cfg, base_model, layers).dump(2) + "\n");
}

void PeftAdapter::apply_to(std::span<LoraLayer> layers) const {
  const std::string wpath = (fs::path(dir) / kPeftWeightsFile).string();
  std::set<std::string> used;
  for (auto& l : layers) {
    auto it = modules.find(l.module_path);
    check(it != modules.end(), wpath, "missing key '" + peft_lora_key(l.module_path, 'A') + "'");
    const PeftLoraWeights& m = it->second;
    // (peft_swapped: PEFT's in / out are our out / in, its A our B^T, its B our A^T)
    const int64_t l_in = l.peft_swapped ? l.out : l.in, l_out = l.peft_swapped ? l.in : l.out;
    check(m.r == l.r, wpath, "key '" + peft_lora_key(l.module_path, 'A') + "': rank " + std::to_string(m.r) +
                                  ", the model's LoRA rank is " + std::to_string(l.r));
    check(m.in == l_in, wpath, "key '" + peft_lora_key(l.module_path, 'A') + "': in_features " + std::to_string(m.in) +
                                    ", module has " + std::to_string(l_in));
    check(m.out == l_out, wpath, "key '" + peft_lora_key(l.module_path, 'B') + "': out_features " +
                                      std::to_string(m.out) + ", module has " + std::to_string(l_out));
    if (l.peft_swapped) {
      for (int64_t k = 0; k < l.r; ++k) {
        for (int64_t i = 0; i < l.in; ++i) l.A[static_cast<size_t>(k * l.in + i)] = m.B[static_cast<size_t>(i * m.r + k)];
        for (int64_t o = 0; o < l.out; ++o) l.B[static_cast<size_t>(o * l.r + k)] = m.A[static_cast<size_t>(k * m.in + o)];
      }
    } else {
      l.A = m.A;
      l.B = m.B;
    }
    l.zero_grad();
    used.insert(l.module_path);
  }
  for (const auto& [path, m] : modules)
    check(used.count(path) != 0, wpath,
          "key '" + peft_lora_key(path, 'A') + "': the model has no LoRA-adapted module '" + path + "'");
}

static json read_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(static_cast<bool>(f), path, "cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  check(!j.is_discarded(), path, "not valid JSON");
  return j;
}

PeftAdapter load_peft_adapter(const std::string& dir) {
  PeftAdapter a;
  a.dir = dir;
  const std::string cpath = (fs::path(dir) / kPeftConfigFile).string();
  const std::string wpath = (fs::path(dir) / kPeftWeightsFile).string();
  check(fs::exists(cpath), cpath, "no adapter config (is this a PEFT adapter directory?)");
  if (!fs::exists(wpath)) {
    check(!fs::exists(fs::path(dir) / "adapter_model.bin"), wpath,
          "missing; only adapter_model.bin (pickle) is present, which is not supported: re-save with safetensors");
    fail(wpath, "missing");
  }
  a.raw_config = read_json_file(cpath);
  a.config = parse_peft_adapter_config(a.raw_config, cpath);
  if (auto it = a.raw_config.find("base_model_name_or_path"); it != a.raw_config.end() && it->is_string())
    a.base_model_name_or_path = it->get<std::string>();

  SafeTensorsFile f(wpath);
  struct Half { const SafeTensorInfo* A = nullptr; const SafeTensorInfo* B = nullptr; };
  std::map<std::string, Half> pairs;
  for (const auto& t : f.tensors()) {
    std::string_view k = t.name;
    check(k.starts_with(kPeftKeyPrefix), wpath, "key '" + t.name + "' does not start with 'base_model.model.'");
    k.remove_prefix(kPeftKeyPrefix.size());
    char which = 0;
    if (k.ends_with(".lora_A.weight")) which = 'A';
    else if (k.ends_with(".lora_B.weight")) which = 'B';
    check(which != 0, wpath, "key '" + t.name + "' is not a LoRA A/B weight (unsupported tensor)");
    k.remove_suffix(std::string_view(".lora_A.weight").size());
    check(!k.empty(), wpath, "key '" + t.name + "' has an empty module path");
    check(dtype_is_float(t.dtype), wpath, "key '" + t.name + "' has non-float dtype " + std::string(dtype_name(t.dtype)));
    check(t.shape.size() == 2, wpath, "key '" + t.name + "' is not 2-D");
    Half& h = pairs[std::string(k)];
    (which == 'A' ? h.A : h.B) = &t;
  }
  const int64_t r = a.config.r;
  for (const auto& [path, h] : pairs) {
    check(h.A != nullptr, wpath, "missing key '" + peft_lora_key(path, 'A') + "'");
    check(h.B != nullptr, wpath, "missing key '" + peft_lora_key(path, 'B') + "'");
    // MoE experts, stacked (save_peft_adapter has the layout): one LoRA per expert here.
    // (Granite MoE's module tree: block_sparse_moe.experts)
    // (Llama 4's: feed_forward.experts)
    // (Nemotron 3's ungated experts: mixer.experts, up_proj and down_proj)
    const bool inner = path.ends_with(".mlp.experts.base_layer") || path.ends_with(".block_sparse_moe.experts.base_layer") ||
                       path.ends_with(".feed_forward.experts.base_layer") || path.ends_with(".mixer.experts.base_layer");
    if (inner || path.ends_with(".mlp.experts") || path.ends_with(".block_sparse_moe.experts") ||
        path.ends_with(".feed_forward.experts") || path.ends_with(".mixer.experts")) {
      const std::string module = inner ? path.substr(0, path.size() - std::string_view(".base_layer").size()) : path;
      const std::string first = module.ends_with(".mixer.experts") ? "up_proj" : "gate_up_proj";
      const bool gate_up = a.config.targets_parameter(module + "." + first);
      const bool down = a.config.targets_parameter(module + ".down_proj");
      check(gate_up || down, wpath, "key '" + h.A->name + "': the config's target_parameters name neither of '" +
                                        module + "''s " + first + " and down_proj");
      const int part = inner || !down ? 0 : 1;
      check(!inner || (gate_up && down), wpath,
            "key '" + h.A->name + "': a nested (base_layer) experts adapter needs both " + first + " and down_proj targeted");
      const int64_t rp = part == 0 && a.config.gate_up_r > 0 ? a.config.gate_up_r : r;
      const int64_t rows = h.A->shape[0], in = h.A->shape[1], out = h.B->shape[0];
      check(rows % rp == 0 && rows > 0 && h.B->shape[1] == rows, wpath,
            "key '" + h.A->name + "' has " + std::to_string(rows) + " rows, not rank " + std::to_string(rp) +
                " times the number of experts, or its lora_B's columns differ");
      const int64_t E = rows / rp;
      const std::vector<float> A = f.to_float(*h.A), B = f.to_float(*h.B);
      check_finite_weights(A, wpath, h.A->name);
      check_finite_weights(B, wpath, h.B->name);
      for (int64_t e = 0; e < E; ++e) {
        PeftLoraWeights m;
        m.r = static_cast<int>(rp);
        m.in = in;
        m.out = out;
        m.A.assign(A.begin() + e * rp * in, A.begin() + (e + 1) * rp * in);
        m.B.resize(static_cast<size_t>(out * rp));
        for (int64_t o = 0; o < out; ++o)
          for (int64_t k = 0; k < rp; ++k) m.B[static_cast<size_t>(o * rp + k)] = B[static_cast<size_t>(o * rows + k * E + e)];
        a.modules.emplace(module + "." + std::to_string(e) + "." + (part == 0 ? first : std::string("down_proj")), std::move(m));
      }
      continue;
    }
    check(h.A->shape[0] == r, wpath, "key '" + h.A->name + "' has rank " + std::to_string(h.A->shape[0]) +
                                         ", adapter_config.json says r = " + std::to_string(r));
    check(h.B->shape[1] == r, wpath, "key '" + h.B->name + "' has rank " + std::to_string(h.B->shape[1]) +
                                         ", adapter_config.json says r = " + std::to_string(r));
    check(h.A->shape[1] > 0 && h.B->shape[0] > 0, wpath, "key '" + h.A->name + "' has an empty dimension");
    check(a.config.targets(path) || a.config.targets_parameter(path + ".weight"), wpath,
          "key '" + h.A->name + "': module '" + path + "' is not among the config's target_modules");
    PeftLoraWeights m;
    m.r = static_cast<int>(r);
    m.in = h.A->shape[1];
    m.out = h.B->shape[0];
    m.A = f.to_float(*h.A);
    m.B = f.to_float(*h.B);
    // A diverged run's NaN/inf weights would make every generated token garbage (or none):
    // refuse them here rather than print nothing.
    check_finite_weights(m.A, wpath, h.A->name);
    check_finite_weights(m.B, wpath, h.B->name);
    a.modules.emplace(path, std::move(m));
  }
  check(!a.modules.empty(), wpath, "holds no LoRA weights");
  return a;
}

}  // namespace qlora
