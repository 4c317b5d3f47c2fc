// llama.cpp's conventions on top of the GGUF container (formats/gguf.h): its tensor names against
// the project's (Hugging Face) ones, the hyper-parameters of its {arch}.* keys, the q/k row order
// and value-head layouts its converters write, and its tokenizer metadata. The container itself
// (parsing, validation, tensor views) is formats/gguf.cpp.
#include "formats/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "base/error.h"
#include "formats/model_family.h"

namespace qlora {

// ---- names -----------------------------------------------------------------------------------

namespace {

struct NamePair {
  std::string_view gguf, hf;
};
// Per-layer tensors: blk.N.<gguf> <-> model.layers.N.<hf>, each with .weight and .bias.
constexpr NamePair kLayerNames[] = {
    {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"},
    {"attn_q_norm", "self_attn.q_norm"},
    {"attn_k_norm", "self_attn.k_norm"},
    {"ffn_gate", "mlp.gate_proj"},
    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
    {"attn_norm", "input_layernorm"},
    {"ffn_norm", "post_attention_layernorm"},
    // mixture of experts: the router, and Qwen2-MoE's shared expert and its gate (the experts
    // themselves, 3-D ffn_{gate,up,down}_exps, are sliced per expert by the model loader)
    {"ffn_gate_inp", "mlp.gate"},
    {"ffn_gate_shexp", "mlp.shared_expert.gate_proj"},
    {"ffn_up_shexp", "mlp.shared_expert.up_proj"},
    {"ffn_down_shexp", "mlp.shared_expert.down_proj"},
    {"ffn_gate_inp_shexp", "mlp.shared_expert_gate"},
};
// Falcon's new architecture (two norms per block): llama.cpp's converter writes ln_attn as
// attn_norm_2 and ln_mlp as attn_norm.
constexpr NamePair kFalconTwoNorms[] = {{"attn_norm_2", "input_layernorm"}, {"attn_norm", "post_attention_layernorm"}};
// Whole-model tensors (full names without the .weight/.bias suffix).
constexpr NamePair kGlobalNames[] = {
    {"token_embd", "model.embed_tokens"},
    {"output_norm", "model.norm"},
    {"output", "lm_head"},
    // Gemma 4 E2B / E4B's per-layer inputs
    {"per_layer_token_embd", "model.embed_tokens_per_layer"},
    {"per_layer_model_proj", "model.per_layer_model_projection"},
    {"per_layer_proj_norm", "model.per_layer_projection_norm"},
};

// Splits "<stem>.weight" / "<stem>.bias"; false otherwise.
bool split_suffix(std::string_view name, std::string_view* stem, std::string_view* suffix) {
  for (std::string_view s : {std::string_view(".weight"), std::string_view(".bias")}) {
    if (name.size() > s.size() && name.substr(name.size() - s.size()) == s) {
      *stem = name.substr(0, name.size() - s.size());
      *suffix = s;
      return true;
    }
  }
  return false;
}

// Parses "<prefix><digits>." at the start of `name`; returns the rest or nullopt.
std::optional<std::string_view> strip_layer(std::string_view name, std::string_view prefix, std::string_view* num) {
  if (name.substr(0, prefix.size()) != prefix) return std::nullopt;
  name.remove_prefix(prefix.size());
  size_t n = 0;
  while (n < name.size() && name[n] >= '0' && name[n] <= '9') ++n;
  if (n == 0 || n > 9 || (n > 1 && name[0] == '0') || n >= name.size() || name[n] != '.') return std::nullopt;
  *num = name.substr(0, n);
  return name.substr(n + 1);
}

}  // namespace

// qwen35's gated DeltaNet parameters without a weight/bias suffix on one side: llama.cpp's
// blk.N.ssm_a (-exp(A_log)) and blk.N.ssm_dt.bias are transformers' linear_attn.A_log and
// linear_attn.dt_bias.
namespace {
constexpr NamePair kDeltaNetParams[] = {{"ssm_a", "linear_attn.A_log"}, {"ssm_dt.bias", "linear_attn.dt_bias"}};
bool is_delta_net_arch(std::string_view arch) { return arch == "qwen35" || arch == "qwen35moe" || arch == "qwen3next"; }
}  // namespace

std::optional<std::string> gguf_to_hf_tensor_name(std::string_view g, std::string_view arch, bool falcon_two_norms) {
  std::string_view stem, suffix, num;
  if (is_delta_net_arch(arch))
    if (auto rest = strip_layer(g, "blk.", &num))
      for (const auto& p : kDeltaNetParams)
        if (*rest == p.gguf) return "model.layers." + std::string(num) + "." + std::string(p.hf);
  if (const ModelFamily* fam = find_family_by_gguf_arch(arch); fam && !fam->gguf_layer_params.empty())
    if (auto rest = strip_layer(g, "blk.", &num))
      for (const GgufLayerName& p : fam->gguf_layer_params)
        if (*rest == p.gguf) return "model.layers." + std::string(num) + "." + std::string(p.canonical);
  if (!split_suffix(g, &stem, &suffix)) return std::nullopt;
  if (const ModelFamily* fam = find_family_by_gguf_arch(arch); fam && !fam->gguf_output_norm.empty()) {
    if (stem == fam->gguf_output_norm) return "model.norm" + std::string(suffix);
    if (stem == "output_norm") return std::nullopt;
  }
  for (const auto& p : kGlobalNames)
    if (stem == p.gguf) return std::string(p.hf) + std::string(suffix);
  if (stem == "position_embd") return "model.embed_positions" + std::string(suffix);
  if (stem == "token_embd_norm") return "model.embed_norm" + std::string(suffix);
  auto rest = strip_layer(stem, "blk.", &num);
  if (!rest) return std::nullopt;
  auto layer = [&](std::string_view canonical) {
    return "model.layers." + std::string(num) + "." + std::string(canonical) + std::string(suffix);
  };
  if (arch == "falcon" && falcon_two_norms)
    for (const auto& p : kFalconTwoNorms)
      if (*rest == p.gguf) return layer(p.hf);
  // The family's own names first (formats/families/: fused q/k/v, gemma2's norms, ...).
  if (const ModelFamily* fam = find_family_by_gguf_arch(arch))
    for (const GgufLayerName& p : fam->gguf_layer_names)
      if (*rest == p.gguf) return layer(p.canonical);
  for (const auto& p : kLayerNames)
    if (*rest == p.gguf) return layer(p.hf);
  return std::nullopt;
}

std::optional<std::string> hf_to_gguf_tensor_name(std::string_view h, std::string_view arch, bool falcon_two_norms) {
  std::string_view stem, suffix, num;
  if (is_delta_net_arch(arch))
    if (auto rest = strip_layer(h, "model.layers.", &num))
      for (const auto& p : kDeltaNetParams)
        if (*rest == p.hf) return "blk." + std::string(num) + "." + std::string(p.gguf);
  if (const ModelFamily* fam = find_family_by_gguf_arch(arch); fam && !fam->gguf_layer_params.empty())
    if (auto rest = strip_layer(h, "model.layers.", &num))
      for (const GgufLayerName& p : fam->gguf_layer_params)
        if (*rest == p.canonical) return "blk." + std::string(num) + "." + std::string(p.gguf);
  if (!split_suffix(h, &stem, &suffix)) return std::nullopt;
  if (const ModelFamily* fam = find_family_by_gguf_arch(arch); fam && !fam->gguf_output_norm.empty() && stem == "model.norm")
    return std::string(fam->gguf_output_norm) + std::string(suffix);
  for (const auto& p : kGlobalNames)
    if (stem == p.hf) return std::string(p.gguf) + std::string(suffix);
  if (stem == "model.embed_positions") return "position_embd" + std::string(suffix);
  if (stem == "model.embed_norm") return "token_embd_norm" + std::string(suffix);
  auto rest = strip_layer(stem, "model.layers.", &num);
  if (!rest) return std::nullopt;
  auto layer = [&](std::string_view gguf) { return "blk." + std::string(num) + "." + std::string(gguf) + std::string(suffix); };
  if (arch == "falcon" && falcon_two_norms)
    for (const auto& p : kFalconTwoNorms)
      if (*rest == p.hf) return layer(p.gguf);
  if (const ModelFamily* fam = find_family_by_gguf_arch(arch))
    for (const GgufLayerName& p : fam->gguf_layer_names)
      if (*rest == p.canonical) return layer(p.gguf);
  for (const auto& p : kLayerNames)
    if (*rest == p.hf) return layer(p.gguf);
  return std::nullopt;
}

// ---- hyper-parameters ------------------------------------------------------------------------

bool gguf_architecture_supported(std::string_view arch) {
  return find_family_by_gguf_arch(arch) != nullptr;  // the one list: formats/model_family.cpp
}

GgufLlamaHParams read_gguf_llama_hparams(const GgufFile& f) {
  GgufLlamaHParams hp;
  hp.architecture = std::string(f.architecture());
  hp.path = f.path();
  // The keys below are named after the architecture: for one we do not implement they would
  // all be "missing", which hides the real problem.
  if (!gguf_architecture_supported(hp.architecture))
    fail(f.path(), "unsupported architecture " + gguf_quote(hp.architecture) + " (general.architecture; supported: " +
                       gguf_supported_architectures() + ")");
  const std::string a = hp.architecture + ".";
  // Plausibility bound for sizes: rejects garbage before anyone allocates from it.
  constexpr int64_t kMax = int64_t{1} << 26;
  auto size_key = [&](const std::string& key, std::optional<int64_t> dflt) -> int64_t {
    int64_t v;
    if (!f.has(key)) {
      if (!dflt) fail(f.path(), "metadata key " + gguf_quote(key) + " missing");
      v = *dflt;
    } else {
      v = static_cast<int64_t>(f.get_u64(key));
      if (v <= 0 || v > kMax)
        fail(f.path(), "metadata key " + gguf_quote(key) + " value " + std::to_string(f.get_u64(key)) + " out of range");
    }
    return v;
  };
  hp.hidden_size = size_key(a + "embedding_length", std::nullopt);
  hp.num_layers = size_key(a + "block_count", std::nullopt);
  // (the multi-token-prediction blocks come after the model's: not among its layers)
  if (f.has(a + "nextn_predict_layers") && f.get_u64(a + "nextn_predict_layers") != 0) {
    hp.nextn_layers = size_key(a + "nextn_predict_layers", std::nullopt);
    if (hp.nextn_layers >= hp.num_layers)
      fail(f.path(), "nextn_predict_layers " + std::to_string(hp.nextn_layers) + " leaves no layer of block_count " +
                         std::to_string(hp.num_layers));
    hp.num_layers -= hp.nextn_layers;
  }
  // A key llama.cpp reads with get_key_or_arr: one value, or one per layer (gemma4's double-wide
  // MLPs and full-attention key/value heads). Returns layer 0's; fills per_layer for an array
  // whose values differ.
  auto size_key_or_array = [&](const std::string& key, std::optional<int64_t> dflt, std::vector<int64_t>& per_layer) {
    const GgufValue* v = f.find(key);
    if (!v || v->type != GgufValueType::ARRAY) return size_key(key, dflt);
    const std::vector<int64_t> vals = f.get_int_array(key);
    if (static_cast<int64_t>(vals.size()) != hp.num_layers)
      fail(f.path(), "metadata key " + gguf_quote(key) + " holds " + std::to_string(vals.size()) + " values; block_count is " +
                         std::to_string(hp.num_layers));
    for (int64_t x : vals)
      if (x <= 0 || x > kMax) fail(f.path(), "metadata key " + gguf_quote(key) + " holds the value " + std::to_string(x) + ", out of range");
    for (int64_t x : vals)
      if (x != vals[0]) per_layer = vals;
    return vals[0];
  };
  // (an MoE whose config has no dense MLP width -- Qwen3.5-MoE's -- has no feed_forward_length:
  // the shared expert's, else the experts', as llama.cpp falls back)
  std::optional<int64_t> ffn_default;
  for (const char* k : {"expert_shared_feed_forward_length", "expert_feed_forward_length"})
    if (!ffn_default && f.has(a + k)) ffn_default = size_key(a + k, std::nullopt);
  if (is_nemotron_h_arch(hp.architecture)) {  // (one value per layer, 0 on the layers without an MLP)
    const std::vector<int64_t> vals = f.has(a + "feed_forward_length") && f.find(a + "feed_forward_length")->type == GgufValueType::ARRAY
                                          ? f.get_int_array(a + "feed_forward_length")
                                          : std::vector<int64_t>(static_cast<size_t>(hp.num_layers), size_key(a + "feed_forward_length", std::nullopt));
    if (static_cast<int64_t>(vals.size()) != hp.num_layers)
      fail(f.path(), "metadata key " + gguf_quote(a + "feed_forward_length") + " holds " + std::to_string(vals.size()) +
                         " values; block_count is " + std::to_string(hp.num_layers));
    hp.intermediate_size = 0;
    for (int64_t x : vals) {
      if (x < 0 || x > kMax)
        fail(f.path(), "metadata key " + gguf_quote(a + "feed_forward_length") + " holds the value " + std::to_string(x) +
                           ", out of range");
      // (nemotron_h_moe writes the experts' width there; llama.cpp reads it only without expert_feed_forward_length)
      if (x != 0 && hp.intermediate_size != 0 && x != hp.intermediate_size && hp.architecture == "nemotron_h")
        fail(f.path(), "the MLP layers' feed_forward_length differ (" + std::to_string(hp.intermediate_size) + ", " +
                           std::to_string(x) + "); Nemotron-H's share one");
      hp.mlp_layers.push_back(x != 0);
      if (x != 0) hp.intermediate_size = x;
    }
    if (hp.intermediate_size == 0) hp.intermediate_size = 1;  // (no MLP layer: a width nothing uses)
    hp.ssm_conv_bias = f.find_tensor("blk.0.ssm_conv1d.bias") != nullptr;
    for (int64_t l = 0; l < hp.num_layers && !hp.ssm_conv_bias; ++l)
      hp.ssm_conv_bias = f.find_tensor("blk." + std::to_string(l) + ".ssm_conv1d.bias") != nullptr;
  } else if (hp.architecture == "mamba2" || hp.architecture == "mamba") {  // (feed_forward_length and head_count 0: no MLP, no attention)
    hp.intermediate_size = hp.hidden_size;  // (placeholders, as for a mamba2 config.json)
  } else {
    hp.intermediate_size = size_key_or_array(a + "feed_forward_length", ffn_default, hp.ffn_per_layer);
  }
  hp.num_heads = hp.architecture == "mamba2" || hp.architecture == "mamba" ? 1 : size_key(a + "attention.head_count", std::nullopt);
  // (lfm2: head_count_kv 0 marks its short-conv layers; granitehybrid: its Mamba layers)
  if (f.has(a + "shortconv.l_cache") || hp.architecture == "granitehybrid" || is_nemotron_h_arch(hp.architecture) ||
      hp.architecture == "jamba") {
    if (f.has(a + "shortconv.l_cache")) hp.shortconv_l_cache = size_key(a + "shortconv.l_cache", std::nullopt);
    const GgufValue* v = f.find(a + "attention.head_count_kv");
    if (v && v->type == GgufValueType::ARRAY) {
      const std::vector<int64_t> vals = f.get_int_array(a + "attention.head_count_kv");
      if (static_cast<int64_t>(vals.size()) != hp.num_layers)
        fail(f.path(), "metadata key " + gguf_quote(a + "attention.head_count_kv") + " holds " + std::to_string(vals.size()) +
                           " values; block_count is " + std::to_string(hp.num_layers));
      hp.num_kv_heads = 0;
      for (int64_t x : vals) {
        if (x < 0 || x > kMax)
          fail(f.path(), "metadata key " + gguf_quote(a + "attention.head_count_kv") + " holds the value " + std::to_string(x) +
                             ", out of range");
        // (nemotron_h: head_count_kv 0 and no MLP marks a Mamba layer)
        const size_t l = hp.recurrent_layers.size();
        hp.recurrent_layers.push_back(x == 0 && !(l < hp.mlp_layers.size() && hp.mlp_layers[l]));
        if (x != 0 && hp.num_kv_heads != 0 && x != hp.num_kv_heads)
          fail(f.path(), "the attention layers' head_count_kv differ (" + std::to_string(hp.num_kv_heads) + ", " +
                             std::to_string(x) + "); LFM2's, Granite 4.0's and Nemotron-H's share one");
        if (x != 0) hp.num_kv_heads = x;
      }
      if (hp.num_kv_heads == 0) hp.num_kv_heads = hp.num_heads;  // (no attention layer at all)
    }
  }
  if (hp.architecture == "mamba2" || hp.architecture == "mamba") {
    hp.recurrent_layers.assign(static_cast<size_t>(hp.num_layers), true);
    hp.num_kv_heads = 1;
  }
  if (hp.architecture == "mamba" && f.has(a + "ssm.dt_b_c_rms")) hp.ssm_dt_b_c_rms = f.get_bool(a + "ssm.dt_b_c_rms");
  if (hp.architecture == "jamba")  // (which layers carry experts: their router's tensor, as llama.cpp's loader asks)
    for (int64_t l = 0; l < hp.num_layers; ++l)
      hp.moe_layers.push_back(f.find_tensor("blk." + std::to_string(l) + ".ffn_gate_inp.weight") != nullptr);
  if (hp.recurrent_layers.empty())
    hp.num_kv_heads = size_key_or_array(a + "attention.head_count_kv", hp.num_heads, hp.kv_heads_per_layer);
  for (int64_t kv : hp.kv_heads_per_layer)
    if (hp.num_heads % kv != 0)
      fail(f.path(), "head_count " + std::to_string(hp.num_heads) + " is not a multiple of a layer's head_count_kv " +
                         std::to_string(kv));
  if (f.has(a + "attention.key_length_swa")) {
    hp.head_dim_swa = size_key(a + "attention.key_length_swa", std::nullopt);
    if (size_key(a + "attention.value_length_swa", hp.head_dim_swa) != hp.head_dim_swa)
      fail(f.path(), "attention.key_length_swa and value_length_swa differ (llama.cpp requires them equal)");
    hp.rope_dim_swa = size_key(a + "rope.dimension_count_swa", hp.head_dim_swa);
    if (hp.head_dim_swa % 2 != 0 || hp.rope_dim_swa % 2 != 0 || hp.rope_dim_swa > hp.head_dim_swa)
      fail(f.path(), "sliding layers' head size " + std::to_string(hp.head_dim_swa) + " / rope dimension " +
                         std::to_string(hp.rope_dim_swa) + " are not even, or the rope dimension exceeds the head size");
  }
  if (f.has(a + "attention.shared_kv_layers") && f.get_u64(a + "attention.shared_kv_layers") != 0) {
    hp.shared_kv_layers = size_key(a + "attention.shared_kv_layers", std::nullopt);
    if (hp.shared_kv_layers >= hp.num_layers)
      fail(f.path(), "attention.shared_kv_layers " + std::to_string(hp.shared_kv_layers) + " leaves no layer of "
                     "block_count " + std::to_string(hp.num_layers) + " with keys and values of its own");
  }
  if (f.has(a + "embedding_length_per_layer_input") && f.get_u64(a + "embedding_length_per_layer_input") != 0)
    hp.per_layer_input_dim = size_key(a + "embedding_length_per_layer_input", std::nullopt);
  hp.context_length = size_key(a + "context_length", std::nullopt);
  if (!f.has(a + "attention.key_length") && hp.hidden_size % hp.num_heads != 0)
    fail(f.path(), "embedding_length " + std::to_string(hp.hidden_size) + " is not a multiple of head_count " +
                       std::to_string(hp.num_heads));
  hp.head_dim = size_key(a + "attention.key_length", hp.hidden_size / hp.num_heads);
  if (hp.architecture == "deepseek2" && f.has(a + "attention.kv_lora_rank")) {  // (MLA's head sizes, not the latent's)
    hp.kv_lora_rank = size_key(a + "attention.kv_lora_rank", std::nullopt);
    if (f.has(a + "attention.q_lora_rank")) hp.q_lora_rank = size_key(a + "attention.q_lora_rank", std::nullopt);
    hp.mla_split = f.has(a + "attention.key_length_mla");
    if (hp.mla_split) {
      hp.head_dim = size_key(a + "attention.key_length_mla", std::nullopt);
      hp.mla_value_dim = size_key(a + "attention.value_length_mla", std::nullopt);
    } else {
      hp.mla_value_dim = size_key(a + "attention.value_length", hp.head_dim);
    }
  }
  hp.rope_dim = size_key(a + "rope.dimension_count", hp.head_dim);
  // (nemotron_h has no positions: its converter's rope.dimension_count, hidden / heads, is unread)
  if (is_nemotron_h_arch(hp.architecture)) hp.rope_dim = hp.head_dim;
  if (hp.num_heads % hp.num_kv_heads != 0)
    fail(f.path(), "head_count " + std::to_string(hp.num_heads) + " is not a multiple of head_count_kv " +
                       std::to_string(hp.num_kv_heads));
  if (hp.head_dim % 2 != 0 || hp.rope_dim % 2 != 0 || hp.rope_dim > hp.head_dim)
    fail(f.path(), "head size " + std::to_string(hp.head_dim) + " / rope dimension " + std::to_string(hp.rope_dim) +
                       " are not even, or the rope dimension exceeds the head size");
  hp.rope_theta = f.get_f32_or(a + "rope.freq_base", 10000.0f);
  hp.attn_softcap = f.get_f32_or(a + "attn_logit_softcapping", 0.0f);
  hp.final_softcap = f.get_f32_or(a + "final_logit_softcapping", 0.0f);
  if (!(hp.attn_softcap >= 0) || !(hp.final_softcap >= 0) || !std::isfinite(hp.attn_softcap) ||
      !std::isfinite(hp.final_softcap))
    fail(f.path(), "soft-capping values must be non-negative");
  // (0 is "no window": convert_hf_to_gguf.py writes it for Phi-4.)
  if (f.has(a + "attention.sliding_window") && f.get_u64(a + "attention.sliding_window") != 0)
    hp.sliding_window = size_key(a + "attention.sliding_window", std::nullopt);
  hp.sliding_window_zero = f.has(a + "attention.sliding_window") && f.get_u64(a + "attention.sliding_window") == 0;
  if (const GgufValue* pv = f.find(a + "attention.sliding_window_pattern")) {
    const std::string key = a + "attention.sliding_window_pattern";
    if (pv->type == GgufValueType::ARRAY && pv->elem_type == GgufValueType::BOOL) {
      if (static_cast<int64_t>(pv->count) != hp.num_layers || pv->raw.size() != pv->count)
        fail(f.path(), "metadata key " + gguf_quote(key) + " must hold one flag per layer (" +
                           std::to_string(hp.num_layers) + ")");
      for (uint64_t l = 0; l < pv->count; ++l) hp.swa_layers.push_back(pv->raw[l] != 0);
    } else {
      const int64_t n = size_key(key, std::nullopt);
      for (int64_t l = 0; l < hp.num_layers; ++l) hp.swa_layers.push_back(l % n < n - 1);
    }
  }
  hp.rope_theta_swa = f.get_f32_or(a + "rope.freq_base_swa", 0.0f);
  hp.parallel_residual = f.get_bool_or(a + "use_parallel_residual", true);
  if (hp.rope_theta_swa < 0 || !std::isfinite(hp.rope_theta_swa))
    fail(f.path(), "metadata key " + gguf_quote(a + "rope.freq_base_swa") + " must be positive");
  hp.rope_scaling_type = std::string(f.get_string_or(a + "rope.scaling.type", "none"));
  hp.rope_finetuned = f.get_bool_or(a + "rope.scaling.finetuned", true);
  hp.rope_scaling_factor = f.get_f32_or(a + "rope.scaling.factor", f.get_f32_or(a + "rope.scale_linear", 1.0f));
  if (hp.rope_scaling_type == "none" && f.has(a + "rope.scale_linear") && hp.rope_scaling_factor != 1.0f)
    hp.rope_scaling_type = "linear";  // the older key
  if (f.has(a + "rope.scaling.original_context_length"))
    hp.rope_scaling_original_context = size_key(a + "rope.scaling.original_context_length", std::nullopt);
  if (hp.rope_scaling_type != "none" && hp.rope_scaling_type != "linear" && hp.rope_scaling_type != "yarn")
    fail(f.path(), "rope scaling " + gguf_quote(hp.rope_scaling_type) + " (" + a +
                       "rope.scaling.type) is not supported yet (none, linear, yarn)");
  if (hp.rope_scaling_type != "none" && !(hp.rope_scaling_factor > 0) )
    fail(f.path(), "metadata key " + gguf_quote(a + "rope.scaling.factor") + " must be positive");
  hp.rope_scaling_attn_factor = f.get_f32_or(a + "rope.scaling.attn_factor", 0.0f);
  if (!(hp.rope_scaling_attn_factor >= 0) || !std::isfinite(hp.rope_scaling_attn_factor))
    fail(f.path(), "metadata key " + gguf_quote(a + "rope.scaling.attn_factor") + " must be positive");
  hp.yarn_beta_fast = f.get_f32_or(a + "rope.scaling.yarn_beta_fast", 0.0f);
  hp.yarn_beta_slow = f.get_f32_or(a + "rope.scaling.yarn_beta_slow", 0.0f);
  hp.yarn_log_mul = f.get_f32_or(a + "rope.scaling.yarn_log_multiplier", -1.0f);
  hp.attn_temperature_scale = f.get_f32_or(a + "attention.temperature_scale", 0.0f);
  if (f.has(a + "attention.temperature_length"))
    hp.attn_temperature_length = size_key(a + "attention.temperature_length", std::nullopt);
  for (float v : {hp.yarn_beta_fast, hp.yarn_beta_slow, hp.attn_temperature_scale})
    if (!std::isfinite(v) || v < 0.0f) fail(f.path(), "a yarn beta or the attention temperature scale is not a finite non-negative number");
  if (hp.rope_scaling_type == "yarn" && hp.rope_scaling_original_context <= 0)
    fail(f.path(), "yarn rope scaling needs " + gguf_quote(a + "rope.scaling.original_context_length"));
  // (LayerNorm architectures, gpt2, store their epsilon under layer_norm_epsilon.)
  hp.rms_norm_eps = f.has(a + "attention.layer_norm_epsilon") && !f.has(a + "attention.layer_norm_rms_epsilon")
                        ? f.get_f32(a + "attention.layer_norm_epsilon")
                        : f.get_f32(a + "attention.layer_norm_rms_epsilon");
  if (!(hp.rope_theta > 0) || !std::isfinite(hp.rope_theta))
    fail(f.path(), "metadata key " + gguf_quote(a + "rope.freq_base") + " must be positive");
  if (!(hp.rms_norm_eps > 0) || !std::isfinite(hp.rms_norm_eps))
    fail(f.path(), "metadata key " + gguf_quote(a + "attention.layer_norm_rms_epsilon") + " must be positive");

  const uint64_t n_tokens = f.array_size("tokenizer.ggml.tokens");
  if (n_tokens == 0 || n_tokens > static_cast<uint64_t>(kMax))
    fail(f.path(), "tokenizer.ggml.tokens has " + std::to_string(n_tokens) + " entries");
  hp.vocab_size = static_cast<int64_t>(n_tokens);
  // {arch}.vocab_size, when present, is informational (llama.cpp sizes the vocabulary
  // from the token list too); what must agree with the tokens is the embedding matrix.
  if (const GgufTensorInfo* e = f.find_tensor("token_embd.weight")) {
    if (e->dims.size() != 2 || e->dims[0] != hp.hidden_size || e->dims[1] != hp.vocab_size)
      fail(f.path(), "tensor 'token_embd.weight' has the wrong shape for embedding_length " +
                         std::to_string(hp.hidden_size) + " and vocabulary " + std::to_string(hp.vocab_size));
  }
  hp.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  hp.falcon_two_norms = hp.architecture == "falcon" && f.find_tensor("blk.0.attn_norm_2.weight") != nullptr;
  hp.fused_qkv = f.find_tensor("blk.0.attn_qkv.weight") != nullptr;
  hp.ffn_norm = f.find_tensor("blk.0.ffn_norm.weight") != nullptr;
  hp.qk_norm_tensors = f.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  hp.layer_output_scale = f.find_tensor("blk.0.layer_output_scale.weight") != nullptr;
  for (int64_t l = 0; l < hp.num_layers; ++l) {
    const std::string blk = "blk." + std::to_string(l) + ".";
    hp.attn_v_absent.push_back(f.find_tensor(blk + "attn_k.weight") && !f.find_tensor(blk + "attn_v.weight"));
  }
  hp.attention_scale = f.get_f32_or(a + "attention.scale", 0.0f);
  hp.embedding_scale = f.get_f32_or(a + "embedding_scale", 1.0f);
  hp.residual_scale = f.get_f32_or(a + "residual_scale", 1.0f);
  hp.logit_scale = f.get_f32_or(a + "logit_scale", 1.0f);
  hp.clamp_kqv = f.get_f32_or(a + "attention.clamp_kqv", 0.0f);
  hp.max_alibi_bias = f.get_f32_or(a + "attention.max_alibi_bias", 0.0f);
  if (!(hp.max_alibi_bias >= 0.0f) || !std::isfinite(hp.max_alibi_bias))
    fail(f.path(), "metadata key " + gguf_quote(a + "attention.max_alibi_bias") + " must be positive");
  if (!(hp.clamp_kqv >= 0.0f) || !std::isfinite(hp.clamp_kqv))
    fail(f.path(), "metadata key " + gguf_quote(a + "attention.clamp_kqv") + " must be positive");
  for (const float* v : {&hp.attention_scale, &hp.embedding_scale, &hp.residual_scale, &hp.logit_scale})
    if (!(*v >= 0.0f) || !std::isfinite(*v) || (v != &hp.attention_scale && *v == 0.0f))
      fail(f.path(), "metadata keys " + gguf_quote(a + "attention.scale") + ", embedding_scale, residual_scale and "
                         "logit_scale must be positive");
  if (f.has(a + "expert_count") && f.get_u64(a + "expert_count") != 0) {
    hp.expert_count = size_key(a + "expert_count", std::nullopt);
    hp.expert_used_count = size_key(a + "expert_used_count", std::nullopt);
    if (hp.expert_used_count > hp.expert_count)
      fail(f.path(), "expert_used_count " + std::to_string(hp.expert_used_count) + " exceeds expert_count " +
                         std::to_string(hp.expert_count));
    if (f.has(a + "expert_feed_forward_length")) hp.expert_ffn = size_key(a + "expert_feed_forward_length", std::nullopt);
    if (f.has(a + "expert_shared_feed_forward_length"))
      hp.expert_shared_ffn = size_key(a + "expert_shared_feed_forward_length", std::nullopt);
    if (f.has(a + "expert_weights_norm")) hp.expert_weights_norm = f.get_bool(a + "expert_weights_norm") ? 1 : 0;
    if (f.has(a + "moe_latent_size")) hp.moe_latent_size = static_cast<int64_t>(f.get_u64(a + "moe_latent_size"));
    if (f.has(a + "leading_dense_block_count")) hp.leading_dense_blocks = static_cast<int64_t>(f.get_u64(a + "leading_dense_block_count"));
    if (hp.leading_dense_blocks > hp.num_layers)
      fail(f.path(), "leading_dense_block_count " + std::to_string(hp.leading_dense_blocks) + " exceeds the " +
                         std::to_string(hp.num_layers) + " layers");
    if (f.has(a + "expert_shared_count")) hp.expert_shared_count = static_cast<int64_t>(f.get_u64(a + "expert_shared_count"));
    if (hp.expert_shared_count > 64) fail(f.path(), "implausible expert_shared_count " + std::to_string(hp.expert_shared_count));
    if (f.has(a + "expert_gating_func")) hp.expert_gating_func = static_cast<int64_t>(f.get_u64(a + "expert_gating_func"));
    hp.expert_weights_scale = f.get_f32_or(a + "expert_weights_scale", 0.0f);
    if (!(hp.expert_weights_scale >= 0.0f) || !std::isfinite(hp.expert_weights_scale))
      fail(f.path(), "metadata key " + gguf_quote(a + "expert_weights_scale") + " must be a finite non-negative number");
    if (f.has(a + "interleave_moe_layer_step")) hp.moe_layer_step = static_cast<int64_t>(f.get_u64(a + "interleave_moe_layer_step"));
    if (f.has(a + "expert_group_count")) hp.expert_group_count = static_cast<int64_t>(f.get_u64(a + "expert_group_count"));
    if (f.has(a + "expert_group_used_count"))
      hp.expert_group_used_count = static_cast<int64_t>(f.get_u64(a + "expert_group_used_count"));
  }
  if (f.has(a + "ssm.conv_kernel")) {  // gated DeltaNet hybrids (qwen35)
    hp.ssm_conv_kernel = size_key(a + "ssm.conv_kernel", std::nullopt);
    hp.ssm_state_size = size_key(a + "ssm.state_size", std::nullopt);
    // (mamba's layers have one B and C for every channel: no group count)
    hp.ssm_group_count = size_key(a + "ssm.group_count", hp.architecture == "mamba" || hp.architecture == "jamba"
                                                             ? std::optional<int64_t>(1) : std::nullopt);
    hp.ssm_time_step_rank = size_key(a + "ssm.time_step_rank", std::nullopt);
    hp.ssm_inner_size = size_key(a + "ssm.inner_size", std::nullopt);
    hp.full_attention_interval = size_key(a + "full_attention_interval", 4);  // (llama.cpp's default)
    if (hp.architecture != "mamba" && hp.architecture != "jamba" &&  // (mamba's time_step_rank is dt_proj's rank, not a head count)
        (hp.ssm_time_step_rank % hp.ssm_group_count != 0 || hp.ssm_inner_size % hp.ssm_time_step_rank != 0))
      fail(f.path(), "ssm.time_step_rank " + std::to_string(hp.ssm_time_step_rank) + " is not a multiple of "
                     "ssm.group_count " + std::to_string(hp.ssm_group_count) + ", or ssm.inner_size " +
                     std::to_string(hp.ssm_inner_size) + " not one of it");
  }
  // (llama.cpp's llama converter, and granite's, which derives from it, permute q/k rows.)
  hp.qk_rope_permuted = hp.architecture == "llama" || hp.architecture == "granite" || hp.architecture == "granitemoe" ||
                        hp.architecture == "granitehybrid" || is_nemotron_h_arch(hp.architecture) ||
                        hp.architecture == "smollm3" ||
                        hp.architecture == "olmo" || hp.architecture == "arcee" || hp.architecture == "mistral3";
  // (jamba: its converter writes expert_count whatever the model -- 1 for a dense Jamba --, and llama.cpp
  // runs a dense MLP on every layer without ffn_gate_inp: no layer with one is a dense model)
  if (hp.architecture == "jamba" && std::find(hp.moe_layers.begin(), hp.moe_layers.end(), true) == hp.moe_layers.end()) {
    hp.expert_count = 0;
    hp.expert_used_count = 0;
    hp.moe_layers.clear();
  }
  return hp;
}

bool granitehybrid_is_bamba(const GgufLlamaHParams& hp) {
  return hp.architecture == "granitehybrid" && hp.rope_finetuned && hp.expert_count == 0 &&
         hp.rope_dim * 2 == hp.head_dim &&
         std::find(hp.recurrent_layers.begin(), hp.recurrent_layers.end(), true) != hp.recurrent_layers.end() &&
         hp.embedding_scale == 1.0f && hp.residual_scale == 1.0f && hp.logit_scale == 1.0f;
}

// ---- the q/k row permutation ------------------------------------------------------------------

namespace {

void check_rope_perm(std::span<const float> in, std::span<float> out, int64_t rows, int64_t cols, int64_t n_head) {
  if (n_head <= 0 || rows <= 0 || cols <= 0 || rows % (2 * n_head) != 0)
    fail("rope permutation", std::to_string(rows) + " rows cannot be split into " + std::to_string(n_head) +
                                 " heads of an even number of rows");
  if (in.size() != static_cast<uint64_t>(rows * cols) || out.size() != in.size())
    fail("rope permutation", "buffer sizes do not match " + std::to_string(rows) + "x" + std::to_string(cols));
}

// HF row index of GGUF row r (the interleaved/adjacent-pair layout).
inline int64_t hf_row_of_gguf_row(int64_t r, int64_t d) {
  const int64_t h = r / d, w = r % d;  // w = 2*i + s
  return h * d + (w % 2) * (d / 2) + w / 2;
}

}  // namespace

void qkv_grouped_to_contiguous(std::span<const float> in, std::span<float> out, int64_t kv_heads, int64_t q_per_kv,
                               int64_t head_dim, int64_t cols) {
  const int64_t per_group = q_per_kv + 2;
  if (kv_heads <= 0 || q_per_kv <= 0 || head_dim <= 0 || cols <= 0 ||
      in.size() != static_cast<size_t>(kv_heads * per_group * head_dim * cols) || out.size() != in.size())
    fail("query_key_value reorder", "buffer sizes do not match " + std::to_string(kv_heads) + " groups of " +
                                        std::to_string(per_group) + " heads x " + std::to_string(head_dim));
  const int64_t heads = kv_heads * q_per_kv;
  for (int64_t g = 0; g < kv_heads; ++g)
    for (int64_t p = 0; p < per_group; ++p) {
      // destination head row: query head g*q_per_kv + p, or key head g, or value head g
      const int64_t dst = p < q_per_kv ? g * q_per_kv + p : p == q_per_kv ? heads + g : heads + kv_heads + g;
      std::memcpy(out.data() + dst * head_dim * cols, in.data() + (g * per_group + p) * head_dim * cols,
                  static_cast<size_t>(head_dim * cols) * 4);
    }
}

void qkv_per_head_to_contiguous(std::span<const float> in, std::span<float> out, int64_t heads, int64_t head_dim,
                                int64_t cols) {
  if (heads <= 0 || head_dim <= 0 || cols <= 0 || in.size() != static_cast<size_t>(3 * heads * head_dim * cols) ||
      out.size() != in.size())
    fail("query_key_value reorder", "buffer sizes do not match 3 x " + std::to_string(heads) + " heads x " +
                                        std::to_string(head_dim));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t i = 0; i < head_dim; ++i)
        std::memcpy(out.data() + ((p * heads + h) * head_dim + i) * cols, in.data() + ((h * 3 + p) * head_dim + i) * cols,
                    static_cast<size_t>(cols) * 4);
}

namespace {
void delta_net_heads(std::span<const float> in, std::span<float> out, int64_t Hk, int64_t Hv, int64_t block,
                     bool to_tiled) {
  if (Hk <= 0 || Hv <= 0 || Hv % Hk != 0 || block <= 0 || in.size() != static_cast<size_t>(Hv * block) ||
      out.size() != in.size())
    fail("value head reorder", "buffer sizes do not match " + std::to_string(Hv) + " value heads over " +
                                   std::to_string(Hk) + " key heads");
  const int64_t R = Hv / Hk;
  for (int64_t g = 0; g < Hv; ++g) {  // grouped position g = k R + r; tiled t = r Hk + k
    const int64_t t = (g % R) * Hk + g / R;
    const int64_t src = to_tiled ? g : t, dst = to_tiled ? t : g;
    std::memcpy(out.data() + dst * block, in.data() + src * block, static_cast<size_t>(block) * 4);
  }
}
}  // namespace

void delta_net_heads_to_tiled(std::span<const float> in, std::span<float> out, int64_t key_heads, int64_t value_heads,
                              int64_t block) {
  delta_net_heads(in, out, key_heads, value_heads, block, true);
}
void delta_net_heads_to_grouped(std::span<const float> in, std::span<float> out, int64_t key_heads,
                                int64_t value_heads, int64_t block) {
  delta_net_heads(in, out, key_heads, value_heads, block, false);
}

void delta_net_tensor_heads(const std::string& name, std::vector<float>& v, const DeltaNetHeads& h, bool to_tiled) {
  const int64_t Hk = h.key_heads, Hv = h.value_heads, dv = h.value_dim, C = h.hidden, K = h.conv_kernel;
  const int64_t KD = Hk * h.key_dim;
  if (Hk == Hv) return;
  // [offset, offset + Hv * block) of v holds the value heads, `block` values each.
  auto reorder = [&](int64_t offset, int64_t block) {
    if (offset + Hv * block > static_cast<int64_t>(v.size()))
      fail(name, "holds " + std::to_string(v.size()) + " values, too few for " + std::to_string(Hv) + " value heads");
    const std::span<const float> in(v.data() + offset, static_cast<size_t>(Hv * block));
    std::vector<float> out(in.size());
    delta_net_heads(in, out, Hk, Hv, block, to_tiled);
    std::copy(out.begin(), out.end(), v.begin() + offset);
  };
  if (name.ends_with(".linear_attn.in_proj_qkv.weight")) reorder(2 * KD * C, dv * C);
  else if (name.ends_with(".linear_attn.in_proj_z.weight")) reorder(0, dv * C);
  else if (name.ends_with(".linear_attn.in_proj_b.weight") || name.ends_with(".linear_attn.in_proj_a.weight"))
    reorder(0, C);
  else if (name.ends_with(".linear_attn.A_log") || name.ends_with(".linear_attn.dt_bias")) reorder(0, 1);
  else if (name.ends_with(".linear_attn.conv1d.weight")) reorder(2 * KD * K, dv * K);
  else if (name.ends_with(".linear_attn.out_proj.weight"))
    for (int64_t r = 0; r < C; ++r) reorder(r * Hv * dv, dv);
}

std::vector<int64_t> qwen3next_split_rows(const DeltaNetHeads& h, bool gate) {
  const int64_t Hk = h.key_heads, dk = h.key_dim, dv = h.value_dim, R = h.value_heads / h.key_heads;
  const int64_t G = 2 * dk + 2 * R * dv;  // one key head's rows
  std::vector<int64_t> rows;
  auto take = [&](int64_t off, int64_t n) {
    for (int64_t k = 0; k < Hk; ++k)
      for (int64_t i = 0; i < n; ++i) rows.push_back(k * G + off + i);
  };
  if (gate) {
    take(2 * dk + R * dv, R * dv);
  } else {
    take(0, dk);
    take(dk, dk);
    take(2 * dk, R * dv);
  }
  return rows;
}

void unpermute_rope_rows(std::span<const float> in, std::span<float> out, int64_t rows, int64_t cols, int64_t n_head) {
  check_rope_perm(in, out, rows, cols, n_head);
  const int64_t d = rows / n_head;
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out.data() + hf_row_of_gguf_row(r, d) * cols, in.data() + r * cols, static_cast<size_t>(cols) * 4);
}

void permute_rope_rows(std::span<const float> in, std::span<float> out, int64_t rows, int64_t cols, int64_t n_head) {
  check_rope_perm(in, out, rows, cols, n_head);
  const int64_t d = rows / n_head;
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out.data() + r * cols, in.data() + hf_row_of_gguf_row(r, d) * cols, static_cast<size_t>(cols) * 4);
}

std::optional<int64_t> gguf_rope_permuted_heads(const GgufTensorInfo& t, const GgufLlamaHParams& hp) {
  if (!hp.qk_rope_permuted) return std::nullopt;
  std::string_view stem, suffix, num;
  if (!split_suffix(t.name, &stem, &suffix)) return std::nullopt;
  auto rest = strip_layer(stem, "blk.", &num);
  if (!rest || (*rest != "attn_q" && *rest != "attn_k")) return std::nullopt;
  return *rest == "attn_q" ? hp.num_heads : hp.num_kv_heads;
}

std::vector<float> gguf_tensor_to_f32_hf(const GgufFile& f, const GgufTensorInfo& t, const GgufLlamaHParams& hp) {
  std::vector<float> x = f.tensor_to_f32(t);
  const std::optional<int64_t> heads = gguf_rope_permuted_heads(t, hp);
  if (!heads) return x;
  const int64_t n_head = *heads;
  const auto shape = t.shape();
  const int64_t rows = shape.empty() ? 1 : shape[0];
  const int64_t cols = rows == 0 ? 0 : t.numel() / rows;
  std::vector<float> y(x.size());
  try {
    unpermute_rope_rows(x, y, rows, std::max<int64_t>(cols, 1), n_head);
  } catch (const Error& e) {
    fail(f.path(), "tensor " + gguf_quote(t.name) + ": " + e.what());
  }
  return y;
}

// ---- tokenizer ---------------------------------------------------------------------------------

GgufTokenizerInfo read_gguf_tokenizer(const GgufFile& f) {
  GgufTokenizerInfo t;
  t.model = std::string(f.get_string("tokenizer.ggml.model"));
  t.pre = std::string(f.get_string_or("tokenizer.ggml.pre", ""));
  t.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = t.tokens.size();
  if (f.has("tokenizer.ggml.scores")) {
    t.scores = f.get_f32_array("tokenizer.ggml.scores");
    if (t.scores.size() != n)
      fail(f.path(), "tokenizer.ggml.scores has " + std::to_string(t.scores.size()) + " entries, tokens have " +
                         std::to_string(n));
  }
  if (f.has("tokenizer.ggml.token_type")) {
    t.token_types = f.get_i32_array("tokenizer.ggml.token_type");
    if (t.token_types.size() != n)
      fail(f.path(), "tokenizer.ggml.token_type has " + std::to_string(t.token_types.size()) +
                         " entries, tokens have " + std::to_string(n));
  }
  if (f.has("tokenizer.ggml.merges")) t.merges = f.get_string_array("tokenizer.ggml.merges");
  auto id = [&](const char* key) -> std::optional<int64_t> {
    if (!f.has(key)) return std::nullopt;
    const int64_t v = f.get_i64(key);
    if (v < 0 || static_cast<uint64_t>(v) >= n)
      fail(f.path(), "metadata key " + gguf_quote(key) + " is " + std::to_string(v) + ", outside the vocabulary of " +
                         std::to_string(n) + " tokens");
    return v;
  };
  t.bos_id = id("tokenizer.ggml.bos_token_id");
  t.eos_id = id("tokenizer.ggml.eos_token_id");
  t.unk_id = id("tokenizer.ggml.unknown_token_id");
  t.pad_id = id("tokenizer.ggml.padding_token_id");
  auto flag = [&](const char* key) -> std::optional<bool> {
    if (!f.has(key)) return std::nullopt;
    return f.get_bool(key);
  };
  t.add_bos = flag("tokenizer.ggml.add_bos_token");
  t.add_eos = flag("tokenizer.ggml.add_eos_token");
  t.add_space_prefix = flag("tokenizer.ggml.add_space_prefix");
  if (f.has("tokenizer.chat_template")) t.chat_template = std::string(f.get_string("tokenizer.chat_template"));
  return t;
}

}  // namespace qlora
