#pragma once
// A small Jinja2 interpreter: the subset of the language that chat templates (tokenizer_config.json
// "chat_template", GGUF "tokenizer.chat_template") use, with the environment transformers renders
// them in: trim_blocks, lstrip_blocks, loop controls (break/continue), raise_exception(),
// strftime_now(), namespace(), dict(), range() and a json.dumps-style tojson filter.
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (-, +); if/elif/else, for (tuple
// targets, inline `if` filter, else, loop.index/index0/revindex/revindex0/first/last/length/
// previtem/nextitem), set (names, tuples, namespace attributes, block set), macro, break,
// continue, filter blocks, generation (rendered as its body). Expressions: literals, lists,
// dicts, tuples, attribute/item access, slices, calls with keyword arguments, filters, tests
// (`is`), arithmetic, ~, comparisons, in / not in, and/or/not, conditional expressions.
// Values print the way Python prints them (None, True, ['a', 1], ('a', 1), 0.1).
// Not supported (an error, never a silent difference): raw blocks, call blocks, recursive
// loops, include/extends/import, loop.cycle, `%` string formatting, str.format().
// Case mapping covers ASCII, Latin-1/Extended-A, Greek, Cyrillic and fullwidth Latin.
//
// Errors (syntax, undefined operations, raise_exception, unknown filters, limits) throw
// qlora::Error naming the template, the line and column where known, and the problem.
// Rendering is bounded: output size, loop iterations and recursion depth are capped.
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace qlora::jinja {

struct Limits {
  size_t max_output_bytes = size_t(64) << 20;  // rendered text
  size_t max_iterations = 10'000'000;          // loop iterations + macro calls in one render
  int max_depth = 500;  // evaluation depth (expression trees, macro calls); parsing nests at most 256
};

class Template {
 public:
  // Parses `source`; `name` appears in error messages ("<name>:<line>:<col>: ...").
  explicit Template(std::string_view source, std::string name = "template", Limits limits = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the top-level variables of `context` (a JSON object; key order is kept, so
  // `| tojson` and `| items` see the caller's order). Thread-safe: const and stateless.
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& name() const;

  struct Impl;  // opaque (public only so that the evaluator in jinja.cpp can name it)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace qlora::jinja
