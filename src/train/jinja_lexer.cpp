// The Jinja lexer: template text to tokens (train/jinja_syntax.h).
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "train/jinja_syntax.h"

namespace qlora::jinja::detail {
namespace {

struct Lexer {
  std::string src;
  const std::string& name;
  std::vector<Token> toks;
  size_t pos = 0;
  int line = 1;
  size_t line_start = 0;

  Lexer(std::string_view source, const std::string& n) : name(n) {
    // Jinja normalizes newlines and drops a single trailing newline (keep_trailing_newline=False).
    src.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
      if (source[k] == '\r') {
        src += '\n';
        if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
      } else {
        src += source[k];
      }
    }
    if (!src.empty() && src.back() == '\n') src.pop_back();
  }

  [[noreturn]] void error(size_t at, const std::string& what) {
    int l = 1;
    size_t ls = 0;
    for (size_t k = 0; k < at && k < src.size(); ++k)
      if (src[k] == '\n') { ++l; ls = k + 1; }
    fail(name + ":" + std::to_string(l) + ":" + std::to_string(at - ls + 1), safe_message(what, kMaxWhat));
  }

  void advance_to(size_t p) {
    for (; pos < p; ++pos)
      if (src[pos] == '\n') { ++line; line_start = pos + 1; }
  }
  int col() const { return int(pos - line_start) + 1; }

  void push(Tok t, std::string v) { toks.push_back({t, std::move(v), line, col()}); }

  static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

  void run() {
    bool line_starting = true;
    while (pos < src.size()) {
      size_t start = src.size();
      for (size_t k = pos; k + 1 < src.size(); ++k)
        if (src[k] == '{' && (src[k + 1] == '{' || src[k + 1] == '%' || src[k + 1] == '#')) { start = k; break; }
      std::string text = src.substr(pos, start - pos);
      if (start == src.size()) {
        if (!text.empty()) push(Tok::Text, text);
        advance_to(start);
        break;
      }
      char kind = src[start + 1];
      char sign = start + 2 < src.size() ? src[start + 2] : '\0';
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting) {
          bool all_ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size(); ++k) if (!is_ws(text[k])) { all_ws = false; break; }
          if (all_ws) text.resize(l_pos);
        }
      }
      if (!text.empty()) push(Tok::Text, text);
      advance_to(start);
      size_t body = start + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        size_t e = src.find("#}", body);
        if (e == std::string::npos) error(start, "unclosed comment (missing '#}')");
        bool strip = e > body && src[e - 1] == '-';
        advance_to(e + 2);
        line_starting = end_tag(strip);
        continue;
      }
      push(kind == '{' ? Tok::VarBegin : Tok::BlockBegin, {});
      advance_to(body);
      line_starting = lex_tag(kind == '{' ? '}' : '%', start);
    }
    push(Tok::Eof, {});
  }

  // After a tag's closing delimiter: '-' strips all following whitespace, a block/comment end
  // eats one newline (trim_blocks). Returns whether the consumed text ended with a newline.
  bool end_tag(bool strip, bool trim = true) {
    bool nl = false;
    if (strip) {
      while (pos < src.size() && is_ws(src[pos])) { nl = src[pos] == '\n'; advance_to(pos + 1); }
    } else if (trim && pos < src.size() && src[pos] == '\n') {
      advance_to(pos + 1);
      nl = true;
    }
    return nl;
  }

  bool lex_tag(char close, size_t tag_start) {
    int depth = 0;
    while (true) {
      while (pos < src.size() && is_ws(src[pos])) advance_to(pos + 1);
      if (pos >= src.size())
        error(tag_start, close == '}' ? "unclosed '{{' (missing '}}')" : "unclosed '{%' (missing '%}')");
      if (depth == 0) {
        bool strip = src[pos] == '-' && pos + 2 < src.size() + 0 && src[pos + 1] == close && src[pos + 2] == '}';
        if (strip || (src[pos] == close && pos + 1 < src.size() && src[pos + 1] == '}')) {
          push(close == '}' ? Tok::VarEnd : Tok::BlockEnd, {});
          advance_to(pos + (strip ? 3 : 2));
          return end_tag(strip, close == '%');
        }
      }
      char c = src[pos];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos;
        while (e < src.size() && (std::isalnum(static_cast<unsigned char>(src[e])) || src[e] == '_')) ++e;
        push(Tok::Name, src.substr(pos, e - pos));
        advance_to(e);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = pos;
        bool is_float = false;
        while (e < src.size() && (std::isdigit(static_cast<unsigned char>(src[e])) || src[e] == '_')) ++e;
        if (e + 1 < src.size() && src[e] == '.' && std::isdigit(static_cast<unsigned char>(src[e + 1]))) {
          is_float = true;
          ++e;
          while (e < src.size() && std::isdigit(static_cast<unsigned char>(src[e]))) ++e;
        }
        if (e < src.size() && (src[e] == 'e' || src[e] == 'E')) {
          size_t k = e + 1;
          if (k < src.size() && (src[k] == '+' || src[k] == '-')) ++k;
          if (k < src.size() && std::isdigit(static_cast<unsigned char>(src[k]))) {
            is_float = true;
            e = k;
            while (e < src.size() && std::isdigit(static_cast<unsigned char>(src[e]))) ++e;
          }
        }
        std::string num;
        for (size_t k = pos; k < e; ++k) if (src[k] != '_') num += src[k];
        push(is_float ? Tok::Float : Tok::Int, num);
        advance_to(e);
      } else if (c == '\'' || c == '"') {
        push(Tok::String, lex_string(c));
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                    ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
        const char* found = nullptr;
        for (const char* op : ops)
          if (src.compare(pos, std::strlen(op), op) == 0) { found = op; break; }
        if (!found) error(pos, std::string("unexpected character '") + c + "' in tag");
        std::string op = found;
        if (op == "(" || op == "[" || op == "{") ++depth;
        if (op == ")" || op == "]" || op == "}") {
          if (depth == 0) error(pos, "unbalanced '" + op + "'");
          --depth;
        }
        push(Tok::Op, op);
        advance_to(pos + op.size());
      }
    }
  }

  // Python string literal escapes (jinja decodes strings with unicode-escape).
  std::string lex_string(char q) {
    size_t begin = pos;
    size_t k = pos + 1;
    std::string out;
    auto hex = [&](size_t at, int n) -> uint32_t {
      uint32_t v = 0;
      for (int d = 0; d < n; ++d) {
        if (at + size_t(d) >= src.size() || !std::isxdigit(static_cast<unsigned char>(src[at + size_t(d)])))
          error(at, "malformed \\x/\\u escape in string literal");
        char ch = src[at + size_t(d)];
        v = v * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(ch)) ? ch - '0' : (ch | 0x20) - 'a' + 10);
      }
      return v;
    };
    while (true) {
      if (k >= src.size()) error(begin, "unterminated string literal");
      char c = src[k];
      if (c == q) { ++k; break; }
      if (c != '\\') { out += c; ++k; continue; }
      if (k + 1 >= src.size()) error(begin, "unterminated string literal");
      char e = src[k + 1];
      k += 2;
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '0': out += '\0'; break;
        case '\n': break;
        case 'x': append_utf8(out, hex(k, 2)); k += 2; break;
        case 'u': append_utf8(out, hex(k, 4)); k += 4; break;
        case 'U': append_utf8(out, hex(k, 8)); k += 8; break;
        default: out += '\\'; out += e;
      }
    }
    advance_to(k);
    return out;
  }
};

}  // namespace

std::vector<Token> tokenize(std::string_view source, const std::string& name) {
  Lexer lx(source, name);
  lx.run();
  return std::move(lx.toks);
}

}  // namespace qlora::jinja::detail
