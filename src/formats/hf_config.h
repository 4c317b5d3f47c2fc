#pragma once
// Hugging Face config.json -> ModelSpec, and generation_config.json.
//
// The keys every family shares are read here; the model_type picks the family
// (formats/model_family.h: llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text), whose
// file reads its own keys. Anything else, or an option the engine does not implement (a
// rope type other than linear/llama3/yarn, an activation the family does not use, per-layer
// windows where unsupported), is an Error naming the file and the key, never a silently
// wrong model. Defaults are transformers' config classes' for each model_type.
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/model_spec.h"

namespace qlora {

// `where` names the file in errors.
ModelSpec spec_from_hf_config(const nlohmann::json& config, const std::string& where);
// Reads and parses `path` (a config.json).
ModelSpec read_hf_config(const std::string& path);
// A config.json's JSON object; an Error naming the file when it is not valid JSON or not an object.
nlohmann::json read_config_json(const std::string& path);

// The parts of generation_config.json generation uses; absent keys stay empty.
struct GenerationConfig {
  std::optional<int> bos_id;
  std::vector<int> eos_ids;
  std::optional<int> pad_id;
  std::optional<bool> do_sample;
  std::optional<float> temperature, top_p, repetition_penalty;
  std::optional<int> top_k, max_new_tokens;
};

GenerationConfig generation_config_from_json(const nlohmann::json& j, const std::string& where);
GenerationConfig read_generation_config(const std::string& path);

}  // namespace qlora
