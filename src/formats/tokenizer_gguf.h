#pragma once
// GGUF tokenizer metadata -> TokenizerSpec. The GGUF reader fills GgufTokenizerMetadata
// with the plain values of the keys below (leave absent keys empty / nullopt) and calls
// tokenizer_spec_from_gguf_metadata(); this file knows nothing about the GGUF layout.
//
// The result follows llama.cpp's reading of the keys (the format's home):
//   "gpt2"  byte-level BPE: tokens in byte-level spelling, merges by rank, the split
//           regexes named by tokenizer.ggml.pre (llama.cpp's table), no BOS unless
//           add_bos_token says so;
//   "llama" SentencePiece BPE by score with <0xNN> byte fallback, "▁" dummy prefix
//           unless add_space_prefix is false (prepended to every text segment between
//           special tokens, as llama.cpp does), BOS added unless add_bos_token is false.
// Control (3), user-defined (4) and unknown (2) token types are matched in the text as
// added tokens; control and unknown ones are special.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "formats/tokenizer.h"

namespace qlora {

class GgufFile;

struct GgufTokenizerMetadata {
  std::string source;                 // the .gguf path, for error messages
  std::string model;                  // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;                    // tokenizer.ggml.pre ("" when absent)
  std::vector<std::string> tokens;    // tokenizer.ggml.tokens
  std::vector<float> scores;          // tokenizer.ggml.scores (empty when absent)
  std::vector<int32_t> token_types;   // tokenizer.ggml.token_type (empty when absent)
  std::vector<std::string> merges;    // tokenizer.ggml.merges, "a b" (empty when absent)
  std::optional<int64_t> bos_token_id;      // tokenizer.ggml.bos_token_id
  std::optional<int64_t> eos_token_id;      // tokenizer.ggml.eos_token_id
  std::optional<int64_t> unknown_token_id;  // tokenizer.ggml.unknown_token_id
  std::optional<int64_t> padding_token_id;  // tokenizer.ggml.padding_token_id
  std::optional<int64_t> eot_token_id;      // tokenizer.ggml.eot_token_id
  std::optional<int64_t> eom_token_id;      // tokenizer.ggml.eom_token_id
  std::optional<bool> add_bos_token;        // tokenizer.ggml.add_bos_token
  std::optional<bool> add_eos_token;        // tokenizer.ggml.add_eos_token
  std::optional<bool> add_space_prefix;     // tokenizer.ggml.add_space_prefix
  std::string chat_template;                // tokenizer.chat_template
};

// Token types of tokenizer.ggml.token_type.
enum GgufTokenType : int32_t {
  kGgufTokenNormal = 1, kGgufTokenUnknown = 2, kGgufTokenControl = 3,
  kGgufTokenUserDefined = 4, kGgufTokenUnused = 5, kGgufTokenByte = 6,
};

// Throws Error naming md.source for an unsupported model or pre-tokenizer, or
// inconsistent arrays (scores/types not one per token, ids out of range).
TokenizerSpec tokenizer_spec_from_gguf_metadata(const GgufTokenizerMetadata& md);

// Reads the tokenizer.* keys of an open GGUF file (formats/gguf.h) into the struct.
// Throws Error naming the file for a missing tokenizer.ggml.model / .tokens or a key of
// the wrong type.
GgufTokenizerMetadata gguf_tokenizer_metadata(const GgufFile& f);
// Maps `path` and builds the spec from its metadata (the tensors are not touched).
TokenizerSpec load_gguf_tokenizer(const std::string& path);

// The split regexes llama.cpp uses for a tokenizer.ggml.pre value (applied one after
// the other, each splitting the pieces of the previous one, matches and gaps kept).
// Throws Error for an unknown name.
std::vector<std::string> gguf_pre_tokenizer_regexes(const std::string& pre, const std::string& where);
// One name per distinct entry of that table ("default", "llama-bpe", "qwen2", "smollm", ...).
std::vector<std::string> gguf_pre_tokenizer_names();

}  // namespace qlora
