// The Jinja parser: tokens to statement and expression trees (train/jinja_syntax.h).
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

namespace qlora::jinja::detail {
namespace {


struct Parser {
  std::vector<Token>& toks;
  const std::string& name;
  int max_depth;
  size_t i = 0;
  int depth = 0;

  [[noreturn]] void error(const Token& t, const std::string& what) {
    fail(name + ":" + std::to_string(t.line) + ":" + std::to_string(t.col), safe_message(what, kMaxWhat));
  }
  const Token& cur() const { return toks[i]; }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().value == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().value == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) error(cur(), std::string("expected '") + op + "', got " + describe(cur()));
    ++i;
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) error(cur(), "expected a name, got " + describe(cur()));
    return toks[i++].value;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Text: return "template text";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "'}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "'%}'";
      case Tok::Eof: return "end of template";
      case Tok::String: return "string literal";
      default: return "'" + t.value + "'";
    }
  }
  ExprP node(Expr::K k, const Token& t) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = t.line;
    e->col = t.col;
    return e;
  }

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& pp) : p(pp) {
      if (++p.depth > p.max_depth) p.error(p.cur(), "expression nested too deeply");
    }
    ~DepthGuard() { --p.depth; }
  };

  // ---- expressions
  ExprP parse_expr(bool with_cond = true) {
    DepthGuard g(*this);
    ExprP e = parse_or();
    while (with_cond && is_name("if")) {
      const Token& t = cur();
      ++i;
      auto c = node(Expr::K::Cond, t);
      c->args.push_back(std::move(e));
      c->args.push_back(parse_or());
      if (is_name("else")) { ++i; c->args.push_back(parse_expr()); }
      e = std::move(c);
    }
    return e;
  }
  ExprP parse_or() {
    ExprP l = parse_and();
    while (is_name("or")) {
      auto n = node(Expr::K::Or, cur());
      ++i;
      n->args.push_back(std::move(l));
      n->args.push_back(parse_and());
      l = std::move(n);
    }
    return l;
  }
  ExprP parse_and() {
    ExprP l = parse_not();
    while (is_name("and")) {
      auto n = node(Expr::K::And, cur());
      ++i;
      n->args.push_back(std::move(l));
      n->args.push_back(parse_not());
      l = std::move(n);
    }
    return l;
  }
  ExprP parse_not() {
    if (is_name("not")) {
      DepthGuard g(*this);
      auto n = node(Expr::K::Not, cur());
      ++i;
      n->args.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    const Token& t = cur();
    ExprP l = parse_math1();
    ExprP cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op &&
          (cur().value == "==" || cur().value == "!=" || cur().value == "<" || cur().value == "<=" ||
           cur().value == ">" || cur().value == ">=")) {
        op = cur().value;
        ++i;
      } else if (is_name("in")) {
        op = "in";
        ++i;
      } else if (is_name("not") && toks[i + 1].type == Tok::Name && toks[i + 1].value == "in") {
        op = "notin";
        i += 2;
      } else {
        break;
      }
      if (!cmp) { cmp = node(Expr::K::Compare, t); cmp->args.push_back(std::move(l)); }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(l);
  }
  ExprP bin(const std::string& op, ExprP l, ExprP r, const Token& t) {
    auto n = node(Expr::K::Bin, t);
    n->name = op;
    n->args.push_back(std::move(l));
    n->args.push_back(std::move(r));
    return n;
  }
  ExprP parse_math1() {
    ExprP l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = cur();
      ++i;
      l = bin(t.value, std::move(l), parse_concat(), t);
    }
    return l;
  }
  ExprP parse_concat() {
    ExprP l = parse_math2();
    while (is_op("~")) {
      const Token& t = cur();
      ++i;
      l = bin("~", std::move(l), parse_math2(), t);
    }
    return l;
  }
  ExprP parse_math2() {
    ExprP l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = cur();
      ++i;
      l = bin(t.value, std::move(l), parse_pow(), t);
    }
    return l;
  }
  ExprP parse_pow() {
    ExprP l = parse_unary();
    while (is_op("**")) {
      const Token& t = cur();
      ++i;
      l = bin("**", std::move(l), parse_unary(), t);
    }
    return l;
  }
  ExprP parse_unary(bool with_filter = true) {
    DepthGuard g(*this);
    ExprP n;
    if (is_op("-") || is_op("+")) {
      n = node(is_op("-") ? Expr::K::Neg : Expr::K::Pos, cur());
      ++i;
      n->args.push_back(parse_unary(false));
    } else {
      n = parse_primary();
    }
    n = parse_postfix(std::move(n));
    if (with_filter) n = parse_filter_expr(std::move(n));
    return n;
  }
  ExprP parse_primary() {
    const Token& t = cur();
    switch (t.type) {
      case Tok::Name: {
        ++i;
        if (t.value == "true" || t.value == "True") { auto n = node(Expr::K::Lit, t); n->lit = Value::boolean(true); return n; }
        if (t.value == "false" || t.value == "False") { auto n = node(Expr::K::Lit, t); n->lit = Value::boolean(false); return n; }
        if (t.value == "none" || t.value == "None") { auto n = node(Expr::K::Lit, t); n->lit = Value::none(); return n; }
        auto n = node(Expr::K::Name, t);
        n->name = t.value;
        return n;
      }
      case Tok::String: {
        std::string s;
        while (cur().type == Tok::String) s += toks[i++].value;  // adjacent literals concatenate
        auto n = node(Expr::K::Lit, t);
        n->lit = Value::str(std::move(s));
        return n;
      }
      case Tok::Int: {
        ++i;
        auto n = node(Expr::K::Lit, t);
        int64_t v = 0;
        auto r = std::from_chars(t.value.data(), t.value.data() + t.value.size(), v);
        if (r.ec != std::errc()) error(t, "integer literal out of range");
        n->lit = Value::integer(v);
        return n;
      }
      case Tok::Float: {
        ++i;
        auto n = node(Expr::K::Lit, t);
        n->lit = Value::real(std::strtod(t.value.c_str(), nullptr));
        return n;
      }
      case Tok::Op:
        if (t.value == "(") {
          ++i;
          if (is_op(")")) { ++i; auto n = node(Expr::K::ListLit, t); n->tuple = true; return n; }
          ExprP e = parse_expr();
          if (is_op(",")) {
            auto n = node(Expr::K::ListLit, t);
            n->tuple = true;
            n->args.push_back(std::move(e));
            while (is_op(",")) {
              ++i;
              if (is_op(")")) break;
              n->args.push_back(parse_expr());
            }
            e = std::move(n);
          }
          expect_op(")");
          return e;
        }
        if (t.value == "[") {
          ++i;
          auto n = node(Expr::K::ListLit, t);
          while (!is_op("]")) {
            n->args.push_back(parse_expr());
            if (!is_op(",")) break;
            ++i;
          }
          expect_op("]");
          return n;
        }
        if (t.value == "{") {
          ++i;
          auto n = node(Expr::K::DictLit, t);
          while (!is_op("}")) {
            n->args.push_back(parse_expr());
            expect_op(":");
            n->args.push_back(parse_expr());
            if (!is_op(",")) break;
            ++i;
          }
          expect_op("}");
          return n;
        }
        break;
      default: break;
    }
    error(t, "unexpected " + describe(t) + " in expression");
  }
  void parse_call_args(Expr& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == Tok::Name && toks[i + 1].type == Tok::Op && toks[i + 1].value == "=") {
        std::string k = toks[i].value;
        i += 2;
        n.kwargs.emplace_back(k, parse_expr());
      } else {
        if (!n.kwargs.empty()) error(cur(), "positional argument after keyword argument");
        n.args.push_back(parse_expr());
      }
      if (!is_op(",")) break;
      ++i;
    }
    expect_op(")");
  }
  ExprP parse_postfix(ExprP n) {
    while (true) {
      const Token& t = cur();
      if (is_op(".")) {
        ++i;
        auto a = node(Expr::K::Attr, t);
        if (cur().type == Tok::Int) a->name = toks[i++].value;
        else a->name = expect_name();
        a->args.push_back(std::move(n));
        n = std::move(a);
      } else if (is_op("[")) {
        ++i;
        ExprP parts[3];
        bool is_slice = false;
        for (int p = 0; p < 3; ++p) {
          if (!is_op(":") && !is_op("]")) parts[p] = parse_expr();
          if (p < 2 && is_op(":")) { is_slice = true; ++i; continue; }
          break;
        }
        expect_op("]");
        if (!is_slice && !parts[0]) error(t, "empty subscript");
        auto s = node(is_slice ? Expr::K::Slice : Expr::K::Item, t);
        s->args.push_back(std::move(n));
        if (is_slice) for (auto& p : parts) s->args.push_back(std::move(p));
        else s->args.push_back(std::move(parts[0]));
        n = std::move(s);
      } else if (is_op("(")) {
        auto c = node(Expr::K::Call, t);
        c->args.push_back(std::move(n));
        parse_call_args(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }
  ExprP parse_filter_expr(ExprP n) {
    while (true) {
      if (is_op("|")) {
        const Token& t = cur();
        ++i;
        auto f = node(Expr::K::Filter, t);
        f->name = expect_name();
        while (is_op(".")) {
          ++i;
          f->name += '.';
          f->name += expect_name();
        }
        f->args.push_back(std::move(n));
        if (is_op("(")) parse_call_args(*f);
        n = parse_postfix(std::move(f));
      } else if (is_name("is")) {
        const Token& t = cur();
        ++i;
        auto te = node(Expr::K::Test, t);
        if (is_name("not")) { te->negate = true; ++i; }
        te->name = expect_name();
        te->args.push_back(std::move(n));
        if (is_op("(")) {
          parse_call_args(*te);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if") && !is_name("in") &&
                   !is_name("is")) {
          ExprP a = parse_primary();
          te->args.push_back(parse_postfix(std::move(a)));
        }
        n = std::move(te);
      } else {
        return n;
      }
    }
  }

  // ---- statements
  std::vector<std::string> parse_targets() {
    std::vector<std::string> names{expect_name()};
    while (is_op(",")) { ++i; names.push_back(expect_name()); }
    return names;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) error(cur(), "expected '%}', got " + describe(cur()));
    ++i;
  }
  ExprP parse_tuple_expr() {
    const Token& t = cur();
    ExprP e = parse_expr();
    if (!is_op(",")) return e;
    auto n = node(Expr::K::ListLit, t);
    n->tuple = true;
    n->args.push_back(std::move(e));
    while (is_op(",")) { ++i; n->args.push_back(parse_expr()); }
    return n;
  }

  // Parses statements until a block whose keyword is in `ends`; returns that keyword (its
  // tag's '{%' and keyword are consumed), or "" at end of template when `ends` is empty.
  std::string parse_body(Body& body, std::initializer_list<const char*> ends, const Token& opener) {
    DepthGuard g(*this);
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.size() == 0) return {};
        std::string want;
        for (const char* e : ends) want += std::string(want.empty() ? "" : " or ") + "'" + e + "'";
        error(opener, "unclosed block: expected " + want + " before end of template");
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->k = Stmt::K::Text;
        s->text = t.value;
        body.push_back(std::move(s));
        ++i;
      } else if (t.type == Tok::VarBegin) {
        ++i;
        auto s = std::make_unique<Stmt>();
        s->k = Stmt::K::Output;
        s->line = t.line;
        s->col = t.col;
        s->expr = parse_tuple_expr();
        if (cur().type != Tok::VarEnd) error(cur(), "expected '}}', got " + describe(cur()));
        ++i;
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        ++i;
        const Token& kw = cur();
        if (kw.type != Tok::Name) error(kw, "expected a statement keyword after '{%'");
        for (const char* e : ends)
          if (kw.value == e) { ++i; return kw.value; }
        body.push_back(parse_statement());
      } else {
        error(t, "unexpected " + describe(t));
      }
    }
  }

  StmtP parse_statement() {
    const Token& kw = cur();
    auto s = std::make_unique<Stmt>();
    s->line = kw.line;
    s->col = kw.col;
    const std::string k = kw.value;
    ++i;
    if (k == "if") {
      s->k = Stmt::K::If;
      ExprP c = parse_expr();
      expect_block_end();
      while (true) {
        Body b;
        std::string end = parse_body(b, {"elif", "else", "endif"}, kw);
        s->branches.emplace_back(std::move(c), std::move(b));
        if (end == "elif") { c = parse_expr(); expect_block_end(); continue; }
        if (end == "else") {
          expect_block_end();
          parse_body(s->else_body, {"endif"}, kw);
        }
        expect_block_end();
        break;
      }
    } else if (k == "for") {
      s->k = Stmt::K::For;
      s->targets = parse_targets();
      if (!is_name("in")) error(cur(), "expected 'in' in for loop, got " + describe(cur()));
      ++i;
      s->expr = parse_expr(false);
      if (is_name("if")) { ++i; s->cond = parse_expr(false); }
      if (is_name("recursive")) error(cur(), "recursive for loops are not supported");
      expect_block_end();
      std::string end = parse_body(s->body, {"else", "endfor"}, kw);
      if (end == "else") { expect_block_end(); parse_body(s->else_body, {"endfor"}, kw); }
      expect_block_end();
    } else if (k == "set") {
      std::string first = expect_name();
      if (is_op(".")) {
        ++i;
        s->k = Stmt::K::Set;
        s->text = first;
        s->attr = expect_name();
      } else {
        s->targets.push_back(first);
        while (is_op(",")) { ++i; s->targets.push_back(expect_name()); }
        s->k = Stmt::K::Set;
      }
      if (is_op("=")) {
        ++i;
        s->expr = parse_tuple_expr();
        expect_block_end();
      } else {
        if (s->targets.size() != 1) error(cur(), "block set needs a single name");
        s->k = Stmt::K::SetBlock;
        s->text = s->targets[0];
        expect_block_end();
        parse_body(s->body, {"endset"}, kw);
        expect_block_end();
      }
    } else if (k == "macro") {
      s->k = Stmt::K::Macro;
      s->text = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        std::string p = expect_name();
        ExprP d;
        if (is_op("=")) { ++i; d = parse_expr(); }
        s->params.emplace_back(p, std::move(d));
        if (!is_op(",")) break;
        ++i;
      }
      expect_op(")");
      expect_block_end();
      parse_body(s->body, {"endmacro"}, kw);
      if (cur().type == Tok::Name) ++i;  // {% endmacro name %}
      expect_block_end();
    } else if (k == "break" || k == "continue") {
      s->k = k == "break" ? Stmt::K::Break : Stmt::K::Continue;
      expect_block_end();
    } else if (k == "generation") {  // transformers' AssistantTracker: renders its body
      s->k = Stmt::K::Block;
      expect_block_end();
      parse_body(s->body, {"endgeneration"}, kw);
      expect_block_end();
    } else if (k == "filter") {
      // {% filter name(args) %}body{% endfilter %}: render body, then apply the filter.
      s->k = Stmt::K::SetBlock;
      s->expr = node(Expr::K::Filter, kw);
      s->expr->name = expect_name();
      s->expr->args.push_back(nullptr);
      if (is_op("(")) parse_call_args(*s->expr);
      expect_block_end();
      parse_body(s->body, {"endfilter"}, kw);
      expect_block_end();
    } else {
      error(kw, "unknown or unsupported statement '" + k + "'");
    }
    return s;
  }
};

}  // namespace

Body parse_template(std::string_view source, const std::string& name, int max_depth) {
  std::vector<Token> toks = tokenize(source, name);
  Parser p{toks, name, max_depth};
  Token opener{Tok::Eof, {}, 1, 1};
  Body body;
  p.parse_body(body, {}, opener);
  // Stray end tags ({% endif %} without if) arrive here as unknown statements.
  return body;
}

}  // namespace qlora::jinja::detail
