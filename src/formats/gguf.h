#pragma once
// GGUF (llama.cpp's model file format), versions 2 and 3, little-endian.
//
// Layout:  "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//          | kv_count × (string key, u32 value_type, value)
//          | tensor_count × (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
//          | padding to `alignment` | data section (tensor offsets are relative to its start)
// string = u64 byte length + UTF-8 bytes (no terminator); array = u32 element type +
// u64 count + elements (elements may themselves be arrays). `alignment` is the u32
// metadata value general.alignment (a power of two), 32 when absent. dims are in ggml
// order: dims[0] (ne0) is the contiguous dimension, i.e. the PyTorch shape reversed.
//
// The reader trusts no byte of the file: every count is checked against the bytes
// left before anything is allocated, every string/array/tensor must lie inside the
// file, tensor data must be aligned, inside the data section and not overlapping, and
// names/keys must be unique. Anything malformed is a qlora::Error naming the file and
// the problem (and the key or tensor). Version 1 files (u32 counts) are rejected.
//
// Tensors are never copied on open: GgufFile maps the file and tensor data are views.
//
// formats/gguf.cpp is the container; formats/gguf_llama.cpp llama.cpp's conventions on it (tensor
// names, {arch}.* hyper-parameters, row orders, tokenizer metadata: the sections from "mapping onto
// the project's names" on).
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/mapped_file.h"
#include "formats/ggml_types.h"

namespace qlora {

// A name or key read from a GGUF file, quoted for a message: 'name', printable ASCII only
// (other bytes as \xNN), cut after 80 characters with "...": a corrupt file's bytes can hold anything.
std::string gguf_quote(std::string_view s);

// ---- metadata values ---------------------------------------------------------------
enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
// "uint8", "int32", "float32", "bool", "string", "array", ... (gguf spelling)
std::string_view gguf_value_type_name(GgufValueType t);
// Bytes of one value of a fixed-size type (U8..F64, BOOL); 0 for STRING and ARRAY.
size_t gguf_fixed_value_size(GgufValueType t);

// One metadata value. Strings and packed numeric arrays are views into the file's
// bytes: they live as long as the GgufFile (or the span given to parse_gguf).
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  uint64_t u = 0;         // U8, U16, U32, U64, BOOL (0 or 1)
  int64_t i = 0;          // I8, I16, I32, I64
  double f = 0;           // F32, F64
  std::string_view str;   // STRING

  // ARRAY: elem_type and count; the elements are in exactly one of:
  GgufValueType elem_type = GgufValueType::U8;
  uint64_t count = 0;
  std::span<const uint8_t> raw;           // numeric/bool elements, packed little-endian
  std::vector<std::string_view> strings;  // STRING elements
  std::vector<GgufValue> arrays;          // ARRAY elements (nested arrays)

  bool is_integer() const;  // U8..U64, I8..I64 (not BOOL)
  bool is_float() const;    // F32, F64
  // "uint32", or "array[string]" for arrays.
  std::string type_name() const;
};

// ---- tensors -----------------------------------------------------------------------
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> dims;  // ggml order: dims[0] = ne0, the contiguous dimension
  uint64_t offset = 0;        // relative to the data section
  uint64_t nbytes = 0;        // bytes of data, from type and dims
  int64_t numel() const;
  // PyTorch / row-major order: dims reversed (so a Linear weight is [out, in]).
  std::vector<int64_t> shape() const;
};

struct GgufHeader {
  uint32_t version = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // in file order
  std::vector<GgufTensorInfo> tensors;                       // in file order
  uint64_t alignment = 32;
  uint64_t data_start = 0;  // absolute offset of the data section
};

// Parses and validates everything before the data section of a GGUF held in `file`
// and checks every tensor's byte range against it. `where` names the file in errors.
// Never reads outside `file`; the views in the result point into `file`.
GgufHeader parse_gguf(std::span<const uint8_t> file, std::string_view where);

// ---- the file ------------------------------------------------------------------------
// Thread-safety: immutable after construction; const methods may be called from many
// threads at once.
class GgufFile {
 public:
  // Maps and validates `path`. Throws Error naming the file on any problem.
  explicit GgufFile(const std::string& path);
  // Parses bytes held by the caller (which must outlive this object); `where` names
  // them in errors. For tests and fuzzing: no file needed.
  static GgufFile from_bytes(std::span<const uint8_t> bytes, std::string where);

  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;

  const std::string& path() const { return where_; }
  uint32_t version() const { return header_.version; }
  uint64_t alignment() const { return header_.alignment; }
  uint64_t data_start() const { return header_.data_start; }
  std::span<const uint8_t> bytes() const { return bytes_; }

  // -- metadata --
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Throws Error "<file>: metadata key '<key>' missing".
  const GgufValue& at(std::string_view key) const;

  // Typed getters. Each throws Error "<file>: metadata key 'x' missing" or
  // "<file>: metadata key 'x' has type <y>, expected <z>". Integer getters accept any
  // integer type whose value fits (else "... value v out of range for <z>"); float
  // getters accept float32 and float64.
  std::string_view get_string(std::string_view key) const;
  uint32_t get_u32(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  int64_t get_i64(std::string_view key) const;
  float get_f32(std::string_view key) const;
  double get_f64(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  // The same, returning `dflt` when the key is absent (a present key of the wrong
  // type still throws).
  std::string_view get_string_or(std::string_view key, std::string_view dflt) const;
  uint32_t get_u32_or(std::string_view key, uint32_t dflt) const;
  int64_t get_i64_or(std::string_view key, int64_t dflt) const;
  float get_f32_or(std::string_view key, float dflt) const;
  bool get_bool_or(std::string_view key, bool dflt) const;

  // Arrays: "has type array[int32], expected array[string]" when the element type is
  // wrong. Integer arrays accept any integer element type; float arrays float32/64.
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<std::string_view> get_string_view_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<int32_t> get_i32_array(std::string_view key) const;  // range-checked
  // Element count of an array value (throws if absent or not an array).
  uint64_t array_size(std::string_view key) const;

  // general.architecture ("llama", "qwen2", ...).
  std::string_view architecture() const { return get_string("general.architecture"); }

  // -- tensors --
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // Throws Error "<file>: no tensor named '<name>'".
  const GgufTensorInfo& tensor(std::string_view name) const;
  // The tensor's bytes (a view into the file).
  std::span<const uint8_t> tensor_data(const GgufTensorInfo& t) const;
  // Dequantized to float32 (row-major, numel() floats). Throws Error for a type that
  // cannot be dequantized (see GgmlTypeTraits::can_dequantize).
  std::vector<float> tensor_to_f32(std::string_view name) const;
  std::vector<float> tensor_to_f32(const GgufTensorInfo& t) const;
  void tensor_to_f32(const GgufTensorInfo& t, std::span<float> out) const;
  // Slice `index` of a tensor along its outermost dimension (dims.back(): one expert of
  // llama.cpp's 3-D ffn_*_exps), dequantized: numel / dims.back() floats. Throws Error when
  // the tensor has fewer than 2 dimensions or index is out of range.
  std::vector<float> tensor_slice_to_f32(const GgufTensorInfo& t, int64_t index) const;

 private:
  GgufFile() = default;
  void index();
  [[noreturn]] void type_error(std::string_view key, const GgufValue& v, std::string_view expected) const;
  const GgufValue& typed(std::string_view key, GgufValueType t) const;

  std::string where_;
  std::optional<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  GgufHeader header_;
  std::map<std::string, size_t, std::less<>> meta_index_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// ---- mapping onto the project's (Hugging Face) names ----------------------------------
// llama.cpp tensor name -> Hugging Face (transformers Llama) parameter name:
//   token_embd.weight -> model.embed_tokens.weight     output_norm.weight -> model.norm.weight
//   output.weight     -> lm_head.weight
//   blk.N.attn_q|attn_k|attn_v|attn_output.{weight,bias} -> model.layers.N.self_attn.{q,k,v,o}_proj.*
//   blk.N.attn_q_norm|attn_k_norm.weight -> model.layers.N.self_attn.{q,k}_norm.weight
//   blk.N.ffn_gate|ffn_up|ffn_down.{weight,bias} -> model.layers.N.mlp.{gate,up,down}_proj.*
//   blk.N.attn_norm.weight -> model.layers.N.input_layernorm.weight
//   blk.N.ffn_norm.weight  -> model.layers.N.post_attention_layernorm.weight
// nullopt for names without a Hugging Face counterpart (e.g. rope_freqs.weight).
// `arch` (general.architecture) picks the family whose own names come first
// (ModelFamily::gguf_layer_names: the fused attn_qkv, phi3's fused ffn_up, Gemma 2/3's
// norms, whose ffn_norm is the MLP's pre_feedforward_layernorm).
// Falcon: attn_qkv is the fused query_key_value; with `falcon_two_norms` (the new
// architecture: a blk.N.attn_norm_2 tensor) attn_norm_2 is the attention's norm
// (input_layernorm, HF ln_attn) and attn_norm the MLP's (post_attention_layernorm, ln_mlp),
// else falcon-7b's one attn_norm is input_layernorm.
std::optional<std::string> gguf_to_hf_tensor_name(std::string_view gguf_name, std::string_view arch = {},
                                                  bool falcon_two_norms = false);
// The inverse; nullopt for names outside the table.
std::optional<std::string> hf_to_gguf_tensor_name(std::string_view hf_name, std::string_view arch = {},
                                                  bool falcon_two_norms = false);

// Hyper-parameters of a llama-family GGUF, keys prefixed by general.architecture.
// llama.cpp's Nemotron-H architectures: nemotron_h, and nemotron_h_moe (Nemotron 3's experts),
// which share its per-layer arrays and Mamba2 tensors.
inline bool is_nemotron_h_arch(std::string_view arch) { return arch == "nemotron_h" || arch == "nemotron_h_moe"; }

struct GgufLlamaHParams {
  std::string architecture;       // general.architecture
  std::string path;               // the file, for errors
  int64_t hidden_size = 0;        // {arch}.embedding_length
  int64_t num_layers = 0;         // {arch}.block_count
  int64_t intermediate_size = 0;  // {arch}.feed_forward_length
  int64_t num_heads = 0;          // {arch}.attention.head_count
  int64_t num_kv_heads = 0;       // {arch}.attention.head_count_kv (default num_heads)
  int64_t head_dim = 0;           // {arch}.attention.key_length (default hidden/heads)
  int64_t rope_dim = 0;           // {arch}.rope.dimension_count (default head_dim)
  float rope_theta = 10000.0f;    // {arch}.rope.freq_base (default 10000, as llama.cpp)
  float rms_norm_eps = 1e-5f;     // {arch}.attention.layer_norm_rms_epsilon
  int64_t context_length = 0;     // {arch}.context_length
  int64_t vocab_size = 0;         // length of tokenizer.ggml.tokens
  bool tie_word_embeddings = false;  // true when there is no output.weight tensor
  // falcon: blk.0.attn_norm_2.weight exists (the new architecture's two norms per block).
  bool falcon_two_norms = false;
  // blk.0.attn_qkv.weight exists: q, k and v in one tensor (phi2 GGUFs made from the original
  // microsoft/phi-2 checkpoint's Wqkv; those converted from transformers' layout keep three).
  bool fused_qkv = false;
  // blk.0.ffn_norm.weight exists: a second norm before the MLP (stablelm's sequential block;
  // llama.cpp's stablelm graph runs the parallel one without it).
  bool ffn_norm = false;
  // blk.0.attn_q_norm.weight exists (per-head q/k norms: command-r's are Command R+'s).
  bool qk_norm_tensors = false;
  // {arch}.rope.scaling.type ("none", "linear", "yarn"), .factor, .original_context_length;
  // llama3-style scaling arrives as the tensor rope_freqs.weight instead (model_loader).
  std::string rope_scaling_type = "none";
  // {arch}.rope.scaling.finetuned (default true): false is how llama.cpp's granitehybrid marks a
  // model without rotary positions (Granite 4.0-H's "nope").
  bool rope_finetuned = true;
  float rope_scaling_factor = 1.0f;
  int64_t rope_scaling_original_context = 0;
  float rope_scaling_attn_factor = 0.0f;  // {arch}.rope.scaling.attn_factor (phi3 longrope; 0: absent)
  // yarn's .rope.scaling.yarn_beta_fast / _slow (0: absent) and .yarn_log_multiplier
  // (transformers' mscale_all_dim; -1: absent); llama 4's .attention.temperature_scale /
  // _length (Ministral 3's llama_4_scaling_beta and its period; 0: absent).
  float yarn_beta_fast = 0.0f, yarn_beta_slow = 0.0f, yarn_log_mul = -1.0f;
  float attn_temperature_scale = 0.0f;
  int64_t attn_temperature_length = 0;
  // gemma2: {arch}.attn_logit_softcapping, .final_logit_softcapping (0: absent),
  // .attention.sliding_window (0: none).
  float attn_softcap = 0.0f, final_softcap = 0.0f;
  int64_t sliding_window = 0;
  bool sliding_window_zero = false;  // {arch}.attention.sliding_window present and 0 (llama4: no chunks)
  // {arch}.attention.sliding_window_pattern as one flag per layer (true: the layer slides),
  // from its array form or its period n (layer l slides when l % n < n - 1); empty if absent.
  std::vector<bool> swa_layers;
  float rope_theta_swa = 0.0f;  // {arch}.rope.freq_base_swa (0: absent)
  bool parallel_residual = true;  // {arch}.use_parallel_residual (gptneox)
  // granite: {arch}.attention.scale (0: absent), .embedding_scale, .residual_scale,
  // .logit_scale (1: absent).
  float attention_scale = 0.0f, embedding_scale = 1.0f, residual_scale = 1.0f, logit_scale = 1.0f;
  float clamp_kqv = 0.0f;  // {arch}.attention.clamp_kqv (olmo; 0: absent)
  // Mixture of experts: {arch}.expert_count and .expert_used_count (0: a dense model),
  // .expert_feed_forward_length and .expert_shared_feed_forward_length (0: absent), and
  // .expert_weights_norm (-1: absent, else 0 / 1).
  int64_t expert_count = 0, expert_used_count = 0, expert_ffn = 0, expert_shared_ffn = 0;
  int expert_weights_norm = -1;
  // {arch}.moe_latent_size (nemotron_h_moe: Nemotron 3 Super's latent experts; 0: absent).
  int64_t moe_latent_size = 0;
  // Gated DeltaNet hybrids (qwen35): {arch}.ssm.conv_kernel, .ssm.state_size (the key heads'
  // size), .ssm.group_count (key heads), .ssm.time_step_rank (value heads), .ssm.inner_size
  // (value heads x their size) and .full_attention_interval (every n-th layer attends; 0:
  // absent). 0 where absent.
  int64_t ssm_conv_kernel = 0, ssm_state_size = 0, ssm_group_count = 0, ssm_time_step_rank = 0, ssm_inner_size = 0;
  int64_t full_attention_interval = 0;
  // lfm2: {arch}.shortconv.l_cache (the short conv's taps; 0: absent) and the layers whose
  // attention.head_count_kv is 0 (its short-conv layers; empty when every layer attends).
  int64_t shortconv_l_cache = 0;
  std::vector<bool> recurrent_layers;
  // nemotron_h: the layers whose feed_forward_length is not 0 (its MLP layers; intermediate_size
  // is then the widest), empty otherwise; its Mamba layers (recurrent_layers) have head_count_kv
  // and feed_forward_length 0. Whether blk.N.ssm_conv1d.bias exists (optional in its loader).
  std::vector<bool> mlp_layers;
  bool ssm_conv_bias = false;
  // mamba: ssm.dt_b_c_rms (Falcon-Mamba's RMSNorms on the mixer's dt, B and C).
  bool ssm_dt_b_c_rms = false;
  // jamba: the layers with experts (blk.N.ffn_gate_inp.weight present; the others have a dense MLP).
  std::vector<bool> moe_layers;
  // mpt: {arch}.attention.max_alibi_bias (0: absent).
  float max_alibi_bias = 0.0f;
  // Per-layer forms (gemma4): {arch}.attention.head_count_kv and .feed_forward_length given as
  // one value per layer (empty when a single value: num_kv_heads / intermediate_size hold it;
  // otherwise those hold layer 0's); .attention.key_length_swa / .value_length_swa and
  // .rope.dimension_count_swa (0: absent); .attention.shared_kv_layers (the last n layers
  // attend over earlier layers' keys and values; 0: absent); .embedding_length_per_layer_input
  // (0: absent).
  std::vector<int64_t> kv_heads_per_layer, ffn_per_layer;
  int64_t head_dim_swa = 0, rope_dim_swa = 0, shared_kv_layers = 0, per_layer_input_dim = 0;
  // Tensor facts: blk.N.attn_k exists and blk.N.attn_v does not (gemma4's attention_k_eq_v
  // layers, and its layers without keys of their own), one flag per layer; blk.0.layer_output_scale
  // exists.
  std::vector<bool> attn_v_absent;
  bool layer_output_scale = false;
  // GLM-4.5 (glm4moe) / DeepSeek-style MoE: {arch}.nextn_predict_layers (the multi-token-prediction
  // blocks after the last, blk.<num_layers + i>: block_count counts them, num_layers does not;
  // they are not read), .leading_dense_block_count, .expert_shared_count, .expert_weights_scale
  // (0: absent), .expert_gating_func (0: absent; 1 softmax, 2 sigmoid), .expert_group_count and
  // .expert_group_used_count (0: absent).
  int64_t nextn_layers = 0, leading_dense_blocks = 0, expert_shared_count = 0, expert_gating_func = 0;
  int64_t expert_group_count = 0, expert_group_used_count = 0;
  // deepseek2's latent attention: {arch}.attention.q_lora_rank (0: none, one attn_q) and
  // kv_lora_rank (0: not a latent-attention GGUF). head_dim is then the query/key heads' size
  // and mla_value_dim the value heads' (llama.cpp's MLA form: key_length_mla / value_length_mla,
  // key_length and value_length being the latent's; older GGUFs: key_length / value_length
  // themselves). mla_split: the form whose kv_b is stored as attn_k_b / attn_v_b.
  int64_t q_lora_rank = 0, kv_lora_rank = 0, mla_value_dim = 0;
  bool mla_split = false;
  int64_t moe_layer_step = 0;  // {arch}.interleave_moe_layer_step (0: absent)
  float expert_weights_scale = 0.0f;
  // True when llama.cpp stored attn_q/attn_k rows permuted (architecture "llama"):
  // gguf_tensor_to_f32_hf undoes it. See unpermute_rope_rows.
  bool qk_rope_permuted = false;
};

// llama.cpp's qwen35 keeps a gated DeltaNet's value heads tiled over the key heads (value head
// r of key head k at position r * Hk + k) where transformers groups them (at k * (Hv / Hk) + r),
// so that ggml_repeat serves them (convert_hf_to_gguf.py's _LinearAttentionVReorderBase).
// Reorders `n_heads` = Hv blocks of `block` consecutive values (a head's rows x columns, or
// one value per head) from one order to the other, in place of `out`.
void delta_net_heads_to_tiled(std::span<const float> in, std::span<float> out, int64_t key_heads, int64_t value_heads,
                              int64_t block);
void delta_net_heads_to_grouped(std::span<const float> in, std::span<float> out, int64_t key_heads,
                                int64_t value_heads, int64_t block);
// The same over one of a gated DeltaNet's tensors, by its transformers name (canonical,
// "model.layers.N.linear_attn.X"): in_proj_qkv's value rows, in_proj_z's rows, in_proj_b's and
// in_proj_a's rows, A_log, dt_bias, the conv taps' value channels ((channels, kernel) rows) and
// out_proj's columns (each of its `hidden` rows); other tensors are left as they are.
struct DeltaNetHeads {
  int64_t key_heads = 0, value_heads = 0, key_dim = 0, value_dim = 0, hidden = 0, conv_kernel = 0;
};
void delta_net_tensor_heads(const std::string& name, std::vector<float>& v, const DeltaNetHeads& h, bool to_tiled);
// Qwen3-Next's in_proj_qkvz rows (per key head: its q, its k, its value heads' v, their z) in
// the order llama.cpp's converter gives them: attn_qkv (all q, all k, all v; gate false) or
// attn_gate (all z; gate true).
std::vector<int64_t> qwen3next_split_rows(const DeltaNetHeads& h, bool gate);

// Whether we read GGUFs of this general.architecture: the model family registry's list
// (formats/model_family.h, gguf_supported_architectures()).
bool gguf_architecture_supported(std::string_view arch);

// Reads and validates the hyper-parameters (positive, consistent with each other and
// with token_embd.weight's shape). Throws Error naming the file and the key, or the
// architecture when it is not one of gguf_supported_architectures() (formats/model_family.h).
GgufLlamaHParams read_gguf_llama_hparams(const GgufFile& f);
// A granitehybrid GGUF made from a Bamba checkpoint (BambaForCausalLM; llama.cpp's converter writes
// both as granitehybrid): Mamba layers with the rotary on (rope.scaling.finetuned true, which the
// converter writes for Bamba only) over half of each head (rope.dimension_count, from its
// attn_rotary_emb), no experts, no Granite multipliers. Its MLP is gate_proj / up_proj as stored,
// not Granite 4.0's fused shared_mlp.
bool granitehybrid_is_bamba(const GgufLlamaHParams& hp);

// Falcon's fused query_key_value (weight rows, or LoRA B rows, of `cols` columns), laid
// out per key/value group -- its q_per_kv query heads, then its key head, then its value
// head -- reordered to all q, then all k, then all v, as llama.cpp's falcon converter does
// (falcon-7b's multi-query layout is one group, unchanged). Throws Error on size mismatch.
void qkv_grouped_to_contiguous(std::span<const float> in, std::span<float> out, int64_t kv_heads, int64_t q_per_kv,
                               int64_t head_dim, int64_t cols);

// llama.cpp's gptneox / bloom converters reorder a per-head fused query_key_value's rows
// (head h's q, k, v, then head h+1's ...) into all q rows, then all k, then all v: in
// (rows = 3 * heads * head_dim, cols) -> out, same shape. cols 1 for a bias.
void qkv_per_head_to_contiguous(std::span<const float> in, std::span<float> out, int64_t heads, int64_t head_dim,
                                int64_t cols);

// llama.cpp's convert_hf_to_gguf.py permutes the rows of q_proj/k_proj (weights and
// biases) of llama-architecture models, turning Hugging Face's rotate-half RoPE layout
// (pairs (i, i + d/2) within a head of d rows) into ggml's adjacent-pair layout (pairs
// (2i, 2i+1)):  gguf_row[h*d + 2*i + s] = hf_row[h*d + s*d/2 + i]  (s in {0,1}, i < d/2).
// unpermute_rope_rows is transformers' `reverse_permute` (GGUF -> HF); permute_rope_rows
// is llama.cpp's `permute` (HF -> GGUF). `in` and `out` hold rows*cols floats and must
// not overlap. Throws Error when rows is not a multiple of 2*n_head.
void unpermute_rope_rows(std::span<const float> in, std::span<float> out, int64_t rows, int64_t cols,
                         int64_t n_head);
void permute_rope_rows(std::span<const float> in, std::span<float> out, int64_t rows, int64_t cols,
                       int64_t n_head);

// A tensor dequantized to float32 in Hugging Face layout: for blk.N.attn_q.* (n_head =
// num_heads) and blk.N.attn_k.* (n_head = num_kv_heads) of a file with
// hp.qk_rope_permuted, the row permutation is undone; other tensors are as stored.
// Equals what transformers' GGUF loader produces (tests/formats/test_gguf_smollm2.cpp).
std::vector<float> gguf_tensor_to_f32_hf(const GgufFile& f, const GgufTensorInfo& t, const GgufLlamaHParams& hp);
// The head count whose rope row permutation gguf_tensor_to_f32_hf undoes on t (attn_q's
// num_heads, attn_k's num_kv_heads, with hp.qk_rope_permuted); nullopt for tensors it leaves.
std::optional<int64_t> gguf_rope_permuted_heads(const GgufTensorInfo& t, const GgufLlamaHParams& hp);

// ---- tokenizer metadata ---------------------------------------------------------------
// The tokenizer.* keys, read plainly (the tokenizer module builds a tokenizer from it).
struct GgufTokenizerInfo {
  std::string model;                  // tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (byte BPE), ...
  std::string pre;                    // tokenizer.ggml.pre ("" when absent)
  std::vector<std::string> tokens;    // tokenizer.ggml.tokens
  std::vector<float> scores;          // tokenizer.ggml.scores (empty when absent)
  std::vector<int32_t> token_types;   // tokenizer.ggml.token_type (empty when absent)
  std::vector<std::string> merges;    // tokenizer.ggml.merges, "a b" each (empty when absent)
  std::optional<int64_t> bos_id, eos_id, unk_id, pad_id;  // tokenizer.ggml.*_token_id
  std::optional<bool> add_bos, add_eos;                   // tokenizer.ggml.add_{bos,eos}_token
  std::optional<bool> add_space_prefix;                   // tokenizer.ggml.add_space_prefix
  std::optional<std::string> chat_template;               // tokenizer.chat_template
};
// Throws Error when tokens are missing, scores/token_type lengths differ from tokens,
// or a special-token id is outside the vocabulary.
GgufTokenizerInfo read_gguf_tokenizer(const GgufFile& f);

}  // namespace qlora
