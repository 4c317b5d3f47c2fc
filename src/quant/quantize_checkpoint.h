#pragma once
// `qlora quantize` / `qlora dequantize` as library calls: turn a safetensors file or a
// Hugging Face model directory into a bitsandbytes 4-bit or 8-bit checkpoint (the layout
// transformers writes for a model loaded with load_in_4bit / load_in_8bit, and reads back),
// and back.
#include <functional>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "quant/codebook.h"

namespace qlora {

struct QuantizeOptions {
  // int8: LLM.int8 weights (int8 + SCB + weight_format, transformers' load_in_8bit layout;
  // type/blocksize/double_quant/compute_dtype are then unused).
  bool int8 = false;
  QuantType type = QuantType::NF4;
  int blocksize = 64;
  bool double_quant = false;
  ComputeDType compute_dtype = ComputeDType::F32;  // recorded in each quant state
  // Module names (a path component match, e.g. "lm_head") kept in full precision,
  // as transformers' llm_int8_skip_modules.
  std::vector<std::string> skip_modules = {"lm_head"};
  // Replace an existing output file, or a model already in the output directory. The input
  // itself is never written over, with or without it.
  bool overwrite = false;
};

struct QuantizeReport {
  int64_t tensors_quantized = 0, tensors_kept = 0;
  int64_t params_quantized = 0;
  int64_t bytes_in = 0, bytes_out = 0;
};

// Which tensors become 4-bit: 2-D floating-point `.weight` tensors of Linear layers —
// not embeddings (names containing "embed", "wte", "wpe") and not skip_modules.
bool should_quantize_4bit(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                          const QuantizeOptions& opt);

// `in` is a .safetensors file or a directory holding model.safetensors or sharded
// model-*.safetensors (+ index). For a file, `out` is the output file; for a directory,
// `out` is a directory that receives model.safetensors, config.json with its
// quantization_config, and the tokenizer/generation files copied. Every file is
// written atomically. `progress(done, total)` is called per tensor when set. Throws Error,
// with nothing written, when `out` is the input itself (its file or directory), when it
// already exists (a file) or holds a model (config.json, *.safetensors) without
// opt.overwrite, or when a skip_modules entry is empty.
QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out, const QuantizeOptions& opt,
                                   const std::function<void(int64_t, int64_t)>& progress = {});

// The reverse: every 4-bit or 8-bit weight in `in` (file or directory) is dequantized to `dtype`;
// other tensors are copied (converted to `dtype` when floating point).
// The same rules for `out` as quantize_checkpoint's (`overwrite` as QuantizeOptions::overwrite).
QuantizeReport dequantize_checkpoint(const std::string& in, const std::string& out, DType dtype, bool overwrite,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

// The safetensors files of a model path: the file itself, or a directory's
// model.safetensors / shards listed in model.safetensors.index.json / *.safetensors.
std::vector<std::string> safetensors_files_of(const std::string& path);

}  // namespace qlora
