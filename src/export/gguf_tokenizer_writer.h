#pragma once
// A tokenizer loaded from anywhere (tokenizer.json of a Hugging Face directory, typically)
// written as llama.cpp's GGUF tokenizer metadata, so that a GGUF made from a non-GGUF source
// is complete: tokenizer.ggml.model "gpt2" (byte-level BPE), .pre, .tokens, .token_type,
// .merges, the special ids, add_bos/add_space_prefix, and tokenizer.chat_template.
//
// tokenizer.ggml.pre is chosen the way llama.cpp's converter chooses it (by what the
// pre-tokenizer does, not by its name): the first of llama.cpp's pre-tokenizers
// (formats/tokenizer_gguf.h) under which a GGUF reading of these tokens encodes a varied
// test text exactly as this tokenizer does.
#include <string_view>

#include "formats/gguf_writer.h"
#include "formats/tokenizer.h"

namespace qlora {

// Adds the tokenizer.* keys for `tok` to `w`, with as many tokens as the model's
// `model_vocab` (llama.cpp's converter pads with "[PAD<id>]" UNUSED tokens).
//  - byte-level BPE: tokenizer.ggml.model "gpt2", as above;
//  - SentencePiece-style (merges by score or byte fallback: Llama 2, Mistral v0.1):
//    tokenizer.ggml.model "llama" from the SentencePiece model `spm_model` (the directory's
//    tokenizer.model: pieces, scores and types as llama.cpp's converter reads them; a
//    vocabulary with its own scores, as llama2.c's, needs none), the
//    tokenizer's added tokens as CONTROL / USER_DEFINED, add_space_prefix from its
//    normalizer spec.
//  - for the architecture "gemma4", a tokenizer of Gemma 4's kind (BPE by merge rank with byte
//    fallback over UTF-8 characters): tokenizer.ggml.model "gemma4", as llama.cpp's converter
//    writes Gemma 4.
// Throws Error naming `where` when it cannot: a SentencePiece-style tokenizer with neither
// scores nor a tokenizer.model, a byte-level BPE whose pre-tokenizer matches none of
// llama.cpp's, or a gemma4 tokenizer that llama.cpp's reading would split differently.
void write_gguf_tokenizer(GgufWriter& w, const Tokenizer& tok, int64_t model_vocab, const std::string& spm_model,
                          const std::string& where, std::string_view arch = {});

// The llama.cpp pre-tokenizer name for `spec` (see above), or "" when none matches.
std::string detect_gguf_pre_tokenizer(const TokenizerSpec& spec);

}  // namespace qlora
