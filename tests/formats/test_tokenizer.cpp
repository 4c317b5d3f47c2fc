// Unit tests of the tokenizer pieces: UTF-8 and Unicode categories, the regex engine,
// BPE merging, the loaders' error handling, streaming decode, fuzz regressions.
// (Comparisons with the reference libraries are in test_tokenizer_reference.cpp.)
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/mapped_file.h"
#include "export/gguf_tokenizer_writer.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/llama2c_tokenizer.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_gguf.h"
#include "formats/tokenizer_json.h"
#include "formats/unicode.h"
#include "formats/unicode_regex.h"

namespace qlora {
namespace {

std::string fixture(const std::string& name) { return std::string(QLORA_FIXTURE_DIR) + "/tokenizer/" + name; }

// ---- Unicode --------------------------------------------------------------------------

TEST(Unicode, DecodeUtf8) {
  using unicode::decode_utf8;
  auto cp = [](std::string_view s) { return decode_utf8(s, 0); };
  EXPECT_EQ(cp("A").cp, 'A');
  EXPECT_EQ(cp("\xC3\xA9").cp, 0xE9u);
  EXPECT_EQ(cp("\xC3\xA9").len, 2);
  EXPECT_EQ(cp("\xF0\x9F\x98\x80").cp, 0x1F600u);
  for (std::string_view bad : {"\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\x80", "\xE4\xB8", "\xFF"}) {
    auto c = cp(bad);
    EXPECT_FALSE(c.valid) << bad;
    EXPECT_EQ(c.len, 1) << bad;
  }
}

TEST(Unicode, Categories) {
  using namespace unicode;
  EXPECT_EQ(category('A'), Lu);
  EXPECT_EQ(category('a'), Ll);
  EXPECT_EQ(category('7'), Nd);
  EXPECT_EQ(category(0xB2), No);      // superscript two
  EXPECT_EQ(category(0x2167), Nl);    // roman numeral eight
  EXPECT_EQ(category(0x4E2D), Lo);    // CJK
  EXPECT_EQ(category(0x301), Mn);     // combining acute
  EXPECT_EQ(category(0x1F600), So);   // emoji
  EXPECT_EQ(category(0xE000), Co);
  EXPECT_EQ(category(0x10FFFF), Cn);
  EXPECT_EQ(category(0x16D40), Lm);   // Kirat Rai (Unicode 16): a letter, as in `tokenizers`
  EXPECT_TRUE(is_whitespace(0x3000));
  EXPECT_TRUE(is_whitespace('\v'));
  EXPECT_FALSE(is_whitespace(0x200B));  // zero width space is not White_Space
  EXPECT_EQ(simple_fold('S'), 's');
  EXPECT_EQ(simple_fold(0x17F), 's');
}

TEST(Unicode, CompleteUtf8Prefix) {
  using unicode::complete_utf8_prefix;
  EXPECT_EQ(complete_utf8_prefix("ab"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xE4\xB8"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xE4\xB8\xAD"), 5u);
  EXPECT_EQ(complete_utf8_prefix("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xFF"), 3u);      // never completes: emit it
  EXPECT_EQ(complete_utf8_prefix("\xE0\x80"), 2u);    // invalid second byte
  EXPECT_EQ(complete_utf8_prefix(""), 0u);
}

// ---- Regex ----------------------------------------------------------------------------

std::vector<std::string> pieces(const unicode::Regex& re, const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  for (auto [b, e] : re.find_all(text)) {
    if (b > pos) out.push_back(text.substr(pos, b - pos));
    out.push_back(text.substr(b, e - b));
    pos = e;
  }
  if (pos < text.size()) out.push_back(text.substr(pos));
  return out;
}

TEST(Regex, Gpt2Split) {
  const unicode::Regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  EXPECT_EQ(pieces(re, "Hello world's  123\t!"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " 123", "\t", "!"}));
  EXPECT_EQ(pieces(re, "caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87  "),
            (std::vector<std::string>{"caf\xC3\xA9", " \xE4\xB8\xAD\xE6\x96\x87", "  "}));
}

TEST(Regex, Qwen35KeepsCombiningMarksInWords) {
  // tokenizer.ggml.pre "qwen35" (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN35): "cafe" + U+0301
  // COMBINING ACUTE is one word, where qwen2's pattern leaves the mark to start the next piece
  // (as the optional non-letter before "s"); digits one by one.
  const unicode::Regex q35(gguf_pre_tokenizer_regexes("qwen35", "test").at(0));
  const unicode::Regex q2(gguf_pre_tokenizer_regexes("qwen2", "test").at(0));
  const std::string text = "cafe\xCC\x81s 42";
  EXPECT_EQ(pieces(q35, text), (std::vector<std::string>{"cafe\xCC\x81s", " ", "4", "2"}));
  EXPECT_EQ(pieces(q2, text), (std::vector<std::string>{"cafe", "\xCC\x81s", " ", "4", "2"}));
}

TEST(Regex, Features) {
  auto first = [](const char* pat, const std::string& text) {
    const unicode::Regex re(pat);
    size_t b, e;
    if (!re.search(text, 0, &b, &e)) return std::string("<none>");
    return text.substr(b, e - b);
  };
  EXPECT_EQ(first("(?i:'s|'t)", "it'S"), "'S");
  EXPECT_EQ(first(R"(\p{N}{1,3})", "x12345"), "123");
  EXPECT_EQ(first("x{2,3}?y", "xxxy"), "xxxy");
  EXPECT_EQ(first("a+?", "aaa"), "a");
  EXPECT_EQ(first(R"(\s+$)", "a  \nb"), "  ");
  EXPECT_EQ(first(R"(\bab\b)", "cab ab"), "ab");
  EXPECT_EQ(first(R"([^\r\n\p{L}\p{N}]?\p{L}+)", "  Hello"), " Hello");
  EXPECT_EQ(first(R"([\x{4E00}-\x{9FA5}]+)", "ab\xE4\xB8\xAD\xE6\x96\x87!"), "\xE4\xB8\xAD\xE6\x96\x87");
  EXPECT_EQ(first(R"(\u0041+)", "zAAz"), "AA");
  EXPECT_EQ(first("$", "ab"), "");
  EXPECT_EQ(first("q", "ab"), "<none>");
  // A nested class is a union (Oniguruma), as in BLOOM's split regex.
  EXPECT_EQ(first(R"(x[a[bc]]+)", "xcbad"), "xcba");
  EXPECT_EQ(first(R"( ?[^(\s|[.,!?])]+)", "(hi there!"), "hi");
}

TEST(Regex, RejectsBadPatterns) {
  for (const char* bad : {"(", "a)", "[a", "a{3,2}", "(?<=a)b", R"(\1)", R"(\p{Foo})", "(?!ab)", "*a",
                          "a*+", "[[:alpha:]]", "[a[^b]]", R"(\q)", "a{2000}", R"(\x{110000})"}) {
    EXPECT_THROW(unicode::Regex re(bad), Error) << bad;
  }
}

TEST(Regex, LinearTimeOnPathologicalPatterns) {
  const std::string text(200000, 'a');
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(unicode::Regex("(a*)*b").find_all(text).empty());
  EXPECT_TRUE(unicode::Regex("(a|aa)+c").find_all(text).empty());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 5.0);
}

// ---- BPE on hand-made specs -------------------------------------------------------------

TokenizerSpec tiny_spec() {
  TokenizerSpec s;
  s.source = "tiny";
  s.vocab = {"a", "b", "c", "ab", "bc", "abc"};
  s.merges = {{"a", "b"}, {"ab", "c"}, {"b", "c"}};
  return s;
}

TEST(Bpe, MergesByRank) {
  TokenizerSpec s = tiny_spec();
  EXPECT_EQ(Tokenizer(s).encode("abc"), (std::vector<int32_t>{5}));
  s.merges = {{"b", "c"}, {"a", "b"}, {"ab", "c"}};
  EXPECT_EQ(Tokenizer(s).encode("abc"), (std::vector<int32_t>{0, 4}));
  EXPECT_EQ(Tokenizer(s).encode("abab"), (std::vector<int32_t>{3, 3}));
  // Characters outside the vocabulary without unk/byte fallback are dropped (as `tokenizers`).
  EXPECT_EQ(Tokenizer(s).encode("axb"), (std::vector<int32_t>{3}));
  s.vocab.push_back("<unk>");
  s.unk_id = 6;
  s.fuse_unk = true;
  EXPECT_EQ(Tokenizer(s).encode("axxb"), (std::vector<int32_t>{0, 6, 1}));
}

TEST(Bpe, MergesByScoreLikeLlama2c) {
  TokenizerSpec s;
  s.merge_mode = MergeMode::kScore;
  s.vocab = {"a", "b", "c", "ab", "bc"};
  s.scores = {0, 0, 0, -2, -1};
  EXPECT_EQ(Tokenizer(s).encode("abc"), (std::vector<int32_t>{0, 4}));  // "bc" scores higher
  s.scores = {0, 0, 0, -1, -2};
  EXPECT_EQ(Tokenizer(s).encode("abc"), (std::vector<int32_t>{3, 2}));
  s.scores = {0, 0, 0, -1, -1};
  EXPECT_EQ(Tokenizer(s).encode("abcbc"), (std::vector<int32_t>{3, 2, 4}));  // ties go left
  // Any two tokens whose concatenation is a token merge, also merged ones.
  s.vocab.push_back("abc");
  s.scores = {0, 0, 0, -2, -1, -3};
  EXPECT_EQ(Tokenizer(s).encode("abc"), (std::vector<int32_t>{5}));
}

TEST(Bpe, ByteFallbackAndStreaming) {
  TokenizerSpec s;
  s.vocab = {"<unk>", "\xE2\x96\x81", "h", "i"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    s.vocab.push_back(name);
  }
  s.byte_fallback = true;
  s.unk_id = 0;
  s.normalizer = {{NormalizerStep::Kind::kPrepend, "", "\xE2\x96\x81"}, {NormalizerStep::Kind::kReplace, " ", "\xE2\x96\x81"}};
  DecoderStep rep;
  rep.pattern = "\xE2\x96\x81";
  rep.content = " ";
  DecoderStep bf, fuse, strip;
  bf.kind = DecoderStep::Kind::kByteFallback;
  fuse.kind = DecoderStep::Kind::kFuse;
  strip.kind = DecoderStep::Kind::kStrip;
  strip.content = " ";
  strip.start = 1;
  s.decoder = {rep, bf, fuse, strip};
  const Tokenizer tok(s);
  const std::string text = "hi \xE4\xB8\xAD!";  // 中 and ! are not in the vocabulary
  const auto ids = tok.encode(text);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 2, 3, 1, 4 + 0xE4, 4 + 0xB8, 4 + 0xAD, 4 + '!'}));
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.token_to_piece(1), " ");
  EXPECT_EQ(tok.token_to_piece(4 + '\n'), "\n");
  // Streaming holds the first two bytes of 中 back until the third arrives.
  StreamDecoder stream(tok);
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(stream.push(id));
  EXPECT_EQ(out, (std::vector<std::string>{"", "h", "i", " ", "", "", "\xE4\xB8\xAD", "!"}));
  EXPECT_EQ(stream.flush(), "");
  // An unfinished character comes out of flush().
  StreamDecoder s2(tok);
  EXPECT_EQ(s2.push(4 + 0xE4), "");
  EXPECT_EQ(s2.flush(), "\xE4");
  // Invalid UTF-8 round-trips exactly.
  EXPECT_EQ(tok.decode(tok.encode("\xFF\xFE h")), "\xFF\xFE h");
}

TEST(Bpe, AddedTokensOptions) {
  TokenizerSpec s = tiny_spec();
  s.vocab.push_back(" ");
  AddedToken eot{100, "<eot>", true};
  AddedToken user{101, "<u>", false};
  AddedToken lstrip{102, "<m>", true, /*lstrip=*/true};
  AddedToken word{103, "ab", false, false, false, /*single_word=*/true};
  s.added_tokens = {eot, user, lstrip, word};
  s.eos_id = 100;
  s.prefix_ids = {100};
  const Tokenizer tok(s);
  EXPECT_EQ(tok.vocab_size(), 104);
  EXPECT_EQ(tok.encode("a<eot>b", {.add_special_tokens = false}), (std::vector<int32_t>{0, 100, 1}));
  EXPECT_EQ(tok.encode("a<eot>b"), (std::vector<int32_t>{100, 0, 100, 1}));
  // parse_special = false: special tokens are text, non-special added tokens still match.
  EXPECT_EQ(tok.encode("<eot><u>", {.add_special_tokens = false, .parse_special = false}).back(), 101);
  EXPECT_EQ(tok.encode("a  <m>", {.add_special_tokens = false}), (std::vector<int32_t>{0, 102}));
  EXPECT_EQ(tok.encode("ab c", {.add_special_tokens = false}).front(), 103);   // a word on its own
  EXPECT_EQ(tok.encode("cab", {.add_special_tokens = false}).back(), 3);       // inside a word: BPE
  EXPECT_EQ(tok.decode(std::vector<int32_t>{100, 0}), "a");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{100, 0}, {.skip_special_tokens = false}), "<eot> a");  // no decoder: ' '-joined
  EXPECT_TRUE(tok.is_end_of_generation(100));
  EXPECT_EQ(tok.token_id("<u>"), 101);
  EXPECT_EQ(tok.token_id("bc"), 4);
  EXPECT_FALSE(tok.token_id("zz").has_value());
  EXPECT_THROW(tok.decode(std::vector<int32_t>{104}), Error);
  EXPECT_THROW(tok.decode(std::vector<int32_t>{-1}), Error);
}

TEST(Bpe, InconsistentSpecsAreErrors) {
  TokenizerSpec s = tiny_spec();
  s.merges.push_back({"c", "a"});  // "ca" is not a token
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_spec();
  s.prefix_ids = {99};
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_spec();
  s.added_tokens = {AddedToken{-5, "x"}};
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_spec();
  s.merge_mode = MergeMode::kScore;  // no scores
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_spec();
  PreTokenizerStep bad;
  bad.pattern = "(";
  s.pre_tokenizer = {bad};
  EXPECT_THROW(Tokenizer{s}, Error);
  EXPECT_THROW(Tokenizer{TokenizerSpec{}}, Error);
}

// ---- tokenizer.json ---------------------------------------------------------------------

std::string minimal_json(const std::string& extra = "", const std::string& model_extra = "") {
  return R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3, "</s>": 4}, "merges": ["a b"])" +
         model_extra + "}" + extra + "}";
}

TEST(TokenizerJson, MinimalAndConfig) {
  const std::string added =
      R"(, "added_tokens": [{"id": 3, "content": "<s>", "special": true}, {"id": 4, "content": "</s>", "special": true}])";
  TokenizerSpec s = tokenizer_spec_from_json(minimal_json(added), "", "t.json");
  EXPECT_EQ(Tokenizer(s).encode("ab"), (std::vector<int32_t>{2}));
  // tokenizer_config.json add_bos/add_eos decide BOS/EOS.
  s = tokenizer_spec_from_json(minimal_json(added),
                               R"({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true,
                                   "add_eos_token": true, "chat_template": [{"name": "tool_use", "template": "T"},
                                   {"name": "default", "template": "D"}]})",
                               "t.json");
  const Tokenizer tok(s);
  EXPECT_EQ(tok.encode("ab"), (std::vector<int32_t>{3, 2, 4}));
  EXPECT_EQ(tok.bos_id(), 3);
  EXPECT_EQ(tok.eos_id(), 4);
  EXPECT_EQ(tok.chat_template(), "D");
  // [a, b] pair merges (newer files).
  s = tokenizer_spec_from_json(R"({"model": {"vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}})", "", "t");
  EXPECT_EQ(Tokenizer(s).encode("ab"), (std::vector<int32_t>{2}));
}

TEST(TokenizerJson, BadInputIsAnError) {
  const std::vector<std::string> bad = {
      "",
      "{",
      "[]",
      R"({"model": 3})",
      R"({"model": {"type": "Unigram", "vocab": []}})",
      R"({"model": {"type": "BPE", "vocab": {"a": -1}}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 99999999}}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 1000000}}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}}})",
      R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [3]}})",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "<unk>"}})",
      minimal_json(R"(, "pre_tokenizer": {"type": "BertPreTokenizer"})"),
      minimal_json(R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"})"),
      minimal_json(R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"})"),
      minimal_json(R"(, "normalizer": {"type": "Lowercase"})"),
      minimal_json(R"(, "decoder": {"type": "WordPiece"})"),
      minimal_json(R"(, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>"}}]})"),
      minimal_json(R"(, "added_tokens": [{"id": 7}])"),
      minimal_json(R"(, "added_tokens": [{"id": 7, "content": ""}])"),
      minimal_json("", R"(, "continuing_subword_prefix": "##")"),
      minimal_json(R"(, "pre_tokenizer": {"type": "Metaspace", "replacement": ""})"),
  };
  for (const std::string& j : bad) {
    EXPECT_THROW(Tokenizer(tokenizer_spec_from_json(j, "", "bad.json")), Error) << j;
  }
  EXPECT_THROW(tokenizer_spec_from_json(minimal_json(), "{", "t.json"), Error);
  EXPECT_THROW(tokenizer_spec_from_json(minimal_json(), R"({"add_bos_token": true})", "t.json"), Error);
  EXPECT_THROW(load_hf_tokenizer("/nonexistent/dir"), Error);
}

TEST(TokenizerJson, ErrorNamesTheFile) {
  try {
    tokenizer_spec_from_json(R"({"model": {"type": "WordPiece"}})", "", "/models/x/tokenizer.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/models/x/tokenizer.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("WordPiece"), std::string::npos) << e.what();
  }
}

// ---- llama2.c ----------------------------------------------------------------------------

std::vector<uint8_t> llama2c_bytes(const std::vector<std::pair<std::string, float>>& toks) {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  };
  int32_t max_len = 16;
  put(&max_len, 4);
  for (const auto& [t, score] : toks) {
    const auto len = static_cast<int32_t>(t.size());
    put(&score, 4);
    put(&len, 4);
    put(t.data(), t.size());
  }
  return b;
}

TEST(Llama2cTokenizer, ParsesAndRejects) {
  const auto good = llama2c_bytes({{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}, {" ", -1}, {"a", -2}, {" a", -3}});
  const Tokenizer tok(tokenizer_spec_from_llama2c(good, "mem"));
  EXPECT_EQ(tok.encode("a a"), (std::vector<int32_t>{1, 5, 5}));
  EXPECT_EQ(tok.decode(tok.encode("a a")), "a a");
  EXPECT_THROW(tokenizer_spec_from_llama2c(good, "mem", 7), Error);
  for (size_t cut : {size_t{0}, size_t{2}, size_t{6}, size_t{10}, good.size() - 1}) {
    std::vector<uint8_t> t(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
    EXPECT_THROW(tokenizer_spec_from_llama2c(t, "mem"), Error) << cut;
  }
  auto bad_len = good;
  bad_len[8] = 0xFF;  // first token's length
  EXPECT_THROW(tokenizer_spec_from_llama2c(bad_len, "mem"), Error);
  EXPECT_THROW(load_llama2c_tokenizer("/nonexistent/tok.bin"), Error);
}

// ---- GGUF metadata -------------------------------------------------------------------------

// llama.cpp's "gemma4" vocabulary (tools/make_gemma4_tokenizer_fixture.py): its token ids from
// llama.cpp itself for lines, newline runs, repeated spaces, merges by rank, byte fallback
// (characters and an emoji outside the vocabulary) and Gemma 4's turn markers.
TEST(GgufTokenizer, Gemma4VocabularyMatchesLlamaCpp) {
  const std::string dir = fixture("gemma4_gguf");
  const Tokenizer tok(load_gguf_tokenizer(dir + "/vocab.gguf"));
  std::ifstream in(dir + "/expected.json");
  const nlohmann::json ref = nlohmann::json::parse(in);
  ASSERT_GE(ref.at("cases").size(), 10u);
  for (const auto& c : ref.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok.encode(text), c.at("ids").get<std::vector<int32_t>>()) << text;
    const auto no_bos = c.at("ids_no_bos").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text, {.add_special_tokens = false}), no_bos) << text;
    EXPECT_EQ(tok.decode(no_bos, {.skip_special_tokens = false}), c.at("decoded").get<std::string>()) << text;
  }
  // <turn|> ends a turn (as llama.cpp guesses end-of-generation tokens by name).
  EXPECT_TRUE(tok.is_end_of_generation(6));
}

// A gemma4 GGUF written from a Gemma 4 tokenizer (a merge, from a Hugging Face directory) holds
// it as llama.cpp's "gemma4" vocabulary again; one of that kind that splits text otherwise (here
// an extra pre-tokenizer split) has no such form.
TEST(GgufTokenizer, Gemma4VocabularyIsWrittenAsGemma4) {
  const std::string dir = fixture("gemma4_gguf");
  const Tokenizer tok(load_gguf_tokenizer(dir + "/vocab.gguf"));
  GgufWriter w;
  write_gguf_tokenizer(w, tok, tok.vocab_size() + 3, "", "out.gguf", "gemma4");
  const std::string path =
      (std::filesystem::temp_directory_path() / ("qlora_gemma4_tok_" + std::to_string(::getpid()) + ".gguf")).string();
  w.write(path);
  const GgufFile f(path);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gemma4");
  EXPECT_EQ(f.array_size("tokenizer.ggml.tokens"), static_cast<uint64_t>(tok.vocab_size() + 3));  // (padded)
  const Tokenizer back(tokenizer_spec_from_gguf_metadata(gguf_tokenizer_metadata(f)));
  std::filesystem::remove(path);
  std::ifstream in(dir + "/expected.json");
  for (const auto& c : nlohmann::json::parse(in).at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(back.encode(text), tok.encode(text)) << text;
  }
  TokenizerSpec other = tok.spec();
  PreTokenizerStep split;
  split.kind = PreTokenizerStep::Kind::kSplit;
  split.pattern = "a";
  split.behavior = SplitBehavior::kIsolated;
  other.pre_tokenizer.push_back(split);
  GgufWriter w2;
  EXPECT_THROW(write_gguf_tokenizer(w2, Tokenizer(std::move(other)), tok.vocab_size(), "", "out.gguf", "gemma4"), Error);
}

TEST(GgufTokenizer, BuildsAndRejects) {
  GgufTokenizerMetadata md;
  md.source = "m.gguf";
  md.model = "gpt2";
  md.pre = "llama-bpe";
  md.tokens = {"<|bos|>", "a", "b", "ab", "\xC4\xA0", "\xC4\xA0" "a"};  // Ġ = byte-level space
  md.token_types = {3, 1, 1, 1, 1, 1};
  md.merges = {"a b", "\xC4\xA0 a"};
  md.bos_token_id = 0;
  md.add_bos_token = true;
  const Tokenizer tok(tokenizer_spec_from_gguf_metadata(md));
  EXPECT_EQ(tok.encode("ab a"), (std::vector<int32_t>{0, 3, 5}));
  EXPECT_EQ(tok.encode("<|bos|>ab", {.add_special_tokens = false}), (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(tok.decode(tok.encode("ab a")), "ab a");

  auto bad = md;
  bad.model = "bert";
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
  bad = md;
  bad.pre = "no-such-pre";
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
  bad = md;
  bad.token_types.pop_back();
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
  bad = md;
  bad.bos_token_id = 6;
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
  bad = md;
  bad.merges = {"ab"};
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
  bad = md;
  bad.merges = {"b a"};  // "ba" is not a token
  EXPECT_THROW(Tokenizer(tokenizer_spec_from_gguf_metadata(bad)), Error);
  bad = md;
  bad.model = "llama";  // needs scores
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
  bad = md;
  bad.tokens.clear();
  EXPECT_THROW(tokenizer_spec_from_gguf_metadata(bad), Error);
}

// ---- fuzz regressions ------------------------------------------------------------------------

// Inputs the fuzzer (fuzz/fuzz_tokenizer_json.cpp) once crashed or hung on: each must
// now parse into a tokenizer or be refused with an Error, and encode/decode must work.
TEST(TokenizerJson, FuzzRegressions) {
  const std::filesystem::path dir = fixture("fuzz_regressions");
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no regressions recorded";
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".json") continue;
    ++n;
    try {
      const std::string data = read_text_file(entry.path().string());  // (refuses a NUL byte)
      const Tokenizer tok(tokenizer_spec_from_json(data, "", entry.path().string()));
      const auto ids = tok.encode("Hello wörld 123 <s> \xF0\x9F\x98\x80!");
      (void)tok.decode(ids);
    } catch (const Error&) {
      // a clean refusal is fine
    }
  }
  EXPECT_GT(n, 0);
}

}  // namespace
}  // namespace qlora
