// Meta's Llama 4 language model (model_type "llama4_text", Llama4ForCausalLM; the text part of
// Llama-4-Scout-17B-16E and Maverick-17B-128E). Llama's block with:
//   * rotary on adjacent pairs (transformers' complex-number form) on most layers, none on every
//     no_rope_layer_interval-th (no_rope_layers: 1 = rotates), the rotating layers attending
//     within chunks of attention_chunk_size positions (layer_types "chunked_attention") and
//     normalizing q and k per head after the rotary without a weight (use_qk_norm);
//   * on the NoPE layers the queries scaled by 1 + attn_scale ln(1 + floor((p + 1) / floor_scale))
//     (attn_temperature_tuning);
//   * the MLP of the layers in moe_layers (every interleave_moe_layer_step-th) a mixture of
//     num_local_experts SwiGLU experts of intermediate_size behind a top-k router whose
//     sigmoid weights scale each expert's input, plus an ungated shared expert of the same width;
//     the other layers a dense MLP of intermediate_size_mlp (ModelSpec::moe_llama4).
// Its checkpoints name the MLP feed_forward and the router feed_forward.router; the experts are
// fused (in, out) (bitsandbytes' checkpoints split them per expert, as its quantizer does).
#include <vector>

#include "base/error.h"
#include "formats/config_reader.h"
#include "formats/gguf.h"
#include "formats/model_family.h"

namespace qlora::families {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

void llama4_read(const json& j, const std::string& where, ModelSpec& s) {
  const int64_t L = s.n_layers;
  s.qkv_bias = s.o_bias = config::get_bool(j, "attention_bias", where, false);
  s.rope_interleaved = true;
  s.norm_eps = config::get_float(j, "rms_norm_eps", where, 1e-5f);
  // Rotary per layer (Llama4TextConfig.__post_init__'s default: every interval-th layer NoPE).
  s.nope_layers = config::nope_layers(j, L, where, /*empty_is_default=*/true);
  std::vector<bool> rotates(static_cast<size_t>(L), true);
  for (int64_t l = 0; l < L && !s.nope_layers.empty(); ++l) rotates[static_cast<size_t>(l)] = !s.nope_layers[static_cast<size_t>(l)];
  // Chunked attention on the layers layer_types names (by default the rotating ones).
  std::vector<bool> chunked(static_cast<size_t>(L));
  if (const json* lt = config::find_key(j, "layer_types"); lt && !lt->is_null()) {
    if (!lt->is_array() || static_cast<int64_t>(lt->size()) != L)
      fail(where, "layer_types must name one type per layer (" + std::to_string(L) + ")");
    for (int64_t l = 0; l < L; ++l) {
      const json& t = (*lt)[static_cast<size_t>(l)];
      const std::string type = t.is_string() ? t.get<std::string>() : std::string();
      if (type != "chunked_attention" && type != "full_attention")
        fail(where, "layer_types[" + std::to_string(l) + "] " + config::shown(t) +
                        ": Llama 4's layers are chunked_attention or full_attention");
      chunked[static_cast<size_t>(l)] = type == "chunked_attention";
    }
  } else {
    for (int64_t l = 0; l < L; ++l) chunked[static_cast<size_t>(l)] = rotates[static_cast<size_t>(l)];
  }
  s.sliding_window = 0;
  s.sliding_layers.clear();
  // (absent: Llama4TextConfig's 8192; null: no chunks)
  // (config::find_key takes null for absent: look for the key itself)
  if (const auto c = j.find("attention_chunk_size"); c == j.end() || !c->is_null()) {
    const int64_t chunk = config::get_int(j, "attention_chunk_size", where, 8192);
    if (chunk <= 0) fail(where, "attention_chunk_size must be positive or null, got " + std::to_string(chunk));
    bool any = false;
    for (bool b : chunked) any |= b;
    if (any) {
      s.sliding_window = chunk;
      s.window_chunked = true;
      s.sliding_layers = chunked;
    }
  }
  s.qk_l2_norm = config::get_bool(j, "use_qk_norm", where, true);
  // (Scout's and Maverick's released configs say 4, which transformers takes for true)
  bool tuning = true;
  if (const json* t = config::find_key(j, "attn_temperature_tuning"); t && !t->is_null()) {
    if (!t->is_boolean() && !t->is_number())
      fail(where, "attn_temperature_tuning " + config::shown(*t) + " must be a boolean (or a number: nonzero = on)");
    tuning = t->is_boolean() ? t->get<bool>() : t->get<double>() != 0.0;
  }
  if (tuning && !s.nope_layers.empty()) {
    s.q_pos_scale_beta = config::get_float(j, "attn_scale", where, 0.1f);
    s.q_pos_scale_period = config::get_int(j, "floor_scale", where, 8192);
    if (s.q_pos_scale_period <= 0) fail(where, "floor_scale must be positive, got " + std::to_string(s.q_pos_scale_period));
    s.q_pos_scale_offset = 1;
    s.q_pos_scale_nope_only = true;
  }
  // The MLPs: experts of intermediate_size (and the shared expert), dense ones of intermediate_size_mlp.
  s.n_experts = config::get_int(j, "num_local_experts", where, 16);
  s.experts_per_token = config::get_int(j, "num_experts_per_tok", where, 1);
  if (s.n_experts <= 0 || s.experts_per_token <= 0 || s.experts_per_token > s.n_experts)
    fail(where, "num_local_experts must be positive and num_experts_per_tok between 1 and it");
  s.expert_ffn = s.ffn;  // (intermediate_size)
  s.shared_expert = true;
  s.shared_expert_gate = false;
  s.shared_expert_ffn = s.expert_ffn;
  s.ffn = config::get_int(j, "intermediate_size_mlp", where, 16384);
  std::vector<bool> moe(static_cast<size_t>(L), false);
  if (const json* ml = config::find_key(j, "moe_layers"); ml && !ml->is_null()) {
    if (!ml->is_array()) fail(where, "moe_layers must be a list of layer indices");
    for (const json& e : *ml) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= L)
        fail(where, "moe_layers holds " + config::shown(e) + "; it must hold layer indices below " + std::to_string(L));
      moe[static_cast<size_t>(e.get<int64_t>())] = true;
    }
  } else {
    const int64_t step = config::get_int(j, "interleave_moe_layer_step", where, 1);
    if (step <= 0) fail(where, "interleave_moe_layer_step must be positive, got " + std::to_string(step));
    for (int64_t l = step - 1; l < L; l += step) moe[static_cast<size_t>(l)] = true;
  }
  s.moe_layer_list = moe;
  s.moe_llama4 = true;
  s.norm_topk = false;
  s.moe_fused_experts = true;
  if (config::get_bool(j, "output_router_logits", where, false))
    std::fprintf(stderr, "note: %s: output_router_logits (the router's auxiliary loss) is not computed here\n",
                 where.c_str());
}

void llama4_write(const ModelSpec& s, ordered_json& j) {
  if (!s.moe() || !s.moe_llama4 || !s.rope_interleaved || s.qkv_bias != s.o_bias || s.mlp_bias || s.qk_norm ||
      (s.sliding_window > 0 && !s.window_chunked) || s.rotary_dim > 0)
    fail("config.json", "not a llama4_text block");
  j["attention_bias"] = s.qkv_bias;
  j["intermediate_size"] = s.expert_ffn;
  j["intermediate_size_mlp"] = s.ffn;
  j["num_local_experts"] = s.n_experts;
  j["num_experts_per_tok"] = s.experts_per_token;
  ordered_json moe = ordered_json::array(), rope = ordered_json::array(), types = ordered_json::array();
  for (int64_t l = 0; l < s.n_layers; ++l) {
    if (s.layer_moe(l)) moe.push_back(l);
    rope.push_back(s.layer_rotates(l) ? 1 : 0);
    types.push_back(s.layer_slides(l) ? "chunked_attention" : "full_attention");
  }
  j["moe_layers"] = moe;
  j["no_rope_layers"] = rope;
  j["attention_chunk_size"] = s.sliding_window > 0 ? ordered_json(s.sliding_window) : ordered_json();
  j["layer_types"] = types;
  j["use_qk_norm"] = s.qk_l2_norm;
  j["attn_temperature_tuning"] = s.q_pos_scale_beta != 0.0f;
  if (s.q_pos_scale_beta != 0.0f) {
    if (s.q_pos_scale_offset != 1 || !s.q_pos_scale_nope_only)
      fail("config.json", "not Llama 4's attention temperature");
    j["attn_scale"] = s.q_pos_scale_beta;
    j["floor_scale"] = s.q_pos_scale_period;
  }
  j["rms_norm_eps"] = s.norm_eps;
}

// llama.cpp's llama4 (src/models/llama4.cpp) fixes what the GGUF does not say: chunks of 8192 on
// three layers of four (attention.sliding_window_pattern, default 4), no rotary on every fourth
// layer and the temperature (0.1, periods of 8192, positions from 1) on those, the weightless q/k
// norms unless the model has 128 experts (Maverick), the MoE every interleave_moe_layer_step-th
// layer; the dense MLPs feed_forward_length wide, the experts and the shared expert
// expert_feed_forward_length.
constexpr int64_t kLlamaCppChunk = 8192, kLlamaCppNopeStep = 4;
constexpr float kLlamaCppTempScale = 0.1f;

void llama4_gguf(const GgufLlamaHParams& hp, ModelSpec& s) {
  const std::string& where = hp.path;
  const int64_t L = hp.num_layers;
  if (hp.expert_count <= 0) fail(where, "a llama4 GGUF without experts (llama.cpp refuses zero experts too)");
  if (hp.sliding_window_zero)
    fail(where, "llama4.attention.sliding_window is 0 (no chunked attention): llama.cpp's llama4 graph then still "
                "scales its last layer's queries by a zero temperature and stops; not a GGUF qlora runs either");
  if (hp.moe_layer_step <= 0) fail(where, "a llama4 GGUF without llama4.interleave_moe_layer_step");
  s.rope_interleaved = true;
  s.nope_layers = config::every_nth_layer(L, kLlamaCppNopeStep);
  if (L < kLlamaCppNopeStep) s.nope_layers.clear();
  s.sliding_window = kLlamaCppChunk;
  s.window_chunked = true;
  if (!hp.swa_layers.empty()) {
    s.sliding_layers = hp.swa_layers;
  } else {
    s.sliding_layers.assign(static_cast<size_t>(L), false);
    for (int64_t l = 0; l < L; ++l) s.sliding_layers[static_cast<size_t>(l)] = l % 4 < 3;
  }
  if (!s.nope_layers.empty()) {
    s.q_pos_scale_beta = kLlamaCppTempScale;
    s.q_pos_scale_period = kLlamaCppChunk;
    s.q_pos_scale_offset = 1;
    s.q_pos_scale_nope_only = true;
  }
  s.qk_l2_norm = hp.expert_count != 128;
  s.moe_layer_list.assign(static_cast<size_t>(L), false);
  for (int64_t l = 0; l < L; ++l) s.moe_layer_list[static_cast<size_t>(l)] = (l + 1) % hp.moe_layer_step == 0;
  s.moe_dense_layers = 0;
  if (!s.shared_expert) fail(where, "a llama4 GGUF without its shared expert (blk.N.ffn_gate_shexp)");
  s.shared_expert_gate = false;
  s.shared_expert_ffn = s.expert_ffn;
  s.ffn = hp.intermediate_size;
  s.moe_llama4 = true;
  s.norm_topk = false;
  s.moe_fused_experts = true;  // (read per expert, as the GGUF presents them)
}

}  // namespace

// Its module tree names the MLP feed_forward and the router feed_forward.router (applied in this
// order from Hugging Face's names; backwards from the canonical ones).
constexpr HfRename kLlama4Renames[] = {{".feed_forward.", ".mlp."}, {".mlp.router.", ".mlp.gate."}};
const ModelFamily kLlama4Text = [] {
  ModelFamily f{"llama4_text", "Llama4ForCausalLM", "llama4", 128, 131072, 500000.0f, false, false, llama4_read,
                llama4_write, llama4_gguf};
  f.hf_renames = kLlama4Renames;
  return f;
}();

}  // namespace qlora::families
