#pragma once
// Boolean options that read the way people type them. Hugging Face's TrainingArguments
// users write `--gradient_checkpointing`, `--packing true` or `--fp16=False`; CLI11's own
// flags accept only some of these (a bare option with a value is "Could not convert", and a
// later `--no-x` silently wins over `--x true`). Every boolean option of every command goes
// through these helpers, so all of them accept:
//   --x              true
//   --x VALUE        VALUE (a separate argument)
//   --x=VALUE        VALUE
// where VALUE is true/false, 1/0, yes/no or on/off in any case; anything else is an error
// naming the option. The same option given twice with different values, or both forms of a
// negatable pair (--x and --no-x), is an error naming both rather than "the last one wins".
#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace qlora::cli {

// "true"/"1"/"yes"/"on" -> true, "false"/"0"/"no"/"off" -> false (any case); nullopt otherwise.
std::optional<bool> parse_bool(std::string_view s);

// Adds the boolean option `names` ("--packing" or "--quiet,-q"), which sets `target` when
// given (see above); `target` keeps its value when the option is absent.
CLI::Option* add_bool_flag(CLI::App& app, const std::string& names, bool& target, const std::string& help);

// One boolean with a positive and a negated spelling, e.g. names
// "--gradient-checkpointing,--grad-checkpointing" and negated_names "--no-gradient-checkpointing".
// Each takes values as above; the negated one passes the opposite to `set`. `set` is called
// once, only when one of them is given; giving both is an error.
void add_bool_flag_pair(CLI::App& app, const std::string& names, const std::string& negated_names,
                        std::function<void(bool)> set, const std::string& help, const std::string& negated_help);

// The same with `target` holding the positive meaning.
void add_bool_flag_pair(CLI::App& app, const std::string& names, const std::string& negated_names, bool& target,
                        const std::string& help, const std::string& negated_help);

}  // namespace qlora::cli
