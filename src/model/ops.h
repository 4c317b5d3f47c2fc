#pragma once
// The forward ops of a llama-family block, one free function each (llm.c style):
// outputs first, then caches for backward, then inputs, then dimensions. Every pointer
// carries its shape in a comment; T = tokens, C = hidden size, NH / NKV = query / key-value
// heads, HS = head size. All activations are float32; callers round to the compute dtype
// where a bf16/fp16 model would (see round_activations in quant_linear.h).
//
// The matching *_backward functions are in ops_backward.h; the forward
// caches what backward needs (rmsnorm: rstd per row; attention: the probabilities).
#include <cstdint>
#include <vector>

#include "base/dtype.h"
#include "model/model_spec.h"

namespace qlora {

class DenseWeight;

// out (T, C) = rows tokens[t] of the embedding table wte (V, C).
// REQUIRES 0 <= tokens[t] < V (checked: throws Error otherwise).
void embedding_forward(float* out, const int* tokens, int64_t T, const DenseWeight& wte);

// out (T, C) = inp / sqrt(mean(inp^2) + eps) * weight, per row.
// rstd (T) receives 1 / sqrt(mean(inp^2) + eps) when not null (for backward).
// The normalized value is rounded to `dtype` before the weight multiply, as Hugging Face
// LlamaRMSNorm does (`weight * hidden.to(input_dtype)`); the result is rounded too.
// weight_offset 1 is Gemma's RMSNorm instead: the scale is (1 + weight) in float32 and only
// the product is rounded (`(x * (1 + w.float())).type_as(x)`). round_once: the same single
// rounding with the weight as it is (OLMo 2's `(self.weight * hidden_states).to(input_dtype)`).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t T, int64_t C,
                     float eps, ComputeDType dtype = ComputeDType::F32, float weight_offset = 0.0f,
                     bool round_once = false);

// Gemma's embedding scale, in place on x (n): x = round(x * round(sqrt(hidden))) in `dtype`
// (transformers multiplies by sqrt(hidden) cast to the embedding's dtype).
void embed_scale_forward(float* x, int64_t n, int64_t hidden, ComputeDType dtype);

// The HS/2 inverse frequencies of rotary embeddings, theta^(-2i/HS) adjusted by `scaling`
// as transformers' rope init functions compute them (float32 throughout, the same
// operations in the same order).
// HS is the number of rotated dims (the head size, or the rotary part of it). seq_len (the
// forward's largest position + 1) picks longrope's short or long factors.
std::vector<float> rope_inv_freq(int64_t HS, float theta, const RopeScaling& scaling = {}, int64_t seq_len = 0);

// Rotary tables for positions pos[t]: cos/sin (T, HS/2), angle = pos * inv_freq[i]
// (rope_inv_freq), times scaling.attention_factor.
// seq_len 0 means max(pos) + 1.
void rope_tables(float* cos_out, float* sin_out, const int32_t* pos, int64_t T, int64_t HS, float theta,
                 const RopeScaling& scaling = {}, int64_t seq_len = 0);

// In place on x (T, NH, HS), the Hugging Face "rotate halves" convention: for i < HS/2,
// (x[i], x[i + HS/2]) <- (x[i] cos - x[i + HS/2] sin, x[i + HS/2] cos + x[i] sin).
// cos/sin (T, HS/2) from rope_tables. The backward is the same with -sin.
// rot > 0 rotates only the first rot dims of each head (partial rotary: the halves are
// rot / 2 apart, cos/sin (T, rot/2)), the other HS - rot pass through; 0 means rot = HS.
// interleaved: the pairs are (2i, 2i + 1) instead of (i, i + rot / 2) (GPT-J's and Cohere's
// rotate_every_two, llama.cpp's "normal" rope on unpermuted weights).
void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t NH, int64_t HS, int64_t rot = 0,
                  bool interleaved = false);

// Causal grouped-query attention.
// out (T, NH*HS); att (NH, T, Tk) receives the softmax probabilities when not null
// (masked entries 0); q (T, NH*HS) (rotated); k, v (Tk, NKV*HS) (rotated keys) whose row j
// is position j; query t is at position q_pos0 + t and attends keys 0..q_pos0+t.
// REQUIRES q_pos0 + T <= Tk, NH % NKV == 0. Scale 1/sqrt(HS); softmax in float32.
// key_start (T), when not null, narrows the window of query t to keys
// key_start[t]..q_pos0+t: packed training sequences hold several examples, and an example
// must not see the one before it (REQUIRES 0 <= key_start[t] <= q_pos0 + t).
// From this many queries on (and with a GEMM library), attention runs as per-head GEMMs.
inline constexpr int64_t kAttentionGemmMinTokens = 16;
// scale > 0 replaces 1/sqrt(HS); softcap > 0 caps each scaled score s as
// softcap * tanh(s / softcap) before the softmax (Gemma 2).
// ALiBi's additive attention bias of head h at key position k (counted from the example's
// first token): BLOOM adds slope_h * k to the scaled scores; Falcon (falcon-rw) builds
// bf16(bf16(slope_h) * bf16(k)) as its build_alibi_tensor does (so positions past 256 are
// rounded as they were in training) and adds it before the 1/sqrt(head_dim) scaling, i.e.
// adds that divided by sqrt(head_dim) to the scaled scores.
struct AlibiBias {
  std::vector<float> slopes;  // (NH) alibi_slopes
  bool bf16_product = false;  // Falcon
  float divisor = 1.0f;       // Falcon: sqrt(head_dim)
  float operator()(int64_t h, int64_t k) const {
    if (!bf16_product) return slopes[static_cast<size_t>(h)] * static_cast<float>(k);
    const float b = round_to_bf16(round_to_bf16(slopes[static_cast<size_t>(h)]) * round_to_bf16(static_cast<float>(k)));
    return b / divisor;
  }
  static float round_to_bf16(float x);
};
// alibi, when not null: adds (*alibi)(h, key position) to each scaled score, the key
// position counted from key_start[t] (its example's first token) or 0.
// (The backward needs nothing more: the bias does not depend on q or k.)
// sinks, when not null: (NH) gpt-oss's per-head sink logits, each joining its head's softmax
// denominators as softmax_with_sink's (the backward, given the probabilities, needs nothing
// more either).
// scratch: attention_scratch_floats(T, Tk, NH) floats the scores are computed in when att is
// null (inference); ignored (may be null) when att is given, which holds them instead.
int64_t attention_scratch_floats(int64_t T, int64_t Tk, int64_t NH);
void attention_forward(float* out, float* att, float* scratch, const float* q, const float* k, const float* v, int64_t T,
                       int64_t Tk, int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS,
                       const int32_t* key_start = nullptr, float scale = 0.0f, float softcap = 0.0f,
                       const AlibiBias* alibi = nullptr, const float* sinks = nullptr);
// attention_forward over a KV cache held in 16 bits (k, v: (Tk, NKV * HS) BF16 or F16 bit
// patterns, kv_dtype says which), the same contract and, bit for bit, the same result as
// attention_forward over the values widened to float32. Decoding reads the 16-bit rows
// directly; a block of prompt tokens widens them into this thread's buffers, sized for
// kv_capacity positions (>= Tk; the KV cache's capacity) so that a growing cache does not
// reallocate them every token: 2 * kv_capacity * NKV * HS floats (the memory planner's "KV
// cache widened" item).
void attention_forward_kv16(float* out, float* att, float* scratch, const float* q, const uint16_t* k,
                            const uint16_t* v, ComputeDType kv_dtype, int64_t T, int64_t Tk, int64_t kv_capacity,
                            int64_t q_pos0, int64_t NH, int64_t NKV, int64_t HS, const int32_t* key_start = nullptr,
                            float scale = 0.0f, float softcap = 0.0f, const AlibiBias* alibi = nullptr,
                            const float* sinks = nullptr);
// Batched decoding's attention (Backend::attention_decode_batch's contract): N query tokens,
// row t over its own cache k[t], v[t] (float32 rows, or 16-bit patterns when dtype[t] is BF16 /
// F16) at position pos[t], keys from key_start[t] (or 0). One parallel region over every
// (row, key/value head); each row's values are attention_forward's (_kv16's) for it alone,
// bit for bit.
void attention_decode_rows(float* out, const float* q, int64_t N, const void* const* k, const void* const* v,
                           const ComputeDType* dtype, const int64_t* pos, const int32_t* key_start, int64_t NH,
                           int64_t NKV, int64_t HS, float scale = 0.0f, float softcap = 0.0f,
                           const AlibiBias* alibi = nullptr, const float* sinks = nullptr);
// The ALiBi slopes for NH heads (transformers' build_alibi_tensor of BLOOM and Falcon,
// float32, and llama.cpp's with max_alibi_bias): the geometric sequence of the closest power
// of two, then the odd powers of the next one; max_bias 8 for BLOOM and Falcon.
std::vector<float> alibi_slopes(int64_t NH, float max_bias = 8.0f);
// MPT's (transformers' build_mpt_alibi_tensor): 1 / 2^(max_bias * i / n) for the heads rounded up to
// a power of two n, then (when rounded) the odd-indexed ones followed by the even-indexed, cut to NH --
// alibi_slopes' series, computed (and rounded) as transformers computes it.
std::vector<float> alibi_slopes_mpt(int64_t NH, float max_bias);
// The model's ALiBi bias (spec.alibi_falcon picks Falcon's form, spec.alibi_mpt MPT's slopes).
// REQUIRES positional Alibi.
AlibiBias alibi_bias_for(const ModelSpec& spec);

// In place on logits (n): cap * tanh(x / cap), each step rounded to `dtype` as a bf16/fp16
// torch model computes it (gemma2's final_logit_softcapping).
void softcap_forward(float* x, int64_t n, float cap, ComputeDType dtype);

// out (N) = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void swiglu_forward(float* out, const float* gate, const float* up, int64_t N);

// out (N) = gelu_tanh(gate) * up (GeGLU, Gemma), gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi)
// (g + 0.044715 g^3))), torch's gelu(approximate="tanh"). out may alias gate or up.
void geglu_forward(float* out, const float* gate, const float* up, int64_t N);

// LayerNorm with bias, per row of C: out = (x - mean) / sqrt(var + eps) * weight + bias
// (var the biased variance), in float32 and rounded once to `dtype` (torch's LayerNorm on
// bf16/fp16 computes in float32). stats (T, 2) receives (mean, rstd) per row when not null.
// weight_offset 1: Nemotron's LayerNorm1P, the weight is (1 + w) rounded to dtype.
void layernorm_forward(float* out, float* stats, const float* inp, const float* weight, const float* bias, int64_t T,
                       int64_t C, float eps, ComputeDType dtype = ComputeDType::F32, float weight_offset = 0.0f);
// out (N) = act(x): the plain MLP's activation (model_spec.h Activation). out may alias x.
// xp: xIELU's parameters (required for Activation::Xielu, else unused).
void activation_forward(float* out, const float* x, int64_t N, Activation act, const XieluParams* xp = nullptr);
// softplus(alpha_p), beta + softplus(alpha_n): xIELU's effective coefficients (torch's softplus,
// threshold 20), as the forward and backward use them.
float xielu_alpha_p(const XieluParams& xp);
float xielu_alpha_n(const XieluParams& xp);
// out (N) = a + b (out may alias a or b).
void residual_forward(float* out, const float* a, const float* b, int64_t N);

// In place softmax over x (N) in float32.
void softmax_inplace(float* x, int64_t N);
// softmax over x and one more logit `sink` whose probability is dropped: the max is taken
// over both, exp(sink - max) joins the sum after x's terms (gpt-oss's attention sinks).
void softmax_with_sink(float* x, int64_t N, float sink);

}  // namespace qlora
