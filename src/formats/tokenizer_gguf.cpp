#include "formats/tokenizer_gguf.h"

#include <string_view>

#include "base/error.h"
#include "formats/gguf.h"

namespace qlora {
namespace {

constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen3.5's (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN35): Qwen2's, with combining marks (\p{M})
// kept in words and out of the punctuation runs.
constexpr const char* kQwen35 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4o =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTekken =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
    R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreEntry {
  std::vector<std::string_view> names;
  std::vector<const char*> regexes;
};

const std::vector<PreEntry>& pre_table() {
  static const std::vector<PreEntry> table = {
      {{"", "default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion", "phi-2", "roberta-bpe", "granite-docling"},
       {kGpt2}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx",
        "smaug-bpe"},
       {kLlama3}},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "kormo"}, {kQwen2}},
      {{"qwen35"}, {kQwen35}},
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}, {R"(\p{N})", kGpt2}},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}},
      {{"gpt-4o", "llama4"}, {kGpt4o}},
      {{"tekken"}, {kTekken}},
  };
  return table;
}

// "\u2581" back to spaces, <0xXX> tokens back to their bytes, the pieces joined: the decoder of the
// vocabularies that spell spaces "\u2581" with byte fallback (GGUF "llama" and "gemma4").
std::vector<DecoderStep> metaspace_byte_fallback_decoder() {
  DecoderStep rep;
  rep.kind = DecoderStep::Kind::kReplace;
  // (moved-in strings: GCC 12's -Wrestrict misfires on assigning these literals once inlined)
  rep.pattern = std::string("\xE2\x96\x81");
  rep.content = std::string(" ");
  DecoderStep bf;
  bf.kind = DecoderStep::Kind::kByteFallback;
  DecoderStep fuse;
  fuse.kind = DecoderStep::Kind::kFuse;
  return {rep, bf, fuse};
}

}  // namespace

std::vector<std::string> gguf_pre_tokenizer_names() {
  std::vector<std::string> names;
  for (const PreEntry& e : pre_table()) names.emplace_back(e.names.size() > 1 && e.names[0].empty() ? e.names[1] : e.names[0]);
  return names;
}

std::vector<std::string> gguf_pre_tokenizer_regexes(const std::string& pre, const std::string& where) {
  for (const PreEntry& e : pre_table()) {
    for (std::string_view n : e.names) {
      if (n == pre) return {e.regexes.begin(), e.regexes.end()};
    }
  }
  std::string known;
  for (const PreEntry& e : pre_table())
    for (std::string_view n : e.names)
      if (!n.empty()) known += (known.empty() ? "" : ", ") + std::string(n);
  fail(where, "unsupported tokenizer.ggml.pre \"" + pre + "\" (supported: " + known + ")");
}

TokenizerSpec tokenizer_spec_from_gguf_metadata(const GgufTokenizerMetadata& md) {
  const std::string where = md.source.empty() ? std::string("gguf") : md.source;
  TokenizerSpec spec;
  spec.source = where;
  const size_t n = md.tokens.size();
  if (n == 0) fail(where, "tokenizer.ggml.tokens is missing or empty");
  if (!md.token_types.empty() && md.token_types.size() != n)
    fail(where, "tokenizer.ggml.token_type has " + std::to_string(md.token_types.size()) + " entries for " +
                    std::to_string(n) + " tokens");
  if (!md.scores.empty() && md.scores.size() != n)
    fail(where, "tokenizer.ggml.scores has " + std::to_string(md.scores.size()) + " entries for " +
                    std::to_string(n) + " tokens");
  auto opt_id = [&](const std::optional<int64_t>& v, const char* key) -> int32_t {
    if (!v) return -1;
    if (*v < 0 || *v >= static_cast<int64_t>(n))
      fail(where, std::string(key) + " " + std::to_string(*v) + " is outside the vocabulary");
    return static_cast<int32_t>(*v);
  };
  spec.bos_id = opt_id(md.bos_token_id, "tokenizer.ggml.bos_token_id");
  spec.eos_id = opt_id(md.eos_token_id, "tokenizer.ggml.eos_token_id");
  spec.pad_id = opt_id(md.padding_token_id, "tokenizer.ggml.padding_token_id");
  const int32_t unk = opt_id(md.unknown_token_id, "tokenizer.ggml.unknown_token_id");
  for (int32_t id : {opt_id(md.eot_token_id, "tokenizer.ggml.eot_token_id"),
                     opt_id(md.eom_token_id, "tokenizer.ggml.eom_token_id")})
    if (id >= 0 && id != spec.eos_id) spec.eog_ids.push_back(id);
  spec.chat_template = md.chat_template;
  if (!spec.chat_template.empty()) spec.chat_template_source = where + ":tokenizer.chat_template";
  spec.vocab = md.tokens;

  // Added tokens from the token types.
  for (size_t i = 0; i < md.token_types.size(); ++i) {
    const int32_t t = md.token_types[i];
    if (t != kGgufTokenControl && t != kGgufTokenUserDefined && t != kGgufTokenUnknown) continue;
    if (md.tokens[i].empty()) continue;
    AddedToken a;
    a.id = static_cast<int32_t>(i);
    a.content = md.tokens[i];
    a.special = (t != kGgufTokenUserDefined);
    spec.added_tokens.push_back(std::move(a));
  }
  // Named special ids are special even in files without token types.
  for (int32_t id : {spec.bos_id, spec.eos_id, unk}) {
    if (id < 0 || md.tokens[static_cast<size_t>(id)].empty()) continue;
    bool have = false;
    for (const AddedToken& a : spec.added_tokens) have = have || a.id == id;
    if (!have) {
      AddedToken a;
      a.id = id;
      a.content = md.tokens[static_cast<size_t>(id)];
      spec.added_tokens.push_back(std::move(a));
    }
  }
  // Stop tokens by name, as llama.cpp guesses them.
  static const char* const kEogNames[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                          "<|endoftext|>", "<|eom_id|>", "<|end_of_text|>", "<turn|>"};
  for (const AddedToken& a : spec.added_tokens) {
    if (!a.special || a.id == spec.eos_id) continue;
    for (const char* name : kEogNames)
      if (a.content == name) spec.eog_ids.push_back(a.id);
  }

  auto read_merges = [&] {
    spec.merge_mode = MergeMode::kRank;
    spec.merges.reserve(md.merges.size());
    for (size_t i = 0; i < md.merges.size(); ++i) {
      const std::string& m = md.merges[i];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= m.size())
        fail(where, "tokenizer.ggml.merges[" + std::to_string(i) + "] is not \"a b\"");
      spec.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
  };
  if (md.model == "gpt2") {
    read_merges();
    for (const std::string& re : gguf_pre_tokenizer_regexes(md.pre, where)) {
      PreTokenizerStep st;
      st.kind = PreTokenizerStep::Kind::kSplit;
      st.pattern = re;
      st.behavior = SplitBehavior::kIsolated;
      spec.pre_tokenizer.push_back(std::move(st));
    }
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::kByteLevel;
    bl.add_prefix_space = md.add_space_prefix.value_or(false);
    bl.use_regex = false;
    spec.pre_tokenizer.push_back(bl);
    DecoderStep dec;
    dec.kind = DecoderStep::Kind::kByteLevel;
    spec.decoder = {dec};
    spec.unk_id = unk;
    if (md.add_bos_token.value_or(false)) {
      if (spec.bos_id < 0) fail(where, "add_bos_token is set but there is no bos_token_id");
      spec.prefix_ids = {spec.bos_id};
    }
  } else if (md.model == "gemma4") {
    // Gemma 4's (llama.cpp's "gemma4" vocabulary, whatever tokenizer.ggml.pre says): BPE by merge
    // rank over UTF-8 characters -- no byte-level mapping -- of the text with spaces as "▁",
    // split into lines and runs of newlines; pieces with no token fall back to <0xXX> bytes.
    if (md.merges.empty()) fail(where, "tokenizer.ggml.merges is required for a \"gemma4\" tokenizer");
    read_merges();
    spec.byte_fallback = true;
    spec.unk_id = unk;
    spec.normalizer.push_back({NormalizerStep::Kind::kReplace, " ", "\xE2\x96\x81"});
    PreTokenizerStep st;
    st.kind = PreTokenizerStep::Kind::kSplit;
    st.pattern = "[^\\n]+|[\\n]+";
    st.behavior = SplitBehavior::kIsolated;
    spec.pre_tokenizer.push_back(std::move(st));
    spec.decoder = metaspace_byte_fallback_decoder();
    if (md.add_bos_token.value_or(true)) {
      if (spec.bos_id < 0) fail(where, "add_bos_token is set but there is no bos_token_id");
      spec.prefix_ids = {spec.bos_id};
    }
  } else if (md.model == "llama") {
    if (md.scores.empty()) fail(where, "tokenizer.ggml.scores is required for a \"llama\" tokenizer");
    spec.merge_mode = MergeMode::kScore;
    spec.scores = md.scores;
    spec.byte_fallback = true;
    spec.unk_id = unk >= 0 ? unk : 0;
    const bool prefix = md.add_space_prefix.value_or(true);
    if (prefix) spec.normalizer.push_back({NormalizerStep::Kind::kPrepend, "", "\xE2\x96\x81"});
    spec.normalizer.push_back({NormalizerStep::Kind::kReplace, " ", "\xE2\x96\x81"});
    spec.decoder = metaspace_byte_fallback_decoder();
    if (prefix) {
      DecoderStep strip;
      strip.kind = DecoderStep::Kind::kStrip;
      strip.content = " ";
      strip.start = 1;
      spec.decoder.push_back(strip);
    }
    if (md.add_bos_token.value_or(true)) {
      if (spec.bos_id < 0) fail(where, "add_bos_token is set but there is no bos_token_id");
      spec.prefix_ids = {spec.bos_id};
    }
  } else {
    fail(where, "unsupported tokenizer.ggml.model \"" + md.model + "\" (supported: gpt2, llama, gemma4)");
  }
  if (md.add_eos_token.value_or(false)) {
    if (spec.eos_id < 0) fail(where, "add_eos_token is set but there is no eos_token_id");
    spec.suffix_ids = {spec.eos_id};
  }
  return spec;
}

GgufTokenizerMetadata gguf_tokenizer_metadata(const GgufFile& f) {
  GgufTokenizerMetadata md;
  md.source = f.path();
  md.model = std::string(f.get_string("tokenizer.ggml.model"));
  md.pre = std::string(f.get_string_or("tokenizer.ggml.pre", ""));
  md.tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (f.has("tokenizer.ggml.scores")) md.scores = f.get_f32_array("tokenizer.ggml.scores");
  if (f.has("tokenizer.ggml.token_type")) md.token_types = f.get_i32_array("tokenizer.ggml.token_type");
  if (f.has("tokenizer.ggml.merges")) md.merges = f.get_string_array("tokenizer.ggml.merges");
  auto opt_int = [&](const char* key) -> std::optional<int64_t> {
    if (!f.has(key)) return std::nullopt;
    return f.get_i64(key);
  };
  auto opt_bool = [&](const char* key) -> std::optional<bool> {
    if (!f.has(key)) return std::nullopt;
    return f.get_bool(key);
  };
  md.bos_token_id = opt_int("tokenizer.ggml.bos_token_id");
  md.eos_token_id = opt_int("tokenizer.ggml.eos_token_id");
  md.unknown_token_id = opt_int("tokenizer.ggml.unknown_token_id");
  md.padding_token_id = opt_int("tokenizer.ggml.padding_token_id");
  md.eot_token_id = opt_int("tokenizer.ggml.eot_token_id");
  md.eom_token_id = opt_int("tokenizer.ggml.eom_token_id");
  md.add_bos_token = opt_bool("tokenizer.ggml.add_bos_token");
  md.add_eos_token = opt_bool("tokenizer.ggml.add_eos_token");
  md.add_space_prefix = opt_bool("tokenizer.ggml.add_space_prefix");
  md.chat_template = std::string(f.get_string_or("tokenizer.chat_template", ""));
  return md;
}

TokenizerSpec load_gguf_tokenizer(const std::string& path) {
  const GgufFile f(path);
  return tokenizer_spec_from_gguf_metadata(gguf_tokenizer_metadata(f));
}

}  // namespace qlora
