#pragma once
// The values of the Jinja interpreter (train/jinja.h): the Python-like value type, its
// conversions from JSON and to text (Python's str/repr, JSON), truthiness and equality, and
// the UTF-8 helpers string filters need. Internal to jinja_*.cpp.
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace qlora::jinja::detail {

// Error texts can quote the template (an unexpected character) or rendered values
// (raise_exception with a message's content): cap them and escape bytes a terminal must
// not receive raw.
constexpr size_t kMaxWhat = 200;


struct Value;
using List = std::vector<Value>;
struct Dict;
struct Interp;
struct Args;
using Fn = std::function<Value(Interp&, Args&)>;

struct Value {
  enum class T { Undefined, None, Bool, Int, Float, Str, List, Dict, Ns, Func };
  T t = T::Undefined;
  bool b = false;
  bool tuple = false;  // List printed as a Python tuple
  int64_t i = 0;
  double f = 0;
  std::string s;  // Str; for Undefined the name that was looked up (for messages)
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // Dict and Ns
  std::shared_ptr<Fn> fn;

  static Value undef(std::string hint = {}) { Value v; v.s = std::move(hint); return v; }
  static Value none() { Value v; v.t = T::None; return v; }
  static Value boolean(bool x) { Value v; v.t = T::Bool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.t = T::Int; v.i = x; return v; }
  static Value real(double x) { Value v; v.t = T::Float; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.t = T::Str; v.s = std::move(x); return v; }
  static Value make_list(List l = {}) {
    Value v; v.t = T::List; v.list = std::make_shared<List>(std::move(l)); return v;
  }
  static Value make_dict();
  static Value make_ns();
  static Value func(Fn f) { Value v; v.t = T::Func; v.fn = std::make_shared<Fn>(std::move(f)); return v; }

  bool is_num() const { return t == T::Int || t == T::Float || t == T::Bool; }
  double num() const { return t == T::Float ? f : t == T::Bool ? (b ? 1.0 : 0.0) : double(i); }
  int64_t as_int() const { return t == T::Bool ? (b ? 1 : 0) : i; }
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  Value* find(std::string_view k) {
    for (auto& kv : items)
      if (kv.first == k) return &kv.second;
    return nullptr;
  }
  void set(const std::string& k, Value v) {
    if (Value* p = find(k)) *p = std::move(v);
    else items.emplace_back(k, std::move(v));
  }
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  const Value* get(size_t idx, std::string_view key) const {
    for (auto& [k, v] : kw) if (k == key) return &v;
    return idx < pos.size() ? &pos[idx] : nullptr;
  }
};


Value from_json(const nlohmann::ordered_json& j);
// Splits a UTF-8 string into code points (as byte ranges); invalid bytes count as one each.
std::vector<std::pair<size_t, size_t>> code_points(std::string_view s);
uint32_t decode_cp(std::string_view s, size_t pos, size_t n);
void append_utf8(std::string& out, uint32_t cp);
// Python's str.isspace() for the code points that occur in practice.
bool is_space_cp(uint32_t c);
// Python str.strip([chars]); which: 1 = left, 2 = right, 3 = both.
std::string py_strip(std::string_view s, const Value* chars, int which);
// Simple Unicode case mapping (what Python's str.lower/upper do) for ASCII, Latin-1,
// Latin Extended-A, Greek, Cyrillic and fullwidth Latin; other code points are unchanged.
uint32_t cp_lower(uint32_t c);
uint32_t cp_upper(uint32_t c);
// mode: 0 lower, 1 upper, 2 capitalize (first upper, rest lower), 3 jinja title (words start
// after runs of whitespace and -({[<).
std::string case_map(std::string_view s, int mode);
// Python's str.lower() / str.upper() (full Unicode case mapping of the common scripts).
std::string py_lower(std::string s);
std::string py_upper(std::string s);
// Python float repr.
std::string float_repr(double v);
std::string py_repr_str(const std::string& s);
std::string to_str(const Value& v);
std::string repr(const Value& v);
void json_str(std::string& o, const std::string& s);
// json.dumps(x, ensure_ascii=False, indent=indent) — Python's separators and key order.
// Returns false on a value JSON cannot hold (undefined, function).
bool to_json(std::string& o, const Value& v, int indent, int level);
const char* type_name(const Value& v);
bool truthy(const Value& v);
bool equal(const Value& a, const Value& b);

}  // namespace qlora::jinja::detail
