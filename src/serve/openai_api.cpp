#include "serve/openai_api.h"

#include <cmath>

#include "base/json_error.h"
#include "base/text_excerpt.h"

namespace qlora::serve {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// The fields every response and chunk starts with.
ojson envelope(const std::string& id, const char* object, int64_t created, const std::string& model_name) {
  ojson r;
  r["id"] = id;
  r["object"] = object;
  r["created"] = created;
  r["model"] = model_name;
  return r;
}

ojson usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

const char* chunk_object(const CompletionRequest& req) {
  return req.endpoint == Endpoint::ChatCompletions ? "chat.completion.chunk" : "text_completion";
}

ApiError bad(std::string param, std::string message) {
  ApiError e;
  e.status = 400;
  e.param = std::move(param);
  e.message = std::move(message);
  return e;
}

// Plain text of a message's content: a string, or OpenAI's list of {"type": "text", "text"}.
std::optional<std::string> content_text(const json& c) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_null()) return std::string();
  if (!c.is_array()) return std::nullopt;
  std::string out;
  for (const json& part : c) {
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
        !part["text"].is_string())
      return std::nullopt;
    out += part["text"].get<std::string>();
  }
  return out;
}

}  // namespace

std::string ApiError::body() const {
  ojson e = {{"message", message}, {"type", type}, {"param", param.empty() ? ojson(nullptr) : ojson(param)},
             {"code", code.empty() ? ojson(nullptr) : ojson(code)}};
  return ojson{{"error", e}}.dump();
}

std::variant<CompletionRequest, ApiError> parse_request(Endpoint endpoint, const std::string& body,
                                                        const Limits& limits) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    return bad("", "the request body is not valid JSON" + json_error_at(e, body));
  }
  if (!j.is_object()) return bad("", "the request body must be a JSON object");
  CompletionRequest r;
  r.endpoint = endpoint;
  if (j.contains("model")) {
    if (!j["model"].is_string()) return bad("model", "'model' must be a string");
    r.model = j["model"].get<std::string>();
  }
  if (endpoint == Endpoint::ChatCompletions) {
    if (!j.contains("messages")) return bad("messages", "'messages' is required");
    const json& m = j["messages"];
    if (!m.is_array() || m.empty()) return bad("messages", "'messages' must be a non-empty array");
    r.messages = ojson::array();
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string p = "messages[" + std::to_string(i) + "]";
      if (!m[i].is_object() || !m[i].contains("role") || !m[i]["role"].is_string())
        return bad(p, p + " must be an object with a string 'role'");
      const std::string role = m[i]["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "developer")
        return bad(p + ".role", p + ".role " + excerpt(role) + " is not one of system, user, assistant");
      const auto text = content_text(m[i].contains("content") ? m[i]["content"] : json());
      if (!text) return bad(p + ".content", p + ".content must be a string or a list of text parts");
      // (null content is an assistant turn's, when it only called tools; a user's or system's is a mistake)
      if (role != "assistant" && (!m[i].contains("content") || m[i]["content"].is_null()))
        return bad(p + ".content", p + ".content is missing: a " + role + " message needs text");
      r.messages.push_back({{"role", role == "developer" ? "system" : role}, {"content", *text}});
    }
  } else {
    if (!j.contains("prompt")) return bad("prompt", "'prompt' is required");
    const json& p = j["prompt"];
    if (p.is_string()) r.prompt = p.get<std::string>();
    else if (p.is_array() && p.size() == 1 && p[0].is_string()) r.prompt = p[0].get<std::string>();
    else return bad("prompt", "'prompt' must be a string (one prompt per request)");
    if (r.prompt.empty()) return bad("prompt", "'prompt' is empty");
  }

  auto number = [&](const char* key, double lo, double hi, double dflt, double* out) -> std::optional<ApiError> {
    *out = dflt;
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number()) return bad(key, std::string("'") + key + "' must be a number");
    const double v = j[key].get<double>();
    if (!std::isfinite(v) || v < lo || v > hi) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "'%s' must be in [%g, %g], got %g", key, lo, hi, v);
      return bad(key, buf);
    }
    *out = v;
    return std::nullopt;
  };
  double v = 0;
  const char* max_key = j.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (auto e = number(max_key, 1, static_cast<double>(limits.max_tokens), static_cast<double>(limits.default_max_tokens), &v))
    return *e;
  if (j.contains(max_key) && j[max_key].is_number() && !j[max_key].is_number_integer())
    return bad(max_key, std::string("'") + max_key + "' must be an integer");
  r.gen.max_new_tokens = static_cast<int64_t>(v);
  // OpenAI's default temperature is 1; so is ours here (the CLI's generate defaults to greedy).
  if (auto e = number("temperature", 0, 2, 1.0, &v)) return *e;
  r.gen.sampling.temperature = static_cast<float>(v);
  if (auto e = number("top_p", 1e-9, 1, 1.0, &v)) return *e;
  r.gen.sampling.top_p = static_cast<float>(v);
  if (auto e = number("top_k", 0, 1e6, 0, &v)) return *e;
  r.gen.sampling.top_k = static_cast<int>(v);
  if (auto e = number("repetition_penalty", 1e-3, 10, 1.0, &v)) return *e;
  r.gen.sampling.repetition_penalty = static_cast<float>(v);
  if (auto e = number("seed", -9.2e18, 9.2e18, 0, &v)) return *e;
  r.gen.sampling.seed = static_cast<uint64_t>(static_cast<int64_t>(v));
  for (const char* ignored : {"frequency_penalty", "presence_penalty"})
    if (auto e = number(ignored, -2, 2, 0, &v)) return *e;
  if (j.contains("n") && !j["n"].is_null()) {
    if (!j["n"].is_number_integer() || j["n"].get<int64_t>() < 1 || j["n"].get<int64_t>() > limits.max_n)
      return bad("n", "'n' must be an integer in [1, " + std::to_string(limits.max_n) + "]");
    r.n = static_cast<int>(j["n"].get<int64_t>());
  }
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& s = j["stop"];
    if (s.is_string()) r.gen.stop_strings = {s.get<std::string>()};
    else if (s.is_array()) {
      for (const json& x : s) {
        if (!x.is_string()) return bad("stop", "'stop' must be a string or a list of strings");
        r.gen.stop_strings.push_back(x.get<std::string>());
      }
    } else {
      return bad("stop", "'stop' must be a string or a list of strings");
    }
    if (r.gen.stop_strings.size() > limits.max_stop_strings)
      return bad("stop", "at most " + std::to_string(limits.max_stop_strings) + " stop strings");
    for (const std::string& s2 : r.gen.stop_strings)
      if (s2.empty()) return bad("stop", "a stop string is empty");
  }
  // llama.cpp's server extension: generate exactly max_tokens, never stopping at an
  // end-of-generation token (benchmarks; stop strings still apply).
  if (j.contains("ignore_eos") && !j["ignore_eos"].is_null()) {
    if (!j["ignore_eos"].is_boolean()) return bad("ignore_eos", "'ignore_eos' must be true or false");
    r.gen.ignore_eos = j["ignore_eos"].get<bool>();
  }
  if (j.contains("stream")) {
    if (!j["stream"].is_boolean()) return bad("stream", "'stream' must be true or false");
    r.stream = j["stream"].get<bool>();
  }
  // Features that change what the answer means are refused rather than ignored: a client asking
  // for tool calls, JSON output or log-probabilities would otherwise take plain text for them.
  auto set = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  auto unsupported = [&](const char* key, const std::string& what) {
    std::string m = "'";  // (appended piece by piece: GCC 12's -Wrestrict misfires on "'" + std::string(...))
    m.append(key).append("': ").append(what).append(" is not supported by this server");
    return bad(key, m);
  };
  if (set("tools") && !(j["tools"].is_array() && j["tools"].empty())) return unsupported("tools", "tool calling");
  if (set("functions") && !(j["functions"].is_array() && j["functions"].empty()))
    return unsupported("functions", "function calling");
  if (set("tool_choice") && !(j["tool_choice"].is_string() && j["tool_choice"] == "none"))
    return unsupported("tool_choice", "tool calling");
  auto text_format = [](const json& f) {
    if (!f.is_object()) return false;
    const auto it = f.find("type");
    return it == f.end() || (it->is_string() && it->get<std::string>() == "text");
  };
  if (set("response_format") && !text_format(j["response_format"]))
    return unsupported("response_format", "a response format other than text (JSON mode, schemas)");
  if (set("logprobs") && !(j["logprobs"].is_boolean() ? !j["logprobs"].get<bool>()
                                                      : j["logprobs"].is_number_integer() && j["logprobs"] == 0))
    return unsupported("logprobs", "returning log-probabilities");
  if (set("top_logprobs") && !(j["top_logprobs"].is_number_integer() && j["top_logprobs"] == 0))
    return unsupported("top_logprobs", "returning log-probabilities");
  if (set("echo") && !(j["echo"].is_boolean() && !j["echo"].get<bool>())) return unsupported("echo", "echoing the prompt");
  if (set("suffix") && !(j["suffix"].is_string() && j["suffix"].get<std::string>().empty()))
    return unsupported("suffix", "insertion (a suffix)");
  if (set("best_of") && !(j["best_of"].is_number_integer() && j["best_of"] == 1))
    return unsupported("best_of", "best-of sampling");
  if (j.contains("stream_options") && j["stream_options"].is_object() && j["stream_options"].contains("include_usage"))
    r.include_usage = j["stream_options"]["include_usage"].is_boolean() && j["stream_options"]["include_usage"].get<bool>();
  return r;
}

const char* finish_reason(StopReason r) {
  switch (r) {
    case StopReason::EndOfGeneration:
    case StopReason::StopString: return "stop";
    case StopReason::Length:
    case StopReason::Context: return "length";
    case StopReason::Cancelled: return "cancelled";
  }
  return "stop";
}

ojson completion_response(const CompletionRequest& req, const std::string& id, const std::string& model_name,
                          int64_t created, const std::vector<GenerationResult>& results, int64_t prompt_tokens) {
  ojson choices = ojson::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const GenerationResult& g = results[i];
    ojson choice;
    choice["index"] = static_cast<int64_t>(i);
    if (req.endpoint == Endpoint::ChatCompletions) choice["message"] = {{"role", "assistant"}, {"content", g.text}};
    else choice["text"] = g.text;
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = finish_reason(g.stop);
    choices.push_back(std::move(choice));
    completion_tokens += static_cast<int64_t>(g.output_ids.size());
  }
  ojson r = envelope(id, req.endpoint == Endpoint::ChatCompletions ? "chat.completion" : "text_completion", created,
                     model_name);
  r["choices"] = std::move(choices);
  r["usage"] = usage_json(prompt_tokens, completion_tokens, results.empty() ? 0 : results[0].prompt_tokens_reused);
  return r;
}

std::string stream_chunk(const CompletionRequest& req, const std::string& id, const std::string& model_name,
                         int64_t created, const std::string& text, std::optional<StopReason> stop, bool first,
                         int index) {
  ojson choice;
  choice["index"] = index;
  if (req.endpoint == Endpoint::ChatCompletions) {
    ojson delta = ojson::object();
    if (first) delta["role"] = "assistant";
    if (!stop) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = stop ? ojson(finish_reason(*stop)) : ojson(nullptr);
  ojson r = envelope(id, chunk_object(req), created, model_name);
  r["choices"] = ojson::array({choice});
  return "data: " + r.dump() + "\n\n";
}

std::string stream_usage_chunk(const CompletionRequest& req, const std::string& id, const std::string& model_name,
                               int64_t created, int64_t prompt_tokens, int64_t completion_tokens,
                               int64_t cached_tokens) {
  ojson r = envelope(id, chunk_object(req), created, model_name);
  r["choices"] = ojson::array();
  r["usage"] = usage_json(prompt_tokens, completion_tokens, cached_tokens);
  return "data: " + r.dump() + "\n\n";
}

}  // namespace qlora::serve
