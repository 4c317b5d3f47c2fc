#pragma once
// Vision-language checkpoints whose language model qlora runs: Gemma 3 4B/12B/27B
// (model_type gemma3), Mistral Small 3.1/3.2 (mistral3), LLaVA-style models (llava),
// Qwen2.5-VL (qwen2_5_vl), Qwen3-VL (qwen3_vl), Qwen3.5 (qwen3_5), Gemma 4 (gemma4), Llama 4 (llama4)
// and LFM2-VL (lfm2_vl). Their config.json nests the language
// model's config under "text_config" (Qwen2.5-VL's older files keep it flat beside
// vision_config); their files hold it under "language_model.model." (gemma3 / mistral3 /
// llava as save_pretrained writes them, and the Hub's), "model.language_model." (transformers
// >= 4.52's module paths, Qwen3-VL's files) or plain "model." (Qwen2.5-VL's), beside a vision
// tower and a projector ("visual.", "vision_tower.", "multi_modal_projector.", with or
// without "model.") that qlora keeps but does not run. Generation, training and evaluation
// are text-only (Qwen's multimodal rotary is the plain one on text: every section gets the
// same position); a merged export writes the vision part back unchanged, the source's
// config.json and file names as they were.
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
  // The family that runs text_config when it names its own type (qwen2_5_vl_text -> qwen2),
  // "" = text_config's model_type is a family's.
  std::string_view text_type_alias = {}, text_family = {};
  bool flat_config = false;  // the language model's keys may sit at the top level (no text_config)
  // Its module paths are its files' names, "language_model.model.X" and "language_model.lm_head"
  // (Llama4ForConditionalGeneration holds a Llama4ForCausalLM), not transformers >= 4.52's
  // "model.language_model.X" and "lm_head".
  bool hub_module_paths = false;
};

// The wrapper of an outer model_type, or null.
const HfWrapper* find_hf_wrapper(std::string_view model_type);
// "gemma3, mistral3, llava", for messages.
std::string hf_wrapper_types();

// A stored tensor name of a wrapped checkpoint in the language model's own form
// ("language_model.model.layers.0.x", "model.language_model.layers.0.x" or "model.layers.0.x" ->
// "model.layers.0.x"; "language_model.lm_head.weight" or "lm_head.weight" -> "lm_head.weight");
// nullopt for the tensors of the other parts (vision tower, projector).
std::optional<std::string> wrapped_to_text_name(std::string_view stored);
// A language-model module path or tensor name ("model.layers.0.self_attn.q_proj") as the
// wrapper model's module path (transformers >= 4.52 and PEFT's keys):
// "model.language_model.layers.0.self_attn.q_proj"; lm_head stays lm_head.
std::string text_to_wrapped_path(const std::string& text_name);
// ... as the wrapper of the outer model_type `wrapper_type` names its modules (hub_module_paths:
// "language_model.model.layers.0.self_attn.q_proj", "language_model.lm_head").
std::string text_to_wrapped_path(const std::string& text_name, std::string_view wrapper_type);
// The same as a checkpoint whose "model.embed_tokens.weight" is stored as
// `stored_embed` stores it (the three forms above).
std::string text_to_wrapped_file_name(const std::string& text_name, const std::string& stored_embed);
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
