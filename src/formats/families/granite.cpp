// IBM Granite (model_type "granite", GraniteForCausalLM: granite-3.x 2B / 8B and their
// instruct models): Llama's block with four multipliers -- the embeddings times
// embedding_multiplier, attention scores scaled by attention_multiplier (instead of
// 1/sqrt(head_dim)), each branch output times residual_multiplier before its residual add,
// and the logits divided by logits_scaling. GGUF both ways as llama.cpp's "granite" (q/k rows
// permuted as its llama converter does; the multipliers under embedding_scale,
// attention.scale, residual_scale and logit_scale).
#include <cmath>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void granite_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
  const float attn = config::get_float(j, "attention_multiplier", where, 1.0f);
  s.embed_multiplier = config::get_float(j, "embedding_multiplier", where, 1.0f);
  s.residual_multiplier = config::get_float(j, "residual_multiplier", where, 1.0f);
  s.logit_divisor = config::get_float(j, "logits_scaling", where, 1.0f);
  for (float m : {attn, s.embed_multiplier, s.residual_multiplier, s.logit_divisor})
    if (!(m > 0.0f))
      fail(where, "granite's attention_multiplier, embedding_multiplier, residual_multiplier and logits_scaling "
                  "must be positive");
  s.attn_scale = attn;
}

void granite_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias) fail("config.json", "granite has biases on all attention Linears or none");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
  j["attention_multiplier"] = s.attn_scale > 0.0f ? s.attn_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  j["embedding_multiplier"] = s.embed_multiplier;
  j["residual_multiplier"] = s.residual_multiplier;
  j["logits_scaling"] = s.logit_divisor;
}

void granite_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (hp.attention_scale > 0.0f) s.attn_scale = hp.attention_scale;
  s.embed_multiplier = hp.embedding_scale;
  s.residual_multiplier = hp.residual_scale;
  s.logit_divisor = hp.logit_scale;
}

// IBM Granite MoE (model_type "granitemoe", GraniteMoeForCausalLM: granite-3.0-1b-a400m,
// granite-3.0-3b-a800m and their instruct models): Granite's block and multipliers with every
// MLP a mixture of experts -- the router's logits in the compute dtype, a softmax over the top
// num_experts_per_tok of them (the renormalized top probabilities) rounded to the compute
// dtype, SwiGLU experts of intermediate_size stored fused (block_sparse_moe.input_linear
// (E, 2F, C): gate rows then up rows; output_linear (E, C, F)).
void granitemoe_block(ModelSpec& s) {
  s.norm_topk = true;
  s.moe_round_weights = true;
  s.moe_fused_experts = true;
  s.moe_granite = true;
  s.shared_expert = false;
  s.expert_ffn = s.ffn;
}

void granitemoe_read(const json& j, const std::string& where, ModelSpec& s) {
  granite_read(j, where, s);
  if (s.mlp_bias) fail(where, "mlp_bias: Granite MoE's experts have no biases");
  for (const char* k : {"num_local_experts", "num_experts"})
    if (config::find_key(j, k)) {
      s.n_experts = config::get_int(j, k, where);
      break;
    }
  if (s.n_experts <= 0) fail(where, "num_local_experts must be positive");
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 2);
  if (s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "num_experts_per_tok must be between 1 and num_local_experts");
  granitemoe_block(s);
}

void granitemoe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe_granite || s.shared_expert || s.expert_ffn != s.ffn || !s.norm_topk)
    fail("config.json", "not a granitemoe block");
  granite_write(s, j);
  j["num_local_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
}

// As llama.cpp runs a granitemoe GGUF (convert_hf_to_gguf.py's GraniteMoeModel: granite's
// multipliers, input_linear split into ffn_gate_exps / ffn_up_exps).
void granitemoe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  granite_gguf(hp, s);
  if (hp.expert_count <= 0) fail(hp.path, "a granitemoe GGUF without expert_count");
  s.ffn = s.expert_ffn;
  granitemoe_block(s);
}

}  // namespace

const ModelFamily kGranite{"granite", "GraniteForCausalLM", "granite", 0, 2048, 10000.0f, false, false,
                           granite_read, granite_write, granite_gguf};

// Granite MoE's files: the experts fused under block_sparse_moe.input_linear / output_linear
// (weight suffix and all: transformers 5's module tree calls them block_sparse_moe.experts.
// gate_up_proj / down_proj), the router block_sparse_moe.router.layer.
constexpr HfRename kGraniteMoeRenames[] = {{".block_sparse_moe.input_linear.weight.", ".mlp.experts.gate_up_proj."},
                                           {".block_sparse_moe.output_linear.weight.", ".mlp.experts.down_proj."},
                                           {".block_sparse_moe.router.layer.", ".mlp.gate."}};
const ModelFamily kGraniteMoe = [] {
  ModelFamily f{"granitemoe", "GraniteMoeForCausalLM", "granitemoe", 0, 4096, 10000.0f, false, false, granitemoe_read,
                granitemoe_write, granitemoe_gguf};
  f.hf_renames = kGraniteMoeRenames;
  return f;
}();

}  // namespace qlora::families
