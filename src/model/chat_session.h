#pragma once
// The state of a conversation with a chat model (`qlora chat`): an optional system message
// and the user/assistant turns so far, turned into the prompt for the next answer with the
// model's chat template (as transformers' apply_chat_template(add_generation_prompt=True)).
// Kept apart from the terminal so that it can be tested without one.
//
// The prompt is re-rendered from the whole conversation on every turn rather than appended
// to, because templates may render a message differently depending on what follows it (the
// Llama 2 template puts the system message inside the first user turn, for example).
//
// When the conversation no longer fits the room the context leaves for the prompt, the oldest
// turns are forgotten, a whole turn at a time (a user message and the answers that follow it),
// so that what remains still alternates user/assistant as strict templates demand. The system
// message and the newest user message are always kept.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/chat_template.h"

namespace qlora {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "user" or "assistant" (the system message is held apart)
  std::string content;
};

// The prompt for the next answer.
struct ChatPrompt {
  std::string text;      // the rendered template, ending with the generation prompt
  std::vector<int> ids;  // `text` encoded (special tokens parsed, none added: the template has them)
  size_t messages = 0;   // messages rendered, the system message included
  size_t dropped = 0;    // old messages forgotten by this call to make the prompt fit
};

class ChatSession {
 public:
  // `chat_template` is the Jinja text; `template_name` names it in errors (a file path or
  // "MODEL.gguf:tokenizer.chat_template"). Keeps a reference to `tok`, which must outlive
  // the session. Throws Error on a template that does not parse.
  ChatSession(const Tokenizer& tok, std::string_view chat_template, std::string template_name);

  // The system message ("" when none: the template's own default, if any, applies).
  const std::string& system() const { return system_; }
  // Sets the system message ("" removes it) and starts a new conversation: a different
  // system message makes the earlier answers meaningless.
  void set_system(std::string text);
  // Forgets every turn; keeps the system message.
  void reset();

  // The user and assistant messages still remembered, oldest first (no system message).
  const std::vector<ChatMessage>& history() const { return history_; }
  // Messages forgotten to fit the context since the last reset (0 when none).
  size_t forgotten() const { return forgotten_; }

  // The messages as the template sees them: the system message (when not empty), then the
  // history, as a JSON array of {"role", "content"}.
  nlohmann::ordered_json messages() const;
  // The template rendered over messages(), with the model's BOS/EOS token texts.
  std::string render(bool add_generation_prompt) const;

  // Adds `user_text` as the next user message and returns the prompt for the answer to it,
  // at most `max_prompt_tokens` long: the oldest turns are forgotten (for good) until it
  // fits. Throws Error when even the system message and `user_text` alone do not fit, or
  // when the template fails; the conversation is then unchanged.
  ChatPrompt ask(std::string user_text, int64_t max_prompt_tokens);

  // Adds the assistant's answer to the last user message (also a partial one, cut short by
  // Ctrl-C or by -n, so that the next turn sees what the user saw).
  void answer(std::string text);

 private:
  nlohmann::ordered_json messages_from(const std::vector<ChatMessage>& history, size_t first) const;

  const Tokenizer* tok_;
  train::ChatTemplate template_;
  std::optional<std::string> bos_, eos_;
  std::string system_;
  std::vector<ChatMessage> history_;
  size_t forgotten_ = 0;
};

}  // namespace qlora
