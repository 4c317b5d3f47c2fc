#pragma once
// A LoRA adapter on its own, in llama.cpp's LoRA GGUF format (`qlora export-adapter`), so
// `llama-cli --lora FILE` (or llama-cpp-python's lora_path) applies it to the user's own GGUF
// of the base model: general.type "adapter", adapter.type "lora", adapter.lora.alpha, and
// for every adapted Linear "<its GGUF name>.lora_a" (r, in) and ".lora_b" (out, r), with B's
// rows of q/k put in llama.cpp's rotary order for the llama architecture.
#include <string>

#include "formats/ggml_types.h"
#include "model/model_spec.h"
#include "lora/adapter_loader.h"

namespace qlora {

// Writes `adapter` (loaded against a model of `spec`) to `out_path` in `type` (F32 or F16).
// llama.cpp scales by alpha / r: an rsLoRA adapter (alpha / sqrt r) is written with
// alpha · sqrt(r) so the product is the same. Refuses an existing file unless `overwrite`.
// Throws Error naming the file.
void write_lora_gguf(const LoadedAdapter& adapter, const ModelSpec& spec, const std::string& out_path, GgmlType type,
                     bool overwrite);

}  // namespace qlora
