#include "model/chat_session.h"

#include <utility>

#include "base/error.h"
#include "formats/tokenizer.h"

namespace qlora {

namespace {
std::optional<std::string> token_text(const Tokenizer& tok, int32_t id) {
  if (id < 0) return std::nullopt;
  return tok.token_text(id);
}
}  // namespace

ChatSession::ChatSession(const Tokenizer& tok, std::string_view chat_template, std::string template_name)
    : tok_(&tok),
      template_(chat_template, std::move(template_name)),
      bos_(token_text(tok, tok.bos_id())),
      eos_(token_text(tok, tok.eos_id())) {}

void ChatSession::set_system(std::string text) {
  system_ = std::move(text);
  reset();
}

void ChatSession::reset() {
  history_.clear();
  forgotten_ = 0;
}

nlohmann::ordered_json ChatSession::messages_from(const std::vector<ChatMessage>& history, size_t first) const {
  nlohmann::ordered_json m = nlohmann::ordered_json::array();
  if (!system_.empty()) m.push_back({{"role", "system"}, {"content", system_}});
  for (size_t i = first; i < history.size(); ++i)
    m.push_back({{"role", history[i].role}, {"content", history[i].content}});
  return m;
}

nlohmann::ordered_json ChatSession::messages() const { return messages_from(history_, 0); }

std::string ChatSession::render(bool add_generation_prompt) const {
  return template_.render(messages(), add_generation_prompt, bos_, eos_);
}

ChatPrompt ChatSession::ask(std::string user_text, int64_t max_prompt_tokens) {
  // Worked on a copy so that a failure leaves the conversation as it was.
  std::vector<ChatMessage> all = history_;
  all.push_back({"user", std::move(user_text)});
  const size_t last = all.size() - 1;
  // As transformers' apply_chat_template: the template renders BOS itself when the model
  // wants one, so encoding adds no special tokens.
  EncodeOptions enc;
  enc.add_special_tokens = false;
  size_t first = 0;
  for (;;) {
    ChatPrompt p;
    const nlohmann::ordered_json msgs = messages_from(all, first);
    p.text = template_.render(msgs, /*add_generation_prompt=*/true, bos_, eos_);
    const std::vector<int32_t> ids = tok_->encode(p.text, enc);
    if (static_cast<int64_t>(ids.size()) <= max_prompt_tokens) {
      p.ids.assign(ids.begin(), ids.end());
      p.messages = msgs.size();
      p.dropped = first;
      history_.assign(std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(first)),
                      std::make_move_iterator(all.end()));
      forgotten_ += first;
      return p;
    }
    if (first == last)
      fail("message", "needs " + std::to_string(ids.size()) +
                          " prompt tokens (with the system message and the chat template), more than the " +
                          std::to_string(max_prompt_tokens) +
                          " the context leaves for the prompt; send a shorter message");
    // Forget the oldest turn whole: its user message and every answer up to the next one.
    size_t next = first + 1;
    while (next < last && all[next].role != "user") ++next;
    first = next;
  }
}

void ChatSession::answer(std::string text) { history_.push_back({"assistant", std::move(text)}); }

}  // namespace qlora
