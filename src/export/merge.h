#pragma once
// Folding LoRA adapters into the base model's weights and writing the result as a Hugging
// Face model directory (`qlora merge`), the QLoRA way:
//
//   W' = dequant(Wq) + Σ_i weight_i · scaling_i · B_i A_i
//
// where dequant(Wq) is the base weight exactly as the model holds it (4-bit, 8-bit or
// dense), i.e. the weight the adapters were trained against. So the merged model computes
// what base + adapters computed during training, up to the rounding of the output dtype.
// (Merging into the original 16-bit weights instead would silently add the quantization
// error back; re-quantizing W' to 4-bit would add a new one.)
#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "model/model.h"

namespace qlora {

struct ModelFiles;

// One adapter to fold in: its loaded layers (inference form) and its weight.
struct WeightedAdapter {
  const LoraModel* adapter = nullptr;
  double weight = 1.0;
};

struct HfExportOptions {
  DType dtype = DType::BF16;                  // F32, BF16 or F16 (rounded to nearest even)
  uint64_t max_shard_bytes = 5'000'000'000;   // transformers' default max_shard_size "5GB"
  bool log = true;                            // progress and a summary on stderr
};

// Any tensor of the merged model by its Hugging Face name (ModelSpec::tensors()), in
// float32: merged Linear weights, everything else as the model holds it. Throws Error for
// a name the model does not have.
std::vector<float> merged_tensor_values(const Model& model, const std::string& name,
                                        const std::vector<WeightedAdapter>& adapters);

// The merged weight of block Linear `which` (0..6: q, k, v, o, gate, up, down) of `layer`,
// (out, in) row-major, in float32.
std::vector<float> merged_linear_weight(const Model& model, int64_t layer, int which,
                                        const std::vector<WeightedAdapter>& adapters);
// The same for a Linear outside the blocks (project_in / project_out). REQUIRES the model
// has it.
std::vector<float> merged_model_linear_weight(const Model& model, ModelLinear which,
                                              const std::vector<WeightedAdapter>& adapters);

// Writes `out_dir` (created; refused when it already holds config.json or weights, unless
// `overwrite`): config.json (the architecture, from the model's spec), model.safetensors or
// model-0000i-of-0000n.safetensors + model.safetensors.index.json, generation_config.json,
// and the tokenizer files of the source when it has them in Hugging Face form
// (tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja,
// tokenizer.model), else its tokenizer written as tokenizer.json + tokenizer_config.json
// (merge-list BPE: GGUF "gpt2" vocabularies; a note on stderr otherwise). Returns the names of the files written. Throws Error naming the file on
// any failure; files are written atomically, so a failure never leaves a half file.
std::vector<std::string> write_merged_hf_dir(const Model& model, const ModelFiles& source,
                                             const std::vector<WeightedAdapter>& adapters,
                                             const std::string& out_dir, const HfExportOptions& opt,
                                             bool overwrite);

// config.json for `spec` in the form transformers reads for its family (LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM), with `dtype` as the weights' dtype.
std::string hf_config_json(const ModelSpec& spec, DType dtype);

}  // namespace qlora
