#pragma once
// Loading a family fixture unquantized and its logits over a whole prompt: what the family
// tests compare with transformers' (test_gpt_oss.cpp, test_vision_language.cpp).
#include <string>
#include <vector>

#include "formats/model_loader.h"
#include "model/model.h"

namespace qlora::test {

// The model at `path` (directory or .gguf) in float32, weights as stored (no quantization).
inline Model load_unquantized(const std::string& path) {
  ModelFiles files = open_model_files(path);
  ModelLoadOptions o;
  o.quant.quantize = false;
  return Model::load(files.spec, *files.tensors, o);
}

// (prompt.size(), vocab) logits of one forward over the prompt.
inline std::vector<float> all_prompt_logits(const Model& m, const std::vector<int>& prompt) {
  InferenceState st(m.spec(), static_cast<int64_t>(prompt.size()));
  std::vector<float> out(prompt.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, prompt, out.data(), /*all_logits=*/true);
  return out;
}

}  // namespace qlora::test
