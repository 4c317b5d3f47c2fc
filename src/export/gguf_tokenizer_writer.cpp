#include "export/gguf_tokenizer_writer.h"

#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/tokenizer_gguf.h"

namespace qlora {

namespace {

// Text that tells llama.cpp's pre-tokenizers apart: contractions, digit runs of every
// length, punctuation runs, mixed scripts, newlines and whitespace runs, code.
constexpr const char* kProbe =
    "Hello world! I'm here, you're there; we'll see. They've 1 22 333 4444 55555 666666 "
    "3.14159 1,000,000 $45.67 #tag @user e-mail\n\n\t  indented\r\n"
    "ÀÉÎõü naïve café 中文字符 日本語のテキスト 한국어 العربية русский ελληνικά "
    "emoji 🙂👍🏽 ... !!! ??? --- === <<>> {{}} [[ ]]\n"
    "def f(x):\n    return x**2 + 10  # comment\n"
    "  leading and trailing spaces   \n"
    "UPPER lower MiXeD camelCase snake_case CONSTANT_NAME 'quoted' \"double\"";

bool is_byte_level(const TokenizerSpec& s) {
  for (const PreTokenizerStep& st : s.pre_tokenizer)
    if (st.kind == PreTokenizerStep::Kind::kByteLevel) return true;
  for (const DecoderStep& d : s.decoder)
    if (d.kind == DecoderStep::Kind::kByteLevel) return true;
  return false;
}

bool add_prefix_space(const TokenizerSpec& s) {
  for (const PreTokenizerStep& st : s.pre_tokenizer)
    if (st.kind == PreTokenizerStep::Kind::kByteLevel) return st.add_prefix_space;
  return false;
}

}  // namespace

// The split regexes the spec's pre-tokenizer applies, in llama.cpp's terms (Digits is
// "\p{N}" one digit at a time; a ByteLevel step with use_regex adds the GPT-2 regex), or
// nullopt when a step has no such form.
static std::optional<std::vector<std::string>> split_regexes(const TokenizerSpec& s) {
  std::vector<std::string> out;
  for (const PreTokenizerStep& st : s.pre_tokenizer) {
    switch (st.kind) {
      case PreTokenizerStep::Kind::kSplit:
        if (!st.pattern_is_regex || st.invert || st.behavior != SplitBehavior::kIsolated) return std::nullopt;
        out.push_back(st.pattern);
        break;
      case PreTokenizerStep::Kind::kDigits:
        out.push_back(st.individual_digits ? "\\p{N}" : "\\p{N}+");
        break;
      case PreTokenizerStep::Kind::kByteLevel:
        if (st.use_regex)
          for (const std::string& r : gguf_pre_tokenizer_regexes("default", "tokenizer.ggml.pre")) out.push_back(r);
        break;
      default: return std::nullopt;
    }
  }
  return out;
}

std::string detect_gguf_pre_tokenizer(const TokenizerSpec& spec) {
  // First the pre-tokenizer that applies exactly the same regexes (the name llama.cpp's
  // converter gives such a tokenizer), then any that tokenizes the probe the same way
  // (several can: SmolLM's vocabulary never merges digits, so splitting them first changes
  // nothing).
  if (const auto mine = split_regexes(spec))
    for (const std::string& name : gguf_pre_tokenizer_names())
      if (gguf_pre_tokenizer_regexes(name, "tokenizer.ggml.pre") == *mine) return name;
  const Tokenizer ref(spec);
  const std::vector<int32_t> want = ref.encode(kProbe, EncodeOptions{false, true});
  for (const std::string& name : gguf_pre_tokenizer_names()) {
    // The spec as llama.cpp would read it back: the same tokens, merges and specials, this
    // pre-tokenizer's split regexes, byte-level mapping without its own regex.
    TokenizerSpec g = spec;
    g.normalizer.clear();
    g.pre_tokenizer.clear();
    for (const std::string& re : gguf_pre_tokenizer_regexes(name, "tokenizer.ggml.pre")) {
      PreTokenizerStep st;
      st.kind = PreTokenizerStep::Kind::kSplit;
      st.pattern = re;
      st.behavior = SplitBehavior::kIsolated;
      g.pre_tokenizer.push_back(std::move(st));
    }
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::kByteLevel;
    bl.add_prefix_space = add_prefix_space(spec);
    bl.use_regex = false;
    g.pre_tokenizer.push_back(bl);
    if (Tokenizer(std::move(g)).encode(kProbe, EncodeOptions{false, true}) == want) return name;
  }
  return "";
}

void write_gguf_tokenizer(GgufWriter& w, const Tokenizer& tok, const std::string& where) {
  const TokenizerSpec& s = tok.spec();
  if (s.merge_mode != MergeMode::kRank || s.byte_fallback || !is_byte_level(s))
    fail(where, "GGUF tokenizer metadata is written for byte-level BPE tokenizers (GPT-2, Llama 3, Qwen 2, "
                "SmolLM, ...) only; this one (" + s.source +
                    ") is SentencePiece-style: convert it with llama.cpp's convert_hf_to_gguf.py");
  const std::string pre = detect_gguf_pre_tokenizer(s);
  if (pre.empty())
    fail(where, "the pre-tokenizer of " + s.source +
                    " matches none of llama.cpp's (tokenizer.ggml.pre); a GGUF of it would tokenize differently");
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", s.vocab);
  // Token types as llama.cpp's converter writes them: added special tokens are CONTROL,
  // other added tokens USER_DEFINED, the rest NORMAL.
  std::vector<int32_t> types(s.vocab.size(), kGgufTokenNormal);
  for (const AddedToken& a : s.added_tokens)
    if (a.id >= 0 && static_cast<size_t>(a.id) < types.size())
      types[static_cast<size_t>(a.id)] = a.special ? kGgufTokenControl : kGgufTokenUserDefined;
  w.set_i32_array("tokenizer.ggml.token_type", types);
  std::vector<std::string> merges;
  merges.reserve(s.merges.size());
  for (const auto& [a, b] : s.merges) merges.push_back(a + " " + b);
  w.set_string_array("tokenizer.ggml.merges", merges);
  if (s.bos_id >= 0) w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(s.bos_id));
  if (s.eos_id >= 0) w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(s.eos_id));
  if (s.unk_id >= 0) w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(s.unk_id));
  if (s.pad_id >= 0) w.set_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(s.pad_id));
  w.set_bool("tokenizer.ggml.add_bos_token", s.prefix_ids.size() == 1 && s.prefix_ids[0] == s.bos_id);
  if (s.suffix_ids.size() == 1 && s.suffix_ids[0] == s.eos_id) w.set_bool("tokenizer.ggml.add_eos_token", true);
  w.set_bool("tokenizer.ggml.add_space_prefix", add_prefix_space(s));
  if (!s.chat_template.empty()) w.set_string("tokenizer.chat_template", s.chat_template);
}

}  // namespace qlora
