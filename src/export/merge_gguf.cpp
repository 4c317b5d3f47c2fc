#include "export/merge_gguf.h"

#include "export/gguf_tokenizer_writer.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "base/progress.h"
#include "base/text_excerpt.h"
#include "formats/ggml_quantize.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/model_loader.h"
#include "formats/model_family.h"
#include "model/ops.h"

namespace qlora {

namespace fs = std::filesystem;

namespace {

// llama.cpp's llama_ftype for a file whose weights are mostly `t`.
uint32_t file_type_of(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
    default: return 1;
  }
}
constexpr uint32_t kFileTypeQ4_K_M = 15;  // LLAMA_FTYPE_MOSTLY_Q4_K_M

// A merged tensor's values in type t. NaN / infinity (a broken base or adapter) and values an
// F16 tensor cannot hold are refused: a GGUF of infinities would load and generate garbage.
std::vector<uint8_t> encode(const std::vector<float>& v, GgmlType t) {
  for (float x : v) {
    if (!std::isfinite(x)) fail("merged weights", "hold a non-finite value (NaN or infinity)");
    if (t == GgmlType::F16 && std::fabs(x) > 65504.0f)
      fail("merged weights", "value " + std::to_string(x) + " does not fit f16 (max 65504): use --gguf-type bf16 or f32");
  }
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) return encode_float_tensor(v, t);
  return quantize_ggml(t, v.data(), static_cast<int64_t>(v.size()));
}

// convert_hf_to_gguf.py's qwen35 forms of a gated DeltaNet's tensors (Qwen3NextModel,
// _LinearAttentionVReorderBase): A_log as -exp(A_log), the value heads tiled over the key heads.
// (The (1 + w) norms' 1 is added by the caller; the conv taps' (channels, 1, kernel) is already
// (channels, kernel) in memory.)
void delta_net_to_llama_cpp(const ModelSpec& s, const std::string& hf, std::vector<float>& v) {
  if (hf.ends_with(".linear_attn.A_log"))
    for (float& x : v) x = -std::exp(x);
  if (s.la_fused_qkvz) return;  // (qwen3next keeps transformers' grouped value heads)
  DeltaNetHeads h;
  h.key_heads = s.la_k_heads;
  h.value_heads = s.la_v_heads;
  h.key_dim = s.la_k_dim;
  h.value_dim = s.la_v_dim;
  h.hidden = s.hidden;
  h.conv_kernel = s.la_conv_kernel;
  delta_net_tensor_heads(hf, v, h, /*to_tiled=*/true);
}

// llama-quant.cpp's use_more_bits: the first and last eighth of the layers and every third
// one between get the larger type.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// "blk.12.attn_v.weight" -> 12 (-1 for tensors outside the blocks).
int64_t block_index(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  return std::stoll(name.substr(4, name.find('.', 4) - 4));
}

}  // namespace

void set_gguf_export_type(GgufExportOptions& opt, const std::string& s, const std::string& where) {
  opt.q4_k_m = false;
  if (s == "f32") opt.type = GgmlType::F32;
  else if (s == "f16") opt.type = GgmlType::F16;
  else if (s == "bf16") opt.type = GgmlType::BF16;
  else if (s == "q8_0") opt.type = GgmlType::Q8_0;
  else if (s == "q4_0") opt.type = GgmlType::Q4_0;
  else if (s == "q4_k_m" || s == "Q4_K_M") opt.q4_k_m = true, opt.type = GgmlType::Q4_K;
  else fail(where, "unknown value " + excerpt(s) + " (expected f16, bf16, f32, q8_0, q4_0 or q4_k_m)");
}

GgmlType gguf_q4_k_m_type(const std::string& name, size_t dims, int64_t cols, int64_t n_layers, bool tied,
                          bool seventy_b) {
  if (dims < 2) return GgmlType::F32;
  GgmlType t = GgmlType::Q4_K;
  const bool head = name == "output.weight" || (tied && name == "token_embd.weight");
  if (head) {
    // The output head (or the embedding that doubles as it) gets Q6_K, or Q8_0 when its rows
    // do not fit K-quant super-blocks.
    t = cols % kQK_K != 0 ? GgmlType::Q8_0 : GgmlType::Q6_K;
  } else if (name.ends_with("attn_v.weight")) {
    t = use_more_bits(block_index(name), n_layers) ? GgmlType::Q6_K : GgmlType::Q4_K;
    if (seventy_b && t == GgmlType::Q4_K)
      fail("--gguf-type q4_k_m", "llama.cpp gives an 80-layer 70B model's attn_v Q5_K, which qlora does not write yet");
  } else if (name.ends_with("ffn_down.weight") || name.ends_with("ffn_down_exps.weight")) {
    if (use_more_bits(block_index(name), n_layers)) t = GgmlType::Q6_K;
  }
  // Rows that are not a multiple of the super-block: llama.cpp's fallbacks.
  if (ggml_traits(t).block_size == kQK_K && cols % kQK_K != 0) {
    t = t == GgmlType::Q6_K ? GgmlType::Q8_0 : GgmlType::Q5_0;
    if (cols % 32 != 0) t = GgmlType::F16;
  }
  return t;
}

void write_merged_gguf(const Model& model, const ModelFiles& source, const std::vector<WeightedAdapter>& adapters,
                       const std::string& out_path, const GgufExportOptions& opt, bool overwrite) {
  // (StableLM 2 12B's per-head q/k norm tensors go out stacked, as llama.cpp's converter writes them)
  ModelSpec stacked = model.spec();
  stacked.qk_norm_tensor_per_head = false;
  const ModelSpec& s = stacked;
  std::error_code ec;
  if (fs::exists(out_path, ec) && fs::exists(source.path, ec) && fs::equivalent(out_path, source.path, ec))
    fail(out_path, "is the base model's own file: write the merged model somewhere else");
  if (!overwrite && fs::exists(out_path, ec))
    fail(out_path, "already exists; pass --overwrite to replace it, or choose another --out");
  const ModelFamily* fam = find_family(s.family);
  if (!fam || fam->export_arch().empty())
    fail(out_path, fam ? (fam->no_gguf_reason.empty() ? "llama.cpp has no architecture for model_type '" + s.family + "'"
                                                      : std::string(fam->no_gguf_reason)) +
                             " (no GGUF form: merge to a Hugging Face directory instead)"
                       : "GGUF export of model_type '" + s.family + "' is not supported (" + supported_model_types() + ")");
  if (!fam->no_gguf_reason.empty())  // (read, not written: ministral3)
    fail(out_path, std::string(fam->no_gguf_reason) + " (merge to a Hugging Face directory instead)");
  if (s.moe_gpt_oss) {  // llama.cpp's gpt-oss graph: its constants, its window pattern
    if (s.swiglu_limit != 7.0f || s.swiglu_alpha != 1.702f)
      fail(out_path, "llama.cpp's gpt-oss graph clamps its experts at 7 with alpha 1.702; this model's swiglu_limit " +
                         std::to_string(s.swiglu_limit) + " / alpha " + std::to_string(s.swiglu_alpha) + ": no GGUF form");
    for (int64_t l = 0; l < s.n_layers; ++l)
      if (s.layer_slides(l) != (s.sliding_window > 0 && l % 2 == 0))
        fail(out_path, "llama.cpp's gpt-oss slides the even layers; this model's windows differ: no GGUF form");
    if (s.rope_scaling.type == RopeScaling::Type::Yarn && !s.rope_scaling.truncate && opt.log)
      std::fprintf(stderr,
                   "note: %s: llama.cpp rounds yarn's correction range (truncate) where this model's config does not, "
                   "as llama.cpp's own converter leaves it: the GGUF runs llama.cpp's gpt-oss\n",
                   out_path.c_str());
  }
  const std::string arch(fam->export_arch(s));
  if (arch.empty())
    fail(out_path, "this " + s.family + " model has no llama.cpp architecture (" + std::string(fam->no_gguf_form) +
                       "; merge to a Hugging Face directory instead)");
  // (reordered to q | k | v below; llama.cpp's starcoder splits that with head_count_kv heads of keys)
  if (s.qkv_per_head && arch != "gptneox" && arch != "bloom" && arch != "falcon" && arch != "starcoder")
    fail(out_path, "GGUF export of a per-head fused query_key_value (" + s.family + ") is not supported yet");
  if (arch == "falcon") {  // what llama.cpp's falcon graph runs
    if (s.positional != PositionalKind::Rotary)
      fail(out_path, "llama.cpp has no architecture for ALiBi Falcons (falcon-rw): no GGUF export");
    if (!s.parallel_residual)
      fail(out_path, "llama.cpp's falcon runs the parallel block only; this falcon is sequential (parallel_attn false)");
    if (s.qkv_bias || s.o_bias || s.mlp_bias) fail(out_path, "llama.cpp's falcon has no biases; this model has them");
  }
  const bool llama4 = arch == "llama4";
  if (llama4) {  // what llama.cpp's llama4 graph fixes (families/llama4.cpp's reader lists it)
    bool ok = s.moe_llama4 && s.rope_interleaved && !s.qkv_bias && !s.o_bias && !s.mlp_bias &&
              s.qk_l2_norm == (s.n_experts != 128);
    int64_t step = s.first_moe_layer() + 1;
    for (int64_t l = 0; l < s.n_layers && ok; ++l) {
      ok = s.layer_moe(l) == ((l + 1) % step == 0) && s.layer_rotates(l) == ((l + 1) % 4 != 0 || s.n_layers < 4) &&
           s.layer_slides(l) == (l % 4 < 3);
    }
    if (!ok || s.sliding_window != 8192 || !s.window_chunked)
      fail(out_path, "llama.cpp's llama4 runs chunks of 8192 positions on three layers of four, no rotary on every "
                     "fourth, experts every interleave_moe_layer_step-th layer, q/k norms unless there are 128 "
                     "experts and no biases; this model differs: no GGUF form");
    if (!s.nope_layers.empty() && (s.q_pos_scale_beta != 0.1f || s.q_pos_scale_period != 8192 ||
                                   s.q_pos_scale_offset != 1 || !s.q_pos_scale_nope_only))
      fail(out_path, "llama.cpp's llama4 scales its NoPE layers' queries by attn_scale 0.1 over floor_scale 8192; "
                     "this model's attention temperature differs: no GGUF form");
  } else if (s.moe_llama4 || s.qk_l2_norm || s.window_chunked) {
    fail(out_path, "a " + arch + " GGUF cannot carry Llama 4's router, q/k norms or chunked attention");
  }
  const bool granitehybrid = arch == "granitehybrid";
  // (Granite 4.0 whatever its architecture: shared_mlp fused, split as its converter does)
  const bool granite4 = s.family == "granitemoehybrid";
  if (granitehybrid) {  // what llama.cpp's granitehybrid graph runs (families/granite.cpp's reader lists it)
    bool uniform = true;
    for (int64_t l = 0; l < s.n_layers; ++l) uniform = uniform && s.layer_rotates(l) == s.layer_rotates(0);
    if (!uniform) fail(out_path, "llama.cpp's granitehybrid rotates on every layer or on none; this model mixes");
    if (s.hybrid() && (!s.la_mamba2 || !s.la_conv_bias || s.la_proj_bias || s.la_value_dim() != 2 * s.hidden ||
                       s.la_dt_min != 0.0f || !std::isinf(s.la_dt_max)))
      fail(out_path, "llama.cpp's granitehybrid runs Mamba2 layers of twice the hidden width with a conv bias, no "
                     "projection biases and no time_step_limit; this model differs: no GGUF form");
  }
  const bool nemotron_h = is_nemotron_h_arch(arch);  // (nemotron_h_moe: Nemotron 3's, with experts)
  // (Mamba2ForCausalLM: no attention, no MLP -- llama.cpp's mamba2 reads head_count 0 as "no heads")
  const bool pure_mamba2 = arch == "mamba2";
  // (llama.cpp's Mamba2 layers: granitehybrid's, nemotron_h's and mamba2's tensors)
  const bool mamba2_arch = granitehybrid || nemotron_h || pure_mamba2;
  // (llama.cpp's mamba: Mamba (1) layers only -- MambaForCausalLM's and FalconMambaForCausalLM's; jamba's
  // beside attention and experts)
  const bool jamba = arch == "jamba";
  const bool mamba1_arch = arch == "mamba" || jamba;
  if (jamba) {  // what llama.cpp's jamba graph runs (families/jamba.cpp's reader lists it)
    if (s.hybrid() && (!s.la_mamba1 || !s.la_bcdt_weights || !s.la_conv_bias || s.la_proj_bias ||
                       s.la_value_dim() != 2 * s.hidden))
      fail(out_path, "llama.cpp's jamba runs Mamba layers of twice the hidden width with a conv bias, no projection "
                     "biases and weighted dt / B / C norms; this model differs: no GGUF form");
    if (!s.hybrid())
      fail(out_path, "llama.cpp's jamba requires the Mamba layers' ssm.* sizes; this Jamba has no Mamba layer: no GGUF "
                     "form here");
    if (s.head_dim * s.n_heads != s.hidden)
      fail(out_path, "llama.cpp's jamba takes heads of hidden / num_attention_heads; this model's head_dim " +
                         std::to_string(s.head_dim) + " differs: no GGUF form");
    if (s.moe() && (s.norm_topk || s.expert_ffn != s.ffn || s.shared_expert))
      fail(out_path, "llama.cpp's jamba keeps the top experts' weights as they are, with experts as wide as the MLP and "
                     "no shared expert; this model differs: no GGUF form");
  }
  if (mamba1_arch && !jamba) {  // what llama.cpp's mamba graph runs (families/mamba1.cpp's reader lists it)
    bool all_mamba = s.la_mamba1 && s.no_mlp;
    for (int64_t l = 0; l < s.n_layers && all_mamba; ++l) all_mamba = s.layer_is_linear_attn(l);
    if (!all_mamba || !s.la_conv_bias || s.la_proj_bias || s.la_value_dim() != 2 * s.hidden)
      fail(out_path, "llama.cpp's mamba runs Mamba layers only, of twice the hidden width, with a conv bias and no "
                     "projection biases; this model differs: no GGUF form");
  }
  if (pure_mamba2) {  // what llama.cpp's mamba2 graph runs (families/mamba.cpp's reader lists it)
    bool all_mamba = s.la_mamba2 && s.no_mlp;
    for (int64_t l = 0; l < s.n_layers && all_mamba; ++l) all_mamba = s.layer_is_linear_attn(l);
    if (!all_mamba || !s.la_conv_bias || s.la_proj_bias || s.la_dt_min != 0.0f || !std::isinf(s.la_dt_max))
      fail(out_path, "llama.cpp's mamba2 runs Mamba2 layers only, with a conv bias, no projection biases and no "
                     "time_step_limit; this model differs: no GGUF form");
  }
  if (nemotron_h) {  // what llama.cpp's nemotron_h graph runs (families/nemotron_h.cpp's reader lists it)
    bool nope = true;
    for (int64_t l = 0; l < s.n_layers; ++l) nope = nope && !s.layer_rotates(l);
    if (!s.single_branch() || !nope || s.mlp != MlpKind::Plain || s.act != Activation::Relu2 ||
        s.moe() != (arch == "nemotron_h_moe") ||
        (s.hybrid() && (!s.la_mamba2 || s.la_proj_bias || !std::isinf(s.la_dt_max))))
      fail(out_path, "llama.cpp's nemotron_h runs layers of one branch each (Mamba2 without projection biases or an "
                     "upper step bound, attention without positions, a relu^2 MLP); this model differs: no GGUF form");
    if (s.moe()) {  // (llama.cpp's nemotron_h_moe: every MLP layer has the experts)
      bool all_moe = s.moe_ungated && s.moe_sigmoid_router && s.shared_expert && !s.shared_expert_gate && !s.mlp_bias;
      for (int64_t l = 0; l < s.n_layers && all_moe; ++l) all_moe = s.layer_has_mlp(l) == s.layer_moe(l);
      if (!all_moe)
        fail(out_path, "llama.cpp's nemotron_h_moe gives every MLP layer the experts (ungated, a sigmoid router, an "
                       "ungated shared expert); this model has dense MLP layers beside them or other experts: no GGUF form");
    }
    // (transformers clamps Nemotron-H's steps below at time_step_min, llama.cpp's scan does not and its
    // converter drops the bound: the GGUF is the converter's, differing only where softplus(dt + dt_bias)
    // falls below time_step_min)
  }
  if ((!s.nope_layers.empty() && arch != "cohere2" && arch != "exaone4" && !llama4 && !granitehybrid && !nemotron_h && !jamba) ||
      arch == "smollm3") {  // llama.cpp's smollm3: every fourth layer NoPE, no window
    bool every_fourth = arch == "smollm3" && s.sliding_window == 0;
    for (int64_t l = 0; l < s.n_layers && every_fourth; ++l) every_fourth = s.layer_rotates(l) == ((l + 1) % 4 != 0);
    if (!every_fourth)
      fail(out_path, "llama.cpp runs rotary on every layer but every fourth (smollm3, without windows) and no other "
                     "pattern; this model's layers without rotary or its windows have no GGUF form");
  }
  const bool falcon_two_norms = arch == "falcon" && !s.shared_branch_norm;
  if ((arch == "qwen2" || arch == "qwen3") && s.sliding_window > 0)
    fail(out_path, "llama.cpp's " + arch + " has no sliding window, which this model uses on some layers: no GGUF export");
  // (llama.cpp's gpt2, starcoder and mpt graphs scale scores by 1/sqrt(head_dim) and run the tanh GELU)
  if ((arch == "gpt2" || arch == "starcoder" || arch == "mpt") && s.attn_scale > 0.0f &&
      std::fabs(s.attn_scale - 1.0f / std::sqrt(static_cast<float>(s.head_dim))) > 1e-6f * s.attn_scale)
    fail(out_path, "llama.cpp's " + arch + " scales attention scores by 1/sqrt(head_dim); this model scales them by " +
                       std::to_string(s.attn_scale) + " (scale_attn_weights / softmax_scale): no GGUF form runs it");
  if ((arch == "gpt2" || arch == "starcoder" || arch == "mpt") && s.act == Activation::Relu)
    fail(out_path, "llama.cpp's " + arch + " runs a GELU MLP; this model's is ReLU: no GGUF form runs it");
  if ((arch == "gemma2" || arch == "gemma3") && s.attn_scale > 0.0f &&
      std::fabs(s.attn_scale - 1.0f / std::sqrt(static_cast<float>(s.head_dim))) > 1e-6f * s.attn_scale &&
      s.n_layers != (arch == "gemma2" ? 46 : 62))
    fail(out_path, "this " + s.family + " model's query_pre_attn_scalar differs from its head size, which a GGUF "
                   "cannot carry (llama.cpp assumes the head size except for the 27B models)");
  if (arch == "gemma3" && (s.rope_scaling_local.type != RopeScaling::Type::None))
    fail(out_path, "a GGUF cannot carry rope scaling on gemma3's sliding layers");
  // llama.cpp's Gemma graphs take RMSNorm weights as 1 + w (convert_hf_to_gguf.py adds it).
  const bool norm_plus_one = s.norm_unit_offset;
  // llama.cpp's llama and granite graphs expect their converter's rotary row order.
  const bool permute_qk = arch == "llama" || arch == "granite" || arch == "granitemoe" || arch == "granitehybrid" ||
                          nemotron_h || arch == "smollm3" || arch == "olmo" ||
                          arch == "arcee" || arch == "mistral3";
  const bool deepseek2 = arch == "deepseek2";
  // (dots1: GLM-4.5's router and shared experts beside Qwen3's attention)
  const bool glm_moe = arch == "glm4moe" || arch == "dots1";
  const bool minimax = arch == "minimax-m2";
  const bool lfm2_arch = arch == "lfm2" || arch == "lfm2moe";
  if (lfm2_arch && s.la_conv_kernel < 2)
    fail(out_path, "llama.cpp's " + arch + " takes short convolutions of 2 taps or more (shortconv.l_cache); this "
                   "model's have " + std::to_string(s.la_conv_kernel) + ": no GGUF form");
  if (arch == "lfm2moe" && (!s.moe_sigmoid_router || s.shared_expert || s.moe_groups != 1 || s.moe_routed_scale != 1.0f ||
                            !s.norm_topk))
    fail(out_path, "llama.cpp's lfm2moe runs LFM2-MoE's renormalized sigmoid router without groups, scale or shared "
                   "experts; this model differs: no GGUF form");
  if (minimax && (!s.moe_sigmoid_router || !s.qk_norm_full || s.shared_expert || s.moe_groups != 1 ||
                  s.moe_routed_scale != 1.0f || s.moe_dense_layers != 0 || !s.norm_topk))
    fail(out_path, "llama.cpp's minimax-m2 runs MiniMax-M2's renormalized sigmoid router without groups, scale, dense "
                   "layers or shared experts, and q/k norms over all heads; this model differs: no GGUF form");
  if (s.moe_sigmoid_router && !glm_moe && !deepseek2 && !minimax && arch != "lfm2moe" && !nemotron_h)
    fail(out_path, "a " + arch + " GGUF cannot carry GLM-4.5's sigmoid router");
  if (s.mla() != deepseek2)
    fail(out_path, "a " + arch + " GGUF cannot carry " + (s.mla() ? "latent attention" : "this model's attention"));
  if (deepseek2) {  // what llama.cpp's deepseek2 graph runs (src/models/deepseek2.cpp, llama-graph's build_moe_ffn)
    if (s.qkv_bias || s.o_bias || s.shared_expert_gate || s.mlp_bias ||
        (s.shared_expert && s.shared_expert_ffn % s.expert_ffn != 0))
      fail(out_path, "llama.cpp's deepseek2 has no attention or MLP biases and shared experts of whole expert widths; "
                     "this model differs: no GGUF form");
    if (s.moe_softmax_f32 && s.moe_groups > 1)
      fail(out_path, "llama.cpp limits a deepseek2 softmax router's groups by the sum of their two best experts, where "
                     "DeepSeek-V2's group_limited_greedy takes the best one: no GGUF form that runs this model");
    if (s.rope_scaling.type == RopeScaling::Type::Yarn && s.attn_mscale_all_dim != 0.0f &&
        s.rope_scaling.attention_factor != 1.0f)
      fail(out_path, "llama.cpp takes a deepseek2 yarn's mscale equal to its mscale_all_dim (rotary attention factor 1); "
                     "this model's is " + std::to_string(s.rope_scaling.attention_factor) + ": no GGUF form");
    if (s.mla_q_rank == 0 && s.n_layers != 26 && s.n_layers != 27 && opt.log)
      std::fprintf(stderr,
                   "note: %s: llama.cpp reads a deepseek2 GGUF without a query latent (q_lora_rank) only for 26- or "
                   "27-layer models (DeepSeek-V2-Lite's; its is_lite test): this %lld-layer one is written as the "
                   "converter would, and qlora reads it\n",
                   out_path.c_str(), static_cast<long long>(s.n_layers));
  }
  if (s.moe_biased_softmax != (arch == "ernie4_5-moe") ||
      (arch == "ernie4_5-moe" && (s.shared_expert_gate || s.mlp_bias || s.qkv_bias || s.o_bias)))
    fail(out_path, "llama.cpp's ernie4_5-moe runs ERNIE 4.5's biased softmax router, ungated shared experts and no "
                   "biases; this " + s.family + " model differs: no GGUF form");
  if (arch == "dots1" && (s.n_kv_heads != s.n_heads || s.qkv_bias || s.o_bias))
    fail(out_path, "llama.cpp's dots1 has as many key/value heads as query heads and no attention biases (measured: a "
                   "GGUF with either does not load); this model differs: no GGUF form");
  if (glm_moe && (!s.moe_sigmoid_router || s.shared_expert_gate ||
                  (s.shared_expert && s.shared_expert_ffn % s.expert_ffn != 0)))
    fail(out_path, "llama.cpp's " + arch + " runs GLM-4.5's sigmoid router and shared experts of whole expert widths; "
                   "this model differs: no GGUF form");
  if (s.moe() && !glm_moe && !deepseek2 && !minimax && arch != "lfm2moe" && !nemotron_h) {  // llama.cpp's build_moe_ffn renormalizes the top experts by architecture
    const bool norm = arch == "llama" || arch == "qwen3moe" || arch == "gpt-oss" || arch == "qwen35moe" || arch == "granitemoe" ||
                      granitehybrid ||
                      arch == "hunyuan-moe" ||
                      arch == "qwen3next" || arch == "gemma4" || arch == "ernie4_5-moe";
    if (s.norm_topk != norm)
      fail(out_path, "llama.cpp's " + arch + (norm ? " renormalizes" : " does not renormalize") +
                         " the chosen experts' weights, and this model " + (s.norm_topk ? "does" : "does not") +
                         " (norm_topk_prob): no GGUF form");
    if (arch == "olmoe" && s.n_kv_heads != s.n_heads)
      fail(out_path, "llama.cpp's olmoe has as many key/value heads as query heads; this model has " +
                         std::to_string(s.n_kv_heads) + " of " + std::to_string(s.n_heads));
  }

  const bool gemma4 = arch == "gemma4";
  if (gemma4) {  // what llama.cpp's gemma4 graph runs (src/models/gemma4-iswa.cpp)
    if (s.attn_scale != 1.0f)
      fail(out_path, "llama.cpp's gemma4 leaves attention scores unscaled; this model scales them: no GGUF form");
    if (s.norm_unit_offset || s.attn_softcap > 0.0f)
      fail(out_path, "llama.cpp's gemma4 has plain-weight norms and no attention soft cap; this model differs");
    if (s.rope_scaling_local.type != RopeScaling::Type::None ||
        (s.rope_scaling.type != RopeScaling::Type::None && s.rope_scaling.type != RopeScaling::Type::Proportional))
      fail(out_path, "a gemma4 GGUF carries the full layers' proportional rope only (rope_freqs.weight); this model's "
                     "rotary is scaled otherwise");
    if (s.ple() && s.ple_vocab != s.vocab)
      fail(out_path, "llama.cpp reads per_layer_token_embd over the whole vocabulary; this model's per-layer "
                     "vocabulary (" + std::to_string(s.ple_vocab) + ") differs from its " + std::to_string(s.vocab));
    if (s.kv_shared_layers > 0) {
      const int64_t n = s.n_layers - s.kv_shared_layers;
      if (n < 2 || !s.layer_slides(n - 2) || s.layer_slides(n - 1))
        fail(out_path, "llama.cpp's gemma4 shares the keys and values of the last sliding and full layers before "
                       "the shared ones only when those are a sliding then a full layer; this model's are not");
    }
  }

  GgufWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.name", opt.name.empty() ? fs::path(out_path).stem().string() : opt.name);
  w.set_u32("general.file_type", opt.q4_k_m ? kFileTypeQ4_K_M : file_type_of(opt.type));
  if (opt.q4_k_m || opt.type == GgmlType::Q8_0 || opt.type == GgmlType::Q4_0)
    w.set_u32("general.quantization_version", 2);
  const std::string a = arch + ".";
  // (nemotron_h: as its converter writes it for a model without positions)
  w.set_u32(a + "context_length",
            static_cast<uint32_t>(nemotron_h || pure_mamba2 || (mamba1_arch && !jamba) ? int64_t{1} << 20 : s.max_positions));
  w.set_u32(a + "embedding_length", static_cast<uint32_t>(s.hidden));
  w.set_u32(a + "block_count", static_cast<uint32_t>(s.n_layers));
  if (pure_mamba2 || (mamba1_arch && !jamba)) {  // (as MambaModel / Mamba2Model write them: no MLP, no heads)
    w.set_u32(a + "feed_forward_length", 0);
  } else if (nemotron_h) {  // (per layer, the MLP's width on the MLP layers and 0 elsewhere, as NemotronHModel writes it;
                            // the experts' on the MoE layers)
    std::vector<int32_t> ffn;
    for (int64_t l = 0; l < s.n_layers; ++l)
      ffn.push_back(s.layer_moe(l) ? static_cast<int32_t>(s.expert_ffn) : s.layer_has_mlp(l) ? static_cast<int32_t>(s.ffn) : 0);
    w.set_i32_array(a + "feed_forward_length", ffn);
  } else if (gemma4 && s.double_wide_shared_mlp) {  // (per layer, as convert_hf_to_gguf.py's Gemma4Model)
    std::vector<int32_t> ffn;
    for (int64_t l = 0; l < s.n_layers; ++l) ffn.push_back(static_cast<int32_t>(s.layer_ffn(l)));
    w.set_i32_array(a + "feed_forward_length", ffn);
  } else {
    // (granitehybrid with experts: HF's intermediate_size, the experts' width)
    w.set_u32(a + "feed_forward_length", static_cast<uint32_t>(granitehybrid && s.moe() ? s.expert_ffn : s.ffn));
  }
  w.set_u32(a + "attention.head_count", static_cast<uint32_t>(pure_mamba2 || (mamba1_arch && !jamba) ? 0 : s.n_heads));
  if (pure_mamba2 || (mamba1_arch && !jamba)) {
    // (no key/value heads either)
  } else if (gemma4 && s.attention_geometry(true).kv_heads != s.n_kv_heads) {
    std::vector<int32_t> kv;
    for (int64_t l = 0; l < s.n_layers; ++l) kv.push_back(static_cast<int32_t>(s.layer_geometry(l).kv_heads));
    w.set_i32_array(a + "attention.head_count_kv", kv);
  } else if (((lfm2_arch || granitehybrid || jamba) && s.hybrid()) || nemotron_h) {  // (as LFM2Model, GraniteHybridModel write it: 0 on the conv / Mamba layers; NemotronHModel 0 on the MLP layers too)
    std::vector<int32_t> kv;
    for (int64_t l = 0; l < s.n_layers; ++l) kv.push_back(s.layer_has_kv(l) ? static_cast<int32_t>(s.n_kv_heads) : 0);
    w.set_i32_array(a + "attention.head_count_kv", kv);
  } else {  // (deepseek2: one, the latent's, as its converter writes it)
    w.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(deepseek2 ? 1 : s.n_kv_heads));
  }
  if (lfm2_arch) w.set_u32(a + "shortconv.l_cache", static_cast<uint32_t>(s.la_conv_kernel));
  if (s.act == Activation::Xielu) {  // as convert_hf_to_gguf.py's ApertusModel: each layer's value, as stored
    if (arch != "apertus") fail(out_path, "a " + arch + " GGUF cannot carry xIELU (llama.cpp's apertus has it)");
    if (s.tied_embeddings)
      fail(out_path, "llama.cpp's apertus requires its own output.weight; this model ties its head to the embeddings: "
                     "no GGUF form that loads there");
    static constexpr const char* kKeys[4] = {"xielu.alpha_p", "xielu.alpha_n", "xielu.beta", "xielu.eps"};
    for (int i = 0; i < 4; ++i) {
      std::vector<float> v;
      for (int64_t l = 0; l < s.n_layers; ++l) {
        const XieluParams& xp = model.layers()[static_cast<size_t>(l)].xielu;
        v.push_back(i == 0 ? xp.alpha_p : i == 1 ? xp.alpha_n : i == 2 ? xp.beta : xp.eps);
      }
      w.set_f32_array(kKeys[i], v);  // (no architecture prefix: llama.cpp's LLM_KV_XIELU_* keys)
    }
  }
  if (nemotron_h && !s.hybrid()) {  // (llama.cpp's nemotron_h loader requires the ssm.* keys: NemotronHConfig's defaults)
    w.set_u32(a + "ssm.conv_kernel", 4);
    w.set_u32(a + "ssm.state_size", 128);
    w.set_u32(a + "ssm.group_count", 8);
    w.set_u32(a + "ssm.time_step_rank", 128);
    w.set_u32(a + "ssm.inner_size", 128 * 64);
  }
  if (mamba1_arch && s.hybrid()) {  // as convert_hf_to_gguf.py's MambaModel / JambaModel (time_step_rank: dt_proj's rank)
    w.set_u32(a + "ssm.conv_kernel", static_cast<uint32_t>(s.la_conv_kernel));
    w.set_u32(a + "ssm.inner_size", static_cast<uint32_t>(s.la_value_dim()));
    w.set_u32(a + "ssm.state_size", static_cast<uint32_t>(s.la_k_dim));
    w.set_u32(a + "ssm.time_step_rank", static_cast<uint32_t>(s.la_dt_rank));
    if (!jamba) w.set_bool(a + "ssm.dt_b_c_rms", s.la_bcdt_norm);
  }
  if (mamba2_arch) {  // as convert_hf_to_gguf.py's GraniteHybridModel (and NemotronHModel, derived from it)
    if (s.hybrid()) {
      w.set_u32(a + "ssm.conv_kernel", static_cast<uint32_t>(s.la_conv_kernel));
      w.set_u32(a + "ssm.state_size", static_cast<uint32_t>(s.la_k_dim));
      w.set_u32(a + "ssm.group_count", static_cast<uint32_t>(s.la_k_heads));
      w.set_u32(a + "ssm.time_step_rank", static_cast<uint32_t>(s.la_v_heads));
      w.set_u32(a + "ssm.inner_size", static_cast<uint32_t>(s.la_value_dim()));
    }
    if (!pure_mamba2) w.set_bool(a + "rope.scaling.finetuned", s.layer_rotates(0));  // (the shared_mlp's width below, with the experts)
  }
  if (s.moe()) {  // as convert_hf_to_gguf.py's TextModel and Qwen2MoeModel write them
    w.set_u32(a + "expert_count", static_cast<uint32_t>(s.n_experts));
    w.set_u32(a + "expert_used_count", static_cast<uint32_t>(s.experts_per_token));
    if (arch == "qwen2moe" || arch == "qwen3moe" || arch == "gpt-oss" || arch == "qwen35moe" || arch == "qwen3next" || arch == "granitemoe" ||
        arch == "hunyuan-moe" ||
        gemma4 || glm_moe || arch == "ernie4_5-moe" || deepseek2 || minimax || llama4 || arch == "lfm2moe" || nemotron_h)
      w.set_u32(a + "expert_feed_forward_length", static_cast<uint32_t>(s.expert_ffn));
    if (arch == "gpt-oss" && s.sliding_window > 0)
      w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
    if (glm_moe) {  // as convert_hf_to_gguf.py's Glm4MoeModel / Dots1Model (no MTP block: nextn_predict_layers left out)
      w.set_u32(a + "expert_shared_count", static_cast<uint32_t>(s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0));
      w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(s.moe_dense_layers));
      w.set_u32(a + "expert_gating_func", 2);  // (sigmoid)
      w.set_f32(a + "expert_weights_scale", s.moe_routed_scale);
      w.set_bool(a + "expert_weights_norm", s.norm_topk);
      if (s.moe_groups > 1 && s.moe_topk_groups < s.moe_groups) {  // (all competing: no groups, as llama.cpp asserts)
        w.set_u32(a + "expert_group_count", static_cast<uint32_t>(s.moe_groups));
        w.set_u32(a + "expert_group_used_count", static_cast<uint32_t>(s.moe_topk_groups));
      }
    } else if (nemotron_h) {  // as convert_hf_to_gguf.py's NemotronHModel (MoE): its graph's gating is sigmoid
      w.set_u32(a + "expert_shared_feed_forward_length", static_cast<uint32_t>(s.shared_expert_ffn));
      w.set_u32(a + "expert_shared_count", 1);
      w.set_bool(a + "expert_weights_norm", s.norm_topk);
      w.set_f32(a + "expert_weights_scale", s.moe_routed_scale);
      // (all groups competing is one group: llama.cpp asserts group_used_count < group_count above 1)
      const bool grouped = s.moe_groups > 1 && s.moe_topk_groups < s.moe_groups;
      w.set_u32(a + "expert_group_count", static_cast<uint32_t>(grouped ? s.moe_groups : 1));
      w.set_u32(a + "expert_group_used_count", static_cast<uint32_t>(grouped ? s.moe_topk_groups : 1));
    } else if (minimax) {  // as convert_hf_to_gguf.py's MiniMaxM2Model
      w.set_u32(a + "expert_gating_func", 2);  // (sigmoid)
    } else if (arch == "lfm2moe") {  // as convert_hf_to_gguf.py's LFM2MoeModel
      w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(s.moe_dense_layers));
      w.set_u32(a + "expert_gating_func", 2);  // (sigmoid)
    } else if (deepseek2) {  // as convert_hf_to_gguf.py's DeepseekV2Model
      w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(s.moe_dense_layers));
      w.set_u32(a + "expert_shared_count", static_cast<uint32_t>(s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0));
      w.set_u32(a + "expert_gating_func", s.moe_sigmoid_router ? 2 : 1);
      w.set_f32(a + "expert_weights_scale", s.moe_routed_scale);
      w.set_bool(a + "expert_weights_norm", s.norm_topk);
      if (s.moe_groups > 1 && s.moe_topk_groups < s.moe_groups) {  // (all competing: no groups, as llama.cpp asserts)
        w.set_u32(a + "expert_group_count", static_cast<uint32_t>(s.moe_groups));
        w.set_u32(a + "expert_group_used_count", static_cast<uint32_t>(s.moe_topk_groups));
      }
      if (s.mla_q_rank > 0) w.set_u32(a + "attention.q_lora_rank", static_cast<uint32_t>(s.mla_q_rank));
      w.set_u32(a + "attention.kv_lora_rank", static_cast<uint32_t>(s.mla_kv_rank));
      w.set_u32(a + "attention.key_length_mla", static_cast<uint32_t>(s.head_dim));
      w.set_u32(a + "attention.value_length_mla", static_cast<uint32_t>(s.mla_v_dim));
      if (s.attn_mscale_all_dim != 0.0f)
        w.set_f32(a + "rope.scaling.yarn_log_multiplier", 0.1f * s.attn_mscale_all_dim);
    } else if (arch == "ernie4_5-moe") {  // as convert_hf_to_gguf.py's Ernie4_5MoeModel
      w.set_u32(a + "interleave_moe_layer_step", 1);
      w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(s.moe_dense_layers));
      w.set_u32(a + "expert_shared_count", static_cast<uint32_t>(s.shared_expert ? s.shared_expert_ffn / s.expert_ffn : 0));
      // (the shared experts' width itself: the converter's intermediate_size / num_key_value_heads
      // equals it only on the released models)
      if (s.shared_expert) w.set_u32(a + "expert_shared_feed_forward_length", static_cast<uint32_t>(s.shared_expert_ffn));
    } else if (llama4) {  // as convert_hf_to_gguf.py's Llama4Model (the shared expert: the experts' width)
      w.set_u32(a + "interleave_moe_layer_step", static_cast<uint32_t>(s.first_moe_layer() + 1));
    } else if (s.shared_expert) {
      w.set_u32(a + "expert_shared_feed_forward_length", static_cast<uint32_t>(s.ffn));
    }
  }
  w.set_f32(a + "rope.freq_base", s.rope_theta);
  const bool delta_net_arch = arch == "qwen35" || arch == "qwen35moe" || arch == "qwen3next";
  if (delta_net_arch) {  // as convert_hf_to_gguf.py's Qwen3NextModel / Qwen3_5TextModel
    if (s.la_k_dim != s.la_v_dim)
      fail(out_path, "llama.cpp's qwen35 takes gated DeltaNet key and value heads of one size; this model's are " +
                         std::to_string(s.la_k_dim) + " and " + std::to_string(s.la_v_dim) + ": no GGUF form");
    int64_t interval = 0;
    while (interval < s.n_layers && s.layer_is_linear_attn(interval)) ++interval;
    ++interval;  // (the first attention layer's index + 1)
    for (int64_t l = 0; l < s.n_layers; ++l)
      if (s.layer_is_linear_attn(l) != ((l + 1) % interval != 0))
        fail(out_path, "llama.cpp's qwen35 attends on every full_attention_interval-th layer; this model's "
                       "layer_types follow no such interval: no GGUF form");
    w.set_u32(a + "ssm.conv_kernel", static_cast<uint32_t>(s.la_conv_kernel));
    w.set_u32(a + "ssm.state_size", static_cast<uint32_t>(s.la_k_dim));
    w.set_u32(a + "ssm.group_count", static_cast<uint32_t>(s.la_k_heads));
    w.set_u32(a + "ssm.time_step_rank", static_cast<uint32_t>(s.la_v_heads));
    w.set_u32(a + "ssm.inner_size", static_cast<uint32_t>(s.la_value_dim()));
    w.set_u32(a + "full_attention_interval", static_cast<uint32_t>(interval));
    // (multimodal rotary sections: every one gets the same position on text; llama.cpp's qwen35
    // loaders require the key, its converter writes transformers' default)
    if (arch != "qwen3next") w.set_i32_array(a + "rope.dimension_sections", {11, 11, 10, 0});
  }
  if (arch == "gemma3") {
    if (s.sliding_window > 0) w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
    std::vector<bool> swa;
    for (int64_t l = 0; l < s.n_layers; ++l) swa.push_back(s.layer_slides(l));
    w.set_bool_array(a + "attention.sliding_window_pattern", swa);
    w.set_f32(a + "rope.freq_base_swa", s.rope_theta_local);
  }
  if (gemma4) {  // as convert_hf_to_gguf.py's Gemma4Model
    w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
    std::vector<bool> swa;
    for (int64_t l = 0; l < s.n_layers; ++l) swa.push_back(s.layer_slides(l));
    w.set_bool_array(a + "attention.sliding_window_pattern", swa);
    w.set_f32(a + "rope.freq_base_swa", s.rope_theta_local);
    w.set_u32(a + "attention.key_length_swa", static_cast<uint32_t>(s.head_dim));
    w.set_u32(a + "attention.value_length_swa", static_cast<uint32_t>(s.head_dim));
    w.set_u32(a + "rope.dimension_count_swa", static_cast<uint32_t>(s.head_dim));
    w.set_u32(a + "attention.shared_kv_layers", static_cast<uint32_t>(s.kv_shared_layers));
    w.set_u32(a + "embedding_length_per_layer_input", static_cast<uint32_t>(s.ple_dim));
    if (s.final_softcap > 0) w.set_f32(a + "final_logit_softcapping", s.final_softcap);
  }
  if (arch == "command-r" && s.qk_norm != (s.n_layers >= 64))  // (llama.cpp keys Command R+ on its layer count)
    fail(out_path, "llama.cpp's command-r has per-head q/k norms exactly on 64-layer models (Command R+); this " +
                       std::to_string(s.n_layers) + "-layer model " + (s.qk_norm ? "has" : "has none") + ": no GGUF form");
  if (arch == "exaone4") {  // llama.cpp: windows on the 64-layer model only, three of four, rotary on those
    bool as_llama_cpp = s.sliding_window == 0 ? s.n_layers != 64 : s.n_layers == 64;
    for (int64_t l = 0; l < s.n_layers && as_llama_cpp && s.sliding_window > 0; ++l)
      as_llama_cpp = s.layer_slides(l) == ((l + 1) % 4 != 0) && s.layer_rotates(l) == s.layer_slides(l);
    if (!as_llama_cpp)
      fail(out_path, "llama.cpp's exaone4 slides three layers of four on the 64-layer model and no layer on the "
                     "others; this model's windows differ: no GGUF form");
    if (s.sliding_window > 0) w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
  }
  if (arch == "olmo2" && s.sliding_window > 0) {  // OLMo 3, as llama.cpp's olmo2 graph runs it
    if (s.rope_local && (s.rope_scaling_local.type != RopeScaling::Type::None || s.rope_theta_local != s.rope_theta))
      fail(out_path, "llama.cpp's olmo2 rotates the sliding layers unscaled with the full layers' base; this model's "
                     "sliding layers rotate otherwise: no GGUF form");
    w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
    std::vector<bool> swa;
    for (int64_t l = 0; l < s.n_layers; ++l) swa.push_back(s.layer_slides(l));
    w.set_bool_array(a + "attention.sliding_window_pattern", swa);
  }
  if (arch == "gemma2") {
    if (s.attn_softcap > 0) w.set_f32(a + "attn_logit_softcapping", s.attn_softcap);
    if (s.final_softcap > 0) w.set_f32(a + "final_logit_softcapping", s.final_softcap);
    if (s.sliding_window > 0) w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
  }
  const RopeScaling& rs = s.rope_scaling;
  if (rs.type == RopeScaling::Type::Dynamic)
    fail(out_path, "llama.cpp has no dynamic NTK rope scaling (its rope.scaling types are linear and yarn): no GGUF "
                   "export of this model");
  if (rs.type == RopeScaling::Type::Linear) {
    w.set_string(a + "rope.scaling.type", "linear");
    w.set_f32(a + "rope.scaling.factor", rs.factor);
  } else if (rs.type == RopeScaling::Type::Yarn) {
    w.set_string(a + "rope.scaling.type", "yarn");
    w.set_f32(a + "rope.scaling.factor", rs.factor);
    w.set_u32(a + "rope.scaling.original_context_length", static_cast<uint32_t>(rs.original_max_positions));
    if (arch == "mistral3") {  // as convert_hf_to_gguf.py's Ministral3Model
      w.set_f32(a + "rope.scaling.yarn_beta_fast", rs.beta_fast);
      w.set_f32(a + "rope.scaling.yarn_beta_slow", rs.beta_slow);
      // (llama.cpp's factor is mscale(s, 1) / mscale(s, log_mul): 1 when log_mul is 1)
      const double sc = rs.factor, m1 = sc <= 1.0 ? 1.0 : 0.1 * std::log(sc) + 1.0;
      const double want = rs.attention_factor;
      if (sc > 1.0 && !(want > 0.0)) fail(out_path, "the yarn attention factor is not positive: no GGUF form");
      // m1 / (0.1 m ln s + 1) = want  ->  m = (m1 / want - 1) / (0.1 ln s)
      w.set_f32(a + "rope.scaling.yarn_log_multiplier",
                sc <= 1.0 ? 1.0f : static_cast<float>((m1 / want - 1.0) / (0.1 * std::log(sc))));
    }
  }
  if ((arch == "hunyuan-dense" || arch == "hunyuan-moe") && (s.qkv_bias || s.o_bias))
    fail(out_path, "llama.cpp's " + arch + " has no attention biases; this model (attention_bias) has: no GGUF form");
  if (arch == "ernie4_5" && s.mlp_bias)
    fail(out_path, "llama.cpp's ernie4_5 has no MLP biases; this model (use_bias) has: no GGUF form");
  if (arch == "mistral3" && s.sliding_window > 0)
    fail(out_path, "llama.cpp's mistral3 has no sliding window; this model has one: no GGUF form");
  if (arch == "mistral3" && s.q_pos_scale_beta != 0.0f) {
    if (rs.type != RopeScaling::Type::Yarn || s.q_pos_scale_period != rs.original_max_positions)
      fail(out_path, "llama.cpp's mistral3 counts the attention temperature's periods in yarn's original context; "
                     "this model's differ: no GGUF form");
    w.set_f32(a + "attention.temperature_scale", s.q_pos_scale_beta);
  }
  // (nemotron_h: its config's layer_norm_epsilon, the key llama.cpp's loader requires for it)
  w.set_f32(a + (s.norm == NormKind::LayerNorm || nemotron_h ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon"),
            s.norm_eps);
  if (arch == "granite" || arch == "granitemoe" || granitehybrid) {  // as convert_hf_to_gguf.py's GraniteModel (and GraniteMoeModel)
    w.set_f32(a + "attention.scale", s.attn_scale > 0.0f ? s.attn_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim)));
    w.set_f32(a + "embedding_scale", s.embed_multiplier);
    w.set_f32(a + "residual_scale", s.residual_multiplier);
    w.set_f32(a + "logit_scale", s.logit_divisor);
  } else if (arch == "command-r" || arch == "cohere2") {  // as convert_hf_to_gguf.py's CommandR2Model / Cohere2Model
    w.set_f32(a + "logit_scale", s.logit_multiplier);
  }
  if (arch == "cohere2") {  // llama.cpp: three sliding layers of four, rotary on those only
    bool fixed = s.sliding_window > 0;
    for (int64_t l = 0; l < s.n_layers && fixed; ++l)
      fixed = s.layer_slides(l) == ((l + 1) % 4 != 0) && s.layer_rotates(l) == s.layer_slides(l);
    if (!fixed) fail(out_path, "llama.cpp's cohere2 slides (and rotates) three layers of four; this model's layers differ");
    w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
  }
  if (arch != "granite" && arch != "granitemoe" && !granitehybrid && (s.embed_multiplier != 1.0f || s.residual_multiplier != 1.0f || s.logit_divisor != 1.0f ||
                            (arch != "command-r" && arch != "cohere2" && s.logit_multiplier != 1.0f))) {
    fail(out_path, "a " + arch + " GGUF cannot carry embedding, residual or logit multipliers");
  }
  if (s.clip_qkv > 0.0f) {
    if (arch != "olmo" && arch != "mpt") fail(out_path, "a " + arch + " GGUF cannot carry clip_qkv");
    w.set_f32(a + "attention.clamp_kqv", s.clip_qkv);
  }
  if (arch == "mpt") {  // as convert_hf_to_gguf.py's MPTModel
    w.set_f32(a + "attention.max_alibi_bias", s.alibi_bias_max);
  } else if (s.alibi_mpt || s.alibi_bias_max != 8.0f) {
    fail(out_path, "a " + arch + " GGUF cannot carry MPT's ALiBi");
  }
  if (arch == "gptneox" || arch == "stablelm") w.set_bool(a + "use_parallel_residual", s.parallel_residual);
  // (gemma4: the full layers' heads, whose partial rotary is rope_freqs.weight)
  const int64_t global_head = gemma4 ? s.attention_geometry(true).head_dim : 0;
  w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(gemma4 ? global_head : s.rope_dims()));
  if (arch == "phi3") {  // as convert_hf_to_gguf.py's Phi3MiniModel: 0 means no window (Phi-4)
    w.set_u32(a + "attention.sliding_window", static_cast<uint32_t>(s.sliding_window));
    w.set_u32(a + "rope.scaling.original_context_length",
              static_cast<uint32_t>(rs.type == RopeScaling::Type::LongRope ? rs.original_max_positions : s.max_positions));
  }
  if (rs.type == RopeScaling::Type::LongRope) {
    if (arch != "phi3") fail(out_path, "a " + arch + " GGUF cannot carry longrope scaling");
    w.set_f32(a + "rope.scaling.attn_factor", rs.attention_factor);
  }
  if (deepseek2) {  // (the latent's sizes: MLA's per-head ones are key_length_mla / value_length_mla)
    w.set_u32(a + "attention.key_length", static_cast<uint32_t>(s.mla_kv_rank + s.rope_dims()));
    w.set_u32(a + "attention.value_length", static_cast<uint32_t>(s.mla_kv_rank));
  } else if (s.head_dim * s.n_heads != s.hidden || gemma4 || arch == "glm4moe") {
    w.set_u32(a + "attention.key_length", static_cast<uint32_t>(gemma4 ? global_head : s.head_dim));
    w.set_u32(a + "attention.value_length", static_cast<uint32_t>(gemma4 ? global_head : s.head_dim));
  }
  w.set_u32(a + "vocab_size", static_cast<uint32_t>(s.vocab));
  if (source.format == ModelFormat::Gguf) {
    const GgufFile src(source.path);  // the tokenizer metadata, exactly as the source has it
    for (const auto& [k, v] : src.metadata())
      if (k.rfind("tokenizer.", 0) == 0) w.copy_value(k, v);
  } else {
    // Any other source: its tokenizer (tokenizer.json, ...) as llama.cpp's metadata.
    if (!source.tokenizer)
      fail(out_path, "a GGUF needs the model's tokenizer, and none was found next to " + source.path +
                         " (pass --tokenizer)");
    // A SentencePiece-style tokenizer's scores come from the tokenizer.model beside it.
    const fs::path dir = fs::is_directory(source.path) ? fs::path(source.path) : fs::path(source.path).parent_path();
    write_gguf_tokenizer(w, *source.tokenizer, s.vocab, (dir / "tokenizer.model").string(), out_path, arch);
  }

  // The tensors, in the order of the merged Hugging Face export, under GGUF names.
  std::unique_ptr<ProgressBar> bar;
  const std::vector<TensorSpec> specs = s.tensors();
  if (opt.log) bar = std::make_unique<ProgressBar>(static_cast<int64_t>(specs.size()), "merge", "tensors");
  auto done = std::make_shared<int64_t>(0);
  std::vector<std::string> fell_back;
  // llama3 rotary scaling travels as per-frequency divisors (convert_hf_to_gguf.py's
  // rope_freqs.weight): the default inverse frequencies over the scaled ones.
  if (rs.type == RopeScaling::Type::Llama3 || rs.type == RopeScaling::Type::Factors) {
    std::vector<float> f = rs.freq_factors;
    if (rs.type == RopeScaling::Type::Llama3) {
      const std::vector<float> plain = rope_inv_freq(s.head_dim, s.rope_theta), scaled = rope_inv_freq(s.head_dim, s.rope_theta, rs);
      f.resize(plain.size());
      for (size_t i = 0; i < f.size(); ++i) f[i] = plain[i] / scaled[i];
    }
    const int64_t n = static_cast<int64_t>(f.size());
    w.add_tensor("rope_freqs.weight", GgmlType::F32, {n}, [f] { return encode(f, GgmlType::F32); });
  }
  // gemma4: 1 for each rotated pair, 1e30 (none) for the others (llama.cpp requires the tensor)
  if (rs.type == RopeScaling::Type::Proportional || gemma4) {
    if (!gemma4) fail(out_path, "a " + arch + " GGUF cannot carry a proportional rope");
    const int64_t half = global_head / 2;
    const auto n_rot = rs.type != RopeScaling::Type::Proportional ? half
        : static_cast<int64_t>(std::floor(static_cast<double>(rs.rotated_fraction) * static_cast<double>(global_head) / 2.0));
    std::vector<float> f(static_cast<size_t>(half), 1e30f);
    std::fill(f.begin(), f.begin() + std::min(n_rot, half), 1.0f);
    w.add_tensor("rope_freqs.weight", GgmlType::F32, {half}, [f] { return encode(f, GgmlType::F32); });
  }
  if (rs.type == RopeScaling::Type::LongRope) {
    for (const auto& [name, f] : {std::pair{"rope_factors_long.weight", rs.long_factor},
                                  std::pair{"rope_factors_short.weight", rs.short_factor}}) {
      const int64_t n = static_cast<int64_t>(f.size());
      w.add_tensor(name, GgmlType::F32, {n}, [f] { return encode(f, GgmlType::F32); });
    }
  }
  // An MoE layer's experts go out as llama.cpp's three 3-D tensors (experts, rows, cols),
  // written when the loop meets expert 0's gate; the other per-expert names are skipped.
  // ("model.layers.<l>.mlp.experts.<e>.<part>.weight": its expert, layer and part)
  auto expert_of = [&](const std::string& name, int64_t* layer, int* part) {
    long long l = -1, e = -1;
    char proj[16] = {0};
    if (std::sscanf(name.c_str(), "model.layers.%lld.mlp.experts.%lld.%15[a-z_].weight", &l, &e, proj) != 3)
      return int64_t{-1};
    const std::string pr(proj);
    *part = pr == "gate_proj" ? 0 : pr == "up_proj" ? 1 : pr == "down_proj" ? 2 : -1;
    *layer = l;
    return *part < 0 || name != layer_tensor_name(l, expert_module(e, *part)) ? int64_t{-1} : int64_t{e};
  };
  // A 3-D expert tensor's type: --gguf-type's, Q4_K_M's choice for it, or F16 where its rows
  // do not fill the type's blocks (listed in the note at the end).
  auto expert_type = [&](const std::string& gname, int64_t cols) {
    GgmlType type = opt.type;
    if (opt.q4_k_m) {
      type = gguf_q4_k_m_type(gname, 3, cols, s.n_layers, s.tied_embeddings, false);
      if (cols % kQK_K != 0) fell_back.push_back(gname);
    } else if (ggml_traits(type).block_size > 1 && cols % ggml_traits(type).block_size != 0) {
      fell_back.push_back(gname);
      type = GgmlType::F16;
    }
    return type;
  };
  for (const TensorSpec& spec_t : specs) {
    if (s.moe_gpt_oss && spec_t.name.find(".mlp.experts.") != std::string::npos) {
      // gpt-oss's fused experts as llama.cpp's separate 3-D gate / up / down exps and their
      // (experts, rows) biases, as convert_hf_to_gguf.py's GptOssModel splits them.
      int64_t l = 0;
      int part = -1;
      for (int p = 0; p < 4 && part < 0; ++p)
        for (int64_t ll = 0; ll < s.n_layers && part < 0; ++ll)
          if (spec_t.name == fused_expert_name(ll, p)) part = p, l = ll;
      if (part < 0) fail(out_path, "no GGUF name for tensor '" + spec_t.name + "'");
      const int64_t E = s.n_experts, F = s.expert_ffn, C = s.hidden;
      const std::string hf = spec_t.name, blk = "blk." + std::to_string(l) + ".";
      // (gate and up come from one fused tensor: merged once, kept until both are written)
      auto fused = std::make_shared<std::vector<float>>();
      auto uses = std::make_shared<int>(part < 2 ? 2 : 1);
      for (int half = 0; half < (part < 2 ? 2 : 1); ++half) {  // gate_up: gate then up
        const bool bias = part == 1 || part == 3;
        const std::string gname = blk + (part < 2 ? (half ? "ffn_up_exps" : "ffn_gate_exps") : "ffn_down_exps") +
                                  (bias ? ".bias" : ".weight");
        const int64_t rows = part < 2 ? F : C, cols = part < 2 ? C : F;
        const GgmlType type = bias ? GgmlType::F32 : expert_type(gname, cols);
        const std::vector<int64_t> shape = bias ? std::vector<int64_t>{E, rows} : std::vector<int64_t>{E, rows, cols};
        w.add_tensor(gname, type, shape, [&model, &adapters, &bar, done, hf, part, half, E, F, C, type, gname, fused,
                                          uses] {
          if (fused->empty()) *fused = merged_tensor_values(model, hf, adapters);  // transformers' fused form
          const std::vector<float>& v = *fused;
          std::vector<float> out;
          for (int64_t e = 0; e < E; ++e)
            if (part == 0) {  // (C, 2F) interleaved -> (F, C) rows of gate or up
              const float* x = v.data() + e * C * 2 * F;
              for (int64_t f = 0; f < F; ++f)
                for (int64_t c = 0; c < C; ++c) out.push_back(x[c * 2 * F + 2 * f + half]);
            } else if (part == 1) {
              for (int64_t f = 0; f < F; ++f) out.push_back(v[static_cast<size_t>(e * 2 * F + 2 * f + half)]);
            } else if (part == 2) {  // (F, C) -> (C, F)
              const float* x = v.data() + e * F * C;
              for (int64_t c = 0; c < C; ++c)
                for (int64_t f = 0; f < F; ++f) out.push_back(x[f * C + c]);
            } else {
              out.insert(out.end(), v.begin() + e * C, v.begin() + (e + 1) * C);
            }
          if (--*uses == 0) std::vector<float>().swap(*fused);
          if (bar) bar->update(++*done, gname);
          return encode(out, type);
        });
      }
      continue;
    }
    // (gemma4 keeps them fused as transformers does, ffn_gate_up_exps: the plain path below)
    if (s.moe_fused_experts && !gemma4 && spec_t.name.find(".mlp.experts.") != std::string::npos) {
      // transformers 5's fused experts (E, 2F, C) / (E, C, F) as llama.cpp's gate / up / down
      // exps (E, F, C) / (E, F, C) / (E, C, F).
      int64_t l = -1;
      int part = -1;
      for (int64_t ll = 0; ll < s.n_layers && part < 0; ++ll)
        for (int p : {0, 2})
          if (spec_t.name == fused_expert_name(ll, p)) part = p, l = ll;
      if (part < 0) fail(out_path, "no GGUF name for tensor '" + spec_t.name + "'");
      const int64_t E = s.n_experts, F = s.expert_ffn, C = s.hidden;
      const std::string hf = spec_t.name, blk = "blk." + std::to_string(l) + ".";
      auto fused = std::make_shared<std::vector<float>>();
      auto uses = std::make_shared<int>(part == 0 ? 2 : 1);
      const bool in_out = s.moe_llama4;  // (Llama 4's fused experts are (C, 2F) and (F, C) per expert)
      for (int half = 0; half < (part == 0 ? 2 : 1); ++half) {
        const std::string gname = blk + (part == 0 ? (half ? "ffn_up_exps" : "ffn_gate_exps") : "ffn_down_exps") + ".weight";
        const int64_t rows = part == 0 ? F : C, cols = part == 0 ? C : F;
        const GgmlType type = expert_type(gname, cols);
        w.add_tensor(gname, type, {E, rows, cols}, [&model, &adapters, &bar, done, hf, part, half, E, F, C, type, gname,
                                                     fused, uses, in_out] {
          if (fused->empty()) *fused = merged_tensor_values(model, hf, adapters);
          const std::vector<float>& v = *fused;
          std::vector<float> out;
          for (int64_t e = 0; e < E; ++e)
            if (in_out && part == 0) {  // (C, 2F) -> rows [half F, (half + 1) F) of (2F, C)
              const float* x = v.data() + e * C * 2 * F;
              for (int64_t f = half * F; f < (half + 1) * F; ++f)
                for (int64_t c = 0; c < C; ++c) out.push_back(x[c * 2 * F + f]);
            } else if (in_out) {  // (F, C) -> (C, F)
              const float* x = v.data() + e * F * C;
              for (int64_t c = 0; c < C; ++c)
                for (int64_t f = 0; f < F; ++f) out.push_back(x[f * C + c]);
            } else if (part == 0) {  // expert e's rows [half F, (half + 1) F) of its (2F, C)
              const float* x = v.data() + (e * 2 * F + half * F) * C;
              out.insert(out.end(), x, x + F * C);
            } else {
              out.insert(out.end(), v.begin() + e * C * F, v.begin() + (e + 1) * C * F);
            }
          if (--*uses == 0) std::vector<float>().swap(*fused);
          if (bar) bar->update(++*done, gname);
          return encode(out, type);
        });
      }
      continue;
    }
    if (s.la_fused_qkvz && spec_t.name.ends_with(".linear_attn.in_proj_qkvz.weight")) {
      // Qwen3-Next's per-key-head (q, k, v, z) rows as its converter splits them: attn_qkv (all q,
      // all k, all v) and attn_gate (z).
      const std::string hf = spec_t.name, blk = "blk." + hf.substr(std::string("model.layers.").size(),
                                                                   hf.find(".linear_attn.") - std::string("model.layers.").size());
      const int64_t C = s.hidden;
      DeltaNetHeads dh;
      dh.key_heads = s.la_k_heads;
      dh.value_heads = s.la_v_heads;
      dh.key_dim = s.la_k_dim;
      dh.value_dim = s.la_v_dim;
      auto fused = std::make_shared<std::vector<float>>();
      auto uses = std::make_shared<int>(2);
      for (int gate = 0; gate < 2; ++gate) {
        const std::string gname = blk + (gate ? ".attn_gate.weight" : ".attn_qkv.weight");
        const int64_t rows = gate ? s.la_value_dim() : s.la_conv_dim();
        GgmlType type = opt.q4_k_m ? gguf_q4_k_m_type(gname, 2, C, s.n_layers, s.tied_embeddings, false) : opt.type;
        if (ggml_traits(type).block_size > 1 && C % ggml_traits(type).block_size != 0) {
          fell_back.push_back(gname);
          type = GgmlType::F16;
        }
        const std::vector<int64_t> pick = qwen3next_split_rows(dh, gate);
        w.add_tensor(gname, type, {rows, C}, [&model, &adapters, &bar, done, hf, pick, C, type, gname, fused, uses, gate] {
          if (fused->empty()) *fused = merged_tensor_values(model, hf, adapters);
          const std::vector<float>& v = *fused;
          std::vector<float> out;
          out.reserve(pick.size() * static_cast<size_t>(C));
          for (int64_t r : pick) out.insert(out.end(), v.begin() + r * C, v.begin() + (r + 1) * C);
          if (--*uses == 0) std::vector<float>().swap(*fused);
          if (gate == 1) ++*done;  // (one tensor of the model's: the progress counts it once)
          if (bar) bar->update(*done, gname);
          return encode(out, type);
        });
      }
      continue;
    }
    if (granite4 && (spec_t.name.ends_with(".mlp.gate_up_proj.weight") ||
                          spec_t.name.ends_with(".mlp.shared_expert.gate_up_proj.weight"))) {
      // shared_mlp.input_linear (gate rows, then up rows) as GraniteMoeModel splits it: ffn_gate /
      // ffn_up (ffn_gate_shexp / ffn_up_shexp beside experts).
      const std::string hf = spec_t.name, blk = "blk." + hf.substr(std::string("model.layers.").size(),
                                                                   hf.find(".mlp.") - std::string("model.layers.").size());
      const int64_t C = s.hidden, F = s.ffn;
      const std::string sfx = s.moe() ? "_shexp" : "";
      auto fused = std::make_shared<std::vector<float>>();
      auto uses = std::make_shared<int>(2);
      for (int half = 0; half < 2; ++half) {
        const std::string gname = blk + (half ? ".ffn_up" : ".ffn_gate") + sfx + ".weight";
        GgmlType type = opt.q4_k_m ? gguf_q4_k_m_type(gname, 2, C, s.n_layers, s.tied_embeddings, false) : opt.type;
        if (ggml_traits(type).block_size > 1 && C % ggml_traits(type).block_size != 0) {
          fell_back.push_back(gname);
          type = GgmlType::F16;
        }
        w.add_tensor(gname, type, {F, C}, [&model, &adapters, &bar, done, hf, half, F, C, type, gname, fused, uses] {
          if (fused->empty()) *fused = merged_tensor_values(model, hf, adapters);
          const std::vector<float> out(fused->begin() + half * F * C, fused->begin() + (half + 1) * F * C);
          if (--*uses == 0) std::vector<float>().swap(*fused);
          if (half == 1) ++*done;  // (one tensor of the model's: the progress counts it once)
          if (bar) bar->update(*done, gname);
          return encode(out, type);
        });
      }
      continue;
    }
    if (deepseek2 && spec_t.name.ends_with(".self_attn.kv_b_proj.weight")) {
      // kv_b_proj's per-head [key nope | value] rows as DeepseekV2Model splits them: attn_k_b, each
      // head's key rows transposed ((heads, kv rank, nope)), and attn_v_b ((heads, v, kv rank)).
      const std::string hf = spec_t.name, blk = "blk." + hf.substr(std::string("model.layers.").size(),
                                                                   hf.find(".self_attn.") - std::string("model.layers.").size());
      const int64_t H = s.n_heads, N = s.mla_nope_dim, V = s.mla_v_dim, R = s.mla_kv_rank;
      auto fused = std::make_shared<std::vector<float>>();
      auto uses = std::make_shared<int>(2);
      for (int value = 0; value < 2; ++value) {
        const std::string gname = blk + (value ? ".attn_v_b.weight" : ".attn_k_b.weight");
        const int64_t cols = value ? R : N;  // (the rows each block quantizes along)
        GgmlType type = opt.q4_k_m ? gguf_q4_k_m_type(gname, 3, cols, s.n_layers, s.tied_embeddings, false) : opt.type;
        if (ggml_traits(type).block_size > 1 && cols % ggml_traits(type).block_size != 0) {
          fell_back.push_back(gname);
          type = GgmlType::F16;
        }
        const std::vector<int64_t> shape = value ? std::vector<int64_t>{H, V, R} : std::vector<int64_t>{H, R, N};
        w.add_tensor(gname, type, shape, [&model, &adapters, &bar, done, hf, value, H, N, V, R, type, gname, fused, uses] {
          if (fused->empty()) *fused = merged_tensor_values(model, hf, adapters);
          const std::vector<float>& kv = *fused;  // (H (N + V), R)
          std::vector<float> out;
          out.reserve(static_cast<size_t>(H * (value ? V : N) * R));
          for (int64_t h = 0; h < H; ++h) {
            const float* rows = kv.data() + h * (N + V) * R;
            if (value) {
              out.insert(out.end(), rows + N * R, rows + (N + V) * R);
            } else {
              for (int64_t c = 0; c < R; ++c)
                for (int64_t i = 0; i < N; ++i) out.push_back(rows[i * R + c]);
            }
          }
          if (--*uses == 0) std::vector<float>().swap(*fused);
          if (bar) bar->update(++*done, gname);
          return encode(out, type);
        });
      }
      continue;
    }
    if (s.attn_sinks && spec_t.name.ends_with(".self_attn.sinks")) {
      const std::string hf = spec_t.name;
      const std::string gname = "blk." + hf.substr(std::string("model.layers.").size(),
                                                   hf.find(".self_attn.") - std::string("model.layers.").size()) +
                                ".attn_sinks.weight";
      w.add_tensor(gname, GgmlType::F32, spec_t.shape, [&model, &adapters, &bar, done, hf, gname] {
        if (bar) bar->update(++*done, gname);
        return encode(merged_tensor_values(model, hf, adapters), GgmlType::F32);
      });
      continue;
    }
    int64_t el = 0;
    int ep = 0;
    const int64_t expert = s.moe() && spec_t.name.find(".mlp.experts.") != std::string::npos
                               ? expert_of(spec_t.name, &el, &ep) : -1;
    // (ungated experts, Nemotron 3's: up and down only, expert 0's up the first listed)
    const int first_part = s.moe_ungated ? 1 : 0;
    if (expert > 0 || (expert == 0 && ep != first_part)) continue;
    if (expert == 0) {
      for (int p = first_part; p < 3; ++p) {
        static constexpr const char* kExps[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
        const std::string gname = "blk." + std::to_string(el) + "." + kExps[p] + ".weight";
        const int64_t rows = p == 2 ? s.hidden : s.expert_ffn, cols = p == 2 ? s.expert_ffn : s.hidden;
        const GgmlType type = expert_type(gname, cols);
        std::vector<std::string> names;
        for (int64_t e = 0; e < s.n_experts; ++e) names.push_back(layer_tensor_name(el, expert_module(e, p)));
        w.add_tensor(gname, type, {s.n_experts, rows, cols}, [&model, &adapters, &bar, done, names, type, gname] {
          std::vector<float> v;
          for (const std::string& n : names) {
            const std::vector<float> x = merged_tensor_values(model, n, adapters);
            v.insert(v.end(), x.begin(), x.end());
          }
          *done += static_cast<int64_t>(names.size());
          if (bar) bar->update(*done, gname);
          return encode(v, type);
        });
      }
      continue;
    }
    if (s.act == Activation::Xielu && spec_t.name.find(".mlp.act_fn.") != std::string::npos) {  // (metadata: above)
      if (bar) bar->update(++*done, spec_t.name);
      continue;
    }
    TensorSpec t = spec_t;
    const bool delta_net = delta_net_arch && t.name.find(".linear_attn.") != std::string::npos;
    // (the conv taps, (channels, 1, kernel): squeezed and float32, as llama.cpp's converters keep them)
    const bool conv_taps =
        (delta_net_arch || lfm2_arch || mamba2_arch || mamba1_arch) && t.name.ends_with(".linear_attn.conv1d.weight");
    if (conv_taps) t.shape = {t.shape[0], t.shape.back()};
    // (granitehybrid: ssm_a (-exp(A_log)) and ssm_d as (heads, 1), ssm_norm as (groups, inner /
    // groups), float32, as its converter writes them)
    // (mamba: ssm_a (-exp(A_log)) as transformers' (channels, state), float32 with ssm_d)
    const bool ssm_a = (mamba2_arch || mamba1_arch) && t.name.ends_with(".linear_attn.A_log");
    const bool ssm_vector = ssm_a || ((mamba2_arch || mamba1_arch) && t.name.ends_with(".linear_attn.D"));
    if (ssm_vector && mamba2_arch) t.shape = {t.shape[0], 1};
    if (mamba2_arch && t.name.ends_with(".linear_attn.norm.weight")) t.shape = {s.la_k_heads, t.shape[0] / s.la_k_heads};
    // (Qwen2-MoE's shared_expert_gate, (1, hidden), is one row of hidden in llama.cpp)
    if (s.shared_expert && t.name.ends_with(std::string(kMoeSharedGateModule) + ".weight")) t.shape = {s.hidden};
    const auto gname = hf_to_gguf_tensor_name(t.name, arch, falcon_two_norms);
    if (!gname) fail(out_path, "no GGUF name for tensor '" + t.name + "'");
    // (norm weights stay float32 whatever their rank: Command R+'s (heads, head_dim) q/k norms)
    GgmlType type = t.shape.size() == 1 || t.name.ends_with("norm.weight") ? GgmlType::F32 : opt.type;
    if (t.name.ends_with("e_score_correction_bias")) type = GgmlType::F32;  // (ERNIE's is (1, E))
    if (conv_taps || ssm_vector) type = GgmlType::F32;
    // (the router stays float32, as convert_hf_to_gguf.py keeps ffn_gate_inp)
    if (s.moe() && t.name.ends_with(std::string(kMoeRouterModule) + ".weight")) type = GgmlType::F32;
    if (opt.q4_k_m && type != GgmlType::F32) {
      // llama.cpp's type for an 80-layer llama with grouped KV heads is LLM_TYPE_70B.
      const bool seventy_b = s.n_layers == 80 && s.n_kv_heads != s.n_heads;
      type = gguf_q4_k_m_type(*gname, t.shape.size(), t.shape.back(), s.n_layers, s.tied_embeddings, seventy_b);
      if (t.shape.size() > 1 && t.shape.back() % kQK_K != 0) fell_back.push_back(*gname);
    } else if (ggml_traits(type).block_size > 1 && t.shape.back() % ggml_traits(type).block_size != 0) {
      fell_back.push_back(*gname);
      type = GgmlType::F16;
    }
    // Which rows must be put in llama.cpp's rotary order, and over how many heads.
    int64_t permute_heads = 0;
    if (permute_qk && t.name.ends_with("self_attn.q_proj.weight")) permute_heads = s.n_heads;
    if (permute_qk && t.name.ends_with("self_attn.k_proj.weight")) permute_heads = s.n_kv_heads;
    if (permute_qk && t.name.ends_with("self_attn.q_proj.bias")) permute_heads = s.n_heads;
    if (permute_qk && t.name.ends_with("self_attn.k_proj.bias")) permute_heads = s.n_kv_heads;
    // gptneox: the per-head query_key_value as llama.cpp's converter reorders it (all q, k, v).
    const bool is_qkv = t.name.find("self_attn.qkv_proj.") != std::string::npos;
    const int64_t qkv_heads = s.qkv_per_head && is_qkv ? s.n_heads : 0;
    // falcon's new architecture: per key/value group, as llama.cpp's falcon converter regroups it.
    const int64_t qkv_groups = s.qkv_grouped && is_qkv ? s.n_kv_heads : 0, q_per_kv = s.n_heads / s.n_kv_heads;
    const int64_t head_dim = s.head_dim;
    const std::string hf = t.name;
    const std::vector<int64_t> shape = t.shape;
    // (not the gated DeltaNet's own norm, which scales by w)
    const bool plus_one = norm_plus_one && hf.ends_with("norm.weight") && !hf.ends_with(".linear_attn.norm.weight");
    w.add_tensor(*gname, type, t.shape, [&model, &adapters, &bar, done, hf, shape, type, permute_heads, gname, plus_one,
                                         qkv_heads, qkv_groups, q_per_kv, head_dim, delta_net, ssm_a, &s] {
      std::vector<float> v = merged_tensor_values(model, hf, adapters);
      if (delta_net) delta_net_to_llama_cpp(s, hf, v);
      if (ssm_a)
        for (float& x : v) x = -std::exp(x);
      if (qkv_heads > 0) {
        std::vector<float> p(v.size());
        qkv_per_head_to_contiguous(v, p, qkv_heads, head_dim, shape.size() > 1 ? shape[1] : 1);
        v.swap(p);
      }
      if (qkv_groups > 0) {
        std::vector<float> p(v.size());
        qkv_grouped_to_contiguous(v, p, qkv_groups, q_per_kv, head_dim, shape.size() > 1 ? shape[1] : 1);
        v.swap(p);
      }
      if (plus_one)
        for (float& x : v) x += 1.0f;
      if (permute_heads > 0) {
        const int64_t rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
        std::vector<float> p(v.size());
        permute_rope_rows(v, p, rows, cols, permute_heads);
        v.swap(p);
      }
      if (bar) bar->update(++*done, *gname);
      return encode(v, type);
    });
  }
  w.write(out_path);
  if (bar) bar->finish("");
  if (opt.log && arch == "starcoder2" && s.sliding_window > 0 && s.sliding_window < s.max_positions)
    std::fprintf(stderr,
                 "note: llama.cpp's starcoder2 has no sliding window (nor a GGUF key for one, as its converter "
                 "writes it): it attends to the whole context, which is the model's own attention up to %lld "
                 "tokens and differs past them\n",
                 static_cast<long long>(s.sliding_window));
  if (opt.log && s.la_mamba1 && s.la_bcdt_norm && s.la_bcdt_eps != s.norm_eps)
    std::fprintf(stderr,
                 "note: llama.cpp's mamba runs Falcon-Mamba's dt / B / C norms with the layers' epsilon %g (its GGUF has "
                 "no key for mixer_rms_eps %g, as its converter writes it): a slightly different model from "
                 "transformers'\n",
                 static_cast<double>(s.norm_eps), static_cast<double>(s.la_bcdt_eps));
  if (opt.log && !fell_back.empty()) {
    if (opt.q4_k_m)
      std::fprintf(stderr,
                   "note: %zu tensor(s) have rows that are not a multiple of 256 and were written as Q5_0 / Q8_0 "
                   "instead of Q4_K / Q6_K, as llama.cpp's quantizer does (e.g. %s)\n",
                   fell_back.size(), fell_back.front().c_str());
    else
      std::fprintf(stderr,
                   "note: %zu tensor(s) have rows that are not a multiple of 32 and were written as F16 (e.g. %s)\n",
                   fell_back.size(), fell_back.front().c_str());
  }
}

}  // namespace qlora
