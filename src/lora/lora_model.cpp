#include "lora/lora_model.h"

#include "formats/hf_wrapper.h"
#include "formats/model_family.h"

#include <regex>
#include <string>

#include "base/error.h"

namespace qlora {

namespace {

// splitmix64 of (seed, index): an independent seed per LoRA layer.
uint64_t derive_seed(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

std::string block_linear_path(const ModelSpec& spec, int64_t layer, BlockLinear which) {
  const char* module = spec.block_linears(layer)[static_cast<size_t>(which)].module;
  if (!module || !spec.layer_has_linear(layer, static_cast<int>(which))) return std::string();
  // (the family's own name: PEFT's module paths and target_modules are Hugging Face's)
  return canonical_to_hf(spec, "model.layers." + std::to_string(layer) + "." + module);
}

const QuantLinear& block_linear(const LayerWeights& L, BlockLinear which) { return L.linear(static_cast<int>(which)); }

std::string moe_router_path(int64_t layer) { return "model.layers." + std::to_string(layer) + "." + kMoeRouterModule; }
namespace {
// transformers 5's module path of an MoE part: the canonical one (its module tree names the
// block mlp whatever the files call it: Mixtral's block_sparse_moe), under a vision-language
// wrapper's prefix.
std::string moe_module_path(const ModelSpec& spec, const std::string& canonical) {
  return spec.hf_wrapper.empty() ? canonical : text_to_wrapped_path(canonical, spec.hf_wrapper);
}
// Whether the MoE block's module tree keeps the family's own names (Llama 4's and LFM2-MoE's
// feed_forward), unlike transformers 5's mlp of Mixtral, Qwen-MoE, ... whatever their files say.
bool model_family_refuses_out_proj(const ModelSpec& spec) {
  const ModelFamily* f = find_family(spec.family);
  return f && f->peft_refuses_out_proj;
}

// (Jamba -- the MoE with Mamba (1) layers --: feed_forward.router / feed_forward.experts)
bool moe_modules_renamed(const ModelSpec& spec) {
  return spec.moe_llama4 || spec.la_short_conv || spec.moe_ungated || (spec.la_mamba1 && spec.moe());
}
}  // namespace

std::string moe_router_module_path(const ModelSpec& spec, int64_t layer) {
  // (gpt-oss's router is mlp.router, in its files and its modules alike)
  // (Gemma 4's is router.proj, an nn.Linear: its files' name)
  // (Granite MoE's module is block_sparse_moe.router, whatever its files call it)
  if (spec.moe_granite) return moe_module_path(spec, "model.layers." + std::to_string(layer) + ".block_sparse_moe.router");
  // (Llama 4's is feed_forward.router; LFM2-MoE's feed_forward.gate)
  return spec.moe_gpt_oss || spec.moe_gemma4 || spec.moe_router_linear || moe_modules_renamed(spec)
             ? canonical_to_hf(spec, moe_router_path(layer))
                                             : moe_module_path(spec, moe_router_path(layer));
}
std::string moe_shared_gate_path(const ModelSpec& spec, int64_t layer) {
  return canonical_to_hf(spec, "model.layers." + std::to_string(layer) + "." + kMoeSharedGateModule);
}
std::string moe_experts_module(const ModelSpec& spec, int64_t layer) {
  if (moe_modules_renamed(spec)) return canonical_to_hf(spec, "model.layers." + std::to_string(layer) + ".mlp.experts");
  return moe_module_path(spec, "model.layers." + std::to_string(layer) +
                                   (spec.moe_granite ? ".block_sparse_moe.experts" : ".mlp.experts"));
}
std::string moe_expert_path(const ModelSpec& spec, int64_t layer, int64_t expert, int part) {
  return moe_experts_module(spec, layer) + "." + std::to_string(expert) +
         (part == 1 ? ".down_proj" : spec.moe_ungated ? ".up_proj" : ".gate_up_proj");
}

LoraModel::LoraModel(const Model& model, const LoraConfig& cfg) : model_(&model), cfg_(cfg) {
  cfg_.validate("LoRA config");
  // Conv1D families (gpt2) store Linears (in, out): PEFT marks their adapters fan_in_fan_out.
  const ModelFamily* fam = find_family(model.spec().family);
  const bool conv1d = fam && fam->conv1d_linears;
  if (cfg_.fan_in_fan_out && !conv1d)
    fail("LoRA config", "fan_in_fan_out is set, but " + model.spec().family +
                            "'s Linear weights are stored (out, in): an adapter for another model?");
  cfg_.fan_in_fan_out = conv1d;
  // (PEFT refuses LoRA on a Mamba model's out_proj and conv1d, by name or by regex, at creation and
  // at load: an adapter naming them would not load there)
  if (model_family_refuses_out_proj(model.spec())) {
    for (const std::string& t : cfg_.target_modules)
      if (lora_module_matches("x.conv1d", t) || lora_module_matches("x.out_proj", t) || t == "conv1d" || t == "out_proj")
        fail("LoRA config", "target '" + t + "': PEFT refuses adapters on a " + model.spec().family + " model's out_proj "
                            "and conv1d (its fused Mamba kernel bypasses them), so the adapter would not load in PEFT; "
                            "target in_proj (and a Mamba model's x_proj)");
    if (!cfg_.target_regex.empty()) {
      const std::regex re(cfg_.target_regex, std::regex::ECMAScript);
      // (the module paths of the family's first Mamba layer: backbone.* for Mamba2's, model.* for Nemotron-H's)
      int64_t m0 = 0;
      while (m0 + 1 < model.spec().n_layers && !model.spec().layer_is_linear_attn(m0)) ++m0;
      for (const char* part : {"linear_attn.conv1d", "linear_attn.out_proj"})
        if (const std::string p = canonical_to_hf(model.spec(), "model.layers." + std::to_string(m0) + "." + part);
            std::regex_match(p, re))
          fail("LoRA config", "target regex matches " + p + ": PEFT refuses adapters on a " +
                                  model.spec().family + " model's out_proj and conv1d, so the adapter would not load in PEFT");
    }
  }
  const int64_t NL = model.spec().n_layers;
  index_.resize(static_cast<size_t>(NL));
  for (int64_t l = 0; l < NL; ++l) {
    const LayerWeights& L = model.layers()[static_cast<size_t>(l)];
    for (int w = 0; w < kBlockLinears; ++w) {
      const std::string path = block_linear_path(model.spec(), l, static_cast<BlockLinear>(w));
      index_[static_cast<size_t>(l)][static_cast<size_t>(w)] = -1;
      if (path.empty() || !cfg_.targets(path)) continue;
      if (const ModelFamily* f = find_family(model.spec().family);
          cfg_.skip_bypassed && f && w == f->peft_bypassed_linear &&
          // (transformers decides for the whole model -- loaded 4-/8-bit or not --, so a GGUF's
          // Q8_0 dt_proj kept 8-bit counts as quantized with the rest)
          !(f->peft_bypass_unquantized_only && model.quant().quantize)) {
        if (cfg_.all_linear) continue;
        fail("LoRA config", "LoRA on " + path + ": transformers' " + model.spec().family + " mixer multiplies by this "
                                "Linear's weight itself" +
                                std::string(f->peft_bypass_unquantized_only ? " when the model is not quantized" : "") +
                                ", bypassing an adapter on it, so under PEFT the adapter would do nothing; target "
                                "in_proj and x_proj" +
                                (f->peft_bypass_unquantized_only ? " (or load the model 4-/8-bit)" : ""));
      }
      if (w == 11 && model_family_refuses_out_proj(model.spec())) {
        if (cfg_.all_linear) continue;
        fail("LoRA config", "LoRA on " + path + ": PEFT refuses adapters on a " + model.spec().family +
                                " model's out_proj (its fused Mamba kernel bypasses them), so the adapter would not load "
                                "in PEFT; target in_proj (and a Mamba model's x_proj)");
      }
      // (PEFT 0.21's all-linear on GLM-4.5 and ERNIE 4.5's MoE adapts no MLP Linear -- neither the
      // dense layers' nor the shared experts' -- and the experts and router instead: add_moe_layers)
      // (LFM2-MoE's all-linear adapts its dense layers' Linears and no expert: all_linear_adapts_experts)
      if (cfg_.all_linear && model.spec().all_linear_adapts_experts() &&
          (model.spec().moe_f32_router() || model.spec().moe_router_linear) && w >= 4 && w <= 6)
        continue;
      // A gpt_neox GGUF holds query_key_value reordered (all q, all k, all v) while PEFT's B
      // rows follow the Hugging Face per-head order: refuse rather than mix the two. (GPT-BigCode
      // without multi_query likewise: its starcoder GGUF holds c_attn's rows contiguous.)
      const std::string& fam = model.spec().family;
      const ModelSpec& ms = model.spec();
      const bool regrouped = (fam == "gpt_neox" || fam == "bloom" || (fam == "gpt_bigcode" && ms.n_kv_heads > 1) ||
                              (fam == "falcon" && !ms.qkv_grouped && ms.n_kv_heads > 1)) &&
                             ms.fused_qkv && !ms.qkv_per_head;
      if (w == 0 && regrouped)
        fail("LoRA config", "LoRA on " + std::string(fam == "gpt_bigcode" ? "c_attn" : "query_key_value") + " of a " + fam +
                                " GGUF is not supported yet (llama.cpp reorders its rows); load the Hugging Face "
                                "checkpoint, or target the other modules");
      const QuantLinear& q = block_linear(L, static_cast<BlockLinear>(w));
      LoraLayer layer(path, q.in_features(), q.out_features(), cfg_);
      layer.init(derive_seed(cfg_.seed, layers_.size()));
      index_[static_cast<size_t>(l)][static_cast<size_t>(w)] = static_cast<int>(layers_.size());
      layers_.push_back(std::move(layer));
    }
  }
  if (model.spec().moe()) add_moe_layers(model);
  // The Linears outside the blocks: PEFT's all-linear adapts them too (only the output head
  // is left out).
  for (int w = 0; w < kModelLinearCount; ++w) {
    const std::string name = model_linear_name(model.spec(), static_cast<ModelLinear>(w));
    if (name.empty()) continue;
    const std::string path = canonical_to_hf(model.spec(), name);
    if (!cfg_.targets(path)) continue;
    const QuantLinear& q = model.model_linear(static_cast<ModelLinear>(w));
    LoraLayer layer(path, q.in_features(), q.out_features(), cfg_);
    layer.init(derive_seed(cfg_.seed, layers_.size()));
    model_index_[static_cast<size_t>(w)] = static_cast<int>(layers_.size());
    layers_.push_back(std::move(layer));
  }
  if (layers_.empty()) fail("LoRA config", "target modules match no Linear layer of the model");
}

void LoraModel::add_moe_layers(const Model& model) {
  const ModelSpec& s = model.spec();
  // PEFT 0.21's all-linear on transformers 5's MoE (its transformers_weight_conversion maps
  // the v4 expert Linears onto the fused parameters): the router and both expert parameters,
  // gate_up_proj at twice the rank and alpha (rank_pattern / alpha_pattern), for mixtral,
  // qwen3_moe and olmoe. For qwen2_moe it adapts the shared expert and its gate only (measured:
  // the expansion there lists full module paths, which its conversion leaves alone), and so
  // do we; --target-parameters adds the experts.
  // gpt-oss: PEFT 0.21's all-linear adapts the attention only (its router and fused experts
  // are no Linears, and its expansion leaves them out); its experts and its router take LoRA
  // when named (target_parameters gate_up_proj / down_proj / router.weight, OpenAI's recipe).
  // Gemma 4: PEFT 0.21's all-linear adapts its router (router.proj, an nn.Linear) and not its
  // fused experts (measured); the experts take LoRA when named (target_parameters).
  // GLM-4.5 (its shared experts notwithstanding): the same, the router included (its float32
  // nn.Parameter, which PEFT's ParamWrapper adapts), and no MLP Linear (measured: all-linear's
  // target_modules are q/k/v/o_proj only; the block constructor leaves the MLP slots out).
  // Granite MoE: the attention only (measured: PEFT's expansion lists the attention's full
  // module paths, target_parameters none).
  if (s.all_linear_adapts_experts() && cfg_.all_linear && cfg_.target_parameters.empty()) {
    cfg_.target_parameters = {"gate_up_proj", "gate.weight", "down_proj"};
    if (cfg_.gate_up_r == 0) {
      cfg_.gate_up_r = 2 * cfg_.r;
      cfg_.gate_up_alpha = 2 * cfg_.alpha;
    }
    cfg_.validate("LoRA config (all-linear on a mixture-of-experts model)");
  }
  LoraConfig gu = cfg_;
  if (cfg_.gate_up_r > 0) {
    gu.r = cfg_.gate_up_r;
    gu.alpha = cfg_.gate_up_alpha;
  }
  moe_index_.assign(static_cast<size_t>(s.n_layers), {});
  auto add = [&](std::string path, const QuantLinear& q, const LoraConfig& c) {
    LoraLayer layer(std::move(path), q.in_features(), q.out_features(), c);
    layer.init(derive_seed(cfg_.seed, layers_.size()));
    layers_.push_back(std::move(layer));
    return static_cast<int>(layers_.size() - 1);
  };
  for (int64_t l = 0; l < s.n_layers; ++l) {
    if (!s.layer_moe(l)) continue;  // (GLM-4.5's dense first layers)
    const LayerWeights& L = model.layers()[static_cast<size_t>(l)];
    MoeIndex& m = moe_index_[static_cast<size_t>(l)];
    // (the router's module path as PEFT names it: mlp.gate, gpt-oss's mlp.router)
    const std::string rp = moe_router_module_path(s, l);
    // (Llama 4's router named either way reaches the refusal below)
    if (s.moe_gemma4 || s.moe_router_linear || (s.moe_llama4 && !cfg_.all_linear && cfg_.targets(rp))
            ? cfg_.targets(rp)
            : cfg_.targets_parameter(rp + ".weight")) {
      if (s.moe_f32_router()) {  // (a float32 weight, no QuantLinear: its shape)
        LoraLayer layer(rp, s.hidden, s.n_experts, cfg_);
        layer.init(derive_seed(cfg_.seed, layers_.size()));
        layers_.push_back(std::move(layer));
        m.router = static_cast<int>(layers_.size() - 1);
      } else {
        m.router = add(rp, L.router, cfg_);
      }
    }
    if (s.shared_expert && s.shared_expert_gate && cfg_.targets(moe_shared_gate_path(s, l)))
      m.shared_gate = add(moe_shared_gate_path(s, l), L.shared_gate, cfg_);
    const bool gate_up = cfg_.targets_parameter(moe_experts_module(s, l) + (s.moe_ungated ? ".up_proj" : ".gate_up_proj"));
    const bool down = cfg_.targets_parameter(moe_experts_module(s, l) + ".down_proj");
    // (Llama 4: PEFT 0.21 wraps its router, an nn.Linear subclass returning a tuple, and then fails
    // in the forward)
    if (s.moe_llama4 && m.router >= 0)
      fail("LoRA config", "LoRA on Llama 4's router (" + moe_router_module_path(s, l) +
                              ") is not supported: PEFT 0.21 cannot run it either (Llama4Router returns a tuple)");
    // (Llama 4's experts are (E, in, out), which PEFT's ParamWrapper takes for (E, out, in): their
    // LoRAs are PEFT's swapped, LoraLayer::peft_swapped)
    auto add_expert = [&](std::string path, const QuantLinear& q, const LoraConfig& c) {
      const int i = add(std::move(path), q, c);
      if (s.moe_llama4) layers_[static_cast<size_t>(i)].init_peft_swapped(derive_seed(cfg_.seed, static_cast<uint64_t>(i)));
      return i;
    };
    for (int64_t e = 0; e < s.n_experts && (gate_up || down); ++e) {
      if (gate_up) m.gate_up.push_back(add_expert(moe_expert_path(s, l, e, 0), L.expert_gate_up[static_cast<size_t>(e)], gu));
      if (down) m.down.push_back(add_expert(moe_expert_path(s, l, e, 1), L.expert_down[static_cast<size_t>(e)], cfg_));
    }
  }
}

const LoraLayer* LoraModel::find_router(int64_t l) const {
  return moe_index_.empty() ? nullptr : at(moe_index_[static_cast<size_t>(l)].router);
}
const LoraLayer* LoraModel::find_shared_gate(int64_t l) const {
  return moe_index_.empty() ? nullptr : at(moe_index_[static_cast<size_t>(l)].shared_gate);
}
const LoraLayer* LoraModel::find_expert(int64_t l, int64_t e, int part) const {
  if (moe_index_.empty()) return nullptr;
  const std::vector<int>& v = part == 0 ? moe_index_[static_cast<size_t>(l)].gate_up : moe_index_[static_cast<size_t>(l)].down;
  return v.empty() ? nullptr : at(v[static_cast<size_t>(e)]);
}

LoraLayer* LoraModel::find(int64_t l, BlockLinear which) {
  const int i = index_[static_cast<size_t>(l)][static_cast<size_t>(which)];
  return i < 0 ? nullptr : &layers_[static_cast<size_t>(i)];
}
const LoraLayer* LoraModel::find(int64_t l, BlockLinear which) const {
  const int i = index_[static_cast<size_t>(l)][static_cast<size_t>(which)];
  return i < 0 ? nullptr : &layers_[static_cast<size_t>(i)];
}

LoraLayer* LoraModel::find(ModelLinear which) {
  const int i = model_index_[static_cast<size_t>(which)];
  return i < 0 ? nullptr : &layers_[static_cast<size_t>(i)];
}
const LoraLayer* LoraModel::find(ModelLinear which) const {
  const int i = model_index_[static_cast<size_t>(which)];
  return i < 0 ? nullptr : &layers_[static_cast<size_t>(i)];
}

void LoraModel::zero_grad() {
  for (LoraLayer& l : layers_) l.zero_grad();
}

int64_t LoraModel::num_trainable() const {
  int64_t n = 0;
  for (const LoraLayer& l : layers_) n += static_cast<int64_t>(l.A.size() + l.B.size());
  return n;
}

void add_lora_to_scratch_query(BlockScratchQuery& q, const LoraModel* adapter) {
  if (!adapter) return;
  for (const LoraLayer& l : adapter->layers()) {
    q.lora.push_back({l.in, l.out, l.r});
    q.lora_dropout = q.lora_dropout || l.dropout > 0.f;
  }
}

}  // namespace qlora
