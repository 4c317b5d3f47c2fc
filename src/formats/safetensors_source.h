#pragma once
// A checkpoint's safetensors files (one, or a sharded set) as a TensorSource under their stored
// names: plain float tensors (rows read a slab at a time), bitsandbytes 4-bit weights with their
// quant states and 8-bit ones with their SCB, gpt-oss's MXFP4 pairs, FP8 weights with block
// scales (read with the config's scheme only). formats/model_loader.h opens one per checkpoint.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/fp8_checkpoint.h"
#include "model/tensor_source.h"

namespace qlora {

// Maps every file of `paths`; `where` names the checkpoint in messages; fp8: config.json's FP8
// block scheme, if any. Throws Error naming the file when a tensor appears in two files, or FP8
// codes come with scales of a kind not read.
std::unique_ptr<TensorSource> make_safetensors_source(const std::vector<std::string>& paths, std::string where,
                                                      std::optional<Fp8BlockScheme> fp8 = std::nullopt);

}  // namespace qlora
