// `qlora chat`: a conversation with a chat model in the terminal. Each message goes through
// the model's chat template together with the whole conversation so far (model/chat_session.h)
// and the answer streams back token by token. The model flags, --adapter, the sampling
// options and --max-memory are those of `qlora generate`.
//
// On a terminal it shows a banner and a `> ` prompt, and Ctrl-C stops the answer being
// streamed rather than the program. With piped input it prints nothing but the answers (each
// followed by a newline) and what commands such as /history print, so that it can be scripted.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "cli/sampling_flags.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/peft_adapter.h"
#include "memory/memory_plan.h"
#include "model/chat_session.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampler.h"
#include "lora/adapter_loader.h"
#include "lora/lora_model.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  std::string adapter;
  int64_t n = 512;  // per answer: longer than generate's 128, which cuts most chat answers short
  qlora::cli::SamplingFlags s;
  std::string system;              // --system: the first system message
  std::string chat_template_file;  // --chat-template: a Jinja file instead of the model's template
  bool escape = false;
  bool quiet = false;
  bool verbose = false;            // a [chat] line of statistics on stderr after each answer
  std::string max_memory;
};

std::string read_template_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    qlora::fail(path, "--chat-template: is a directory; give the Jinja template file");
  std::ifstream in(path, std::ios::binary);
  if (!in) qlora::fail(path, "--chat-template: cannot open the file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().empty()) qlora::fail(path, "--chat-template: the file is empty");
  return ss.str();
}

// ---- Ctrl-C ------------------------------------------------------------------------------
// The handler sets a flag (read by GenerationOptions::cancelled while an answer streams) and
// writes a byte to a pipe (seen by the input loop's poll()). The pipe is needed because SIGINT
// goes to any thread of the process, often one of OpenMP's workers, so the main thread's
// read() is not reliably interrupted.

std::atomic<bool> g_interrupted{false};
int g_interrupt_pipe[2] = {-1, -1};

extern "C" void on_sigint(int) {
  const int saved = errno;
  g_interrupted.store(true);
  const char byte = 1;
  [[maybe_unused]] const ssize_t w = ::write(g_interrupt_pipe[1], &byte, 1);
  errno = saved;
}

// Forgets Ctrl-Cs already handled: drains the pipe first, so that one arriving in between is
// seen again rather than lost.
void clear_interrupts() {
  char buf[64];
  while (::read(g_interrupt_pipe[0], buf, sizeof buf) > 0) {
  }
  g_interrupted.store(false);
}

// Installs the handler for the lifetime of the object and restores the previous one after.
class SigintGuard {
 public:
  SigintGuard() {
    if (::pipe2(g_interrupt_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
      qlora::fail("qlora chat", std::string("cannot create a pipe for Ctrl-C: ") + std::strerror(errno));
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    // Restart interrupted writes to stdout and file reads; poll() returns EINTR regardless.
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &previous_);
  }
  ~SigintGuard() {
    ::sigaction(SIGINT, &previous_, nullptr);
    ::close(g_interrupt_pipe[0]);
    ::close(g_interrupt_pipe[1]);
    g_interrupt_pipe[0] = g_interrupt_pipe[1] = -1;
  }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction previous_ {};
};

// ---- input -------------------------------------------------------------------------------

// Lines from stdin, read with read(2) so that a Ctrl-C (the interrupt pipe, when there is
// one) can be noticed while waiting.
class LineInput {
 public:
  enum class Got { Line, Interrupt, End };
  explicit LineInput(int interrupt_fd) : interrupt_fd_(interrupt_fd) {}

  // The next line without its "\n" (or "\r\n"); a last line without a newline counts.
  // Interrupt: Ctrl-C was pressed (the partial line, if any, is dropped).
  Got next(std::string& line) {
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        line.assign(buf_, 0, nl);
        buf_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Got::Line;
      }
      if (eof_) {
        if (buf_.empty()) return Got::End;
        line.swap(buf_);
        buf_.clear();
        return Got::Line;
      }
      pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {interrupt_fd_, POLLIN, 0}};
      const int r = ::poll(fds, interrupt_fd_ >= 0 ? 2 : 1, -1);
      if (r < 0) {
        if (errno == EINTR) continue;  // the pipe tells whether it was Ctrl-C
        qlora::fail("stdin", std::string("poll failed: ") + std::strerror(errno));
      }
      if (interrupt_fd_ >= 0 && (fds[1].revents & POLLIN)) {
        clear_interrupts();
        buf_.clear();
        return Got::Interrupt;
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        char chunk[4096];
        const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
        if (n > 0) {
          buf_.append(chunk, static_cast<size_t>(n));
        } else if (n == 0 || errno == EIO) {
          eof_ = true;  // EIO: the terminal went away
        } else if (errno != EINTR && errno != EAGAIN) {
          qlora::fail("stdin", std::string("read failed: ") + std::strerror(errno));
        }
      }
    }
  }

 private:
  int interrupt_fd_;
  std::string buf_;
  bool eof_ = false;
};

struct Input {
  enum class Kind { Message, Command, Interrupt, End };
  Kind kind = Kind::End;
  std::string text;
};

// One message or command: a line; lines ending in a backslash continue on the next (the
// backslash becomes a newline); a block between lines holding only """ is taken as it is.
// A single line starting with "/" is a command ("//" sends the text after the first "/").
// `prompt` decorates a terminal: "> " for a new message, "... " for its continuation.
Input read_input(LineInput& in, bool prompt, bool send_pending_at_end) {
  auto show = [&](const char* p) {
    if (!prompt) return;
    std::fputs(p, stdout);
    std::fflush(stdout);
  };
  auto is_fence = [](const std::string& l) {
    const size_t b = l.find_first_not_of(" \t"), e = l.find_last_not_of(" \t");
    return b != std::string::npos && l.compare(b, e - b + 1, "\"\"\"") == 0;
  };
  std::string msg, line;
  bool in_block = false, continuing = false, block_empty = true;
  show("> ");
  for (;;) {
    const LineInput::Got got = in.next(line);
    if (got == LineInput::Got::Interrupt) return {Input::Kind::Interrupt, {}};
    if (got == LineInput::Got::End) {
      if (send_pending_at_end && (in_block || continuing) && !msg.empty()) return {Input::Kind::Message, msg};
      return {Input::Kind::End, {}};
    }
    if (in_block) {
      if (is_fence(line)) return {Input::Kind::Message, msg};
      if (!block_empty) msg += '\n';
      msg += line;
      block_empty = false;
      show("... ");
      continue;
    }
    if (!continuing && is_fence(line)) {
      in_block = true;
      show("... ");
      continue;
    }
    if (!line.empty() && line.back() == '\\') {
      line.pop_back();
      msg += line;
      msg += '\n';
      continuing = true;
      show("... ");
      continue;
    }
    msg += line;
    if (!continuing && msg.size() >= 2 && msg[0] == '/' && msg[1] == '/') return {Input::Kind::Message, msg.substr(1)};
    if (!continuing && !msg.empty() && msg[0] == '/') return {Input::Kind::Command, msg};
    return {Input::Kind::Message, msg};
  }
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

constexpr char kHelp[] =
    "Commands:\n"
    "  /help            this list\n"
    "  /reset           forget the conversation (the system message stays)\n"
    "  /system TEXT     set the system message and start over (/system alone removes it)\n"
    "  /history         show the conversation the model sees\n"
    "  /quit, /exit     end (so does Ctrl-D)\n"
    "A line ending in \\ continues on the next; a block between lines of \"\"\" is one message.\n"
    "Start a message with // to send text beginning with /.\n"
    "Ctrl-C stops an answer; at the prompt it clears the input, and twice in a row quits.\n";

void print_history(const qlora::ChatSession& s) {
  if (s.forgotten() > 0)
    std::printf("(%zu older messages forgotten to fit the context)\n", s.forgotten());
  if (!s.system().empty()) std::printf("system: %s\n", s.system().c_str());
  for (const qlora::ChatMessage& m : s.history()) std::printf("%s: %s\n", m.role.c_str(), m.content.c_str());
  if (s.system().empty() && s.history().empty()) std::printf("(no messages yet)\n");
  std::fflush(stdout);
}

int run(const Options& o, CLI::App& app) {
  using Clock = std::chrono::steady_clock;
  const bool tty = ::isatty(STDIN_FILENO) == 1;

  if (o.n < 1) qlora::fail("-n/--n-predict", "must be >= 1 (got " + std::to_string(o.n) + ")");
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);
  // Before the model is loaded, so that a mistyped file costs nothing.
  const std::string template_override = o.chat_template_file.empty() ? "" : read_template_file(o.chat_template_file);

  const auto t_load = Clock::now();
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  if (!files.tokenizer)
    qlora::fail(o.m.model, "no tokenizer found next to the model; pass --tokenizer PATH");
  const qlora::Tokenizer& tok = *files.tokenizer;
  std::string tpl = template_override, tpl_name = o.chat_template_file;
  if (tpl.empty()) {
    tpl = tok.chat_template();
    if (tpl.empty())
      qlora::fail(o.m.model, "the model has no chat template; pass --chat-template FILE (a Jinja chat template)");
    tpl_name = tok.spec().chat_template_source.empty() ? tok.spec().source + " chat template"
                                                       : tok.spec().chat_template_source;
  }
  qlora::ChatSession session(tok, tpl, tpl_name);
  session.set_system(o.escape ? qlora::cli::unescape(o.system) : o.system);

  // Sampling: generation_config.json's values unless given on the command line, as generate.
  qlora::GenerationOptions gen = qlora::cli::generation_options(app, o.s, files.generation, o.n, o.escape);
  // stop_ids stay empty: the model's eos ids and the tokenizer's end-of-generation tokens.

  // The conversation grows up to the context; the newest turns keep room for an answer of
  // -n tokens, but never more than half the context, or a large -n would leave none for them.
  const int64_t context = files.spec.max_positions;
  const int64_t reserve = std::max<int64_t>(1, std::min<int64_t>(o.n, context / 2));
  const int64_t max_prompt = std::max<int64_t>(1, context - reserve);

  qlora::cli::report_model(files, o.quiet);
  qlora::cli::add_load_progress(load, files, o.quiet);
  if (qlora::cli::wants_memory_check(o.m, o.max_memory)) {
    // Sized for a full context: the conversation gets there.
    qlora::MemoryOptions mo =
        qlora::memory_options_for_run(o.m.model, load, qlora::MemoryMode::Generate, qlora::max_threads());
    mo.prompt_len = max_prompt;
    mo.new_tokens = reserve;
    qlora::cli::check_memory_fits(files.spec, mo, o.m, o.max_memory, "qlora chat");
  }
  qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();  // unmap the source: the model holds its own weights now
  if (!o.quiet)
    std::fprintf(stderr, "loaded in %.2f s: %s weights, compute %s%s, %.1f MiB\n",
                 std::chrono::duration<double>(Clock::now() - t_load).count(),
                 qlora::cli::weights_description(o.m, model).c_str(), o.m.compute_dtype.c_str(),
                 qlora::cli::int8_activations_note(o.m, model).c_str(),
                 static_cast<double>(model.weight_bytes()) / (1024.0 * 1024.0));
  qlora::LoadedAdapter adapter;
  if (!o.adapter.empty()) {
    adapter = qlora::cli::load_adapter_reporting(model, o.adapter, o.quiet);
    model.set_adapter(adapter.lora.get());  // `adapter` lives as long as `model` is used
  }
  qlora::cli::attach_device(model, o.m, o.quiet);

  // Piped input keeps the default SIGINT (the script is ended, as scripts expect).
  std::unique_ptr<SigintGuard> sigint;
  if (tty) {
    sigint = std::make_unique<SigintGuard>();
    gen.cancelled = [] { return g_interrupted.load(std::memory_order_relaxed); };
    std::printf("qlora chat: %s%s%s\n", o.m.model.c_str(), o.adapter.empty() ? "" : " + adapter ",
                o.adapter.c_str());
    std::printf(
        "Type a message and press Enter; /help lists the commands; /quit or Ctrl-D ends.\n"
        "Ctrl-C stops an answer; at the prompt it clears the input, and twice in a row quits.\n\n");
    std::fflush(stdout);
  }
  LineInput in(tty ? g_interrupt_pipe[0] : -1);

  bool interrupted_at_prompt = false;  // the last thing at the prompt was a Ctrl-C
  qlora::PromptCache kv_cache;
  for (;;) {
    const Input input = read_input(in, tty, /*send_pending_at_end=*/!tty);
    if (input.kind == Input::Kind::End) {
      if (tty) std::fputc('\n', stdout);
      std::fflush(stdout);
      return 0;
    }
    if (input.kind == Input::Kind::Interrupt) {
      // The terminal has already echoed ^C and dropped the line being typed.
      if (interrupted_at_prompt) {
        std::fputc('\n', stdout);
        std::fflush(stdout);
        return 0;
      }
      interrupted_at_prompt = true;
      std::printf("\n(input cleared; Ctrl-C again, /quit or Ctrl-D to end)\n");
      std::fflush(stdout);
      continue;
    }
    interrupted_at_prompt = false;

    if (input.kind == Input::Kind::Command) {
      const std::string& c = input.text;
      const size_t sp = c.find_first_of(" \t");
      const std::string name = c.substr(0, sp);
      std::string arg;  // "/system  Be brief." -> "Be brief."
      if (sp != std::string::npos) {
        const size_t b = c.find_first_not_of(" \t", sp);
        if (b != std::string::npos) arg = c.substr(b);
      }
      if (name == "/quit" || name == "/exit") return 0;
      if (name == "/help") {
        std::fputs(kHelp, stdout);
      } else if (name == "/reset") {
        session.reset();
        if (tty) std::printf("(conversation cleared)\n");
      } else if (name == "/system") {
        session.set_system(arg);
        if (tty)
          std::fputs(arg.empty() ? "(system message removed; conversation cleared)\n"
                                 : "(system message set; conversation cleared)\n",
                     stdout);
      } else if (name == "/history") {
        print_history(session);
      } else {
        std::fflush(stdout);
        std::fprintf(stderr, "unknown command %s: /help lists them (start with // to send a message beginning with /)\n",
                     name.c_str());
      }
      std::fflush(stdout);
      continue;
    }

    if (blank(input.text)) continue;
    qlora::ChatPrompt prompt;
    try {
      prompt = session.ask(input.text, max_prompt);
    } catch (const qlora::Error& e) {
      if (!tty) throw;  // a script should not go on as if it had its answer
      std::fflush(stdout);
      std::fprintf(stderr, "error: %s\n", e.what());
      continue;
    }
    if (tty && prompt.dropped > 0) {
      std::printf("(forgot the %zu oldest messages to fit the context)\n", prompt.dropped);
      std::fflush(stdout);
    }
    // The KV cache of the conversation so far: a turn only runs what is new in its prompt.
    const qlora::GenerationResult r = qlora::generate(
        model, &tok, prompt.ids, gen,
        [](std::string_view s) {
          std::fwrite(s.data(), 1, s.size(), stdout);
          std::fflush(stdout);
        },
        &kv_cache);
    if (sigint) clear_interrupts();  // a Ctrl-C during the answer was for the answer
    // Kept even when cut short: the next turn should see what the user saw.
    session.answer(r.text);
    std::fputc('\n', stdout);
    if (tty) {
      switch (r.stop) {
        case qlora::StopReason::Cancelled: std::printf("[stopped]\n"); break;
        case qlora::StopReason::Length: std::printf("[cut at -n %lld tokens]\n", static_cast<long long>(o.n)); break;
        case qlora::StopReason::Context: std::printf("[the context is full]\n"); break;
        default: break;
      }
      std::fputc('\n', stdout);
    }
    std::fflush(stdout);
    if (o.verbose)
      std::fprintf(stderr,
                   "[chat] prompt_tokens=%zu reused=%lld messages=%zu dropped=%zu answer_tokens=%zu tokens_per_s=%.1f "
                   "stop=%s\n",
                   prompt.ids.size(), static_cast<long long>(r.prompt_tokens_reused), prompt.messages, prompt.dropped,
                   r.output_ids.size(),
                   r.decode_tokens_per_second(), qlora::stop_reason_name(r.stop));
  }
}

const bool kRegistered = qlora::cli::register_command(
    "chat", "Talk with a chat model in the terminal (or answer messages piped in)",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m, "fp32, bf16 or fp16");
      qlora::cli::add_device_flag(app, o->m);
      qlora::cli::add_decode_flags(app, o->m);
      qlora::cli::add_adapter_flag(app, o->adapter);
      app.add_option("--system", o->system, "The system message (/system changes it during the chat)");
      app.add_option("--chat-template", o->chat_template_file, "Jinja file to use instead of the model's chat template");
      app.add_option("-n,--n-predict", o->n, "Most new tokens per answer")->capture_default_str();
      qlora::cli::add_sampling_flags(app, o->s, "Random seed (each answer starts from it)", "End an answer before this string (repeatable)");
      qlora::cli::add_bool_flag(app, "--escape,-e", o->escape,
                                "Process \\n, \\t, \\\\ escapes in --system and the stop strings");
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No loading messages on stderr");
      qlora::cli::add_bool_flag(app, "--verbose,-v", o->verbose,
                                "After each answer, a [chat] line on stderr: prompt tokens, messages, answer "
                                "tokens, speed and why it stopped");
      app.add_option("--max-memory", o->max_memory,
                     "Refuse to start (with the planner's breakdown) when a full context needs more than this "
                     "(e.g. 8GB)");
      return [o, &app] { return run(*o, app); };
    });

}  // namespace
