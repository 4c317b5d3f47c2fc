// `qlora chat` end to end, as a person uses it: the real binary on a pseudo-terminal (forkpty),
// typing messages, reading the streamed answers, pressing Ctrl-C and Ctrl-D. Also the piped
// (scripted) mode. Uses SmolLM2-135M-Instruct when models/ has it, else stories260K with a
// small chat template; skipped when neither is there.
//
// The command runs with -v, whose "[chat] ... messages=N ... stop=R" line after each answer
// shows how many messages the model saw (the history at work) and why the answer ended. Every
// wait has a deadline, and the child is killed whenever a test ends without reaping it.
#include <gtest/gtest.h>

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "model/model_test_util.h"

namespace {

using Clock = std::chrono::steady_clock;
using qlora::test::TempDir;

// The model to chat with: SmolLM2 (a real chat model) or stories260K with a template.
struct ChatModel {
  std::vector<std::string> args;
  bool is_smollm2 = false;
};

bool pick_model(const TempDir& tmp, ChatModel& m) {
  if (std::filesystem::exists(qlora::test::smollm2_gguf())) {
    m.args = {"--model", qlora::test::smollm2_gguf()};
    m.is_smollm2 = true;
    return true;
  }
  if (!std::filesystem::exists(qlora::test::stories_bin())) return false;
  // llama2.c models ship no chat template.
  const std::string tpl = tmp.path("chat.jinja");
  qlora::test::write_file(tpl,
                          "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}");
  m.args = {"--model", qlora::test::stories_bin(), "--tokenizer", qlora::test::stories_tok(), "--chat-template", tpl};
  return true;
}

// Control bytes made visible, for failure messages.
std::string visible(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n\n";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) {
      out += '^';
      out += static_cast<char>(c ^ 0x40);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// `qlora chat ARGS` on the slave side of a new pseudo-terminal; the test holds the master.
class PtyChat {
 public:
  explicit PtyChat(const std::vector<std::string>& args) {
    std::vector<std::string> argv_s = {QLORA_CLI_PATH, "chat"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::setenv("OMP_WAIT_POLICY", "passive", 1);  // inherited: idle OpenMP threads must not spin
    pid_ = ::forkpty(&master_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~PtyChat() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) ::close(master_);
  }
  PtyChat(const PtyChat&) = delete;
  PtyChat& operator=(const PtyChat&) = delete;

  bool started() const { return pid_ > 0 && master_ >= 0; }
  const std::string& out() const { return out_; }
  size_t mark() const { return out_.size(); }

  void send(std::string_view s) {
    while (!s.empty()) {
      const ssize_t n = ::write(master_, s.data(), s.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      s.remove_prefix(static_cast<size_t>(n));
    }
  }

  // Reads until `needle` occurs at or after `from`; false when `seconds` pass first or the
  // terminal closes without it. Sets `at` to where it starts.
  bool wait_for(std::string_view needle, size_t from, double seconds, size_t* at = nullptr) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      const size_t pos = out_.find(needle, from);
      if (pos != std::string::npos) {
        if (at) *at = pos;
        return true;
      }
      if (closed_ || Clock::now() >= deadline) return false;
      read_some(20);
    }
  }

  // Reads until the output grows past `from`; false at the deadline.
  bool wait_past(size_t from, double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (out_.size() <= from) {
      if (closed_ || Clock::now() >= deadline) return false;
      read_some(5);
    }
    return true;
  }

  // The exit code once the program ends; -1 if it has not within `seconds` (it is then
  // killed) or died from a signal.
  int wait_exit(double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      if (Clock::now() >= deadline) return -1;  // the destructor kills it
      read_some(20);  // keeps the terminal drained so that the child never blocks writing
    }
  }

  bool alive() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }

 private:
  void read_some(int timeout_ms) {
    if (closed_) {
      ::usleep(static_cast<useconds_t>(timeout_ms) * 1000);
      return;
    }
    pollfd p{master_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return;
    char buf[4096];
    const ssize_t n = ::read(master_, buf, sizeof buf);
    if (n > 0) out_.append(buf, static_cast<size_t>(n));
    else if (n == 0 || (errno != EINTR && errno != EAGAIN)) closed_ = true;  // EIO: the child is gone
  }

  pid_t pid_ = -1;
  int master_ = -1;
  bool closed_ = false;
  std::string out_;
};

// Sends a message and waits for its answer to end (the [chat] line of -v, then the prompt).
// An answer still going after `soft` seconds is cut with Ctrl-C, so that a chatty model cannot
// stretch the test: what is checked is the history, not the answer. Returns the [chat] line
// ("" when none came).
std::string turn(PtyChat& c, const std::string& message, double soft = 6.0) {
  const size_t m = c.mark();
  c.send(message + "\r");
  size_t at = 0;
  if (!c.wait_for("[chat] ", m, soft, &at)) {
    c.send("\x03");
    if (!c.wait_for("[chat] ", m, 15.0, &at)) return "";
  }
  size_t end = 0;
  if (!c.wait_for("\n", at, 5.0, &end)) return "";
  const std::string line = c.out().substr(at, end - at);
  if (!c.wait_for("> ", end, 5.0)) return "";
  return line;
}

long field(const std::string& chat_line, const std::string& key) {
  const size_t p = chat_line.find(key + "=");
  return p == std::string::npos ? -1 : std::strtol(chat_line.c_str() + p + key.size() + 1, nullptr, 10);
}

// `model`'s arguments followed by `extra`.
std::vector<std::string> with(const ChatModel& model, const std::vector<const char*>& extra) {
  std::vector<std::string> args = model.args;
  for (const char* a : extra) args.emplace_back(a);
  return args;
}

// -n 48: short enough that stories260K, which rarely ends an answer by itself, leaves room in
// its 512-token context for the whole conversation.
TEST(ChatTty, ConversationHistoryAndReset) {
  TempDir tmp("chat_tty");
  ChatModel model;
  if (!pick_model(tmp, model)) GTEST_SKIP() << "neither SmolLM2 nor stories260K is present";
  PtyChat c(with(model, {"-n", "48", "--temperature", "0", "-v"}));
  ASSERT_TRUE(c.started());
  ASSERT_TRUE(c.wait_for("twice in a row quits", 0, 60.0)) << visible(c.out());
  ASSERT_TRUE(c.wait_for("> ", 0, 5.0)) << visible(c.out());

  // Two turns: the second prompt holds the first exchange too.
  const std::string t1 = turn(c, "Hi, my name is Bob.");
  ASSERT_FALSE(t1.empty()) << visible(c.out());
  EXPECT_EQ(field(t1, "messages"), 1) << t1;
  const std::string t2 = turn(c, "What is my name?");
  ASSERT_FALSE(t2.empty()) << visible(c.out());
  EXPECT_EQ(field(t2, "messages"), 3) << t2;
  EXPECT_EQ(field(t2, "dropped"), 0) << t2;
  EXPECT_GT(field(t2, "prompt_tokens"), field(t1, "prompt_tokens") + field(t1, "answer_tokens")) << t1 << "\n" << t2;

  size_t m = c.mark();
  c.send("/history\r");
  size_t at = 0;
  ASSERT_TRUE(c.wait_for("user: What is my name?", m, 5.0, &at)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", at, 5.0)) << visible(c.out().substr(m));
  const std::string history = c.out().substr(m);
  EXPECT_NE(history.find("user: Hi, my name is Bob.\r\nassistant: "), std::string::npos) << visible(history);

  m = c.mark();
  c.send("/reset\r");
  ASSERT_TRUE(c.wait_for("(conversation cleared)", m, 5.0)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", m, 5.0)) << visible(c.out().substr(m));
  const std::string t3 = turn(c, "Hello again.");
  ASSERT_FALSE(t3.empty()) << visible(c.out());
  EXPECT_EQ(field(t3, "messages"), 1) << t3;  // Bob is forgotten

  // Ctrl-C at the prompt clears the input but does not end the program; /quit does, with 0.
  m = c.mark();
  c.send("\x03");
  ASSERT_TRUE(c.wait_for("input cleared", m, 5.0)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", m, 5.0)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.alive());
  c.send("/quit\r");
  EXPECT_EQ(c.wait_exit(10.0), 0) << visible(c.out().substr(m));
}

// A long answer (-n 2000) stopped with Ctrl-C as soon as it streams: the program lives on, the
// partial answer stays in the conversation, and the next message is answered.
TEST(ChatTty, CtrlCStopsTheAnswerNotTheProgram) {
  TempDir tmp("chat_tty");
  ChatModel model;
  if (!pick_model(tmp, model)) GTEST_SKIP() << "neither SmolLM2 nor stories260K is present";
  PtyChat c(with(model, {"-n", "2000", "--temperature", "0", "-v"}));
  ASSERT_TRUE(c.started());
  ASSERT_TRUE(c.wait_for("twice in a row quits", 0, 60.0)) << visible(c.out());
  ASSERT_TRUE(c.wait_for("> ", 0, 5.0)) << visible(c.out());

  size_t m = c.mark(), at = 0;
  const std::string ask = "Tell me a very long story about a dragon and a knight.";
  c.send(ask + "\r");
  ASSERT_TRUE(c.wait_for(ask + "\r\n", m, 5.0, &at)) << visible(c.out().substr(m));  // the terminal's echo
  const size_t answer_start = at + ask.size() + 2;
  ASSERT_TRUE(c.wait_past(answer_start, 30.0)) << visible(c.out().substr(m));
  c.send("\x03");
  ASSERT_TRUE(c.wait_for("[chat] ", answer_start, 15.0, &at)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", at, 5.0)) << visible(c.out().substr(m));
  const std::string long_answer = c.out().substr(at, c.out().find('\n', at) - at);
  EXPECT_LT(field(long_answer, "answer_tokens"), 2000) << long_answer;
  if (model.is_smollm2) {
    // SmolLM2 streams some 20-40 tokens a second here: Ctrl-C lands long before -n 2000.
    EXPECT_NE(long_answer.find("stop=cancelled"), std::string::npos) << long_answer;
    EXPECT_NE(c.out().find("[stopped]", answer_start), std::string::npos) << visible(c.out().substr(m));
  } else if (long_answer.find("stop=cancelled") == std::string::npos) {
    // stories260K may fill its 512-token context before the Ctrl-C arrives.
    std::printf("note: the stories260K answer ended before Ctrl-C (%s)\n", long_answer.c_str());
  }
  ASSERT_TRUE(c.alive());

  // Still answering, and the cut answer is part of the conversation (stories260K's may have
  // grown too long to keep next to the new message: then it was forgotten, and said so).
  const std::string t2 = turn(c, "Thank you!");
  ASSERT_FALSE(t2.empty()) << visible(c.out());
  if (model.is_smollm2) {
    EXPECT_EQ(field(t2, "messages"), 3) << t2;
  }
  EXPECT_EQ(field(t2, "messages") + field(t2, "dropped"), 3) << t2;

  m = c.mark();
  c.send("/quit\r");
  EXPECT_EQ(c.wait_exit(10.0), 0) << visible(c.out().substr(m));
}

TEST(ChatTty, CtrlCTwiceAtThePromptQuits) {
  TempDir tmp("chat_tty");
  ChatModel model;
  if (!pick_model(tmp, model)) GTEST_SKIP() << "neither SmolLM2 nor stories260K is present";
  PtyChat c(model.args);
  ASSERT_TRUE(c.started());
  ASSERT_TRUE(c.wait_for("> ", 0, 60.0)) << visible(c.out());
  size_t m = c.mark();
  c.send("half a mess");  // not sent: Ctrl-C drops it
  c.send("\x03");
  ASSERT_TRUE(c.wait_for("input cleared", m, 5.0)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", m, 5.0)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.alive());
  m = c.mark();
  c.send("\x03");
  EXPECT_EQ(c.wait_exit(10.0), 0) << visible(c.out().substr(m));
}

TEST(ChatTty, MultiLineInputAndCtrlD) {
  TempDir tmp("chat_tty");
  ChatModel model;
  if (!pick_model(tmp, model)) GTEST_SKIP() << "neither SmolLM2 nor stories260K is present";
  PtyChat c(with(model, {"-n", "8", "--temperature", "0", "-v", "--system", "Be brief."}));
  ASSERT_TRUE(c.started());
  ASSERT_TRUE(c.wait_for("> ", 0, 60.0)) << visible(c.out());

  // A backslash continues the message on the next line.
  size_t m = c.mark();
  c.send("first line\\\r");
  ASSERT_TRUE(c.wait_for("... ", m, 5.0)) << visible(c.out().substr(m));
  const std::string t1 = turn(c, "second line");
  ASSERT_FALSE(t1.empty()) << visible(c.out());
  EXPECT_EQ(field(t1, "messages"), 2) << t1;  // the system message and one user message

  // A block between lines of """.
  for (const char* line : {"\"\"\"\r", "block one\r", "/not a command\r"}) {
    m = c.mark();
    c.send(line);
    ASSERT_TRUE(c.wait_for("... ", m, 5.0)) << visible(c.out().substr(m));
  }
  const std::string t2 = turn(c, "\"\"\"");
  ASSERT_FALSE(t2.empty()) << visible(c.out());
  EXPECT_EQ(field(t2, "messages"), 4) << t2;

  m = c.mark();
  c.send("/history\r");
  size_t at = 0;
  ASSERT_TRUE(c.wait_for("user: block one", m, 5.0, &at)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", at, 5.0)) << visible(c.out().substr(m));
  const std::string history = c.out().substr(m);
  // The terminal shows "\n" as "\r\n".
  EXPECT_NE(history.find("system: Be brief.\r\n"), std::string::npos) << visible(history);
  EXPECT_NE(history.find("user: first line\r\nsecond line\r\n"), std::string::npos) << visible(history);
  EXPECT_NE(history.find("user: block one\r\n/not a command\r\n"), std::string::npos) << visible(history);

  // /system replaces the system message and starts over.
  m = c.mark();
  c.send("/system Answer in French.\r");
  ASSERT_TRUE(c.wait_for("(system message set; conversation cleared)", m, 5.0)) << visible(c.out().substr(m));
  m = c.mark();
  c.send("/history\r");
  ASSERT_TRUE(c.wait_for("system: Answer in French.", m, 5.0)) << visible(c.out().substr(m));
  ASSERT_TRUE(c.wait_for("> ", m, 5.0)) << visible(c.out().substr(m));
  EXPECT_EQ(c.out().find("user:", m), std::string::npos) << visible(c.out().substr(m));

  // Ctrl-D on an empty line ends with 0.
  m = c.mark();
  c.send("\x04");
  EXPECT_EQ(c.wait_exit(10.0), 0) << visible(c.out().substr(m));
}

// Piped input: only the answers (each ending in a newline) and what /history prints reach
// stdout; no banner, no prompt.
TEST(ChatPiped, AnswersEachMessage) {
  TempDir tmp("chat_piped");
  ChatModel model;
  if (!pick_model(tmp, model)) GTEST_SKIP() << "neither SmolLM2 nor stories260K is present";
  qlora::test::write_file(tmp.path("in.txt"),
                          "Hello\\\nthere\n\n\"\"\"\nblock 1\nblock 2\n\"\"\"\n/history\n/reset\n/history\n");
  std::string cmd = "OMP_WAIT_POLICY=passive " + qlora::test::shell_quote(QLORA_CLI_PATH) + " chat";
  for (const std::string& a : model.args) {
    cmd += ' ';
    cmd += qlora::test::shell_quote(a);
  }
  cmd += " -n 8 --temperature 0 -q < ";
  cmd += qlora::test::shell_quote(tmp.path("in.txt"));
  cmd += " 2> ";
  cmd += qlora::test::shell_quote(tmp.path("err.txt"));
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  const std::string err = qlora::test::read_file(tmp.path("err.txt"));
  ASSERT_TRUE(WIFEXITED(status)) << out << err;
  EXPECT_EQ(WEXITSTATUS(status), 0) << out << err;
  EXPECT_EQ(err, "");  // -q
  EXPECT_EQ(out.find("> "), std::string::npos) << out;
  EXPECT_EQ(out.find("qlora chat"), std::string::npos) << out;
  // Two answers (the empty line is no message), then the history, then an empty history.
  const size_t h = out.find("user: Hello\nthere\nassistant: ");
  ASSERT_NE(h, std::string::npos) << out;
  EXPECT_NE(out.find("\nuser: block 1\nblock 2\nassistant: ", h), std::string::npos) << out;
  EXPECT_TRUE(out.ends_with("(no messages yet)\n")) << out;
  EXPECT_EQ(out.find("user: "), h) << out;  // nothing but answers before the history
}

}  // namespace
