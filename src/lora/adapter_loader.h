#pragma once
// A PEFT adapter directory loaded and checked against a Model, in the form the inference
// forward applies unmerged (Model::set_adapter): `qlora generate --adapter` and
// `qlora eval --adapter` use it.
#include <memory>
#include <string>

#include "model/model.h"
#include "lora/lora_model.h"

namespace qlora {

struct LoadedAdapter {
  std::unique_ptr<LoraModel> lora;  // what Model::set_adapter takes (lora.get())
};

// Reads the adapter in `dir` and checks it against the model: every module it holds must
// be one of the model's block Linears with the same shape, and every Linear its config
// targets must have weights (errors name adapter_config.json or adapter_model.safetensors).
LoadedAdapter load_adapter(const std::string& dir, const Model& model);

}  // namespace qlora
