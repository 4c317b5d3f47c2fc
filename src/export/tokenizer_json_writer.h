#pragma once
// A tokenizer written back as Hugging Face files (tokenizer.json + tokenizer_config.json),
// so that a model exported from a GGUF or llama2.c source (`qlora merge`) comes with a
// tokenizer transformers and `tokenizers` load. The inverse of formats/tokenizer_json.h:
// reading the written file gives the same TokenizerSpec (so the same ids).
#include <string>

#include "formats/tokenizer.h"

namespace qlora {

// tokenizer.json text for `spec`: rank-merge BPE (byte-level or SentencePiece style) as
// it is; a vocabulary that merges by SentencePiece scores (llama2.c, GGUF "llama") as the
// Llama-style merge-list BPE transformers' converter derives from such a model (merges
// ranked by the merged token's score, "▁" for spaces, byte fallback). Throws Error naming
// spec.source when a score-merge vocabulary lacks its scores.
std::string tokenizer_json_text(const TokenizerSpec& spec);

// tokenizer_config.json text: the special tokens' contents, the chat template and
// PreTrainedTokenizerFast as the class.
std::string tokenizer_config_json_text(const TokenizerSpec& spec, int64_t model_max_length);

}  // namespace qlora
