#pragma once
// A PEFT adapter directory loaded and checked against a Model, in the form the inference
// forward applies unmerged (Model::set_adapter): `qlora generate --adapter` and
// `qlora eval --adapter` use it.
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "lora/lora_model.h"

namespace qlora {

struct LoadedAdapter {
  std::unique_ptr<LoraModel> lora;  // what Model::set_adapter takes (lora.get())
  // A vision-language model's adapter (formats/hf_wrapper.h): the module paths it adapts
  // outside the language model (its vision tower, projector), which text-only runs leave
  // out; a merge refuses them rather than drop them.
  std::vector<std::string> other_part_modules;
};

// Reads the adapter in `dir` and checks it against the model: every module it holds must
// be one of the model's block Linears with the same shape, and every Linear its config
// targets must have weights (errors name adapter_config.json or adapter_model.safetensors).
LoadedAdapter load_adapter(const std::string& dir, const Model& model);

}  // namespace qlora
