// Cohere (model_type "cohere", CohereForCausalLM: Command R 35B / 104B (plus), Aya 23 and
// Aya Expanse): one LayerNorm without bias feeding attention and the SwiGLU MLP in parallel
// (x + attn(ln(x)) + mlp(ln(x))), rotary in adjacent pairs (Cohere's rotate_half interleaves),
// the logits multiplied by logit_scale, a tied head. use_qk_norm (Command R+'s per-head
// LayerNorms on q and k) is refused. GGUF both ways as llama.cpp's "command-r".
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void cohere_block(ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.norm_bias = false;
  s.parallel_residual = s.shared_branch_norm = true;
  s.rope_interleaved = true;
}

void cohere_read(const json& j, const std::string& where, ModelSpec& s) {
  cohere_block(s);
  s.norm_eps = config::get_float(j, "layer_norm_eps", where, 1e-5f);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.logit_multiplier = config::get_float(j, "logit_scale", where, 0.0625f);
  if (!(s.logit_multiplier > 0.0f)) fail(where, "logit_scale must be positive");
  if (config::get_bool(j, "use_qk_norm", where, false))
    fail(where, "use_qk_norm true (Command R+'s per-head LayerNorms on q and k) is not supported yet");
}

void cohere_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.norm_bias || !s.parallel_residual || !s.shared_branch_norm ||
      !s.rope_interleaved || s.mlp != MlpKind::SwiGLU || s.mlp_bias || s.qkv_bias != s.o_bias)
    fail("config.json", "not a cohere block");
  j["layer_norm_eps"] = s.norm_eps;
  j["attention_bias"] = s.qkv_bias;
  j["logit_scale"] = s.logit_multiplier;
  j["use_qk_norm"] = false;
}

void cohere_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  cohere_block(s);
  s.logit_multiplier = hp.logit_scale;
}

}  // namespace

const ModelFamily kCohere{"cohere", "CohereForCausalLM", "command-r", 0, 8192, 10000.0f, true, false,
                          cohere_read, cohere_write, cohere_gguf};

}  // namespace qlora::families
