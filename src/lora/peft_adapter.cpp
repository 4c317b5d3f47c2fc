#include "lora/peft_adapter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "base/atomic_file.h"
#include "base/error.h"
#include "formats/safetensors.h"

namespace qlora {

namespace fs = std::filesystem;
using nlohmann::json;

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
  if (cfg.all_linear) {
    std::vector<std::string> paths;
    for (const auto& l : layers) paths.push_back(l.module_path);
    std::sort(paths.begin(), paths.end());
    paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
    for (auto& p : paths) targets.push_back(p);
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
  j["revision"] = nullptr;
  j["target_modules"] = std::move(targets);
  j["target_parameters"] = nullptr;
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
    check(tm.get<std::string>() == "all-linear", where,
          "regular-expression target_modules '" + tm.get<std::string>() + "' is not supported (use a list or \"all-linear\")");
    c.all_linear = true;
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
  check(is_null_or_empty(j, "rank_pattern"), where, "per-module rank_pattern is not supported");
  check(is_null_or_empty(j, "alpha_pattern"), where, "per-module alpha_pattern is not supported");
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
  for (const auto& l : layers) {
    check(seen.insert(l.module_path).second, wpath, "two LoRA layers for module '" + l.module_path + "'");
    check(l.r == cfg.r, wpath, "layer '" + l.module_path + "' has r " + std::to_string(l.r) + ", config r " + std::to_string(cfg.r));
    check(static_cast<int64_t>(l.A.size()) == l.r * l.in && static_cast<int64_t>(l.B.size()) == l.out * l.r, wpath,
          "layer '" + l.module_path + "' A/B sizes do not match its shape");
    w.add(peft_lora_key(l.module_path, 'A'), DType::F32, {l.r, l.in},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(l.A.data()), l.A.size() * sizeof(float)));
    w.add(peft_lora_key(l.module_path, 'B'), DType::F32, {l.out, l.r},
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(l.B.data()), l.B.size() * sizeof(float)));
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
    check(m.r == l.r, wpath, "key '" + peft_lora_key(l.module_path, 'A') + "': rank " + std::to_string(m.r) +
                                  ", the model's LoRA rank is " + std::to_string(l.r));
    check(m.in == l.in, wpath, "key '" + peft_lora_key(l.module_path, 'A') + "': in_features " + std::to_string(m.in) +
                                    ", module has " + std::to_string(l.in));
    check(m.out == l.out, wpath, "key '" + peft_lora_key(l.module_path, 'B') + "': out_features " +
                                      std::to_string(m.out) + ", module has " + std::to_string(l.out));
    l.A = m.A;
    l.B = m.B;
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
    check(h.A->shape[0] == r, wpath, "key '" + h.A->name + "' has rank " + std::to_string(h.A->shape[0]) +
                                         ", adapter_config.json says r = " + std::to_string(r));
    check(h.B->shape[1] == r, wpath, "key '" + h.B->name + "' has rank " + std::to_string(h.B->shape[1]) +
                                         ", adapter_config.json says r = " + std::to_string(r));
    check(h.A->shape[1] > 0 && h.B->shape[0] > 0, wpath, "key '" + h.A->name + "' has an empty dimension");
    check(a.config.targets(path), wpath,
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
