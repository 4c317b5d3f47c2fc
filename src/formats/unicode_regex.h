#pragma once
// A small regular-expression engine for the pre-tokenizer patterns that tokenizers
// use (GPT-2, Llama 3, Qwen 2, GPT-4o, ...), with Oniguruma's meaning for the pieces
// those patterns use: \p{L}/\p{N}/\p{Lu}..., \s as Unicode White_Space, (?i:...),
// counted repeats, and a lookahead over one character class such as \s+(?!\S).
//
// It is a Pike VM (Thompson NFA simulation with thread priorities), so matching is
// linear in the text for every pattern: a hostile tokenizer.json cannot make it hang.
// Matches are leftmost-first, like Oniguruma/PCRE (the first alternative that matches
// wins, quantifiers are greedy unless written lazy).
//
// Supported: literals (UTF-8), ., [...] classes with ranges, negation and escapes,
// \s \S \d \D \w \W \p{..} \P{..} \pL, \n \r \t \f \v \e \a \0, \xHH \x{H..} \uHHHH,
// escaped punctuation, ( ) (?: ) (?i: ) (?i) (?-i), | * + ? {n} {n,} {n,m} and their
// lazy forms, ^ $ \A \z \Z \b \B, and (?=c) (?!c) where c is one character or class.
// Anything else (back-references, look-behind, general look-ahead, possessive
// quantifiers, nested classes) is rejected with an Error naming the pattern.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlora::unicode {

class Regex {
 public:
  // Compiles `pattern`. `where` names the source for error messages (a file path).
  // Throws Error on malformed or unsupported patterns, or ones that compile too large.
  explicit Regex(std::string_view pattern, std::string_view where = "regex");
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the leftmost-first match that begins at or after byte offset `from`.
  // On success sets [*begin, *end) (byte offsets into text) and returns true.
  // Thread-safe (const, no shared mutable state).
  bool search(std::string_view text, size_t from, size_t* begin, size_t* end) const;

  // All non-overlapping, non-empty matches, left to right, as [begin, end) pairs.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

  struct Program;

 private:
  std::string pattern_;
  std::unique_ptr<Program> prog_;
};

}  // namespace qlora::unicode
