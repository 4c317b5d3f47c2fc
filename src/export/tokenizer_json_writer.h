#pragma once
// A tokenizer written back as Hugging Face files (tokenizer.json + tokenizer_config.json),
// so that a model exported from a GGUF or llama2.c source (`qlora merge`) comes with a
// tokenizer transformers and `tokenizers` load. The inverse of formats/tokenizer_json.h:
// reading the written file gives the same TokenizerSpec (so the same ids).
#include <string>

#include "formats/tokenizer.h"

namespace qlora {

// tokenizer.json text for `spec`. Supports rank-merge BPE (byte-level or SentencePiece
// style); throws Error naming spec.source for score-merge vocabularies (SentencePiece
// scores: llama2.c, GGUF "llama"), which have no merge list to write yet.
std::string tokenizer_json_text(const TokenizerSpec& spec);

// tokenizer_config.json text: the special tokens' contents, the chat template and
// PreTrainedTokenizerFast as the class.
std::string tokenizer_config_json_text(const TokenizerSpec& spec, int64_t model_max_length);

}  // namespace qlora
