#pragma once
// Hugging Face tokenizer.json (+ tokenizer_config.json) -> TokenizerSpec.
//
// Supported, which covers the BPE tokenizers of current LLMs:
//   model        BPE (vocab, merges as "a b" strings or [a, b] pairs, unk_token, fuse_unk,
//                byte_fallback, ignore_merges; dropout is ignored)
//   normalizer   Sequence, Prepend, Replace (string or regex), Strip, NFC (as identity)
//   pre_tokenizer Sequence, ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit
//   decoder      Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace
//   post_processor TemplateProcessing (single), ByteLevel, Sequence, RobertaProcessing,
//                BertProcessing
// Anything else is an Error naming the file and the unsupported type.
//
// tokenizer_config.json, when given: add_bos_token / add_eos_token (when present they
// decide BOS/EOS, overriding the post_processor, as transformers does), bos_token /
// eos_token / pad_token / unk_token (string or {"content": ...}), chat_template (string,
// or a list of {name, template}: "default" or the first), added_tokens_decoder (tokens
// missing from tokenizer.json are added).
#include <string>
#include <string_view>

#include "formats/tokenizer.h"

namespace qlora {

// Parses the texts of tokenizer.json and (optionally, "" for none) tokenizer_config.json.
// `where` names the source in error messages. Throws Error on malformed JSON, missing
// or mistyped fields and unsupported components; never crashes on bad input.
TokenizerSpec tokenizer_spec_from_json(std::string_view tokenizer_json, std::string_view config_json,
                                       std::string_view where);

// `path` is a directory holding tokenizer.json (and maybe tokenizer_config.json,
// chat_template.jinja, generation_config.json) or a tokenizer.json file (its directory
// is searched for the others). A directory without tokenizer.json but with GPT-2's original
// vocab.json + merges.txt (facebook/opt-*) gives the tokenizer transformers' GPT2Tokenizer
// builds from them. Throws Error.
TokenizerSpec load_hf_tokenizer(const std::string& path);

}  // namespace qlora
