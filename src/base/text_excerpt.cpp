#include "base/text_excerpt.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

namespace qlora {

namespace {

// Length of the well-formed UTF-8 sequence starting at text[i] (1..4), or 0 when the byte
// there does not start one. The ranges are RFC 3629's table, which excludes overlong forms,
// surrogates and code points above U+10FFFF.
size_t utf8_len_at(std::string_view text, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return 1;
  size_t n;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;
  else if (c >= 0xE1 && c <= 0xEC) n = 3;
  else if (c == 0xED) n = 3, hi = 0x9F;
  else if (c >= 0xEE && c <= 0xEF) n = 3;
  else if (c == 0xF0) n = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;
  else return 0;
  if (i + n > text.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

void append_hex(std::string& out, uint8_t c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\x%02X", c);
  out += buf;
}

// Appends text[begin, end) escaped; stops before a character that would cross `end`.
// Returns where it stopped.
size_t append_escaped(std::string& out, std::string_view text, size_t begin, size_t end, bool keep_newlines) {
  size_t i = begin;
  while (i < end) {
    const size_t n = utf8_len_at(text, i);
    if (n == 0) {  // a byte that is not UTF-8: shown, never sent raw
      append_hex(out, static_cast<uint8_t>(text[i]));
      ++i;
      continue;
    }
    if (i + n > end) break;
    const auto c = static_cast<uint8_t>(text[i]);
    if (n == 1) {
      if (c == '\n') out += keep_newlines ? "\n" : "\\n";
      else if (c == '\t') out += "\\t";
      else if (c == '\r') out += "\\r";
      else if (c < 0x20 || c == 0x7F) append_hex(out, c);
      else out += static_cast<char>(c);
    } else if (n == 2 && c == 0xC2 && static_cast<uint8_t>(text[i + 1]) < 0xA0) {
      // C1 controls (U+0080..U+009F) are terminal escapes too.
      append_hex(out, c);
      append_hex(out, static_cast<uint8_t>(text[i + 1]));
    } else {
      out.append(text.substr(i, n));
    }
    i += n;
  }
  return i;
}

// Moves `i` forward past UTF-8 continuation bytes (at most 3), so a window starts on a character.
size_t align_forward(std::string_view text, size_t i) {
  for (int k = 0; k < 3 && i < text.size() && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80; ++k) ++i;
  return i;
}

}  // namespace

std::string excerpt(std::string_view text, size_t max_bytes) {
  std::string out = "'";
  const size_t stop = append_escaped(out, text, 0, std::min(text.size(), max_bytes), false);
  out += "'";
  if (stop < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

std::string excerpt_around(std::string_view text, size_t offset, size_t max_bytes) {
  offset = std::min(offset, text.size());
  const size_t before = max_bytes / 3;
  size_t begin = offset > before ? offset - before : 0;
  begin = align_forward(text, begin);
  const size_t end = std::min(text.size(), begin + max_bytes);
  std::string out = "'";
  if (begin > 0) out += "...";
  const size_t stop = append_escaped(out, text, begin, end, false);
  if (stop < text.size()) out += "...";
  out += "'";
  if (begin > 0 || stop < text.size()) out += " (" + std::to_string(text.size()) + " bytes)";
  return out;
}

std::string safe_message(std::string_view text, size_t max_bytes) {
  std::string out;
  const size_t stop = append_escaped(out, text, 0, std::min(text.size(), max_bytes), true);
  if (stop < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

size_t first_invalid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    // ASCII runs are the common case: skip them a byte at a time without the table.
    if (static_cast<uint8_t>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = utf8_len_at(text, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

}  // namespace qlora
