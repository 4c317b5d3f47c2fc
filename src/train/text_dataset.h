#pragma once
// The minimal training dataset: text → tokens → fixed-length chunks, every position trained.
//   * a plain text file (anything not ending in .json/.jsonl) is one document;
//   * a .json file holding an array of objects with a "text" string (or of strings), or a
//     .jsonl file with one such object per line: one document per record.
// Each document is encoded with the tokenizer's special tokens (BOS) and followed by EOS
// when the tokenizer has one; documents are concatenated into one stream which is cut into
// chunks of seq_len + 1 tokens overlapping by one (inputs = chunk[0..L), targets =
// chunk[1..L]). A tail shorter than seq_len + 1 is dropped (unless it is the only chunk).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qlora {

class Tokenizer;

class TextDataset {
 public:
  // Reads and tokenizes `path` (each document encoded whole). Throws Error naming the file
  // when it cannot be read, a JSON record has no "text" string, or fewer than 2 tokens result.
  static TextDataset from_file(const std::string& path, const Tokenizer& tok, int64_t seq_len);
  // From tokens already encoded (tests).
  static TextDataset from_tokens(std::vector<int> tokens, int64_t seq_len);

  int64_t seq_len() const { return seq_len_; }
  int64_t num_chunks() const { return static_cast<int64_t>(starts_.size()); }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t num_documents() const { return docs_; }
  // Chunk i: inputs and targets, length chunk_len(i) (= seq_len except a lone short chunk).
  int64_t chunk_len(int64_t i) const;
  std::span<const int> inputs(int64_t i) const;
  std::span<const int> targets(int64_t i) const;

 private:
  void cut();
  std::vector<int> tokens_;
  std::vector<int64_t> starts_;
  int64_t seq_len_ = 0;
  int64_t docs_ = 0;
};

}  // namespace qlora
