// rednote's dots.llm1 (model_type "dots1", Dots1ForCausalLM: dots.llm1.base / .inst): Qwen3's
// attention (per-head q/k RMSNorms, attention_bias on q/k/v/o, windows on the layers layer_types
// names, or from max_window_layers on when sliding_window is set) with DeepSeek-V3's MoE (the
// first first_k_dense_replace layers dense, then experts behind the float32 sigmoid router with
// its score bias and groups, renormalized when norm_topk_prob, times routed_scaling_factor, plus
// ungated shared experts). GGUF both ways as llama.cpp's dots1.
#include <algorithm>
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// Dots1Config's windows: layer_types when given, else sliding from max_window_layers on when
// sliding_window is set (no use_sliding_window key, unlike Qwen's).
void dots1_sliding(const json& j, const std::string& where, ModelSpec& s) {
  s.sliding_window = 0;
  s.sliding_layers.clear();
  if (!config::find_key(j, "sliding_window")) return;  // (null or absent: no window)
  const int64_t window = config::get_int(j, "sliding_window", where);
  if (window <= 0) fail(where, "sliding_window must be positive or null, got " + std::to_string(window));
  std::vector<bool> slides(static_cast<size_t>(std::max<int64_t>(s.n_layers, 0)), false);
  if (auto lt = config::sliding_layer_types(j, s.n_layers, where)) {
    slides = std::move(*lt);
  } else {
    const int64_t from = config::get_int(j, "max_window_layers", where, 62);
    for (int64_t l = std::max<int64_t>(from, 0); l < s.n_layers; ++l) slides[static_cast<size_t>(l)] = true;
  }
  if (std::find(slides.begin(), slides.end(), true) == slides.end()) return;
  s.sliding_window = window;
  s.sliding_layers = std::move(slides);
}

void dots1_read(const json& j, const std::string& where, ModelSpec& s) {
  s.qk_norm = true;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  dots1_sliding(j, where, s);
  s.n_experts = config::get_int(j, "n_routed_experts", where, 0);
  if (s.n_experts <= 0) fail(where, "n_routed_experts must be positive");
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 0);
  if (s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "num_experts_per_tok must be between 1 and n_routed_experts");
  s.expert_ffn = config::get_int(j, "moe_intermediate_size", where, 1408);
  const int64_t shared = config::get_int(j, "n_shared_experts", where, 0);
  if (shared < 0) fail(where, "n_shared_experts must not be negative");
  s.shared_expert = shared > 0;
  s.shared_expert_ffn = shared * s.expert_ffn;
  s.shared_expert_gate = false;
  s.moe_dense_layers = config::get_int(j, "first_k_dense_replace", where, 0);
  if (s.moe_dense_layers < 0 || s.moe_dense_layers > s.n_layers)
    fail(where, "first_k_dense_replace must be between 0 and num_hidden_layers");
  s.norm_topk = config::get_bool(j, "norm_topk_prob", where, false);
  s.moe_sigmoid_router = true;
  s.moe_groups = config::get_int(j, "n_group", where, 1);
  s.moe_topk_groups = config::get_int(j, "topk_group", where, 1);
  if (s.moe_groups <= 0 || s.n_experts % s.moe_groups != 0 || s.moe_topk_groups <= 0 || s.moe_topk_groups > s.moe_groups)
    fail(where, "n_group must divide n_routed_experts and topk_group must be between 1 and n_group");
  s.moe_routed_scale = config::get_float(j, "routed_scaling_factor", where, 1.0f);
  s.moe_fused_experts = true;
}

void dots1_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.moe_sigmoid_router || !s.qk_norm || s.shared_expert_gate || s.qkv_bias != s.o_bias || s.mlp_bias ||
      s.rope_interleaved || s.rotary_dim > 0)
    fail("config.json", "not a dots1 block");
  j["attention_bias"] = s.qkv_bias;
  j["sliding_window"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  if (s.sliding_window > 0) {
    ordered_json types = ordered_json::array();
    for (int64_t l = 0; l < s.n_layers; ++l) types.push_back(s.layer_slides(l) ? "sliding_attention" : "full_attention");
    j["layer_types"] = types;
  }
  j["max_window_layers"] = s.n_layers;
  j["n_routed_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  j["moe_intermediate_size"] = s.expert_ffn;
  j["n_shared_experts"] = s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0;
  j["first_k_dense_replace"] = s.moe_dense_layers;
  j["norm_topk_prob"] = s.norm_topk;
  j["n_group"] = s.moe_groups;
  j["topk_group"] = s.moe_topk_groups;
  j["routed_scaling_factor"] = s.moe_routed_scale;
}

// As llama.cpp runs a dots1 GGUF (convert_hf_to_gguf.py's Dots1Model): per-head q/k norms, the
// dense lead, shared experts of whole expert widths, sigmoid gating with exp_probs_b as the score
// bias, expert_weights_scale (absent or 0: 1) and expert_weights_norm.
void dots1_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  const std::string& where = hp.path;
  if (hp.expert_count <= 0) fail(where, "a dots1 GGUF without expert_count");
  if (hp.expert_gating_func != 0 && hp.expert_gating_func != 2)
    fail(where, "dots1.expert_gating_func " + std::to_string(hp.expert_gating_func) + ": dots.llm1's router is a sigmoid (2)");
  s.qk_norm = true;
  read_deepseek_moe_gguf(hp, s);
  s.moe_sigmoid_router = true;
}

}  // namespace

// Its module tree names the shared experts mlp.shared_experts, as DeepSeek-V3's does.
constexpr HfRename kDots1Renames[] = {{".mlp.shared_experts.", ".mlp.shared_expert."}};
constexpr GgufLayerName kDots1GgufParams[] = {{"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"}};
const ModelFamily kDots1 = [] {
  ModelFamily f{"dots1", "Dots1ForCausalLM", "dots1", 0, 2048, 10000.0f, false, false, dots1_read, dots1_write,
                dots1_gguf};
  f.hf_renames = kDots1Renames;
  f.gguf_layer_params = kDots1GgufParams;
  return f;
}();

}  // namespace qlora::families
