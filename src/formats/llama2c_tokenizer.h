#pragma once
// llama2.c's tokenizer file (tokenizer.bin, tok512.bin): int32 max_token_length, then per
// token: float32 merge score, int32 byte length, the bytes. All little-endian. The vocab
// size is not stored: the file is read to its end (or to `expected_vocab`, when given,
// which must then match the model header's vocab_size).
//
// The tokenizer is SentencePiece BPE by score: ids 0/1/2 are <unk>/<s>/</s>, <0xNN> byte
// tokens cover unknown characters, spaces are stored as plain ' ' (and kept so in
// the spec as in the file: a plain space plays the part of "▁"), a dummy space is prepended,
// BOS (1) is added, and decode drops the space after BOS as llama2.c's decode() does.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "formats/tokenizer.h"

namespace qlora {

// Parses the bytes of a llama2.c tokenizer file. `where` names it in errors.
// `expected_vocab` < 0: read all tokens. Throws Error on truncated or malformed data.
TokenizerSpec tokenizer_spec_from_llama2c(std::span<const uint8_t> bytes, std::string_view where,
                                          int32_t expected_vocab = -1);
TokenizerSpec load_llama2c_tokenizer(const std::string& path, int32_t expected_vocab = -1);

}  // namespace qlora
