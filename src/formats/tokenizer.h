#pragma once
// Tokenizers: text <-> token ids for the models qlora.cpp loads.
//
// One engine covers the BPE tokenizers of the LLMs we run:
//   - byte-level BPE (GPT-2, Llama 3, Qwen 2, SmolLM, ...): a split regex, bytes mapped to
//     printable characters, merges by rank;
//   - SentencePiece-style BPE (Llama 2, Mistral, TinyLlama, llama2.c): spaces become "▁",
//     a dummy "▁" prefix, merges by rank (tokenizer.json) or by score (llama2.c, GGUF
//     "llama"), <0xNN> byte fallback for characters outside the vocabulary.
//
// A TokenizerSpec is the plain description every loader fills (tokenizer_json.h,
// llama2c_tokenizer.h, tokenizer_gguf.h); Tokenizer compiles it once (vocabulary maps,
// merge table, regexes) and is then immutable: encode/decode are const and may be
// called from several threads at once.
//
// The pipeline mirrors Hugging Face `tokenizers`, whose output is the reference:
//   split out added tokens -> normalizer -> pre-tokenizer -> BPE on each piece ->
//   post-processor (BOS/EOS); decode runs the decoder steps on the token strings.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlora {

// How Split and friends treat the delimiter (the regex match), as in `tokenizers`.
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };
// When Metaspace puts "▁" in front of a piece.
enum class PrependScheme { kAlways, kFirst, kNever };

struct NormalizerStep {
  enum class Kind {
    kPrepend,       // put `content` in front of non-empty text
    kReplace,       // replace every occurrence of the literal `pattern` with `content`
    kReplaceRegex,  // same, with `pattern` a regex (unicode_regex.h)
    kStrip,         // remove whitespace at the left (strip_left) / right (strip_right)
    kNfc,           // Unicode NFC (unicode_nfc.h): GPT-NeoX / Pythia
  };
  Kind kind = Kind::kReplace;
  std::string pattern;
  std::string content;
  bool strip_left = false, strip_right = false;
};

struct PreTokenizerStep {
  enum class Kind {
    kSplit,            // `pattern` (regex, or literal when !pattern_is_regex), behavior, invert
    kByteLevel,        // add_prefix_space, use_regex (the GPT-2 regex), then bytes -> chars
    kMetaspace,        // ' ' -> replacement, prepend_scheme, split on the replacement
    kDigits,           // digit runs (or each digit when individual_digits) become pieces
    kWhitespace,       // \w+|[^\w\s]+ kept, the rest dropped
    kWhitespaceSplit,  // split on whitespace, whitespace dropped
    kPunctuation,      // each punctuation character (ASCII punctuation or a Unicode P* category,
                       // as tokenizers' is_punc) is a delimiter, kept per `behavior` (Falcon:
                       // Contiguous)
  };
  Kind kind = Kind::kSplit;
  std::string pattern;
  bool pattern_is_regex = true;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
  bool use_regex = true;
  std::string replacement = "\xE2\x96\x81";  // "▁"
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;
  bool individual_digits = false;
};

struct DecoderStep {
  enum class Kind {
    kByteLevel,     // printable chars back to bytes
    kReplace,       // literal `pattern` -> `content` in every token
    kByteFallback,  // "<0xNN>" tokens -> the byte NN
    kFuse,          // join all tokens into one
    kStrip,         // drop up to `start` leading / `stop` trailing `content` chars per token
    kMetaspace,     // replacement -> ' ', and the first token loses its leading space
                    // unless prepend_scheme is kNever
  };
  Kind kind = Kind::kReplace;
  std::string pattern;
  std::string content;
  int start = 0, stop = 0;
  std::string replacement = "\xE2\x96\x81";
  PrependScheme prepend_scheme = PrependScheme::kAlways;
};

// A token matched in the raw text before anything else (special tokens such as
// <|im_start|>, and user-added ones). Options as in `tokenizers`' AddedToken.
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = true;       // special: skipped by decode(skip_special), matched only when
                             // EncodeOptions::parse_special
  bool lstrip = false;       // swallow whitespace on the left
  bool rstrip = false;       // swallow whitespace on the right
  bool single_word = false;  // only match when not inside a word
  bool normalized = false;   // matched in the normalized text instead of the raw text
};

enum class MergeMode {
  kRank,   // `merges`, best first (tokenizer.json, GGUF "gpt2")
  kScore,  // the pair whose concatenation is the token with the highest `scores` entry
           // merges first (llama2.c, GGUF "llama" / SentencePiece); ties go left
};

struct TokenizerSpec {
  std::string source;  // file the spec came from, for error messages

  // The model: vocab[id] is the token as the model spells it (byte-level characters
  // for byte-level BPE, "▁" for spaces in SentencePiece vocabularies).
  std::vector<std::string> vocab;
  MergeMode merge_mode = MergeMode::kRank;
  std::vector<std::pair<std::string, std::string>> merges;  // kRank
  std::vector<float> scores;                                // kScore: one per vocab entry
  bool byte_fallback = false;  // unknown characters -> <0xNN> tokens
  bool fuse_unk = false;       // consecutive unknown characters -> one unk
  bool ignore_merges = false;  // a piece that is a whole vocab token is taken as is
  int32_t unk_id = -1;

  std::vector<AddedToken> added_tokens;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<DecoderStep> decoder;  // empty: tokens joined with ' ' (as `tokenizers`)

  // What encode(add_special_tokens = true) puts around the text: usually {bos} / {}.
  std::vector<int32_t> prefix_ids;
  std::vector<int32_t> suffix_ids;

  int32_t bos_id = -1, eos_id = -1, pad_id = -1;
  // Extra ids that end generation besides eos (e.g. <|eot_id|>, <|im_end|>).
  std::vector<int32_t> eog_ids;
  std::string chat_template;  // Jinja text, as the model ships it ("" when none)
  // Where chat_template came from, for errors in it: "DIR/tokenizer_config.json:chat_template",
  // "DIR/chat_template.jinja", "MODEL.gguf:tokenizer.chat_template" ("" when unknown).
  std::string chat_template_source;
};

struct EncodeOptions {
  bool add_special_tokens = true;  // add prefix_ids / suffix_ids (BOS/EOS)
  bool parse_special = true;       // match special added tokens in the text
};

struct DecodeOptions {
  bool skip_special_tokens = true;
};

class Tokenizer {
 public:
  // Validates and compiles `spec`. Throws Error naming spec.source on an inconsistent
  // spec (ids out of range, a merge whose parts or result are not in the vocabulary,
  // a bad regex, ...).
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Loads from a path: a directory with tokenizer.json (+ tokenizer_config.json),
  // a tokenizer.json file, a llama2.c tokenizer .bin, or a .gguf (its tokenizer.*
  // metadata). Throws Error.
  static Tokenizer from_file(const std::string& path);

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt = {}) const;

  // Text of the ids. Byte fallback and byte-level tokens are reassembled into the exact
  // bytes (an invalid UTF-8 sequence stays as its bytes). Ids out of range throw Error.
  std::string decode(std::span<const int32_t> ids, const DecodeOptions& opt = {}) const;

  // The bytes one token stands for in the middle of a text ("▁the" -> " the", <0x0A>
  // -> "\n", byte-level "Ġthe" -> " the", an added token -> its content). May be an
  // incomplete UTF-8 sequence. For streaming, prefer StreamDecoder.
  std::string token_to_piece(int32_t id) const;

  int32_t vocab_size() const;
  // The token's text as the vocabulary spells it (added tokens: their content).
  const std::string& token_text(int32_t id) const;
  // Id of a vocabulary token or added token spelled exactly `text`.
  std::optional<int32_t> token_id(std::string_view text) const;

  bool is_special(int32_t id) const;
  // True for eos and the other end-of-generation ids.
  bool is_end_of_generation(int32_t id) const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  const std::string& chat_template() const;
  const TokenizerSpec& spec() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of generated ids into text as it comes: push() returns the new text
// once it ends on a complete UTF-8 character (a token that carries half a character
// returns "" until the rest arrives). The concatenation of all push() results and
// flush() equals tokenizer.decode(all ids). Keeps a reference to the tokenizer.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, DecodeOptions opt = {});
  std::string push(int32_t id);
  // Whatever is still held back (an incomplete UTF-8 tail); resets the stream.
  std::string flush();

 private:
  const Tokenizer* tok_;
  DecodeOptions opt_;
  std::vector<int32_t> ids_;  // window: ids_[0..read_) were emitted already
  size_t read_ = 0;
  std::string prefix_text_;   // decode(ids_[0..read_))
};

}  // namespace qlora
