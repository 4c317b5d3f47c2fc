#include "export/gguf_tokenizer_writer.h"

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "formats/sentencepiece_model.h"
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

namespace {

// Pads to the model's vocabulary as llama.cpp's converter does.
void pad_vocab(std::vector<std::string>& tokens, std::vector<float>* scores, std::vector<int32_t>& types,
               int64_t model_vocab) {
  for (auto i = static_cast<int64_t>(tokens.size()); i < model_vocab; ++i) {
    tokens.push_back("[PAD" + std::to_string(i) + "]");
    if (scores) scores->push_back(-1000.0f);
    types.push_back(kGgufTokenUnused);
  }
}

void write_specials(GgufWriter& w, const TokenizerSpec& s, int32_t bos, int32_t eos, int32_t unk, int32_t pad) {
  if (bos >= 0) w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(bos));
  if (eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(eos));
  if (unk >= 0) w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(unk));
  if (pad >= 0) w.set_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(pad));
  w.set_bool("tokenizer.ggml.add_bos_token", s.prefix_ids.size() == 1 && s.prefix_ids[0] == bos);
  if (s.suffix_ids.size() == 1 && s.suffix_ids[0] == eos) w.set_bool("tokenizer.ggml.add_eos_token", true);
  if (!s.chat_template.empty()) w.set_string("tokenizer.chat_template", s.chat_template);
}

void write_sentencepiece(GgufWriter& w, const TokenizerSpec& s, int64_t model_vocab, const std::string& spm_model,
                         const std::string& where) {
  std::error_code ec;
  SentencePieceModel sp;
  if (!spm_model.empty() && std::filesystem::exists(spm_model, ec)) {
    sp = read_sentencepiece_model(spm_model);
  } else if (s.merge_mode == MergeMode::kScore && s.scores.size() == s.vocab.size()) {
    // A vocabulary that carries its own scores (llama2.c, a GGUF "llama" tokenizer): the
    // pieces are its tokens; <0xNN> tokens are BYTE, the unknown token UNKNOWN, the special
    // tokens CONTROL; the dummy prefix as its normalizer has it.
    sp.unk_id = s.unk_id;
    sp.bos_id = s.bos_id;
    sp.eos_id = s.eos_id;
    sp.pad_id = s.pad_id;
    sp.add_dummy_prefix = false;
    bool spaces_as_meta = false;  // the vocabulary spells spaces "▁" (else literal ' ', as llama2.c)
    for (const NormalizerStep& n : s.normalizer) {
      if (n.kind == NormalizerStep::Kind::kPrepend) sp.add_dummy_prefix = true;
      if (n.kind == NormalizerStep::Kind::kReplace && n.content == "\xE2\x96\x81") spaces_as_meta = true;
    }
    for (size_t i = 0; i < s.vocab.size(); ++i) {
      SentencePieceModel::Piece p;
      p.piece = s.vocab[i];
      if (!spaces_as_meta) {  // GGUF "llama" vocabularies spell spaces "▁", as SentencePiece does
        std::string m;
        for (char c : p.piece) m += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
        p.piece = std::move(m);
      }
      p.score = s.scores[i];
      const std::string& v = s.vocab[i];
      if (static_cast<int32_t>(i) == s.unk_id) p.type = kGgufTokenUnknown;
      else if (v.size() == 6 && v.rfind("<0x", 0) == 0 && v.back() == '>') p.type = kGgufTokenByte;
      sp.pieces.push_back(std::move(p));
    }
    for (const AddedToken& a : s.added_tokens)
      if (a.special && a.id >= 0 && static_cast<size_t>(a.id) < sp.pieces.size() && a.id != s.unk_id)
        sp.pieces[static_cast<size_t>(a.id)].type = kGgufTokenControl;
  } else {
    fail(where, "the tokenizer of " + s.source +
                    " is SentencePiece-style; its tokenizer.model (the SentencePiece model, for the scores llama.cpp "
                    "needs) was not found next to it");
  }
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (const SentencePieceModel::Piece& p : sp.pieces) {
    tokens.push_back(p.piece);
    scores.push_back(p.score);
    // llama.cpp's converter keeps unknown, control, unused and byte pieces; every other
    // piece (user-defined ones included) is NORMAL.
    const bool kept = p.type == kGgufTokenUnknown || p.type == kGgufTokenControl || p.type == kGgufTokenUnused ||
                      p.type == kGgufTokenByte;
    types.push_back(kept ? p.type : kGgufTokenNormal);
  }
  // Added tokens of the Hugging Face tokenizer: special ones CONTROL, others USER_DEFINED,
  // new ids appended (score -1000), as the converter does.
  for (const AddedToken& a : s.added_tokens) {
    if (a.id < 0) continue;
    const auto id = static_cast<size_t>(a.id);
    if (id >= tokens.size()) {
      while (tokens.size() < id) {
        tokens.push_back("[PAD" + std::to_string(tokens.size()) + "]");
        scores.push_back(-1000.0f);
        types.push_back(kGgufTokenUnused);
      }
      tokens.push_back(a.content);
      scores.push_back(-1000.0f);
      types.push_back(a.special ? kGgufTokenControl : kGgufTokenUserDefined);
    } else if (tokens[id] == a.content && types[id] == kGgufTokenNormal) {
      types[id] = a.special ? kGgufTokenControl : kGgufTokenUserDefined;
    }
  }
  pad_vocab(tokens, &scores, types, model_vocab);
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  write_specials(w, s, s.bos_id >= 0 ? s.bos_id : sp.bos_id, s.eos_id >= 0 ? s.eos_id : sp.eos_id,
                 s.unk_id >= 0 ? s.unk_id : sp.unk_id, s.pad_id >= 0 ? s.pad_id : sp.pad_id);
  w.set_bool("tokenizer.ggml.add_space_prefix", sp.add_dummy_prefix);
}

// Gemma 4's kind of tokenizer: BPE by merge rank with byte fallback over UTF-8 characters.
bool gemma4_kind(const TokenizerSpec& s) {
  return s.merge_mode == MergeMode::kRank && s.byte_fallback && !is_byte_level(s);
}

// Gemma 4's: tokenizer.ggml.model "gemma4" (convert_hf_to_gguf.py's Gemma4Model: LlamaHfVocab's
// tokens with score -1000, <0xXX> BYTE, specials CONTROL, other added tokens USER_DEFINED; the
// merges). Refused unless llama.cpp's reading of them encodes the probe text as `tok` does.
void write_gemma4(GgufWriter& w, const Tokenizer& tok, int64_t model_vocab, const std::string& where) {
  const TokenizerSpec& s = tok.spec();
  GgufTokenizerMetadata md;
  md.source = where;
  md.model = "gemma4";
  md.tokens = s.vocab;
  md.token_types.assign(s.vocab.size(), kGgufTokenNormal);
  for (size_t i = 0; i < s.vocab.size(); ++i) {
    const std::string& v = s.vocab[i];
    if (v.size() == 6 && v.rfind("<0x", 0) == 0 && v.back() == '>') md.token_types[i] = kGgufTokenByte;
  }
  for (const AddedToken& a : s.added_tokens)
    if (a.id >= 0 && static_cast<size_t>(a.id) < md.token_types.size())
      md.token_types[static_cast<size_t>(a.id)] = a.special ? kGgufTokenControl : kGgufTokenUserDefined;
  for (const auto& [a, b] : s.merges) md.merges.push_back(a + " " + b);
  if (s.bos_id >= 0) md.bos_token_id = s.bos_id;
  if (s.eos_id >= 0) md.eos_token_id = s.eos_id;
  if (s.unk_id >= 0) md.unknown_token_id = s.unk_id;
  if (s.pad_id >= 0) md.padding_token_id = s.pad_id;
  md.add_bos_token = s.prefix_ids.size() == 1 && s.prefix_ids[0] == s.bos_id;
  const Tokenizer back(tokenizer_spec_from_gguf_metadata(md));
  if (back.encode(kProbe, EncodeOptions{false, true}) != tok.encode(kProbe, EncodeOptions{false, true}))
    fail(where, "llama.cpp's gemma4 tokenizer would split text differently from the tokenizer of " + s.source +
                    " (its normalizer or pre-tokenizer is not Gemma 4's): no GGUF form");
  std::vector<float> scores(md.tokens.size(), -1000.0f);
  pad_vocab(md.tokens, &scores, md.token_types, model_vocab);
  w.set_string("tokenizer.ggml.model", "gemma4");
  w.set_string_array("tokenizer.ggml.tokens", md.tokens);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", md.token_types);
  w.set_string_array("tokenizer.ggml.merges", md.merges);
  write_specials(w, s, s.bos_id, s.eos_id, s.unk_id, s.pad_id);
  w.set_bool("tokenizer.ggml.add_space_prefix", false);
}

}  // namespace

void write_gguf_tokenizer(GgufWriter& w, const Tokenizer& tok, int64_t model_vocab, const std::string& spm_model,
                          const std::string& where, std::string_view arch) {
  const TokenizerSpec& s = tok.spec();
  if (arch == "gemma4" && gemma4_kind(s)) {  // (another kind -- a byte-level BPE -- goes out as below)
    write_gemma4(w, tok, model_vocab, where);
    return;
  }
  if (s.merge_mode != MergeMode::kRank || s.byte_fallback || !is_byte_level(s)) {
    write_sentencepiece(w, s, model_vocab, spm_model, where);
    return;
  }
  const std::string pre = detect_gguf_pre_tokenizer(s);
  if (pre.empty())
    fail(where, "the pre-tokenizer of " + s.source +
                    " matches none of llama.cpp's (tokenizer.ggml.pre); a GGUF of it would tokenize differently");
  std::vector<std::string> tokens = s.vocab;
  // Token types as llama.cpp's converter writes them: added special tokens are CONTROL,
  // other added tokens USER_DEFINED, the rest NORMAL.
  std::vector<int32_t> types(s.vocab.size(), kGgufTokenNormal);
  for (const AddedToken& a : s.added_tokens)
    if (a.id >= 0 && static_cast<size_t>(a.id) < types.size())
      types[static_cast<size_t>(a.id)] = a.special ? kGgufTokenControl : kGgufTokenUserDefined;
  pad_vocab(tokens, nullptr, types, model_vocab);
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  std::vector<std::string> merges;
  merges.reserve(s.merges.size());
  for (const auto& [a, b] : s.merges) merges.push_back(a + " " + b);
  w.set_string_array("tokenizer.ggml.merges", merges);
  write_specials(w, s, s.bos_id, s.eos_id, s.unk_id, s.pad_id);
  w.set_bool("tokenizer.ggml.add_space_prefix", add_prefix_space(s));
}

}  // namespace qlora
