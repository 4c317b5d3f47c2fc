// What a user sees when they give `qlora` something wrong, run as they run it: the real
// binary, in a fresh directory, through /bin/sh (so a row can set environment variables or
// ulimits in front of the command). One table, one row per mistake; every row checks the
// exit code, what stderr must say, and that the files the user already had in the directory
// are byte for byte unchanged. Rows that quote bad input also bound the message's length and
// check that no raw control or invalid UTF-8 byte reaches the terminal.
//
// To add a case, add a row to cases(): a name, files to create, the command, the expected
// exit code and stderr substrings, and optionally limits or a custom check.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/text_excerpt.h"
#include "model/model_test_util.h"

namespace fs = std::filesystem;
using qlora::test::read_file;
using qlora::test::shell_quote;
using qlora::test::TempDir;

namespace {

// ---- the harness ------------------------------------------------------------------------

struct CliRun {
  std::string dir;  // the case's working directory (where setup put its files)
  std::string command;
  int exit_code = -1;  // 128 + signal when killed
  std::string out, err;
};

struct Case {
  std::string name{};                             // a C identifier: the test's name
  std::function<void(const fs::path&)> setup{};   // creates the user's files in the directory
  std::string command{};                          // shell text; see expand() for the {placeholders}
  int exit_code = 0;
  std::vector<std::string> stderr_has{};          // substrings stderr must contain
  std::vector<std::string> stderr_lacks{};        // substrings it must not contain
  size_t max_stderr_bytes = 0;                    // > 0: stderr must be at most this long
  bool clean_bytes = false;                       // stderr: valid UTF-8, no control bytes but \n
  bool needs_stories = true;                      // skipped when the stories260K model is absent
  bool replaces_user_files = false;               // the user asked for it (--overwrite-output-dir)
  std::function<void(const CliRun&)> check{};        // anything else (EXPECT_* inside)
};

std::string data_dir() { return qlora::test::data_dir(); }
std::string stories() { return data_dir() + "/stories260K/stories260K.bin"; }
std::string tok512() { return data_dir() + "/stories260K/tok512.bin"; }
std::string fixture(const std::string& rel) { return std::string(QLORA_FIXTURE_DIR) + "/" + rel; }

// {qlora}: the binary; {M}: --model/--tokenizer of stories260K; {model}, {tok}: those paths;
// {fixtures}: tests/fixtures; {dir}: the case's directory (also the working directory).
std::string expand(std::string s, const std::string& dir) {
  const std::map<std::string, std::string> vars = {
      {"{qlora}", shell_quote(QLORA_CLI_PATH)},
      {"{M}", "--model " + shell_quote(stories()) + " --tokenizer " + shell_quote(tok512())},
      {"{model}", shell_quote(stories())},
      {"{tok}", shell_quote(tok512())},
      {"{fixtures}", shell_quote(QLORA_FIXTURE_DIR)},
      {"{dir}", shell_quote(dir)},
  };
  for (const auto& [k, v] : vars)
    for (size_t p = s.find(k); p != std::string::npos; p = s.find(k, p + v.size())) s.replace(p, k.size(), v);
  return s;
}

// FNV-1a: enough to notice any change to a user's file.
uint64_t content_hash(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::map<std::string, uint64_t> snapshot(const fs::path& dir) {
  std::map<std::string, uint64_t> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = content_hash(read_file(e.path().string()));
  return files;
}

CliRun run_case(const Case& c, const fs::path& dir, const fs::path& capture) {
  CliRun r;
  r.dir = dir.string();
  r.command = expand(c.command, r.dir);
  const std::string out = (capture / "stdout").string(), err = (capture / "stderr").string();
  // `timeout` keeps a hang from stalling the suite; the command runs in the case's directory.
  const std::string sh = "cd " + shell_quote(r.dir) + " && " + r.command;
  const std::string full = "timeout -k 5 120 /bin/sh -c " + shell_quote(sh) + " >" + shell_quote(out) + " 2>" +
                           shell_quote(err) + " </dev/null";
  const int status = std::system(full.c_str());
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  else if (status != -1 && WIFSIGNALED(status)) r.exit_code = 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

// Stderr shown in a failure message, itself kept short and printable.
std::string shown(const std::string& s) { return qlora::safe_message(s, 3000); }

// ---- files the rows use ------------------------------------------------------------------

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s.push_back(static_cast<char>(c));
  return s;
}

void put(const fs::path& dir, const std::string& name, const std::string& content) {
  fs::create_directories((dir / name).parent_path());
  qlora::test::write_file((dir / name).string(), content);
}

void copy_in(const fs::path& dir, const std::string& from, const std::string& name) {
  fs::create_directories((dir / name).parent_path());
  fs::copy_file(from, dir / name, fs::copy_options::overwrite_existing);
}

// gzip of "Once upon a time\n" (Python's gzip.compress(..., mtime=0)).
std::string gzip_bytes() {
  return bytes({0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xF3, 0xCF, 0x4B, 0x4E, 0x55, 0x28,
                0x2D, 0xC8, 0xCF, 0x53, 0x48, 0x54, 0x28, 0xC9, 0xCC, 0x4D, 0xE5, 0x02, 0x00, 0x7F, 0x08, 0x1A,
                0x74, 0x11, 0x00, 0x00, 0x00});
}

// A little stories-like text: trains with stories260K in a fraction of a second.
const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.\n"
    "One day, she saw a big, red ball. She wanted to play with it.\n";

std::string safetensors_bytes(const std::string& header_json, size_t data_bytes) {
  std::string s;
  uint64_t n = header_json.size();
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return s + header_json + std::string(data_bytes, '\0');
}

// tests/fixtures/gguf/tiny_llama.gguf with `from` replaced by `to` (same length, so the file
// stays well-formed) at its first occurrence after `after`.
std::string patched_tiny_gguf(const std::string& after, const std::string& from, const std::string& to) {
  std::string b = read_file(fixture("gguf/tiny_llama.gguf"));
  const size_t a = b.find(after);
  const size_t at = b.find(from, a == std::string::npos ? 0 : a);
  if (at == std::string::npos || from.size() != to.size()) return "";
  return b.replace(at, from.size(), to);
}

// A byte-level BPE tokenizer of 30 tokens (fits stories260K's 512) whose tokenizer_config.json
// holds `chat_template`.
void hf_tokenizer_dir(const fs::path& dir, const std::string& chat_template) {
  std::string vocab = R"("<unk>": 0, "<s>": 1, "</s>": 2)";
  int id = 3;
  for (char c = 'a'; c <= 'z'; ++c) vocab += ", \"" + std::string(1, c) + "\": " + std::to_string(id++);
  vocab += ", \"\\u0120\": " + std::to_string(id);
  std::string added;
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3; ++i)
    added += std::string(i ? ", " : "") + R"({"id": )" + std::to_string(i) + R"(, "content": ")" + specials[i] +
             R"(", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})";
  const std::string byte_level = R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, )"
                                 R"("use_regex": true})";
  put(dir, "tok/tokenizer.json",
      R"({"version": "1.0", "added_tokens": [)" + added + R"(], "normalizer": null, "pre_tokenizer": )" +
          byte_level + R"(, "post_processor": null, "decoder": )" + byte_level +
          R"(, "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, )"
          R"("end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, )"
          R"("vocab": {)" +
          vocab + R"(}, "merges": []}})");
  put(dir, "tok/tokenizer_config.json",
      R"({"bos_token": "<s>", "eos_token": "</s>", "chat_template": ")" + chat_template + R"("})");
}

const char* kChatRecord =
    R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})"
    "\n";

// ---- the table -------------------------------------------------------------------------

std::vector<Case> cases() {
  std::vector<Case> t;
  const std::string train = "{qlora} train {M} --max-steps 1 --out out ";
  const std::string broken_tpl = "{% for m in messages %}{{ m.content }{% endfor %}";

  // ---- data that is not text: named as what it is, whatever the extension ----
  t.push_back({.name = "data_gzip_named_parquet",
               .setup = [](const fs::path& d) { put(d, "data.parquet", gzip_bytes()); },
               .command = train + "--data data.parquet",
               .exit_code = 1,
               .stderr_has = {"data.parquet", "gzip-compressed", "gunzip"}});
  t.push_back({.name = "data_jsonl_gz",
               .setup = [](const fs::path& d) { put(d, "data.jsonl.gz", gzip_bytes()); },
               .command = train + "--data data.jsonl.gz",
               .exit_code = 1,
               .stderr_has = {"data.jsonl.gz", "gzip"}});
  t.push_back({.name = "data_zip_named_jsonl",
               .setup = [](const fs::path& d) { put(d, "data.jsonl", "PK" + bytes({3, 4, 20, 0, 0, 0, 8}) + "x"); },
               .command = train + "--data data.jsonl",
               .exit_code = 1,
               .stderr_has = {"data.jsonl", "zip archive"}});
  t.push_back({.name = "data_bzip2_named_json",
               .setup = [](const fs::path& d) { put(d, "data.json", "BZh91AY&SY" + bytes({0xCD, 0x94, 0x71, 0x41})); },
               .command = train + "--data data.json",
               .exit_code = 1,
               .stderr_has = {"data.json", "bzip2"}});
  t.push_back({.name = "data_xz_named_txt",
               .setup = [](const fs::path& d) { put(d, "data.txt", bytes({0xFD, '7', 'z', 'X', 'Z', 0, 0, 4, 0xE6})); },
               .command = train + "--data data.txt",
               .exit_code = 1,
               .stderr_has = {"data.txt", "xz-compressed"}});
  t.push_back({.name = "data_zstd",
               .setup = [](const fs::path& d) { put(d, "data.jsonl", bytes({0x28, 0xB5, 0x2F, 0xFD, 0x04, 0x58, 0})); },
               .command = train + "--data data.jsonl",
               .exit_code = 1,
               .stderr_has = {"data.jsonl", "zstd"}});
  t.push_back({.name = "data_parquet",
               .setup = [](const fs::path& d) { put(d, "train.parquet", "PAR1" + bytes({0x15, 4, 0}) + "PAR1"); },
               .command = train + "--data train.parquet",
               .exit_code = 1,
               .stderr_has = {"train.parquet", "Parquet", "to_json"}});
  t.push_back({.name = "data_safetensors",
               .setup =
                   [](const fs::path& d) {
                     put(d, "data.jsonl",
                         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
                   },
               .command = train + "--data data.jsonl",
               .exit_code = 1,
               .stderr_has = {"data.jsonl", "safetensors", "--model"}});
  t.push_back({.name = "data_gguf",
               .setup = [](const fs::path& d) { copy_in(d, fixture("gguf/tiny_llama.gguf"), "data.txt"); },
               .command = train + "--data data.txt",
               .exit_code = 1,
               .stderr_has = {"data.txt", "GGUF model file"}});
  t.push_back({.name = "data_llama2c_checkpoint",
               .setup = [](const fs::path& d) { copy_in(d, stories(), "stories.txt"); },
               .command = train + "--data stories.txt",
               .exit_code = 1,
               .stderr_has = {"stories.txt", "looks like a llama2.c model checkpoint"}});
  t.push_back({.name = "data_llama2c_tokenizer",
               .setup = [](const fs::path& d) { copy_in(d, tok512(), "tok.jsonl"); },
               .command = train + "--data tok.jsonl",
               .exit_code = 1,
               .stderr_has = {"tok.jsonl", "llama2.c tokenizer", "--tokenizer"}});
  t.push_back({.name = "data_nul_byte_in_text",
               .setup = [](const fs::path& d) { put(d, "data.txt", std::string("Once upon a time\nthere\0was", 26)); },
               .command = train + "--data data.txt",
               .exit_code = 1,
               .stderr_has = {"data.txt:2", "NUL byte at byte offset 22", "\\x00"},
               .max_stderr_bytes = 400,
               .clean_bytes = true});
  t.push_back({.name = "data_invalid_utf8_text",
               .setup = [](const fs::path& d) { put(d, "data.txt", "Once upon a time\nthere was a caf\xE9 here\n"); },
               .command = train + "--data data.txt",
               .exit_code = 1,
               .stderr_has = {"data.txt:2", "invalid UTF-8 at byte offset 32", "column 16", "\\xE9", "iconv"},
               .max_stderr_bytes = 500,
               .clean_bytes = true});
  t.push_back({.name = "data_directory",
               .setup = [](const fs::path& d) { fs::create_directories(d / "mydata"); },
               .command = train + "--data mydata",
               .exit_code = 1,
               .stderr_has = {"mydata", "is a directory"},
               .stderr_lacks = {"empty"}});
  t.push_back({.name = "eval_data_gzip",
               .setup =
                   [](const fs::path& d) {
                     put(d, "train.txt", kStory);
                     put(d, "eval.txt", gzip_bytes());
                   },
               .command = train + "--data train.txt --eval-data eval.txt",
               .exit_code = 1,
               .stderr_has = {"eval.txt", "gzip"}});
  t.push_back({.name = "data_utf8_text_still_trains",
               .setup = [](const fs::path& d) { put(d, "data.txt", std::string(kStory) + "Caf\u00e9, na\u00efve.\n"); },
               .command = train + "--data data.txt --quiet",
               .exit_code = 0,
               .stderr_lacks = {"error"},
               .check =
                   [](const CliRun& r) {
                     EXPECT_TRUE(fs::exists(fs::path(r.dir) / "out" / "adapter_model.safetensors"));
                   }});

  // ---- boolean options: bare, separate value, =value; contradictions are errors ----
  t.push_back({.name = "memory_bare_bool_before_option",
               .command = "{qlora} memory --params 65B --grad-checkpointing --optim paged_adamw_32bit",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_NE(r.out.find("checkpointing on"), std::string::npos) << r.out;
                     EXPECT_NE(r.out.find("paged"), std::string::npos) << r.out;
                   }});
  t.push_back({.name = "memory_bool_equals_false",
               .command = "{qlora} memory --params 7B --gradient-checkpointing=false",
               .exit_code = 0,
               .needs_stories = false,
               .check = [](const CliRun& r) { EXPECT_NE(r.out.find("checkpointing off"), std::string::npos); }});
  t.push_back({.name = "memory_bool_separate_values",
               .command = "{qlora} memory --params 7B --grad-checkpointing OFF --double-quant Yes --json=1",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_EQ(r.out.substr(0, 1), "{") << r.out;  // --json=1
                     EXPECT_NE(r.out.find("checkpointing off"), std::string::npos) << r.out;  // OFF
                     EXPECT_NE(r.out.find("bs64+dq"), std::string::npos) << r.out;            // Yes
                   }});
  t.push_back({.name = "memory_both_forms_conflict",
               .command = "{qlora} memory --params 7B --grad-checkpointing true --no-gradient-checkpointing",
               .exit_code = 105,
               .stderr_has = {"--no-gradient-checkpointing", "--gradient-checkpointing", "both"},
               .needs_stories = false});
  // qlora memory plans a GGUF's Q5_K / Q6_K as generate loads them: the file's blocks on 8-bit
  // activations (its default), Q8_0 of their values with --no-int8-activations; the flag is
  // refused where generate would refuse it or never use it.
  t.push_back({.name = "memory_generate_gguf_kquants_as_generate_loads_them",
               .command = "{qlora} memory -m {fixtures}/gguf/kq_llama.gguf --mode generate",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_NE(r.out.find("lm_head (GGUF blocks, as stored)"), std::string::npos) << r.out;
                     EXPECT_NE(r.out.find("embeddings (GGUF blocks, as stored)"), std::string::npos) << r.out;
                   }});
  t.push_back({.name = "memory_generate_gguf_float_activations_q8_0",
               .command = "{qlora} memory -m {fixtures}/gguf/kq_llama.gguf --mode generate --no-int8-activations",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_NE(r.out.find("lm_head (GGUF Q8_0, kept 8-bit)"), std::string::npos) << r.out;
                     EXPECT_NE(r.out.find("embeddings (GGUF Q8_0, kept 8-bit)"), std::string::npos) << r.out;
                   }});
  t.push_back({.name = "memory_int8_activations_with_train",
               .command = "{qlora} memory --params 7B --mode train --int8-activations",
               .exit_code = 1,
               .stderr_has = {"--int8-activations", "--mode generate"},
               .needs_stories = false});
  t.push_back({.name = "memory_int8_activations_with_int8_weights",
               .command = "{qlora} memory -m {fixtures}/gguf/kq_llama.gguf --mode generate --quant int8 --int8-activations",
               .exit_code = 1,
               .stderr_has = {"--int8-activations", "--quant int8"},
               .needs_stories = false});
  t.push_back({.name = "memory_bool_bad_value",
               .command = "{qlora} memory --params 7B --grad-checkpointing maybe",
               .exit_code = 105,
               .stderr_has = {"--grad-checkpointing", "'maybe' is not a boolean", "true/false"},
               .needs_stories = false});
  t.push_back({.name = "memory_bool_twice_different",
               .command = "{qlora} memory --params 7B --json --json=false",
               .exit_code = 105,
               .stderr_has = {"--json", "given twice with different values (true and false)"},
               .needs_stories = false});
  t.push_back({.name = "train_bool_forms",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --packing --gradient-checkpointing false --rslora=yes " +
                          "--train-on-prompt 0 -q",
               .exit_code = 0,
               .stderr_lacks = {"error"}});
  t.push_back({.name = "train_negated_pair_conflict",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --no-gradient-checkpointing --grad-checkpointing=no",
               .exit_code = 105,
               .stderr_has = {"--no-gradient-checkpointing", "--gradient-checkpointing"}});
  // ---- gradient checkpointing left to train: auto, said why, overridable ----
  t.push_back({.name = "train_auto_checkpointing_off_when_it_fits",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt",
               .exit_code = 0,
               .stderr_has = {"gradient checkpointing: off (auto: the run needs", "available",
                              "--gradient-checkpointing turns it on"}});
  t.push_back({.name = "train_auto_checkpointing_on_under_max_memory",
               .setup =
                   [](const fs::path& d) {
                     std::string text;
                     for (int i = 0; i < 60; ++i) text += kStory;  // 8 full sequences of 256
                     put(d, "data.txt", text);
                   },
               .command = train + "--data data.txt --seq-len 256 --batch-size 8 --max-memory 100MB",
               .exit_code = 0,  // it fits with checkpointing
               .stderr_has = {"gradient checkpointing: on (auto:", "would exceed --max-memory 0.10 GB"}});
  t.push_back({.name = "train_explicit_checkpointing_is_not_auto",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --gradient-checkpointing",
               .exit_code = 0,
               .stderr_lacks = {"checkpointing: on (auto", "checkpointing: off (auto"}});
  t.push_back({.name = "memory_auto_checkpointing_as_train",
               .command = "{qlora} memory --model random:smollm2-135m --quant nf4 --json",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_NE(r.out.find("\"gradient_checkpointing_auto\": \"off (auto"), std::string::npos) << r.out;
                   }});
  t.push_back({.name = "memory_auto_checkpointing_on_over_limit",
               .command = "{qlora} memory --model random:smollm2-135m --quant nf4 --seq-len 2048 --max-memory 1GB",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_NE(r.out.find("gradient checkpointing: on (auto:"), std::string::npos) << r.out;
                     EXPECT_NE(r.out.find("checkpointing on"), std::string::npos) << r.out;
                   }});
  t.push_back({.name = "memory_other_engine_keeps_checkpointing",
               .command = "{qlora} memory --params 7B --engine pytorch-cuda",
               .exit_code = 0,
               .needs_stories = false,
               .check =
                   [](const CliRun& r) {
                     EXPECT_NE(r.out.find("gradient checkpointing: on (the default for this engine)"), std::string::npos)
                         << r.out;
                   }});
  t.push_back({.name = "generate_int8_activations",
               .command = "{qlora} generate {M} -p Once -n 8 --temperature 0 --int8-activations",
               .exit_code = 0,
               .check = [](const CliRun& r) { EXPECT_NE(r.out.find("Once"), std::string::npos) << r.out; }});
  // A GGUF decodes on 8-bit activations by default (its weights kept as stored: the merged
  // Q8_0 file's), saying so on the "loaded" line; --no-int8-activations turns it off.
  t.push_back({.name = "generate_gguf_int8_activations_by_default",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "{qlora} train {M} --max-steps 1 --data data.txt --out ad -q && "
                          "{qlora} merge {M} --adapter ad --out m.gguf --gguf-type q8_0 -q && "
                          "{qlora} generate -m m.gguf -p Once -n 4 --temperature 0 && "
                          "{qlora} generate -m m.gguf -p Once -n 4 --temperature 0 --no-int8-activations && "
                          "{qlora} generate -m m.gguf -p Once -n 4 --temperature 0 --compute-dtype bf16 && "
                          "{qlora} generate -m m.gguf -p Once -n 4 --temperature 0 --requantize-gguf",
               .exit_code = 0,
               .check =
                   [](const CliRun& r) {
                     // once: not with --no-int8-activations, bf16 compute or --requantize-gguf
                     const std::string note = "decoding on 8-bit activations as llama.cpp (";
                     const size_t at = r.err.find(note);
                     ASSERT_NE(at, std::string::npos) << r.err;
                     EXPECT_NE(r.err.find("the GGUF default, --no-int8-activations: float32)", at), std::string::npos)
                         << r.err;
                     EXPECT_EQ(r.err.find(note, at + 1), std::string::npos) << r.err;
                     size_t runs = 0;
                     for (size_t p = r.err.find("loaded in"); p != std::string::npos; p = r.err.find("loaded in", p + 1))
                       ++runs;
                     EXPECT_EQ(runs, 4u) << r.err;
                   }});
  t.push_back({.name = "generate_int8_activations_needs_4bit",
               .command = "{qlora} generate {M} -p Once -n 2 --quant none --int8-activations",
               .exit_code = 1,
               .stderr_has = {"--int8-activations", "--quant none"}});
  t.push_back({.name = "generate_int8_activations_not_on_cuda",
               .command = "{qlora} generate {M} -p Once -n 2 --device cuda --int8-activations",
               .exit_code = 1,
               .stderr_has = {"--int8-activations"}});
  t.push_back({.name = "generate_kv_cache_f16",
               .command = "{qlora} generate {M} -p Once -n 8 --temperature 0 --kv-cache f16",
               .exit_code = 0,
               .check = [](const CliRun& r) { EXPECT_NE(r.out.find("Once"), std::string::npos) << r.out; }});
  t.push_back({.name = "generate_kv_cache_unknown",
               .command = "{qlora} generate {M} -p Once -n 2 --kv-cache q8",
               .exit_code = 1,
               .stderr_has = {"--kv-cache", "q8", "f16"}});
  t.push_back({.name = "generate_kv_cache_not_on_cuda",
               .command = "{qlora} generate {M} -p Once -n 2 --device cuda --kv-cache bf16",
               .exit_code = 1,
               .stderr_has = {"--kv-cache", "float32"}});
  t.push_back({.name = "generate_echo_false",
               .command = "{qlora} generate {M} -p Once -n 2 --temperature 0 --echo false -q",
               .exit_code = 0,
               .check = [](const CliRun& r) { EXPECT_EQ(r.out.find("Once"), std::string::npos) << r.out; }});
  t.push_back({.name = "eval_bool_values",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "{qlora} eval {M} --data data.txt --json=true --quiet TRUE",
               .exit_code = 0,
               .check = [](const CliRun& r) { EXPECT_NE(r.out.find("\"loss\""), std::string::npos) << r.out; }});
  t.push_back({.name = "quantize_bool_bad_value",
               .command = "{qlora} quantize --model {fixtures}/quant/linear4bit_source.safetensors --out q.safetensors "
                          "--double-quant=maybe",
               .exit_code = 105,
               .stderr_has = {"--double-quant", "not a boolean"},
               .needs_stories = false,
               .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(fs::path(r.dir) / "q.safetensors")); }});

  // ---- messages quote input as short escaped excerpts and name the file and line ----
  t.push_back({.name = "jsonl_10mb_malformed_line",
               .setup =
                   [](const fs::path& d) {
                     put(d, "big.jsonl", "{\"text\": \"" + std::string(10'000'000, 'a') + "\"\n");
                   },
               .command = train + "--data big.jsonl",
               .exit_code = 1,
               .stderr_has = {"big.jsonl:1", "invalid JSON", "(10000011 bytes)"},
               .max_stderr_bytes = 1500,
               .clean_bytes = true});
  t.push_back({.name = "jsonl_invalid_utf8_and_escape_bytes",
               .setup = [](const fs::path& d) { put(d, "bad.jsonl", "{\"text\": \"caf\xE9 \x1B[31mred\"}\n"); },
               .command = train + "--data bad.jsonl --on-bad-record error",
               .exit_code = 1,
               .stderr_has = {"bad.jsonl:1", "invalid JSON", "\\xE9", "\\x1B"},
               .max_stderr_bytes = 500,
               .clean_bytes = true});
  t.push_back({.name = "json_array_huge_string_syntax_error",
               .setup =
                   [](const fs::path& d) {
                     put(d, "data.json",
                         "[\n{\"text\": \"ok\"},\n{\"text\": \"" + std::string(3'000'000, 'b') + "\" oops}]");
                   },
               .command = train + "--data data.json",
               .exit_code = 1,
               .stderr_has = {"data.json:3", "invalid JSON", "near"},
               .max_stderr_bytes = 800,
               .clean_bytes = true});
  t.push_back({.name = "jsonl_huge_key_name",
               .setup = [](const fs::path& d) { put(d, "k.jsonl", "{\"" + std::string(100'000, 'k') + "\": 1}\n"); },
               .command = train + "--data k.jsonl",
               .exit_code = 1,
               .stderr_has = {"k.jsonl:1", "none of the keys", "(100000 bytes)"},
               .max_stderr_bytes = 1000,
               .clean_bytes = true});
  t.push_back({.name = "chat_template_file_broken",
               .setup =
                   [broken_tpl](const fs::path& d) {
                     put(d, "chat.jsonl", kChatRecord);
                     put(d, "my_template.jinja", broken_tpl);
                   },
               .command = train + "--data chat.jsonl --chat-template my_template.jinja",
               .exit_code = 1,
               .stderr_has = {"my_template.jinja:1:", "unbalanced"}});
  t.push_back({.name = "chat_template_file_empty",
               .setup =
                   [](const fs::path& d) {
                     put(d, "chat.jsonl", kChatRecord);
                     put(d, "empty.jinja", "");
                   },
               .command = train + "--data chat.jsonl --chat-template empty.jinja",
               .exit_code = 1,
               .stderr_has = {"empty.jinja", "--chat-template", "empty"}});
  t.push_back({.name = "chat_template_tokenizer_config_broken",
               .setup =
                   [broken_tpl](const fs::path& d) {
                     put(d, "chat.jsonl", kChatRecord);
                     hf_tokenizer_dir(d, broken_tpl);
                   },
               .command = "{qlora} train --model {model} --tokenizer tok --data chat.jsonl --out out --max-steps 1",
               .exit_code = 1,
               .stderr_has = {"tok/tokenizer_config.json:chat_template:1:", "unbalanced"}});
  t.push_back({.name = "chat_template_gguf_broken_generate",
               .setup =
                   [](const fs::path& d) {
                     put(d, "model.gguf",
                         patched_tiny_gguf("tokenizer.chat_template", "{{ messages }}", "{{ messages  x"));
                   },
               .command = "{qlora} generate --model model.gguf --chat -p hi -n 1",
               .exit_code = 1,
               .stderr_has = {"model.gguf:tokenizer.chat_template:1:", "unclosed '{{'"},
               .needs_stories = false});
  t.push_back({.name = "chat_template_gguf_broken_train",
               .setup =
                   [](const fs::path& d) {
                     put(d, "chat.jsonl", kChatRecord);
                     put(d, "model.gguf",
                         patched_tiny_gguf("tokenizer.chat_template", "{{ messages }}", "{{ messages  x"));
                   },
               .command = "{qlora} train --model model.gguf --data chat.jsonl --out out --max-steps 1",
               .exit_code = 1,
               .stderr_has = {"model.gguf:tokenizer.chat_template:1:", "unclosed '{{'"},
               .needs_stories = false});
  t.push_back({.name = "chat_template_raise_exception_long_content",
               .setup =
                   [](const fs::path& d) {
                     put(d, "chat.jsonl",
                         R"({"messages": [{"role": "user", "content": ")" + std::string(50'000, 'z') +
                             R"("}, {"role": "assistant", "content": "yo"}]})"
                             "\n");
                     put(d, "t.jinja", "{{ raise_exception('bad: ' + messages[0]['content']) }}");
                   },
               .command = train + "--data chat.jsonl --chat-template t.jinja --on-bad-record error",
               .exit_code = 1,
               .stderr_has = {"chat.jsonl:1", "t.jinja:1:", "raise_exception: bad: zzz", "bytes)"},
               .max_stderr_bytes = 1200,
               .clean_bytes = true});
  t.push_back({.name = "unknown_command",
               .command = "{qlora} frobnicate --model x",
               .exit_code = 1,
               .stderr_has = {"unknown command 'frobnicate'", "train", "generate", "memory"},
               .stderr_lacks = {"A subcommand is required"},
               .needs_stories = false});
  t.push_back({.name = "option_before_command",
               .command = "{qlora} --model x train",
               .exit_code = 1,
               .stderr_has = {"'--model' before the command", "train"},
               .needs_stories = false});
  t.push_back({.name = "no_command",
               .command = "{qlora}",
               .exit_code = 1,
               .stderr_has = {"give a command", "train"},
               .needs_stories = false});
  t.push_back({.name = "generate_negative_n",
               .command = "{qlora} generate {M} -p Once -n -5",
               .exit_code = 1,
               .stderr_has = {"-n/--n-predict", "must be >= 0"},
               .max_stderr_bytes = 300,
               .clean_bytes = true});
  t.push_back({.name = "memory_negative_n",
               .command = "{qlora} memory --params 7B --mode generate -n -5",
               .exit_code = 1,
               .stderr_has = {"-n/--n-predict", "must be >= 0"},
               .max_stderr_bytes = 300,
               .clean_bytes = true,
               .needs_stories = false});
  t.push_back({.name = "gguf_unknown_architecture",
               .setup =
                   [](const fs::path& d) {
                     put(d, "arch.gguf", patched_tiny_gguf("general.architecture", "llama", "xxxxx"));
                   },
               .command = "{qlora} generate --model arch.gguf -p hi -n 1",
               .exit_code = 1,
               .stderr_has = {"arch.gguf", "unsupported architecture 'xxxxx'", "llama, mistral, qwen2"},
               .stderr_lacks = {"embedding_length"},
               .needs_stories = false});
  t.push_back({.name = "memory_gguf_unknown_architecture",
               .setup =
                   [](const fs::path& d) {
                     put(d, "arch.gguf", patched_tiny_gguf("general.architecture", "llama", "xxxxx"));
                   },
               .command = "{qlora} memory --model arch.gguf",
               .exit_code = 1,
               .stderr_has = {"arch.gguf", "unsupported architecture 'xxxxx'"},
               .stderr_lacks = {"embedding_length"},
               .needs_stories = false});
  t.push_back({.name = "option_value_huge",
               .command = "{qlora} memory --params 7B --lora-r $(printf '%0100000d' 7)x",
               .exit_code = 104,
               .stderr_has = {"--lora-r", "(100001 bytes)"},
               .max_stderr_bytes = 300,
               .clean_bytes = true,
               .needs_stories = false});
  t.push_back({.name = "option_value_invalid_utf8",
               .command = "{qlora} memory --params \"$(printf '\\377\\033[2Jabc')\"",
               .exit_code = 1,
               .stderr_has = {"--params", "unknown size '\\xFF\\x1B[2Jabc'"},
               .max_stderr_bytes = 400,
               .clean_bytes = true,
               .needs_stories = false});
  t.push_back({.name = "option_value_long_data_format",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --data-format $(printf '%05000d' 0)",
               .exit_code = 1,
               .stderr_has = {"--data-format", "unknown value", "(5000 bytes)"},
               .max_stderr_bytes = 500,
               .clean_bytes = true});
  t.push_back({.name = "config_json_huge_invalid",
               .setup =
                   [](const fs::path& d) {
                     put(d, "hf/config.json",
                         "{\"model_type\": \"llama\", \"x\": \"" + std::string(1'000'000, 'g') + "\xFF");
                   },
               .command = "{qlora} memory --model hf/config.json",
               .exit_code = 1,
               .stderr_has = {"hf/config.json", "not valid JSON at line 1", "near"},
               .max_stderr_bytes = 600,
               .clean_bytes = true,
               .needs_stories = false});

  // ---- already handled: must not regress ----
  t.push_back({.name = "missing_model_file",
               .command = "{qlora} generate --model nope.bin -p x",
               .exit_code = 1,
               .stderr_has = {"nope.bin", "no such file"},
               .needs_stories = false});
  t.push_back({.name = "truncated_safetensors",
               .setup =
                   [](const fs::path& d) {
                     put(d, "t.safetensors",
                         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}})", 10));
                   },
               .command = "{qlora} inspect t.safetensors",
               .exit_code = 1,
               .stderr_has = {"t.safetensors", "truncated"},
               .needs_stories = false});
  t.push_back({.name = "corrupt_gguf",
               .setup =
                   [](const fs::path& d) {
                     const std::string g = read_file(fixture("gguf/tiny_llama.gguf"));
                     put(d, "half.gguf", g.substr(0, g.size() / 2));
                   },
               .command = "{qlora} generate --model half.gguf -p x",
               .exit_code = 1,
               .stderr_has = {"half.gguf", "truncated"},
               .needs_stories = false});
  t.push_back({.name = "unknown_quant",
               .command = "{qlora} generate {M} --quant nf5 -p x",
               .exit_code = 1,
               .stderr_has = {"--quant", "unknown value 'nf5'"}});
  t.push_back({.name = "unknown_optim",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --optim adamw_9bit",
               .exit_code = 1,
               .stderr_has = {"--optim", "unknown optimizer 'adamw_9bit'"}});

  // ---- the training output directory: owned by one run, nothing of an earlier run lost ----
  // An earlier run's adapter, metrics and checkpoints (the harness checks they stay as they are).
  const auto earlier_run = [](const fs::path& d) {
    put(d, "data.txt", kStory);
    put(d, "out/adapter_model.safetensors", "an earlier run's adapter");
    put(d, "out/metrics.jsonl", "{\"step\": 1, \"loss\": 2.5}\n");
    put(d, "out/checkpoint-50/trainer_state.safetensors", "an earlier run's checkpoint");
  };
  t.push_back({.name = "out_dir_holds_an_earlier_run",
               .setup = earlier_run,
               .command = train + "--data data.txt",
               .exit_code = 1,
               .stderr_has = {"out: already holds the output of an earlier run", "adapter_model.safetensors",
                              "checkpoint-50", "--resume", "--overwrite-output-dir"}});
  t.push_back({.name = "out_dir_resume_without_checkpoint_keeps_the_adapter",
               .setup =
                   [](const fs::path& d) {
                     put(d, "data.txt", kStory);
                     put(d, "out/adapter_model.safetensors", "a finished run's adapter");
                   },
               .command = train + "--data data.txt --resume",
               .exit_code = 1,
               .stderr_has = {"--resume: there is no checkpoint-N/ to resume from", "adapter_model.safetensors"}});
  t.push_back({.name = "out_dir_resume_and_overwrite_contradict",
               .setup = earlier_run,
               .command = train + "--data data.txt --resume --overwrite-output-dir",
               .exit_code = 1,
               .stderr_has = {"--resume", "contradicts --overwrite-output-dir"}});
  t.push_back({.name = "out_dir_overwrite_replaces_exactly_the_earlier_run",
               .setup =
                   [earlier_run](const fs::path& d) {
                     earlier_run(d);
                     put(d, "out/notes.txt", "the user's own notes");
                     put(d, "out/checkpoint-7.tmp-123456/adapter_model.safetensors", "a killed write");
                   },
               .command = train + "--data data.txt --overwrite-output-dir",
               .exit_code = 0,
               .stderr_has = {"--overwrite-output-dir: removed the earlier run's", "checkpoint-50"},
               .replaces_user_files = true,
               .check =
                   [](const CliRun& r) {
                     const fs::path out = fs::path(r.dir) / "out";
                     EXPECT_EQ(read_file((out / "notes.txt").string()), "the user's own notes");
                     EXPECT_FALSE(fs::exists(out / "checkpoint-50"));
                     EXPECT_FALSE(fs::exists(out / "checkpoint-7.tmp-123456"));
                     EXPECT_NE(read_file((out / "adapter_model.safetensors").string()), "an earlier run's adapter");
                   }});
  // Another process holds the directory (util-linux flock takes the same kind of lock).
  t.push_back({.name = "out_dir_in_use_by_another_run",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "mkdir -p out && flock out/.qlora-train.lock " + train + "--data data.txt",
               .exit_code = 1,
               .stderr_has = {"out: the output directory is in use by another training run", "choose another --out"},
               .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(fs::path(r.dir) / "out/metrics.jsonl")); }});
  t.push_back({.name = "out_empty",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "{qlora} train {M} --max-steps 1 --out '' --data data.txt",
               .exit_code = 1,
               .stderr_has = {"--out: is empty"}});
  // A full disk while logging: the run stops naming the file; metrics.jsonl holds whole lines.
  // (A file-size limit makes writes fail as a full disk does, without root or a small mount.)
  t.push_back({.name = "metrics_write_fails_mid_run",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "ulimit -f 8; {qlora} train {M} --max-steps 3000 --seq-len 32 --lora-r 4 -q "
                          "--out out --data data.txt",
               .exit_code = 1,
               .stderr_has = {"out/metrics.jsonl: write failed: File too large"},
               .check =
                   [](const CliRun& r) {
                     const std::string m = read_file(r.dir + "/out/metrics.jsonl");
                     ASSERT_FALSE(m.empty());
                     EXPECT_EQ(m.back(), '\n');
                     size_t lines = 0;
                     for (size_t a = 0, b; (b = m.find('\n', a)) != std::string::npos; a = b + 1, ++lines)
                       EXPECT_FALSE(nlohmann::json::parse(m.substr(a, b - a), nullptr, false).is_discarded());
                     EXPECT_GT(lines, 5u);
                     EXPECT_LT(lines, 3000u);
                     EXPECT_FALSE(fs::exists(r.dir + "/out/adapter_model.safetensors"));
                   }});
  t.push_back({.name = "checkpoint_write_fails",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "ulimit -f 150; {qlora} train {M} --max-steps 6 --save-every 2 --seq-len 32 --lora-r 4 -q "
                          "--out out --data data.txt",
               .exit_code = 1,
               .stderr_has = {"out/checkpoint-2: cannot write the checkpoint", "File too large"},
               .check =
                   [](const CliRun& r) {
                     for (const auto& e : fs::directory_iterator(r.dir + "/out"))
                       EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
                     EXPECT_FALSE(fs::exists(r.dir + "/out/checkpoint-2"));
                   }});
  // ---- non-finite numbers never reach a file ----
  for (const char* lr : {"inf", "1e30", "nan", "-1"})
    t.push_back({.name = std::string("lr_") + (lr[0] == '-' ? "negative" : lr),
                 .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
                 .command = train + "--data data.txt --lr " + lr,
                 .exit_code = 1,
                 .stderr_has = {"--lr: must be a finite number in [0, 1]"},
                 .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(r.dir + "/out/metrics.jsonl")); }});
  t.push_back({.name = "warmup_ratio_out_of_range",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --warmup-ratio 3",
               .exit_code = 1,
               .stderr_has = {"--warmup-ratio"}});
  // An adapter holding a NaN (a diverged run of another tool): refused, not an empty answer.
  t.push_back({.name = "generate_adapter_with_nan",
               .setup =
                   [](const fs::path& d) {
                     put(d, "data.txt", kStory);
                     const std::string cmd = "cd " + shell_quote(d.string()) + " && " +
                                             expand("{qlora} train {M} --max-steps 1 --out ad", d.string()) +
                                             " --data data.txt --lora-r 4 -q";
                     ASSERT_EQ(std::system(cmd.c_str()), 0);
                     fs::remove(d / "ad/.qlora-train.lock");
                     std::string a = read_file((d / "ad/adapter_model.safetensors").string());
                     uint64_t header = 0;
                     for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<unsigned char>(a[static_cast<size_t>(i)]);
                     a.replace(8 + header + 16, 4, bytes({0x00, 0x00, 0xC0, 0x7F}));  // float NaN
                     put(d, "ad/adapter_model.safetensors", a);
                   },
               .command = "{qlora} generate {M} --adapter ad -p Once -n 4",
               .exit_code = 1,
               .stderr_has = {"ad/adapter_model.safetensors", "non-finite value (NaN", "diverged"}});
  // ---- tensors the model does not use ----
  t.push_back({.name = "gguf_block_count_below_the_blocks_stored",
               .setup =
                   [](const fs::path& d) {
                     std::string b = read_file(qlora::test::smollm2_gguf());
                     const size_t at = b.find("llama.block_count");
                     ASSERT_NE(at, std::string::npos);
                     const size_t v = at + std::string("llama.block_count").size() + 4;  // after the u32 type
                     ASSERT_EQ(static_cast<unsigned char>(b[v]), 30);
                     b[v] = 29;
                     put(d, "smollm2_29.gguf", b);
                   },
               .command = "{qlora} generate --model smollm2_29.gguf -p Hi -n 2",
               .exit_code = 1,
               .stderr_has = {"smollm2_29.gguf: 9 tensor(s) in the file are not used by the model",
                              "blk.29.attn_k.weight", "--allow-unused-tensors"}});
  t.push_back({.name = "gguf_unused_tensors_allowed_with_a_warning",
               .setup =
                   [](const fs::path& d) {
                     std::string b = read_file(qlora::test::smollm2_gguf());
                     const size_t v = b.find("llama.block_count") + std::string("llama.block_count").size() + 4;
                     b[v] = 29;
                     put(d, "smollm2_29.gguf", b);
                   },
               .command = "{qlora} generate --model smollm2_29.gguf -p Hi -n 2 --allow-unused-tensors",
               .exit_code = 0,
               .stderr_has = {"warning: smollm2_29.gguf: 9 tensor(s)", "blk.29"}});
  // ---- nothing that looks hung ----
  t.push_back({.name = "batch_larger_than_the_data_is_clamped",
               .setup =
                   [](const fs::path& d) {
                     std::string recs;
                     for (int i = 0; i < 8; ++i) recs += "{\"text\": \"Once upon a time there was a cat.\"}\n";
                     put(d, "data.jsonl", recs);
                   },
               .command = "{qlora} train {M} --out out --data data.jsonl --batch-size 100000 --grad-accum 3 --seq-len 32",
               .exit_code = 0,
               .stderr_has = {"--batch-size 100000 is more than the 8 training sequences; using 8",
                              "--grad-accum 3 makes a step of more than the 8 training sequences; using 1",
                              "plan: 1 steps of 8 x 1 sequences (1.00 epochs)",
                              "0/1 steps"}});  // the bar is drawn before the first step ends
  // ---- qlora merge ----
  const std::string merge = "{qlora} merge {M} --quant nf4 --adapter {fixtures}/train_parity/stories260k/initial_adapter ";
  t.push_back({.name = "merge_writes_a_hf_directory",
               .command = merge + "--out merged --dtype bf16",
               .exit_code = 0,
               .stderr_has = {"merged into merged", "model.safetensors", "config.json"},
               .check =
                   [](const CliRun& r) {
                     const auto cfg = nlohmann::json::parse(read_file(r.dir + "/merged/config.json"));
                     EXPECT_EQ(cfg.at("architectures")[0], "LlamaForCausalLM");
                     EXPECT_EQ(cfg.at("torch_dtype"), "bfloat16");
                   }});
  t.push_back({.name = "merge_refuses_an_existing_model",
               .setup = [](const fs::path& d) { put(d, "merged/config.json", "{\"the user's\": \"model\"}"); },
               .command = merge + "--out merged",
               .exit_code = 1,
               .stderr_has = {"merged: already holds a model (config.json)", "--overwrite"}});
  t.push_back({.name = "merge_unknown_dtype",
               .command = merge + "--out merged --dtype int3",
               .exit_code = 1,
               .stderr_has = {"--dtype: unknown value 'int3'"},
               .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(r.dir + "/merged")); }});
  t.push_back({.name = "merge_adapter_weight_not_finite",
               .command = merge + "--adapter {fixtures}/train_parity/stories260k/initial_adapter:inf --out merged",
               .exit_code = 1,
               .stderr_has = {"--adapter: weight 'inf' is not a finite number"}});
  // A merge whose weights overflow: refused, nothing written (not a GGUF of infinities).
  t.push_back({.name = "merge_gguf_overflow_refused",
               .command = "{qlora} merge -m {fixtures}/families/llama/model.gguf --adapter "
                          "{fixtures}/families/llama/default_adapter:1e38 --out mg.gguf",
               .exit_code = 1,
               .stderr_has = {"mg.gguf", "merged weights", "nothing was written"},
               .needs_stories = false,
               .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(fs::path(r.dir) / "mg.gguf")); }});

  // ---- quantize / dequantize / export-adapter never write over their input or an existing output ----
  const std::string src4 = "{fixtures}/quant/linear4bit_source.safetensors";
  t.push_back({.name = "quantize_empty_skip_entry",
               .command = "{qlora} quantize --model " + src4 + " --out q.safetensors --skip ''",
               .exit_code = 1,
               .stderr_has = {"--skip", "empty module name"},
               .needs_stories = false,
               .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(fs::path(r.dir) / "q.safetensors")); }});
  t.push_back({.name = "quantize_out_is_the_input",
               .setup = [](const fs::path& d) { copy_in(d, fixture("quant/linear4bit_source.safetensors"), "in.safetensors"); },
               .command = "{qlora} quantize --model in.safetensors --out in.safetensors --overwrite",
               .exit_code = 1,
               .stderr_has = {"in.safetensors: is the input file itself"},
               .needs_stories = false});
  t.push_back({.name = "quantize_out_exists",
               .setup = [](const fs::path& d) { put(d, "other.safetensors", "the user's own file"); },
               .command = "{qlora} quantize --model " + src4 + " --out other.safetensors",
               .exit_code = 1,
               .stderr_has = {"other.safetensors: already exists", "--overwrite"},
               .needs_stories = false});
  t.push_back({.name = "quantize_overwrite_replaces_the_output",
               .setup = [](const fs::path& d) { put(d, "other.safetensors", "the user's own file"); },
               .command = "{qlora} quantize --model " + src4 + " --out other.safetensors --overwrite",
               .exit_code = 0,
               .stderr_has = {"tensors quantized"},
               .needs_stories = false,
               .replaces_user_files = true});
  t.push_back({.name = "quantize_dir_into_itself",
               .setup =
                   [](const fs::path& d) {
                     copy_in(d, fixture("families/llama/config.json"), "m/config.json");
                     copy_in(d, fixture("families/llama/model.safetensors"), "m/model.safetensors");
                   },
               .command = "{qlora} quantize --model m --out m --overwrite",
               .exit_code = 1,
               .stderr_has = {"m: is the input model's own directory"},
               .needs_stories = false});
  t.push_back({.name = "quantize_dir_into_a_model",
               .setup =
                   [](const fs::path& d) {
                     copy_in(d, fixture("families/llama/config.json"), "m/config.json");
                     copy_in(d, fixture("families/llama/model.safetensors"), "m/model.safetensors");
                     put(d, "other/config.json", "{\"the user's\": \"model\"}");
                   },
               .command = "{qlora} quantize --model m --out other",
               .exit_code = 1,
               .stderr_has = {"other: already holds a model (config.json)", "--overwrite"},
               .needs_stories = false});
  t.push_back({.name = "quantize_a_gguf",
               .command = "{qlora} quantize --model {fixtures}/families/llama/model.gguf --out q.safetensors",
               .exit_code = 1,
               .stderr_has = {"is a GGUF file, not safetensors"},
               .needs_stories = false});
  t.push_back({.name = "dequantize_out_is_the_input",
               .setup = [](const fs::path& d) { copy_in(d, fixture("quant/linear4bit_state.safetensors"), "b4.safetensors"); },
               .command = "{qlora} dequantize --model b4.safetensors --out b4.safetensors --overwrite",
               .exit_code = 1,
               .stderr_has = {"b4.safetensors: is the input file itself"},
               .needs_stories = false});
  t.push_back({.name = "dequantize_unknown_dtype",
               .command = "{qlora} dequantize --model {fixtures}/quant/linear4bit_state.safetensors --out d.safetensors "
                          "--dtype int4",
               .exit_code = 1,
               .stderr_has = {"--dtype: unknown dtype"},
               .stderr_lacks = {"--compute-dtype"},
               .needs_stories = false});
  t.push_back({.name = "export_adapter_over_its_base_model",
               .setup = [](const fs::path& d) { copy_in(d, fixture("families/llama/model.gguf"), "base.gguf"); },
               .command = "{qlora} export-adapter {fixtures}/families/llama/default_adapter -m base.gguf --out base.gguf "
                          "--overwrite",
               .exit_code = 1,
               .stderr_has = {"base.gguf: is the base model's own file"},
               .needs_stories = false});

  // ---- --overwrite-output-dir and --resume never remove what a run did not write ----
  t.push_back({.name = "out_dir_overwrite_keeps_foreign_files_in_a_checkpoint",
               .setup =
                   [earlier_run](const fs::path& d) {
                     earlier_run(d);
                     put(d, "out/checkpoint-50/notes.txt", "the user's notes");
                     put(d, "out/checkpoint-99/sub/data.bin", "the user's data");
                   },
               .command = train + "--data data.txt --overwrite-output-dir",
               .exit_code = 1,
               .stderr_has = {"holds files a training run does not write", "--overwrite-output-dir"}});

  // A checkpoint missing its trainer state is passed over, and the run says so; writing that
  // step again replaces the checkpoint's own files and keeps a file of the user's beside them.
  t.push_back({.name = "resume_passes_over_an_incomplete_checkpoint_and_keeps_user_files",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "{qlora} train {M} --out out --data data.txt --max-steps 3 --save-every 1 -q && "
                          "rm out/checkpoint-2/trainer_state.safetensors && echo notes > out/checkpoint-2/notes.txt && "
                          "{qlora} train {M} --out out --data data.txt --max-steps 3 --save-every 1 --resume",
               .exit_code = 0,
               .stderr_has = {"checkpoint-2 has no trainer_state.safetensors", "passed over",
                              "resuming from out/checkpoint-1 (step 1)"},
               .check =
                   [](const CliRun& r) {
                     const fs::path ck = fs::path(r.dir) / "out/checkpoint-2";
                     EXPECT_EQ(read_file((ck / "notes.txt").string()), "notes\n");
                     EXPECT_TRUE(fs::exists(ck / "trainer_state.safetensors"));
                     EXPECT_TRUE(fs::exists(ck / "adapter_model.safetensors"));
                   }});

  t.push_back({.name = "generate_system_without_chat",
               .command = "{qlora} generate {M} -p Once -n 2 --system 'Be brief.'",
               .exit_code = 1,
               .stderr_has = {"--system", "give --chat too"}});

  // ---- numbers out of range ----
  t.push_back({.name = "threads_absurd",
               .command = "{qlora} generate {M} -p Once -n 2 --threads 99999",
               .exit_code = 1,
               .stderr_has = {"--threads: 99999 is more than this command takes"}});
  t.push_back({.name = "seed_negative",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = train + "--data data.txt --seed -1",
               .exit_code = 105,
               .stderr_has = {"--seed", "whole number"}});
  t.push_back({.name = "seed_too_large",
               .command = "{qlora} generate {M} -p Once -n 2 --seed 99999999999999999999",
               .exit_code = 105,
               .stderr_has = {"--seed", "whole number"}});
  t.push_back({.name = "max_steps_negative",
               .setup = [](const fs::path& d) { put(d, "data.txt", kStory); },
               .command = "{qlora} train {M} --out out --data data.txt --max-steps -5",
               .exit_code = 1,
               .stderr_has = {"--max-steps: must be a positive number"}});
  // A run that cannot fit in this machine's memory is refused before loading (no --max-memory).
  t.push_back({.name = "generate_beyond_available_memory",
               .command = "{qlora} generate --model random:hidden=8192,layers=2000,ffn=28672,heads=64,vocab=32000 "
                          "-p hi -n 2",
               .exit_code = 1,
               .stderr_has = {"of memory available now", "--max-memory"},
               .needs_stories = false});

  // ---- broken weights: NaN / infinity is said, never generated from or saved as a result ----
  // stories260K with NaN in the embedding rows of tokens 0-15 (BOS among them).
  const auto nan_model = [](const fs::path& d) {
    std::string b = read_file(stories());
    for (size_t i = 28; i < 28 + 64 * 16 * 4; ++i) b[i] = '\xFF';
    put(d, "nan.bin", b);
    put(d, "data.txt", kStory);
  };
  t.push_back({.name = "nan_weights_generate",
               .setup = nan_model,
               .command = "{qlora} generate --model nan.bin --tokenizer {tok} -p Once -n 4",
               .exit_code = 1,
               .stderr_has = {"logits", "not finite", "NaN"}});
  t.push_back({.name = "nan_weights_eval",
               .setup = nan_model,
               .command = "{qlora} eval --model nan.bin --tokenizer {tok} --data data.txt",
               .exit_code = 1,
               .stderr_has = {"the loss", "is NaN"}});
  t.push_back({.name = "nan_weights_train_saves_nothing",
               .setup = nan_model,
               .command = "{qlora} train --model nan.bin --tokenizer {tok} --data data.txt --out out --max-steps 2",
               .exit_code = 1,
               .stderr_has = {"NaN/inf at every step", "no adapter is saved"},
               .check = [](const CliRun& r) { EXPECT_FALSE(fs::exists(fs::path(r.dir) / "out/adapter_model.safetensors")); }});
  // A device that never ends: refused at its first NUL byte, not read into memory forever.
  t.push_back({.name = "data_from_dev_zero",
               .command = train + "--data /dev/zero",
               .exit_code = 1,
               .stderr_has = {"/dev/zero", "NUL byte"}});
  t.push_back({.name = "config_model_type_not_a_string",
               .setup = [](const fs::path& d) { put(d, "m/config.json", "{\"model_type\": 5, \"hidden_size\": 64}"); },
               .command = "{qlora} generate --model m -p hi -n 1",
               .exit_code = 1,
               .stderr_has = {"'model_type' must be a string", "not number"},
               .needs_stories = false});
  return t;
}

class UserErrors : public ::testing::TestWithParam<Case> {};

TEST_P(UserErrors, Case) {
  const Case& c = GetParam();
  if (c.needs_stories && !fs::exists(stories())) GTEST_SKIP() << "stories260K not found under " << data_dir();
  TempDir tmp("user_errors_" + c.name);
  const fs::path dir = fs::path(tmp.path()) / "work";
  const fs::path capture = fs::path(tmp.path()) / "capture";
  fs::create_directories(dir);
  fs::create_directories(capture);
  if (c.setup) c.setup(dir);
  const auto before = snapshot(dir);

  const CliRun r = run_case(c, dir, capture);
  const std::string context = "command: " + r.command + "\nstderr:\n" + shown(r.err);

  EXPECT_EQ(r.exit_code, c.exit_code) << context;
  for (const std::string& s : c.stderr_has) {
    EXPECT_NE(r.err.find(s), std::string::npos) << "missing '" << s << "'\n" << context;
  }
  for (const std::string& s : c.stderr_lacks) {
    EXPECT_EQ(r.err.find(s), std::string::npos) << "unwanted '" << s << "'\n" << context;
  }
  if (c.max_stderr_bytes > 0) {
    EXPECT_LE(r.err.size(), c.max_stderr_bytes) << context;
  }
  if (c.clean_bytes) {
    EXPECT_EQ(qlora::first_invalid_utf8(r.err), std::string::npos) << "invalid UTF-8 on stderr\n" << context;
    for (unsigned char ch : r.err)
      if ((ch < 0x20 && ch != '\n') || ch == 0x7F) {
        ADD_FAILURE() << "raw control byte " << static_cast<int>(ch) << " on stderr\n" << context;
        break;
      }
  }
  // The user's files: every one still there, byte for byte.
  const auto after = snapshot(dir);
  for (const auto& [name, hash] : before) {
    if (c.replaces_user_files) break;
    auto it = after.find(name);
    if (it == after.end()) {
      ADD_FAILURE() << name << " was removed\n" << context;
    } else {
      EXPECT_EQ(it->second, hash) << name << " was changed\n" << context;
    }
  }
  if (c.check) c.check(r);
}

INSTANTIATE_TEST_SUITE_P(Table, UserErrors, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
