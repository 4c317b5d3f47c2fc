#pragma once
// Helpers shared by the model tests: where the data is, temporary directories, running the
// real `qlora` binary.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace qlora::test {

inline std::string data_dir() {
  const char* d = std::getenv("QLORA_DATA_DIR");
  return d && *d ? std::string(d) : std::string(QLORA_DEFAULT_DATA_DIR);
}
inline std::string stories_bin() { return data_dir() + "/stories260K/stories260K.bin"; }
inline std::string stories_tok() { return data_dir() + "/stories260K/tok512.bin"; }

inline std::string smollm2_gguf() {
  const char* dir = std::getenv("QLORA_MODELS_DIR");
  return (dir && *dir ? std::string(dir) : std::string(QLORA_SOURCE_DIR) + "/models") +
         "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// The known output of llama2.c `run stories260K.bin -z tok512.bin -t 0 -n 64 -i "Once upon a time"`
// (shared/data/README.md): the prompt's 5 tokens (BOS included) and 60 generated ones.
inline const char* kStoriesGreedy =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high.\nLily";
inline constexpr int kStoriesNewTokens = 60;

// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            ("qlora_model_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path(const std::string& name = "") const { return name.empty() ? path_.string() : (path_ / name).string(); }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q(1, '\'');
  for (char c : s) {
    if (c == '\'')
      q.append("'\\''");
    else
      q.push_back(c);
  }
  q.push_back('\'');
  return q;
}

// Runs the qlora binary with `args`, capturing stdout and stderr. QLORA_CLI in the
// environment names another binary (the test programs run on a GPU machine, away from the
// build directory they were compiled in).
inline CliResult run_cli(const std::vector<std::string>& args) {
  TempDir tmp("cli");
  const char* cli = std::getenv("QLORA_CLI");
  std::string cmd = shell_quote(cli && *cli ? cli : QLORA_CLI_PATH);
  for (const auto& a : args) {
    cmd.push_back(' ');
    cmd.append(shell_quote(a));
  }
  cmd.append(" 2>");
  cmd.append(shell_quote(tmp.path("stderr")));
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = read_file(tmp.path("stderr"));
  return r;
}

}  // namespace qlora::test
