#pragma once
// Opening whatever model a user points --model at:
//   * a Hugging Face directory: config.json, model.safetensors or sharded
//     model-*.safetensors (+ model.safetensors.index.json), tokenizer.json,
//     tokenizer_config.json (chat template), generation_config.json; bitsandbytes 4-bit
//     checkpoints are read as such;
//   * a single .safetensors file (config.json and tokenizer files taken from its folder);
//   * a .gguf file (llama-family architectures; tensors dequantized to float32 and mapped
//     to Hugging Face names, q/k rows un-permuted);
//   * a llama2.c .bin checkpoint (tokenizer.bin or tok<vocab>.bin from its folder, or
//     --tokenizer);
//   * "random:PRESET" / "random:key=value,..." (model/random_spec.h): no file, a shape whose
//     weights are generated while loading (model/random_model.h), with the built-in byte
//     tokenizer (formats/byte_tokenizer.h) unless --tokenizer. NOT a trained model: callers
//     print ModelFiles::notice wherever they say what they loaded.
// The result describes the model without building it: spec, a tensor source that hands
// out float32 tensors one at a time, tokenizer, chat template and generation config.
// Model::load(files.spec, *files.tensors, options) builds it.
#include <memory>
#include <string>

#include "formats/hf_config.h"
#include "model/model_spec.h"
#include "model/tensor_source.h"

namespace qlora {

class Tokenizer;

enum class ModelFormat { HfDirectory, SafeTensors, Gguf, Llama2c, Random };
// "huggingface", "safetensors", "gguf", "llama2.c", "random weights"
const char* model_format_name(ModelFormat f);

// Decides the format from what is at `path` (directory, extension, magic bytes; a path
// starting with "random:" is a random model, whatever files exist).
// Throws Error naming the path when it does not exist or is no model format we read.
ModelFormat detect_model_format(const std::string& path);

struct ModelFiles {
  ModelFiles();
  ~ModelFiles();
  ModelFiles(ModelFiles&&) noexcept;
  ModelFiles& operator=(ModelFiles&&) noexcept;

  std::string path;  // as given; for a random model its canonical form ("random:llama-7b")
  ModelFormat format = ModelFormat::HfDirectory;
  ModelSpec spec;
  std::unique_ptr<TensorSource> tensors;
  std::unique_ptr<Tokenizer> tokenizer;  // null when none was found
  std::string chat_template;             // "" when none
  GenerationConfig generation;           // from generation_config.json when present
  // Non-empty for a random model: "random weights (llama-7b shape, seed 0): NOT a trained
  // model — ...", for every line that says what was loaded.
  std::string notice;
};

// Opens the model at `path`. `tokenizer_path` (optional) overrides where the tokenizer
// comes from: a directory with tokenizer.json, a tokenizer.json file, a llama2.c
// tokenizer .bin or a .gguf. Throws Error naming the offending file on any problem (for a
// random model: the problem with its description, random_spec.h, or a vocabulary too
// small for the byte tokenizer). Opening a random model generates nothing.
// load_tokenizer false skips the tokenizer (tokenizer stays null): the memory planner reads the
// weights' headers only.
ModelFiles open_model_files(const std::string& path, const std::string& tokenizer_path = "", bool load_tokenizer = true);

}  // namespace qlora
