// The llama family proper (LLaMA 1/2/3, SmolLM, TinyLlama, ...) and Mistral.
#include <cmath>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void llama_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.mlp_bias = config::get_bool(j, "mlp_bias", where, false);
}

void llama_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias != s.o_bias)
    fail("config.json", "a llama model with biases on q/k/v but not o (or the reverse) has no config.json form");
  j["attention_bias"] = s.qkv_bias;
  j["mlp_bias"] = s.mlp_bias;
}

// Mistral's sliding window applies to every layer (transformers' mask kv > q - window).
void mistral_read(const json& j, const std::string& where, ModelSpec& s) {
  s.sliding_window = config::get_int(j, "sliding_window", where, 0);
  if (s.sliding_window < 0)
    fail(where, "sliding_window must be positive or null, got " + std::to_string(s.sliding_window));
}

void mistral_write(const ModelSpec& s, ordered_json& j) {
  if (s.qkv_bias || s.o_bias || s.mlp_bias) fail("config.json", "mistral has no config.json switch for biases");
  // Written even when off: a config without the key gets the class default (4096 in some
  // transformers versions), which would change the model.
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
}

// ministral (Ministral-8B-Instruct-2410): Mistral's block with a window per layer (layer_types;
// MinistralConfig slides every layer when sliding_window is set and layer_types is not).
void ministral_read(const json& j, const std::string& where, ModelSpec& s) {
  mistral_read(j, where, s);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) s.sliding_layers = std::move(*lt);
}

void ministral_write(const ModelSpec& s, ordered_json& j) {
  mistral_write(s, j);
  if (!s.sliding_layers.empty()) j["layer_types"] = config::layer_types_json(s);
}

// ministral3 (the language model of Ministral 3 3B / 8B / 14B): Mistral's block, yarn, and
// llama 4's attention temperature (rope_parameters.llama_4_scaling_beta over
// original_max_position_embeddings: ModelSpec::q_pos_scale_beta).
void ministral3_read(const json& j, const std::string& where, ModelSpec& s) {
  ministral_read(j, where, s);
  const json* rp = config::find_key(j, "rope_parameters");
  if (!rp) rp = config::find_key(j, "rope_scaling");
  if (rp && rp->is_object() && config::find_key(*rp, "llama_4_scaling_beta")) {
    s.q_pos_scale_beta = config::get_float(*rp, "llama_4_scaling_beta", where, 0.0f);
    s.q_pos_scale_period = config::get_int(*rp, "original_max_position_embeddings", where, 0);
    if (s.q_pos_scale_beta != 0.0f && s.q_pos_scale_period <= 0)
      fail(where, "llama_4_scaling_beta needs rope_parameters.original_max_position_embeddings");
  }
}

void ministral3_write(const ModelSpec& s, ordered_json& j) {
  ministral_write(s, j);
  if (s.q_pos_scale_beta == 0.0f) return;
  // (transformers 5's form: rope_parameters, which keeps the beta beside the rotary's keys)
  ordered_json rp = config::rope_parameters_json(s.rope_theta, s.rope_scaling);
  rp["llama_4_scaling_beta"] = s.q_pos_scale_beta;
  rp["original_max_position_embeddings"] = s.q_pos_scale_period;
  j["rope_parameters"] = rp;
  j.erase("rope_scaling");
  j.erase("rope_theta");
}

// llama.cpp's mistral3 (Ministral 3): llama's rows, yarn whose attention factor is
// mscale(s, 1) / mscale(s, yarn_log_multiplier) (transformers' mscale / mscale_all_dim, 1 on the
// released models), and the attention temperature over temperature_length, else yarn's
// original context.
void ministral3_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  if (s.rope_scaling.type == RopeScaling::Type::Yarn && hp.yarn_log_mul >= 0.0f) {
    const double sc = s.rope_scaling.factor;
    auto mscale = [&](double m) { return sc <= 1.0 ? 1.0 : 0.1 * m * std::log(sc) + 1.0; };
    s.rope_scaling.attention_factor = static_cast<float>(mscale(1.0) / mscale(hp.yarn_log_mul));
  }
  if (hp.attn_temperature_scale > 0.0f) {
    s.q_pos_scale_beta = hp.attn_temperature_scale;
    s.q_pos_scale_period = hp.attn_temperature_length > 0 ? hp.attn_temperature_length : hp.rope_scaling_original_context;
  }
}

constexpr HfRename kHunyuanRenames[] = {{".self_attn.query_layernorm.", ".self_attn.q_norm."},
                                        {".self_attn.key_layernorm.", ".self_attn.k_norm."}};

// ernie4_5 (ERNIE-4.5-0.3B and the dense ERNIE 4.5s): Llama's block with GLM's rotary (adjacent
// pairs, computed in float32) and one use_bias switch for every Linear but the head.
void ernie4_5_read(const json& j, const std::string& where, ModelSpec& s) {
  s.rope_interleaved = true;
  s.qkv_bias = s.o_bias = s.mlp_bias = config::get_bool(j, "use_bias", where, false);
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);
}

// llama.cpp's ernie4_5: the checkpoint's rows as they are, rotary on adjacent pairs.
void ernie4_5_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) { s.rope_interleaved = true; }

void ernie4_5_write(const ModelSpec& s, ordered_json& j) {
  if (!s.rope_interleaved || s.qkv_bias != s.o_bias || s.qkv_bias != s.mlp_bias || s.sliding_window > 0)
    fail("config.json", "not an ernie4_5 block");
  j["use_bias"] = s.qkv_bias;
}

// ernie4_5_moe (ERNIE-4.5-21B-A3B, 300B-A47B; transformers' Ernie4_5_MoeForCausalLM): ERNIE 4.5's
// block with its MLPs from moe_layer_start_index on (every moe_layer_interval-th, up to
// moe_layer_end_index) the experts behind a float32 softmax router whose choice adds a score bias
// (mlp.moe_statics.e_score_correction_bias), weights renormalized and rounded, plus
// moe_num_shared_experts shared experts, ungated.
void ernie4_5_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  ernie4_5_read(j, where, s);
  if (s.mlp_bias) fail(where, "use_bias with experts: ERNIE 4.5's MoE checkpoints have no biases (not supported)");
  s.n_experts = config::get_int(j, config::find_key(j, "moe_num_experts") ? "moe_num_experts" : "num_experts", where, 64);
  s.experts_per_token = config::get_int(j, config::find_key(j, "moe_k") ? "moe_k" : "num_experts_per_tok", where, 6);
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 1536);
  const int64_t shared = config::get_int(j, "moe_num_shared_experts", where, 2);
  if (shared < 0) fail(where, "moe_num_shared_experts must not be negative");
  s.shared_expert = shared > 0;
  s.shared_expert_ffn = shared * s.expert_ffn;
  s.shared_expert_gate = false;
  s.moe_dense_layers = config::get_int(j, "moe_layer_start_index", where, 1);
  int64_t end = config::get_int(j, "moe_layer_end_index", where, -1);
  if (end == -1) end = s.n_layers - 1;
  if (config::get_int(j, "moe_layer_interval", where, 1) != 1 || end != s.n_layers - 1)
    fail(where, "moe_layer_interval other than 1, or MoE layers ending before the last (moe_layer_end_index), are "
                "not supported: ERNIE 4.5's released MoE models run experts on every layer from moe_layer_start_index");
  s.norm_topk = true;
  s.moe_round_weights = true;  // (routing_weights.to(hidden_states.dtype))
  s.moe_biased_softmax = true;
  s.moe_norm_min = config::get_float(j, "moe_norm_min", where, 1e-12f);
  s.moe_score_bias = "mlp.moe_statics.e_score_correction_bias";
  s.moe_score_bias_rows = true;
  s.moe_fused_experts = true;
}

// As llama.cpp runs an ernie4_5-moe GGUF (convert_hf_to_gguf.py's Ernie4_5MoeModel): the dense lead
// (leading_dense_block_count), experts on every layer after it (interleave_moe_layer_step 1), the
// shared experts expert_shared_feed_forward_length wide, softmax gating with exp_probs_b as the
// score bias, weights renormalized.
void ernie4_5_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  const std::string& where = hp.path;
  if (hp.expert_count <= 0) fail(where, "an ernie4_5-moe GGUF without expert_count");
  if (hp.moe_layer_step > 1)
    fail(where, "ernie4_5-moe.interleave_moe_layer_step " + std::to_string(hp.moe_layer_step) +
                    ": only experts on every layer after the dense lead are supported (llama.cpp's loader and graph "
                    "disagree on the others)");
  s.rope_interleaved = true;
  s.ffn = hp.intermediate_size;  // (the dense layers'; the shared experts' below)
  s.moe_dense_layers = hp.leading_dense_blocks;
  s.shared_expert_ffn = s.shared_expert ? hp.expert_shared_ffn : 0;
  if (s.shared_expert && s.shared_expert_ffn <= 0)
    fail(where, "shared expert tensors without ernie4_5-moe.expert_shared_feed_forward_length");
  s.shared_expert_gate = false;
  s.norm_topk = true;
  s.moe_round_weights = true;
  s.moe_biased_softmax = true;
  s.moe_score_bias = "mlp.moe_statics.e_score_correction_bias";
  s.moe_score_bias_rows = true;
  s.moe_fused_experts = true;  // (read per expert, as the GGUF presents them)
}

void ernie4_5_moe_write(const ModelSpec& s, ordered_json& j) {
  ernie4_5_write(s, j);
  if (!s.moe_biased_softmax) fail("config.json", "not an ernie4_5_moe block");
  j["moe_num_experts"] = s.n_experts;
  j["moe_k"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["moe_num_shared_experts"] = s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0;
  j["moe_layer_start_index"] = s.moe_dense_layers;
  j["moe_layer_end_index"] = s.n_layers - 1;
  j["moe_layer_interval"] = 1;
  j["moe_norm_min"] = s.moe_norm_min;
}

// hunyuan_v1_dense (Hunyuan 0.5B-7B dense): Llama's block with per-head q/k RMSNorms after the
// rotary, and its "dynamic" rope with a fixed alpha, which only stretches the base:
// theta * alpha^(head_dim / (head_dim - 2)) (HunYuanDenseV1RotaryEmbedding's ntk_alpha).
void hunyuan_normalize(json& j) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || !j[key].is_object()) continue;
    json& rp = j[key];
    const std::string type = rp.value("rope_type", rp.value("type", std::string()));
    if (type != "dynamic" || !rp.contains("alpha") || !rp["alpha"].is_number()) continue;
    const double heads = j.value("num_attention_heads", 0.0), hidden = j.value("hidden_size", 0.0);
    const double dim = j.contains("head_dim") && j["head_dim"].is_number() ? j["head_dim"].get<double>()
                       : heads > 0 ? hidden / heads : 0.0;
    const double theta = rp.contains("rope_theta") ? rp["rope_theta"].get<double>() : j.value("rope_theta", 10000.0);
    if (dim > 2) {
      rp["rope_theta"] = theta * std::pow(rp["alpha"].get<double>(), dim / (dim - 2));
      j["rope_theta"] = rp["rope_theta"];
    }
    rp = json{{"rope_type", "default"}, {"rope_theta", j["rope_theta"]}};
  }
}

void hunyuan_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qk_norm = true;
  s.qk_norm_after_rope = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  if (config::get_bool(j, "mlp_bias", where, false)) fail(where, "mlp_bias is not part of hunyuan_v1_dense");
}

// llama.cpp's hunyuan-dense: the checkpoint's rows, its per-head q/k norms after the rotary,
// the stretched base already in rope.freq_base (convert_hf_to_gguf.py computes it).
void hunyuan_gguf(const GgufLlamaHParams& /*hp*/, ModelSpec& s) {
  s.qk_norm = true;
  s.qk_norm_after_rope = true;
}

void hunyuan_write(const ModelSpec& s, ordered_json& j) {
  if (!s.qk_norm_after_rope || s.qkv_bias != s.o_bias || s.mlp_bias || s.sliding_window > 0)
    fail("config.json", "not a hunyuan_v1_dense block");
  j["attention_bias"] = s.qkv_bias;
}

// hunyuan_v1_moe (Hunyuan-A13B): the dense model's attention and rotary with every MLP a mixture
// of num_experts experts of intermediate_size behind a softmax router (mlp.gate.wg, an nn.Linear:
// quantized with the others), its moe_topk best renormalized, plus an ungated
// shared MLP of intermediate_size (mlp.shared_mlp). Per-layer lists (its released config's
// moe_topk, num_shared_expert, moe_intermediate_size) are read when every layer's value is one.
int64_t uniform_int(const json& j, const char* key, const std::string& where, int64_t dflt) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (it->is_array()) {
    if (it->empty() || !(*it)[0].is_number_integer()) fail(where, std::string(key) + " must hold integers");
    for (const json& v : *it)
      if (v != (*it)[0])
        fail(where, std::string(key) + " " + config::shown(*it) + ": layers with different values are not supported");
    return (*it)[0].get<int64_t>();
  }
  return config::get_int(j, key, where);
}

void hunyuan_moe_read(const json& j, const std::string& where, ModelSpec& s) {
  hunyuan_read(j, where, s);
  s.n_experts = uniform_int(j, "num_experts", where, 1);
  s.experts_per_token = uniform_int(j, "moe_topk", where, 1);
  if (s.n_experts <= 0 || s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "num_experts must be positive and moe_topk between 1 and num_experts");
  s.expert_ffn = uniform_int(j, "moe_intermediate_size", where, s.ffn);
  if (s.expert_ffn != s.ffn)
    fail(where, "moe_intermediate_size " + std::to_string(s.expert_ffn) + " differs from intermediate_size " +
                    std::to_string(s.ffn) + ": transformers' HunYuanMoEV1 sizes its experts and shared MLP by the latter");
  if (uniform_int(j, "num_shared_expert", where, 1) != 1 || !config::get_bool(j, "use_mixed_mlp_moe", where, true))
    fail(where, "Hunyuan's MoE has one shared MLP beside its experts (num_shared_expert 1, use_mixed_mlp_moe)");
  s.shared_expert = true;
  s.shared_expert_gate = false;
  s.shared_expert_ffn = s.ffn;
  // (gate.wg is an nn.Linear: bitsandbytes quantizes it like the others, and its logits come in
  // the compute dtype -- float32 only for a float32 model; the weights follow the logits' dtype)
  s.moe_router_linear = true;
  s.norm_topk = true;
  s.moe_round_weights = true;
  s.moe_fused_experts = true;
}

// llama.cpp's hunyuan-moe: the dense model's attention, every MLP experts behind a softmax router
// (ffn_gate_inp), renormalized, plus the shared MLP (ffn_*_shexp, expert_shared_feed_forward_length).
void hunyuan_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  hunyuan_gguf(hp, s);
  if (hp.expert_count <= 0) fail(hp.path, "a hunyuan-moe GGUF without expert_count");
  if (!s.shared_expert) fail(hp.path, "a hunyuan-moe GGUF without its shared MLP (blk.N.ffn_gate_shexp)");
  s.shared_expert_gate = false;
  s.shared_expert_ffn = s.ffn;
  s.moe_router_linear = true;
  s.norm_topk = true;
  s.moe_round_weights = true;
  s.moe_fused_experts = true;  // (read per expert, as the GGUF presents them)
}

void hunyuan_moe_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.moe_router_linear || !s.norm_topk || !s.shared_expert || s.shared_expert_gate ||
      s.moe_groups != 1 || s.expert_ffn != s.ffn || s.shared_expert_ffn != s.ffn)
    fail("config.json", "not a hunyuan_v1_moe block");
  hunyuan_write(s, j);
  j["num_experts"] = s.n_experts;
  j["moe_topk"] = s.experts_per_token;
}

}  // namespace

const ModelFamily kHunyuanDense = [] {
  ModelFamily f{"hunyuan_v1_dense", "HunYuanDenseV1ForCausalLM", "hunyuan-dense", 0, 2048, 10000.0f, false, false,
                hunyuan_read, hunyuan_write, hunyuan_gguf};
  f.normalize_config = hunyuan_normalize;
  // q/k norms renamed: the checkpoints call them query_layernorm / key_layernorm
  f.hf_renames = kHunyuanRenames;
  return f;
}();

// (its MoE: the shared MLP is mlp.shared_mlp, the router's weight mlp.gate.wg)
constexpr HfRename kHunyuanMoeRenames[] = {{".self_attn.query_layernorm.", ".self_attn.q_norm."},
                                           {".self_attn.key_layernorm.", ".self_attn.k_norm."},
                                           {".mlp.shared_mlp.", ".mlp.shared_expert."},
                                           {".mlp.gate.wg.", ".mlp.gate."}};
const ModelFamily kHunyuanMoe = [] {
  ModelFamily f{"hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", "hunyuan-moe", 0, 2048, 10000.0f, false, false,
                hunyuan_moe_read, hunyuan_moe_write, hunyuan_moe_gguf};
  f.normalize_config = hunyuan_normalize;
  f.hf_renames = kHunyuanMoeRenames;
  return f;
}();

const ModelFamily kErnie45 = [] {
  return ModelFamily{"ernie4_5", "Ernie4_5ForCausalLM", "ernie4_5", 128, 131072, 500000.0f, true, false,
                     ernie4_5_read, ernie4_5_write, ernie4_5_gguf};
}();

// (transformers' module tree names ERNIE 4.5's shared experts mlp.shared_experts)
constexpr HfRename kErnie45MoeRenames[] = {{".mlp.shared_experts.", ".mlp.shared_expert."}};
// (llama.cpp's exp_probs_b.bias, (E, 1) in ggml's order: transformers' (1, E))
constexpr GgufLayerName kErnie45MoeGgufParams[] = {{"exp_probs_b.bias", "mlp.moe_statics.e_score_correction_bias"}};
const ModelFamily kErnie45Moe = [] {
  ModelFamily f{"ernie4_5_moe", "Ernie4_5_MoeForCausalLM", "ernie4_5-moe", 128, 131072, 500000.0f, true, false,
                ernie4_5_moe_read, ernie4_5_moe_write, ernie4_5_moe_gguf};
  f.hf_renames = kErnie45MoeRenames;
  f.gguf_layer_params = kErnie45MoeGgufParams;
  return f;
}();

const ModelFamily kMinistral = [] {
  ModelFamily f{"ministral", "MinistralForCausalLM", "", 0, 32768, 10000.0f, false, false, ministral_read,
                ministral_write};
  f.no_gguf_reason = "qlora does not write ministral GGUFs yet (llama.cpp runs them as its llama architecture)";
  return f;
}();
const ModelFamily kMinistral3 = [] {
  ModelFamily f{"ministral3", "Ministral3ForCausalLM", "mistral3", 128, 262144, 1000000.0f, false, false,
                ministral3_read, ministral3_write, ministral3_gguf};
  return f;
}();

const ModelFamily kLlama{"llama", "LlamaForCausalLM", "llama", 0, 2048, 10000.0f, false, false,
                         llama_read, llama_write, nullptr};
const ModelFamily kMistral{"mistral", "MistralForCausalLM", "mistral", 0, 4096 * 32, 10000.0f, false, false,
                           mistral_read, mistral_write, nullptr, "llama"};

}  // namespace qlora::families
