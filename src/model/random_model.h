#pragma once
// The weights of a `random:` model (model/random_spec.h), generated where a file would be
// read: a TensorSource that Model::load builds an ordinary Model from, so every backend
// (the CPU kernels, the CUDA runner's device copy) runs it as it runs a real model.
//
// What is generated, so that speed and memory are those of a real model of the shape:
//   * each Linear weight (out, in) is a normal sample of std random_linear_std(in) =
//     1/sqrt(in) (0.011..0.016 for the 7B..65B shapes, close to trained Llama weights, and
//     activations keep their scale through any depth), quantized by the real quantizer;
//   * norm weights are 1; embeddings and the untied head are normal of std 0.02 (the
//     Hugging Face initializer_range), handed out as float32 like any source's.
// A 4-bit Linear is generated DIRECTLY in 4-bit (generate_4bit): chunks of
// kRandomChunk elements are sampled into a small per-thread buffer and quantized one at a
// time, so no float32 copy of a whole weight ever exists (a 65B shape is 33 GB in 4-bit
// and would be 260 GB in float32); the codes have the frequencies of quantized normal
// weights and the absmax those of a std-1/sqrt(in) weight. The result is byte-identical to
// quantize_tensor_4bit(get(name)): the same tensor quantized whole.
//
// Determinism: element i of tensor `name` is a pure function of (seed, name, i), whatever
// the thread count, the quantization or the other tensors (so random:llama-65b,layers=2
// has the first two layers of random:llama-65b).
//
// Thread-safety: const methods may run concurrently; each generates with all threads.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model/model_spec.h"
#include "model/tensor_source.h"

namespace qlora {

// Elements sampled and quantized at a time: a multiple of every 4-bit block size
// (32..4096), so chunks hold whole blocks and give the same codes as the whole tensor.
inline constexpr int64_t kRandomChunk = 4096;
// Std of the embeddings and the untied lm_head.
inline constexpr float kRandomEmbeddingStd = 0.02f;

// Std of a generated Linear weight with `fan_in` inputs: 1/sqrt(fan_in).
float random_linear_std(int64_t fan_in);

// Fills out[0, n) (n <= kRandomChunk) with the first n standard normals of chunk `chunk`
// of stream `key`, times `std`: elements [chunk * kRandomChunk, + n) of that stream's
// tensor. Exact normals (a ziggurat over splitmix64 seeded by key and chunk), so each
// chunk is independent of the others and of the thread that makes it. Single-threaded.
void random_normal_chunk(uint64_t key, int64_t chunk, int64_t n, float std, float* out);

class RandomTensorSource : public TensorSource {
 public:
  // Describes the tensors of `spec` (validated) without generating any; `describe` is
  // the model string ("random:llama-7b") for messages.
  RandomTensorSource(const ModelSpec& spec, uint64_t seed, std::string describe);

  std::vector<std::string> names() const override;
  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  // The tensor in float32 (norms: ones; the rest: normal of the tensor's std). For a
  // Linear weight this is the full-precision copy generate_4bit avoids: Model::load asks
  // for it only for --quant none / int8, one tensor at a time, as with a file.
  std::vector<float> get(const std::string& name) const override;
  // A Linear weight generated in the asked 4-bit format (see above); nullopt for other
  // tensors.
  std::optional<Quantized4bit> generate_4bit(const std::string& name, QuantType type, int blocksize,
                                             bool double_quant, ComputeDType dtype) const override;
  std::string describe() const override { return describe_; }

  // The stream key of a tensor: a hash of the seed and its name.
  uint64_t key(const std::string& name) const;
  // The std its elements are drawn with (0 for norm weights, which are all 1).
  float std_of(const std::string& name) const;

 private:
  struct Entry {
    std::vector<int64_t> shape;
    float std = 0;  // 0: a norm weight (ones)
  };
  const Entry& find(const std::string& name) const;
  uint64_t seed_;
  std::string describe_;
  std::map<std::string, Entry> tensors_;
};

}  // namespace qlora
