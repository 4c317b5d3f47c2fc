#include "train/jinja.h"

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
#include "train/jinja_syntax.h"
#include "train/jinja_value.h"

namespace qlora::jinja {

using detail::Body;

// ============================================================================ evaluator

struct Template::Impl {
  std::string name;
  Limits limits;
  Body body;
};

namespace detail {

struct BreakLoop {};
struct ContinueLoop {};

// The interpreter: executes statements, evaluates expressions, and owns the filters, tests
// and globals (str methods included) that chat templates use.
struct Interp {
  const Template::Impl& tpl;
  std::vector<std::unordered_map<std::string, Value>> scopes;
  std::string* out = nullptr;
  size_t iterations = 0;
  int depth = 0;
  int line = 0, col = 0;  // innermost node being evaluated, for messages

  [[noreturn]] void error(const std::string& what) const {
    fail(tpl.name + ":" + std::to_string(line) + ":" + std::to_string(col), safe_message(what, kMaxWhat));
  }
  void at(int l, int c) { if (l > 0) { line = l; col = c; } }
  void tick() {
    if (++iterations > tpl.limits.max_iterations)
      error("iteration limit exceeded (" + std::to_string(tpl.limits.max_iterations) + ")");
  }
  void emit(std::string_view s) {
    out->append(s);
    if (out->size() > tpl.limits.max_output_bytes)
      error("output exceeds " + std::to_string(tpl.limits.max_output_bytes) + " bytes");
  }

  struct Depth {
    Interp& in;
    explicit Depth(Interp& i) : in(i) {
      if (++in.depth > in.tpl.limits.max_depth) in.error("recursion too deep");
    }
    ~Depth() { --in.depth; }
  };

  // Inside a macro, names resolve in the macro's frames (index >= barrier) and then in the
  // template's top level (scopes 0 and 1: context and template-level sets), not the caller's.
  size_t barrier = 0;
  Value lookup(const std::string& n) {
    for (size_t k = scopes.size(); k-- > 0;) {
      if (k < barrier && k > 1) continue;
      auto f = scopes[k].find(n);
      if (f != scopes[k].end()) return f->second;
    }
    if (Value g = global(n); g.t != Value::T::Undefined) return g;
    return Value::undef(n);
  }
  void assign(const std::string& n, Value v) { scopes.back()[n] = std::move(v); }

  // ---- iteration
  List iterate(const Value& v) {
    switch (v.t) {
      case Value::T::Undefined: return {};
      case Value::T::List: return *v.list;
      case Value::T::Dict: {
        List l;
        for (auto& kv : v.dict->items) l.push_back(Value::str(kv.first));
        return l;
      }
      case Value::T::Str: {
        List l;
        for (auto [p, n] : code_points(v.s)) l.push_back(Value::str(v.s.substr(p, n)));
        return l;
      }
      default: error(std::string("'") + type_name(v) + "' object is not iterable");
    }
  }

  // ---- access
  Value get_attr(const Value& obj, const std::string& key) {
    switch (obj.t) {
      case Value::T::Undefined:
        error("'" + (obj.s.empty() ? std::string("value") : obj.s) + "' is undefined (reading attribute '" + key + "')");
      case Value::T::Dict:
      case Value::T::Ns: {
        if (Value* v = obj.dict->find(key)) return *v;
        return Value::undef(key);
      }
      case Value::T::List: {
        int64_t idx = 0;
        auto r = std::from_chars(key.data(), key.data() + key.size(), idx);
        if (r.ec == std::errc() && r.ptr == key.data() + key.size()) return get_item(obj, Value::integer(idx));
        return Value::undef(key);
      }
      default: return Value::undef(key);
    }
  }
  Value get_item(const Value& obj, const Value& key) {
    if (obj.t == Value::T::Undefined)
      error("'" + (obj.s.empty() ? std::string("value") : obj.s) + "' is undefined (subscripted with " + repr(key) + ")");
    if (obj.t == Value::T::Dict || obj.t == Value::T::Ns) {
      if (key.t == Value::T::Str) {
        if (Value* v = obj.dict->find(key.s)) return *v;
        return Value::undef(key.s);
      }
      if (Value* v = obj.dict->find(to_str(key))) return *v;
      return Value::undef(to_str(key));
    }
    if ((obj.t == Value::T::List || obj.t == Value::T::Str) && (key.t == Value::T::Int || key.t == Value::T::Bool)) {
      if (obj.t == Value::T::List) {
        int64_t n = int64_t(obj.list->size()), k = key.as_int();
        if (k < 0) k += n;
        if (k < 0 || k >= n) return Value::undef("[" + std::to_string(key.as_int()) + "]");
        return (*obj.list)[size_t(k)];
      }
      auto cps = code_points(obj.s);
      int64_t n = int64_t(cps.size()), k = key.as_int();
      if (k < 0) k += n;
      if (k < 0 || k >= n) return Value::undef("[" + std::to_string(key.as_int()) + "]");
      return Value::str(obj.s.substr(cps[size_t(k)].first, cps[size_t(k)].second));
    }
    if (key.t == Value::T::Str) return get_attr(obj, key.s);
    return Value::undef();
  }
  Value slice(const Value& obj, const Value* a, const Value* b, const Value* c) {
    auto opt = [&](const Value* v, const char* what) -> std::optional<int64_t> {
      if (!v || v->t == Value::T::None) return std::nullopt;
      if (v->t != Value::T::Int && v->t != Value::T::Bool) error(std::string("slice ") + what + " must be an integer");
      return v->as_int();
    };
    auto start = opt(a, "start"), stop = opt(b, "stop"), step_o = opt(c, "step");
    int64_t step = step_o.value_or(1);
    if (step == 0) error("slice step cannot be zero");
    std::vector<std::pair<size_t, size_t>> cps;
    int64_t n;
    if (obj.t == Value::T::List) n = int64_t(obj.list->size());
    else if (obj.t == Value::T::Str) { cps = code_points(obj.s); n = int64_t(cps.size()); }
    else error(std::string("cannot slice a '") + type_name(obj) + "'");
    auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t x = *v;
      if (x < 0) x += n;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    int64_t lo = clamp(start, step > 0 ? 0 : n - 1), hi = clamp(stop, step > 0 ? n : -1);
    List l;
    std::string s;
    for (int64_t k = lo; step > 0 ? k < hi : k > hi; k += step) {
      tick();
      if (obj.t == Value::T::List) l.push_back((*obj.list)[size_t(k)]);
      else s.append(obj.s, cps[size_t(k)].first, cps[size_t(k)].second);
    }
    return obj.t == Value::T::List ? Value::make_list(std::move(l)) : Value::str(std::move(s));
  }

  // ---- operators
  Value arith(const std::string& op, const Value& a, const Value& b) {
    auto bad = [&]() -> Value {
      error("unsupported operand types for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
    };
    if (op == "~") return Value::str(to_str(a) + to_str(b));
    if (a.t == Value::T::Undefined || b.t == Value::T::Undefined) {
      const Value& u = a.t == Value::T::Undefined ? a : b;
      error("'" + (u.s.empty() ? std::string("value") : u.s) + "' is undefined (operand of " + op + ")");
    }
    bool ints = (a.t == Value::T::Int || a.t == Value::T::Bool) && (b.t == Value::T::Int || b.t == Value::T::Bool);
    if (op == "+") {
      if (a.t == Value::T::Str && b.t == Value::T::Str) return Value::str(a.s + b.s);
      if (a.t == Value::T::List && b.t == Value::T::List) {
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::make_list(std::move(l));
      }
      if (ints) return Value::integer(a.as_int() + b.as_int());
      if (a.is_num() && b.is_num()) return Value::real(a.num() + b.num());
      return bad();
    }
    if (op == "*") {
      const Value* seq = a.t == Value::T::Str || a.t == Value::T::List ? &a : b.t == Value::T::Str || b.t == Value::T::List ? &b : nullptr;
      const Value* cnt = seq == &a ? &b : &a;
      if (seq && (cnt->t == Value::T::Int || cnt->t == Value::T::Bool)) {
        int64_t c = std::max<int64_t>(0, cnt->as_int());
        if (seq->t == Value::T::Str) {
          if (uint64_t(c) * seq->s.size() > tpl.limits.max_output_bytes) error("string repetition too large");
          std::string s;
          for (int64_t k = 0; k < c; ++k) s += seq->s;
          return Value::str(std::move(s));
        }
        if (uint64_t(c) * seq->list->size() > tpl.limits.max_iterations) error("list repetition too large");
        List l;
        for (int64_t k = 0; k < c; ++k) l.insert(l.end(), seq->list->begin(), seq->list->end());
        return Value::make_list(std::move(l));
      }
      if (ints) return Value::integer(a.as_int() * b.as_int());
      if (a.is_num() && b.is_num()) return Value::real(a.num() * b.num());
      return bad();
    }
    if (!a.is_num() || !b.is_num()) return bad();
    if (op == "-") return ints ? Value::integer(a.as_int() - b.as_int()) : Value::real(a.num() - b.num());
    if (op == "/") {
      if (b.num() == 0) error("division by zero");
      return Value::real(a.num() / b.num());
    }
    if (op == "//" || op == "%") {
      if (b.num() == 0) error(op == "//" ? "integer division by zero" : "modulo by zero");
      if (ints) {
        int64_t x = a.as_int(), y = b.as_int();
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) { --q; r += y; }
        return Value::integer(op == "//" ? q : r);
      }
      double x = a.num(), y = b.num();
      double r = std::fmod(x, y);
      if (r != 0 && ((r < 0) != (y < 0))) r += y;
      return Value::real(op == "//" ? std::floor(x / y) : r);
    }
    if (op == "**") {
      if (ints && b.as_int() >= 0) {
        int64_t r = 1, base = a.as_int();
        for (int64_t k = 0; k < b.as_int() && k < 64; ++k) r *= base;
        return Value::integer(r);
      }
      return Value::real(std::pow(a.num(), b.num()));
    }
    return bad();
  }

  int compare_order(const Value& a, const Value& b, const std::string& op) {
    if (a.is_num() && b.is_num()) return a.num() < b.num() ? -1 : a.num() > b.num() ? 1 : 0;
    if (a.t == Value::T::Str && b.t == Value::T::Str) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
    if (a.t == Value::T::List && b.t == Value::T::List) {
      for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k) {
        if (equal((*a.list)[k], (*b.list)[k])) continue;
        return compare_order((*a.list)[k], (*b.list)[k], op);
      }
      return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
    }
    error("'" + op + "' not supported between '" + type_name(a) + "' and '" + type_name(b) + "'");
  }

  bool contains(const Value& container, const Value& item) {
    switch (container.t) {
      case Value::T::Str:
        if (item.t != Value::T::Str) error("'in <string>' requires a string as left operand");
        return container.s.find(item.s) != std::string::npos;
      case Value::T::List:
        for (auto& v : *container.list) if (equal(v, item)) return true;
        return false;
      case Value::T::Dict:
      case Value::T::Ns: return item.t == Value::T::Str && container.dict->find(item.s) != nullptr;
      case Value::T::Undefined: return false;
      default: error(std::string("argument of type '") + type_name(container) + "' is not iterable");
    }
  }

  bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in") return contains(b, a);
    if (op == "notin") return !contains(b, a);
    int c = compare_order(a, b, op);
    if (op == "<") return c < 0;
    if (op == "<=") return c <= 0;
    if (op == ">") return c > 0;
    return c >= 0;
  }

  // ---- expressions
  Value eval(const Expr& e) {
    Depth d(*this);
    at(e.line, e.col);
    switch (e.k) {
      case Expr::K::Lit: return e.lit;
      case Expr::K::Name: return lookup(e.name);
      case Expr::K::Attr: {
        Value o = eval(*e.args[0]);
        at(e.line, e.col);
        return get_attr(o, e.name);
      }
      case Expr::K::Item: {
        Value o = eval(*e.args[0]);
        Value k = eval(*e.args[1]);
        at(e.line, e.col);
        return get_item(o, k);
      }
      case Expr::K::Slice: {
        Value o = eval(*e.args[0]);
        Value parts[3];
        for (int p = 0; p < 3; ++p) if (e.args[size_t(p) + 1]) parts[p] = eval(*e.args[size_t(p) + 1]);
        at(e.line, e.col);
        return slice(o, e.args[1] ? &parts[0] : nullptr, e.args[2] ? &parts[1] : nullptr, e.args[3] ? &parts[2] : nullptr);
      }
      case Expr::K::Call: return eval_call(e);
      case Expr::K::Filter: {
        Value v = e.args[0] ? eval(*e.args[0]) : Value::undef();
        Args a = eval_args(e);
        at(e.line, e.col);
        return filter(e.name, v, a);
      }
      case Expr::K::Test: {
        Value v = eval(*e.args[0]);
        Args a = eval_args(e);
        at(e.line, e.col);
        bool r = test(e.name, v, a);
        return Value::boolean(e.negate ? !r : r);
      }
      case Expr::K::Neg:
      case Expr::K::Pos: {
        Value v = eval(*e.args[0]);
        at(e.line, e.col);
        if (!v.is_num()) error(std::string("bad operand type for unary ") + (e.k == Expr::K::Neg ? "-" : "+") + ": '" + type_name(v) + "'");
        if (e.k == Expr::K::Pos) return v.t == Value::T::Bool ? Value::integer(v.as_int()) : v;
        return v.t == Value::T::Float ? Value::real(-v.f) : Value::integer(-v.as_int());
      }
      case Expr::K::Not: return Value::boolean(!truthy(eval(*e.args[0])));
      case Expr::K::And: {
        Value l = eval(*e.args[0]);
        return truthy(l) ? eval(*e.args[1]) : l;
      }
      case Expr::K::Or: {
        Value l = eval(*e.args[0]);
        return truthy(l) ? l : eval(*e.args[1]);
      }
      case Expr::K::Bin: {
        Value l = eval(*e.args[0]);
        Value r = eval(*e.args[1]);
        at(e.line, e.col);
        return arith(e.name, l, r);
      }
      case Expr::K::Compare: {
        Value l = eval(*e.args[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value r = eval(*e.args[k + 1]);
          at(e.line, e.col);
          if (!compare(e.ops[k], l, r)) return Value::boolean(false);
          l = std::move(r);
        }
        return Value::boolean(true);
      }
      case Expr::K::Cond: {
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args.size() > 2 ? eval(*e.args[2]) : Value::undef();
      }
      case Expr::K::ListLit: {
        List l;
        for (auto& a : e.args) l.push_back(eval(*a));
        Value v = Value::make_list(std::move(l));
        v.tuple = e.tuple;
        return v;
      }
      case Expr::K::DictLit: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k]);
          d.dict->set(key.t == Value::T::Str ? key.s : to_str(key), eval(*e.args[k + 1]));
        }
        return d;
      }
    }
    return Value::undef();
  }

  Args eval_args(const Expr& e, size_t skip = 1) {
    Args a;
    for (size_t k = skip; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k]));
    for (auto& [n, x] : e.kwargs) a.kw.emplace_back(n, eval(*x));
    return a;
  }

  Value eval_call(const Expr& e) {
    const Expr& callee = *e.args[0];
    if (callee.k == Expr::K::Attr) {
      Value obj = eval(*callee.args[0]);
      if (obj.t == Value::T::Str || obj.t == Value::T::List || obj.t == Value::T::Dict) {
        Args a = eval_args(e);
        at(e.line, e.col);
        Value r;
        if (method(obj, callee.name, a, r)) return r;
        if (obj.t != Value::T::Dict) error(std::string("'") + type_name(obj) + "' object has no method '" + callee.name + "'");
      }
      at(callee.line, callee.col);
      Value f = get_attr(obj, callee.name);
      Args a = eval_args(e);
      at(e.line, e.col);
      if (f.t != Value::T::Func) error("'" + callee.name + "' is not callable (" + type_name(f) + ")");
      return (*f.fn)(*this, a);
    }
    Value f = eval(callee);
    Args a = eval_args(e);
    at(e.line, e.col);
    if (f.t != Value::T::Func) {
      std::string n = callee.k == Expr::K::Name ? callee.name : std::string("value");
      if (f.t == Value::T::Undefined) error("'" + n + "' is undefined (called as a function)");
      error("'" + n + "' is not callable (" + type_name(f) + ")");
    }
    return (*f.fn)(*this, a);
  }

  // ---- methods on str / list / dict (what the immutable sandbox allows)
  static std::string need_str(Interp& in, const Value* v, const char* what) {
    if (!v || v->t != Value::T::Str) in.error(std::string(what) + " expects a string argument");
    return v->s;
  }
  bool method(const Value& obj, const std::string& m, Args& a, Value& r) {
    if (obj.t == Value::T::Str) {
      const std::string& s = obj.s;
      if (m == "strip" || m == "lstrip" || m == "rstrip") {
        const Value* c = a.get(0, "chars");
        r = Value::str(py_strip(s, c && c->t != Value::T::None ? c : nullptr, m == "strip" ? 3 : m == "lstrip" ? 1 : 2));
      } else if (m == "upper") r = Value::str(py_upper(s));
      else if (m == "lower") r = Value::str(py_lower(s));
      else if (m == "title" || m == "capitalize") r = filter(m, obj, a);
      else if (m == "startswith" || m == "endswith") {
        const Value* p = a.get(0, "prefix");
        if (!p) error(m + "() takes one argument");
        auto test_one = [&](const std::string& x) {
          if (m == "startswith") return s.compare(0, x.size(), x) == 0 && s.size() >= x.size();
          return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
        };
        bool any = false;
        if (p->t == Value::T::List) { for (auto& x : *p->list) any = any || test_one(need_str(*this, &x, m.c_str())); }
        else any = test_one(need_str(*this, p, m.c_str()));
        r = Value::boolean(any);
      } else if (m == "split" || m == "rsplit") {
        const Value* sep = a.get(0, "sep");
        const Value* mx = a.get(1, "maxsplit");
        int64_t maxsplit = mx && mx->t == Value::T::Int ? mx->i : -1;
        List l;
        if (!sep || sep->t == Value::T::None) {
          // whitespace split
          std::vector<std::string> words;
          std::string w;
          bool in = false;
          for (auto [p, n] : code_points(s)) {
            bool sp = is_space_cp(decode_cp(s, p, n));
            if (sp && in && (maxsplit < 0 || int64_t(words.size()) < maxsplit)) { words.push_back(w); w.clear(); in = false; }
            else if (!sp || in) { w.append(s, p, n); in = true; }
          }
          if (in) words.push_back(py_strip(w, nullptr, 2));
          for (auto& x : words) l.push_back(Value::str(x));
        } else {
          std::string d = need_str(*this, sep, "split");
          if (d.empty()) error("split(): empty separator");
          size_t start = 0;
          int64_t count = 0;
          while (true) {
            size_t f = (maxsplit >= 0 && count >= maxsplit) ? std::string::npos : s.find(d, start);
            if (f == std::string::npos) { l.push_back(Value::str(s.substr(start))); break; }
            l.push_back(Value::str(s.substr(start, f - start)));
            start = f + d.size();
            ++count;
            tick();
          }
        }
        r = Value::make_list(std::move(l));
      } else if (m == "replace") {
        r = filter("replace", obj, a);
      } else if (m == "find") {
        size_t f = s.find(need_str(*this, a.get(0, "sub"), "find"));
        r = Value::integer(f == std::string::npos ? -1 : int64_t(code_points(s.substr(0, f)).size()));
      } else if (m == "count") {
        std::string sub = need_str(*this, a.get(0, "sub"), "count");
        int64_t c = 0;
        if (sub.empty()) c = int64_t(code_points(s).size()) + 1;
        else for (size_t f = s.find(sub); f != std::string::npos; f = s.find(sub, f + sub.size())) ++c;
        r = Value::integer(c);
      } else if (m == "join") {
        const Value* it = a.get(0, "iterable");
        if (!it) error("join() takes one argument");
        std::string o;
        bool first = true;
        for (auto& x : iterate(*it)) {
          if (!first) o += s;
          first = false;
          o += need_str(*this, &x, "join");
        }
        r = Value::str(std::move(o));
      } else if (m == "isdigit" || m == "isspace" || m == "isalpha" || m == "isalnum") {
        bool ok = !s.empty();
        for (unsigned char c : s) {
          bool x = m == "isdigit" ? std::isdigit(c) : m == "isspace" ? std::isspace(c) : m == "isalpha" ? std::isalpha(c) : std::isalnum(c);
          ok = ok && x;
        }
        r = Value::boolean(ok);
      } else {
        return false;
      }
      return true;
    }
    if (obj.t == Value::T::Dict) {
      if (m == "items") r = filter("items", obj, a);
      else if (m == "keys") { List l; for (auto& kv : obj.dict->items) l.push_back(Value::str(kv.first)); r = Value::make_list(std::move(l)); }
      else if (m == "values") { List l; for (auto& kv : obj.dict->items) l.push_back(kv.second); r = Value::make_list(std::move(l)); }
      else if (m == "get") {
        const Value* k = a.get(0, "key");
        if (!k) error("get() takes at least one argument");
        Value* v = obj.dict->find(k->t == Value::T::Str ? k->s : to_str(*k));
        const Value* dflt = a.get(1, "default");
        r = v ? *v : dflt ? *dflt : Value::none();
      } else return false;
      return true;
    }
    if (obj.t == Value::T::List) {
      if (m == "index") {
        const Value* x = a.get(0, "value");
        if (!x) error("index() takes one argument");
        for (size_t k = 0; k < obj.list->size(); ++k)
          if (equal((*obj.list)[k], *x)) { r = Value::integer(int64_t(k)); return true; }
        error(repr(*x) + " is not in list");
      }
      if (m == "count") {
        const Value* x = a.get(0, "value");
        int64_t c = 0;
        if (x) for (auto& y : *obj.list) c += equal(y, *x);
        r = Value::integer(c);
        return true;
      }
      return false;
    }
    return false;
  }

  // ---- globals
  Value global(const std::string& n) {
    if (n == "range") return Value::func([](Interp& in, Args& a) {
      int64_t p[3] = {0, 0, 1};
      for (auto& v : a.pos) if (v.t != Value::T::Int && v.t != Value::T::Bool) in.error("range() arguments must be integers");
      if (a.pos.size() == 1) p[1] = a.pos[0].as_int();
      else if (a.pos.size() == 2 || a.pos.size() == 3) { p[0] = a.pos[0].as_int(); p[1] = a.pos[1].as_int(); if (a.pos.size() == 3) p[2] = a.pos[2].as_int(); }
      else in.error("range() takes 1 to 3 arguments");
      if (p[2] == 0) in.error("range() step must not be zero");
      List l;
      for (int64_t k = p[0]; p[2] > 0 ? k < p[1] : k > p[1]; k += p[2]) { in.tick(); l.push_back(Value::integer(k)); }
      return Value::make_list(std::move(l));
    });
    if (n == "namespace" || n == "dict") {
      bool ns = n == "namespace";
      return Value::func([ns](Interp& in, Args& a) {
        Value v = ns ? Value::make_ns() : Value::make_dict();
        for (auto& p : a.pos) {
          if (p.t != Value::T::Dict && p.t != Value::T::Ns) in.error(std::string(ns ? "namespace" : "dict") + "() positional argument must be a mapping");
          for (auto& kv : p.dict->items) v.dict->set(kv.first, kv.second);
        }
        for (auto& [k, x] : a.kw) {
          if (ns && !k.empty() && k[0] == '_') in.error("namespace attributes cannot start with '_': " + k);
          v.dict->set(k, x);
        }
        return v;
      });
    }
    if (n == "raise_exception") return Value::func([](Interp& in, Args& a) -> Value {
      const Value* m = a.get(0, "message");
      in.error("raise_exception: " + (m ? to_str(*m) : std::string()));
    });
    if (n == "strftime_now") return Value::func([](Interp& in, Args& a) {
      std::string fmt = need_str(in, a.get(0, "format"), "strftime_now");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[512];
      size_t len = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
      return Value::str(std::string(buf, len));
    });
    return Value::undef();
  }

  // ---- tests
  bool test(const std::string& n, const Value& v, Args& a) {
    const Value* x = a.get(0, "value");
    auto need = [&]() -> const Value& { if (!x) error("test '" + n + "' needs an argument"); return *x; };
    if (n == "defined") return v.t != Value::T::Undefined;
    if (n == "undefined") return v.t == Value::T::Undefined;
    if (n == "none") return v.t == Value::T::None;
    if (n == "boolean") return v.t == Value::T::Bool;
    if (n == "true") return v.t == Value::T::Bool && v.b;
    if (n == "false") return v.t == Value::T::Bool && !v.b;
    if (n == "integer") return v.t == Value::T::Int;
    if (n == "float") return v.t == Value::T::Float;
    if (n == "number") return v.is_num();
    if (n == "string") return v.t == Value::T::Str;
    if (n == "mapping") return v.t == Value::T::Dict;
    if (n == "iterable") return v.t == Value::T::Str || v.t == Value::T::List || v.t == Value::T::Dict;
    if (n == "sequence") return v.t == Value::T::Str || v.t == Value::T::List || v.t == Value::T::Dict;
    if (n == "callable") return v.t == Value::T::Func;
    if (n == "lower") return v.t == Value::T::Str && py_lower(v.s) == v.s;
    if (n == "upper") return v.t == Value::T::Str && py_upper(v.s) == v.s;
    if (n == "even" || n == "odd") {
      if (v.t != Value::T::Int && v.t != Value::T::Bool) error("test '" + n + "' needs an integer");
      return (v.as_int() % 2 == 0) == (n == "even");
    }
    if (n == "divisibleby") {
      const Value& d = need();
      if (!v.is_num() || !d.is_num() || d.num() == 0) error("divisibleby needs non-zero numbers");
      return std::fmod(v.num(), d.num()) == 0;
    }
    if (n == "eq" || n == "equalto" || n == "==") return equal(v, need());
    if (n == "ne" || n == "!=") return !equal(v, need());
    if (n == "lt" || n == "lessthan" || n == "<") return compare("<", v, need());
    if (n == "le" || n == "<=") return compare("<=", v, need());
    if (n == "gt" || n == "greaterthan" || n == ">") return compare(">", v, need());
    if (n == "ge" || n == ">=") return compare(">=", v, need());
    if (n == "in") return contains(need(), v);
    if (n == "sameas") return equal(v, need()) && v.t == need().t;
    error("unknown test '" + n + "'");
  }

  // ---- filters
  std::string str_arg(const Value& v) { return v.t == Value::T::Str ? v.s : to_str(v); }

  Value sort_key(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.t == Value::T::Str) return Value::str(py_lower(v.s));
    return v;
  }
  Value attr_path(const Value& v, const std::string& path) {
    Value cur = v;
    size_t start = 0;
    while (true) {
      size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      cur = cur.t == Value::T::Undefined ? cur : get_item(cur, Value::str(part));
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Value filter(const std::string& n, const Value& v, Args& a) {
    tick();
    const Value* a0 = a.pos.size() > 0 ? &a.pos[0] : nullptr;
    if (n == "trim") {
      const Value* c = a.get(0, "chars");
      return Value::str(py_strip(str_arg(v), c && c->t == Value::T::Str ? c : nullptr, 3));
    }
    if (n == "upper") return Value::str(py_upper(str_arg(v)));
    if (n == "lower") return Value::str(py_lower(str_arg(v)));
    if (n == "capitalize") return Value::str(case_map(str_arg(v), 2));
    if (n == "title") return Value::str(case_map(str_arg(v), 3));
    if (n == "length" || n == "count") {
      switch (v.t) {
        case Value::T::Str: return Value::integer(int64_t(code_points(v.s).size()));
        case Value::T::List: return Value::integer(int64_t(v.list->size()));
        case Value::T::Dict:
        case Value::T::Ns: return Value::integer(int64_t(v.dict->items.size()));
        case Value::T::Undefined: return Value::integer(0);
        default: error(std::string("object of type '") + type_name(v) + "' has no len()");
      }
    }
    if (n == "tojson") {
      const Value* ind = a.get(0, "indent");
      int indent = ind && ind->t == Value::T::Int ? int(std::clamp<int64_t>(ind->i, 0, 64)) : -1;
      std::string o;
      if (!to_json(o, v, indent, 0)) error(std::string("object of type '") + type_name(v) + "' is not JSON serializable");
      return Value::str(std::move(o));
    }
    if (n == "join") {
      const Value* sep = a.get(0, "d");
      const Value* attr = a.get(1, "attribute");
      std::string d = sep ? str_arg(*sep) : std::string();
      std::string o;
      bool first = true;
      for (auto& x : iterate(v)) {
        tick();
        if (!first) o += d;
        first = false;
        o += to_str(attr ? attr_path(x, str_arg(*attr)) : x);
        if (o.size() > tpl.limits.max_output_bytes) error("join result too large");
      }
      return Value::str(std::move(o));
    }
    if (n == "replace") {
      const Value* from = a.get(0, "old");
      const Value* to = a.get(1, "new");
      const Value* cnt = a.get(2, "count");
      if (!from || !to) error("replace needs two arguments");
      std::string s = str_arg(v), f = str_arg(*from), t = str_arg(*to), o;
      int64_t maxc = cnt && cnt->t == Value::T::Int ? cnt->i : -1;
      if (f.empty()) {  // Python inserts `t` between every character
        auto cps = code_points(s);
        int64_t c = 0;
        for (auto [p, len] : cps) {
          if (maxc < 0 || c < maxc) { o += t; ++c; }
          o.append(s, p, len);
        }
        if (maxc < 0 || c < maxc) o += t;
        return Value::str(std::move(o));
      }
      size_t start = 0;
      int64_t c = 0;
      while (true) {
        size_t p = (maxc >= 0 && c >= maxc) ? std::string::npos : s.find(f, start);
        if (p == std::string::npos) { o.append(s, start, std::string::npos); break; }
        o.append(s, start, p - start);
        o += t;
        start = p + f.size();
        ++c;
        if (o.size() > tpl.limits.max_output_bytes) error("replace result too large");
      }
      return Value::str(std::move(o));
    }
    if (n == "first" || n == "last") {
      List l = iterate(v);
      if (l.empty()) return Value::undef(n);
      return n == "first" ? l.front() : l.back();
    }
    if (n == "default" || n == "d") {
      const Value* dflt = a.get(0, "default_value");
      const Value* boolean = a.get(1, "boolean");
      bool use = v.t == Value::T::Undefined || (boolean && truthy(*boolean) && !truthy(v));
      return use ? (dflt ? *dflt : Value::str("")) : v;
    }
    if (n == "items") {
      if (v.t == Value::T::Undefined) return Value::make_list();
      if (v.t != Value::T::Dict && v.t != Value::T::Ns) error("items filter needs a mapping");
      List l;
      for (auto& kv : v.dict->items) {
        l.push_back(Value::make_list({Value::str(kv.first), kv.second}));
        l.back().tuple = true;
      }
      return Value::make_list(std::move(l));
    }
    if (n == "dictsort") {  // jinja2: the (key, value) pairs sorted by key (by='value': by value), case-insensitive
      const Value* cs = a.get(0, "case_sensitive");
      const Value* by = a.get(1, "by");
      const Value* rev = a.get(2, "reverse");
      if (v.t != Value::T::Dict && v.t != Value::T::Ns) error("dictsort filter needs a mapping");
      const std::string by_s = by ? str_arg(*by) : "key";
      if (by_s != "key" && by_s != "value") error("You can only sort by either 'key' or 'value'");
      const size_t pos = by_s == "value" ? 1 : 0;
      const bool case_sensitive = cs && truthy(*cs);
      List l;
      for (auto& kv : v.dict->items) {
        l.push_back(Value::make_list({Value::str(kv.first), kv.second}));
        l.back().tuple = true;
      }
      auto less = [&](const Value& x, const Value& y) {
        return compare_order(sort_key((*x.list)[pos], case_sensitive), sort_key((*y.list)[pos], case_sensitive), "<") < 0;
      };
      std::stable_sort(l.begin(), l.end(), less);
      if (rev && truthy(*rev)) std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) { return less(y, x); });
      return Value::make_list(std::move(l));
    }
    if (n == "string") return Value::str(to_str(v));
    if (n == "safe" || n == "list" || n == "unique") {
      if (n == "safe") return v;
      List l = iterate(v);
      if (n == "unique") {
        List u;
        for (auto& x : l) {
          bool seen = false;
          for (auto& y : u) seen = seen || equal(sort_key(x, false), sort_key(y, false));
          if (!seen) u.push_back(x);
        }
        l = std::move(u);
      }
      return Value::make_list(std::move(l));
    }
    if (n == "int") {
      const Value* dflt = a.get(0, "default");
      Value d = dflt ? *dflt : Value::integer(0);
      if (v.t == Value::T::Int) return v;
      if (v.t == Value::T::Bool) return Value::integer(v.as_int());
      if (v.t == Value::T::Float) return std::isfinite(v.f) ? Value::integer(int64_t(v.f)) : d;
      if (v.t == Value::T::Str) {
        std::string s = py_strip(v.s, nullptr, 3);
        int64_t x = 0;
        auto r = std::from_chars(s.data() + (s.size() && s[0] == '+'), s.data() + s.size(), x);
        if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty()) return Value::integer(x);
        char* end = nullptr;
        double f = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(f)) return Value::integer(int64_t(f));
      }
      return d;
    }
    if (n == "float") {
      if (v.is_num()) return Value::real(v.num());
      if (v.t == Value::T::Str) {
        std::string s = py_strip(v.s, nullptr, 3);
        char* end = nullptr;
        double f = std::strtod(s.c_str(), &end);
        if (!s.empty() && end == s.c_str() + s.size()) return Value::real(f);
      }
      const Value* dflt = a.get(0, "default");
      return dflt ? *dflt : Value::real(0.0);
    }
    if (n == "abs") {
      if (!v.is_num()) error("abs needs a number");
      return v.t == Value::T::Float ? Value::real(std::fabs(v.f)) : Value::integer(std::llabs(v.as_int()));
    }
    if (n == "round") {
      if (!v.is_num()) error("round needs a number");
      const Value* pr = a.get(0, "precision");
      double scale = std::pow(10.0, pr && pr->t == Value::T::Int ? double(pr->i) : 0.0);
      return Value::real(std::nearbyint(v.num() * scale) / scale);
    }
    if (n == "reverse") {
      if (v.t == Value::T::Str) {
        auto cps = code_points(v.s);
        std::string o;
        for (auto it = cps.rbegin(); it != cps.rend(); ++it) o.append(v.s, it->first, it->second);
        return Value::str(std::move(o));
      }
      List l = iterate(v);
      std::reverse(l.begin(), l.end());
      return Value::make_list(std::move(l));
    }
    if (n == "sort" || n == "max" || n == "min") {
      bool is_sort = n == "sort";
      const Value* rev = is_sort ? a.get(0, "reverse") : nullptr;
      const Value* cs = a.get(is_sort ? 1 : 0, "case_sensitive");
      const Value* attr = a.get(is_sort ? 2 : 1, "attribute");
      bool case_sensitive = cs && truthy(*cs);
      List l = iterate(v);
      auto key = [&](const Value& x) { return sort_key(attr ? attr_path(x, str_arg(*attr)) : x, case_sensitive); };
      auto less = [&](const Value& x, const Value& y) { return compare_order(key(x), key(y), "<") < 0; };
      if (is_sort) {
        std::stable_sort(l.begin(), l.end(), less);
        if (rev && truthy(*rev)) {
          // Python's sorted(reverse=True) keeps equal elements in their original order.
          std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) { return less(y, x); });
        }
        return Value::make_list(std::move(l));
      }
      if (l.empty()) return Value::undef(n);
      return n == "max" ? *std::max_element(l.begin(), l.end(), less) : *std::min_element(l.begin(), l.end(), less);
    }
    if (n == "sum") {
      const Value* attr = a.get(0, "attribute");
      const Value* start = a.get(1, "start");
      Value acc = start ? *start : Value::integer(0);
      for (auto& x : iterate(v)) acc = arith("+", acc, attr ? attr_path(x, str_arg(*attr)) : x);
      return acc;
    }
    if (n == "map") {
      List out;
      const Value* attr = a.get(size_t(-1), "attribute");
      if (attr) {
        const Value* dflt = a.get(size_t(-1), "default");
        for (auto& x : iterate(v)) {
          Value r = attr_path(x, str_arg(*attr));
          out.push_back(r.t == Value::T::Undefined && dflt ? *dflt : r);
        }
      } else {
        if (!a0 || a0->t != Value::T::Str) error("map needs a filter name or attribute=");
        Args rest;
        rest.pos.assign(a.pos.begin() + 1, a.pos.end());
        rest.kw = a.kw;
        for (auto& x : iterate(v)) out.push_back(filter(a0->s, x, rest));
      }
      return Value::make_list(std::move(out));
    }
    if (n == "select" || n == "reject" || n == "selectattr" || n == "rejectattr") {
      bool by_attr = n == "selectattr" || n == "rejectattr";
      bool keep_if = n == "select" || n == "selectattr";
      size_t ti = by_attr ? 1 : 0;
      if (by_attr && (!a0 || a0->t != Value::T::Str)) error(n + " needs an attribute name");
      const Value* tn = a.pos.size() > ti ? &a.pos[ti] : nullptr;
      Args targs;
      if (a.pos.size() > ti + 1) targs.pos.assign(a.pos.begin() + long(ti) + 1, a.pos.end());
      List out;
      for (auto& x : iterate(v)) {
        Value subj = by_attr ? attr_path(x, a0->s) : x;
        bool r = tn ? test(str_arg(*tn), subj, targs) : truthy(subj);
        if (r == keep_if) out.push_back(x);
      }
      return Value::make_list(std::move(out));
    }
    if (n == "escape" || n == "e") {
      std::string o;
      for (char c : str_arg(v)) {
        switch (c) {
          case '&': o += "&amp;"; break;
          case '<': o += "&lt;"; break;
          case '>': o += "&gt;"; break;
          case '"': o += "&#34;"; break;
          case '\'': o += "&#39;"; break;
          default: o += c;
        }
      }
      return Value::str(std::move(o));
    }
    if (n == "indent") {
      const Value* w = a.get(0, "width");
      const Value* first = a.get(1, "first");
      const Value* blank = a.get(2, "blank");
      std::string pad = w && w->t == Value::T::Str ? w->s : std::string(size_t(w && w->t == Value::T::Int ? std::clamp<int64_t>(w->i, 0, 1024) : 4), ' ');
      std::string s = str_arg(v), o;
      size_t start = 0;
      bool first_line = true;
      while (start <= s.size()) {
        size_t e = s.find('\n', start);
        std::string ln = s.substr(start, e == std::string::npos ? std::string::npos : e - start);
        bool do_pad = (first_line ? (first && truthy(*first)) : true) && (!ln.empty() || (blank && truthy(*blank)));
        if (do_pad) o += pad;
        o += ln;
        if (e == std::string::npos) break;
        o += '\n';
        start = e + 1;
        first_line = false;
      }
      return Value::str(std::move(o));
    }
    error("unknown filter '" + n + "'");
  }

  // ---- statements
  void exec(const Body& body) {
    for (const auto& s : body) exec(*s);
  }

  void exec(const Stmt& s) {
    at(s.line, s.col);
    switch (s.k) {
      case Stmt::K::Text: emit(s.text); return;
      case Stmt::K::Output: {
        emit(to_str(eval(*s.expr)));
        return;
      }
      case Stmt::K::If:
        for (const auto& [c, b] : s.branches) {
          if (truthy(eval(*c))) { exec(b); return; }
        }
        exec(s.else_body);
        return;
      case Stmt::K::For: exec_for(s); return;
      case Stmt::K::Set: {
        Value v = eval(*s.expr);
        at(s.line, s.col);
        if (!s.attr.empty()) {
          Value ns = lookup(s.text);
          if (ns.t != Value::T::Ns) error("cannot assign attribute '" + s.attr + "' on '" + s.text + "': not a namespace");
          if (s.attr[0] == '_') error("namespace attributes cannot start with '_': " + s.attr);
          ns.dict->set(s.attr, std::move(v));
          return;
        }
        if (s.targets.size() == 1) { assign(s.targets[0], std::move(v)); return; }
        List l = iterate(v);
        if (l.size() != s.targets.size())
          error("cannot unpack " + std::to_string(l.size()) + " values into " + std::to_string(s.targets.size()) + " names");
        for (size_t k = 0; k < l.size(); ++k) assign(s.targets[k], l[k]);
        return;
      }
      case Stmt::K::SetBlock: {
        std::string buf;
        std::string* saved = out;
        out = &buf;
        try { exec(s.body); } catch (...) { out = saved; throw; }
        out = saved;
        if (s.expr) {  // {% filter %}
          Args a = eval_args(*s.expr);
          emit(to_str(filter(s.expr->name, Value::str(std::move(buf)), a)));
        } else {
          assign(s.text, Value::str(std::move(buf)));
        }
        return;
      }
      case Stmt::K::Macro: {
        const Stmt* m = &s;
        assign(s.text, Value::func([m](Interp& in, Args& a) { return in.call_macro(*m, a); }));
        return;
      }
      case Stmt::K::Break: throw BreakLoop{};
      case Stmt::K::Continue: throw ContinueLoop{};
      case Stmt::K::Block: exec(s.body); return;
    }
  }

  Value call_macro(const Stmt& m, Args& a) {
    Depth d(*this);
    tick();
    std::unordered_map<std::string, Value> frame;
    if (a.pos.size() > m.params.size()) error("macro '" + m.text + "' takes " + std::to_string(m.params.size()) + " arguments");
    for (size_t k = 0; k < m.params.size(); ++k) {
      const auto& [pn, dflt] = m.params[k];
      const Value* v = nullptr;
      for (auto& [kn, kv] : a.kw) if (kn == pn) v = &kv;
      if (!v && k < a.pos.size()) v = &a.pos[k];
      frame[pn] = v ? *v : dflt ? eval(*dflt) : Value::undef(pn);
    }
    for (auto& [kn, kv] : a.kw) {
      bool known = false;
      for (auto& p : m.params) known = known || p.first == kn;
      if (!known) error("macro '" + m.text + "' has no parameter '" + kn + "'");
    }
    size_t saved_barrier = barrier;
    barrier = scopes.size();
    scopes.push_back(std::move(frame));
    std::string buf;
    std::string* saved_out = out;
    out = &buf;
    auto restore = [&] {
      scopes.resize(barrier);
      barrier = saved_barrier;
      out = saved_out;
    };
    try {
      exec(m.body);
    } catch (BreakLoop&) {
      restore();
      error("'break' outside of a loop");
    } catch (ContinueLoop&) {
      restore();
      error("'continue' outside of a loop");
    } catch (...) {
      restore();
      throw;
    }
    restore();
    return Value::str(std::move(buf));
  }

  void exec_for(const Stmt& s) {
    Value it = eval(*s.expr);
    at(s.line, s.col);
    List items = iterate(it);
    if (s.cond) {  // inline `if` filters before loop.* is computed
      List kept;
      scopes.emplace_back();
      for (auto& x : items) {
        bind_targets(s, x);
        if (truthy(eval(*s.cond))) kept.push_back(x);
      }
      scopes.pop_back();
      items = std::move(kept);
    }
    if (items.empty()) { exec(s.else_body); return; }
    scopes.emplace_back();
    Value loop = Value::make_dict();
    const int64_t n = int64_t(items.size());
    try {
      for (int64_t k = 0; k < n; ++k) {
        tick();
        loop.dict->items.clear();
        loop.dict->set("index0", Value::integer(k));
        loop.dict->set("index", Value::integer(k + 1));
        loop.dict->set("revindex0", Value::integer(n - k - 1));
        loop.dict->set("revindex", Value::integer(n - k));
        loop.dict->set("first", Value::boolean(k == 0));
        loop.dict->set("last", Value::boolean(k == n - 1));
        loop.dict->set("length", Value::integer(n));
        loop.dict->set("previtem", k > 0 ? items[size_t(k - 1)] : Value::undef("previtem"));
        loop.dict->set("nextitem", k + 1 < n ? items[size_t(k + 1)] : Value::undef("nextitem"));
        loop.dict->set("depth", Value::integer(1));
        loop.dict->set("depth0", Value::integer(0));
        assign("loop", loop);
        bind_targets(s, items[size_t(k)]);
        try {
          exec(s.body);
        } catch (ContinueLoop&) {
        }
      }
    } catch (BreakLoop&) {
    } catch (...) {
      scopes.pop_back();
      throw;
    }
    scopes.pop_back();
  }

  void bind_targets(const Stmt& s, const Value& x) {
    if (s.targets.size() == 1) { assign(s.targets[0], x); return; }
    List parts = iterate(x);
    if (parts.size() != s.targets.size())
      error("cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(s.targets.size()) + " loop variables");
    for (size_t k = 0; k < parts.size(); ++k) assign(s.targets[k], parts[k]);
  }
};

}  // namespace detail

using namespace detail;

Template::Template(std::string_view source, std::string name, Limits limits) : impl_(std::make_unique<Impl>()) {
  impl_->name = std::move(name);
  impl_->limits = limits;
  impl_->body = parse_template(source, impl_->name, std::min(limits.max_depth, 256));
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

const std::string& Template::name() const { return impl_->name; }

std::string Template::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object() && !context.is_null()) fail(impl_->name, "render context must be a JSON object");
  Interp in{*impl_, {}, nullptr, 0, 0, 0, 0};
  in.scopes.emplace_back();
  if (context.is_object())
    for (auto it = context.begin(); it != context.end(); ++it) in.scopes.back()[it.key()] = from_json(it.value());
  in.scopes.emplace_back();  // template-level `set`s
  std::string out;
  in.out = &out;
  try {
    in.exec(impl_->body);
  } catch (BreakLoop&) {
    fail(impl_->name, "'break' outside of a loop");
  } catch (ContinueLoop&) {
    fail(impl_->name, "'continue' outside of a loop");
  }
  return out;
}

}  // namespace qlora::jinja
