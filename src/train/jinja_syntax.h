#pragma once
// The syntax of a Jinja template (train/jinja.h): tokens, the expression and statement
// trees, and the two passes that produce them (jinja_lexer.cpp, jinja_parser.cpp). Internal.
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "train/jinja_value.h"

namespace qlora::jinja::detail {


enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string value;
  int line = 1, col = 1;
};

// The tokens of `source` (named `name` in errors): text runs and the insides of {{ }} and
// {% %} (whitespace control and comments applied). Throws Error naming name:line:col.
std::vector<Token> tokenize(std::string_view source, const std::string& name);


struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class K { Lit, Name, Attr, Item, Slice, Call, Filter, Test, Neg, Pos, Not, Bin, And, Or, Compare, Cond, ListLit, DictLit };
  K k;
  int line = 0, col = 0;
  Value lit;
  std::string name;              // Name/Attr/Filter/Test name; Bin operator
  bool negate = false;           // Test: `is not`
  bool tuple = false;            // ListLit written as a tuple
  std::vector<ExprP> args;       // operands; Slice: obj, start, stop, step (null = absent)
  std::vector<std::string> ops;  // Compare
  std::vector<std::pair<std::string, ExprP>> kwargs;
};

struct Stmt;
using StmtP = std::unique_ptr<Stmt>;
using Body = std::vector<StmtP>;

struct Stmt {
  enum class K { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Block };
  K k;
  int line = 0, col = 0;
  std::string text;                              // Text; Set/SetBlock/Macro name
  std::string attr;                              // Set: namespace attribute
  std::vector<std::string> targets;              // For / Set tuple targets
  ExprP expr;                                    // Output, For iterable, Set value
  ExprP cond;                                    // For inline filter
  std::vector<std::pair<ExprP, Body>> branches;  // If (cond, body)
  Body body, else_body;
  std::vector<std::pair<std::string, ExprP>> params;  // Macro
};

// The statements of a whole template. Throws Error naming name:line:col on bad syntax or
// nesting deeper than max_depth.
Body parse_template(std::string_view source, const std::string& name, int max_depth);

}  // namespace qlora::jinja::detail
