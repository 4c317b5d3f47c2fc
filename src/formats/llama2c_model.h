#pragma once
// llama2.c checkpoints (karpathy/llama2.c), float32, little-endian, as a TensorSource.
//
// Legacy format ("version 0", what run.c reads; stories15M/42M/110M/260K):
//   7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//   (vocab_size < 0: the classifier is NOT shared; |vocab_size| is the vocabulary), then
//   float32: token embedding [V, D]; attention RMSNorm [L, D]; wq [L, D, D];
//   wk [L, KV, D]; wv [L, KV, D]; wo [L, D, D]; FFN RMSNorm [L, D]; w1 [L, H, D];
//   w2 [L, D, H]; w3 [L, H, D]; final RMSNorm [D]; two rope tables of seq_len*head/2
//   floats (skipped); wcls [V, D] only when not shared.
// Version 1 (export.py --version 1): a 256-byte header (uint32 magic 0x616b3432 "ak42",
//   int32 version = 1, the 7 int32 above, uint8 shared_classifier, zero padding), then
//   attention norms, FFN norms, final norm, embedding, wq, wk, wv, wo, w1, w2, w3, [wcls].
// Version 2 (int8 Q8_0) is rejected with a clear error.
//
// The file size must match the header exactly; anything else is an Error naming the file,
// what was expected and what was found. llama2.c rotates adjacent pairs (x[2i], x[2i+1]);
// get() permutes the rows of wq / wk within each head to the Hugging Face rotate-halves
// layout (as llama2.c's own Hugging Face export does), so the tensors are exactly those of
// the equivalent transformers LlamaForCausalLM.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/mapped_file.h"
#include "model/model_spec.h"
#include "model/tensor_source.h"

namespace qlora {

struct Llama2cConfig {
  int version = 0;  // 0 (legacy) or 1
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool shared_classifier = true;
};

class Llama2cModel : public TensorSource {
 public:
  // Maps and validates `path`. Throws Error naming the file on any problem.
  explicit Llama2cModel(const std::string& path);

  const Llama2cConfig& config() const { return config_; }
  // The architecture: llama, RMSNorm eps 1e-5, rope theta 10000, bos 1, eos 2.
  const ModelSpec& spec() const { return spec_; }

  std::vector<std::string> names() const override;
  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  std::vector<float> get(const std::string& name) const override;
  std::string describe() const override { return file_.path(); }

 private:
  struct Entry {
    uint64_t offset = 0;  // bytes from the file start
    std::vector<int64_t> shape;
    int64_t rope_heads = 0;  // > 0: permute rows per head (wq: n_heads, wk: n_kv_heads)
  };
  const Entry& entry(const std::string& name) const;

  MappedFile file_;
  Llama2cConfig config_;
  ModelSpec spec_;
  std::map<std::string, Entry> entries_;
};

// True when `path` looks like a llama2.c checkpoint (v1 magic, or a plausible legacy
// header whose sizes match the file size). Never throws for unreadable files (false).
bool looks_like_llama2c(const std::string& path);

}  // namespace qlora
