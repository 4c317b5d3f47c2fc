#pragma once
// The BPE model inside Tokenizer (internal; use tokenizer.h). Turns one pre-tokenized
// piece into ids: characters -> initial symbols (with <0xNN> byte fallback or unk),
// then repeated merging of the best adjacent pair, found with a priority queue
// (O(n log n) per piece).
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/tokenizer.h"

namespace qlora::detail {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // Builds the token and merge tables from spec (vocab, merges or scores, byte
  // fallback, unk). Throws Error naming spec.source on inconsistencies.
  explicit BpeModel(const TokenizerSpec& spec);

  // Appends the ids of `piece` to out (merges only; the ignore_merges whole-word
  // lookup is the caller's, since it applies to a whole pre-tokenized piece).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  // Cuts `piece` into parts that BPE can encode independently with the same result:
  // when no vocabulary token holds the word-start character ("▁" or " ") after another
  // character, no merge crosses the boundary in front of a run of it. Lets long
  // SentencePiece texts (one piece, no pre-tokenizer) be encoded word by word and
  // cached. Appends the parts (views into piece) to out; the piece whole otherwise.
  void segments(std::string_view piece, std::vector<std::string_view>& out) const;

  std::optional<int32_t> find(std::string_view token) const {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  // Id of the <0xNN> token for byte b, or -1.
  int32_t byte_token(uint8_t b) const { return byte_ids_[b]; }

 private:
  struct Merge {
    double priority;  // lower merges first: rank, or -score
    int32_t new_id;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  TokenMap token_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  int32_t unk_id_ = -1;
  std::string split_char_;  // word-start character safe to cut before ("" = none)
};

}  // namespace qlora::detail
