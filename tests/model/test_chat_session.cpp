// ChatSession (the conversation state behind `qlora chat`): the prompt is exactly the chat
// template rendered over the conversation (checked against transformers' renderings in
// tests/fixtures/chat_templates), /reset and /system semantics, and forgetting the oldest
// turns when the context is too small. Uses the committed fixture tokenizers only, so it
// never skips.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/tokenizer.h"
#include "model/chat_session.h"
#include "train/chat_template.h"

namespace {

using qlora::ChatPrompt;
using qlora::ChatSession;
using qlora::Tokenizer;

std::string fixture(const std::string& rel) { return std::string(QLORA_FIXTURE_DIR) + "/" + rel; }

nlohmann::json template_fixture(const std::string& name) {
  std::ifstream in(fixture("chat_templates/" + name + ".json"));
  return nlohmann::json::parse(in);
}

std::string expected_case(const nlohmann::json& fx, const std::string& case_name) {
  for (const auto& c : fx["cases"])
    if (c["name"] == case_name) return c["expected"].get<std::string>();
  ADD_FAILURE() << "no case " << case_name;
  return {};
}

const Tokenizer& gpt2_tok() {
  static const Tokenizer t = Tokenizer::from_file(fixture("tokenizer/bpe_gpt2"));
  return t;
}
// Has <s> and </s>, which the Llama 2 template renders as bos_token / eos_token.
const Tokenizer& llama2_tok() {
  static const Tokenizer t = Tokenizer::from_file(fixture("tokenizer/sp_llama2"));
  return t;
}

constexpr int64_t kRoomy = 1 << 20;

std::vector<int> encode_prompt(const Tokenizer& tok, const std::string& text) {
  qlora::EncodeOptions enc;
  enc.add_special_tokens = false;
  const std::vector<int32_t> ids = tok.encode(text, enc);
  return {ids.begin(), ids.end()};
}

// The transformers rendering of the fixture's multi-turn case, built through the session.
TEST(ChatSession, PromptIsTheTemplateRenderingSmolLM2) {
  const nlohmann::json fx = template_fixture("smollm2");
  ChatSession s(gpt2_tok(), fx["template"].get<std::string>(), "smollm2 fixture");
  s.set_system("You are a terse assistant.");
  const ChatPrompt first = s.ask("Hello! What is 2+2?", kRoomy);
  EXPECT_EQ(first.messages, 2u);
  s.answer("4.");
  const ChatPrompt p = s.ask("And 3+3?", kRoomy);
  EXPECT_EQ(p.text, expected_case(fx, "system_multi_turn_gen"));
  EXPECT_EQ(p.ids, encode_prompt(gpt2_tok(), p.text));
  EXPECT_EQ(p.messages, 4u);
  EXPECT_EQ(p.dropped, 0u);
  // The same text as rendering the session's messages with the template directly.
  EXPECT_EQ(p.text, s.render(/*add_generation_prompt=*/true));
  EXPECT_EQ(p.text, qlora::train::render_chat_template(fx["template"].get<std::string>(), s.messages(), true,
                                                       std::nullopt, std::nullopt));
  EXPECT_EQ(s.render(false), expected_case(fx, "system_multi_turn"));
}

// The Llama 2 template uses bos_token/eos_token (the tokenizer's <s> and </s>) and folds the
// system message into the first user turn.
TEST(ChatSession, PromptIsTheTemplateRenderingLlama2) {
  const nlohmann::json fx = template_fixture("llama2");
  ChatSession s(llama2_tok(), fx["template"].get<std::string>(), "llama2 fixture");
  s.set_system("You are a terse assistant.");
  s.ask("Hello! What is 2+2?", kRoomy);
  s.answer("4.");
  const ChatPrompt p = s.ask("And 3+3?", kRoomy);
  EXPECT_EQ(p.text, expected_case(fx, "system_multi_turn_gen"));
  EXPECT_EQ(p.ids, encode_prompt(llama2_tok(), p.text));
  // <s> is parsed as the special token, not spelled out in pieces.
  ASSERT_FALSE(p.ids.empty());
  EXPECT_EQ(p.ids.front(), llama2_tok().bos_id());
}

TEST(ChatSession, MessagesHoldSystemThenHistory) {
  ChatSession s(gpt2_tok(), template_fixture("smollm2")["template"].get<std::string>(), "t");
  EXPECT_TRUE(s.messages().empty());
  s.ask("hi", kRoomy);
  s.answer("hello");
  nlohmann::ordered_json m = s.messages();
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0]["role"], "user");
  EXPECT_EQ(m[1]["role"], "assistant");
  EXPECT_EQ(m[1]["content"], "hello");
  // No system message: the template's own default system prompt applies.
  EXPECT_NE(s.render(true).find("You are a helpful AI assistant named SmolLM"), std::string::npos);
}

TEST(ChatSession, ResetKeepsTheSystemMessage) {
  ChatSession s(gpt2_tok(), template_fixture("smollm2")["template"].get<std::string>(), "t");
  s.set_system("Be brief.");
  s.ask("one", kRoomy);
  s.answer("1");
  s.reset();
  EXPECT_TRUE(s.history().empty());
  EXPECT_EQ(s.system(), "Be brief.");
  const ChatPrompt p = s.ask("two", kRoomy);
  EXPECT_EQ(p.messages, 2u);
  EXPECT_EQ(p.text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ntwo<|im_end|>\n"
                    "<|im_start|>assistant\n");
}

TEST(ChatSession, SetSystemStartsOver) {
  ChatSession s(gpt2_tok(), template_fixture("smollm2")["template"].get<std::string>(), "t");
  s.ask("one", kRoomy);
  s.answer("1");
  s.set_system("Answer in French.");
  EXPECT_TRUE(s.history().empty());
  EXPECT_EQ(s.system(), "Answer in French.");
  ASSERT_EQ(s.messages().size(), 1u);
  EXPECT_EQ(s.messages()[0]["role"], "system");
  // An empty one removes it (and starts over too).
  s.ask("two", kRoomy);
  s.set_system("");
  EXPECT_TRUE(s.history().empty());
  EXPECT_TRUE(s.messages().empty());
}

// A partial answer (Ctrl-C, -n) is part of what the next turn sees.
TEST(ChatSession, PartialAnswerIsKept) {
  ChatSession s(gpt2_tok(), template_fixture("smollm2")["template"].get<std::string>(), "t");
  s.ask("Tell me a story", kRoomy);
  s.answer("Once upon a ti");
  const ChatPrompt p = s.ask("Go on", kRoomy);
  EXPECT_NE(p.text.find("<|im_start|>assistant\nOnce upon a ti<|im_end|>\n<|im_start|>user\nGo on"),
            std::string::npos);
  EXPECT_EQ(p.messages, 3u);  // the template's default system message is not one of ours
}

// Token count of the prompt for `system` + `turns` (user, assistant pairs) + `last` user message,
// rendered independently of the session.
int64_t prompt_tokens(const Tokenizer& tok, const std::string& tpl, const std::string& system,
                      const std::vector<std::pair<std::string, std::string>>& turns, const std::string& last) {
  nlohmann::ordered_json m = nlohmann::ordered_json::array();
  if (!system.empty()) m.push_back({{"role", "system"}, {"content", system}});
  for (const auto& [u, a] : turns) {
    m.push_back({{"role", "user"}, {"content", u}});
    m.push_back({{"role", "assistant"}, {"content", a}});
  }
  m.push_back({{"role", "user"}, {"content", last}});
  const std::string text = qlora::train::render_chat_template(tpl, m, true, tok.token_text(tok.bos_id()),
                                                              tok.token_text(tok.eos_id()));
  return static_cast<int64_t>(encode_prompt(tok, text).size());
}

// With a context too small for the whole conversation, the oldest turns go, whole, and the
// system message and the newest turns stay. The Llama 2 template raises unless roles
// alternate user/assistant, so a half-dropped turn would fail.
TEST(ChatSession, TrimmingKeepsSystemAndNewestTurns) {
  const std::string tpl = template_fixture("llama2")["template"].get<std::string>();
  const Tokenizer& tok = llama2_tok();
  std::vector<std::pair<std::string, std::string>> turns;
  for (int i = 0; i < 5; ++i)
    turns.emplace_back("question number " + std::to_string(i), "the answer to question " + std::to_string(i));
  const std::string system = "You are a terse assistant.";

  // Room for exactly the last two turns and the new message.
  const std::vector<std::pair<std::string, std::string>> last_two(turns.end() - 2, turns.end());
  const int64_t limit = prompt_tokens(tok, tpl, system, last_two, "final question");
  ASSERT_LT(limit, prompt_tokens(tok, tpl, system, turns, "final question"));

  ChatSession s(tok, tpl, "llama2 fixture");
  s.set_system(system);
  for (const auto& [u, a] : turns) {
    const ChatPrompt p = s.ask(u, kRoomy);
    EXPECT_EQ(p.dropped, 0u);
    s.answer(a);
  }
  const ChatPrompt p = s.ask("final question", limit);
  EXPECT_EQ(static_cast<int64_t>(p.ids.size()), limit);
  EXPECT_EQ(p.dropped, 6u);   // three turns of two messages
  EXPECT_EQ(p.messages, 6u);  // system + two turns + the new message
  EXPECT_EQ(s.forgotten(), 6u);
  ASSERT_EQ(s.history().size(), 5u);
  EXPECT_EQ(s.history()[0].content, "question number 3");
  EXPECT_EQ(s.history()[0].role, "user");
  EXPECT_EQ(s.history()[3].content, "the answer to question 4");
  EXPECT_EQ(s.history()[4].content, "final question");
  EXPECT_EQ(s.system(), system);
  EXPECT_NE(p.text.find("<<SYS>>\n" + system + "\n<</SYS>>\n\nquestion number 3"), std::string::npos);
  EXPECT_EQ(p.text.find("question number 2"), std::string::npos);
  EXPECT_EQ(p.text, s.render(true));

  // One token less: one more turn goes.
  s.answer("ok");
  const int64_t next_limit =
      prompt_tokens(tok, tpl, system, {turns[3], turns[4], {"final question", "ok"}}, "again") - 1;
  const ChatPrompt q = s.ask("again", next_limit);
  EXPECT_EQ(q.dropped, 2u);
  EXPECT_EQ(s.forgotten(), 8u);
  EXPECT_EQ(s.history().front().content, "question number 4");
  EXPECT_LE(static_cast<int64_t>(q.ids.size()), next_limit);

  // /reset forgets the count too.
  s.reset();
  EXPECT_EQ(s.forgotten(), 0u);
}

// When the system message and the new message alone do not fit, ask() throws and the
// conversation is as it was.
TEST(ChatSession, MessageTooLongLeavesTheConversationUnchanged) {
  const std::string tpl = template_fixture("smollm2")["template"].get<std::string>();
  ChatSession s(gpt2_tok(), tpl, "t");
  s.set_system("Be brief.");
  s.ask("hi", kRoomy);
  s.answer("hello");
  const std::string before = s.render(false);
  try {
    s.ask(std::string(2000, 'x') + " a very long message", 20);
    FAIL() << "expected an error";
  } catch (const qlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("send a shorter message"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("more than the 20"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.render(false), before);
  EXPECT_EQ(s.history().size(), 2u);
  EXPECT_EQ(s.forgotten(), 0u);
}

TEST(ChatSession, BadTemplateNamesItself) {
  try {
    ChatSession s(gpt2_tok(), "{% for m in messages %}", "my_template.jinja");
    FAIL() << "expected an error";
  } catch (const qlora::Error& e) {
    EXPECT_NE(std::string(e.what()).find("my_template.jinja"), std::string::npos) << e.what();
  }
}

}  // namespace
