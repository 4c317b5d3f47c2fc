#pragma once
// Each subcommand lives in its own file under src/cli/ and registers itself here with
// a static initializer, so adding a subcommand never touches main.cpp:
//
//   static const bool kRegistered = qlora::cli::register_command(
//       "inspect", "List tensors, dtypes, shapes and quant state of a file",
//       [](CLI::App& app) { ...add options...; return [=] { ...run...; return 0; }; });
//
// The setup function adds options to the subcommand and returns the action to run when
// that subcommand is chosen; the action returns the process exit code. Errors are thrown
// as qlora::Error and reported by main().
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace qlora::cli {

using Action = std::function<int()>;
using Setup = std::function<Action(CLI::App&)>;

bool register_command(std::string name, std::string help, Setup setup);

}  // namespace qlora::cli
