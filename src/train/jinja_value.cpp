// Definitions for train/jinja_value.h.
#include "train/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>
#include "base/error.h"
#include "base/text_excerpt.h"

#include "base/error.h"
#include "base/text_excerpt.h"

namespace qlora::jinja::detail {

Value Value::make_dict() { Value v; v.t = T::Dict; v.dict = std::make_shared<Dict>(); return v; }
Value Value::make_ns() { Value v; v.t = T::Ns; v.dict = std::make_shared<Dict>(); return v; }

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::integer(int64_t(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: return Value::real(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return Value::make_list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Value d = Value::make_dict();
      for (auto it = j.begin(); it != j.end(); ++it) d.dict->set(it.key(), from_json(it.value()));
      return d;
    }
    default: return Value::none();
  }
}

// ---------------------------------------------------------------------------- UTF-8 helpers

// Splits a UTF-8 string into code points (as byte ranges); invalid bytes count as one each.
std::vector<std::pair<size_t, size_t>> code_points(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> cps;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + n > s.size()) n = 1;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) { n = 1; break; }
    cps.emplace_back(i, n);
    i += n;
  }
  return cps;
}

uint32_t decode_cp(std::string_view s, size_t pos, size_t n) {
  auto b = [&](size_t k) { return uint32_t(static_cast<unsigned char>(s[pos + k])); };
  if (n == 1) return b(0);
  if (n == 2) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (n == 3) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) out += char(cp);
  else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  }
}

// Python's str.isspace() for the code points that occur in practice.
bool is_space_cp(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Python str.strip([chars]); which: 1 = left, 2 = right, 3 = both.
std::string py_strip(std::string_view s, const Value* chars, int which) {
  auto cps = code_points(s);
  std::vector<uint32_t> set;
  bool use_set = chars && chars->t == Value::T::Str;
  if (use_set)
    for (auto [p, n] : code_points(chars->s)) set.push_back(decode_cp(chars->s, p, n));
  auto strip_it = [&](size_t k) {
    uint32_t c = decode_cp(s, cps[k].first, cps[k].second);
    return use_set ? std::find(set.begin(), set.end(), c) != set.end() : is_space_cp(c);
  };
  size_t lo = 0, hi = cps.size();
  if (which & 1) while (lo < hi && strip_it(lo)) ++lo;
  if (which & 2) while (hi > lo && strip_it(hi - 1)) --hi;
  if (lo >= hi) return {};
  size_t b = cps[lo].first, e = cps[hi - 1].first + cps[hi - 1].second;
  return std::string(s.substr(b, e - b));
}

// Simple Unicode case mapping (what Python's str.lower/upper do) for ASCII, Latin-1,
// Latin Extended-A, Greek, Cyrillic and fullwidth Latin; other code points are unchanged.
uint32_t cp_lower(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
  if (c == 0x178) return 0xFF;
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c % 2 == 0) ? c + 1 : c;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 1) ? c + 1 : c;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;
  return c;
}
uint32_t cp_upper(uint32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c == 0xB5) return 0x39C;
  if (c == 0x131) return 'I';
  if (c == 0x17F) return 'S';
  if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return (c % 2 == 1) ? c - 1 : c;
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return (c % 2 == 0) ? c - 1 : c;
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x3B1 && c <= 0x3C9) return c - 32;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 63;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  if (c >= 0xFF41 && c <= 0xFF5A) return c - 32;
  return c;
}
// mode: 0 lower, 1 upper, 2 capitalize (first upper, rest lower), 3 jinja title (words start
// after runs of whitespace and -({[<).
std::string case_map(std::string_view s, int mode) {
  std::string out;
  out.reserve(s.size());
  bool start = true;
  for (auto [p, n] : code_points(s)) {
    uint32_t c = decode_cp(s, p, n);
    if (n == 1 && c >= 0x80) { out += s[p]; continue; }  // invalid byte: keep
    bool up = mode == 1 || ((mode == 2 || mode == 3) && start);
    if (mode == 3 && (c == ' ' || (c >= 0x09 && c <= 0x0D) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<')) {
      out.append(s.substr(p, n));
      start = true;
      continue;
    }
    if (mode == 2) start = false;
    if (mode == 3) start = false;
    if (up && c == 0xDF) { out += "SS"; continue; }
    append_utf8(out, up ? cp_upper(c) : cp_lower(c));
  }
  return out;
}
std::string py_lower(std::string s) { return case_map(s, 0); }
std::string py_upper(std::string s) { return case_map(s, 1); }

// ---------------------------------------------------------------------------- printing

// Python float repr.
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  int exp = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (size_t k = 0; k < epos; ++k) if (sci[k] != '.') digits += sci[k];
  std::string out;
  if (exp >= -5 + 1 && exp < 16) {  // Python: repr uses fixed when -4 <= exp < 16
    if (exp < 0) {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out = digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) {
      out += '.';
      out += digits.substr(1);
    }
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return neg ? "-" + out : out;
}

std::string py_repr_str(const std::string& s) {
  bool has_sq = s.find('\'') != std::string::npos, has_dq = s.find('"') != std::string::npos;
  char q = (has_sq && !has_dq) ? '"' : '\'';
  std::string out(1, q);
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (ch == q || ch == '\\') { out += '\\'; out += ch; }
    else if (ch == '\n') out += "\\n";
    else if (ch == '\r') out += "\\r";
    else if (ch == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) { char b[8]; std::snprintf(b, sizeof b, "\\x%02x", c); out += b; }
    else out += ch;
  }
  out += q;
  return out;
}

std::string repr(const Value& v);

std::string to_str(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined: return {};
    case Value::T::None: return "None";
    case Value::T::Bool: return v.b ? "True" : "False";
    case Value::T::Int: return std::to_string(v.i);
    case Value::T::Float: return float_repr(v.f);
    case Value::T::Str: return v.s;
    case Value::T::Func: return "<function>";
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.t) {
    case Value::T::Str: return py_repr_str(v.s);
    case Value::T::Undefined: return "Undefined";
    case Value::T::List: {
      std::string o = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) { if (k) o += ", "; o += repr((*v.list)[k]); }
      if (v.tuple && v.list->size() == 1) o += ",";
      return o + (v.tuple ? ")" : "]");
    }
    case Value::T::Dict:
    case Value::T::Ns: {
      std::string o = v.t == Value::T::Ns ? "<Namespace {" : "{";
      bool first = true;
      for (auto& [k, x] : v.dict->items) {
        if (!first) o += ", ";
        first = false;
        o += py_repr_str(k) + ": " + repr(x);
      }
      return o + (v.t == Value::T::Ns ? "}>" : "}");
    }
    default: return to_str(v);
  }
}

void json_str(std::string& o, const std::string& s) {
  o += '"';
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      default:
        if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
        else o += ch;
    }
  }
  o += '"';
}

// json.dumps(x, ensure_ascii=False, indent=indent) — Python's separators and key order.
// Returns false on a value JSON cannot hold (undefined, function).
bool to_json(std::string& o, const Value& v, int indent, int level) {
  auto nl = [&](int lvl) {
    if (indent < 0) return;
    o += '\n';
    o.append(size_t(indent) * size_t(lvl), ' ');
  };
  const char* sep = indent < 0 ? ", " : ",";
  switch (v.t) {
    case Value::T::None: o += "null"; return true;
    case Value::T::Bool: o += v.b ? "true" : "false"; return true;
    case Value::T::Int: o += std::to_string(v.i); return true;
    case Value::T::Float:
      if (std::isnan(v.f)) o += "NaN";
      else if (std::isinf(v.f)) o += v.f < 0 ? "-Infinity" : "Infinity";
      else o += float_repr(v.f);
      return true;
    case Value::T::Str: json_str(o, v.s); return true;
    case Value::T::List:
      if (v.list->empty()) { o += "[]"; return true; }
      o += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) o += sep;
        nl(level + 1);
        if (!to_json(o, (*v.list)[k], indent, level + 1)) return false;
      }
      nl(level);
      o += ']';
      return true;
    case Value::T::Dict:
    case Value::T::Ns:
      if (v.dict->items.empty()) { o += "{}"; return true; }
      o += '{';
      for (size_t k = 0; k < v.dict->items.size(); ++k) {
        if (k) o += sep;
        nl(level + 1);
        json_str(o, v.dict->items[k].first);
        o += ": ";
        if (!to_json(o, v.dict->items[k].second, indent, level + 1)) return false;
      }
      nl(level);
      o += '}';
      return true;
    default: return false;
  }
}

const char* type_name(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined: return "undefined";
    case Value::T::None: return "NoneType";
    case Value::T::Bool: return "bool";
    case Value::T::Int: return "int";
    case Value::T::Float: return "float";
    case Value::T::Str: return "str";
    case Value::T::List: return "list";
    case Value::T::Dict: return "dict";
    case Value::T::Ns: return "namespace";
    case Value::T::Func: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.t) {
    case Value::T::Undefined:
    case Value::T::None: return false;
    case Value::T::Bool: return v.b;
    case Value::T::Int: return v.i != 0;
    case Value::T::Float: return v.f != 0;
    case Value::T::Str: return !v.s.empty();
    case Value::T::List: return !v.list->empty();
    case Value::T::Dict: return !v.dict->items.empty();
    default: return true;
  }
}

bool equal(const Value& a, const Value& b) {
  if (a.is_num() && b.is_num()) {
    if (a.t != Value::T::Float && b.t != Value::T::Float) return a.as_int() == b.as_int();
    return a.num() == b.num();
  }
  if (a.t != b.t) return false;
  switch (a.t) {
    case Value::T::Undefined:
    case Value::T::None: return true;
    case Value::T::Str: return a.s == b.s;
    case Value::T::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::T::Dict:
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (auto& [k, x] : a.dict->items) {
        Value* y = b.dict->find(k);
        if (!y || !equal(x, *y)) return false;
      }
      return true;
    default: return a.dict == b.dict && a.fn == b.fn;
  }
}

}  // namespace qlora::jinja::detail
