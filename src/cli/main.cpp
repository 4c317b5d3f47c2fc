// The `qlora` program: a thin shell over the library. Subcommands register themselves
// (see command.h); this file only parses, dispatches and turns errors into messages.
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <vector>

#include "base/error.h"
#include "cli/command.h"

namespace qlora::cli {
namespace {
struct Entry {
  std::string help;
  Setup setup;
};
std::map<std::string, Entry>& registry() {
  static std::map<std::string, Entry> r;
  return r;
}
}  // namespace

bool register_command(std::string name, std::string help, Setup setup) {
  registry()[std::move(name)] = Entry{std::move(help), std::move(setup)};
  return true;
}

}  // namespace qlora::cli

int main(int argc, char** argv) {
  using namespace qlora::cli;
  CLI::App app{"qlora: run and fine-tune large language models in 4-bit (QLoRA) on the hardware you have"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, Action>> actions;
  for (auto& [name, entry] : registry()) {
    CLI::App* sub = app.add_subcommand(name, entry.help);
    actions.emplace_back(sub, entry.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, action] : actions)
      if (sub->parsed()) return action();
  } catch (const qlora::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
