#pragma once
// The parts of a SentencePiece model file (tokenizer.model: a serialized ModelProto
// protocol buffer) that a GGUF "llama" tokenizer needs: the pieces with their scores and
// types, the special ids of the trainer spec, and whether a dummy "▁" prefix is added.
// Parsed by hand (three messages, a few fields each); unknown fields are skipped.
#include <cstdint>
#include <string>
#include <vector>

namespace qlora {

struct SentencePieceModel {
  struct Piece {
    std::string piece;
    float score = 0.0f;
    int32_t type = 1;  // NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
  };
  std::vector<Piece> pieces;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;  // TrainerSpec defaults
  bool byte_fallback = false;
  bool add_dummy_prefix = true;  // NormalizerSpec default
  std::string normalizer_name;   // "nmt_nfkc", "identity", ...
};

// Reads `path`. Throws Error naming it for a file that is not a SentencePiece model
// (truncated, wrong wire types, no pieces).
SentencePieceModel read_sentencepiece_model(const std::string& path);

}  // namespace qlora
