#include "formats/unicode_regex.h"

#include <algorithm>
#include <bitset>
#include <cctype>
#include <limits>

#include "base/error.h"
#include "formats/unicode.h"

namespace qlora::unicode {

// ---------------------------------------------------------------------------------
// Character classes

namespace {

struct ClassItem {
  enum Kind : uint8_t { kRange, kCats, kNotCats, kSpace, kNotSpace, kWord, kNotWord } kind;
  uint32_t lo = 0, hi = 0;  // kRange: [lo, hi]; kCats/kNotCats: lo = category mask
};

struct CharClass {
  std::vector<ClassItem> items;
  bool negated = false;
  bool fold = false;
  std::bitset<128> ascii;  // precomputed answer for ASCII code points

  bool raw_match(uint32_t cp) const {
    uint32_t cat_bit = 0;
    bool have_cat = false;
    for (const auto& it : items) {
      switch (it.kind) {
        case ClassItem::kRange:
          if (cp >= it.lo && cp <= it.hi) return true;
          break;
        case ClassItem::kCats:
        case ClassItem::kNotCats: {
          if (!have_cat) {
            cat_bit = mask_of(category(cp));
            have_cat = true;
          }
          const bool in = (cat_bit & it.lo) != 0;
          if (in == (it.kind == ClassItem::kCats)) return true;
          break;
        }
        case ClassItem::kSpace:
          if (is_whitespace(cp)) return true;
          break;
        case ClassItem::kNotSpace:
          if (!is_whitespace(cp)) return true;
          break;
        case ClassItem::kWord:
          if (is_word(cp)) return true;
          break;
        case ClassItem::kNotWord:
          if (!is_word(cp)) return true;
          break;
      }
    }
    return false;
  }
  bool slow_match(uint32_t cp) const {
    bool m = raw_match(cp);
    if (!m && fold) {
      const uint32_t f = simple_fold(cp);
      m = (f != cp && raw_match(f));
      if (!m && cp >= 'a' && cp <= 'z') m = raw_match(cp - 32);
    }
    return m != negated;
  }
  void finish() {
    for (uint32_t c = 0; c < 128; ++c) ascii[c] = slow_match(c);
  }
  bool match(uint32_t cp) const { return cp < 128 ? ascii[cp] : slow_match(cp); }
};

enum Op : uint8_t { kChar, kClass, kAny, kSplit, kJmp, kMatch, kAssert };
enum AssertKind : uint8_t {
  kBeginText, kEndText, kEndTextOptNewline, kBeginLine, kEndLine, kWordBoundary, kNotWordBoundary,
  kLookClass, kNegLookClass
};

struct Inst {
  Op op;
  uint8_t flag = 0;      // kChar: case-fold; kAssert: AssertKind
  uint32_t arg = 0;      // kChar: code point; kClass/kAssert(look): class index
  int32_t x = 0, y = 0;  // kSplit: preferred, other; kJmp: target
};

constexpr size_t kMaxProgram = 200000;
constexpr int kMaxRepeat = 1000;
constexpr int kMaxDepth = 200;

// ---------------------------------------------------------------------------------
// Parser: pattern -> AST

struct Node {
  enum Kind : uint8_t { kEmpty, kChar, kClass, kAny, kCat, kAlt, kRepeat, kAssert } kind = kEmpty;
  uint32_t cp = 0;
  bool fold = false;
  int cls = -1;
  uint8_t assert_kind = 0;
  int min = 0, max = 0;  // kRepeat; max < 0 = unbounded
  bool greedy = true;
  std::vector<Node> kids;
};

class Parser {
 public:
  Parser(std::string_view pattern, std::string_view where, std::vector<CharClass>& classes)
      : p_(pattern), where_(where), classes_(classes) {}

  Node parse() {
    Node n = parse_alt(false, 0);
    if (i_ != p_.size()) error("unbalanced ')'");
    return n;
  }

 private:
  std::string_view p_;
  std::string_view where_;
  std::vector<CharClass>& classes_;
  size_t i_ = 0;
  bool fold_ = false;

  [[noreturn]] void error(std::string_view what) const {
    fail(where_, "regex /" + std::string(p_.substr(0, 200)) + "/ at offset " + std::to_string(i_) +
                     ": " + std::string(what));
  }
  bool eof() const { return i_ >= p_.size(); }
  uint32_t peek_cp(size_t* len) const {
    Utf8Char c = decode_utf8(p_, i_);
    if (!c.valid) error("invalid UTF-8 in pattern");
    *len = c.len;
    return c.cp;
  }
  uint32_t next_cp() {
    size_t len;
    uint32_t cp = peek_cp(&len);
    i_ += len;
    return cp;
  }

  Node parse_alt(bool in_group, int depth) {
    if (depth > kMaxDepth) error("nesting too deep");
    const bool saved_fold = fold_;
    std::vector<Node> alts;
    alts.push_back(parse_concat(depth));
    while (!eof() && p_[i_] == '|') {
      ++i_;
      alts.push_back(parse_concat(depth));
    }
    if (in_group) {
      if (eof() || p_[i_] != ')') error("missing ')'");
      ++i_;
      fold_ = saved_fold;  // (?i) inside a group ends with the group
    }
    if (alts.size() == 1) return std::move(alts[0]);
    Node n;
    n.kind = Node::kAlt;
    n.kids = std::move(alts);
    return n;
  }

  Node parse_concat(int depth) {
    Node cat;
    cat.kind = Node::kCat;
    while (!eof() && p_[i_] != '|' && p_[i_] != ')') {
      Node atom;
      if (!parse_atom(depth, &atom)) continue;  // a flag group like (?i) produces nothing
      parse_quantifier(&atom);
      cat.kids.push_back(std::move(atom));
    }
    if (cat.kids.size() == 1) return std::move(cat.kids[0]);
    if (cat.kids.empty()) return Node{};
    return cat;
  }

  bool parse_int(int* v) {
    size_t start = i_;
    long long x = 0;
    while (!eof() && p_[i_] >= '0' && p_[i_] <= '9') {
      x = x * 10 + (p_[i_] - '0');
      if (x > 1000000) error("repeat count too large");
      ++i_;
    }
    *v = static_cast<int>(x);
    return i_ > start;
  }

  void parse_quantifier(Node* atom) {
    while (!eof()) {
      int mn, mx;
      const char c = p_[i_];
      if (c == '*') {
        mn = 0, mx = -1, ++i_;
      } else if (c == '+') {
        mn = 1, mx = -1, ++i_;
      } else if (c == '?') {
        mn = 0, mx = 1, ++i_;
      } else if (c == '{') {
        // {n}, {n,}, {n,m}; anything else is a literal '{' (Oniguruma does the same).
        size_t save = i_;
        ++i_;
        if (!parse_int(&mn)) {
          i_ = save;
          return;
        }
        mx = mn;
        if (!eof() && p_[i_] == ',') {
          ++i_;
          if (!parse_int(&mx)) mx = -1;
        }
        if (eof() || p_[i_] != '}') {
          i_ = save;
          return;
        }
        ++i_;
        if (mn > kMaxRepeat || mx > kMaxRepeat) error("repeat count above 1000");
        if (mx >= 0 && mx < mn) error("repeat {n,m} with m < n");
      } else {
        return;
      }
      if (atom->kind == Node::kAssert) error("quantifier after an assertion");
      Node r;
      r.kind = Node::kRepeat;
      r.min = mn;
      r.max = mx;
      if (!eof() && p_[i_] == '?') {
        r.greedy = false;
        ++i_;
      } else if (!eof() && p_[i_] == '+') {
        error("possessive quantifiers are not supported");
      }
      r.kids.push_back(std::move(*atom));
      *atom = std::move(r);
    }
  }

  int add_class(CharClass c) {
    c.finish();
    if (classes_.size() > 100000) error("too many character classes");
    classes_.push_back(std::move(c));
    return static_cast<int>(classes_.size() - 1);
  }

  Node class_node(CharClass c) {
    Node n;
    n.kind = Node::kClass;
    n.cls = add_class(std::move(c));
    return n;
  }

  uint32_t parse_hex(size_t min_digits, size_t max_digits) {
    uint32_t v = 0;
    size_t k = 0;
    while (k < max_digits && !eof() && std::isxdigit(static_cast<unsigned char>(p_[i_]))) {
      const char h = p_[i_];
      v = v * 16 + static_cast<uint32_t>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      ++i_, ++k;
    }
    if (k < min_digits) error("bad hex escape");
    return v;
  }

  // After a backslash: fills either *cp (a single character) or *item (a set);
  // returns true for a single character.
  bool parse_escape(uint32_t* cp, ClassItem* item, bool in_class) {
    if (eof()) error("pattern ends with '\\'");
    const char c = p_[i_++];
    switch (c) {
      case 'n': *cp = '\n'; return true;
      case 'r': *cp = '\r'; return true;
      case 't': *cp = '\t'; return true;
      case 'f': *cp = '\f'; return true;
      case 'v': *cp = '\v'; return true;
      case 'a': *cp = 7; return true;
      case 'e': *cp = 27; return true;
      case '0': *cp = 0; return true;
      case 'x':
        if (!eof() && p_[i_] == '{') {
          ++i_;
          *cp = parse_hex(1, 8);
          if (eof() || p_[i_] != '}') error("bad \\x{...}");
          ++i_;
        } else {
          *cp = parse_hex(1, 2);
        }
        if (*cp > 0x10FFFF) error("code point above U+10FFFF");
        return true;
      case 'u':
        *cp = parse_hex(4, 4);
        return true;
      case 's': item->kind = ClassItem::kSpace; return false;
      case 'S': item->kind = ClassItem::kNotSpace; return false;
      case 'w': item->kind = ClassItem::kWord; return false;
      case 'W': item->kind = ClassItem::kNotWord; return false;
      case 'd': item->kind = ClassItem::kCats; item->lo = mask_of(Nd); return false;
      case 'D': item->kind = ClassItem::kNotCats; item->lo = mask_of(Nd); return false;
      case 'p':
      case 'P': {
        std::string name;
        bool negate = (c == 'P');
        if (!eof() && p_[i_] == '{') {
          ++i_;
          if (!eof() && p_[i_] == '^') {
            negate = !negate;
            ++i_;
          }
          while (!eof() && p_[i_] != '}') name.push_back(p_[i_++]);
          if (eof()) error("unterminated \\p{");
          ++i_;
        } else {
          if (eof()) error("bad \\p");
          name.push_back(p_[i_++]);
        }
        const uint32_t m = category_mask_by_name(name);
        if (m == 0) error("unsupported property \\p{" + name + "}");
        item->kind = negate ? ClassItem::kNotCats : ClassItem::kCats;
        item->lo = m;
        return false;
      }
      default:
        break;
    }
    const unsigned char uc = static_cast<unsigned char>(c);
    if (uc >= 0x80) {
      --i_;
      *cp = next_cp();
      return true;
    }
    if (std::isalnum(uc)) {
      if (!in_class && (c == 'A' || c == 'z' || c == 'Z' || c == 'b' || c == 'B')) {
        error("internal: assertion escape");  // handled by the caller
      }
      error(std::string("unsupported escape \\") + c);
    }
    *cp = uc;  // escaped punctuation
    return true;
  }

  Node parse_bracket() {
    // p_[i_-1] == '['
    CharClass cls;
    cls.fold = fold_;
    if (!eof() && p_[i_] == '^') {
      cls.negated = true;
      ++i_;
    }
    parse_class_items(cls.items, 0);
    return class_node(std::move(cls));
  }

  // The items of a class up to and including its ']'. A nested class (Oniguruma: "[a[bc]]"
  // is the union a|b|c; BLOOM's pre-tokenizer regex has one) adds its items to the outer
  // class; a negated nested class, a POSIX bracket ("[:alpha:]") and "&&" are refused.
  void parse_class_items(std::vector<ClassItem>& items, int depth) {
    if (depth > 8) error("classes nested too deep");
    bool first = true;
    while (true) {
      if (eof()) error("missing ']'");
      char c = p_[i_];
      if (c == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      if (c == '[') {
        if (i_ + 1 < p_.size() && p_[i_ + 1] == ':') error("POSIX bracket classes are not supported");
        if (i_ + 1 < p_.size() && p_[i_ + 1] == '^') error("negated nested classes are not supported");
        ++i_;
        parse_class_items(items, depth + 1);
        continue;
      }
      if (c == '&' && i_ + 1 < p_.size() && p_[i_ + 1] == '&') error("class intersection is not supported");
      uint32_t lo;
      ClassItem item{};
      bool single = true;
      if (c == '\\') {
        ++i_;
        single = parse_escape(&lo, &item, true);
      } else {
        lo = next_cp();
      }
      if (!single) {
        items.push_back(item);
        continue;
      }
      // A range?
      if (i_ + 1 < p_.size() && p_[i_] == '-' && p_[i_ + 1] != ']') {
        ++i_;
        uint32_t hi;
        if (p_[i_] == '\\') {
          ++i_;
          ClassItem it2{};
          if (!parse_escape(&hi, &it2, true)) error("bad class range");
        } else {
          hi = next_cp();
        }
        if (hi < lo) error("class range out of order");
        items.push_back({ClassItem::kRange, lo, hi});
      } else {
        items.push_back({ClassItem::kRange, lo, lo});
      }
    }
  }

  Node assert_node(uint8_t k, int cls = -1) {
    Node n;
    n.kind = Node::kAssert;
    n.assert_kind = k;
    n.cls = cls;
    return n;
  }

  // Returns false when the atom was a bare flag group and produced no node.
  bool parse_atom(int depth, Node* out) {
    const char c = p_[i_];
    switch (c) {
      case '(': {
        ++i_;
        if (!eof() && p_[i_] == '?') {
          ++i_;
          if (eof()) error("bad group");
          const char k = p_[i_];
          if (k == ':') {
            ++i_;
            *out = parse_alt(true, depth + 1);
            return true;
          }
          if (k == '=' || k == '!') {
            ++i_;
            // Look-ahead over exactly one character or class.
            CharClass cls;
            cls.fold = fold_;
            if (eof()) error("bad look-ahead");
            if (p_[i_] == '[') {
              ++i_;
              Node n = parse_bracket();
              cls = classes_[static_cast<size_t>(n.cls)];
            } else if (p_[i_] == '\\') {
              ++i_;
              uint32_t cp;
              ClassItem item{};
              if (parse_escape(&cp, &item, true)) cls.items.push_back({ClassItem::kRange, cp, cp});
              else cls.items.push_back(item);
            } else if (p_[i_] == '.') {
              ++i_;
              cls.negated = true;
              cls.items.push_back({ClassItem::kRange, '\n', '\n'});
            } else if (p_[i_] != ')') {
              uint32_t cp = next_cp();
              cls.items.push_back({ClassItem::kRange, cp, cp});
            } else {
              error("empty look-ahead");
            }
            if (eof() || p_[i_] != ')') error("look-ahead over more than one character is not supported");
            ++i_;
            *out = assert_node(k == '=' ? kLookClass : kNegLookClass, add_class(std::move(cls)));
            return true;
          }
          if (k == '<' || k == '>' || k == '#' || k == '(' || k == 'P') error("unsupported group (?" + std::string(1, k));
          // Flags: (?i) (?-i) (?i:...) (?-i:...)
          bool on = true, new_fold = fold_;
          while (!eof() && p_[i_] != ':' && p_[i_] != ')') {
            const char f = p_[i_++];
            if (f == '-') on = false;
            else if (f == 'i') new_fold = on;
            else if (f == 'm' || f == 's' || f == 'x') error(std::string("unsupported flag ") + f);
            else error("bad group flags");
          }
          if (eof()) error("missing ')'");
          if (p_[i_] == ')') {
            ++i_;
            fold_ = new_fold;  // until the end of the enclosing group
            return false;
          }
          ++i_;  // ':'
          const bool saved = fold_;
          fold_ = new_fold;
          *out = parse_alt(true, depth + 1);
          fold_ = saved;
          return true;
        }
        *out = parse_alt(true, depth + 1);  // capturing groups are only grouping here
        return true;
      }
      case '[':
        ++i_;
        *out = parse_bracket();
        return true;
      case '.': {
        ++i_;
        CharClass cls;
        cls.negated = true;
        cls.items.push_back({ClassItem::kRange, '\n', '\n'});
        *out = class_node(std::move(cls));
        return true;
      }
      case '^':
        ++i_;
        *out = assert_node(kBeginLine);
        return true;
      case '$':
        ++i_;
        *out = assert_node(kEndLine);
        return true;
      case '*':
      case '+':
      case '?':
        error("quantifier without an operand");
      case '\\': {
        ++i_;
        if (!eof()) {
          const char e = p_[i_];
          if (e == 'A') { ++i_; *out = assert_node(kBeginText); return true; }
          if (e == 'z') { ++i_; *out = assert_node(kEndText); return true; }
          if (e == 'Z') { ++i_; *out = assert_node(kEndTextOptNewline); return true; }
          if (e == 'b') { ++i_; *out = assert_node(kWordBoundary); return true; }
          if (e == 'B') { ++i_; *out = assert_node(kNotWordBoundary); return true; }
          if (e >= '1' && e <= '9') error("back-references are not supported");
        }
        uint32_t cp;
        ClassItem item{};
        if (parse_escape(&cp, &item, false)) {
          *out = char_node(cp);
        } else {
          CharClass cls;
          cls.fold = fold_;
          cls.items.push_back(item);
          *out = class_node(std::move(cls));
        }
        return true;
      }
      default:
        *out = char_node(next_cp());
        return true;
    }
  }

  Node char_node(uint32_t cp) {
    Node n;
    n.kind = Node::kChar;
    n.cp = fold_ ? simple_fold(cp) : cp;
    n.fold = fold_;
    return n;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------
// Compiler: AST -> program

struct Regex::Program {
  std::vector<Inst> code;
  std::vector<CharClass> classes;
  // The threads the start state expands to, in priority order, when no assertion is
  // reachable from it without consuming input (then they are the same at every
  // position): the search adds these at each position without walking the closure.
  bool start_is_constant = false;
  std::vector<int32_t> start_threads;
};

namespace {

class Compiler {
 public:
  Compiler(Regex::Program& prog, std::string_view where) : prog_(prog), where_(where) {}

  void emit_node(const Node& n) {
    if (prog_.code.size() > kMaxProgram) fail(where_, "regex compiles to more than 200000 instructions");
    switch (n.kind) {
      case Node::kEmpty:
        break;
      case Node::kChar:
        push({kChar, static_cast<uint8_t>(n.fold), n.cp});
        break;
      case Node::kClass:
        push({kClass, 0, static_cast<uint32_t>(n.cls)});
        break;
      case Node::kAny:
        push({kAny});
        break;
      case Node::kAssert:
        push({kAssert, n.assert_kind, static_cast<uint32_t>(n.cls < 0 ? 0 : n.cls)});
        break;
      case Node::kCat:
        for (const auto& k : n.kids) emit_node(k);
        break;
      case Node::kAlt: {
        // split L1, next; L1: a; jmp end; next: split L2, next2; ... last alt
        std::vector<size_t> jumps;
        for (size_t a = 0; a < n.kids.size(); ++a) {
          if (a + 1 < n.kids.size()) {
            const size_t split = push({kSplit});
            prog_.code[split].x = static_cast<int32_t>(split + 1);
            emit_node(n.kids[a]);
            jumps.push_back(push({kJmp}));
            prog_.code[split].y = static_cast<int32_t>(prog_.code.size());
          } else {
            emit_node(n.kids[a]);
          }
        }
        for (size_t j : jumps) prog_.code[j].x = static_cast<int32_t>(prog_.code.size());
        break;
      }
      case Node::kRepeat: {
        const Node& body = n.kids[0];
        for (int k = 0; k < n.min; ++k) emit_node(body);
        if (n.max < 0) {
          // L: split body, end; body; jmp L
          const size_t split = push({kSplit});
          emit_node(body);
          const size_t jmp = push({kJmp});
          prog_.code[jmp].x = static_cast<int32_t>(split);
          set_split(split, split + 1, prog_.code.size(), n.greedy);
        } else {
          // (body (body (...)?)?)? for max - min optional copies
          std::vector<size_t> splits;
          for (int k = n.min; k < n.max; ++k) {
            splits.push_back(push({kSplit}));
            emit_node(body);
          }
          const size_t end = prog_.code.size();
          for (size_t s : splits) set_split(s, s + 1, end, n.greedy);
        }
        break;
      }
    }
  }

  size_t push(Inst in) {
    prog_.code.push_back(in);
    return prog_.code.size() - 1;
  }

 private:
  void set_split(size_t at, size_t body, size_t out, bool greedy) {
    prog_.code[at].x = static_cast<int32_t>(greedy ? body : out);
    prog_.code[at].y = static_cast<int32_t>(greedy ? out : body);
  }
  Regex::Program& prog_;
  std::string_view where_;
};

}  // namespace

Regex::Regex(std::string_view pattern, std::string_view where)
    : pattern_(pattern), prog_(std::make_unique<Program>()) {
  Parser parser(pattern, where, prog_->classes);
  Node root = parser.parse();
  Compiler c(*prog_, where);
  c.emit_node(root);
  c.push({kMatch});
  if (prog_->code.size() > kMaxProgram) fail(where, "regex compiles to more than 200000 instructions");

  // Epsilon closure of the start state, if it involves no assertion.
  std::vector<uint8_t> seen(prog_->code.size(), 0);
  std::vector<int32_t> stack{0};
  bool constant = true;
  while (!stack.empty() && constant) {
    const int32_t pc = stack.back();
    stack.pop_back();
    if (seen[static_cast<size_t>(pc)]) continue;
    seen[static_cast<size_t>(pc)] = 1;
    const Inst& in = prog_->code[static_cast<size_t>(pc)];
    if (in.op == kJmp) {
      stack.push_back(in.x);
    } else if (in.op == kSplit) {
      stack.push_back(in.y);
      stack.push_back(in.x);
    } else if (in.op == kAssert) {
      constant = false;
    } else {
      prog_->start_threads.push_back(pc);
    }
  }
  prog_->start_is_constant = constant;
  if (!constant) prog_->start_threads.clear();
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

// ---------------------------------------------------------------------------------
// Pike VM

namespace {

struct Thread {
  int32_t pc;
  size_t start;
};

// Ordered set of threads; `mark` makes membership O(1).
struct ThreadList {
  std::vector<Thread> threads;
  std::vector<uint32_t> mark;  // generation per pc
  uint32_t gen = 1;
  void reset(size_t n) {
    threads.clear();
    if (mark.size() != n) mark.assign(n, 0);
    if (++gen == 0) {
      std::fill(mark.begin(), mark.end(), 0);
      gen = 1;
    }
  }
};

bool word_at(std::string_view text, size_t pos) {
  if (pos >= text.size()) return false;
  return is_word(decode_utf8(text, pos).cp);
}

bool word_before(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  size_t b = pos - 1;
  while (b > 0 && pos - b < 4 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
  Utf8Char c = decode_utf8(text, b);
  if (b + c.len != pos) return false;
  return is_word(c.cp);
}

bool check_assert(const Regex::Program& prog, const Inst& in, std::string_view text, size_t pos) {
  const size_t n = text.size();
  switch (static_cast<AssertKind>(in.flag)) {
    case kBeginText: return pos == 0;
    case kEndText: return pos == n;
    case kEndTextOptNewline: return pos == n || (pos + 1 == n && text[pos] == '\n');
    case kBeginLine: return pos == 0 || text[pos - 1] == '\n';
    case kEndLine: return pos == n || text[pos] == '\n';
    case kWordBoundary: return word_before(text, pos) != word_at(text, pos);
    case kNotWordBoundary: return word_before(text, pos) == word_at(text, pos);
    case kLookClass:
      return pos < n && prog.classes[in.arg].match(decode_utf8(text, pos).cp);
    case kNegLookClass:
      return pos >= n || !prog.classes[in.arg].match(decode_utf8(text, pos).cp);
  }
  return false;
}

// Adds the thread at `pc` and everything reachable from it without consuming input,
// in priority order.
void add_thread(const Regex::Program& prog, ThreadList& list, std::vector<int32_t>& stack, int32_t pc0,
                size_t start, std::string_view text, size_t pos) {
  stack.clear();
  stack.push_back(pc0);
  while (!stack.empty()) {
    const int32_t pc = stack.back();
    stack.pop_back();
    if (list.mark[static_cast<size_t>(pc)] == list.gen) continue;
    list.mark[static_cast<size_t>(pc)] = list.gen;
    const Inst& in = prog.code[static_cast<size_t>(pc)];
    switch (in.op) {
      case kJmp:
        stack.push_back(in.x);
        break;
      case kSplit:
        stack.push_back(in.y);
        stack.push_back(in.x);
        break;
      case kAssert:
        if (check_assert(prog, in, text, pos)) stack.push_back(pc + 1);
        break;
      default:
        list.threads.push_back({pc, start});
        break;
    }
  }
}

}  // namespace

namespace {

struct Scratch {
  ThreadList clist, nlist;
  std::vector<int32_t> stack;
};

bool search_impl(const Regex::Program& prog, std::string_view text, size_t from, size_t* begin,
                 size_t* end, Scratch& s) {
  const size_t nprog = prog.code.size();
  ThreadList& clist0 = s.clist;
  ThreadList& nlist0 = s.nlist;
  ThreadList* clist = &clist0;
  ThreadList* nlist = &nlist0;
  clist->reset(nprog);
  bool matched = false;
  size_t pos = from;
  const size_t n = text.size();
  if (from > n) return false;
  while (true) {
    if (!matched) {
      if (prog.start_is_constant) {
        for (const int32_t pc : prog.start_threads) {
          if (clist->mark[static_cast<size_t>(pc)] == clist->gen) continue;
          clist->mark[static_cast<size_t>(pc)] = clist->gen;
          clist->threads.push_back({pc, pos});
        }
      } else {
        add_thread(prog, *clist, s.stack, 0, pos, text, pos);
      }
    }
    if (clist->threads.empty()) {
      if (matched || pos >= n) break;
      pos += decode_utf8(text, pos).len;  // nothing can start here; try the next position
      clist->reset(nprog);
      continue;
    }
    uint32_t cp = 0;
    size_t len = 0;
    if (pos < n) {
      Utf8Char c = decode_utf8(text, pos);
      cp = c.cp;
      len = c.len;
    }
    nlist->reset(nprog);
    for (const Thread& t : clist->threads) {
      const Inst& in = prog.code[static_cast<size_t>(t.pc)];
      bool ok = false;
      if (in.op == kMatch) {
        matched = true;
        *begin = t.start;
        *end = pos;
        break;  // lower-priority threads lose
      }
      if (pos < n) {
        switch (in.op) {
          case kChar: ok = in.flag ? simple_fold(cp) == in.arg : cp == in.arg; break;
          case kClass: ok = prog.classes[in.arg].match(cp); break;
          case kAny: ok = true; break;
          default: break;
        }
      }
      if (ok) add_thread(prog, *nlist, s.stack, t.pc + 1, t.start, text, pos + len);
    }
    if (pos >= n) break;
    std::swap(clist, nlist);
    pos += len;
  }
  return matched;
}

}  // namespace

bool Regex::search(std::string_view text, size_t from, size_t* begin, size_t* end) const {
  Scratch s;
  return search_impl(*prog_, text, from, begin, end, s);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  Scratch scratch;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t b, e;
    if (!search_impl(*prog_, text, pos, &b, &e, scratch)) break;
    if (e == b) {
      // Skip empty matches: they produce no piece. Step one character past b.
      if (b >= text.size()) break;
      pos = b + decode_utf8(text, b).len;
      continue;
    }
    out.emplace_back(b, e);
    pos = e;
  }
  return out;
}

}  // namespace qlora::unicode
