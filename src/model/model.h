#pragma once
// A llama-family decoder in memory, and its inference forward pass:
//   embedding -> N x Block(RMSNorm, GQA attention with rotary, SwiGLU MLP, residuals)
//   -> RMSNorm -> lm_head.
// Every Linear inside the blocks is a QuantLinear (4-bit or dense); embeddings, norms and
// lm_head are kept in the compute dtype.
//
// Ownership: a Model owns its weights and is immutable after load; forward() takes the
// per-sequence state (KV cache and scratch buffers) separately, so one Model can serve
// several sequences (one InferenceState each; forward calls on distinct states may run
// concurrently, although each already uses all threads). The one thing that can be set
// after load is a borrowed LoRA adapter (set_adapter) that forward() applies unmerged.
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "lora/lora.h"
#include "model/backend.h"
#include "model/block_program.h"
#include "model/device_runner.h"
#include "model/kv_cache.h"
#include "model/model_spec.h"
#include "model/quant_linear.h"
#include "model/tensor_source.h"

namespace qlora {

struct LayerWeights {
  std::vector<float> input_norm;  // (C) input_layernorm, rounded to the compute dtype
  std::vector<float> post_norm;   // (C) post_attention_layernorm
  std::vector<float> input_norm_bias, post_norm_bias;  // (C) each, LayerNorm models only
  std::vector<float> q_norm, k_norm;  // (HS) each, qk_norm models only (else empty)
  // xIELU's parameters (spec.act == Activation::Xielu: Apertus's mlp.act_fn.*), else defaults.
  XieluParams xielu;
  // qk_norm_head_weights models: q_norm / k_norm hold (heads, HS) weights, and these the unit
  // weight and zero bias (HS) of the per-head norm before them (NormRole::Unit).
  // (v_norm models: unit_norm is also the values' unit weight, NormRole::VHead, max_head_dim wide.)
  std::vector<float> unit_norm, unit_norm_bias;
  // layer_scalar models (Gemma 4): the block output's factor, in the compute dtype.
  float layer_scalar = 1.0f;
  // ple models (Gemma 4 E2B / E4B): per_layer_input_gate (P, C), per_layer_projection (C, P),
  // post_per_layer_input_norm (C).
  QuantLinear ple_gate, ple_proj;
  std::vector<float> ple_norm;
  // Latent attention (spec.mla()): q_b_proj (NH*HS, q rank) and the latents' norms, q_a_layernorm
  // (q rank; empty without a query latent) and kv_a_layernorm (kv rank).
  QuantLinear mla_q_b;
  std::vector<float> q_a_norm, kv_a_norm;
  // sandwich_norms models (gemma2): post_norm normalizes the attention output, these the
  // MLP input and output (else empty).
  std::vector<float> pre_ffn_norm, post_ffn_norm;
  // Gemma 4's MoE block (spec.moe_gemma4): the dense MLP's output norm, the experts' input and
  // output norms (C each), the router's input scale (C) and per-expert output scales (n_experts).
  std::vector<float> post_ffn_norm1, pre_ffn_norm2, post_ffn_norm2, router_scale, per_expert_scale;
  QuantLinear q_proj, k_proj, v_proj, o_proj;  // (NH*HS, C) (NKV*HS, C) (NKV*HS, C) (C, NH*HS)
  QuantLinear gate_proj, up_proj, down_proj;   // (F, C) (F, C) (C, F)
  // Mixture-of-experts layers (spec.moe()): the router (n_experts, C), kept dense in the
  // compute dtype (transformers 5's router is no nn.Linear: bitsandbytes leaves it so too),
  // Qwen2-MoE's shared_expert_gate (1, C), an nn.Linear quantized like the others, and each expert's gate and up rows as one Linear ((2 expert_ffn, C): gate
  // rows, then up rows; transformers 5's gate_up_proj[e], the parameter PEFT adapts) and
  // its down projection (C, expert_ffn), quantized like the block Linears.
  QuantLinear router, shared_gate;
  // GLM-4.5 / DeepSeek-V3 (spec.moe_sigmoid_router): the router is float32 (n_experts, C) (an
  // nn.Parameter used in float32; `router` is then empty) and mlp.gate.e_score_correction_bias
  // (n_experts) biases the choice of experts.
  std::vector<float> router_f32, router_score_bias;
  // (gpt-oss's expert_gate_up rows are gate and up interleaved, as its checkpoints' columns;
  // ungated experts' (spec.moe_ungated) are the up rows alone.)
  // (n_heads) attention sink logits (spec.attn_sinks: gpt-oss), else empty.
  std::vector<float> attn_sinks;
  std::vector<QuantLinear> expert_gate_up, expert_down;
  // A hybrid model's linear-attention layer (spec.layer_is_linear_attn; model/delta_net.h):
  // its Linears (in_proj_qkv (conv_dim, C), in_proj_z (value_dim, C), in_proj_b and
  // in_proj_a (v_heads, C), out_proj (C, value_dim)), the conv1d taps (conv_dim, kernel),
  // A_log and dt_bias (v_heads) and the gated norm's weight (v_head_dim), in the compute dtype.
  // Mamba2 (spec.la_mamba2): in_proj in la_in_qkv, the conv's bias (conv_dim; empty without),
  // D (v_heads), the norm's weight value_dim wide.
  // Mamba (1) (spec.la_mamba1): in_proj, x_proj and dt_proj in la_in_qkv, la_in_b and la_in_a;
  // A_log (channels, state) and la_A = -exp(A_log) beside it (the scan's rates, computed at load),
  // D (channels); no dt_bias (dt_proj's) and no norm; the dt / B / C norms' weights (spec.la_bcdt_norm)
  // la_dt_norm (dt_rank) and la_bc_norm (B's then C's, 2 x state): Jamba's, or ones (Falcon-Mamba's
  // are weightless).
  QuantLinear la_in_qkv, la_in_z, la_in_b, la_in_a, la_out;
  std::vector<float> la_conv, la_conv_bias, la_A_log, la_A, la_dt_bias, la_D, la_norm, la_dt_norm, la_bc_norm;
  // Linear `which` in kBlockLinearModules order (0..6: q, k, v, o, gate, up, down; 7..11 the
  // DeltaNet's).
  // REQUIRES 0 <= which < kBlockLinearCount.
  QuantLinear& linear(int which);
  const QuantLinear& linear(int which) const;
  // The norm weight of `role` (block_program.h); empty when the family has none. Its bias
  // (LayerNorm models: input and post-attention norms), else empty.
  const std::vector<float>& norm(NormRole role) const;
  const std::vector<float>& norm_bias(NormRole role) const;
};

class LoraModel;  // lora/lora_model.h
struct LoraCache;  // lora/lora.h
class LoraRng;
struct BlockRun;  // model/block_run.h

// The Linears outside the blocks: OPT's project_in (embeddings to the blocks' width) and
// project_out (back to the embeddings' width, before the head). Present when
// spec.projects_embeddings(); quantized on load like the block Linears (bitsandbytes does).
// PleProjection: Gemma 4's per_layer_model_projection (spec.ple()), which makes part of each
// token's per-layer inputs from its embedding.
enum class ModelLinear : int { ProjectIn = 0, ProjectOut = 1, PleProjection = 2 };
inline constexpr int kModelLinearCount = 3;
// "model.project_in" / "model.project_out" / "model.per_layer_model_projection" (canonical
// names), or "" when the spec has none.
std::string model_linear_name(const ModelSpec& spec, ModelLinear which);

struct ModelLoadOptions {
  QuantOptions quant;
  ComputeDType compute_dtype = ComputeDType::F32;
  // Called after each tensor is loaded: (tensors done, total, name).
  std::function<void(int64_t, int64_t, const std::string&)> progress;
  // Tensors in the file that the model does not use mean the config and the weights
  // disagree (e.g. block_count 29 over 30 stored blocks): an Error naming them, or with
  // this set, a warning on stderr.
  bool allow_unused_tensors = false;
  // A GGUF's Q8_0 token embedding / output head stays 8-bit (DenseWeight::from_q8_0: the
  // same values, a quarter of the bytes every decoded token reads) when the compute dtype is
  // float32; one stored in a type kept as blocks (gguf_type_kept_as_blocks with
  // gguf_block_types below: Q3_K, Q2_K; Q6_K, Q5_K, Q5_1, Q5_0 on 8-bit activations or with gguf_compact) stays as stored (DenseWeight::from_gguf_blocks: its
  // values exactly), and one in another quantized type (Q4_0, Q4_K, IQ4_XS, ...) is
  // re-quantized to Q8_0 (DenseWeight::to_q8_0: within half a step of its block); one stored
  // in 16 bits (BF16 / F16: a Hugging Face checkpoint's usual dtypes, an F16 GGUF's) stays in
  // them (DenseWeight::held_16bit: its values exactly, computed with in float32). false widens
  // them to float32. (Gemma 4's per-layer table, only ever gathered, keeps its 16 bits either way.)
  bool keep_q8_0_head = true;
  // A GGUF's block linears stored in a 4-bit type with a 4-bit form (Q4_0, Q4_1, Q4_K,
  // IQ4_NL, IQ4_XS, MXFP4: formats/ggml_as_4bit.h) are kept as stored whenever quantizing,
  // llama.cpp's values exactly, and with float32 compute those in other types stay as stored
  // too (keep_gguf_blocks); false re-quantizes them from their values per `quant`, as
  // transformers + bitsandbytes do with a GGUF (--requantize-gguf: bit-exact parity with them).
  bool keep_gguf_weights = true;
  // With keep_gguf_weights, whether block linears stored in Q8_0 stay 8-bit (DenseWeight::
  // from_q8_0: their values exactly), those in Q3_K or Q2_K stay as the file's blocks
  // (DenseWeight::from_gguf_blocks: its size and exactly its values, where NF4 would change
  // them) and those in Q6_K, Q5_K, Q5_1 or Q5_0 stay as the file's blocks too on 8-bit
  // activations or with gguf_compact (gguf_block_types below), else become 8-bit (Q5_0 its
  // values exactly, the others Q8_0 of their values); float32 compute, not --quant int8. The CLI
  // turns it off for --device cuda, whose runners would widen them to float32 on the GPU (4
  // bytes a value): there they are quantized per --quant.
  bool keep_gguf_blocks = true;
  // With keep_gguf_blocks (--gguf-compact): Q6_K, Q5_K, Q5_1 and Q5_0 linears and heads stay as
  // the file's blocks (exact values, the file's size) on float activations too, instead of 8-bit
  // (gguf_type_kept_as_blocks: slower products on float activations, fewer bytes).
  bool gguf_compact = false;
  // Decoding (products of up to 8 tokens) multiplies the 4-bit block Linears and an 8-bit
  // head on activations quantized to 8 bits per 32 values, with integer dot products, as
  // llama.cpp does (kernels::LinearKernels::gemv_q4_i8 / gemv_q8_i8). Faster on CPUs whose
  // float lookups of the 4-bit code book are the bottleneck, and no longer bitsandbytes'
  // numbers: the activations are taken to 1/127 of their chunk's largest, NF4 / FP4 codes to
  // 1/127 of theirs (a GGUF's integer codes stay exact; bench/RESULTS.md measures the cost).
  // Off by default here; the decoding commands turn it on for GGUF files (cli/model_flags.h). A GGUF's Q4_K /
  // IQ4_XS and the types kept as its blocks take llama.cpp's Q8_K activations (one scale per
  // 256) and products instead. Prompts of more than 8 tokens and training never use it. It
  // also keeps a GGUF's Q6_K / Q5_K / Q5_1 / Q5_0 as the file's blocks (gguf_block_types).
  bool int8_activations = false;
  // With int8_activations: only the weights a GGUF holds as stored take it (4-bit as stored,
  // 8-bit or the file's blocks, an 8-bit head / embedding), the others keep float32
  // activations. What the decoding commands use by default for a GGUF file (llama.cpp's own
  // products for its weights; the CLI's --int8-activations sets every weight).
  bool int8_activations_gguf_only = false;
  // How inference keeps the keys and values it has computed (InferenceState's KV cache): F32
  // as computed, or BF16 / F16, each value rounded to 16 bits (nearest even) on the way in:
  // half the cache's memory, llama.cpp's f16 cache. With bf16 compute the keys and values are
  // bf16 values already, so a BF16 cache holds them exactly. CPU backend only.
  ComputeDType kv_cache_dtype = ComputeDType::F32;
};

// The GGUF types a load with `o` keeps as the file's blocks (model/tensor_source.h): All with
// gguf_compact, and on 8-bit activations (int8_activations) where the CPU has the AVX2 integer
// kernels that make them pay (the scalar ones widen each row to float32); else Smallest.
GgufBlockTypes gguf_block_types(const ModelLoadOptions& o);

// The bytes Model::load holds a table of rows x cols values that is only gathered a row at a
// time (Gemma 4's per-layer embedding) in, stored as `stored` (F32, F16 or BF16 -- safetensors'
// float dtypes are the same three, others count as F32 -- or a GGUF quantized type): the
// loader's rule, for the memory planner. A GGUF's Q8_0 / types kept as blocks / others as
// Q8_0 with float32 compute (keep_q8_0_head), a 16-bit table as stored with float32 compute,
// otherwise the compute dtype.
uint64_t gathered_table_bytes(GgmlType stored, int64_t rows, int64_t cols, const ModelLoadOptions& o);

class Model {
 public:
  // Builds the model from `src`, one tensor at a time: every tensor named by
  // spec.tensors() must exist with exactly that shape (Error naming the source, the
  // tensor and both shapes otherwise). Linear weights are quantized on load (or taken
  // as they are when the source holds them in bitsandbytes 4-bit with the same quant
  // type and blocksize). Validates the spec first.
  static Model load(const ModelSpec& spec, const TensorSource& src, const ModelLoadOptions& opt);

  const ModelSpec& spec() const { return spec_; }
  ComputeDType compute_dtype() const { return dtype_; }
  // ModelLoadOptions::kv_cache_dtype: what InferenceState(model, ...) keeps its keys and values in.
  ComputeDType kv_cache_dtype() const { return kv_dtype_; }
  const QuantOptions& quant() const { return quant_; }
  const DenseWeight& embed_tokens() const { return embed_; }   // (V, C)
  const DenseWeight& embed_positions() const { return embed_pos_; }  // (max_positions, C), learned-position models
  const DenseWeight& lm_head() const { return spec_.tied_embeddings ? embed_ : lm_head_; }  // (V, C)
  const std::vector<float>& final_norm() const { return final_norm_; }  // (C)
  const std::vector<float>& final_norm_bias() const { return final_norm_bias_; }  // (C) LayerNorm models
  // (V) added to the logits, in the compute dtype; empty unless spec().head_bias.
  const std::vector<float>& lm_head_bias() const { return lm_head_bias_; }
  const std::vector<float>& embed_norm() const { return embed_norm_; }            // (C) embed_norm models
  const std::vector<float>& embed_norm_bias() const { return embed_norm_bias_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // The block every layer runs (inference and training alike; model/block_program.h).
  const BlockProgram& block() const { return *block_; }
  std::vector<LayerWeights>& mutable_layers() { return layers_; }
  // Bytes of all weights held (4-bit codes and constants, dense tensors).
  size_t weight_bytes() const;
  // The block Linear `which` (0..6: q, k, v, o, gate, up, down) of layer l.
  const QuantLinear& block_linear(int64_t layer, int which) const;
  // ple models: embed_tokens_per_layer (ple_vocab, n_layers * ple_dim) in the compute dtype,
  // and per_layer_projection_norm's weight (ple_dim).
  const DenseWeight& embed_per_layer() const { return embed_ple_; }
  const std::vector<float>& ple_projection_norm() const { return ple_norm_; }
  // project_in / project_out (REQUIRES spec().projects_embeddings()); per_layer_model_projection
  // (REQUIRES spec().ple()).
  const QuantLinear& model_linear(ModelLinear which) const { return model_linears_[static_cast<size_t>(which)]; }

  // Attaches (or with nullptr detaches) a LoRA adapter (lora/lora_model.h) that every later
  // forward() applies unmerged, as PEFT's LoraModel in eval mode (no dropout): right after
  // block l's Linear `which` (its bias included), y += scaling · B (A x). Borrowed: it must
  // outlive every forward that uses it. With a device runner attached the adapter is the
  // runner's copy and cannot change (Error). Throws Error when it does not fit the model: a
  // block count other than n_layers, or a LoraLayer whose in/out differ from its Linear's
  // (naming the layer's module path), or r < 1 / A, B of the wrong size.
  void set_adapter(const LoraModel* adapter);
  const LoraModel* adapter() const { return adapter_; }

  // Sends every later forward() to `runner` (another device; model/device_runner.h), or
  // with nullptr back to the CPU. InferenceStates used before must be reset() after.
  void set_runner(std::shared_ptr<const DeviceRunner> runner) { runner_ = std::move(runner); }
  const DeviceRunner* runner() const { return runner_.get(); }

  // The backend this model's work runs on (model/backend.h): the InferenceStates made for it
  // (InferenceState(model, ...)) and the trainer's workspace take it, so generate, chat, eval
  // and train run there without knowing it. Default: the process's CPU backend. The weights
  // stay the host's objects (a device backend copies them on first use). nullptr restores
  // the CPU. States made on the previous backend must not be used with this model after.
  void set_backend(std::shared_ptr<Backend> backend) { backend_ = std::move(backend); }
  Backend& backend() const { return backend_ ? *backend_ : cpu_backend(); }
  // The same, shared (null for the process's CPU backend): what a state made for this model
  // keeps alive.
  const std::shared_ptr<Backend>& backend_shared() const { return backend_; }

 private:
  ModelSpec spec_;
  ComputeDType dtype_ = ComputeDType::F32;
  ComputeDType kv_dtype_ = ComputeDType::F32;
  QuantOptions quant_;
  DenseWeight embed_, lm_head_, embed_pos_, embed_ple_;
  std::vector<float> ple_norm_;
  std::vector<float> final_norm_, final_norm_bias_, embed_norm_, embed_norm_bias_, lm_head_bias_;
  std::vector<LayerWeights> layers_;
  std::array<QuantLinear, kModelLinearCount> model_linears_;
  std::shared_ptr<const BlockProgram> block_;
  const LoraModel* adapter_ = nullptr;
  std::shared_ptr<const DeviceRunner> runner_;
  std::shared_ptr<Backend> backend_;
};

// These run on `be` (model/backend.h): x, emb, h, e, stats and scratch are its memory; tokens
// and positions are on the host.

// What every forward does between the token embeddings x (T, C) of positions pos and the
// first block: gemma's scale, learned positions, bloom's embedding LayerNorm. scratch (T, C).
void embed_extras(Backend& be, float* x, float* scratch, const int32_t* pos, int64_t T, const Model& model);
// logits (n) = round(logits * factor) in dtype: ModelSpec::logit_factor(), Cohere's logit_scale
// or the reciprocal of granite's logits_scaling (within an ulp of its quotient).
void logit_scale(Backend& be, float* logits, int64_t n, float factor, ComputeDType dtype);

// x (T, C) = the first block's input for `tokens` at positions pos: the embedding rows,
// through project_in (+ its adapter) when the model has one, then embed_extras. emb
// (T, embed_width) receives the embedding rows when the model projects them (project_in's
// input: training keeps it for the adapter's gradient), else is unused; scratch (T, C).
// lora_cache, training and rng as lora_forward's (null/false at inference).
void embed_forward(Backend& be, float* x, float* emb, float* scratch, std::span<const int> tokens, const int32_t* pos,
                   const Model& model, const LoraModel* adapter, LoraCache* lora_cache, bool training, LoraRng* rng,
                   const LoraScratch& lora_scratch);

// Gemma 4's per-layer inputs (spec.ple(); the CPU backend) of `tokens`, whose scaled
// embeddings (the first block's input) are emb (T, C): out (L, T, ple_dim), one (T, ple_dim)
// slice per layer. pre (T, L * ple_dim) and rstd (T * L) receive what the backward reads (the
// norm's input and statistics). lora_cache, training and rng as lora_forward's.
void ple_inputs_forward(Backend& be, float* out, float* pre, float* rstd, std::span<const int> tokens, const float* emb,
                        const Model& model, const LoraModel* adapter, LoraCache* lora_cache, bool training, LoraRng* rng,
                        const LoraScratch& lora_scratch);
// Given d loss / d out (L, T, ple_dim) of that forward: accumulates the gradients of the adapter
// on per_layer_model_projection (if any; nothing else below it learns). tile: a dequantization
// tile (linear_backward_tile_floats of the projection).
void ple_inputs_backward(Backend& be, const float* dple, const float* pre, const float* rstd, const float* emb, int64_t T,
                         const Model& model, LoraModel& adapter, LoraCache* lora_cache, float* tile,
                         const LoraScratch& lora_scratch);

// What the head reads, e (n, embed_width), from the last block's output x (n, C): the final
// norm (when the model has one; stats (n, 2) kept for its backward when not null) into h
// (n, C), then project_out (+ its adapter) into e when the model has one (else e == h is
// allowed and h is the result). Returns the pointer the head should read (h or e).
const float* head_input_forward(Backend& be, float* e, float* h, float* stats, const float* x, int64_t n,
                                const Model& model,
                                const LoraModel* adapter, LoraCache* lora_cache, bool training, LoraRng* rng,
                                const LoraScratch& lora_scratch);

// x (T, C) += the learned position embeddings of positions pos (T), rounded to the model's
// compute dtype (gpt2: inputs_embeds + position_embeds); scratch (T, C). Throws Error when a
// position is past the table.
void add_position_embeddings(Backend& be, float* x, float* scratch, const int32_t* pos, int64_t T, const Model& model);

// Per-sequence state: the KV cache and the scratch buffers of forward().
class InferenceState {
 public:
  // Room for `capacity` positions (grown on demand up to spec.max_positions); the cache and
  // every buffer of forward() are `backend`'s memory, and forward() runs on it.
  InferenceState(const ModelSpec& spec, int64_t capacity, Backend& backend = cpu_backend(),
                 ComputeDType kv_dtype = ComputeDType::F32);
  // The same for `model`, on its backend (Model::backend()), which the state keeps alive
  // (a PromptCache may outlive a later Model::set_backend).
  InferenceState(const Model& model, int64_t capacity)
      : InferenceState(model.spec(), capacity, model.backend(), model.kv_cache_dtype()) {
    keep_ = model.backend_shared();
  }
  Backend& backend() const { return *backend_; }
  KVCache& cache() { return cache_; }
  const KVCache& cache() const { return cache_; }
  // Position of the next token.
  int64_t position() const { return cache_.length(); }
  void reset() { cache_.clear(); }

 private:
  friend void forward(const Model&, InferenceState&, std::span<const int>, float*, bool);
  friend void rebuild_states(const Model&, InferenceState&);
  friend void forward_batch(const Model&, InferenceState&, std::span<InferenceState* const>, std::span<const int>,
                            float*);
  void ensure_scratch(const BlockProgram& program, int64_t T);
  // Every layer's block over this state's buffers (x_ in and out, the slots, the rotary
  // tables; window_start as the sliding layers' key windows): run's backend, program, dtype,
  // T, cache or caches, adapter and scratch are the caller's.
  void run_blocks(const Model& model, BlockRun& run, const int32_t* window_start);
  Backend* backend_;
  std::shared_ptr<Backend> keep_;  // (declared before the buffers: released after them)
  KVCache cache_;  // on the CPU: the keys and values; with a device runner: the length only
  std::unique_ptr<DeviceSequence> device_;  // the device's keys and values (runner models)
  int64_t scratch_T_ = 0;
  // The backend's memory, (T, ...) each: the residual stream, the final norm, the embedding
  // rows (models that project them), the block's buffers (sharing slots where their lives do
  // not overlap: BlockProgram::inference_slots), the rotary tables (of the sliding layers too,
  // rope_local models), each query's first key (sliding windows), the logits, and the block's
  // declared scratch (model/block_scratch.h).
  BackendBuffer x_, h_, emb_, cos_, sin_, cos_local_, sin_local_, logits_;
  BackendBuffer ple_, ple_pre_, ple_rstd_;  // Gemma 4's per-layer inputs (L, T, P) and their scratch
  std::vector<BackendBuffer> slots_;
  BackendArray<int32_t> key_start_;
  BackendBuffer scratch_;
  // Host staging: positions, and the tables and windows computed on the host.
  std::vector<int32_t> pos_, key_start_host_;
  std::vector<float> cos_host_, sin_host_;
  // LongRope models: the tokens in the cache, to recompute it when the sequence crosses the
  // original context (its keys were rotated with the short factors).
  std::vector<int> tokens_;
};

// Runs `tokens` at positions state.position() .. + T-1, appending their keys and values to
// the cache. logits: when all_logits, (T, V) for every token; else (V) for the last token;
// nullptr skips the final norm and lm_head (only the cache is filled).
// LongRope models (phi3 128k) rotate with the short factors up to the original context and
// the long ones beyond it; when a call first crosses it, the cached tokens are run again
// with the long factors, as transformers' Phi3 generate drops its cache there.
// Throws Error when the sequence would exceed spec.max_positions or a token id is outside
// the vocabulary.
void forward(const Model& model, InferenceState& state, std::span<const int> tokens, float* logits,
             bool all_logits = false);

// Whether forward_batch can run `model`: on a backend of host memory, not a device runner,
// and not a LongRope model (whose cache may need recomputing mid-sequence). When false,
// decode the sequences one at a time with forward().
bool can_forward_batch(const Model& model);

// Batched decoding: one more token for each of several sequences in one pass, so that every
// weight is read once for all of them (the serving throughput of llama.cpp's parallel
// slots). tokens[i] runs at position seqs[i]->position() and is appended to seqs[i]'s cache;
// logits (N, V) row i is seqs[i]'s next-token logits. `work` only lends its scratch buffers
// (its cache is untouched). The same numbers as forward() one sequence at a time, up to the
// summation order of the products over several rows (model/quant_linear.h: a few tokens
// share each decoded weight; the 4-bit and 8-bit few-token kernels keep the one-token
// kernels' order, so with the default NF4 + Q8_0-head model and with --int8-activations the
// logits are those of decoding alone, bit for bit; tested).
// REQUIRES can_forward_batch(model), distinct states of this model's backend.
// Throws Error as forward() (context, token ids), before any cache is changed.
// More than kMaxBatchRows sequences run kMaxBatchRows at a time (the few-token kernels' limit).
void forward_batch(const Model& model, InferenceState& work, std::span<InferenceState* const> seqs,
                   std::span<const int> tokens, float* logits);
inline constexpr int64_t kMaxBatchRows = 8;  // = kernels::kMaxGemvTokens (model.cpp checks)

}  // namespace qlora
