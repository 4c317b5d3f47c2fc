#pragma once
// Vision-language checkpoints whose language model qlora runs: Gemma 3 4B/12B/27B
// (model_type gemma3), Mistral Small 3.1/3.2 (mistral3) and LLaVA-style models (llava).
// Their config.json nests the language model's config under "text_config"; their files
// hold it under "language_model.model." (what transformers' save_pretrained writes, and the
// Hub's files) or "model.language_model." (transformers >= 4.52's module paths), beside a
// vision tower and a projector that qlora keeps but does not run. Generation, training and
// evaluation are text-only; a merged export writes the vision part back unchanged.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qlora {

class TensorSource;

struct HfWrapper {
  std::string_view model_type;         // the outer config.json model_type
  std::string_view default_text_type;  // text_config's model_type when it names none
  bool default_tied = true;            // the outer config class's tie_word_embeddings
};

// The wrapper of an outer model_type, or null.
const HfWrapper* find_hf_wrapper(std::string_view model_type);
// "gemma3, mistral3, llava", for messages.
std::string hf_wrapper_types();

// A stored tensor name of a wrapped checkpoint in the language model's own form
// ("language_model.model.layers.0.x" or "model.language_model.layers.0.x" ->
// "model.layers.0.x"; "language_model.lm_head.weight" or "lm_head.weight" -> "lm_head.weight");
// nullopt for the tensors of the other parts (vision tower, projector).
std::optional<std::string> wrapped_to_text_name(std::string_view stored);
// A language-model module path or tensor name ("model.layers.0.self_attn.q_proj") as the
// wrapper model's module path (transformers >= 4.52 and PEFT's keys):
// "model.language_model.layers.0.self_attn.q_proj"; lm_head stays lm_head.
std::string text_to_wrapped_path(const std::string& text_name);
// The same as the checkpoint files store it: "language_model.model.layers.0...",
// "language_model.lm_head.weight".
std::string text_to_wrapped_file_name(const std::string& text_name);
// A wrapper model's module path in either form ("model.language_model.X",
// "language_model.model.X", "language_model.lm_head", "lm_head") as the language model's
// ("model.X", "lm_head"); nullopt when it is not inside the language model.
std::optional<std::string> wrapped_path_to_text(std::string_view path);

// The tensors of a wrapped checkpoint seen under the language model's names (names() lists
// only those); the other parts' tensors stay readable under their stored names (has / get /
// shape) and are listed by TensorSource::other_part_names, for a merged export to carry
// them over.
std::unique_ptr<TensorSource> make_wrapped_source(std::unique_ptr<TensorSource> inner);

}  // namespace qlora
