#pragma once
// PEFT LoRA adapter directories, the layout `peft` 0.21 save_pretrained writes and
// from_pretrained reads:
//   adapter_config.json        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r", "lora_alpha",
//                               "lora_dropout", "target_modules", "use_rslora", ...}
//   adapter_model.safetensors  base_model.model.<module path>.lora_A.weight (r, in)
//                              base_model.model.<module path>.lora_B.weight (out, r)
//                              metadata {"format": "pt"}
// Readers trust nothing in the files: every problem is an Error naming the file and key.
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "lora/lora.h"

namespace qlora {

inline constexpr std::string_view kPeftConfigFile = "adapter_config.json";
inline constexpr std::string_view kPeftWeightsFile = "adapter_model.safetensors";
inline constexpr std::string_view kPeftKeyPrefix = "base_model.model.";

// "base_model.model.<module_path>.lora_A.weight" / ".lora_B.weight".
std::string peft_lora_key(std::string_view module_path, char which /* 'A' or 'B' */);

// The full adapter_config.json PEFT 0.21.2 writes for a plain LoRA (every key it emits,
// with PEFT's defaults for what we do not use). target_modules is the config's list, or
// for all_linear the sorted module paths of `layers` (PEFT expands "all-linear" to the
// matched module paths on save).
nlohmann::json peft_adapter_config_json(const LoraConfig& cfg, std::string_view base_model_name_or_path,
                                        std::span<const LoraLayer> layers);

// Parses an adapter_config.json already read into `j`. `where` names the file.
// Rejects peft_type other than LORA, DoRA, rank/alpha patterns, LoRA bias
// and regex target_modules other than "all-linear" (not supported, rather than wrong).
LoraConfig parse_peft_adapter_config(const nlohmann::json& j, std::string_view where);

// Writes both files into `dir` (created if missing), each atomically.
// Throws Error naming the file on failure.
void save_peft_adapter(const std::string& dir, const LoraConfig& cfg, std::string_view base_model_name_or_path,
                       std::span<const LoraLayer> layers);

// One module's weights as read from an adapter.
struct PeftLoraWeights {
  int64_t in = 0, out = 0;
  int r = 0;
  std::vector<float> A;  // (r, in)
  std::vector<float> B;  // (out, r)
};

struct PeftAdapter {
  std::string dir;
  LoraConfig config;
  std::string base_model_name_or_path;
  nlohmann::json raw_config;
  std::map<std::string, PeftLoraWeights> modules;  // keyed by module path

  // Copies the weights into `layers` (matched by module_path). Throws Error naming the
  // weights file and key when a layer has no weights here, or its shapes differ
  // (r, in, out); and when the adapter holds weights for a module not in `layers`.
  void apply_to(std::span<LoraLayer> layers) const;
};

// Reads adapter_config.json and adapter_model.safetensors from `dir`. Weights may be
// F32/F16/BF16 on disk (converted to float32). Checks every A/B pair: both present,
// A (r, in), B (out, r) with r equal to the config's r; no other tensors.
PeftAdapter load_peft_adapter(const std::string& dir);

}  // namespace qlora
