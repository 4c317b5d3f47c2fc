#include "base/json_error.h"

#include <algorithm>

#include "base/text_excerpt.h"

namespace qlora {

std::string json_error_reason(const nlohmann::json::exception& e) {
  // "[json.exception.parse_error.101] parse error at line L, column C: syntax error while
  // parsing X - WHY; last read: 'TOKEN'; expected Y": keep "syntax error ... WHY" and
  // "; expected Y" (a token kind: short and safe), drop the id, position and TOKEN.
  const std::string w = e.what();
  const size_t bracket = w.find("] ");
  std::string detail = bracket == std::string::npos ? w : w.substr(bracket + 2);
  if (const size_t colon = detail.find(": "); detail.starts_with("parse error") && colon != std::string::npos)
    detail = detail.substr(colon + 2);
  const size_t last_read = detail.find("; last read: '");
  if (last_read != std::string::npos) {
    const size_t expected = detail.rfind("; expected ");
    std::string tail;
    if (expected != std::string::npos && expected > last_read && detail.size() - expected < 64)
      tail = detail.substr(expected);
    detail = detail.substr(0, last_read) + tail;
  }
  return safe_message(detail, 200);
}

std::string json_error_at(const nlohmann::json::exception& e, std::string_view text) {
  const auto* pe = dynamic_cast<const nlohmann::json::parse_error*>(&e);
  if (!pe) return ": " + json_error_reason(e);
  // e.byte counts the characters read, so the offending one is at e.byte - 1.
  const size_t at = std::min(text.size(), pe->byte > 0 ? pe->byte - 1 : 0);
  const std::string_view before = text.substr(0, at);
  const size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
  const size_t nl = before.rfind('\n');
  const size_t col = nl == std::string_view::npos ? at + 1 : at - nl;
  return " at line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + json_error_reason(e) +
         ", near " + excerpt_around(text, at);
}

}  // namespace qlora
