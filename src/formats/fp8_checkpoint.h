#pragma once
// FP8 block-scaled checkpoints, as transformers' FineGrainedFP8 writes and reads them
// (DeepSeek-V3 / R1's own release, Qwen3-*-FP8, GLM-4.5-FP8, ...): config.json's
// quantization_config {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
// each quantized Linear weight stored as F8_E4M3 codes (out, in) beside a float
// "<name>_scale_inv" of one value per block ((ceil(out / b0), ceil(in / b1))), the weight
// being code x its block's value (transformers' Fp8Dequantize, in float32). Everything else
// (norms, embeddings, router, head) is stored as it is. qlora reads such a weight as those
// float32 values and then quantizes it as any other (NF4 / FP4 / int8 / none).
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace qlora {

// The scale blocks of a checkpoint: rows x cols values per scale (0 x 0: one scale per tensor,
// weight_block_size null).
struct Fp8BlockScheme {
  int64_t rows = 0, cols = 0;
};

// The FP8 scheme of a config.json (its quantization_config), or nullopt when the checkpoint is
// not FP8 (no quantization_config, or bitsandbytes / mxfp4, which are read elsewhere). An Error
// naming `where` for a quant_method this program does not read (gptq, awq, compressed-tensors,
// ...) or a malformed fp8 entry (fmt other than e4m3, a weight_block_size that is not two
// positive integers).
std::optional<Fp8BlockScheme> checkpoint_fp8_scheme(const nlohmann::json& config, const std::string& where);

// In place on w (rows, cols): the FP8 codes widened to float32 become weights, each times its
// block's scale (scale: (scale_rows, scale_cols) float32, row-major; one value for a per-tensor
// scheme). An Error naming `where` and `name` when the scale grid does not cover the weight
// as the scheme says (ceil(rows / b0) x ceil(cols / b1)), or, without a block size from the
// config (`scheme` rows 0 but a grid of more than one value), when the grid does not divide
// the weight exactly (transformers' rule then).
void apply_fp8_block_scales(float* w, int64_t rows, int64_t cols, const float* scale, int64_t scale_rows,
                            int64_t scale_cols, const Fp8BlockScheme& scheme, const std::string& where,
                            const std::string& name);

}  // namespace qlora
