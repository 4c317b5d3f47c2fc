#include "train/chat_template.h"

#include "base/error.h"
#include "formats/gguf.h"

namespace qlora::train {

namespace {

// transformers' _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r}.
nlohmann::ordered_json alias_reasoning_fields(const nlohmann::ordered_json& messages) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    const nlohmann::ordered_json* reasoning = nullptr;
    for (const char* k : {"reasoning_content", "thinking", "reasoning"}) {
      auto it = m.find(k);
      if (it != m.end() && !it->is_null()) { reasoning = &*it; break; }
    }
    if (!reasoning) { out.push_back(m); continue; }
    nlohmann::ordered_json a = nlohmann::ordered_json::object();
    a["thinking"] = *reasoning;
    for (auto it = m.begin(); it != m.end(); ++it) a[it.key()] = it.value();
    a["reasoning_content"] = *reasoning;
    out.push_back(std::move(a));
  }
  return out;
}

std::optional<std::string> token_string(const nlohmann::json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

ChatTemplateSource chat_template_from_gguf(const GgufFile& f, std::string_view name) {
  ChatTemplateSource s;
  std::string key = name == "default" ? std::string("tokenizer.chat_template")
                                      : "tokenizer.chat_template." + std::string(name);
  s.where = f.path() + ":" + key;
  check(f.has(key), f.path(), "metadata key '" + key + "' missing (the model has no such chat template)");
  s.source = std::string(f.get_string(key));
  GgufTokenizerInfo tok = read_gguf_tokenizer(f);
  if (tok.bos_id) s.bos_token = tok.tokens[size_t(*tok.bos_id)];
  if (tok.eos_id) s.eos_token = tok.tokens[size_t(*tok.eos_id)];
  return s;
}

ChatTemplateSource chat_template_from_tokenizer_config(const nlohmann::json& config, std::string where,
                                                       std::string_view name) {
  check(config.is_object(), where, "tokenizer config must be a JSON object");
  ChatTemplateSource s;
  s.where = where + ":chat_template";
  auto it = config.find("chat_template");
  check(it != config.end() && !it->is_null(), where, "no \"chat_template\" in tokenizer config");
  if (it->is_string()) {
    check(name == "default", where, "chat template '" + std::string(name) + "' not found (only a default one)");
    s.source = it->get<std::string>();
  } else if (it->is_array()) {
    bool found = false;
    std::string names;
    for (const auto& e : *it) {
      check(e.is_object() && e.contains("name") && e["name"].is_string() && e.contains("template") &&
                e["template"].is_string(),
            where, "chat_template list entries must be {\"name\": string, \"template\": string}");
      names += (names.empty() ? "" : ", ") + e["name"].get<std::string>();
      if (e["name"].get<std::string>() == name) { s.source = e["template"].get<std::string>(); found = true; }
    }
    check(found, where, "chat template '" + std::string(name) + "' not found (have: " + names + ")");
    s.where = where + ":chat_template[" + std::string(name) + "]";
  } else {
    fail(where, "\"chat_template\" must be a string or a list of named templates");
  }
  if (auto b = config.find("bos_token"); b != config.end()) s.bos_token = token_string(*b);
  if (auto e = config.find("eos_token"); e != config.end()) s.eos_token = token_string(*e);
  return s;
}

ChatTemplate::ChatTemplate(std::string_view source, std::string name)
    : source_(source), tpl_(source, std::move(name)) {}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const std::optional<std::string>& bos_token,
                                 const std::optional<std::string>& eos_token,
                                 const nlohmann::ordered_json& extra) const {
  check(messages.is_array(), tpl_.name(), "messages must be a JSON array");
  for (const auto& m : messages) check(m.is_object(), tpl_.name(), "each message must be a JSON object");
  check(extra.is_object() || extra.is_null(), tpl_.name(), "extra template variables must be a JSON object");
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  // Same order and defaults as transformers' render_jinja_template + apply_chat_template.
  ctx["messages"] = alias_reasoning_fields(messages);
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = add_generation_prompt;
  ctx["bos_token"] = bos_token ? nlohmann::ordered_json(*bos_token) : nlohmann::ordered_json(nullptr);
  ctx["eos_token"] = eos_token ? nlohmann::ordered_json(*eos_token) : nlohmann::ordered_json(nullptr);
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) ctx[it.key()] = it.value();
  return tpl_.render(ctx);
}

std::string render_chat_template(std::string_view source, const nlohmann::ordered_json& messages,
                                 bool add_generation_prompt, const std::optional<std::string>& bos_token,
                                 const std::optional<std::string>& eos_token, const nlohmann::ordered_json& extra) {
  return ChatTemplate(source).render(messages, add_generation_prompt, bos_token, eos_token, extra);
}

}  // namespace qlora::train
