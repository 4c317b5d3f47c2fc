// Seed-OSS (model_type "seed_oss", SeedOssForCausalLM: ByteDance's Seed-OSS-36B): Llama's block
// with biases on q/k/v (attention_bias) but not on o (attention_out_bias), heads of head_dim (128,
// not hidden / heads), rotate_half rotary. Its attention and residual dropouts are training-time
// regularization that LoRA fine-tuning here does not apply (as for every family's dropouts).
// GGUF both ways as llama.cpp's "seed_oss" (the MLP's input norm named post_attention_norm, rows
// as the checkpoint has them).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void seed_oss_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = config::get_bool(j, "attention_bias", where, true);
  s.o_bias = config::get_bool(j, "attention_out_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
}

void seed_oss_write(const ModelSpec& s, ordered_json& j) {
  if (s.mlp != MlpKind::SwiGLU || s.sliding_window > 0 || s.qk_norm || s.rope_interleaved)
    fail("config.json", "not a seed_oss block");
  j["attention_bias"] = s.qkv_bias;
  j["attention_out_bias"] = s.o_bias;
  j["mlp_bias"] = s.mlp_bias;
  j["attention_dropout"] = 0.0;
  j["residual_dropout"] = 0.0;
}

}  // namespace

// llama.cpp's seed_oss names the MLP's input norm post_attention_norm.
constexpr GgufLayerName kSeedOssGgufNames[] = {{"post_attention_norm", "post_attention_layernorm"}};
const ModelFamily kSeedOss = [] {
  ModelFamily f{"seed_oss", "SeedOssForCausalLM", "seed_oss", 128, 524288, 10000000.0f, false, false, seed_oss_read,
                seed_oss_write, nullptr};
  f.gguf_layer_names = kSeedOssGgufNames;
  return f;
}();

}  // namespace qlora::families
