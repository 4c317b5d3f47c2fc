#pragma once
// Chat templates: the Jinja template in tokenizer_config.json ("chat_template") or GGUF
// ("tokenizer.chat_template") that turns a list of messages into the prompt string. Renders
// the way transformers' apply_chat_template does (render_jinja_template): the template sees
// `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and `documents`
// (None unless given) and any extra variables.
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "train/jinja.h"

namespace qlora {
class GgufFile;
}

namespace qlora::train {

// A chat template and the special tokens it is rendered with, as a model ships them.
struct ChatTemplateSource {
  std::string source;
  std::optional<std::string> bos_token, eos_token;
  std::string where;  // for error messages, e.g. "model.gguf:tokenizer.chat_template"
};

// From a GGUF file: tokenizer.chat_template (or tokenizer.chat_template.<name> when `name` is
// not "default"); bos/eos are the vocabulary strings of tokenizer.ggml.{bos,eos}_token_id.
// Throws Error naming the file when the template is missing.
ChatTemplateSource chat_template_from_gguf(const GgufFile& f, std::string_view name = "default");

// From a parsed tokenizer_config.json: "chat_template" is a string or a list of
// {"name", "template"} objects (then `name` picks one); bos_token/eos_token are strings or
// AddedToken objects ({"content": ...}). `where` names the file in errors.
ChatTemplateSource chat_template_from_tokenizer_config(const nlohmann::json& config, std::string where,
                                                       std::string_view name = "default");

class ChatTemplate {
 public:
  // Parses the template; throws qlora::Error naming `name` and the line/column on bad syntax.
  explicit ChatTemplate(std::string_view source, std::string name = "chat template");

  // `messages`: JSON array of objects ({"role", "content", ...}); `extra`: JSON object of more
  // top-level variables (e.g. "tools", "date_string"); a null bos/eos token renders as None.
  // Like transformers, a message's reasoning given as "reasoning_content", "thinking" or
  // "reasoning" is visible to the template under both "thinking" and "reasoning_content".
  // Throws qlora::Error on raise_exception() or any evaluation error.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const std::optional<std::string>& bos_token, const std::optional<std::string>& eos_token,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  jinja::Template tpl_;
};

// One-shot convenience.
std::string render_chat_template(std::string_view source, const nlohmann::ordered_json& messages,
                                 bool add_generation_prompt, const std::optional<std::string>& bos_token,
                                 const std::optional<std::string>& eos_token,
                                 const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

}  // namespace qlora::train
