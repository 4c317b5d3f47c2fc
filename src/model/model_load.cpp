// Model::load (a ModelSpec's weights from a TensorSource, quantized as asked, with progress) and
// the weights' accessors. The forward passes that run them are model/model.cpp.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>

#include "base/cpu_features.h"
#include "base/error.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "model/block_run.h"
#include "model/linear_kernels.h"
#include "model/ops.h"
#include "model/ops_backward.h"

namespace qlora {

GgufBlockTypes gguf_block_types(const ModelLoadOptions& o) {
  if (o.gguf_compact) return GgufBlockTypes::All;
  return o.int8_activations && simd_level() >= SimdLevel::AVX2 ? GgufBlockTypes::All : GgufBlockTypes::Smallest;
}

uint64_t gathered_table_bytes(GgmlType stored, int64_t rows, int64_t cols, const ModelLoadOptions& o) {
  const uint64_t n = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols);
  const bool sixteen = stored == GgmlType::F16 || stored == GgmlType::BF16;
  const bool quantized = stored != GgmlType::F32 && !sixteen;
  if (o.compute_dtype != ComputeDType::F32) return 2 * n;
  if (!quantized || !o.keep_q8_0_head || cols % kernels::kQ8Block != 0) return (sixteen ? 2 : 4) * n;
  if (stored != GgmlType::Q8_0 && o.keep_gguf_weights && o.keep_gguf_blocks &&
      gguf_type_kept_as_blocks(stored, gguf_block_types(o)))
    return static_cast<uint64_t>(ggml_nbytes(stored, static_cast<int64_t>(n)).value_or(0));
  return n + n / kernels::kQ8Block * 4;  // (DenseWeight's Q8_0: int8 codes and a float32 scale per 32)
}

namespace {

std::vector<float> load_vector(const TensorSource& src, const std::string& name, ComputeDType dtype) {
  std::vector<float> v = src.get(name);
  round_activations(v.data(), static_cast<int64_t>(v.size()), dtype);
  return v;
}

QuantLinear load_linear(const TensorSource& src, const std::string& name, const ModelLoadOptions& opt) {
  // A pre-quantized (bitsandbytes 4-bit or 8-bit) weight is used exactly as stored whenever
  // quantization is wanted at all, as transformers does: its own quant state wins over
  // --quant/--blocksize/--double-quant, because re-quantizing already-quantized weights only
  // adds error (an 8-bit checkpoint asked for as nf4 stays int8, and vice versa).
  // --quant none still dequantizes it to full precision.
  if (opt.quant.quantize) {
    if (opt.keep_gguf_weights || !src.keeps_gguf_4bit(name))
      if (auto q = src.get_4bit(name)) return QuantLinear(std::move(*q), opt.compute_dtype);
    // A GGUF's Linear stored in Q8_0 stays 8-bit, one in Q3_K or Q2_K the file's blocks, one in
    // Q6_K, Q5_K, Q5_1 or Q5_0 the file's blocks where gguf_type_kept_as_blocks says so (8-bit
    // activations, --gguf-compact), else 8-bit: Q5_0 its values exactly, the others Q8_0 of
    // their values (float32 compute); NF4 would round any of them to 4 bits.
    if (opt.keep_gguf_weights && opt.keep_gguf_blocks && !opt.quant.int8 && opt.compute_dtype == ComputeDType::F32 &&
        src.keeps_gguf_blocks(name)) {
      const std::vector<int64_t> s = src.shape(name);
      const std::string what = src.describe() + ": " + src.stored_name(name);
      const std::optional<GgmlType> ty = src.gguf_block_type(name);
      if (ty && *ty != GgmlType::Q8_0 && gguf_type_kept_as_blocks(*ty, gguf_block_types(opt)))
        if (auto b = src.get_gguf_blocks(name))
          return QuantLinear(DenseWeight::from_gguf_blocks(b->type, std::move(b->bytes), s[0], s[1], what));
      if (auto b = src.get_q8_0_linear(name)) return QuantLinear(DenseWeight::from_q8_0(*b, s[0], s[1], what));
      if (auto b = src.get_gguf_blocks(name))
        return QuantLinear(DenseWeight::q8_0_from_blocks(b->type, b->bytes, s[0], s[1], what));
      fail(what, "a GGUF block Linear kept as stored came without its blocks");
    }
    if (auto q = src.get_int8(name)) return QuantLinear(std::move(*q), opt.compute_dtype, opt.quant.int8_threshold);
    // Generated weights come straight in 4-bit: a float32 copy of a 65B shape's Linear is
    // what such sources exist to avoid.
    if (!opt.quant.int8)
      if (auto q = src.generate_4bit(name, opt.quant.type, opt.quant.blocksize, opt.quant.double_quant,
                                     opt.compute_dtype))
        return QuantLinear(std::move(*q), opt.compute_dtype);
  }
  const std::vector<int64_t> shape = src.shape(name);
  return QuantLinear(src.get(name), shape[0], shape[1], opt.quant, opt.compute_dtype);
}

// Tensors a file may hold that no model reads, by design: rotary tables older transformers
// saved, and a tied checkpoint's copy of the embedding as lm_head.
bool ignorable_tensor(const std::string& name, const ModelSpec& spec) {
  constexpr std::string_view inv_freq = "rotary_emb.inv_freq";
  if (name.size() >= inv_freq.size() && name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0)
    return true;
  // GPT-2 checkpoints written by older transformers keep the causal mask as a buffer.
  for (std::string_view buf : {".attn.bias", ".attn.masked_bias"})
    if (name.size() >= buf.size() && name.compare(name.size() - buf.size(), buf.size(), buf) == 0) return true;
  // Qwen3.5's multi-token-prediction head (mtp.*: speculative decoding's draft layer), which
  // transformers does not load either. (Under a vision-language wrapper it is an other part,
  // kept by merges: formats/hf_wrapper.h.)
  if (spec.hybrid() && name.rfind("mtp.", 0) == 0) return true;
  // GLM-4.5's multi-token-prediction layers (model.layers.<n_layers + i>.*), which transformers
  // does not load either.
  for (int64_t i = 0; i < spec.mtp_layers; ++i)
    if (name.rfind("model.layers." + std::to_string(spec.n_layers + i) + ".", 0) == 0) return true;
  // Gemma 4's shared-KV layers compute no keys or values: checkpoints may still hold those
  // projections and norms, which transformers does not load either.
  if (spec.kv_shared_layers > 0)
    for (int64_t l = spec.n_layers - spec.kv_shared_layers; l < spec.n_layers; ++l)
      for (const char* m : {"self_attn.k_proj", "self_attn.v_proj", "self_attn.k_norm", "self_attn.v_norm"})
        if (name == layer_tensor_name(l, m)) return true;
  return spec.tied_embeddings && name == "lm_head.weight";
}

void check_unused_tensors(const ModelSpec& spec, const TensorSource& src, const std::vector<TensorSpec>& expected,
                          bool allow) {
  std::set<std::string> used;
  for (const TensorSpec& t : expected) used.insert(t.name);
  std::vector<std::string> unused;
  for (const std::string& n : src.names())
    if (!used.count(n) && !ignorable_tensor(n, spec)) unused.push_back(src.stored_name(n));
  for (const std::string& n : src.unmapped_names()) unused.push_back(n);
  if (unused.empty()) return;
  std::sort(unused.begin(), unused.end());
  std::string list;
  for (size_t i = 0; i < unused.size() && i < 5; ++i) list += (i ? ", " : "") + unused[i];
  if (unused.size() > 5) list += ", ...";
  const std::string what = std::to_string(unused.size()) + " tensor(s) in the file are not used by the model (" +
                           list + "): the config or metadata (" + std::to_string(spec.n_layers) +
                           " layers) does not describe these weights, or they belong to a part qlora does not run";
  if (!allow) fail(src.describe(), what + "; pass --allow-unused-tensors to load it anyway");
  std::fprintf(stderr, "warning: %s: %s\n", src.describe().c_str(), what.c_str());
}

// An MoE layer's router, experts and shared-expert gate (LayerWeights has the layout).
template <class Progress>
void load_moe_layer(LayerWeights& L, const ModelSpec& spec, int64_t l, const TensorSource& src,
                    const ModelLoadOptions& opt, Progress& progress) {
  QuantOptions dense = opt.quant;
  dense.quantize = false;
  auto dense_linear = [&](const char* module, int64_t rows) {
    const std::string n = layer_tensor_name(l, module);
    QuantLinear q(src.get(n), rows, spec.hidden, dense, opt.compute_dtype);
    progress(n);
    return q;
  };
  if (spec.moe_router_linear) {  // (Hunyuan's gate.wg: an nn.Linear, quantized like the others)
    const std::string n = layer_tensor_name(l, kMoeRouterModule);
    L.router = load_linear(src, n, opt);
    progress(n);
  } else if (spec.moe_gemma4) {  // (its router is an nn.Linear, which bitsandbytes quantizes like the others)
    const std::string n = layer_tensor_name(l, kMoeRouterModule);
    L.router = load_linear(src, n, opt);
    progress(n);
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    L.router_scale = load_vector(src, pre + "router.scale", opt.compute_dtype);
    progress(pre + "router.scale");
    L.per_expert_scale = load_vector(src, pre + "router.per_expert_scale", opt.compute_dtype);
    progress(pre + "router.per_expert_scale");
    for (auto [name, dst] : {std::pair{"post_feedforward_layernorm_1", &L.post_ffn_norm1},
                             std::pair{"pre_feedforward_layernorm_2", &L.pre_ffn_norm2},
                             std::pair{"post_feedforward_layernorm_2", &L.post_ffn_norm2}}) {
      *dst = load_vector(src, layer_tensor_name(l, name), opt.compute_dtype);
      progress(layer_tensor_name(l, name));
    }
  } else if (spec.moe_f32_router()) {  // (GLM-4.5 / DeepSeek-V3, ERNIE 4.5: float32 logits of a float32 weight)
    const std::string n = layer_tensor_name(l, kMoeRouterModule);
    L.router_f32 = src.get(n);
    check(static_cast<int64_t>(L.router_f32.size()) == spec.n_experts * spec.hidden, src.describe(),
          "tensor '" + n + "' is not (" + std::to_string(spec.n_experts) + ", " + std::to_string(spec.hidden) + ")");
    progress(n);
    if (spec.moe_has_score_bias()) {
      const std::string b = "model.layers." + std::to_string(l) + "." + spec.moe_score_bias;
      L.router_score_bias = src.get(b);
      check(static_cast<int64_t>(L.router_score_bias.size()) == spec.n_experts, src.describe(),
            "tensor '" + b + "' has " + std::to_string(L.router_score_bias.size()) + " values for " +
                std::to_string(spec.n_experts) + " experts");
      progress(b);
    } else {  // (DeepSeek-V2's router has none: the routing reads zeros)
      L.router_score_bias.assign(static_cast<size_t>(spec.n_experts), 0.0f);
    }
  } else {
    L.router = dense_linear(kMoeRouterModule, spec.n_experts);
  }
  const int64_t F = spec.expert_ffn, C = spec.hidden;
  L.expert_gate_up.resize(static_cast<size_t>(spec.n_experts));
  L.expert_down.resize(static_cast<size_t>(spec.n_experts));
  if (spec.moe_gpt_oss) {
    // The router's bias; each expert's slice of the fused tensors: gate_up (C, 2F), columns
    // interleaved gate, up, gate, ... -> our (2F, C) Linear with its rows in that order (the
    // op takes gate and up with a stride of 2, and PEFT's LoRA rows on gate_up_proj are in
    // that order too); down (F, C) -> (C, F). (An MXFP4 file is read expert by expert.)
    const std::string rb = layer_tensor_name(l, kMoeRouterModule, "bias");
    L.router.set_bias(src.get(rb));
    progress(rb);
    const std::string gun = fused_expert_name(l, 0), gubn = fused_expert_name(l, 1), dn = fused_expert_name(l, 2),
                      dbn = fused_expert_name(l, 3);
    for (int64_t e = 0; e < spec.n_experts; ++e) {
      const std::vector<float> gu = src.get_slice(gun, e), gub = src.get_slice(gubn, e);
      std::vector<float> w(static_cast<size_t>(2 * F * C)), b(static_cast<size_t>(2 * F));
      for (int64_t j = 0; j < 2 * F; ++j) {
        b[static_cast<size_t>(j)] = gub[static_cast<size_t>(j)];
        for (int64_t c = 0; c < C; ++c) w[static_cast<size_t>(j * C + c)] = gu[static_cast<size_t>(c * 2 * F + j)];
      }
      QuantLinear& q = L.expert_gate_up[static_cast<size_t>(e)];
      q = QuantLinear(std::move(w), 2 * F, C, opt.quant, opt.compute_dtype);
      q.set_bias(std::move(b));
      const std::vector<float> d = src.get_slice(dn, e);
      std::vector<float> dt(static_cast<size_t>(C * F));
      for (int64_t f = 0; f < F; ++f)
        for (int64_t c = 0; c < C; ++c) dt[static_cast<size_t>(c * F + f)] = d[static_cast<size_t>(f * C + c)];
      QuantLinear& qd = L.expert_down[static_cast<size_t>(e)];
      qd = QuantLinear(std::move(dt), C, F, opt.quant, opt.compute_dtype);
      qd.set_bias(src.get_slice(dbn, e));
    }
    for (const std::string& n : {gun, gubn, dn, dbn}) progress(n);
    return;
  }
  if (spec.moe_fused_experts && spec.moe_llama4) {  // (E, C, 2F) and (E, F, C): each expert's slice transposed
    const std::string gun = fused_expert_name(l, 0), dn = fused_expert_name(l, 2);
    auto transposed = [](const std::vector<float>& w, int64_t rows, int64_t cols) {  // (rows, cols) -> (cols, rows)
      std::vector<float> t(w.size());
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) t[static_cast<size_t>(j * rows + i)] = w[static_cast<size_t>(i * cols + j)];
      return t;
    };
    for (int64_t e = 0; e < spec.n_experts; ++e) {
      L.expert_gate_up[static_cast<size_t>(e)] =
          QuantLinear(transposed(src.get_slice(gun, e), C, 2 * F), 2 * F, C, opt.quant, opt.compute_dtype);
      L.expert_down[static_cast<size_t>(e)] =
          QuantLinear(transposed(src.get_slice(dn, e), F, C), C, F, opt.quant, opt.compute_dtype);
    }
    progress(gun);
    progress(dn);
    return;
  }
  if (spec.moe_fused_experts) {  // (E, 2F, C) and (E, C, F): each expert's slice is our Linear
    const std::string gun = fused_expert_name(l, 0), dn = fused_expert_name(l, 2);
    for (int64_t e = 0; e < spec.n_experts; ++e) {
      L.expert_gate_up[static_cast<size_t>(e)] = QuantLinear(src.get_slice(gun, e), 2 * F, C, opt.quant, opt.compute_dtype);
      L.expert_down[static_cast<size_t>(e)] = QuantLinear(src.get_slice(dn, e), C, F, opt.quant, opt.compute_dtype);
    }
    progress(gun);
    progress(dn);
    if (spec.shared_expert && spec.shared_expert_gate) {
      const std::string n = layer_tensor_name(l, kMoeSharedGateModule);
      L.shared_gate = load_linear(src, n, opt);
      progress(n);
    }
    return;
  }
  for (int64_t e = 0; e < spec.n_experts && spec.moe_ungated; ++e) {  // (Nemotron 3's: up and down, as stored)
    const std::string u = layer_tensor_name(l, expert_module(e, 1)), d = layer_tensor_name(l, expert_module(e, 2));
    L.expert_gate_up[static_cast<size_t>(e)] = load_linear(src, u, opt);
    progress(u);
    L.expert_down[static_cast<size_t>(e)] = load_linear(src, d, opt);
    progress(d);
  }
  for (int64_t e = 0; e < spec.n_experts && !spec.moe_ungated; ++e) {
    // Gate rows then up rows, quantized as one tensor (what bitsandbytes' quantize_4bit of
    // transformers 5's gate_up_proj[e] gives).
    const std::string g = layer_tensor_name(l, expert_module(e, 0)), u = layer_tensor_name(l, expert_module(e, 1));
    if (opt.quant.quantize && (src.get_4bit(g) || src.get_int8(g)))
      std::fprintf(stderr,
                   "warning: %s: expert %lld of layer %lld is stored quantized per projection; it is dequantized "
                   "and quantized again with its gate and up rows together (expect quantization-level differences)\n",
                   src.describe().c_str(), static_cast<long long>(e), static_cast<long long>(l));
    std::vector<float> gu = src.get(g);
    progress(g);
    const std::vector<float> up = src.get(u);
    progress(u);
    gu.insert(gu.end(), up.begin(), up.end());
    L.expert_gate_up[static_cast<size_t>(e)] = QuantLinear(std::move(gu), 2 * F, C, opt.quant, opt.compute_dtype);
    const std::string d = layer_tensor_name(l, expert_module(e, 2));
    L.expert_down[static_cast<size_t>(e)] = load_linear(src, d, opt);
    progress(d);
  }
  if (spec.shared_expert && spec.shared_expert_gate) {  // (an nn.Linear: bitsandbytes quantizes it, one row or not)
    const std::string n = layer_tensor_name(l, kMoeSharedGateModule);
    L.shared_gate = load_linear(src, n, opt);
    progress(n);
  }
}

}  // namespace

Model Model::load(const ModelSpec& spec_in, const TensorSource& src, const ModelLoadOptions& opt) {
  // A family whose files hold fused experts (Qwen3.5-MoE) may come with one tensor per expert
  // (transformers converts either way): read what the file has.
  ModelSpec spec = spec_in;
  // (the first MoE layer: GLM-4.5's first layers are dense)
  const int64_t l0 = spec.first_moe_layer();
  if (spec.moe_fused_experts && !src.has(fused_expert_name(l0, 0)) && src.has(layer_tensor_name(l0, expert_module(0, 0))))
    spec.moe_fused_experts = false;
  spec.validate(src.describe());
  // Check every tensor's presence and shape before the (slow) quantization starts.
  const std::vector<TensorSpec> expected = spec.tensors();
  for (const TensorSpec& t : expected) {
    if (!src.has(t.name))
      fail(src.describe(), "missing tensor '" + t.name + "' (expected shape " + shape_to_string(t.shape) + ")");
    const std::vector<int64_t> got = src.shape(t.name);
    if (got != t.shape)
      fail(src.describe(), "tensor '" + src.stored_name(t.name) + "' has shape " + shape_to_string(got) +
                               " but the config needs " + shape_to_string(t.shape));
  }

  check_unused_tensors(spec, src, expected, opt.allow_unused_tensors);

  Model m;
  m.spec_ = spec;
  m.block_ = std::make_shared<const BlockProgram>(BlockProgram::for_spec(spec));
  m.dtype_ = opt.compute_dtype;
  m.kv_dtype_ = opt.kv_cache_dtype;
  m.quant_ = opt.quant;
  const int64_t total = static_cast<int64_t>(expected.size());
  int64_t done = 0;
  auto progress = [&](const std::string& name) {
    ++done;
    if (opt.progress) opt.progress(done, total, name);
  };

  // The tables of rows (embeddings, output head): a GGUF's Q8_0 / block type as it is, or its
  // other quantized types as Q8_0 (float32 compute; gathered_table_bytes below is the same rule
  // for the planner).
  auto packed = [&](const std::string& name, int64_t rows, int64_t cols) -> std::optional<DenseWeight> {
    if (opt.keep_q8_0_head && opt.compute_dtype == ComputeDType::F32 && cols % kernels::kQ8Block == 0) {
      if (auto q8 = src.get_q8_0(name)) return DenseWeight::from_q8_0(*q8, rows, cols, src.describe() + ": " + src.stored_name(name));
      const std::string what = src.describe() + ": " + src.stored_name(name);
      // (the stored type, to copy the blocks only when they are kept)
      const auto stored = src.get_stored_blocks(name);
      if (opt.keep_gguf_weights && opt.keep_gguf_blocks && (!stored || gguf_type_kept_as_blocks(stored->type, gguf_block_types(opt))))
        if (auto b = src.get_gguf_blocks(name); b && gguf_type_kept_as_blocks(b->type, gguf_block_types(opt)))
          return DenseWeight::from_gguf_blocks(b->type, std::move(b->bytes), rows, cols, what);
      // (Q4_0, Q4_K, ...: 8 bits rather than float32, as llama.cpp keeps them quantized; a slab
      // of rows at a time from the stored blocks, no float32 copy of the whole tensor)
      if (stored) return DenseWeight::q8_0_from_blocks(stored->type, stored->bytes, rows, cols, what);
      if (src.stored_quantized(name)) {
        const std::vector<float> v = src.get(name);
        return DenseWeight::to_q8_0(v, rows, cols, what);
      }
    }
    return std::nullopt;
  };
  // Otherwise the values in the compute dtype, a slab of rows at a time where the source reads
  // rows (no float32 copy of the whole table when it is 16-bit); with float32 compute a table
  // the source stores in 16 bits stays in them (DenseWeight::held_16bit: its values exactly,
  // half the bytes) when `keep16`.
  auto plain = [&](const std::string& name, int64_t rows, int64_t cols, bool keep16) {
    const std::optional<ComputeDType> held =
        keep16 && opt.compute_dtype == ComputeDType::F32 ? src.stored_16bit(name) : std::nullopt;
    if (src.reads_rows(name))
      return DenseWeight::from_rows(
          rows, cols, opt.compute_dtype, [&](int64_t r0, int64_t r1, float* out) { src.get_rows(name, r0, r1, out); },
          held);
    if (held) {
      const std::vector<float> v = src.get(name);
      return DenseWeight::from_rows(
          rows, cols, opt.compute_dtype,
          [&](int64_t r0, int64_t r1, float* out) { std::copy(v.begin() + r0 * cols, v.begin() + r1 * cols, out); }, held);
    }
    return DenseWeight(src.get(name), rows, cols, opt.compute_dtype);
  };
  // The embedding and output head: packed as above, or plain (16-bit as stored unless --dense-head).
  auto dense = [&](const std::string& name, int64_t rows, int64_t cols) {
    if (std::optional<DenseWeight> p = packed(name, rows, cols)) return std::move(*p);
    return plain(name, rows, cols, opt.keep_q8_0_head);
  };
  {
    m.embed_ = dense("model.embed_tokens.weight", spec.vocab, spec.embed_width());
    progress("model.embed_tokens.weight");
    if (spec.ple()) {  // (Gemma 4's per-layer inputs: a second embedding, its projection and norm)
      // Only ever gathered a row per token, never multiplied: packed as the embedding is, or
      // with float32 compute held in its stored 16-bit format, whose values widen exactly
      // (262144 x 8960 values in Gemma 4 E2B: 4.7 GB rather than 9.4).
      const std::string t = "model.embed_tokens_per_layer.weight";
      const int64_t rows = spec.ple_vocab, cols = spec.n_layers * spec.ple_dim;
      if (std::optional<DenseWeight> p = packed(t, rows, cols)) m.embed_ple_ = std::move(*p);
      else m.embed_ple_ = plain(t, rows, cols, /*keep16=*/true);
      progress(t);
      const std::string n = model_linear_name(spec, ModelLinear::PleProjection) + ".weight";
      m.model_linears_[2] = load_linear(src, n, opt);
      progress(n);
      m.ple_norm_ = load_vector(src, "model.per_layer_projection_norm.weight", opt.compute_dtype);
      progress("model.per_layer_projection_norm.weight");
    }
    if (spec.projects_embeddings()) {
      const std::string n = model_linear_name(spec, ModelLinear::ProjectIn) + ".weight";
      m.model_linears_[0] = load_linear(src, n, opt);
      progress(n);
    }
    if (spec.embed_norm) {
      m.embed_norm_ = load_vector(src, "model.embed_norm.weight", opt.compute_dtype);
      m.embed_norm_bias_ = load_vector(src, "model.embed_norm.bias", opt.compute_dtype);
      progress("model.embed_norm.weight");
      progress("model.embed_norm.bias");
    }
    if (spec.positional == PositionalKind::Learned) {
      m.embed_pos_ = DenseWeight(src.get("model.embed_positions.weight"), spec.max_positions + spec.position_offset,
                                 spec.hidden, opt.compute_dtype);
      progress("model.embed_positions.weight");
    }
  }
  m.layers_.resize(static_cast<size_t>(spec.n_layers));
  for (int64_t l = 0; l < spec.n_layers; ++l) {
    LayerWeights& L = m.layers_[static_cast<size_t>(l)];
    auto name = [l](const char* module, const char* suffix = "weight") { return layer_tensor_name(l, module, suffix); };
    const auto lin = spec.block_linears(l);
    auto linear = [&](int w) {
      // (fused into another Linear of this family, or not of this layer's kind)
      if (!lin[w].module || !spec.layer_has_linear(l, w)) return;
      QuantLinear& dst = L.linear(w);
      dst = load_linear(src, name(lin[w].module), opt);
      progress(name(lin[w].module));
      if (lin[w].bias) {
        dst.set_bias(src.get(name(lin[w].module, "bias")));
        progress(name(lin[w].module, "bias"));
      }
    };
    const bool ln = spec.norm == NormKind::LayerNorm;
    // (LayerNorms without biases, Cohere's, run with zero biases)
    auto norm_bias = [&](const std::string& n) {
      if (spec.norm_bias) {
        progress(n);
        return load_vector(src, n, opt.compute_dtype);
      }
      return std::vector<float>(static_cast<size_t>(spec.hidden), 0.0f);
    };
    // (OLMo's LayerNorms have no weights: unit ones)
    auto norm_weight = [&](const std::string& n) {
      if (spec.norm_weights) {
        progress(n);
        return load_vector(src, n, opt.compute_dtype);
      }
      return std::vector<float>(static_cast<size_t>(spec.hidden), 1.0f);
    };
    if (spec.pre_norms) L.input_norm = norm_weight(name("input_layernorm"));
    if (ln) L.input_norm_bias = norm_bias(name("input_layernorm", "bias"));
    if (spec.layer_is_linear_attn(l)) {  // the gated DeltaNet's parameters, then its Linears
      const std::string prefix = "model.layers." + std::to_string(l) + ".linear_attn.";
      if (spec.la_mamba1) {  // (its steps' bias is dt_proj's; Falcon-Mamba's norms have unit weights)
        L.la_A_log = load_vector(src, prefix + "A_log", opt.compute_dtype);
        progress(prefix + "A_log");
        // (the decay rates once, rather than an exp per channel and state at every token)
        L.la_A.resize(L.la_A_log.size());
        for (size_t i = 0; i < L.la_A.size(); ++i) L.la_A[i] = -std::exp(L.la_A_log[i]);
        if (spec.la_bcdt_weights) {
          L.la_dt_norm = load_vector(src, prefix + "dt_layernorm.weight", opt.compute_dtype);
          L.la_bc_norm = load_vector(src, prefix + "b_layernorm.weight", opt.compute_dtype);
          const std::vector<float> c = load_vector(src, prefix + "c_layernorm.weight", opt.compute_dtype);
          L.la_bc_norm.insert(L.la_bc_norm.end(), c.begin(), c.end());
          for (const char* n : {"dt_layernorm.weight", "b_layernorm.weight", "c_layernorm.weight"}) progress(prefix + n);
        } else if (spec.la_bcdt_norm) {
          L.la_dt_norm.assign(static_cast<size_t>(spec.la_dt_rank), 1.0f);
          L.la_bc_norm.assign(static_cast<size_t>(2 * spec.la_k_dim), 1.0f);
        }
      } else if (!spec.la_short_conv) {  // (LFM2's short conv has the taps only)
        L.la_dt_bias = load_vector(src, prefix + "dt_bias", opt.compute_dtype);
        progress(prefix + "dt_bias");
        L.la_A_log = load_vector(src, prefix + "A_log", opt.compute_dtype);
        progress(prefix + "A_log");
      }
      L.la_conv = load_vector(src, prefix + "conv1d.weight", opt.compute_dtype);  // (conv_dim, 1, K) = (conv_dim, K)
      progress(prefix + "conv1d.weight");
      if (spec.la_conv_bias) {
        L.la_conv_bias = load_vector(src, prefix + "conv1d.bias", opt.compute_dtype);
        progress(prefix + "conv1d.bias");
      }
      if (spec.la_mamba2 || spec.la_mamba1) {
        L.la_D = load_vector(src, prefix + "D", opt.compute_dtype);
        progress(prefix + "D");
      }
      if (!spec.la_short_conv && !spec.la_mamba1) {
        L.la_norm = load_vector(src, prefix + "norm.weight", opt.compute_dtype);
        progress(prefix + "norm.weight");
      }
      for (int w = 7; w < kBlockLinearCount; ++w) linear(w);
    }
    for (int w = 0; w < 4; ++w) linear(w);  // q, k, v, o
    if (spec.mla()) {  // (DeepSeek: the latents' norms and the query latent's up-projection)
      if (spec.mla_q_rank > 0) {
        L.q_a_norm = load_vector(src, name("self_attn.q_a_layernorm"), opt.compute_dtype);
        progress(name("self_attn.q_a_layernorm"));
      }
      L.kv_a_norm = load_vector(src, name("self_attn.kv_a_layernorm"), opt.compute_dtype);
      progress(name("self_attn.kv_a_layernorm"));
      linear(kMlaQbLinear);
    }
    if (spec.sandwich_norms) {
      if (spec.pre_norms) {
        L.pre_ffn_norm = load_vector(src, name("pre_feedforward_layernorm"), opt.compute_dtype);
        progress(name("pre_feedforward_layernorm"));
      }
      L.post_ffn_norm = load_vector(src, name("post_feedforward_layernorm"), opt.compute_dtype);
      progress(name("post_feedforward_layernorm"));
    }
    if (spec.qk_norm_tensor_per_head) {  // (StableLM 2 12B: one tensor per head, read as (heads, head_dim))
      for (bool key : {false, true})
        for (int64_t h = 0; h < (key ? spec.n_kv_heads : spec.n_heads); ++h) {
          const std::string n = layer_tensor_name(l, qk_head_norm_module(key, h));
          const std::vector<float> v = load_vector(src, n, opt.compute_dtype);
          std::vector<float>& dst = key ? L.k_norm : L.q_norm;
          dst.insert(dst.end(), v.begin(), v.end());
          progress(n);
        }
      L.unit_norm.assign(static_cast<size_t>(spec.head_dim), 1.0f);
      L.unit_norm_bias.assign(static_cast<size_t>(spec.head_dim), 0.0f);
    } else if (spec.qk_norm && !spec.layer_is_linear_attn(l)) {
      L.q_norm = load_vector(src, name("self_attn.q_norm"), opt.compute_dtype);
      progress(name("self_attn.q_norm"));
      if (!spec.layer_kv_shared(l)) {  // (Gemma 4's shared-KV layers have no keys of their own)
        L.k_norm = load_vector(src, name("self_attn.k_norm"), opt.compute_dtype);
        progress(name("self_attn.k_norm"));
      }
      if (spec.qk_norm_head_weights) {
        L.unit_norm.assign(static_cast<size_t>(spec.head_dim), 1.0f);
        L.unit_norm_bias.assign(static_cast<size_t>(spec.head_dim), 0.0f);
      }
    }
    if (spec.act == Activation::Xielu && spec.layer_has_mlp(l)) {  // (Apertus: the layer's four scalars, as stored)
      float* dst[4] = {&L.xielu.alpha_p, &L.xielu.alpha_n, &L.xielu.beta, &L.xielu.eps};
      for (int i = 0; i < 4; ++i) {
        const std::string n = xielu_tensor_name(l, i);
        const std::vector<float> v = src.get(n);
        check(v.size() == 1 && std::isfinite(v[0]), src.describe(), "tensor '" + n + "' is not one finite value");
        *dst[i] = v[0];
        progress(n);
      }
    }
    if (spec.attn_sinks) {
      const std::string n = "model.layers." + std::to_string(l) + ".self_attn.sinks";
      L.attn_sinks = load_vector(src, n, opt.compute_dtype);
      progress(n);
    }
    if (spec.single_branch() && spec.layer_has_mlp(l)) {
      L.post_norm = L.input_norm;  // (Nemotron-H's MLP layers: their one norm is the MLP's)
    } else if (!spec.shared_branch_norm && spec.layer_has_mlp(l)) {
      L.post_norm = norm_weight(name("post_attention_layernorm"));
    }
    if (ln && !spec.shared_branch_norm && spec.layer_has_mlp(l))
      L.post_norm_bias = norm_bias(name("post_attention_layernorm", "bias"));
    if (spec.layer_moe(l)) load_moe_layer(L, spec, l, src, opt, progress);
    for (int w = 4; w < kAttentionLinears; ++w) linear(w);  // gate, up, down (MoE: the shared expert's)
    if (spec.v_norm || spec.qk_l2_norm) L.unit_norm.assign(static_cast<size_t>(spec.max_head_dim()), 1.0f);  // (VHead)
    if (spec.ple()) {
      for (int w : {kPleGateLinear, kPleProjLinear}) linear(w);
      L.ple_norm = load_vector(src, name("post_per_layer_input_norm"), opt.compute_dtype);
      progress(name("post_per_layer_input_norm"));
    }
    if (spec.layer_scalar) {
      const std::string n = "model.layers." + std::to_string(l) + ".layer_scalar";
      const std::vector<float> v = load_vector(src, n, opt.compute_dtype);
      check(v.size() == 1 && std::isfinite(v[0]), n, "must hold one finite value");
      L.layer_scalar = v[0];
      progress(n);
    }
  }
  if (spec.final_norm) {
    if (spec.norm_weights) {
      m.final_norm_ = load_vector(src, "model.norm.weight", opt.compute_dtype);
      progress("model.norm.weight");
    } else {
      m.final_norm_.assign(static_cast<size_t>(spec.hidden), 1.0f);
    }
    if (spec.norm == NormKind::LayerNorm && spec.norm_bias) {
      m.final_norm_bias_ = load_vector(src, "model.norm.bias", opt.compute_dtype);
      progress("model.norm.bias");
    } else if (spec.norm == NormKind::LayerNorm) {
      m.final_norm_bias_.assign(static_cast<size_t>(spec.hidden), 0.0f);
    }
  }
  if (spec.projects_embeddings()) {
    const std::string n = model_linear_name(spec, ModelLinear::ProjectOut) + ".weight";
    m.model_linears_[1] = load_linear(src, n, opt);
    progress(n);
  }
  if (!spec.tied_embeddings) {
    m.lm_head_ = dense("lm_head.weight", spec.vocab, spec.embed_width());
    progress("lm_head.weight");
  }
  if (spec.head_bias) {
    m.lm_head_bias_ = load_vector(src, "lm_head.bias", opt.compute_dtype);
    progress("lm_head.bias");
  }
  // (Llama 4's experts read one by one -- bitsandbytes' checkpoints split them -- are still
  // Llama4TextExperts' fused parameters to transformers: a merged export writes them so)
  if (spec.moe_llama4) m.spec_.moe_fused_experts = true;
  if (opt.int8_activations) {
    const bool all = !opt.int8_activations_gguf_only;
    const auto set = [all](QuantLinear& q) {
      if (all || q.holds_gguf_weight()) q.set_int8_activations(true);
    };
    for (LayerWeights& l : m.layers_)
      for (int w = 0; w < kBlockLinearCount; ++w) set(l.linear(w));
    for (LayerWeights& l : m.layers_)
      for (auto* experts : {&l.expert_gate_up, &l.expert_down})
        for (QuantLinear& q : *experts) set(q);
    for (QuantLinear& l : m.model_linears_) set(l);
    // (the head when tied; a lookup table otherwise. Packed: 8-bit or a GGUF's blocks, which
    // only a GGUF makes)
    if (all || m.embed_.packed()) m.embed_.set_int8_activations(true);
    if (all || m.lm_head_.packed()) m.lm_head_.set_int8_activations(true);
  }
  return m;
}

size_t Model::weight_bytes() const {
  size_t b = embed_.bytes() + lm_head_.bytes() + embed_pos_.bytes() + embed_ple_.bytes() + ple_norm_.size() * sizeof(float) +
             (embed_norm_.size() + embed_norm_bias_.size()) * sizeof(float) + (final_norm_.size() + final_norm_bias_.size() + lm_head_bias_.size()) * sizeof(float);
  for (const LayerWeights& L : layers_) {
    b += (L.q_a_norm.size() + L.kv_a_norm.size() + L.input_norm.size() + L.post_norm.size() + L.input_norm_bias.size() + L.post_norm_bias.size() + L.q_norm.size() + L.k_norm.size() + L.pre_ffn_norm.size() +
          L.post_ffn_norm.size() + L.la_conv.size() + L.la_A_log.size() + L.la_A.size() + L.la_dt_norm.size() + L.la_bc_norm.size() + L.la_dt_bias.size() + L.la_norm.size() +
          L.la_conv_bias.size() + L.la_D.size() + L.unit_norm.size() + L.unit_norm_bias.size() + L.ple_norm.size() +
          L.post_ffn_norm1.size() + L.pre_ffn_norm2.size() + L.post_ffn_norm2.size() + L.router_scale.size() +
          L.per_expert_scale.size() + L.attn_sinks.size()) *
         sizeof(float);
    for (int w = 0; w < kBlockLinearCount; ++w) b += L.linear(w).bytes();
    b += L.router.bytes() + L.shared_gate.bytes() + (L.router_f32.size() + L.router_score_bias.size()) * sizeof(float);
    for (const QuantLinear& q : L.expert_gate_up) b += q.bytes();
    for (const QuantLinear& q : L.expert_down) b += q.bytes();
  }
  for (const QuantLinear& q : model_linears_) b += q.bytes();
  return b;
}

QuantLinear& LayerWeights::linear(int which) {
  switch (which) {
    case 0: return q_proj;
    case 1: return k_proj;
    case 2: return v_proj;
    case 3: return o_proj;
    case 4: return gate_proj;
    case 5: return up_proj;
    case 6: return down_proj;
    case 7: return la_in_qkv;
    case 8: return la_in_z;
    case 9: return la_in_b;
    case 10: return la_in_a;
    case 11: return la_out;
    case kPleGateLinear: return ple_gate;
    case kPleProjLinear: return ple_proj;
    case kMlaQbLinear: return mla_q_b;
  }
  fail("LayerWeights::linear", "no Linear " + std::to_string(which) + " in a block");
}

const QuantLinear& LayerWeights::linear(int which) const { return const_cast<LayerWeights*>(this)->linear(which); }

const std::vector<float>& LayerWeights::norm(NormRole role) const {
  switch (role) {
    case NormRole::Input: return input_norm;
    case NormRole::PostAttention: return post_norm;
    case NormRole::PreFfn: return pre_ffn_norm;
    case NormRole::PostFfn: return post_ffn_norm;
    case NormRole::QHead: return q_norm;
    case NormRole::KHead: return k_norm;
    case NormRole::Unit:
    case NormRole::VHead: return unit_norm;
    case NormRole::PostFfn1: return post_ffn_norm1;
    case NormRole::PreFfn2: return pre_ffn_norm2;
    case NormRole::PostFfn2: return post_ffn_norm2;
    case NormRole::PostPle: return ple_norm;
    case NormRole::QLatent: return q_a_norm;
    case NormRole::KvLatent: return kv_a_norm;
  }
  fail("LayerWeights::norm", "no such norm");
}

const std::vector<float>& LayerWeights::norm_bias(NormRole role) const {
  static const std::vector<float> none;
  switch (role) {
    case NormRole::Input: return input_norm_bias;
    case NormRole::PostAttention: return post_norm_bias;
    case NormRole::Unit: return unit_norm_bias;
    default: return none;
  }
}

const QuantLinear& Model::block_linear(int64_t layer, int which) const {
  return layers_.at(static_cast<size_t>(layer)).linear(which);
}

std::string model_linear_name(const ModelSpec& spec, ModelLinear which) {
  if (which == ModelLinear::PleProjection) return spec.ple() ? "model.per_layer_model_projection" : std::string();
  if (!spec.projects_embeddings()) return std::string();
  return which == ModelLinear::ProjectIn ? "model.project_in" : "model.project_out";
}

}  // namespace qlora
