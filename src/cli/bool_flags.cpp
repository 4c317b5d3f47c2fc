#include "cli/bool_flags.h"

#include <cctype>
#include <memory>
#include <sstream>

#include "base/text_excerpt.h"

namespace qlora::cli {

namespace {

// "--gradient-checkpointing,--grad-checkpointing" -> "--gradient-checkpointing/--grad-checkpointing":
// the name messages use. Every spelling is shown because the callback cannot know which one
// was typed.
std::string shown_name(const std::string& names) {
  std::string out, item;
  std::stringstream ss(names);
  while (std::getline(ss, item, ',')) {
    const size_t b = item.find_first_not_of(' ');
    const size_t e = item.find_last_not_of(' ');
    if (b == std::string::npos) continue;
    out += (out.empty() ? "" : "/") + item.substr(b, e - b + 1);
  }
  return out;
}

const char* bool_text(bool v) { return v ? "true" : "false"; }

// The value the results of one option say. CLI11 hands every occurrence's value to the
// callback (TakeAll); a bare occurrence arrives as "" (the option's empty default string).
bool resolve(const std::string& name, const CLI::results_t& results) {
  std::optional<bool> value;
  for (const std::string& r : results) {
    bool v = true;
    if (!r.empty()) {
      const std::optional<bool> p = parse_bool(r);
      if (!p)
        throw CLI::ValidationError(name, excerpt(r) + " is not a boolean: use true/false, 1/0, yes/no or on/off, "
                                                     "or the option alone for true");
      v = *p;
    }
    if (value && *value != v)
      throw CLI::ValidationError(name, std::string("given twice with different values (") + bool_text(*value) +
                                           " and " + bool_text(v) + "): give it once");
    value = v;
  }
  return value.value_or(true);
}

// A boolean option that hands its value to `on_value` (see bool_flags.h for what it accepts).
CLI::Option* add_bool_option(CLI::App& app, const std::string& names, std::function<void(bool)> on_value,
                             const std::string& help) {
  const std::string shown = shown_name(names);
  CLI::Option* opt = app.add_option(
      names,
      [shown, on_value = std::move(on_value)](const CLI::results_t& res) {
        on_value(resolve(shown, res));
        return true;
      },
      help);
  // 0 or 1 values: CLI11 takes the next argument as the value only when it is not an option,
  // so `--packing --seq-len 256` stays bare. TakeAll lets resolve() see every occurrence.
  opt->expected(0, 1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->type_name("[BOOL]");
  return opt;
}

}  // namespace

std::optional<bool> parse_bool(std::string_view s) {
  std::string l;
  for (char c : s) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (l == "true" || l == "1" || l == "yes" || l == "on") return true;
  if (l == "false" || l == "0" || l == "no" || l == "off") return false;
  return std::nullopt;
}

CLI::Option* add_bool_flag(CLI::App& app, const std::string& names, bool& target, const std::string& help) {
  return add_bool_option(app, names, [&target](bool v) { target = v; }, help);
}

void add_bool_flag_pair(CLI::App& app, const std::string& names, const std::string& negated_names,
                        std::function<void(bool)> set, const std::string& help, const std::string& negated_help) {
  // Which spelling was seen first; CLI11 runs both callbacks after parsing, so the second
  // one to run finds the first and refuses the contradiction.
  auto seen = std::make_shared<std::string>();
  auto shared_set = std::make_shared<std::function<void(bool)>>(std::move(set));
  auto form = [seen, shared_set](const std::string& shown, const std::string& other, bool negated) {
    return [seen, shared_set, shown, other, negated](bool v) {
      if (!seen->empty())
        throw CLI::ValidationError(shown, "contradicts " + other + " (both were given): give one of them");
      *seen = shown;
      (*shared_set)(negated ? !v : v);
    };
  };
  const std::string pos = shown_name(names), neg = shown_name(negated_names);
  add_bool_option(app, names, form(pos, neg, false), help);
  add_bool_option(app, negated_names, form(neg, pos, true), negated_help);
}

void add_bool_flag_pair(CLI::App& app, const std::string& names, const std::string& negated_names, bool& target,
                        const std::string& help, const std::string& negated_help) {
  add_bool_flag_pair(app, names, negated_names, [&target](bool v) { target = v; }, help, negated_help);
}

}  // namespace qlora::cli
