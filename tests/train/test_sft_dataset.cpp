// Supervised fine-tuning data (src/train/sft_dataset.h): record forms, prompt masking (checked
// by decoding the trained tokens, and against transformers / tokenizers in
// tests/fixtures/data/sft_reference.json from tools/make_sft_fixtures.py), malformed records
// with their file:line, length policies, packing and the eval split.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/tokenizer.h"
#include "train/chat_template.h"
#include "train/sft_dataset.h"

namespace {

namespace fs = std::filesystem;
using qlora::DatasetOptions;
using qlora::Example;
using qlora::LoadedExamples;
using qlora::Tokenizer;

fs::path data_dir() {
  const char* env = std::getenv("QLORA_DATA_DIR");
  return env && *env ? fs::path(env) : fs::path(QLORA_DEFAULT_DATA_DIR);
}
fs::path fixture(const std::string& name) { return fs::path(QLORA_FIXTURE_DIR) / "data" / name; }
fs::path tok512_path() { return data_dir() / "stories260K" / "tok512.bin"; }
fs::path smollm2_gguf_path() { return fs::path(QLORA_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"; }
fs::path sp_llama2_path() { return fs::path(QLORA_FIXTURE_DIR) / "tokenizer" / "sp_llama2"; }

// Tokenizers are loaded once per test binary (the GGUF one reads 49k tokens of metadata).
const Tokenizer& tok512() {
  static const Tokenizer t = Tokenizer::from_file(tok512_path().string());
  return t;
}
const Tokenizer& smollm2() {
  static const Tokenizer t = Tokenizer::from_file(smollm2_gguf_path().string());
  return t;
}

#define REQUIRE_FILE(p)                                                                           \
  do {                                                                                            \
    if (!fs::exists(p)) {                                                                         \
      GTEST_SKIP() << (p) << " is absent (see ../shared/data/README.md / scripts/fetch_model.sh)"; \
    }                                                                                             \
  } while (0)

// A data file in a fresh temporary directory, removed with the object.
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& content) {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("qlora_sft_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
    path_ = (dir_ / name).string();
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  fs::path dir_;
  std::string path_;
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const qlora::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected qlora::Error";
  return "";
}

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "in: " << (haystack) << "\nmissing: " << (needle)

std::vector<int32_t> enc(const Tokenizer& tok, const std::string& s) {
  return tok.encode(s, qlora::EncodeOptions{.add_special_tokens = false, .parse_special = true});
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// The maximal runs of trained tokens (train_mask 1), each decoded with special tokens kept.
std::vector<std::string> trained_runs(const Tokenizer& tok, const Example& ex) {
  std::vector<std::string> runs;
  std::vector<int32_t> cur;
  for (size_t i = 0; i <= ex.tokens.size(); ++i) {
    if (i < ex.tokens.size() && ex.train_mask[i]) {
      cur.push_back(ex.tokens[i]);
    } else if (!cur.empty()) {
      runs.push_back(tok.decode(cur, qlora::DecodeOptions{.skip_special_tokens = false}));
      cur.clear();
    }
  }
  return runs;
}

const std::string kAlpacaNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n";
const std::string kAlpacaInput =
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n";

// ---------------------------------------------------------------------------------------------

TEST(SftOptions, FromString) {
  EXPECT_EQ(qlora::data_format_from_string("auto"), qlora::DataFormat::Auto);
  EXPECT_EQ(qlora::data_format_from_string("text"), qlora::DataFormat::Text);
  EXPECT_EQ(qlora::data_format_from_string("alpaca"), qlora::DataFormat::Alpaca);
  EXPECT_EQ(qlora::data_format_from_string("chat"), qlora::DataFormat::Chat);
  EXPECT_EQ(qlora::bad_record_policy_from_string("skip"), qlora::BadRecordPolicy::Skip);
  EXPECT_EQ(qlora::bad_record_policy_from_string("error"), qlora::BadRecordPolicy::Error);
  EXPECT_EQ(qlora::too_long_policy_from_string("truncate"), qlora::TooLongPolicy::Truncate);
  EXPECT_EQ(qlora::too_long_policy_from_string("skip"), qlora::TooLongPolicy::Skip);
  EXPECT_EQ(qlora::too_long_policy_from_string("error"), qlora::TooLongPolicy::Error);
  EXPECT_HAS(error_of([] { qlora::data_format_from_string("sharegpt"); }), "'sharegpt'");
  EXPECT_HAS(error_of([] { qlora::bad_record_policy_from_string("ignore"); }), "skip or error");
  EXPECT_HAS(error_of([] { qlora::too_long_policy_from_string("cut"); }), "truncate, skip or error");
  EXPECT_EQ((qlora::DataIssue{"d.jsonl", 7, "missing \"output\""}.to_string()), "d.jsonl:7: missing \"output\"");
}

// Alpaca on llama2.c's SentencePiece-style tokenizer: BOS, the exact QLoRA prompt, then the
// output + EOS as the only trained tokens. Each piece gets its own dummy-prefix space, so the
// response tokens are those of " " + output (what QLoRA's script trains on with such tokenizers).
TEST(SftAlpaca, Tok512PromptAndMask) {
  REQUIRE_FILE(tok512_path());
  const Tokenizer& tok = tok512();
  TempFile f("a.jsonl",
             R"({"instruction": "Name a color.", "input": "", "output": "Blue is a color."})"
             "\n"
             R"({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})"
             "\n");
  DatasetOptions opt;
  const LoadedExamples le = qlora::load_examples(f.path(), tok, opt);
  ASSERT_EQ(le.examples.size(), 2u);
  EXPECT_TRUE(le.issues.empty());
  EXPECT_EQ(le.n_records, 2);

  const std::string p0 = kAlpacaNoInput + "Name a color.\n\n### Response: ";
  const std::string p1 = kAlpacaInput + "Add the numbers.\n\n### Input:\n2 and 3\n\n### Response: ";
  const std::vector<int32_t> want0 = cat({{tok.bos_id()}, enc(tok, p0), enc(tok, "Blue is a color."), {tok.eos_id()}});
  const std::vector<int32_t> want1 = cat({{tok.bos_id()}, enc(tok, p1), enc(tok, "5"), {tok.eos_id()}});
  EXPECT_EQ(le.examples[0].tokens, want0);
  EXPECT_EQ(le.examples[1].tokens, want1);
  EXPECT_EQ(le.examples[0].line, 1);
  EXPECT_EQ(le.examples[1].line, 2);

  const size_t n_prompt0 = 1 + enc(tok, p0).size();
  for (size_t i = 0; i < want0.size(); ++i) EXPECT_EQ(le.examples[0].train_mask[i], i >= n_prompt0 ? 1 : 0) << i;
  // The trained tokens decode to the output (the decoder drops the leading dummy space) + EOS.
  const auto runs = trained_runs(tok, le.examples[0]);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0], "Blue is a color." + tok.token_text(tok.eos_id()));
  // The observed SentencePiece effect: the response piece starts with a "▁"-word token, which
  // the prompt's trailing space does not absorb (tokens of prompt+output differ from the pieces').
  // Decoded whole, the example reads "### Response:  Blue" with two spaces.
  EXPECT_NE(cat({enc(tok, p0), enc(tok, "Blue is a color.")}), enc(tok, p0 + "Blue is a color."));
  EXPECT_EQ(tok.decode(le.examples[0].tokens), p0 + " Blue is a color.");
}

// Byte-level BPE (SmolLM2): no prefix, no dummy space; decoding the trained tokens gives back
// exactly output + EOS, and the prompt tokens exactly the Alpaca prompt.
TEST(SftAlpaca, SmolLM2DecodesExactly) {
  REQUIRE_FILE(smollm2_gguf_path());
  const Tokenizer& tok = smollm2();
  ASSERT_TRUE(tok.spec().prefix_ids.empty());
  TempFile f("a.json", R"([{"instruction": "Say it twice.", "input": "echo", "output": " echo  echo\n"}])");
  const LoadedExamples le = qlora::load_examples(f.path(), tok, DatasetOptions{});
  ASSERT_EQ(le.examples.size(), 1u);
  const Example& ex = le.examples[0];
  EXPECT_EQ(ex.tokens.back(), tok.eos_id());
  const auto runs = trained_runs(tok, ex);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0], " echo  echo\n" + tok.token_text(tok.eos_id()));
  const auto first_trained = static_cast<size_t>(std::find(ex.train_mask.begin(), ex.train_mask.end(), 1) - ex.train_mask.begin());
  const std::vector<int32_t> prompt(ex.tokens.begin(), ex.tokens.begin() + static_cast<std::ptrdiff_t>(first_trained));
  EXPECT_EQ(tok.decode(prompt), kAlpacaInput + "Say it twice.\n\n### Input:\necho\n\n### Response: ");
}

TEST(SftText, ObjectAndBareStringAllTrained) {
  REQUIRE_FILE(tok512_path());
  const Tokenizer& tok = tok512();
  TempFile f("t.json", "[{\"text\": \"Once upon a time\"},\n \"a bare string\"]");
  const LoadedExamples le = qlora::load_examples(f.path(), tok, DatasetOptions{});
  ASSERT_EQ(le.examples.size(), 2u);
  EXPECT_EQ(le.examples[0].tokens, cat({{tok.bos_id()}, enc(tok, "Once upon a time"), {tok.eos_id()}}));
  EXPECT_EQ(le.examples[1].tokens, cat({{tok.bos_id()}, enc(tok, "a bare string"), {tok.eos_id()}}));
  EXPECT_EQ(le.examples[0].line, 1);
  EXPECT_EQ(le.examples[1].line, 2);
  for (const Example& ex : le.examples) {
    EXPECT_EQ(ex.train_mask[0], 0);  // BOS is never a target
    EXPECT_TRUE(std::all_of(ex.train_mask.begin() + 1, ex.train_mask.end(), [](uint8_t m) { return m == 1; }));
  }
  // The whole text equals encode with special tokens + EOS (pieces = one piece here).
  EXPECT_EQ(le.examples[0].tokens, cat({tok.encode("Once upon a time"), {tok.eos_id()}}));
}

TEST(SftText, TrainOnPromptTrainsEverythingButTheFirstToken) {
  REQUIRE_FILE(tok512_path());
  TempFile f("a.jsonl", R"({"instruction": "Hi", "output": "Hello"})" "\n");
  DatasetOptions opt;
  opt.train_on_prompt = true;
  const LoadedExamples le = qlora::load_examples(f.path(), tok512(), opt);
  ASSERT_EQ(le.examples.size(), 1u);
  const auto& m = le.examples[0].train_mask;
  EXPECT_EQ(m[0], 0);
  EXPECT_EQ(std::count(m.begin(), m.end(), 1), static_cast<std::ptrdiff_t>(m.size()) - 1);
}

// A plain text file: one document (BOS + text + EOS) in chunks of seq_len + 1 tokens overlapping
// by one, so every token after the first is trained exactly once and no chunk is longer than that.
TEST(SftText, PlainTextFileChunks) {
  REQUIRE_FILE(tok512_path());
  const Tokenizer& tok = tok512();
  const std::string text = "Once upon a time, there was a little girl named Lily. She loved to play outside.\n"
                           "One day, she saw a big, red ball.";
  TempFile f("story.txt", text);
  DatasetOptions opt;
  opt.seq_len = 8;
  const LoadedExamples le = qlora::load_examples(f.path(), tok, opt);
  const std::vector<int32_t> all = cat({tok.encode(text), {tok.eos_id()}});
  EXPECT_EQ(le.n_records, 1);
  const size_t want_chunks = (all.size() - 1 + 7) / 8;
  ASSERT_EQ(le.examples.size(), want_chunks);
  std::vector<int32_t> targets;
  for (size_t k = 0; k < le.examples.size(); ++k) {
    const Example& ex = le.examples[k];
    EXPECT_LE(ex.tokens.size(), 9u);
    if (k + 1 < le.examples.size()) {
      EXPECT_EQ(ex.tokens.size(), 9u);
    }
    EXPECT_EQ(ex.tokens.front(), all[k * 8]);  // overlaps the previous chunk's last token
    for (size_t i = 1; i < ex.tokens.size(); ++i) {
      EXPECT_EQ(ex.train_mask[i], 1);
      targets.push_back(ex.tokens[i]);
    }
  }
  EXPECT_EQ(targets, std::vector<int32_t>(all.begin() + 1, all.end()));
  opt.format = qlora::DataFormat::Chat;
  EXPECT_HAS(error_of([&] { qlora::load_examples(f.path(), tok, opt); }), "plain text");
}

// Chat on SmolLM2's own template (from the GGUF): the trained runs are exactly each assistant
// reply + "<|im_end|>\n", and all tokens decode to the template's full rendering.
TEST(SftChat, SmolLM2TemplateMasksAssistantTurns) {
  REQUIRE_FILE(smollm2_gguf_path());
  const Tokenizer& tok = smollm2();
  ASSERT_FALSE(tok.chat_template().empty());
  const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(R"([
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"}])");
  TempFile f("c.jsonl", nlohmann::ordered_json{{"messages", messages}}.dump() + "\n");
  const LoadedExamples le = qlora::load_examples(f.path(), tok, DatasetOptions{});
  ASSERT_EQ(le.examples.size(), 1u);
  const Example& ex = le.examples[0];
  EXPECT_EQ(trained_runs(tok, ex), (std::vector<std::string>{"Hello! How can I help?<|im_end|>\n",
                                                             "Why did the chicken cross the road?<|im_end|>\n"}));
  const std::string full = qlora::train::render_chat_template(tok.chat_template(), messages, false,
                                                              tok.token_text(tok.bos_id()), tok.token_text(tok.eos_id()));
  EXPECT_EQ(tok.decode(ex.tokens, qlora::DecodeOptions{.skip_special_tokens = false}), full);
  EXPECT_EQ(ex.tokens, enc(tok, full));  // special tokens at every boundary: same ids as one piece
  EXPECT_EQ(ex.tokens.front(), tok.token_id("<|im_start|>").value());  // no extra BOS in front
}

// Records and expected ids/masks from transformers (SmolLM2: alpaca + chat with the GGUF's
// template) and tokenizers (a SentencePiece-style tokenizer.json: alpaca), see tools/make_sft_fixtures.py.
TEST(SftReference, MatchesTransformers) {
  std::ifstream in(fixture("sft_reference.json"));
  ASSERT_TRUE(in.good());
  const nlohmann::json doc = nlohmann::json::parse(in);
  const std::string records = fixture(doc["records"].get<std::string>()).string();
  int compared = 0;
  for (const auto& [name, ref] : doc["tokenizers"].items()) {
    const fs::path tok_path = name == "smollm2" ? smollm2_gguf_path() : sp_llama2_path();
    if (!fs::exists(tok_path)) {
      std::cerr << "note: " << tok_path << " absent, " << name << " not compared\n";
      continue;
    }
    std::optional<Tokenizer> owned;
    if (name != "smollm2") owned.emplace(Tokenizer::from_file(tok_path.string()));
    const Tokenizer& tok = owned ? *owned : smollm2();
    DatasetOptions opt;
    opt.seq_len = 4096;
    // The SentencePiece fixture has no chat template: read as alpaca, its chat records are
    // bad records (skipped).
    if (name != "smollm2") opt.format = qlora::DataFormat::Alpaca;
    const LoadedExamples le = qlora::load_examples(records, tok, opt);
    ASSERT_EQ(le.examples.size(), ref["examples"].size()) << name;
    for (size_t i = 0; i < le.examples.size(); ++i) {
      const auto& want = ref["examples"][i];
      const Example& ex = le.examples[i];
      EXPECT_EQ(ex.line, want["line"].get<int64_t>()) << name;
      EXPECT_EQ(ex.tokens, want["tokens"].get<std::vector<int>>()) << name << " line " << ex.line;
      EXPECT_EQ(ex.train_mask, want["mask"].get<std::vector<uint8_t>>()) << name << " line " << ex.line;
      ++compared;
    }
  }
  if (compared == 0) GTEST_SKIP() << "no reference tokenizer present";
}

// A chat template given in the options on a tokenizer without one (llama2.c's): its BOS/EOS
// strings come from the vocabulary and are parsed back into the special ids.
TEST(SftChat, TemplateFromOptions) {
  REQUIRE_FILE(tok512_path());
  const Tokenizer& tok = tok512();
  TempFile f("c.jsonl",
             R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})"
             "\n");
  DatasetOptions opt;
  // No template: an error naming the data file and line and the tokenizer, whatever the policy.
  const std::string msg = error_of([&] { qlora::load_examples(f.path(), tok, opt); });
  EXPECT_HAS(msg, f.path() + ":1");
  EXPECT_HAS(msg, "chat template");
  EXPECT_HAS(msg, "tok512.bin");

  opt.chat_template =
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
      "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}";
  const LoadedExamples le = qlora::load_examples(f.path(), tok, opt);
  ASSERT_EQ(le.examples.size(), 1u);
  const Example& ex = le.examples[0];
  EXPECT_EQ(ex.tokens, cat({{tok.bos_id()}, enc(tok, "[INST] Hi [/INST]"), enc(tok, "Hello"), {tok.eos_id()}}));
  EXPECT_EQ(std::count(ex.tokens.begin(), ex.tokens.end(), tok.bos_id()), 1);  // the template's BOS only
  const auto runs = trained_runs(tok, ex);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0], "Hello" + tok.token_text(tok.eos_id()));
}

TEST(SftChat, TemplateErrorsAreBadRecords) {
  REQUIRE_FILE(tok512_path());
  TempFile f("c.jsonl",
             R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})" "\n"
             R"({"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]})" "\n"
             R"({"messages": [{"role": "user", "content": "only a question"}]})" "\n");
  DatasetOptions opt;
  opt.chat_template =
      "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
      "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
  const LoadedExamples le = qlora::load_examples(f.path(), tok512(), opt);
  EXPECT_EQ(le.examples.size(), 1u);
  EXPECT_EQ(le.n_records, 3);
  ASSERT_EQ(le.issues.size(), 2u);
  EXPECT_EQ(le.issues[0].line, 2);
  EXPECT_HAS(le.issues[0].why, "Conversation roles must alternate");
  EXPECT_EQ(le.issues[1].line, 3);
  EXPECT_HAS(le.issues[1].why, "no assistant message");
  // With train_on_prompt a conversation without a reply still trains.
  opt.train_on_prompt = true;
  EXPECT_EQ(qlora::load_examples(f.path(), tok512(), opt).examples.size(), 2u);
  opt.on_bad_record = qlora::BadRecordPolicy::Error;
  EXPECT_HAS(error_of([&] { qlora::load_examples(f.path(), tok512(), opt); }), f.path() + ":2: chat template");
}

// A template whose rendering with the reply does not extend the rendering with the generation
// prompt: the prompt/response boundary is undefined, so the record is bad, with a reason.
TEST(SftChat, NonPrefixRenderingIsBadRecord) {
  REQUIRE_FILE(tok512_path());
  TempFile f("c.jsonl", R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})" "\n"
                        R"({"text": "fine"})" "\n");
  DatasetOptions opt;
  opt.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>{% endif %}";
  const LoadedExamples le = qlora::load_examples(f.path(), tok512(), opt);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].line, 1);
  EXPECT_HAS(le.issues[0].why, "cannot separate prompt from response at message 2 (assistant)");
}

// ---- malformed records ------------------------------------------------------------------

TEST(SftMalformed, JsonlSkipReportsEachLine) {
  REQUIRE_FILE(tok512_path());
  const std::string path = fixture("malformed.jsonl").string();
  const LoadedExamples le = qlora::load_examples(path, tok512(), DatasetOptions{});
  EXPECT_EQ(le.n_records, 11);  // 12 lines, one blank
  std::vector<int64_t> good_lines;
  for (const Example& ex : le.examples) good_lines.push_back(ex.line);
  EXPECT_EQ(good_lines, (std::vector<int64_t>{1, 3, 11}));
  const std::vector<std::pair<int64_t, std::string>> want = {
      {4, "missing \"output\""},
      {5, "\"text\" is number, expected a string"},
      {6, "invalid JSON"},
      {7, "record is array"},
      {8, "message 1: missing \"content\""},
      {9, "\"messages\" is string, expected an array"},
      {10, "none of the keys"},
      {12, "\"instruction\" is array"},
  };
  ASSERT_EQ(le.issues.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(le.issues[i].file, path);
    EXPECT_EQ(le.issues[i].line, want[i].first);
    EXPECT_HAS(le.issues[i].why, want[i].second);
    EXPECT_HAS(le.issues[i].to_string(), path + ":" + std::to_string(want[i].first) + ": ");
  }
}

TEST(SftMalformed, JsonlErrorPolicyStopsAtFirstBadLine) {
  REQUIRE_FILE(tok512_path());
  const std::string path = fixture("malformed.jsonl").string();
  DatasetOptions opt;
  opt.on_bad_record = qlora::BadRecordPolicy::Error;
  const std::string msg = error_of([&] { qlora::load_examples(path, tok512(), opt); });
  EXPECT_HAS(msg, path + ":4: missing \"output\"");
}

TEST(SftMalformed, ExplicitFormatRejectsOtherForms) {
  REQUIRE_FILE(tok512_path());
  TempFile f("m.jsonl", R"({"text": "plain"})" "\n" R"({"instruction": "i", "output": "o"})" "\n");
  DatasetOptions opt;
  opt.format = qlora::DataFormat::Alpaca;
  LoadedExamples le = qlora::load_examples(f.path(), tok512(), opt);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].line, 1);
  EXPECT_HAS(le.issues[0].why, "missing \"instruction\"");
  opt.format = qlora::DataFormat::Text;
  le = qlora::load_examples(f.path(), tok512(), opt);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].line, 2);
  EXPECT_HAS(le.issues[0].why, "missing \"text\"");
  opt.format = qlora::DataFormat::Chat;
  opt.on_bad_record = qlora::BadRecordPolicy::Error;
  EXPECT_HAS(error_of([&] { qlora::load_examples(f.path(), tok512(), opt); }), f.path() + ":1: missing \"messages\"");
}

// .json: records are located by the line where each array element starts (multi-line objects,
// blank lines, brackets and commas inside strings).
TEST(SftMalformed, JsonArrayLinesOfRecords) {
  REQUIRE_FILE(tok512_path());
  const std::string path = fixture("records.json").string();
  const LoadedExamples le = qlora::load_examples(path, tok512(), DatasetOptions{});
  EXPECT_EQ(le.n_records, 5);
  std::vector<int64_t> good_lines;
  for (const Example& ex : le.examples) good_lines.push_back(ex.line);
  EXPECT_EQ(good_lines, (std::vector<int64_t>{2, 3, 11}));
  ASSERT_EQ(le.issues.size(), 2u);
  EXPECT_EQ(le.issues[0].to_string(), path + ":8: missing \"output\"");
  EXPECT_EQ(le.issues[1].to_string(), path + ":12: \"input\" is number, expected a string");
  DatasetOptions opt;
  opt.on_bad_record = qlora::BadRecordPolicy::Error;
  EXPECT_EQ(error_of([&] { qlora::load_examples(path, tok512(), opt); }), path + ":8: missing \"output\"");
}

// Files written on Windows: a UTF-8 byte order mark and CRLF line ends change no line number.
TEST(SftMalformed, ByteOrderMarkAndCrlf) {
  REQUIRE_FILE(tok512_path());
  const std::string bom = "\xEF\xBB\xBF";
  TempFile a("w.json", bom + "[\r\n  {\"text\": \"one\"},\r\n\r\n  {\"instruction\": \"two\"}\r\n]\r\n");
  LoadedExamples le = qlora::load_examples(a.path(), tok512(), DatasetOptions{});
  ASSERT_EQ(le.examples.size(), 1u);
  EXPECT_EQ(le.examples[0].line, 2);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].to_string(), a.path() + ":4: missing \"output\"");
  TempFile b("w.jsonl", bom + "{\"text\": \"one\"}\r\n\r\n{\"text\": 1}\r\n{\"text\": \"three\"}\r\n");
  le = qlora::load_examples(b.path(), tok512(), DatasetOptions{});
  ASSERT_EQ(le.examples.size(), 2u);
  EXPECT_EQ(le.examples[0].tokens, cat({{tok512().bos_id()}, enc(tok512(), "one"), {tok512().eos_id()}}));
  EXPECT_EQ(le.examples[1].line, 4);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].line, 3);
}

// File-level problems are errors under both policies.
TEST(SftMalformed, FileLevelErrors) {
  REQUIRE_FILE(tok512_path());
  for (auto policy : {qlora::BadRecordPolicy::Skip, qlora::BadRecordPolicy::Error}) {
    DatasetOptions opt;
    opt.on_bad_record = policy;
    const std::string syntax = fixture("bad_syntax.json").string();
    const std::string m1 = error_of([&] { qlora::load_examples(syntax, tok512(), opt); });
    EXPECT_HAS(m1, syntax + ":3: invalid JSON");
    const std::string not_array = fixture("not_array.json").string();
    EXPECT_HAS(error_of([&] { qlora::load_examples(not_array, tok512(), opt); }), not_array + ": expected a JSON array");
    const std::string empty = fixture("empty.jsonl").string();
    EXPECT_HAS(error_of([&] { qlora::load_examples(empty, tok512(), opt); }), empty + ": the data file is empty");
    EXPECT_HAS(error_of([&] { qlora::load_examples("/nonexistent/d.jsonl", tok512(), opt); }),
               "/nonexistent/d.jsonl: cannot open");
  }
  // Every record bad: nothing to train on is an error that shows the first reason.
  TempFile f("all_bad.jsonl", "{\"x\": 1}\n{\"y\": 2}\n");
  EXPECT_HAS(error_of([&] { qlora::load_examples(f.path(), tok512(), DatasetOptions{}); }),
             "all 2 were skipped (first: " + f.path() + ":1: record has none of the keys");
}

// ---- too long ------------------------------------------------------------------------------

TEST(SftTooLong, Policies) {
  REQUIRE_FILE(tok512_path());
  const Tokenizer& tok = tok512();
  const std::string long_out = "The little dog ran to the park and played with a big red ball all day long.";
  TempFile f("l.jsonl", R"({"instruction": "Hi", "output": ")" + long_out + "\"}\n" +
                            R"({"text": "short"})" "\n");
  const std::string prompt = kAlpacaNoInput + "Hi\n\n### Response: ";
  const size_t n_prompt = 1 + enc(tok, prompt).size();
  const size_t n_full = n_prompt + enc(tok, long_out).size() + 1;

  DatasetOptions opt;
  opt.seq_len = static_cast<int64_t>(n_prompt) + 4;  // the prompt fits, the response does not
  ASSERT_GT(n_full, static_cast<size_t>(opt.seq_len) + 1);
  LoadedExamples le = qlora::load_examples(f.path(), tok, opt);
  ASSERT_EQ(le.examples.size(), 2u);
  EXPECT_EQ(le.n_truncated, 1);
  EXPECT_EQ(le.examples[0].tokens.size(), static_cast<size_t>(opt.seq_len) + 1);
  EXPECT_EQ(std::count(le.examples[0].train_mask.begin(), le.examples[0].train_mask.end(), 1), 5);
  EXPECT_TRUE(le.issues.empty());

  opt.on_too_long = qlora::TooLongPolicy::Skip;
  le = qlora::load_examples(f.path(), tok, opt);
  ASSERT_EQ(le.examples.size(), 1u);
  EXPECT_EQ(le.examples[0].line, 2);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].to_string(), f.path() + ":1: record is " + std::to_string(n_full) +
                                          " tokens, more than seq_len + 1 = " + std::to_string(opt.seq_len + 1));

  opt.on_too_long = qlora::TooLongPolicy::Error;
  EXPECT_HAS(error_of([&] { qlora::load_examples(f.path(), tok, opt); }), f.path() + ":1: record is ");

  // Truncation that leaves no response token: reported, not trained.
  opt.on_too_long = qlora::TooLongPolicy::Truncate;
  opt.seq_len = static_cast<int64_t>(n_prompt) - 1;
  le = qlora::load_examples(f.path(), tok, opt);
  ASSERT_EQ(le.examples.size(), 1u);
  ASSERT_EQ(le.issues.size(), 1u);
  EXPECT_EQ(le.issues[0].line, 1);
  EXPECT_HAS(le.issues[0].why, "no response tokens left after truncation");
}

// ---- sequences --------------------------------------------------------------------------

Example make_example(int n, int first_trained, int64_t line) {
  Example ex;
  for (int i = 0; i < n; ++i) {
    ex.tokens.push_back(static_cast<int>(line * 100 + i));
    ex.train_mask.push_back(i >= first_trained ? 1 : 0);
  }
  ex.line = line;
  return ex;
}

TEST(SftSequences, OnePerExampleWithoutPacking) {
  const std::vector<Example> exs = {make_example(5, 3, 1), make_example(3, 9, 2) /* no target */,
                                    make_example(4, 1, 3)};
  DatasetOptions opt;
  opt.seq_len = 8;
  const auto seqs = qlora::build_sequences(exs, opt);
  ASSERT_EQ(seqs.size(), 2u);
  EXPECT_EQ(seqs[0].inputs, (std::vector<int>{100, 101, 102, 103}));
  EXPECT_EQ(seqs[0].targets, (std::vector<int>{-100, -100, 103, 104}));
  EXPECT_EQ(seqs[0].positions, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(seqs[0].n_targets(), 2);
  EXPECT_EQ(seqs[1].targets, (std::vector<int>{301, 302, 303}));
  const auto st = qlora::dataset_stats(seqs);
  EXPECT_EQ(st.sequences, 2);
  EXPECT_EQ(st.examples, 2);
  EXPECT_EQ(st.tokens, 7);
  EXPECT_EQ(st.target_tokens, 5);
  // An example longer than seq_len + 1 (loaded with another seq_len) is an error, not a silent cut.
  opt.seq_len = 3;
  EXPECT_HAS(error_of([&] { qlora::build_sequences(exs, opt); }), "example at line 1");
}

TEST(SftSequences, PackingGreedyNeverSplits) {
  std::vector<Example> exs;
  const int lens[] = {5, 5, 9, 2, 3, 7, 6, 2, 9, 4};  // 5 + 5 fills a sequence exactly
  for (int i = 0; i < 10; ++i) exs.push_back(make_example(lens[i], i % 3, i + 1));
  DatasetOptions opt;
  opt.seq_len = 8;
  opt.packing = true;
  const auto packed = qlora::build_sequences(exs, opt);
  opt.packing = false;
  const auto single = qlora::build_sequences(exs, opt);
  EXPECT_EQ(single.size(), 10u);
  EXPECT_EQ(qlora::dataset_stats(packed).target_tokens, qlora::dataset_stats(single).target_tokens);
  EXPECT_EQ(qlora::dataset_stats(packed).tokens, qlora::dataset_stats(single).tokens);
  EXPECT_EQ(qlora::dataset_stats(packed).examples, 10);

  // Walk the packed sequences: each example appears whole, in order, its positions from 0.
  size_t next = 0;
  for (size_t s = 0; s < packed.size(); ++s) {
    const auto& q = packed[s];
    ASSERT_LE(q.inputs.size(), 8u);
    ASSERT_EQ(q.targets.size(), q.inputs.size());
    ASSERT_EQ(q.positions.size(), q.inputs.size());
    size_t t = 0;
    for (int e = 0; e < q.n_examples; ++e, ++next) {
      const auto& ref = single[next];
      ASSERT_EQ(q.positions[t], 0);
      for (size_t i = 0; i < ref.inputs.size(); ++i, ++t) {
        EXPECT_EQ(q.inputs[t], ref.inputs[i]);
        EXPECT_EQ(q.targets[t], ref.targets[i]);
        EXPECT_EQ(q.positions[t], static_cast<int32_t>(i));
      }
    }
    EXPECT_EQ(t, q.inputs.size());
    // Greedy: the next example would not have fit.
    if (s + 1 < packed.size()) {
      EXPECT_GT(q.inputs.size() + single[next].inputs.size(), 8u) << "sequence " << s;
    }
  }
  EXPECT_EQ(next, single.size());
  // Positions per example 4 4 8 1 2 6 5 1 8 3, packed greedily into 8: [4 4] [8] [1 2] [6] [5 1] [8] [3].
  std::vector<int> counts;
  for (const auto& q : packed) counts.push_back(q.n_examples);
  EXPECT_EQ(counts, (std::vector<int>{2, 1, 2, 1, 2, 1, 1}));
}

TEST(SftSplit, LastFractionIsEval) {
  std::vector<Example> train;
  for (int i = 0; i < 10; ++i) train.push_back(make_example(3, 1, i + 1));
  std::vector<Example> eval;
  qlora::split_eval(train, eval, 0.25);  // round(2.5) = 3
  ASSERT_EQ(train.size(), 7u);
  ASSERT_EQ(eval.size(), 3u);
  EXPECT_EQ(train.back().line, 7);
  EXPECT_EQ(eval.front().line, 8);
  EXPECT_EQ(eval.back().line, 10);

  std::vector<Example> t2 = train, e2;
  qlora::split_eval(t2, e2, 0.0);
  EXPECT_EQ(t2.size(), 7u);
  EXPECT_TRUE(e2.empty());
  EXPECT_HAS(error_of([&] { qlora::split_eval(t2, e2, 1.0); }), "[0, 1)");
  EXPECT_HAS(error_of([&] { qlora::split_eval(t2, e2, -0.1); }), "[0, 1)");
  EXPECT_HAS(error_of([&] { qlora::split_eval(t2, e2, 0.01); }), "no eval example");
  std::vector<Example> two = {make_example(3, 1, 1), make_example(3, 1, 2)};
  EXPECT_HAS(error_of([&] { qlora::split_eval(two, e2, 0.9); }), "no training example");
}

// The real instruction data: 1100 Alpaca records, none malformed; each example's line is the
// line of its "{" (found here independently: the lines that are exactly "    {").
TEST(SftRealData, InstructionDataLoads) {
  const fs::path path = data_dir() / "text" / "instruction-data.json";
  REQUIRE_FILE(path);
  REQUIRE_FILE(tok512_path());
  DatasetOptions opt;
  opt.seq_len = 512;
  const LoadedExamples le = qlora::load_examples(path.string(), tok512(), opt);
  EXPECT_EQ(le.n_records, 1100);
  EXPECT_EQ(le.examples.size(), 1100u);
  EXPECT_TRUE(le.issues.empty()) << (le.issues.empty() ? "" : le.issues[0].to_string());
  std::ifstream in(path);
  std::vector<int64_t> brace_lines;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n)
    if (line == "    {") brace_lines.push_back(n);
  ASSERT_EQ(brace_lines.size(), 1100u);
  for (size_t i = 0; i < 1100; ++i) ASSERT_EQ(le.examples[i].line, brace_lines[i]) << i;
  std::vector<Example> train = le.examples, eval;
  qlora::split_eval(train, eval, 0.1);
  EXPECT_EQ(eval.size(), 110u);
  opt.packing = true;
  const auto st = qlora::dataset_stats(qlora::build_sequences(train, opt));
  EXPECT_EQ(st.examples, 990);
  EXPECT_GT(st.target_tokens, 0);
  EXPECT_LE(st.tokens, st.sequences * opt.seq_len);
}

}  // namespace
