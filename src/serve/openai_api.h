#pragma once
// The OpenAI-compatible request and response formats `qlora serve` speaks, as pure functions
// (no sockets), so every rule is testable on its own:
//   POST /v1/chat/completions   {"model", "messages": [{"role", "content"}], ...}
//   POST /v1/completions        {"model", "prompt": "...", ...}
// with max_tokens (max_completion_tokens), temperature, top_p, top_k, seed, stop
// (string or list), stream, repetition_penalty / frequency_penalty (ignored when 0).
// Errors are values (status + OpenAI's {"error": {...}} body), never exceptions.
#include <cstdint>
#include <optional>
#include <variant>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/generate.h"

namespace qlora::serve {

enum class Endpoint { ChatCompletions, Completions };

// A request that parsed and passed every check.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string model;                       // "" when absent: the base model
  nlohmann::ordered_json messages;         // chat: the messages (content as plain text)
  std::string prompt;                      // completions: the prompt text
  GenerationOptions gen;                   // max_new_tokens, sampling, stop strings
  bool stream = false;
  bool include_usage = false;              // stream_options.include_usage
  int n = 1;                               // choices to generate (sampling seeds seed, seed + 1, ...)
};

// An HTTP error with OpenAI's error body.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field ("" when none)
  std::string code;   // e.g. "model_not_found"
  std::string body() const;  // {"error": {"message", "type", "param", "code"}}
};

struct Limits {
  int64_t max_tokens = 4096;      // a request asking for more is refused (400)
  int64_t default_max_tokens = 256;
  size_t max_stop_strings = 4;
  int max_n = 8;                  // most choices ("n") one request may ask for
};

// Parses and checks a request body for `endpoint`. Returns an ApiError (400) naming the
// field for malformed JSON, wrong types, out-of-range values or missing fields.
std::variant<CompletionRequest, ApiError> parse_request(Endpoint endpoint, const std::string& body,
                                                        const Limits& limits);

// OpenAI's finish_reason for a stop reason: "stop" (end of generation, stop string),
// "length" (max tokens, context), or "cancelled".
const char* finish_reason(StopReason r);

// The response body of a finished request.
// The response of a finished request: one choice per result (index i: results[i]), usage
// counting the prompt once and every choice's tokens.
nlohmann::ordered_json completion_response(const CompletionRequest& req, const std::string& id,
                                           const std::string& model_name, int64_t created,
                                           const std::vector<GenerationResult>& results, int64_t prompt_tokens);

// One server-sent event of a streamed response ("data: {...}\n\n"): a text delta, or the
// final chunk with finish_reason (text empty) when `stop` is set.
std::string stream_chunk(const CompletionRequest& req, const std::string& id, const std::string& model_name,
                         int64_t created, const std::string& text, std::optional<StopReason> stop,
                         bool first, int index = 0);
// The usage chunk (stream_options.include_usage) and the closing "data: [DONE]\n\n".
std::string stream_usage_chunk(const CompletionRequest& req, const std::string& id, const std::string& model_name,
                               int64_t created, int64_t prompt_tokens, int64_t completion_tokens,
                               int64_t cached_tokens = 0);
// (usage.prompt_tokens_details.cached_tokens, as OpenAI's: prompt tokens whose keys and values
// came from a slot's earlier request instead of being computed again)
inline constexpr const char* kStreamDone = "data: [DONE]\n\n";

}  // namespace qlora::serve
