// Mixture-of-experts families (ModelSpec::n_experts; the block's op: model/moe_block.h):
//   mixtral (Mixtral 8x7B / 8x22B): Mistral's attention, a router over num_local_experts
//     SwiGLU experts, the top num_experts_per_tok renormalized, weights in float32; its
//     checkpoints name the MLP block_sparse_moe and the experts' Linears w1 / w3 / w2;
//   qwen2_moe (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases), 60-64
//     experts of moe_intermediate_size plus a shared expert gated by
//     sigmoid(shared_expert_gate x); norm_topk_prob off by default;
//   qwen3_moe (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (per-head q/k norms), no
//     shared expert;
//   olmoe (OLMoE-1B-7B): q/k RMSNorms over all heads, 64 experts, top 8 not renormalized;
//   gpt_oss (gpt-oss-20b / 120b): q/k/v/o biases, per-head attention sinks, windows of 128 on
//     alternate layers, yarn rotary; a router with a bias whose softmax runs over the top 4
//     logits, and experts stored fused with biases and a clamped SwiGLU
//     (ModelSpec::moe_gpt_oss), in MXFP4 in OpenAI's checkpoints.
// Every layer is an MoE layer (decoder_sparse_step 1, no mlp_only_layers: every released
// model); the others are refused by name.
#include <algorithm>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// The expert count under either spelling (transformers 5 maps num_experts and
// num_local_experts onto each other per family; configs on the Hub use the family's own).
int64_t expert_count(const json& j, const std::string& where, const char* own) {
  for (const char* k : {own, "num_experts", "num_local_experts"})
    if (config::find_key(j, k)) return config::get_int(j, k, where);
  fail(where, std::string("missing key '") + own + "' (the number of experts)");
}

void read_router(const json& j, const std::string& where, ModelSpec& s, const char* count_key, bool norm_default) {
  s.n_experts = expert_count(j, where, count_key);
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 2);
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, norm_default);
  if (s.n_experts <= 0) fail(where, "the number of experts must be positive, got " + std::to_string(s.n_experts));
  if (config::find_key(j, "router_jitter_noise") && config::get_float(j, "router_jitter_noise", where, 0.0f) != 0.0f)
    fail(where, "router_jitter_noise (random noise on the router in training) is not supported; set it to 0");
}

// Qwen2-MoE / Qwen3-MoE / OLMoE: moe_intermediate_size (OLMoE: intermediate_size) per
// expert, every layer sparse.
void read_sparse_layers(const json& j, const std::string& where, ModelSpec& s, const char* ffn_key) {
  s.expert_ffn = config::get_int(j, ffn_key, where, s.ffn);
  if (config::get_int(j, "decoder_sparse_step", where, 1) != 1)
    fail(where, "decoder_sparse_step other than 1 (dense MLP layers between the MoE ones) is not supported");
  if (const json* m = config::find_key(j, "mlp_only_layers"); m && !(m->is_array() && m->empty()))
    fail(where, "mlp_only_layers " + config::shown(*m) + " (dense MLP layers) is not supported");
}

void write_sparse_layers(const ModelSpec& s, ordered_json& j, const char* count_key) {
  j[count_key] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["norm_topk_prob"] = s.norm_topk;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["decoder_sparse_step"] = 1;
  j["mlp_only_layers"] = ordered_json::array();
}

void mixtral_read(const json& j, const std::string& where, ModelSpec& s) {
  read_router(j, where, s, "num_local_experts", true);
  if (!s.norm_topk) fail(where, "mixtral always renormalizes its top experts (norm_topk_prob false)");
  s.expert_ffn = s.ffn;
  s.sliding_window = config::get_int(j, "sliding_window", where, 0);
  if (s.sliding_window < 0)
    fail(where, "sliding_window must be positive or null, got " + std::to_string(s.sliding_window));
}

void mixtral_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || s.shared_expert || !s.norm_topk || s.moe_round_weights || s.qkv_bias || s.o_bias || s.qk_norm ||
      s.expert_ffn != s.ffn)
    fail("config.json", "not a mixtral block");
  j["num_local_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
}

void qwen2_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  read_router(j, where, s, "num_experts", false);
  read_sparse_layers(j, where, s, "moe_intermediate_size");
  s.moe_round_weights = true;
  s.qkv_bias = config::get_bool(j, "qkv_bias", where, true);
  const int64_t shared = config::get_int(j, "shared_expert_intermediate_size", where, 5632);
  if (shared > 0) {
    s.shared_expert = true;
    s.ffn = shared;
  } else {
    s.ffn = s.expert_ffn;
  }
  if (config::get_bool(j, "use_sliding_window", where, false))
    fail(where, "use_sliding_window is not supported for qwen2_moe");
}

void qwen2_moe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.shared_expert || s.o_bias || s.qk_norm || s.sliding_window > 0)
    fail("config.json", "not a qwen2_moe block");
  write_sparse_layers(s, j, "num_experts");
  j["shared_expert_intermediate_size"] = s.ffn;
  j["qkv_bias"] = s.qkv_bias;
  j["use_sliding_window"] = false;
}

void qwen3_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  read_router(j, where, s, "num_experts", false);
  read_sparse_layers(j, where, s, "moe_intermediate_size");
  s.ffn = s.expert_ffn;
  s.moe_round_weights = true;
  s.qk_norm = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  if (config::get_bool(j, "use_sliding_window", where, false))
    fail(where, "use_sliding_window is not supported for qwen3_moe");
}

void qwen3_moe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || s.shared_expert || !s.qk_norm || s.qk_norm_full || s.qkv_bias != s.o_bias || s.sliding_window > 0)
    fail("config.json", "not a qwen3_moe block");
  write_sparse_layers(s, j, "num_experts");
  j["attention_bias"] = s.qkv_bias;
  j["use_sliding_window"] = false;
}

void olmoe_read(const json& j, const std::string& where, ModelSpec& s) {
  read_router(j, where, s, "num_experts", false);
  s.expert_ffn = s.ffn;
  s.moe_round_weights = true;
  s.qk_norm = s.qk_norm_full = true;
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  if (const json* c = config::find_key(j, "clip_qkv"); c && !c->is_null())
    fail(where, "clip_qkv is not supported for olmoe (no released OLMoE sets it)");
}

void olmoe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || s.shared_expert || !s.qk_norm_full || s.qkv_bias != s.o_bias || s.expert_ffn != s.ffn)
    fail("config.json", "not an olmoe block");
  j["num_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["norm_topk_prob"] = s.norm_topk;
  j["attention_bias"] = s.qkv_bias;
}

void gpt_oss_read(const json& j, const std::string& where, ModelSpec& s) {
  read_router(j, where, s, "num_local_experts", true);
  s.norm_topk = true;  // (softmax over the top logits: the top probabilities renormalized)
  s.moe_gpt_oss = true;
  s.expert_ffn = s.ffn;
  s.swiglu_alpha = config::get_float(j, "swiglu_alpha", where, 1.702f);
  s.swiglu_limit = config::get_float(j, "swiglu_limit", where, 7.0f);
  s.attn_sinks = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, true);
  s.norm_round_once = true;  // (self.weight * hidden_states).to(input_dtype)
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);
  s.sliding_window = config::get_int(j, "sliding_window", where, 128);
  if (s.sliding_window < 0) fail(where, "sliding_window must be positive or null");
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    s.sliding_layers = std::move(*lt);
  } else {  // GptOssConfig's default: sliding on even layers
    s.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
    for (int64_t l = 0; l < s.n_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = (l + 1) % 2 != 0;
  }
}

void gpt_oss_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.moe_gpt_oss || !s.attn_sinks || s.qkv_bias != s.o_bias || s.qk_norm)
    fail("config.json", "not a gpt_oss block");
  j["num_local_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["intermediate_size"] = s.expert_ffn;
  j["swiglu_alpha"] = s.swiglu_alpha;
  j["swiglu_limit"] = s.swiglu_limit;
  j["attention_bias"] = s.qkv_bias;
  j["sliding_window"] = s.sliding_window;
  j["layer_types"] = config::layer_types_json(s);
  j["router_aux_loss_coef"] = 0.9;
  j["output_router_logits"] = false;
}

// llama.cpp's gpt-oss graph: alpha 1.702 and limit 7 are constants there, the top logits'
// softmax weights the experts, windows on even layers (its swa pattern 2) unless the file says
// otherwise, and yarn's correction range always rounded outwards (ggml's rope; gpt-oss's
// config.json has truncate false, so llama.cpp's gpt-oss differs from transformers' there).
void gpt_oss_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  s.moe_gpt_oss = true;
  s.attn_sinks = true;
  s.norm_topk = true;
  s.norm_round_once = true;
  s.swiglu_alpha = 1.702f;
  s.swiglu_limit = 7.0f;
  s.sliding_window = hp.sliding_window;
  if (!hp.swa_layers.empty()) {
    s.sliding_layers = hp.swa_layers;
  } else {
    s.sliding_layers.assign(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
    for (int64_t l = 0; l < s.n_layers; ++l) s.sliding_layers[static_cast<size_t>(l)] = l % 2 == 0;
  }
  s.rope_scaling.truncate = true;
}

// llama.cpp's graphs of these architectures (its build_moe_ffn): the top experts
// renormalized for qwen3moe (and llama's, Mixtral), not for qwen2moe and olmoe.
void qwen2_moe_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) {
  s.norm_topk = false;
  s.moe_round_weights = true;
}

void qwen3_moe_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) {
  s.norm_topk = true;
  s.moe_round_weights = true;
  s.qk_norm = true;
}

void olmoe_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) {
  s.norm_topk = false;
  s.moe_round_weights = true;
  s.qk_norm = s.qk_norm_full = true;
}

// MiniMax-M2 / M2.1 (minimax_m2, MiniMaxM2ForCausalLM): Mixtral's experts (block_sparse_moe, w1 / w3 /
// w2, every layer, no shared expert) behind a float32 sigmoid router whose choice adds
// block_sparse_moe.e_score_correction_bias, the top k renormalized; q/k RMSNorms over all heads at
// once (OLMo 2's form, product rounded once), rotate_half rotary on the first rotary_dim dims of
// each head (its configs' legacy rotary_dim, or partial_rotary_factor).
void minimax_m2_read(const json& j, const std::string& where, ModelSpec& s) {
  read_router(j, where, s, "num_local_experts", true);
  s.expert_ffn = s.ffn;
  s.norm_topk = true;  // (MiniMaxM2TopKRouter always renormalizes)
  s.moe_sigmoid_router = true;
  s.moe_score_bias = "mlp.e_score_correction_bias";
  s.moe_fused_experts = false;
  if (const json* f = config::find_key(j, "scoring_func"); f && *f != "sigmoid")
    fail(where, "scoring_func " + f->dump() + ": MiniMax-M2's router is a sigmoid");
  if (!config::get_bool(j, "use_routing_bias", where, true))
    fail(where, "use_routing_bias false: MiniMax-M2's router adds its score bias (transformers runs no other)");
  if (config::get_int(j, "shared_intermediate_size", where, 0) != 0)
    fail(where, "shared_intermediate_size: MiniMax-M2 has no shared expert (transformers runs none)");
  if (!config::get_bool(j, "use_qk_norm", where, true))
    fail(where, "use_qk_norm false: MiniMax-M2's attention always norms q and k");
  if (const json* t = config::find_key(j, "qk_norm_type"); t && *t != "per_layer")
    fail(where, "qk_norm_type " + t->dump() + ": MiniMax-M2's q/k norms span all heads (per_layer)");
  s.qk_norm = s.qk_norm_full = s.qk_norm_round_once = true;
  // (the released configs' legacy rotary_dim; the shared reader takes partial_rotary_factor over it)
  if (const json* rd = config::find_key(j, "rotary_dim")) {
    const int64_t r = config::get_int(j, "rotary_dim", where);
    if (r <= 0 || r > s.head_dim || r % 2 != 0)
      fail(where, "rotary_dim " + rd->dump() + " must be even and at most head_dim " + std::to_string(s.head_dim));
    if (r != s.head_dim) s.rotary_dim = r;
  }
}

// As llama.cpp runs a minimax-m2 GGUF (convert_hf_to_gguf.py's MiniMaxM2Model): the sigmoid router
// (expert_gating_func 2) with exp_probs_b as its score bias, renormalized; q/k norms over all heads
// (attn_q_norm / attn_k_norm of q / kv width); rotary on rope.dimension_count dims.
void minimax_m2_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (hp.expert_count <= 0) fail(hp.path, "a minimax-m2 GGUF without expert_count");
  if (hp.expert_gating_func != 2)
    fail(hp.path, "minimax-m2.expert_gating_func " + std::to_string(hp.expert_gating_func) +
                      ": MiniMax-M2's router is a sigmoid (2)");
  s.ffn = s.expert_ffn;
  s.norm_topk = true;
  s.moe_sigmoid_router = true;
  s.moe_score_bias = "mlp.e_score_correction_bias";
  s.qk_norm = s.qk_norm_full = s.qk_norm_round_once = true;
}

void minimax_m2_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.moe_sigmoid_router || s.shared_expert || !s.qk_norm_full || s.moe_groups != 1 ||
      s.moe_routed_scale != 1.0f || s.moe_dense_layers != 0 || s.qkv_bias || s.o_bias || s.rope_interleaved)
    fail("config.json", "not a minimax_m2 block");
  j["num_local_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["scoring_func"] = "sigmoid";
  j["use_routing_bias"] = true;
  j["use_qk_norm"] = true;
  j["qk_norm_type"] = "per_layer";
  j["rotary_dim"] = s.rope_dims();
  j["partial_rotary_factor"] = static_cast<double>(s.rope_dims()) / static_cast<double>(s.head_dim);
}

}  // namespace

// Mixtral's checkpoints: model.layers.N.block_sparse_moe.{gate, experts.E.w1 / w3 / w2}.
constexpr HfRename kMixtralRenames[] = {
    {".block_sparse_moe.", ".mlp."}, {".w1.", ".gate_proj."}, {".w3.", ".up_proj."}, {".w2.", ".down_proj."}};

const ModelFamily kMixtral = [] {
  // (its GGUFs are llama.cpp's "llama" with experts: read by the llama entry, written as "llama")
  ModelFamily f{"mixtral", "MixtralForCausalLM", "", 0, 4096 * 32, 1e6f, false, false, mixtral_read, mixtral_write,
                nullptr, "llama"};
  f.hf_renames = kMixtralRenames;
  return f;
}();
const ModelFamily kQwen2Moe{"qwen2_moe", "Qwen2MoeForCausalLM", "qwen2moe", 0, 32768, 10000.0f, false, false,
                            qwen2_moe_read, qwen2_moe_write, qwen2_moe_gguf};
// (Qwen3MoeConfig leaves head_dim unset: hidden / heads, unlike Qwen3Config's 128.)
const ModelFamily kQwen3Moe{"qwen3_moe", "Qwen3MoeForCausalLM", "qwen3moe", 0, 32768, 10000.0f, false, false,
                            qwen3_moe_read, qwen3_moe_write, qwen3_moe_gguf};
// gpt-oss's router module is mlp.router (the canonical MoE router is mlp.gate).
constexpr HfRename kGptOssRenames[] = {{".mlp.router.", ".mlp.gate."}};
// (its sinks, attn_sinks.weight, and its 3-D experts with their biases are read by
// model_loader's GGUF source, which presents them in transformers' fused form)
constexpr GgufLayerName kGptOssGgufNames[] = {{"post_attention_norm", "post_attention_layernorm"}};

const ModelFamily kGptOss = [] {
  // (llama.cpp's gpt-oss GGUFs: read with MXFP4 or float experts, written with ggml's usual types)
  ModelFamily f{"gpt_oss", "GptOssForCausalLM", "gpt-oss", 64, 131072, 150000.0f, false, false, gpt_oss_read,
                gpt_oss_write, gpt_oss_gguf};
  f.hf_renames = kGptOssRenames;
  f.gguf_layer_names = kGptOssGgufNames;
  return f;
}();
const ModelFamily kOlmoe{"olmoe", "OlmoeForCausalLM", "olmoe", 0, 4096, 10000.0f, false, false, olmoe_read,
                         olmoe_write, olmoe_gguf};
// llama.cpp's name for the score bias on MiniMax-M2's MoE block.
constexpr GgufLayerName kMiniMaxM2GgufParams[] = {{"exp_probs_b.bias", "mlp.e_score_correction_bias"}};
// (MiniMaxM2Config's defaults: head_dim 128, 196608 positions, rope_theta 5e6; its files name the block as Mixtral's)
const ModelFamily kMiniMaxM2 = [] {
  ModelFamily f{"minimax_m2", "MiniMaxM2ForCausalLM", "minimax-m2", 128, 196608, 5e6f, false, false,
                minimax_m2_read, minimax_m2_write, minimax_m2_gguf};
  f.partial_rotary = true;
  f.hf_renames = kMixtralRenames;
  f.gguf_layer_params = kMiniMaxM2GgufParams;
  return f;
}();

}  // namespace qlora::families
