#pragma once
// The tokenizer of a `random:` model (model/random_spec.h), which comes with none: every
// UTF-8 byte is one token. Ids follow Llama's SentencePiece layout, so that a byte-level
// stand-in and a real Llama tokenizer agree on the specials:
//   0 <unk>, 1 <s> (BOS, added to every encoding), 2 </s> (EOS), 3..258 <0x00>..<0xFF>;
//   259..vocab-1 "<extra_N>", never produced by encoding (the model can still sample them,
//   and decoding shows them as such).
// It carries a plain chat template ("role: content" lines) so that chat data and
// `qlora chat` work on a random model too.
#include <cstdint>

#include "formats/tokenizer.h"

namespace qlora {

// Ids the byte tokenizer needs: 3 specials + 256 bytes.
inline constexpr int64_t kByteTokenizerMinVocab = 259;

// The spec of a byte tokenizer whose vocabulary has `vocab` ids (the model's). Throws
// Error naming `where` when vocab < kByteTokenizerMinVocab (pass --tokenizer instead).
TokenizerSpec byte_tokenizer_spec(int64_t vocab, const std::string& where);

}  // namespace qlora
