// StableLM (model_type "stablelm", StableLmForCausalLM: StableLM-3B-4E1T, StableLM 2 1.6B,
// stablelm-zephyr-3b, ...): Llama's SwiGLU MLP and grouped-query attention with LayerNorms
// (with biases), partial rotary (partial_rotary_factor, 0.25 when the config leaves it out),
// optional q/k/v biases (use_qkv_bias), and either the sequential block or the parallel one
// with a single norm (use_parallel_residual); with qk_layernorm (StableLM 2 12B) a bias-free
// LayerNorm per head of q and of k, one module per head. GGUF both ways as llama.cpp's
// "stablelm" (which holds those norms stacked, attn_q_norm (head_dim, heads)).
#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void stablelm_read(const json& j, const std::string& where, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.norm_eps = config::get_float(j, "layer_norm_eps", where, 1e-5f);
  s.qkv_bias = config::get_bool(j, "use_qkv_bias", where, false);
  // StableLM 2 12B: a bias-free LayerNorm per head of q and of k, each its own module
  s.qk_norm = s.qk_norm_head_weights = s.qk_norm_tensor_per_head = config::get_bool(j, "qk_layernorm", where, false);
  s.parallel_residual = s.shared_branch_norm = config::get_bool(j, "use_parallel_residual", where, false);
  if (s.q_dim() != s.hidden)
    fail(where, "stablelm's o_proj is hidden x hidden: num_attention_heads x head_dim must equal hidden_size");
  // StableLmConfig's default partial_rotary_factor is 0.25 (the shared reader applies an explicit one).
  const json* rp = config::find_key(j, "rope_parameters");
  if (!config::find_key(j, "partial_rotary_factor") &&
      !(rp && rp->is_object() && config::find_key(*rp, "partial_rotary_factor"))) {
    const int64_t dims = s.head_dim / 4;
    if (dims % 2 != 0 || dims == 0)
      fail(where, "stablelm's default partial_rotary_factor 0.25 gives " + std::to_string(dims) +
                      " rotary dims of a head of " + std::to_string(s.head_dim) + "; it must be even and positive");
    s.rotary_dim = dims;
  }
}

void stablelm_write(const ModelSpec& s, ordered_json& j) {
  if (s.norm != NormKind::LayerNorm || s.mlp != MlpKind::SwiGLU || s.fused_qkv || s.parallel_residual != s.shared_branch_norm)
    fail("config.json", "not a stablelm block");
  if (s.o_bias || s.mlp_bias) fail("config.json", "stablelm has biases on q/k/v only (use_qkv_bias)");
  j["layer_norm_eps"] = s.norm_eps;
  j["use_qkv_bias"] = s.qkv_bias;
  j["use_parallel_residual"] = s.parallel_residual;
  j["qk_layernorm"] = s.qk_norm;
  if (s.qk_norm && !s.qk_norm_tensor_per_head) fail("config.json", "stablelm keeps its q/k norms one module per head");
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
  j["hidden_dropout"] = 0.0;
}

// llama.cpp's stablelm: the same block, sequential when the file has ffn_norm tensors and
// parallel (one norm) when it has none, as llama.cpp's graph decides.
void stablelm_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.norm = NormKind::LayerNorm;
  s.parallel_residual = s.shared_branch_norm = !hp.ffn_norm;
  s.qk_norm = s.qk_norm_head_weights = hp.qk_norm_tensors;
}

}  // namespace

const ModelFamily kStableLm = [] {
  ModelFamily f{"stablelm", "StableLmForCausalLM", "stablelm", 0, 4096, 10000.0f, false, false, stablelm_read,
                stablelm_write, stablelm_gguf};
  f.partial_rotary = true;
  return f;
}();

}  // namespace qlora::families
