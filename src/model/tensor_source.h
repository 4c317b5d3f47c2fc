#pragma once
// Where a model's weights come from, independent of the file format: tensors under their
// Hugging Face names, handed out as float32 one at a time. A model is built by asking for
// one tensor, quantizing or converting it, and dropping the float copy before asking for
// the next, so loading peaks at about the finished model plus one float32 tensor.
//
// Format readers (llama2.c, safetensors directories, GGUF) implement this and do any
// format-specific conversion (e.g. llama2.c / GGUF q,k row permutation to the Hugging Face
// rotary convention) inside get().
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "formats/ggml_types.h"
#include "quant/int8.h"
#include "quant/quant_state.h"

namespace qlora {

// Which of a GGUF's Linear / head types the loader keeps as the file's blocks
// (DenseWeight::from_gguf_blocks, float32 compute: exactly its values, at its size); the
// others become 8-bit: Q8_0 of their values (within half an 8-bit step, 9 bits a value), Q5_0
// Q8_0 blocks of exactly its values. (bench/RESULTS.md, sessions 32, 34 and 36.)
enum class GgufBlockTypes {
  // Q2_K and Q3_K only: 8 bits would take 3x their bytes, and NF4 changes every value. The
  // default on float32 activations, where the Q8_0 copy's products of the others ran 1.4-1.5x
  // faster than their blocks' on a 2-core Zen 3.
  Smallest,
  // And Q6_K, Q5_K, Q5_1, Q5_0: the default when decoding on 8-bit activations (the decoding
  // commands on a GGUF), where their blocks' integer products beat the Q8_0 copy's or match it
  // (Q5_K / Q6_K 1.2-1.5x, Q5_1 1.17x, Q5_0 the same at 1 thread on Zen 3) and read 27-35% fewer
  // bytes; and with --gguf-compact on float activations too.
  All,
};
bool gguf_type_kept_as_blocks(GgmlType t, GgufBlockTypes which);

class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // Names of every tensor available (Hugging Face form), in no particular order.
  virtual std::vector<std::string> names() const = 0;
  virtual bool has(const std::string& name) const = 0;
  // Shape of a tensor ([out, in] for a Linear weight). Throws Error naming the source
  // and the tensor when absent.
  virtual std::vector<int64_t> shape(const std::string& name) const = 0;
  // The tensor's elements as float32, row-major. Throws Error when absent or unreadable.
  virtual std::vector<float> get(const std::string& name) const = 0;
  // When the tensor is stored as a bitsandbytes 4-bit weight (a pre-quantized
  // checkpoint), its packed form; nullopt otherwise. get() still works (dequantizes).
  virtual std::optional<Quantized4bit> get_4bit(const std::string& /*name*/) const { return std::nullopt; }
  // When the tensor is stored as a bitsandbytes / transformers 8-bit weight (int8 codes +
  // SCB), those; nullopt otherwise. get() still works (dequantizes, (CB * SCB) / 127).
  virtual std::optional<Quantized8bit> get_int8(const std::string& /*name*/) const { return std::nullopt; }
  // When the tensor is stored as GGUF Q8_0 blocks (34 bytes per 32 values, llama.cpp's
  // usual type for token_embd / output), those bytes, valid while the source lives; nullopt
  // otherwise. Asked for the embedding and output head only (rows never permuted); get()
  // still works (dequantizes).
  virtual std::optional<std::span<const uint8_t>> get_q8_0(const std::string& /*name*/) const { return std::nullopt; }
  // Whether the tensor is stored in a quantized GGUF type other than Q8_0 (Q4_0, Q4_K, Q6_K,
  // ...): an embedding or head of that kind is re-quantized to Q8_0 on load rather than
  // widened to float32 (ModelLoadOptions::keep_q8_0_head).
  virtual bool stored_quantized(const std::string& /*name*/) const { return false; }
  // Such a tensor's type and bytes as stored (rows in the file's order, which is Hugging Face's:
  // asked for the embedding and output head only), valid while the source lives; nullopt for
  // any other. The loader re-quantizes them to Q8_0 a slab of rows at a time from these, where
  // get() would make a float32 copy of the whole tensor (2 GB for a 128K x 4096 embedding).
  struct StoredBlocks {
    GgmlType type = GgmlType::F32;
    std::span<const uint8_t> bytes;
  };
  virtual std::optional<StoredBlocks> get_stored_blocks(const std::string& /*name*/) const { return std::nullopt; }
  // When get() only widens the tensor's stored values from a 16-bit float format (a
  // safetensors or GGUF BF16 / F16 tensor, read as stored): which (ComputeDType::BF16 or F16),
  // so a loader may hold them in 2 bytes a value without changing one; nullopt otherwise.
  // Asked for tables that are only ever gathered row by row (Gemma 4's per-layer embedding).
  virtual std::optional<ComputeDType> stored_16bit(const std::string& /*name*/) const { return std::nullopt; }
  // Whether get_rows reads a slab of a 2-D tensor's rows without the rest (safetensors'
  // float tensors; a GGUF's embeddings and head); otherwise get_rows goes through get().
  virtual bool reads_rows(const std::string& /*name*/) const { return false; }
  // Rows [r0, r1) of the 2-D tensor `name` as float32 into out ((r1 - r0) * shape(name)[1]
  // values): exactly get()'s. The default calls get() (the whole tensor, each call); a
  // loader filling a large table a slab at a time asks reads_rows first. Throws Error naming
  // the source and tensor when it is not 2-D or the rows are out of range.
  virtual void get_rows(const std::string& name, int64_t r0, int64_t r1, float* out) const;
  // Whether get_4bit gives the tensor as a GGUF's 4-bit blocks kept as stored
  // (formats/ggml_as_4bit.h): the loader skips it when asked to re-quantize
  // (ModelLoadOptions::keep_gguf_weights), and the memory planner counts its constants.
  virtual bool keeps_gguf_4bit(const std::string& /*name*/) const { return false; }
  // A GGUF block Linear the loader keeps as stored in a form other than 4-bit codes
  // (ModelLoadOptions::keep_gguf_blocks): Q8_0 or Q5_0, whose blocks get_q8_0_linear gives as
  // Q8_0 blocks (34 bytes per 32 values; Q5_0's d * (q - 16) re-laid with the same d: its
  // values exactly) for DenseWeight::from_q8_0, or a type the block-row kernels take (Q6_K,
  // Q5_K, Q5_1, Q5_0, Q3_K, Q2_K), whose blocks get_gguf_blocks gives: the loader keeps them
  // (DenseWeight::from_gguf_blocks) or makes Q8_0 of their values (gguf_type_kept_as_blocks;
  // Q5_0's through get_q8_0_linear). Both with the rows in Hugging Face's order (llama.cpp's
  // rope order undone); nullopt for any other tensor. gguf_block_type: the stored type of a
  // tensor keeps_gguf_blocks is true for (which form to ask for, before any data is copied).
  virtual std::optional<std::vector<uint8_t>> get_q8_0_linear(const std::string& /*name*/) const { return std::nullopt; }
  virtual bool keeps_gguf_blocks(const std::string& /*name*/) const { return false; }
  virtual std::optional<GgmlType> gguf_block_type(const std::string& /*name*/) const { return std::nullopt; }
  struct GgufBlocks {
    GgmlType type = GgmlType::F32;
    std::vector<uint8_t> bytes;
  };
  // Also asked for the embedding and output head (rows never permuted).
  virtual std::optional<GgufBlocks> get_gguf_blocks(const std::string& /*name*/) const { return std::nullopt; }
  // When the source can make the tensor directly in the 4-bit format asked for, without a
  // float32 copy of the whole tensor (generated weights: model/random_model.h), that;
  // nullopt otherwise, and the loader quantizes get() as usual. Asked only for Linear
  // weights that get_4bit / get_int8 did not provide.
  virtual std::optional<Quantized4bit> generate_4bit(const std::string& /*name*/, QuantType /*type*/,
                                                     int /*blocksize*/, bool /*double_quant*/,
                                                     ComputeDType /*dtype*/) const {
    return std::nullopt;
  }
  // The i-th slice of a tensor along its first dimension (an expert of gpt-oss's fused
  // (experts, ...) tensors) as float32; the default reads the whole tensor. A source may read
  // only that slice (safetensors: its bytes; MXFP4: its blocks). Throws Error when absent or
  // i is out of range.
  virtual std::vector<float> get_slice(const std::string& name, int64_t i) const;
  // Whether the tensor is stored in MXFP4 (gpt-oss's <name>_blocks / <name>_scales pairs).
  // Such a tensor is seen as transformers dequantizes it: (experts, in, out), float32 values
  // FP4 x 2^(scale - 127), exactly.
  virtual bool is_mxfp4(const std::string& /*name*/) const { return false; }
  // The file or directory, for error messages.
  virtual std::string describe() const = 0;
  // The name a tensor has in the file, for messages (GGUF: "blk.0.attn_q.weight" for
  // "model.layers.0.self_attn.q_proj.weight"); the Hugging Face name by default.
  virtual std::string stored_name(const std::string& name) const { return name; }
  // Tensors in the file that have no Hugging Face name, so no model can use them, under
  // their stored names (GGUF tensors of a kind we do not map). Empty by default.
  virtual std::vector<std::string> unmapped_names() const { return {}; }
  // A vision-language checkpoint's tensors outside the language model (vision tower,
  // projector: formats/hf_wrapper.h), under their stored names, which get / shape / has
  // accept; a merged export writes them back. Empty for every other source.
  virtual std::vector<std::string> other_part_names() const { return {}; }
};

// A source over tensors held in memory (tests, converted models).
class MemoryTensorSource : public TensorSource {
 public:
  explicit MemoryTensorSource(std::string description = "<memory>") : description_(std::move(description)) {}
  void add(std::string name, std::vector<int64_t> shape, std::vector<float> data);

  std::vector<std::string> names() const override;
  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  std::vector<float> get(const std::string& name) const override;
  std::string describe() const override { return description_; }

 private:
  struct Entry {
    std::vector<int64_t> shape;
    std::vector<float> data;
  };
  std::string description_;
  std::vector<std::pair<std::string, Entry>> entries_;
  const Entry& find(const std::string& name) const;
};

// "[64, 172]"
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace qlora
