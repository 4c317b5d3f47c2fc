// Chat templates (src/train/jinja.h, src/train/chat_template.h) against transformers'
// apply_chat_template renderings in tests/fixtures/chat_templates/*.json, written by
// tools/make_chat_template_fixtures.py; plus error handling and limits of the Jinja subset.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "model/model_test_util.h"
#include "formats/gguf.h"
#include "train/chat_template.h"
#include "train/jinja.h"

namespace {

using nlohmann::ordered_json;
namespace fs = std::filesystem;

fs::path fixture_dir() { return fs::path(QLORA_FIXTURE_DIR) / "chat_templates"; }

ordered_json load(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  EXPECT_TRUE(f.good()) << p;
  std::stringstream ss;
  ss << f.rdbuf();
  return ordered_json::parse(ss.str());
}

std::optional<std::string> opt_str(const ordered_json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<std::string>();
}

std::string render(std::string_view tmpl, const ordered_json& ctx = ordered_json::object()) {
  return qlora::jinja::Template(tmpl, "t").render(ctx);
}

// Expects `fn` to throw qlora::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F fn, std::vector<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected qlora::Error containing '" << parts.front() << "'";
  } catch (const qlora::Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

class ChatTemplateFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateFixture, MatchesTransformers) {
  ordered_json doc = load(fixture_dir() / (GetParam() + ".json"));
  qlora::train::ChatTemplate tmpl(doc["template"].get<std::string>(), GetParam());
  int checked = 0;
  for (const auto& c : doc["cases"]) {
    SCOPED_TRACE(GetParam() + "/" + c["name"].get<std::string>());
    auto run = [&] {
      return tmpl.render(c["messages"], c["add_generation_prompt"].get<bool>(), opt_str(doc["bos_token"]),
                         opt_str(doc["eos_token"]), c["extra"]);
    };
    if (c.contains("expected")) {
      std::string got;
      try {
        got = run();
      } catch (const qlora::Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
        continue;
      }
      EXPECT_EQ(got, c["expected"].get<std::string>());
    } else {
      expect_error(run, {c["error"].get<std::string>(), "raise_exception"});
    }
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTemplateFixture,
                         ::testing::Values("smollm2", "llama2", "llama3", "llama3_1", "mistral", "mixtral", "qwen2",
                                           "qwen2_5", "gemma", "phi3", "qwen3", "gemma3", "gemma4", "llama4", "lfm2", "lfm2_5", "granite4",
                                           "features"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// End to end: the template and special tokens as read from the GGUF file render every
// SmolLM2 case exactly as transformers does.
TEST(ChatTemplate, SmolLM2FromGgufMatchesTransformers) {
  fs::path model = fs::path(QLORA_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(model)) GTEST_SKIP() << model << " not present";
  qlora::GgufFile f(model.string());
  qlora::train::ChatTemplateSource src = qlora::train::chat_template_from_gguf(f);
  ordered_json doc = load(fixture_dir() / "smollm2.json");
  ASSERT_EQ(src.source, doc["template"].get<std::string>());
  EXPECT_EQ(src.bos_token, opt_str(doc["bos_token"]));
  EXPECT_EQ(src.eos_token, opt_str(doc["eos_token"]));
  qlora::train::ChatTemplate t(src.source, src.where);
  for (const auto& c : doc["cases"])
    EXPECT_EQ(t.render(c["messages"], c["add_generation_prompt"].get<bool>(), src.bos_token, src.eos_token),
              c["expected"].get<std::string>())
        << c["name"];
  expect_error([&] { qlora::train::chat_template_from_gguf(f, "tool_use"); },
               {"tokenizer.chat_template.tool_use", "missing"});
}

TEST(ChatTemplate, FromTokenizerConfig) {
  nlohmann::json cfg = {{"chat_template", "{{ bos_token }}x{{ eos_token }}"},
                        {"bos_token", "<s>"},
                        {"eos_token", {{"content", "</s>"}, {"lstrip", false}}}};
  auto s = qlora::train::chat_template_from_tokenizer_config(cfg, "tokenizer_config.json");
  EXPECT_EQ(s.bos_token, std::optional<std::string>("<s>"));
  EXPECT_EQ(s.eos_token, std::optional<std::string>("</s>"));
  EXPECT_EQ(qlora::train::ChatTemplate(s.source).render(ordered_json::array(), false, s.bos_token, s.eos_token),
            "<s>x</s>");
  nlohmann::json named = {{"chat_template",
                           {{{"name", "default"}, {"template", "D"}}, {{"name", "tool_use"}, {"template", "T"}}}}};
  EXPECT_EQ(qlora::train::chat_template_from_tokenizer_config(named, "c.json", "tool_use").source, "T");
  EXPECT_EQ(qlora::train::chat_template_from_tokenizer_config(named, "c.json").source, "D");
  EXPECT_FALSE(qlora::train::chat_template_from_tokenizer_config(named, "c.json").bos_token.has_value());
  expect_error([&] { qlora::train::chat_template_from_tokenizer_config(named, "c.json", "rag"); },
               {"c.json", "'rag' not found", "default, tool_use"});
  expect_error([&] { qlora::train::chat_template_from_tokenizer_config(nlohmann::json::object(), "c.json"); },
               {"c.json", "no \"chat_template\""});
}

// Corner cases of the language, each compared with jinja2 in transformers' environment.
TEST(Jinja, SnippetsMatchJinja2) {
  ordered_json doc = load(fixture_dir() / "snippets.json");
  int n = 0;
  for (const auto& c : doc["cases"]) {
    const std::string tmpl = c["template"].get<std::string>();
    SCOPED_TRACE(tmpl);
    ++n;
    if (c.contains("expected")) {
      try {
        EXPECT_EQ(render(tmpl, c["context"]), c["expected"].get<std::string>());
      } catch (const qlora::Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
      }
    } else {
      // jinja2 fails (TypeError, UndefinedError, SecurityError, syntax...): so must we, cleanly.
      expect_error([&] { render(tmpl, c["context"]); }, {"t:1:"});
    }
  }
  EXPECT_GE(n, 50);
}

TEST(Jinja, WhitespaceControlAndTrimBlocks) {
  // trim_blocks eats the newline after a block tag; lstrip_blocks the indentation before it.
  EXPECT_EQ(render("{% if true %}\n  x\n  {% endif %}\ny"), "  x\ny");
  EXPECT_EQ(render("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(render("a\n  {%- if true %}b{% endif -%}\n  c"), "abc");
  EXPECT_EQ(render("{{ 'x' }}\n{{ 'y' }}\n"), "x\ny");  // one trailing newline dropped
  EXPECT_EQ(render("a {# comment #} b"), "a  b");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{% for i in [1,2] %}\n{{ i }}\n{% endfor %}\n"), "1\n2\n");
}

TEST(Jinja, LoopsScopesAndNamespaces) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i * 10 %}{{ x }}{% endfor %}{{ x }}"), "10201");
  EXPECT_EQ(render("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}"),
            "4");
  EXPECT_EQ(render("{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.last }}{% endfor %}"),
            "1x2yFalse1x2yTrue");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}", {{"d", {{"b", 1}, {"a", 2}}}}), "b1a2");
  EXPECT_EQ(render("{% macro m(a, b=2) %}{{ a + b }}{% endmacro %}{{ m(1) }}{{ m(1, b=5) }}"), "36");
  EXPECT_EQ(render("{{ [1, 2, 3][::-1] }} {{ 'abcdef'[1:4] }} {{ 'héllo'[1] }} {{ 'héllo' | length }}"),
            "[3, 2, 1] bcd é 5");
}

TEST(Jinja, PythonValueFormatting) {
  EXPECT_EQ(render("{{ 1.0 }} {{ 1e20 }} {{ 0.0001 }} {{ 0.00001 }} {{ 2.5e-7 }} {{ 123456789012345678.0 }}"),
            "1.0 1e+20 0.0001 1e-05 2.5e-07 1.2345678901234568e+17");
  EXPECT_EQ(render("{{ [\"it's\", 'a\\nb', none] }} {{ -7 // 2 }} {{ -7 % 3 }}"), "[\"it's\", 'a\\nb', None] -4 2");
  EXPECT_EQ(render("{{ x | tojson }}", {{"x", {{"k", "é\u0001"}, {"l", {1, 2.0}}}}}),
            "{\"k\": \"é\\u0001\", \"l\": [1, 2.0]}");
  EXPECT_EQ(render("{{ x | tojson(indent=2) }}", {{"x", {{"a", {1}}}}}), "{\n  \"a\": [\n    1\n  ]\n}");
}

TEST(Jinja, SyntaxErrorsNameLineAndColumn) {
  expect_error([] { qlora::jinja::Template("line one\n{% if x %}\nno end", "tmpl.jinja"); },
               {"tmpl.jinja:2:", "endif"});
  expect_error([] { qlora::jinja::Template("{{ 1 + }}", "t"); }, {"t:1:", "unexpected"});
  expect_error([] { qlora::jinja::Template("ok\n\n  {{ x ", "t"); }, {"t:3:3", "unclosed"});
  expect_error([] { qlora::jinja::Template("{% frobnicate %}", "t"); }, {"t:1:4", "frobnicate"});
  expect_error([] { qlora::jinja::Template("{% endfor %}", "t"); }, {"endfor"});
  expect_error([] { qlora::jinja::Template("{{ 'abc }}", "t"); }, {"unterminated string"});
  expect_error([] { qlora::jinja::Template("{# never closed", "t"); }, {"comment"});
  expect_error([] { qlora::jinja::Template("{{ (1 }}", "t"); }, {"t:1:"});
  expect_error([] { qlora::jinja::Template("{{ a ) }}", "t"); }, {"unbalanced"});
}

TEST(Jinja, RuntimeErrors) {
  expect_error([] { render("\n{{ raise_exception('Roles must alternate') }}"); },
               {"t:2:", "raise_exception: Roles must alternate"});
  expect_error([] { render("{{ 'x' | frobnicate }}"); }, {"unknown filter 'frobnicate'"});
  expect_error([] { render("{{ 1 is frobnicated }}"); }, {"unknown test"});
  expect_error([] { render("{{ 'a' + 1 }}"); }, {"unsupported operand", "str", "int"});
  expect_error([] { render("{{ missing + 'x' }}"); }, {"'missing' is undefined"});
  expect_error([] { render("{{ missing.attr }}"); }, {"'missing' is undefined"});
  expect_error([] { render("{{ nofunc() }}"); }, {"'nofunc' is undefined"});
  expect_error([] { render("{{ 1 // 0 }}"); }, {"division by zero"});
  expect_error([] { render("{{ [1].append(2) }}"); }, {"no method 'append'"});
  expect_error([] { render("{{ 'abc'.nomethod() }}"); }, {"no method"});
  expect_error([] { render("{% set n = namespace() %}{% set n._x = 1 %}"); }, {"cannot start with '_'"});
  expect_error([] { render("{% set s = 1 %}{% set s.a = 1 %}"); }, {"not a namespace"});
}

TEST(Jinja, LimitsBoundWork) {
  qlora::jinja::Limits lim;
  lim.max_iterations = 1000;
  expect_error([&] { qlora::jinja::Template("{% for i in range(100000) %}{% endfor %}", "t", lim).render({}); },
               {"iteration limit"});
  lim = {};
  lim.max_output_bytes = 1000;
  expect_error([&] { qlora::jinja::Template("{% for i in range(1000) %}xxxxxxxx{% endfor %}", "t", lim).render({}); },
               {"output exceeds"});
  expect_error([] { render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"); }, {"recursion too deep"});
  expect_error([] { render("{{ 'x' * 100000000000 }}"); }, {"too large"});
  std::string chain = "{{ 'a'";  // long left-deep chains are fine
  for (int k = 0; k < 300; ++k) chain += " + 'a'";
  EXPECT_EQ(render(chain + " }}"), std::string(301, 'a'));
  std::string deep(5000, '(');
  expect_error([&] { qlora::jinja::Template("{{ " + deep + "1" + std::string(5000, ')') + " }}", "t"); },
               {"nested too deeply"});
}

TEST(ChatTemplate, ApiDefaultsAndExtras) {
  qlora::train::ChatTemplate t(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
      "{{ tools is none }}{{ documents is none }}{{ date_string | default('?') }}{% if add_generation_prompt %}>{% endif %}");
  ordered_json msgs = ordered_json::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_EQ(t.render(msgs, true, "<s>", "</s>"), "<s>user:hi;TrueTrue?>");
  EXPECT_EQ(t.render(msgs, false, std::nullopt, std::nullopt, {{"date_string", "26 Jul 2024"}}),
            "Noneuser:hi;TrueTrue26 Jul 2024");
  expect_error([&] { t.render(ordered_json::object(), false, "", ""); }, {"messages must be a JSON array"});
}

// Mutated real templates (characters deleted, duplicated, swapped for syntax characters) must
// either render or throw qlora::Error: never crash, hang or throw anything else.
TEST(Jinja, MutatedTemplatesFailCleanly) {
  std::vector<std::string> sources;
  for (const char* n : {"llama2", "llama3_1", "qwen2_5", "gemma", "features"})
    sources.push_back(load(fixture_dir() / (std::string(n) + ".json"))["template"].get<std::string>());
  ordered_json ctx = {{"messages", load(fixture_dir() / "llama2.json")["cases"][0]["messages"]},
                      {"add_generation_prompt", true},
                      {"bos_token", "<s>"},
                      {"eos_token", "</s>"},
                      {"extra_info", {{"lang", "en"}}}};
  const std::string alphabet = "{}%#-+()[]'\".|~:,=!<>* \nabif0";
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  auto next = [&] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  int rendered = 0, failed = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = sources[next() % sources.size()];
    int edits = 1 + int(next() % 4);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      size_t at = next() % s.size();
      switch (next() % 3) {
        case 0: s.erase(at, 1 + next() % 3); break;
        case 1: s.insert(at, 1, alphabet[next() % alphabet.size()]); break;
        default: s[at] = alphabet[next() % alphabet.size()];
      }
    }
    try {
      qlora::jinja::Limits lim;
      lim.max_iterations = 100000;
      lim.max_output_bytes = 1 << 20;
      qlora::jinja::Template(s, "mutant", lim).render(ctx);
      ++rendered;
    } catch (const qlora::Error&) {
      ++failed;
    }
  }
  EXPECT_GT(rendered, 0);
  EXPECT_GT(failed, 0);
}

}  // namespace

// `qlora generate --chat` sends the prompt through the model's own template (SmolLM2's
// from its GGUF: the echo shows the rendered turns, special tokens hidden), and a model
// without a template is refused with a message naming it.
TEST(Cli, GenerateChatUsesTheModelsTemplate) {
  const std::string gguf = std::string(QLORA_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(gguf)) GTEST_SKIP() << "no " << gguf << " (run scripts/fetch_model.sh)";
  const qlora::test::CliResult r = qlora::test::run_cli(
      {"generate", "--model", gguf, "--chat", "--system", "Be brief.", "--prompt", "hi", "-n", "1", "--temperature",
       "0", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("system\nBe brief.\nuser\nhi\nassistant\n", 0), 0u) << r.out;
  const qlora::test::CliResult none = qlora::test::run_cli(
      {"generate", "--model", qlora::test::stories_bin(), "--chat", "--prompt", "hi", "-n", "1", "--quiet"});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.err.find("no chat template"), std::string::npos) << none.err;
}
