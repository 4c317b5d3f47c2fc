#pragma once
// The model families qlora.cpp runs, as data: what each one's config.json, GGUF and export
// look like and what sets its ModelSpec apart from the shared parts. One file per lineage
// (formats/families/llama.cpp: llama, mistral, ministral, ministral3, ernie4_5, ernie4_5_moe, hunyuan_v1_dense, hunyuan_v1_moe; qwen.cpp: qwen2, qwen3; gemma.cpp: gemma,
// gemma2, gemma3_text, gemma4_text; phi3.cpp: phi3, which Phi-3, Phi-3.5 and Phi-4-mini use; phi.cpp:
// phi, Phi-1 / 1.5 / 2's;
// gpt_neox.cpp: gpt_neox, Pythia's; gpt2.cpp: gpt2, gpt_bigcode;
// opt.cpp: opt; bloom.cpp: bloom; falcon.cpp: falcon; stablelm.cpp: stablelm; starcoder2.cpp:
// starcoder2; granite.cpp: granite, granitemoe, granitemoehybrid, bamba; mamba.cpp: mamba2; nemotron_h.cpp: nemotron_h; mpt.cpp: mpt; apertus.cpp: apertus; olmo2.cpp: olmo2, olmo3;
// llama4.cpp: llama4_text; gptj.cpp: gptj; cohere.cpp: cohere, cohere2; olmo.cpp: olmo; arcee.cpp: arcee; nemotron.cpp: nemotron; smollm3.cpp: smollm3; moe.cpp: mixtral, qwen2_moe, qwen3_moe, olmoe, gpt_oss, minimax_m2; exaone.cpp: exaone4; glm.cpp: glm4, glm4_moe; seed_oss.cpp: seed_oss; deepseek.cpp: deepseek_v2, deepseek_v3; dots1.cpp: dots1; qwen3_5.cpp: qwen3_5_text; lfm2.cpp: lfm2, lfm2_moe) and one registry (formats/model_family.cpp), which is the only list:
// config.json reading, GGUF reading and the merged export all look families up there, and
// an unknown one is an Error naming the file, the model_type and the supported list.
#include <cstdint>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_spec.h"

namespace qlora {

struct GgufLlamaHParams;

// One renaming between a family's Hugging Face tensor / module names and the canonical
// (llama-style) names the engine uses inside: `hf` and `canonical` are fragments that end
// with '.', replaced wherever they occur (gpt_neox: "gpt_neox.layers." <-> "model.layers.",
// ".attention.query_key_value." <-> ".self_attn.qkv_proj.").
struct HfRename {
  std::string_view hf, canonical;
};

// A per-layer tensor name of llama.cpp's GGUF for the family where it differs from the shared
// table (formats/gguf.cpp): blk.N.<gguf> <-> model.layers.N.<canonical>.
struct GgufLayerName {
  std::string_view gguf, canonical;
};
// The fused q/k/v Linear, as llama.cpp's gpt2, gptneox, bloom, falcon and phi3 name it.
inline constexpr GgufLayerName kFusedQkvGgufName{"attn_qkv", "self_attn.qkv_proj"};
// llama.cpp's names of a Mamba2 layer's tensors (granitehybrid's, nemotron_h's: its converters'
// tensor map; ssm_a holds -exp(A_log), ssm_norm is (groups, inner / groups), ssm_a and ssm_d
// (heads, 1)), and of its parameters without a .weight.
inline constexpr GgufLayerName kMamba2GgufNames[] = {{"ssm_in", "linear_attn.in_proj_qkv"},
                                                     {"ssm_conv1d", "linear_attn.conv1d"},
                                                     {"ssm_norm", "linear_attn.norm"},
                                                     {"ssm_out", "linear_attn.out_proj"}};
inline constexpr GgufLayerName kMamba2GgufParams[] = {
    {"ssm_a", "linear_attn.A_log"}, {"ssm_d", "linear_attn.D"}, {"ssm_dt.bias", "linear_attn.dt_bias"}};

// llama.cpp's names of a Mamba (1) layer's tensors (its mamba converter's: ssm_x is x_proj, ssm_dt
// dt_proj with its bias; ssm_a holds -exp(A_log), (channels, state) as transformers' A_log), and
// of its parameters without a .weight.
inline constexpr GgufLayerName kMamba1GgufNames[] = {{"ssm_in", "linear_attn.in_proj_qkv"},
                                                     {"ssm_conv1d", "linear_attn.conv1d"},
                                                     {"ssm_x", "linear_attn.in_proj_b"},
                                                     {"ssm_dt", "linear_attn.in_proj_a"},
                                                     {"ssm_out", "linear_attn.out_proj"}};
inline constexpr GgufLayerName kMamba1GgufParams[] = {{"ssm_a", "linear_attn.A_log"}, {"ssm_d", "linear_attn.D"}};
// ... and Jamba's, with the mixer's dt / B / C norms.
inline constexpr GgufLayerName kJambaGgufNames[] = {{"ssm_in", "linear_attn.in_proj_qkv"},
                                                    {"ssm_conv1d", "linear_attn.conv1d"},
                                                    {"ssm_x", "linear_attn.in_proj_b"},
                                                    {"ssm_dt", "linear_attn.in_proj_a"},
                                                    {"ssm_out", "linear_attn.out_proj"},
                                                    {"ssm_dt_norm", "linear_attn.dt_layernorm"},
                                                    {"ssm_b_norm", "linear_attn.b_layernorm"},
                                                    {"ssm_c_norm", "linear_attn.c_layernorm"}};

struct ModelFamily {
  std::string_view model_type;      // config.json model_type, and ModelSpec::family
  std::string_view hf_class;        // config.json "architectures" of a merged export
  std::string_view gguf_arch;       // llama.cpp's general.architecture ("" = not read)
  // Defaults of the family's transformers config class where config.json leaves keys out.
  int64_t default_head_dim = 0;     // 0: hidden_size / num_attention_heads
  int64_t default_context = 32768;  // max_position_embeddings
  float default_rope_theta = 10000.0f;
  bool default_tied = false;        // tie_word_embeddings
  bool gelu_mlp = false;            // hidden_act is a tanh GELU (GeGLU) rather than silu
  // Reads the family's own config.json keys into s (the shared ones are read already;
  // `where` names the file in errors).
  void (*read_config)(const nlohmann::json& j, const std::string& where, ModelSpec& s) = nullptr;
  // Writes them for an export; throws Error when s has a form config.json cannot express.
  void (*write_config)(const ModelSpec& s, nlohmann::ordered_json& j) = nullptr;
  // Reads the family's own GGUF metadata (may be null: nothing beyond the shared keys).
  void (*read_gguf)(const GgufLlamaHParams& hp, ModelSpec& s) = nullptr;
  // general.architecture of the GGUFs we write ("" = gguf_arch): mistral goes out as llama.cpp's
  // "llama", the architecture its converter uses.
  std::string_view gguf_export_arch = {};
  // transformers' class honours partial_rotary_factor (phi3; elsewhere it is refused).
  bool partial_rotary = false;
  // Its checkpoint and PEFT names where they differ from the canonical ones, in the order
  // to apply them from Hugging Face to canonical (the reverse runs them backwards).
  std::span<const HfRename> hf_renames = {};
  // Reads hidden_act itself (the shared reader accepts silu, or the tanh GELU of gelu_mlp).
  bool own_activation = false;
  // Rewrites the family's own spelling of the shared config.json keys before they are read
  // (gpt2: n_embd -> hidden_size, ...); may be null.
  void (*normalize_config)(nlohmann::json& j) = nullptr;
  // The block Linears are stored (in, out) (transformers' Conv1D: gpt2); loading transposes
  // them, the merged export writes them back that way.
  bool conv1d_linears = false;
  // When set, the renames depend on the model's form (falcon: ln_attn / ln_mlp only in the
  // new architecture) and replace hf_renames.
  std::span<const HfRename> (*renames_for)(const ModelSpec& s) = nullptr;
  // transformers' base_model_prefix ("transformer." for gpt2): checkpoints saved from the
  // base model (the original gpt2 files) leave it out of every name but the head's.
  std::string_view base_prefix = {};
  // Its GGUF's per-layer names that differ from the shared table, looked up first.
  std::span<const GgufLayerName> gguf_layer_names = {};
  // Its GGUF's per-layer tensors whose names do not pair .weight with .weight, whole names after
  // "blk.N." / "model.layers.N." (gemma4: layer_output_scale.weight <-> layer_scalar).
  std::span<const GgufLayerName> gguf_layer_params = {};
  // Why a family with no gguf_arch has no GGUF here, when it is not that llama.cpp lacks it
  // (gpt_oss: llama.cpp has it; qlora does not read or write it yet).
  std::string_view no_gguf_reason = {};
  // llama.cpp's name of the final norm where it is not output_norm (lfm2: token_embd_norm).
  std::string_view gguf_output_norm = {};
  // When set, the GGUF architecture written depends on the model's form (granitemoehybrid without
  // Mamba layers goes out as llama.cpp's converter writes it: granite) and replaces export_arch();
  // "" for a form with none, no_gguf_form saying why.
  std::string_view (*export_arch_for)(const ModelSpec& s) = nullptr;
  std::string_view no_gguf_form = {};
  // PEFT refuses LoRA on modules named out_proj (and conv1d) of this model type (its
  // _check_lora_target_modules_mamba: mamba, mamba2, falcon_h1, ...: their fused kernels bypass
  // the adapter), at creation and at load: all-linear leaves the mixer's out_proj out here, and an
  // explicit out_proj target is refused, so every adapter stays loadable in PEFT.
  bool peft_refuses_out_proj = false;
  // The files' own spelling of a prefix the module paths spell otherwise: `hf` in stored tensor
  // names where the renames (and PEFT's module names) say `canonical` (Nemotron-H: backbone. in
  // NVIDIA's files and transformers' save_pretrained, model. in transformers' modules). Both
  // are read; merged files are written with `hf`, adapters with `canonical`.
  HfRename stored_alias = {};
  // Its transformers class never ties the head to the embeddings, whatever tie_word_embeddings
  // says (Nemotron-H's: _tied_weights_keys empty): read untied; a tied model (from a GGUF without
  // output.weight) is merged with the head written out.
  bool never_tied = false;
  // A second llama.cpp architecture read as this family (nemotron_h_moe: Nemotron 3's experts;
  // export_arch_for picks it on export), "" for none.
  std::string_view gguf_arch_alias = {};
  // A block Linear (kBlockLinearModules index) whose PEFT adapter transformers' module bypasses
  // (Mamba's dt_proj: MambaMixer multiplies by dt_proj.weight itself), -1 for none: all-linear
  // leaves it out and naming it is refused (the adapter would do nothing under PEFT).
  int peft_bypassed_linear = -1;
  // ... bypassed only when that Linear is not quantized (FalconMambaMixer and JambaMambaMixer call
  // dt_proj as a module when config._is_quantized, with its adapter): a 4-/8-bit one is adapted.
  bool peft_bypass_unquantized_only = false;
  std::span<const HfRename> renames(const ModelSpec& s) const { return renames_for ? renames_for(s) : hf_renames; }
  std::string_view export_arch() const { return gguf_export_arch.empty() ? gguf_arch : gguf_export_arch; }
  std::string_view export_arch(const ModelSpec& s) const { return export_arch_for ? export_arch_for(s) : export_arch(); }
};

// A tensor name or module path (with or without a ".weight" suffix) from the family's
// Hugging Face form to the canonical one, and back. Identity for families without renames.
std::string hf_to_canonical(std::span<const HfRename> renames, const std::string& name);
std::string canonical_to_hf(std::span<const HfRename> renames, const std::string& name);
// The same with the renames of the spec's family for that spec (identity for an unknown one),
// and for a vision-language checkpoint's language model, as the wrapper model's module path
// ("model.language_model.layers.0...": formats/hf_wrapper.h).
std::string canonical_to_hf(const ModelSpec& spec, const std::string& name);
// The reverse, accepting either of a wrapper's two prefixes.
std::string hf_to_canonical(const ModelSpec& spec, const std::string& name);
// Whether a canonical tensor name is a block Linear's weight (model.layers.N.<self_attn|mlp>.X.weight).
bool is_block_linear_weight(const std::string& canonical);

// The family of a config.json model_type, or null.
const ModelFamily* find_family(std::string_view model_type);
// The family of a GGUF general.architecture, or null.
const ModelFamily* find_family_by_gguf_arch(std::string_view arch);
// "llama, mistral, ..." for errors and docs: the config.json model_types, and the GGUF
// general.architecture values.
std::string supported_model_types();
std::string gguf_supported_architectures();
// The family of `model_type`, or an Error naming `where`, the type and the supported list.
const ModelFamily& family_or_fail(std::string_view model_type, const std::string& where);

namespace families {  // formats/families/*.cpp
// DeepSeek-V3's MoE as llama.cpp's GGUFs carry it (deepseek2, glm4moe, dots1; formats/families/
// deepseek.cpp): the dense lead (leading_dense_block_count, its width feed_forward_length),
// ungated shared experts of expert_shared_count x the experts' width, expert_weights_scale (absent
// or 0: 1), expert groups where expert_group_count says, expert_weights_norm, the experts read one
// by one, no MTP blocks. The router's kind is the caller's.
void read_deepseek_moe_gguf(const GgufLlamaHParams& hp, ModelSpec& s);
// The Mamba2 mixer's config.json keys as Granite 4.0-H and Bamba spell them (mamba_n_heads,
// mamba_d_head ("auto"), mamba_d_state, mamba_n_groups, mamba_d_conv, mamba_expand, mamba_conv_bias,
// mamba_proj_bias, time_step_limit; formats/families/granite.cpp), for the layers flagged in `mamba`
// (none flagged: nothing read); and written back. Errors name `where` and the key. With
// inner_from_heads the inner width is mamba_n_heads x mamba_d_head (Nemotron-H's; mamba_expand unread).
void read_mamba2_keys(const nlohmann::json& j, const std::string& where, ModelSpec& s, std::vector<bool> mamba,
                      bool inner_from_heads = false);
void write_mamba2_keys(const ModelSpec& s, nlohmann::ordered_json& j);
// A Mamba2 hybrid GGUF's layers (hp.recurrent_layers) and sizes from its ssm.* keys (time_step_rank:
// the heads; inner_size / time_step_rank their size; group_count, state_size, conv_kernel), the
// conv's bias as given; an Error naming the file when a size is missing.
void read_mamba2_gguf(const GgufLlamaHParams& hp, ModelSpec& s, bool conv_bias);
// Mamba (1)'s mixer (ModelSpec::la_mamba1; families/mamba1.cpp) on the layers flagged in `mamba`, of
// `inner` channels, from the config's keys under the family's names (MambaConfig's state_size,
// conv_kernel, use_conv_bias, use_bias, time_step_rank; JambaConfig's mamba_*): time_step_rank "auto"
// is ceil(hidden / 16).
struct Mamba1Keys {
  const char *state, *conv, *conv_bias, *proj_bias, *dt_rank;
};
void read_mamba1_keys(const nlohmann::json& j, const std::string& where, ModelSpec& s, std::vector<bool> mamba,
                      int64_t inner, const Mamba1Keys& keys);
// ... from a mamba / jamba GGUF's ssm.* sizes (inner_size, state_size, conv_kernel, time_step_rank: dt_proj's
// rank), the conv's bias on (llama.cpp requires it); an Error naming the file when a size is missing.
void read_mamba1_gguf(const GgufLlamaHParams& hp, ModelSpec& s, std::vector<bool> mamba);
extern const ModelFamily kLlama, kMistral, kQwen2, kQwen3, kGemma, kGemma2, kGemma3Text, kPhi3, kPhi, kGptNeoX, kGpt2, kOpt, kBloom, kFalcon, kStableLm,
    kStarcoder2, kGranite, kOlmo2, kGptj, kCohere, kSmolLm3, kCohere2, kOlmo, kArcee, kNemotron,
    kMixtral, kQwen2Moe, kQwen3Moe, kOlmoe, kOlmo3, kExaone4, kGlm4, kGptOss, kMinistral, kMinistral3, kErnie45, kHunyuanDense, kQwen3_5Text, kQwen3_5MoeText, kQwen3Next, kGemma4Text, kGlm4Moe, kErnie45Moe, kSeedOss, kDeepseekV2, kDeepseekV3, kGraniteMoe, kDots1, kMiniMaxM2, kHunyuanMoe, kLlama4Text, kLfm2, kLfm2Moe, kGraniteMoeHybrid, kBamba, kMamba2, kNemotronH, kGptBigCode, kMpt, kApertus, kMamba, kFalconMamba, kJamba;
}

}  // namespace qlora
