// The `qlora` program: a thin shell over the library. Subcommands register themselves
// (see command.h); this file only parses, dispatches and turns errors into messages.
#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "base/error.h"
#include "base/openmp_wait.h"
#include "base/text_excerpt.h"
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

namespace {

// "dequantize, eval, generate, ..." for messages.
std::string command_list() {
  std::string names;
  for (const auto& [name, entry] : qlora::cli::registry()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

// CLI11's messages echo what was typed (an option value, stray arguments) at any length and
// byte for byte: each long word is cut to an excerpt and the whole made safe to print, prefixed
// like every other error, pointing at the help of the command that was being parsed.
std::string failure_message(const CLI::App* app, const CLI::Error& e) {
  const std::string what = e.what();
  std::string msg;
  size_t pos = 0;
  while (pos <= what.size()) {
    size_t end = what.find(' ', pos);
    if (end == std::string::npos) end = what.size();
    const std::string_view word(what.data() + pos, end - pos);
    msg += word.size() > qlora::kExcerptBytes ? qlora::safe_message(word, qlora::kExcerptBytes) : std::string(word);
    if (end < what.size()) msg += ' ';
    pos = end + 1;
  }
  std::string help = "qlora --help";
  for (const CLI::App* sub : app->get_subcommands()) help = "qlora " + sub->get_name() + " --help";
  return "error: " + qlora::safe_message(msg) + "\nRun `" + help + "` for the options.\n";
}

// The decoding commands run with a short OpenMP spin (base/openmp_wait.h). libgomp read its
// environment before main(), so the variable is set and the program starts itself again, once
// (the variable is then set). If the exec fails, the run goes on with libgomp's own waiting.
void set_decode_spin(int argc, char** argv) {
  if (argc < 2) return;
  const auto spin = qlora::decode_spin_count(argv[1], std::getenv("GOMP_SPINCOUNT"), std::getenv("OMP_WAIT_POLICY"));
  if (!spin || setenv("GOMP_SPINCOUNT", spin->c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
}

}  // namespace

int main(int argc, char** argv) {
  set_decode_spin(argc, argv);
  using namespace qlora::cli;
  // A file-size limit (ulimit -f) would kill the process with SIGXFSZ in the middle of a
  // write; ignored, the write fails with EFBIG and is reported like a full disk: the file,
  // the cause, the last good checkpoint kept.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"qlora: run and fine-tune large language models in 4-bit (QLoRA) on the hardware you have"};
  app.require_subcommand(1);
  app.failure_message(failure_message);
  std::vector<std::pair<CLI::App*, Action>> actions;
  for (auto& [name, entry] : registry()) {
    CLI::App* sub = app.add_subcommand(name, entry.help);
    actions.emplace_back(sub, entry.setup(*sub));
  }
  // CLI11 reports a mistyped command as "A subcommand is required" without naming it.
  if (argc < 2) {
    std::fprintf(stderr, "error: give a command: %s\nRun `qlora --help` for what each does.\n", command_list().c_str());
    return 1;
  }
  const std::string first = argv[1];
  if (first.starts_with("-") && first != "-h" && first != "--help") {
    std::fprintf(stderr, "error: %s before the command: give the command first (commands: %s)\n",
                 qlora::excerpt(first).c_str(), command_list().c_str());
    return 1;
  }
  if (!first.starts_with("-") && registry().count(first) == 0) {
    std::fprintf(stderr, "error: unknown command %s (commands: %s)\nRun `qlora --help` for what each does.\n",
                 qlora::excerpt(argv[1]).c_str(), command_list().c_str());
    return 1;
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
    // Library messages excerpt the input they quote; safe_message is the last line of defence
    // for anything that slipped through (a raw byte, a huge value).
    std::fprintf(stderr, "error: %s\n", qlora::safe_message(e.what(), 8000).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", qlora::safe_message(e.what(), 8000).c_str());
    return 1;
  }
  return 0;
}
