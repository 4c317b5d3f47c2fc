#pragma once
// LoRA (PEFT semantics): a frozen Linear W (out, in) gets a trainable low-rank update
//   y = W x + scaling · B (A dropout(x)),   A (r, in), B (out, r), float32,
// scaling = alpha / r, or alpha / sqrt(r) with rsLoRA. A starts kaiming-uniform
// (a = sqrt 5, fan_in = in), B starts at zero, so the adapter is a no-op at step 0.
// Initialisation and dropout draw from our own seeded generator (LoraRng): results are
// reproducible for a seed but are not bit-equal to torch's generator.
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qlora {

struct LoraConfig {
  int r = 64;
  double alpha = 16.0;
  double dropout = 0.05;
  bool use_rslora = false;
  // Module names matched by suffix of the module path (PEFT list semantics:
  // "q_proj" matches "model.layers.0.self_attn.q_proj"). Ignored when all_linear.
  std::vector<std::string> target_modules;
  // PEFT's target_modules given as one string other than "all-linear": a regular expression
  // that must match a module's whole path (re.fullmatch), e.g.
  // ".*language_model.*\\.(q_proj|v_proj)". Read as ECMAScript (std::regex), which agrees
  // with Python's re on the patterns adapters use; Python-only syntax ((?P<name>...), inline
  // flags) is refused when the config is read. Replaces target_modules when non-empty.
  std::string target_regex;
  // PEFT's "all-linear": every Linear except the output head (lm_head); on a
  // mixture-of-experts model also, as PEFT 0.21 does, the router and the experts
  // (target_parameters below, gate_up_proj at twice the rank and alpha), except on
  // Qwen2-MoE (LoraModel::add_moe_layers says why).
  bool all_linear = false;
  // PEFT's target_parameters: parameters adapted directly rather than through their
  // module, matched by suffix of "<module path>.<parameter>": transformers 5's fused MoE
  // experts ("gate_up_proj", "down_proj": one LoRA per expert, stored stacked) and the
  // router ("gate.weight"). PEFT refuses dropout on them (lora.ParamWrapper), and so do we.
  std::vector<std::string> target_parameters;
  // The rank and alpha of the experts' gate_up_proj (PEFT's rank_pattern / alpha_pattern
  // {".*\\.gate_up_proj": ...}, what all-linear writes); 0: r and alpha.
  int gate_up_r = 0;
  double gate_up_alpha = 0.0;
  // PEFT's fan_in_fan_out: the base weights are stored (in, out) (transformers' Conv1D,
  // gpt2). A and B keep their shapes; only a merge transposes. Set by LoraModel from the
  // model's family (PEFT sets it itself for Conv1D targets, with a warning).
  bool fan_in_fan_out = false;
  uint64_t seed = 0;
  // A new adapter leaves out (all-linear) or refuses (named) a Linear that transformers' module
  // bypasses (ModelFamily::peft_bypassed_linear: Mamba's dt_proj): PEFT would not run it. An
  // adapter being loaded (adapter_loader.h) keeps what it holds: it was trained where the Linear
  // ran (QLoRA's quantized model), PEFT's merge_and_unload merges it and llama.cpp runs it.
  bool skip_bypassed = true;

  // alpha / r, or alpha / sqrt(r) with rsLoRA (computed in double, as Python does).
  double scaling() const;
  // True when a Linear at `module_path` gets a LoRA. `is_output_head` marks lm_head.
  bool targets(std::string_view module_path, bool is_output_head = false) const;
  // True when the parameter at `param_path` ("model.layers.0.mlp.experts.gate_up_proj")
  // is among target_parameters.
  bool targets_parameter(std::string_view param_path) const;
  // Throws Error naming `where` when r < 1, alpha not finite, dropout outside [0, 1),
  // or no target modules.
  void validate(std::string_view where) const;
};

// PEFT's list matching: `path == target` or `path` ends with "." + target.
bool lora_module_matches(std::string_view module_path, std::string_view target);

// Small deterministic generator (xoshiro256**, seeded through splitmix64).
class LoraRng {
 public:
  explicit LoraRng(uint64_t seed);
  uint64_t next_u64();
  // Uniform in [0, 1) with 24 random bits.
  float next_float();
  // Uniform in [lo, hi) in double (53 random bits).
  double next_double(double lo, double hi);
  // The generator's whole state, for training checkpoints (resume continues the stream).
  std::array<uint64_t, 4> state() const { return {s_[0], s_[1], s_[2], s_[3]}; }
  void set_state(const std::array<uint64_t, 4>& st) {
    for (int i = 0; i < 4; ++i) s_[i] = st[static_cast<size_t>(i)];
  }

 private:
  uint64_t s_[4];
};

// torch.nn.init.kaiming_uniform_(w, a) bound for a (out, fan_in) weight:
// gain = sqrt(2 / (1 + a²)), std = gain / sqrt(fan_in), bound = sqrt(3) · std.
// With a = sqrt(5) (PEFT's LoRA A) this is 1 / sqrt(fan_in).
double kaiming_uniform_bound(int64_t fan_in, double a);

// One adapted Linear. Owns its parameters and their gradients.
struct LoraLayer {
  std::string module_path;  // e.g. "model.layers.0.self_attn.q_proj"
  int64_t in = 0, out = 0;
  int r = 0;
  float scaling = 0.f;  // float32 copy of LoraConfig::scaling(), what the kernels use
  float dropout = 0.f;
  std::vector<float> A;   // (r, in)
  std::vector<float> B;   // (out, r)
  std::vector<float> dA;  // (r, in)  gradient, accumulated by lora_backward
  std::vector<float> dB;  // (out, r)
  // PEFT's ParamWrapper takes this expert parameter, stored (E, in, out) (Llama 4's), for
  // (E, out, in): its files hold B^T as lora_A and A^T as lora_B (save_peft_adapter and the
  // adapter loader swap them), and its initialization is ours swapped (init_peft_swapped).
  bool peft_swapped = false;

  LoraLayer() = default;
  // Allocates zeroed A, B and gradients; call init() for PEFT's initialisation.
  LoraLayer(std::string module_path, int64_t in, int64_t out, const LoraConfig& cfg);
  // A ~ U(-bound, bound) with bound = kaiming_uniform_bound(in, sqrt 5); B = 0.
  void init(uint64_t seed);
  // PEFT's initialization of the swapped form: B^T ~ U(-bound, bound) with bound =
  // kaiming_uniform_bound(out, sqrt 5), A = 0; sets peft_swapped.
  void init_peft_swapped(uint64_t seed);
  void zero_grad();
};

// What lora_backward needs from the forward of the same input, in memory the caller owns
// (training: its backend's, sized by lora_cache_floats and counted by the planner).
// The dropout mask is kept in one of two forms; one of them is REQUIRED when dropout acts:
//  - mask: (T, in) float32 multipliers, 0 or 1/(1-p) (the GPU backend's form);
//  - mask_bits: one bit per element, 1 = kept, row t in lora_mask_words(in) 32-bit words
//    from mask_bits + t * lora_mask_words(in), element i at bit i % 32 of word i / 32: a
//    32nd of the memory (the CPU backend's form, Backend::lora_mask_packed). Used when set.
// Both give the same multipliers, so the same numbers.
struct LoraCache {
  float* h = nullptr;           // (T, r)  A · dropout(x)
  float* mask = nullptr;        // (T, in) dropout multipliers
  uint32_t* mask_bits = nullptr;  // (T, lora_mask_words(in)) the same, a bit each
  bool masked = false;          // set by lora_forward: whether the mask was drawn (dropout acted)
};
// 32-bit words of one token's row of a bit mask over `in` inputs.
inline int64_t lora_mask_words(int64_t in) { return (in + 31) / 32; }
// Floats of a cache's h and mask for T tokens of a layer (in, r), the mask in either form
// (mask_words: its bits, in 32-bit words); the mask only when dropout may act (training with
// dropout > 0).
struct LoraCacheFloats {
  int64_t h = 0, mask = 0, mask_words = 0;
};
LoraCacheFloats lora_cache_floats(int64_t T, int64_t in, int64_t r, bool dropout);
// A cache over vectors, for callers without backend memory (tools, tests): the mask as float32
// multipliers, or (`packed`) as bits.
struct LoraCacheStorage {
  std::vector<float> h, mask;
  std::vector<uint32_t> mask_bits;
  LoraCache cache;
  LoraCacheStorage(int64_t T, int64_t in, int64_t r, bool dropout, bool packed = false);
};

// The temporaries of lora_forward and lora_backward, owned by the caller: nothing here
// allocates behind its back, so the caller (a block's declared scratch, model/block_scratch.h)
// can place them and the memory planner can count them. Sizes, in floats, for a layer
// (in, out, r) over T tokens: lora_scratch_floats().
struct LoraScratch {
  float* x = nullptr;     // forward: dropout(x) (T, in) when dropout is on; backward: dh (T, r)
  float* y = nullptr;     // forward: B A x (T, out); backward: dB's product (out, r)
  float* drop = nullptr;  // backward with dropout: dropout(x), then dh A (T, in)
  float* h = nullptr;     // forward without a cache (inference): A x (T, r)
};
struct LoraScratchFloats {
  int64_t x = 0, y = 0, drop = 0, h = 0;
  int64_t total() const { return x + y + drop + h; }
  // Grows each size to cover one layer's forward (and its backward when `backward`).
  void cover(int64_t T, int64_t in, int64_t out, int64_t r, bool dropout, bool backward);
};
LoraScratchFloats lora_scratch_floats(int64_t T, int64_t in, int64_t out, int64_t r, bool dropout, bool backward);
// Vectors sized for `f`, for callers without a declared arena (tools, tests).
struct LoraScratchStorage {
  std::vector<float> x, y, drop, h;
  explicit LoraScratchStorage(const LoraScratchFloats& f);
  LoraScratch view() { return {x.data(), y.data(), drop.data(), h.data()}; }
};

// y (T, out) += scaling · B (A dropout(x)), x (T, in). When `training` and the layer's
// dropout > 0, a fresh mask is drawn from `rng` (REQUIRES rng then) and kept in `cache`.
// `cache` may be null at inference (not with dropout: the mask lives there). y and x must
// not overlap. `scratch` REQUIRES the sizes
// of lora_scratch_floats(T, in, out, r, training && dropout > 0, false).
void lora_forward(float* y, LoraCache* cache, const LoraLayer& layer, const float* x, int64_t T,
                  bool training, LoraRng* rng, const LoraScratch& scratch);

// Given dy (T, out) for the forward that filled `cache`: accumulates
//   dB += scaling · dyᵀ h,  dA += (scaling · dy B)ᵀ dropout(x),
//   dx (T, in) += mask ⊙ ((scaling · dy B) A)   (dx may be null: no input gradient).
// `scratch` REQUIRES the sizes of lora_scratch_floats(T, in, out, r, dropout, true).
void lora_backward(float* dx, LoraLayer& layer, const float* dy, const float* x, const LoraCache& cache,
                   int64_t T, const LoraScratch& scratch);

}  // namespace qlora
