#pragma once
// The architecture of a decoder-only transformer, independent of any file format.
// Readers (llama2.c, config.json, GGUF) produce a ModelSpec; the model is built from it.
//
// Only the llama family (llama, mistral, qwen2, qwen3, smollm, ...) is implemented today:
// RMSNorm, rotary embeddings in the Hugging Face "rotate halves" convention, grouped-query
// attention (with qwen3's per-head q/k norms and mistral's sliding window), SwiGLU MLP. The enums below name the block variants other families need
// (gpt2: LayerNorm + learned positions + GELU MLP; gpt_neox: partial rotary, parallel
// residual; opt: ReLU MLP) so that adding one is adding a spec and a few block variants.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <array>
#include <limits>
#include <string>
#include <vector>

namespace qlora {

enum class NormKind { RMSNorm, LayerNorm };
// SwiGLU: down(silu(gate(x)) * up(x)).   GeGLU: down(gelu_tanh(gate(x)) * up(x)) (gemma).
// Plain: down(act(up(x))) with ModelSpec::act (gpt_neox, gpt2, opt, ...; no gate Linear).
enum class MlpKind { SwiGLU, GeGLU, Plain };
// The activation of a plain (ungated) MLP: Gelu = torch's exact erf GELU ("gelu"),
// GeluTanh = its tanh approximation ("gelu_new", "gelu_pytorch_tanh"), Relu, Relu2 = relu(x)^2
// ("relu2": Arcee, Nemotron), Xielu = xIELU (Apertus: per-layer parameters, XieluParams).
enum class Activation : uint8_t { Gelu, GeluTanh, Relu, Relu2, Xielu };
// xIELU's parameters for one layer (transformers' XIELUActivation: mlp.act_fn.*), as stored:
// alpha_p and alpha_n before their softplus, beta, eps. The activation is
//   x > 0:  softplus(alpha_p) x^2 + beta x
//   else:   (expm1(min(x, eps)) - x) (beta + softplus(alpha_n)) + beta x
struct XieluParams {
  float alpha_p = 0.0f, alpha_n = 0.0f, beta = 0.5f, eps = -1e-6f;
};
// Rotary: RoPE on q and k inside attention.  Learned: a position-embedding table.
// (Learned: model.embed_positions.weight (max_positions, hidden) added to the token
// embeddings, gpt2; no rotary then.)
// (Alibi: no position embedding; attention adds a per-head slope times the key's position
// to every score, bloom.)
enum class PositionalKind { Rotary, Learned, Alibi };

// A tensor the model expects, under its Hugging Face name, with its shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// The Linear layers of a block, in module order: q, k, v, o, gate, up, down, then the gated
// DeltaNet's (hybrid models' linear-attention layers: in_proj_qkv, in_proj_z, in_proj_b,
// in_proj_a, out_proj; LFM2's short conv holds its in_proj and out_proj in the first and last), then Gemma 4's per-layer-input gate and projection (E2B / E4B), then
// the query latent's up-projection of DeepSeek's latent attention (MLA). This is the one list every part of the program indexes by
// (Model::set_adapter, Model::block_linear, train's BlockLinear, LoRA files, the merge, the
// memory planner). A layer holds those of its kind only (ModelSpec::layer_has_linear).
inline constexpr int kBlockLinearCount = 15;
inline constexpr int kAttentionLinears = 7;  // q .. down: every family's
inline constexpr std::array<const char*, kBlockLinearCount> kBlockLinearModules = {
    "self_attn.q_proj",        "self_attn.k_proj",       "self_attn.v_proj",       "self_attn.o_proj",
    "mlp.gate_proj",           "mlp.up_proj",            "mlp.down_proj",          "linear_attn.in_proj_qkv",
    "linear_attn.in_proj_z",   "linear_attn.in_proj_b",  "linear_attn.in_proj_a",  "linear_attn.out_proj",
    "per_layer_input_gate",    "per_layer_projection",   "self_attn.q_b_proj"};
inline constexpr int kPleGateLinear = 12, kPleProjLinear = 13, kMlaQbLinear = 14;

// One of them in a given model: its module path inside the layer, shape and bias. A family
// that fuses Linears (phi3's qkv_proj, gate_up_proj) holds the fused one in the first slot
// of the group and leaves the others absent (module null, shape 0).
struct BlockLinearSpec {
  const char* module;  // null: absent in this family
  int64_t out, in;
  bool bias;
};

// Rotary frequencies other than theta^(-2i/d) (config.json rope_parameters / rope_scaling,
// transformers' modeling_rope_utils): the inverse frequencies and a factor on cos/sin.
struct RopeScaling {
  // Factors: per-frequency divisors read from a file (llama.cpp's rope_freqs.weight, how
  // its GGUFs carry llama3 scaling): inv_freq[i] / freq_factors[i].
  // LongRope (phi3): per-frequency divisors, short_factor while the sequence fits the
  // original context, long_factor beyond it (chosen per forward by its length, as
  // transformers' longrope_frequency_update does), and cos/sin times attention_factor.
  // Dynamic (NTK-aware, transformers' "dynamic"): the base grows with the sequence once it
  // passes the original context, theta * (factor * seq_len / original - (factor - 1))^(d / (d - 2)),
  // chosen per forward by its length (transformers recomputes at each forward that grows
  // past the longest so far; cached keys keep their rotation). The model runs up to
  // factor x the original context (max_positions).
  // Proportional (Gemma 4's full-attention layers): the default frequencies of the first
  // int(rotated_fraction * dims / 2) pairs, zero (no rotation) for the others, all divided
  // by factor -- rotate_half pairs that span the whole head, unlike partial rotary.
  enum class Type : uint8_t { None, Linear, Llama3, Yarn, Factors, LongRope, Dynamic, Proportional };
  Type type = Type::None;
  float factor = 1.0f;
  int64_t original_max_positions = 0;             // llama3, yarn
  float low_freq_factor = 1.0f, high_freq_factor = 4.0f;  // llama3
  float beta_fast = 32.0f, beta_slow = 1.0f;      // yarn
  bool truncate = true;                           // yarn: correction range rounded to whole dims
  float attention_factor = 1.0f;                  // yarn: cos and sin are multiplied by it
  std::vector<float> freq_factors;                // Factors: head_dim / 2 values
  std::vector<float> short_factor, long_factor;   // LongRope: rotary dims / 2 values each
  float rotated_fraction = 1.0f;                  // Proportional: partial_rotary_factor
  const char* name() const {
    switch (type) {
      case Type::None: return "default";
      case Type::Linear: return "linear";
      case Type::Llama3: return "llama3";
      case Type::Yarn: return "yarn";
      case Type::Factors: return "frequency factors";
      case Type::LongRope: return "longrope";
      case Type::Dynamic: return "dynamic";
      case Type::Proportional: return "proportional";
    }
    return "?";
  }
};

struct ModelSpec {
  std::string family = "llama";  // config.json model_type: llama, mistral, qwen2, qwen3, ...
  // Non-empty for the language model of a vision-language checkpoint (formats/hf_wrapper.h):
  // the outer model_type ("gemma3", "mistral3", "llava"); family is then text_config's.
  // Module paths (PEFT's keys) and a merged export's names take the wrapper's prefixes.
  std::string hf_wrapper;
  NormKind norm = NormKind::RMSNorm;  // LayerNorm: with a bias beside every norm weight
  // false: LayerNorms without biases (Cohere's), run with zero biases (no tensors to load or write).
  bool norm_bias = true;
  // false: LayerNorms without weights either (OLMo's non-parametric ones), run with unit
  // weights and zero biases.
  bool norm_weights = true;
  // > 0: q, k and v are clamped to [-clip_qkv, clip_qkv] after their projections (OLMo's
  // clip_qkv, llama.cpp's clamp_kqv).
  float clip_qkv = 0.0f;
  MlpKind mlp = MlpKind::SwiGLU;
  Activation act = Activation::Gelu;  // the Plain MLP's activation
  PositionalKind positional = PositionalKind::Rotary;

  int64_t hidden = 0;         // d_model
  int64_t n_layers = 0;
  int64_t n_heads = 0;        // query heads
  int64_t n_kv_heads = 0;     // key/value heads (GQA when < n_heads)
  int64_t head_dim = 0;       // usually hidden / n_heads
  int64_t ffn = 0;            // MLP hidden size (intermediate_size)
  int64_t vocab = 0;
  int64_t max_positions = 0;  // context length the model was trained for

  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  // Gemma 3: the sliding layers rotate with their own base and scaling (the "local" rope);
  // the others with rope_theta / rope_scaling.
  bool rope_local = false;
  float rope_theta_local = 10000.0f;
  RopeScaling rope_scaling_local;
  bool layer_uses_local_rope(int64_t l) const {
    return rope_local && !sliding_layers.empty() && sliding_layers[static_cast<size_t>(l)];
  }
  float norm_eps = 1e-5f;
  bool tied_embeddings = false;  // lm_head shares model.embed_tokens.weight
  // lm_head has a bias (lm_head.bias, vocab values) added to the logits (phi's PhiForCausalLM,
  // llama.cpp's output.bias).
  bool head_bias = false;
  bool qkv_bias = false;         // q/k/v projections have a bias (qwen2; llama attention_bias)
  bool o_bias = false;           // o_proj has a bias (llama attention_bias)
  bool mlp_bias = false;         // gate/up/down have a bias (llama mlp_bias)
  // Phi-3: q, k and v come from one Linear (self_attn.qkv_proj: q rows, then k, then v) and
  // gate and up from one (mlp.gate_up_proj: gate rows, then up); PEFT adapts the fused ones.
  bool fused_qkv = false;
  bool fused_gate_up = false;
  // Rotary on the first rotary_dim dims of each head only, the rest passed through
  // (partial_rotary_factor < 1: phi-4-mini); 0 = the whole head.
  int64_t rotary_dim = 0;
  int64_t rope_dims() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
  // Rotary pairs are adjacent dims (2i, 2i + 1) (GPT-J's and Cohere's rotate_every_two)
  // rather than (i, i + dims / 2) (rotate_half).
  bool rope_interleaved = false;
  // Layers that skip rotary (NoPE: SmolLM3's every fourth, no_rope_layers); empty = every
  // layer rotates.
  std::vector<bool> nope_layers;
  bool layer_rotates(int64_t l) const { return nope_layers.empty() || !nope_layers[static_cast<size_t>(l)]; }
  // The fused qkv Linear's rows are per head, q k v within each ((heads, 3, head_dim):
  // gpt_neox's query_key_value) rather than all q, then k, then v (phi3). REQUIRES fused_qkv
  // and n_kv_heads == n_heads.
  bool qkv_per_head = false;
  // ... or per key/value group, its query heads then its key then its value ((kv_heads,
  // heads / kv_heads + 2, head_dim): falcon's new_decoder_architecture).
  bool qkv_grouped = false;
  // The parallel residual's MLP reads the attention's normed input: one norm per block
  // (falcon-7b; no post_attention_layernorm).
  bool shared_branch_norm = false;
  // gpt_neox's use_parallel_residual: x + attn(norm1(x)) + mlp(norm2(x)) (the MLP reads the
  // block input, not the attention's output).
  bool parallel_residual = false;
  // Learned positions: position p reads row p + position_offset of the table (OPT: 2), which
  // has max_positions + position_offset rows.
  int64_t position_offset = 0;
  // The token embeddings' width when it differs from hidden (0: hidden): the embeddings
  // and the tied head are (vocab, embed_dim), model.project_in (hidden, embed_dim) takes
  // them to the blocks and model.project_out (embed_dim, hidden) back to the head (OPT's
  // word_embed_proj_dim: opt-350m).
  int64_t embed_dim = 0;
  int64_t embed_width() const { return embed_dim > 0 ? embed_dim : hidden; }
  bool projects_embeddings() const { return embed_dim > 0 && embed_dim != hidden; }
  // Post-norm blocks: x = norm1(x + attn(x)); x = norm2(x + mlp(x)) (OPT's
  // do_layer_norm_before false: opt-350m). The branches read the stream itself.
  bool post_norm = false;
  // The blocks' output goes through model.norm before the head (false: straight to it;
  // post-norm OPT).
  bool final_norm = true;
  // ALiBi in Falcon's form (falcon-rw: its bias is built in bf16 and added before the
  // 1/sqrt(head_dim) scaling; ops.h AlibiBias), not BLOOM's.
  bool alibi_falcon = false;
  // ALiBi's slopes (positional Alibi) with the bias maximum alibi_bias_max (8 for BLOOM, Falcon and
  // transformers' MPT): BLOOM's and llama.cpp's series (the lower power of two's slopes, then odd
  // powers of the next one's base), or with alibi_mpt the same series as transformers' MPT computes
  // it (1 / 2^(i max / n) over the next power of two, odd-indexed then even-indexed: float32 rounding
  // differs by an ulp).
  bool alibi_mpt = false;
  float alibi_bias_max = 8.0f;
  // A LayerNorm (with bias) on the token embeddings, model.embed_norm (bloom's
  // word_embeddings_layernorm).
  bool embed_norm = false;
  // RMSNorm over each head of q and of k (weights self_attn.q_norm / k_norm, head_dim
  // each), after the projections and before rotary (qwen3).
  bool qk_norm = false;
  // > 0: query position p attends to keys at positions p - sliding_window + 1 .. p only
  // (mistral's sliding_window; transformers' mask kv_idx > q_idx - sliding_window). 0: all.
  int64_t sliding_window = 0;
  // Which layers the window applies to (gemma2 alternates; config.json layer_types):
  // empty = every layer.
  std::vector<bool> sliding_layers;
  // The window is Llama 4's chunked attention (attention_chunk_size) instead: position p attends
  // to the keys of its own chunk of sliding_window positions, floor(p / w) * w .. p
  // (transformers' create_chunked_causal_mask). Either way a query sees at most the last
  // sliding_window keys.
  bool window_chunked = false;
  bool layer_slides(int64_t l) const {
    return sliding_window > 0 && (sliding_layers.empty() || sliding_layers[static_cast<size_t>(l)]);
  }
  // Gemma 2: "sandwich" norms: the attention and MLP outputs are normalized
  // (post_attention_layernorm, post_feedforward_layernorm) before their residual adds, and
  // the MLP input has its own norm (pre_feedforward_layernorm).
  bool sandwich_norms = false;
  // false (OLMo 2): no norm before the branches -- attention and the MLP read the stream
  // itself, and only sandwich_norms' post norms (post_attention_layernorm,
  // post_feedforward_layernorm) sit before the residual adds.
  bool pre_norms = true;
  // qk_norm over all heads of q (and of k) at once, weights of q_dim / kv_dim values (OLMo 2)
  // instead of one head_dim weight shared by the heads.
  bool qk_norm_full = false;
  // The per-head q/k norms come after the rotary instead of before it (Hunyuan's dense models).
  bool qk_norm_after_rope = false;
  // Llama 4's use_qk_norm: on the layers that rotate, q and k are each normalized per head after
  // the rotary by an RMSNorm without weight (Llama4TextL2Norm, eps norm_eps, rounded); not on its
  // NoPE layers. (No q_norm / k_norm tensors; exclusive with qk_norm.)
  bool qk_l2_norm = false;
  // Per-head q/k norms with a weight of their own per head ((heads, head_dim) tensors: Command
  // R+'s use_qk_norm LayerNorms): each head normalized with unit weight, then scaled by its
  // weights, rounded once (CohereLayerNorm multiplies in float32).
  bool qk_norm_head_weights = false;
  // ... stored one tensor per head, self_attn.q_layernorm.norms.<h>.weight / k_layernorm
  // (head_dim each: StableLM 2 12B's StableLmLayerNormPerHead) instead of (heads, head_dim).
  bool qk_norm_tensor_per_head = false;
  // RMSNorm computes weight * (x rstd) in float32 and rounds once (OLMo 2's), where Llama's
  // rounds x rstd to the compute dtype first.
  bool norm_round_once = false;
  // ... the q/k norms only (MiniMax-M2's, FlexOlmo's form beside Mixtral's block norms).
  bool qk_norm_round_once = false;
  // Attention scores are scaled by attn_scale (0: 1/sqrt(head_dim); gemma2:
  // query_pre_attn_scalar^-0.5) and, when > 0, soft-capped: cap * tanh(score / cap).
  float attn_scale = 0.0f;
  float attn_softcap = 0.0f;
  // > 0: the output logits are soft-capped the same way (gemma2 final_logit_softcapping).
  float final_softcap = 0.0f;
  // Nemotron: every LayerNorm scales by (1 + weight), rounded to the compute dtype (LayerNorm1P).
  // Gemma: every RMSNorm scales by (1 + weight) in float32 and rounds once (ops.h
  // rmsnorm_forward's weight_offset 1), and the embeddings are multiplied by sqrt(hidden).
  bool norm_unit_offset = false;
  bool embed_scale = false;
  // Granite's multipliers (1: none): the embeddings are multiplied by embed_multiplier, each
  // branch output (attention, MLP) by residual_multiplier before its residual add, and the
  // logits divided by logit_divisor (logits_scaling); its attention scale is attn_scale.
  // Each product is rounded to the compute dtype, as transformers' bf16 tensors are.
  float embed_multiplier = 1.0f;
  float residual_multiplier = 1.0f;
  float logit_divisor = 1.0f;
  // Cohere's logit_scale: the logits are multiplied by it (1: none).
  float logit_multiplier = 1.0f;
  // What the logits are multiplied by (1: nothing to do).
  float logit_factor() const { return logit_multiplier / logit_divisor; }
  float norm_offset() const { return norm_unit_offset ? 1.0f : 0.0f; }

  // Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): n_experts > 0 replaces the
  // MLP by a router (mlp.gate, (n_experts, hidden), no bias; softmax over its logits in
  // float32, the experts_per_token largest kept and, with norm_topk, divided by their sum)
  // and n_experts SwiGLU experts of expert_ffn each (mlp.experts.<e>.gate_proj / up_proj /
  // down_proj); the block's output is the experts' outputs weighted by those probabilities.
  // The gate/up/down slots then hold the shared expert (shared_expert: Qwen2-MoE's
  // mlp.shared_expert.*, ffn wide, its output scaled by sigmoid(mlp.shared_expert_gate x),
  // a (1, hidden) Linear) or are absent.
  int64_t n_experts = 0, experts_per_token = 0, expert_ffn = 0;
  bool norm_topk = true;
  // The routing weights are rounded to the compute dtype before they scale the experts'
  // outputs (Qwen-MoE, OLMoE: .to(router_logits.dtype)); Mixtral multiplies in float32.
  bool moe_round_weights = false;
  bool shared_expert = false;
  // IBM Granite MoE (granitemoe): transformers' module tree keeps block_sparse_moe, its router
  // module block_sparse_moe.router (its files: router.layer.weight) and its experts
  // block_sparse_moe.experts (its files: input_linear / output_linear, fused as moe_fused_experts);
  // PEFT 0.21's all-linear on it adapts the attention only (measured).
  bool moe_granite = false;
  // The float32 router is an nn.Linear module (Hunyuan's mlp.gate.wg): PEFT adapts it as a module
  // (target_modules) under that module's path, not as a parameter.
  bool moe_router_linear = false;
  // gpt-oss's experts (transformers' GptOssMLP): the router has a bias and its softmax runs
  // over the experts_per_token largest logits; the experts are stored fused,
  // mlp.experts.gate_up_proj (n_experts, hidden, 2 expert_ffn) with gate and up columns
  // interleaved and mlp.experts.down_proj (n_experts, expert_ffn, hidden), each with a bias
  // (gate_up_proj_bias, down_proj_bias); the activation is
  //   (clamp(up, -limit, limit) + 1) * g * sigmoid(swiglu_alpha * g),  g = min(gate, limit).
  // (Loaded per expert as the others are: gate and up rows de-interleaved into one Linear.)
  bool moe_gpt_oss = false;
  // The experts stored fused as transformers 5 holds them (Qwen3.5-MoE's files):
  // mlp.experts.gate_up_proj (n_experts, 2 expert_ffn, hidden), gate rows then up rows, and
  // mlp.experts.down_proj (n_experts, hidden, expert_ffn), no biases (else one tensor per
  // expert and part, mlp.experts.<e>.gate_proj, ...).
  bool moe_fused_experts = false;
  float swiglu_alpha = 1.702f, swiglu_limit = 7.0f;
  // Gemma 4's MoE block (26B-A4B; transformers' Gemma4TextRouter / Gemma4TextExperts): beside
  // the dense MLP, whose output goes through post_feedforward_layernorm_1, the experts (fused as
  // moe_fused_experts, GeGLU as the MLP) read pre_feedforward_layernorm_2 of the block's stream
  // and their sum goes through post_feedforward_layernorm_2; the two are added before
  // post_feedforward_layernorm. The router (router.proj, an nn.Linear: quantized like the block
  // Linears) reads the stream itself through a weightless RMSNorm, times router.scale and
  // hidden^-0.5; its top-k probabilities, renormalized, are multiplied by router.per_expert_scale.
  bool moe_gemma4 = false;
  bool moe() const { return n_experts > 0; }
  // Ungated experts (Nemotron 3's NemotronHExperts): each expert is down(act(up x)) with the plain
  // MLP's activation (act), its files mlp.experts.<e>.up_proj / down_proj; the gate_up slot
  // (LayerWeights::expert_gate_up, the adapters' part 0) then holds the up rows alone.
  bool moe_ungated = false;
  // (Its experts' weighted outputs are summed in float32 and rounded once, as NemotronHExperts
  // accumulates in the router weights' dtype, where GLM-4.5's / DeepSeek's round each add.)
  // Rows of an expert's first product: gate | up (2 expert_ffn), or up alone when ungated.
  int64_t expert_gu_rows() const { return moe_ungated ? expert_ffn : 2 * expert_ffn; }
  // GLM-4.5's and DeepSeek-V3's MoE (transformers' Glm4MoeTopkRouter / DeepseekV3TopkRouter):
  // the first moe_dense_layers layers (first_k_dense_replace) have a dense MLP of ffn instead;
  // the others the experts plus shared experts (mlp.shared_experts.*, shared_expert_ffn wide,
  // added without a gate: shared_expert_gate false). The router's weight (mlp.gate.weight, an
  // nn.Parameter: never quantized nor adapted) gives float32 logits; s = sigmoid(logits); the
  // choice adds mlp.gate.e_score_correction_bias; the experts are moe_groups groups, each scored
  // by the sum of its two best choices, and only the moe_topk_groups best groups compete; of
  // those the experts_per_token best; their weights are s (without the bias), divided by their
  // sum + 1e-20 when norm_topk, times moe_routed_scale (float32).
  int64_t moe_dense_layers = 0, shared_expert_ffn = 0;
  bool shared_expert_gate = true;
  bool moe_sigmoid_router = false;
  float moe_sigmoid_norm_eps = 1e-20f;  // (LFM2-MoE's: 1e-6)
  // LFM2-MoE's router (Lfm2MoeTopKRouter) computes in the model's dtype where GLM-4.5's keeps float32:
  // logits, sigmoid, the chosen scores, their sum, sum + eps, the weights and their scaling each
  // rounded to the compute dtype (the choice adds the float32 bias to the rounded scores).
  bool moe_router_in_dtype = false;
  int64_t moe_groups = 1, moe_topk_groups = 1;
  float moe_routed_scale = 1.0f;
  // ERNIE 4.5's MoE (transformers' Ernie4_5_MoeTopKRouter): the same float32 router and score bias
  // (mlp.moe_statics.e_score_correction_bias, (1, n_experts)), over softmax probabilities p:
  // the choice is the top k of p + bias, the weights p / max(sum, moe_norm_min), rounded to the
  // compute dtype (moe_round_weights), no groups, no scale.
  bool moe_biased_softmax = false;
  float moe_norm_min = 1e-12f;
  // The router whose weight is float32 with a score bias (GLM-4.5 / DeepSeek-V3's, ERNIE 4.5's),
  // and that bias's tensor name in a layer ((1, n_experts) when moe_score_bias_rows).
  // DeepSeek-V2's (transformers' DeepseekV2TopkRouter): float32 softmax probabilities p, no score
  // bias; with moe_groups > 1 only the moe_topk_groups groups of the best single p compete
  // (group_limited_greedy); weights p (never renormalized) times moe_routed_scale.
  bool moe_softmax_f32 = false;
  bool moe_f32_router() const { return moe_sigmoid_router || moe_biased_softmax || moe_softmax_f32; }
  // Whether PEFT 0.21's all-linear adapts the experts and the router (its target_parameters) on this
  // model (measured per family: Mixtral, Qwen3-MoE, OLMoE, GLM-4.5, DeepSeek, ERNIE 4.5, dots1,
  // MiniMax-M2, Hunyuan MoE), rather than the attention (gpt-oss, Granite MoE), the router only
  // (Gemma 4), the shared expert and its gate (Qwen2-MoE) or the Linears only (LFM2-MoE).
  // (Nemotron 3: PEFT refuses all-linear on a Mamba model; its module names adapt the Linears and
  // shared experts only, and so does our all-linear.)
  // (Jamba -- the MoE with Mamba (1) layers --: PEFT's all-linear leaves its experts and router out.)
  bool all_linear_adapts_experts() const {
    return moe() && !moe_gpt_oss && !moe_gemma4 && !moe_granite && !la_short_conv && !moe_ungated && !la_mamba1 &&
           (!shared_expert || moe_sigmoid_router || moe_biased_softmax || moe_softmax_f32 || moe_router_linear);
  }
  // Whether that router has a score bias tensor (moe_score_bias).
  bool moe_has_score_bias() const { return moe_sigmoid_router || moe_biased_softmax; }
  std::string moe_score_bias = "mlp.gate.e_score_correction_bias";
  bool moe_score_bias_rows = false;
  // GLM-4.5's multi-token-prediction layers after the last (model.layers.<n_layers + i>.*): kept
  // in its checkpoints, not run (as transformers), not written by merges.
  int64_t mtp_layers = 0;
  // Which layers' MLPs are the mixture of experts when they are not "all from moe_dense_layers on"
  // (Llama 4's moe_layers, every interleave_moe_layer_step-th); empty: by moe_dense_layers.
  std::vector<bool> moe_layer_list;
  // Whether layer l's MLP is the mixture of experts.
  bool layer_moe(int64_t l) const {
    return moe() && (moe_layer_list.empty() ? l >= moe_dense_layers : bool(moe_layer_list[static_cast<size_t>(l)]));
  }
  // The first MoE layer (n_layers when none), the number of MoE layers, and whether some layer
  // has a dense MLP beside them.
  int64_t first_moe_layer() const {
    for (int64_t l = 0; l < n_layers; ++l)
      if (layer_moe(l)) return l;
    return n_layers;
  }
  int64_t moe_layer_count() const {
    int64_t n = 0;
    for (int64_t l = 0; l < n_layers; ++l) n += layer_moe(l) ? 1 : 0;
    return n;
  }
  bool has_dense_mlp_layers() const { return moe() && moe_layer_count() < n_layers; }
  // Llama 4's MoE (transformers' Llama4TextMoe): the router (feed_forward.router, a Linear that
  // bitsandbytes leaves unquantized: its own class) gives logits in the compute dtype; each token's
  // experts_per_token largest logits choose its experts, whose weights are sigmoid(logit) (rounded);
  // each chosen expert reads the token times its weight (rounded: the weight scales the input, not
  // the output), their outputs are summed (float32, rounded once) and the ungated shared expert
  // added. The experts are stored fused as (n_experts, hidden, 2 expert_ffn) gate | up columns
  // and (n_experts, expert_ffn, hidden) -- (in, out), unlike moe_fused_experts' (out, in).
  bool moe_llama4 = false;
  // Ministral 3's (llama 4's) attention temperature: rotated queries at position p are
  // multiplied by 1 + q_pos_scale_beta * ln(1 + floor((p + q_pos_scale_offset) / q_pos_scale_period))
  // (rounded to the compute dtype), which is exactly 1 before the first period. 0: none.
  // Llama 4 (attn_temperature_tuning: attn_scale, floor_scale) counts positions from 1
  // (q_pos_scale_offset 1) and scales the queries of its NoPE layers only (q_pos_scale_nope_only);
  // Ministral 3 those of its rotating layers (all of them).
  float q_pos_scale_beta = 0.0f;
  int64_t q_pos_scale_period = 0;
  int64_t q_pos_scale_offset = 0;
  bool q_pos_scale_nope_only = false;
  float q_pos_scale(int64_t pos) const {
    return 1.0f + q_pos_scale_beta * std::log(1.0f + std::floor(static_cast<float>(pos + q_pos_scale_offset) /
                                                                 static_cast<float>(q_pos_scale_period)));
  }
  // Whether layer l's queries take that scale.
  bool layer_q_pos_scaled(int64_t l) const {
    return q_pos_scale_beta != 0.0f && (q_pos_scale_nope_only ? !layer_rotates(l) : layer_rotates(l));
  }
  // DeepSeek-V2 / V3's multi-head latent attention (MLA: kv_lora_rank > 0; transformers'
  // DeepseekV3Attention). Per token, with h the block's normed input:
  //   q = q_b_proj(q_a_layernorm(q_a_proj(h))) (mla_q_rank > 0; else one q_proj): per head
  //       mla_nope_dim unrotated dims, then rotary_dim rotated ones;
  //   c | k_rot = kv_a_proj_with_mqa(h) (mla_kv_rank + rotary_dim), k_rot rotated, one for all heads;
  //   kv_b_proj(kv_a_layernorm(c)) = per head its mla_nope_dim key dims, then mla_v_dim value dims;
  //   keys per head = its nope dims | k_rot; softmax scaled by attn_scale (yarn's mscale_all_dim).
  // head_dim = mla_nope_dim + rotary_dim (the query/key heads), n_kv_heads = n_heads. The values
  // are padded with zeros to head_dim inside the block (the attention kernels and the KV cache
  // take one head size) and the padding cut from its output before o_proj (n_heads x mla_v_dim).
  // Linears: q_a_proj (or q_proj) in the q slot, kv_a_proj_with_mqa in k's, kv_b_proj in v's,
  // q_b_proj in kMlaQbLinear's; norms NormRole::QLatent / KvLatent.
  int64_t mla_q_rank = 0, mla_kv_rank = 0, mla_nope_dim = 0, mla_v_dim = 0;
  bool mla() const { return mla_kv_rank > 0; }
  // DeepSeek's softmax scale (transformers' yarn_apply_mscale): head_dim^-0.5 times
  // mscale(factor, mscale_all_dim)^2 = (0.1 mscale_all_dim ln(factor) + 1)^2 when the rotary is
  // scaled and rope_parameters names mscale_all_dim (0: absent), in float64 as Python computes it.
  float attn_mscale_all_dim = 0.0f;
  float mla_attention_scale() const {
    double sc = 1.0 / std::sqrt(static_cast<double>(head_dim));
    const double f = rope_scaling.factor;
    if (attn_mscale_all_dim != 0.0f && rope_scaling.type != RopeScaling::Type::None && f > 1.0) {
      const double m = 0.1 * attn_mscale_all_dim * std::log(f) + 1.0;
      sc *= m * m;
    }
    return static_cast<float>(sc);
  }
  // Per-head attention sinks (gpt-oss: self_attn.sinks, (n_heads)): a learned logit per head
  // that joins each softmax's denominator (the max taken over it too) and is then dropped.
  bool attn_sinks = false;
  // Gated attention (Qwen3-Next, Qwen3.5): q_proj yields per head the query then an output
  // gate ((heads, 2, head_dim) rows); the attention output is multiplied by sigmoid(gate)
  // before o_proj.
  bool attn_output_gate = false;
  // Hybrid models (Qwen3.5, Qwen3-Next; config.json layer_types "linear_attention"): those
  // layers replace attention by a gated DeltaNet (model/delta_net.h): linear_attn.in_proj_qkv
  // (q, k of la_k_heads x la_k_dim, v of la_v_heads x la_v_dim) through a causal depthwise
  // conv1d of la_conv_kernel taps and SiLU, the gated delta rule with per-head decay
  // (A_log, dt_bias, in_proj_a) and rate (sigmoid(in_proj_b)), an RMSNorm gated by
  // silu(in_proj_z), out_proj. Empty: no such layers.
  std::vector<bool> linear_attn_layers;
  int64_t la_k_heads = 0, la_v_heads = 0, la_k_dim = 0, la_v_dim = 0, la_conv_kernel = 4;
  // Qwen3-Next's form: q, k, v and z from one Linear (linear_attn.in_proj_qkvz, per key head
  // its q, k, then its value heads' v and z) and b, a from one (in_proj_ba, per key head its
  // value heads' b then a), in the in_proj_qkv and in_proj_b slots.
  bool la_fused_qkvz = false;
  // LFM2's form (layer_types "conv"): the layers' operator is a gated short convolution, not a
  // DeltaNet: in_proj (3 hidden, C) in the in_proj_qkv slot yields per token B | C | x, then
  // y = C * conv(B * x) with the causal depthwise conv1d of la_conv_kernel taps (no activation,
  // no bias), out_proj (C, C) in the out_proj slot. The la_*_heads sizes are unused (0).
  bool la_short_conv = false;
  // Mamba2's form (Granite 4.0-H, Bamba; layer_types "mamba"; model/mamba2.h): in_proj in the
  // in_proj_qkv slot yields per token z (la_value_dim) | xBC (la_conv_dim) | dt (la_v_heads);
  // xBC through the causal conv1d (+ bias with la_conv_bias) and SiLU gives x (la_v_heads heads
  // of la_v_dim) | B | C (la_k_heads groups of la_k_dim, the state size); the scan (A_log,
  // dt_bias, D per head, steps clamped to [la_dt_min, la_dt_max]); the gated RMSNorm of
  // la_k_heads groups (linear_attn.norm, la_value_dim wide); out_proj in the out_proj slot.
  // Biases on in_proj / out_proj: la_proj_bias. The state: (la_v_heads, la_v_dim, la_k_dim).
  bool la_mamba2 = false, la_conv_bias = false, la_proj_bias = false;
  // Mamba (1)'s form (MambaForCausalLM, FalconMambaForCausalLM; model/mamba1.h): la_v_heads
  // channels of la_v_dim 1, la_k_heads 1 and la_k_dim the state size. in_proj (2 inner, C) in the
  // in_proj_qkv slot yields x | z; x through the causal conv1d (+ bias with la_conv_bias) and SiLU;
  // x_proj (la_dt_rank + 2 state, inner) in the in_proj_b slot gives dt | B | C (la_bcdt_norm:
  // Falcon-Mamba's weightless RMSNorms on each, eps la_bcdt_eps); dt_proj (inner, la_dt_rank, with
  // its bias) in the in_proj_a slot; the scan (A_log (inner, state), D (inner)); y * silu(z);
  // out_proj in the out_proj slot. Biases on in_proj / out_proj: la_proj_bias. The state:
  // (inner, state).
  // la_bcdt_weights: those norms have weights (Jamba's dt_layernorm, b_layernorm, c_layernorm).
  bool la_mamba1 = false, la_bcdt_norm = false, la_bcdt_weights = false;
  int64_t la_dt_rank = 0;
  float la_bcdt_eps = 1e-6f;
  // Mamba2ForCausalLM's layers: norm -> mixer -> residual, no MLP and no second norm.
  bool no_mlp = false;
  // Nemotron-H's layers (layers_block_type): each is norm -> one branch -> residual, the branch
  // the mixer (attention or Mamba2: mlp_only_layers[l] false) or the MLP (true), its one norm
  // input_layernorm whichever it is. Empty: every layer has both branches (or the mixer alone
  // with no_mlp).
  std::vector<bool> mlp_only_layers;
  bool single_branch() const { return !mlp_only_layers.empty(); }
  bool layer_has_mixer(int64_t l) const { return !single_branch() || !mlp_only_layers[static_cast<size_t>(l)]; }
  bool layer_has_mlp(int64_t l) const {
    return !no_mlp && (!single_branch() || mlp_only_layers[static_cast<size_t>(l)]);
  }
  // The residual stream stays float32 in bf16/fp16 (Mamba2's residual_in_fp32): the residual adds
  // are not rounded to the compute dtype. (Its norms' inputs, which transformers rounds, are not
  // rounded either: the remaining half-precision difference.)
  bool residual_fp32 = false;
  float la_dt_min = 0.0f, la_dt_max = std::numeric_limits<float>::infinity();
  bool hybrid() const { return !linear_attn_layers.empty(); }
  bool layer_is_linear_attn(int64_t l) const { return hybrid() && linear_attn_layers[static_cast<size_t>(l)]; }
  int64_t la_key_dim() const { return la_k_heads * la_k_dim; }
  int64_t la_value_dim() const { return la_v_heads * la_v_dim; }
  // The channels the causal conv runs over: q | k | v (DeltaNet), x | B | C (Mamba2), x (Mamba 1)
  // or the hidden width (LFM2).
  int64_t la_conv_dim() const {
    return la_short_conv ? hidden : la_mamba1 ? la_value_dim() : 2 * la_key_dim() + la_value_dim();
  }
  // Floats of one linear-attention layer's state per sequence: the conv's last
  // la_conv_kernel - 1 inputs, then the (la_v_heads, la_k_dim, la_v_dim) recurrent state
  // (LFM2's short conv: the conv's inputs only).
  int64_t la_state_floats() const {
    return (la_conv_kernel - 1) * la_conv_dim() + (la_short_conv ? 0 : la_v_heads * la_k_dim * la_v_dim);
  }
  // Whether layer l holds block Linear `which` (kBlockLinearModules order): a hybrid model's
  // attention layers have no DeltaNet Linears and its linear-attention layers no q, k, v, o.
  // (The family may still lack it: block_linears()' module null.)
  bool layer_has_linear(int64_t l, int which) const {
    if (which < kAttentionLinears && !(which < 4 ? layer_has_mixer(l) : layer_has_mlp(l))) return false;
    if (which == kMlaQbLinear) return mla() && mla_q_rank > 0;
    if (which == 2 && global_k_eq_v && layer_global(l)) return false;  // (Gemma 4: values = keys' projection)
    if ((which == 1 || which == 2) && layer_kv_shared(l)) return false;  // (Gemma 4: another layer's keys and values)
    if (which >= kPleGateLinear) return ple();
    if (!hybrid()) return which < kAttentionLinears;
    return layer_is_linear_attn(l) ? which >= 4 : which < kAttentionLinears;
  }
  // Gemma 4 E2B / E4B (num_kv_shared_layers): the last kv_shared_layers layers compute no keys
  // or values; each attends over those of the last earlier layer of its type (sliding or
  // full attention), its producer. With double_wide_shared_mlp their MLP is 2 ffn wide.
  int64_t kv_shared_layers = 0;
  bool double_wide_shared_mlp = false;
  // Gemma 4 E2B / E4B's per-layer inputs (hidden_size_per_layer_input > 0): each token gets
  // ple_dim values per layer, (embed_tokens_per_layer[token] * sqrt(ple_dim) + the RMSNorm
  // (per_layer_projection_norm) of per_layer_model_projection(its scaled embedding) / sqrt(hidden))
  // / sqrt(2); each block then adds post_per_layer_input_norm(per_layer_projection(
  // gelu_tanh(per_layer_input_gate(x)) * its layer's inputs)) to its output before layer_scalar.
  int64_t ple_dim = 0, ple_vocab = 0;
  bool ple() const { return ple_dim > 0; }
  bool layer_kv_shared(int64_t l) const { return kv_shared_layers > 0 && l >= n_layers - kv_shared_layers; }
  // The layer whose keys and values layer l attends over: l itself, or a shared layer's producer.
  int64_t kv_source(int64_t l) const {
    if (!layer_kv_shared(l)) return l;
    for (int64_t i = n_layers - kv_shared_layers - 1; i >= 0; --i)
      if (layer_global(i) == layer_global(l)) return i;
    return l;  // (validate() refuses a type without a producer)
  }
  // Whether some shared layer attends over layer l's keys and values.
  bool layer_kv_producer(int64_t l) const {
    for (int64_t i = n_layers - kv_shared_layers; i < n_layers && kv_shared_layers > 0; ++i)
      if (kv_source(i) == l) return true;
    return false;
  }
  // Layer l's MLP width.
  // (MoE layers beside dense ones: their shared experts' width.)
  int64_t layer_ffn(int64_t l) const {
    if (double_wide_shared_mlp && layer_kv_shared(l)) return 2 * ffn;
    if (shared_expert_ffn > 0 && layer_moe(l)) return shared_expert_ffn;
    return ffn;
  }
  // The widest layer's.
  int64_t max_layer_ffn() const {
    int64_t m = 0;
    for (int64_t l = 0; l < n_layers; ++l) m = std::max(m, layer_ffn(l));
    return std::max(m, ffn);
  }
  // The layers with keys and values of their own (all but the linear-attention and the shared
  // ones), and the index in the KV cache of those layer l attends over (its producer's for a
  // shared layer; Nemotron-H's MLP layers have none). REQUIRES layer_has_kv(kv_source(l)).
  bool layer_has_kv(int64_t l) const { return !layer_is_linear_attn(l) && !layer_kv_shared(l) && layer_has_mixer(l); }
  int64_t kv_layers() const {
    int64_t n = 0;
    for (int64_t l = 0; l < n_layers; ++l) n += layer_has_kv(l) ? 1 : 0;
    return n;
  }
  int64_t kv_layer(int64_t l) const {
    const int64_t src = kv_source(l);
    int64_t n = 0;
    for (int64_t i = 0; i < src; ++i) n += layer_has_kv(i) ? 1 : 0;
    return n;
  }
  // The same for the linear-attention layers (their recurrent states).
  int64_t state_layers() const { return state_layer(n_layers); }
  int64_t state_layer(int64_t l) const {
    int64_t n = 0;
    for (int64_t i = 0; i < l; ++i) n += layer_is_linear_attn(i) ? 1 : 0;
    return n;
  }

  // Gemma 4: the full-attention (non-sliding) layers have their own geometry, global_head_dim
  // wide heads and global_kv_heads key/value heads (0: head_dim / n_kv_heads), rotating with
  // rope_theta / rope_scaling over the whole head (the sliding layers with the local rope);
  // with global_k_eq_v their values are the key projection's output (no v_proj: the keys are
  // then normed and rotated, the values only v-normed). REQUIRES sliding_layers.
  int64_t global_head_dim = 0, global_kv_heads = 0;
  bool global_k_eq_v = false;
  // Gemma 4: an RMSNorm without weight over each value head (v_norm), and attention scores
  // not scaled (attn_scale 1).
  bool v_norm = false;
  // Gemma 4: each block's output is multiplied by its layer's scalar (model.layers.<l>.layer_scalar,
  // one value), rounded to the compute dtype.
  bool layer_scalar = false;
  bool has_global_geometry() const { return global_head_dim > 0; }
  // Whether layer l is one of those full-attention layers.
  bool layer_global(int64_t l) const {
    return has_global_geometry() && !layer_is_linear_attn(l) && !sliding_layers.empty() &&
           !sliding_layers[static_cast<size_t>(l)];
  }
  // Layer l's attention geometry: its heads, key/value heads, head size, rotary dims and
  // whether its values are its keys' projection.
  struct AttentionGeometry {
    int64_t heads = 0, kv_heads = 0, head_dim = 0, rope_dims = 0;
    bool k_eq_v = false;
    int64_t q_dim() const { return heads * head_dim; }
    int64_t kv_dim() const { return kv_heads * head_dim; }
  };
  AttentionGeometry attention_geometry(bool global) const {
    AttentionGeometry g{n_heads, n_kv_heads, head_dim, rope_dims(), false};
    if (global && has_global_geometry()) {
      g.head_dim = g.rope_dims = global_head_dim;
      if (global_kv_heads > 0) g.kv_heads = global_kv_heads;
      g.k_eq_v = global_k_eq_v;
    }
    return g;
  }
  AttentionGeometry layer_geometry(int64_t l) const { return attention_geometry(layer_global(l)); }
  // The first full-attention layer of its own geometry, or 0 when none (its Linears' shapes
  // are then every layer's).
  int64_t first_global_layer() const {
    for (int64_t l = 0; l < n_layers; ++l)
      if (layer_global(l)) return l;
    return 0;
  }
  int64_t layer_kv_dim(int64_t l) const { return layer_geometry(l).kv_dim(); }
  // The rotary dims of the tables the layers read: the local rope's (rope_local models'
  // sliding layers) or the other layers'.
  int64_t rope_table_dims(bool local) const { return attention_geometry(!local).rope_dims; }
  // The widest head of any layer (rotary tables and per-head scratch are sized by it).
  int64_t max_head_dim() const { return std::max(head_dim, global_head_dim); }
  // The key/value widths of the layers with keys and values (the KV cache's, kv_layers() of them).
  std::vector<int64_t> kv_dims() const {
    std::vector<int64_t> d;
    for (int64_t l = 0; l < n_layers; ++l)
      if (layer_has_kv(l)) d.push_back(layer_kv_dim(l));
    return d;
  }

  int bos_id = -1;               // -1: none
  std::vector<int> eos_ids;      // generation stops at any of these
  int pad_id = -1;

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }

  // Throws Error("<where>: ...") when the numbers are inconsistent or unsupported
  // (non-positive sizes, heads not divisible by kv heads, odd head_dim for rotary, ...).
  void validate(const std::string& where) const;

  // The block Linears of this model, in kBlockLinearModules order (module null where the
  // family has none; layer_has_linear says which of them a given layer holds). Models whose
  // layers differ in shape (has_global_geometry) give each layer's with block_linears(l);
  // block_linears() is then the sliding layers'.
  std::array<BlockLinearSpec, kBlockLinearCount> block_linears() const;
  std::array<BlockLinearSpec, kBlockLinearCount> block_linears(int64_t layer) const;

  // Every tensor the model reads, in load order, with its shape ([out, in] for Linear).
  // lm_head.weight is listed only when embeddings are not tied.
  std::vector<TensorSpec> tensors() const;
  // Number of parameters (tied lm_head counted once).
  int64_t num_params() const;
  // One line for logs: "llama: 5 layers, hidden 64, heads 8/4 x 8, ffn 172, vocab 512".
  std::string summary() const;
};

// The first key position query position `pos` attends to under the spec's sliding window
// (0 without one).
inline int64_t first_visible_key(const ModelSpec& s, int64_t pos) {
  if (s.sliding_window > 0 && s.window_chunked) return pos / s.sliding_window * s.sliding_window;
  return s.sliding_window > 0 && pos >= s.sliding_window ? pos - s.sliding_window + 1 : 0;
}

// Hugging Face names of the per-layer tensors, e.g. layer_tensor_name(3, "self_attn.q_proj")
// = "model.layers.3.self_attn.q_proj.weight".
std::string layer_tensor_name(int64_t layer, const std::string& module, const char* suffix = "weight");
// xIELU's per-layer tensors (Apertus; XieluParams' order): model.layers.N.mlp.act_fn.alpha_p, .alpha_n,
// .beta, .eps for i = 0..3 (alpha_p / alpha_n (1), beta / eps 0-dimensional, as transformers saves them).
std::string xielu_tensor_name(int64_t layer, int i);
// The canonical module paths of an MoE layer's parts: "mlp.gate" (the router),
// "mlp.experts.<e>.gate_proj" / "up_proj" / "down_proj" (part 0, 1, 2) and
// "mlp.shared_expert_gate".
inline constexpr const char* kMoeRouterModule = "mlp.gate";
inline constexpr const char* kMoeSharedGateModule = "mlp.shared_expert_gate";
std::string expert_module(int64_t expert, int part);
// gpt-oss's fused expert tensors (ModelSpec::moe_gpt_oss), under mlp.experts.: part 0
// gate_up_proj, 1 gate_up_proj_bias, 2 down_proj, 3 down_proj_bias.
std::string fused_expert_tensor(int part);
std::string fused_expert_name(int64_t layer, int part);  // "model.layers.<layer>." + the above
// StableLM 2 12B's per-head q/k norm modules: "self_attn.q_layernorm.norms.<h>" (key: k_layernorm).
std::string qk_head_norm_module(bool key, int64_t head);

}  // namespace qlora
