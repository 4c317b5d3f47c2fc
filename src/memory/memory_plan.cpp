#include "memory/memory_plan.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "formats/ggml_as_4bit.h"
#include "formats/gguf.h"
#include "formats/model_loader.h"
#include "formats/model_family.h"
#include "model/backend.h"
#include "model/block_program.h"
#include "model/block_row_kernels.h"
#include "model/block_scratch.h"
#include "model/kv_cache.h"
#include "model/mamba1.h"
#include "model/moe_block.h"
#include "model/gemm_bf16.h"
#include "model/random_model.h"
#include "model/random_spec.h"

namespace qlora {

namespace {

constexpr const char* kWhere = "memory planner";

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

uint64_t u(int64_t v) { return v < 0 ? 0 : static_cast<uint64_t>(v); }
uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// The block Linears the model has (model_spec.h's one list, without the slots a fused
// family leaves empty): module name (for LoRA matching), out, in.
using LinearShape = BlockLinearSpec;
// (Gemma 4's layers differ: full-attention layers' q/k/v/o and double-wide MLPs are listed too.)
std::vector<LinearShape> block_linears(const ModelSpec& s) {
  std::vector<LinearShape> v;
  for (const LinearShape& li : s.block_linears())
    if (li.module) v.push_back(li);
  bool per_layer = s.has_global_geometry() || s.kv_shared_layers > 0 || s.has_dense_mlp_layers();
  for (int64_t l = 0; l < s.n_layers && !per_layer; ++l) per_layer = s.layer_ffn(l) != s.ffn;  // (Llama 4 Scout's shared experts)
  if (per_layer)
    for (int64_t l = 0; l < s.n_layers; ++l)
      for (const LinearShape& li : s.block_linears(l)) {
        bool seen = !li.module;
        for (const LinearShape& x : v) seen = seen || (x.module == li.module && x.out == li.out && x.in == li.in);
        if (!seen) v.push_back(li);
      }
  return v;
}

// How many layers hold block Linear `li` in that shape (a hybrid model's attention and
// linear-attention layers hold different ones; Gemma 4's full-attention layers other shapes).
// (GLM-4.5's dense layers hold mlp.gate_proj where the others hold the shared experts')
uint64_t linear_copies(const ModelSpec& s, const LinearShape& li) {
  uint64_t n = 0;
  for (int64_t l = 0; l < s.n_layers; ++l) {
    const auto lin = s.block_linears(l);
    for (int w = 0; w < kBlockLinearCount; ++w) {
      const BlockLinearSpec& x = lin[static_cast<size_t>(w)];
      n += x.module && std::string_view(x.module) == li.module && s.layer_has_linear(l, w) && x.out == li.out &&
                   x.in == li.in ? 1 : 0;
    }
  }
  return n;
}

bool lora_targets(const ModelSpec& s, const MemoryOptions& o, const char* module) {
  // (GLM-4.5: PEFT's all-linear leaves its MLP Linears out: lora/lora_model.cpp; not LFM2-MoE's)
  if (o.all_linear && s.all_linear_adapts_experts() && (s.moe_f32_router() || s.moe_router_linear) &&
      std::string_view(module).find("mlp.") == 0)
    return false;
  // (Mamba2: PEFT refuses LoRA on the mixer's out_proj; all-linear leaves it out: lora/lora_model.cpp)
  if (const ModelFamily* f = find_family(s.family);
      f && f->peft_refuses_out_proj && std::string_view(module) == kBlockLinearModules[11])
    return false;
  // (Mamba's dt_proj: bypassed by transformers' mixer -- Falcon-Mamba's and Jamba's unquantized only;
  // all-linear leaves it out)
  if (const ModelFamily* f = find_family(s.family);
      f && f->peft_bypassed_linear >= 0 && std::string_view(module) == kBlockLinearModules[static_cast<size_t>(f->peft_bypassed_linear)] &&
      !(f->peft_bypass_unquantized_only && o.weights != WeightFormat::Dense))
    return false;
  if (o.all_linear) return true;
  const std::string path = canonical_to_hf(s, std::string("model.layers.0.") + module);
  for (const std::string& t : o.target_modules)
    if (lora_module_matches(path, t)) return true;
  return false;
}

uint64_t dtype_bytes(ComputeDType d) { return d == ComputeDType::F32 ? 4 : 2; }

// Bytes of the 4-bit constants of an n-element tensor (QuantState::constant_bytes()).
uint64_t quant_constant_bytes(uint64_t n, int blocksize, bool nested) {
  const uint64_t blocks = ceil_div(n, static_cast<uint64_t>(blocksize));
  if (!nested) return blocks * 4;
  return blocks + ceil_div(blocks, 256) * 4 + 4;
}

// Optimizer state bytes of one parameter tensor of n elements.
uint64_t optim_state_bytes(OptimKind k, uint64_t n) {
  if (!optim_is_8bit(k) || n < 4096) return 8 * n;  // two float32 moments
  // Two uint8 moments plus one float32 absmax per 256-element block for each.
  return 2 * n + 2 * 4 * ceil_div(n, 256);
}

// Weights of the model as stored, by kind.
struct WeightBytes {
  uint64_t packed = 0, constants = 0, dense_linear = 0, int8 = 0;
  uint64_t gguf_blocks = 0;  // a GGUF's Q6_K / Q5_K / ... linears as stored
  uint64_t embed = 0, head = 0, norms = 0, bias = 0;
  uint64_t largest_linear = 0;  // elements
  uint64_t total() const { return packed + constants + dense_linear + int8 + gguf_blocks + embed + head + norms + bias; }
};

struct LoraShape {
  uint64_t params = 0;        // A + B elements
  uint64_t optim_state = 0;   // for the chosen optimizer
  uint64_t sum_in = 0;        // Σ in over adapted Linears of one block
  uint64_t sum_mask_words = 0;  // Σ lora_mask_words(in): a token's dropout bits, in 32-bit words
  uint64_t sum_out = 0;
  uint64_t max_in_out = 0;    // max(in + out) over adapted Linears
  uint64_t max_in = 0, max_out = 0;  // over adapted Linears
  int modules_per_block = 0;
  // The MoE op's own LoRAs per MoE layer (router, shared gate, one expert's gate_up / down): (in, out, rank)
  // of each kind, which size its LoRA temporaries (moe_block.cpp moe_lora_scratch).
  std::vector<std::array<int64_t, 3>> moe_pieces;
};

// The Linears outside the blocks (OPT's project_in / project_out: (hidden, E), (E, hidden)),
// each once; those PEFT's names in `o` adapt when `lora` is set.
std::vector<LinearShape> model_linears(const ModelSpec& s, const MemoryOptions* lora = nullptr) {
  std::vector<LinearShape> v;
  const int64_t C = s.hidden, E = s.embed_width();
  for (int w = 0; w < kModelLinearCount; ++w) {
    const std::string name = model_linear_name(s, static_cast<ModelLinear>(w));
    if (name.empty()) continue;
    if (lora && !lora->all_linear) {
      const std::string path = canonical_to_hf(s, name);
      bool hit = false;
      for (const std::string& t : lora->target_modules) hit = hit || lora_module_matches(path, t);
      if (!hit) continue;
    }
    if (w == 2)  // (Gemma 4's per_layer_model_projection)
      v.push_back(LinearShape{"per_layer_model_projection", s.n_layers * s.ple_dim, C, false});
    else
      v.push_back(w == 0 ? LinearShape{"project_in", C, E, false} : LinearShape{"project_out", E, C, false});
  }
  return v;
}

// The adapted Linears (of the blocks and outside them), for the block's declared scratch.
std::vector<BlockScratchQuery::Lora> lora_scratch_shapes(const ModelSpec& s, const MemoryOptions& o) {
  std::vector<BlockScratchQuery::Lora> v;
  for (const LinearShape& li : block_linears(s))
    if (lora_targets(s, o, li.module)) v.push_back({li.in, li.out, o.lora_r});
  for (const LinearShape& li : model_linears(s, &o)) v.push_back({li.in, li.out, o.lora_r});
  return v;
}

LoraShape lora_shape(const ModelSpec& s, const MemoryOptions& o) {
  LoraShape l;
  const uint64_t r = u(o.lora_r);
  for (const LinearShape& li : model_linears(s, &o)) {
    const uint64_t a = r * u(li.in), b = u(li.out) * r;
    l.params += a + b;
    l.optim_state += optim_state_bytes(o.optim, a) + optim_state_bytes(o.optim, b);
  }
  for (const LinearShape& li : block_linears(s)) {
    if (!lora_targets(s, o, li.module)) continue;
    const uint64_t a = r * u(li.in), b = u(li.out) * r;
    const uint64_t copies = linear_copies(s, li);
    l.params += copies * (a + b);
    l.optim_state += copies * (optim_state_bytes(o.optim, a) + optim_state_bytes(o.optim, b));
    l.max_in_out = std::max(l.max_in_out, u(li.in + li.out));
    l.max_in = std::max(l.max_in, u(li.in));
    l.max_out = std::max(l.max_out, u(li.out));
  }
  // (per block: the largest of any layer's, layers of different kinds or shapes holding others)
  for (int64_t layer = 0; layer < s.n_layers; ++layer) {
    const auto lins = s.block_linears(layer);
    uint64_t mods = 0, sum_in = 0, words = 0, sum_out = 0;
    for (int w = 0; w < kBlockLinearCount; ++w) {
      const BlockLinearSpec& li = lins[static_cast<size_t>(w)];
      if (!li.module || !s.layer_has_linear(layer, w) || !lora_targets(s, o, li.module)) continue;
      ++mods;
      sum_in += u(li.in);
      words += u(lora_mask_words(li.in));
      sum_out += u(li.out);
    }
    l.modules_per_block = std::max(l.modules_per_block, static_cast<int>(mods));
    l.sum_in = std::max(l.sum_in, sum_in);
    l.sum_mask_words = std::max(l.sum_mask_words, words);
    l.sum_out = std::max(l.sum_out, sum_out);
  }
  // MoE (lora/lora_model.cpp add_moe_layers): all-linear also adapts the shared-expert gate,
  // or, where PEFT's does, the router and each expert (gate_up at twice the rank); on gpt-oss
  // and Granite MoE the attention only.
  // Named parameters (--target-parameters) instead: the router and each expert part they match,
  // gate_up at the rank (lora_model.cpp's paths: moe_router_module_path, moe_experts_module).
  if (s.moe() && !o.target_parameters.empty()) {
    auto named = [&](const std::string& path) {
      for (const std::string& t : o.target_parameters)
        if (lora_module_matches(path, t)) return true;
      return false;
    };
    // (the module paths LoraModel gives them: lora/lora_model.h)
    const std::string experts = moe_experts_module(s, s.first_moe_layer());
    const std::string router = moe_router_module_path(s, s.first_moe_layer());
    std::vector<std::pair<uint64_t, uint64_t>> ab;
    const int64_t ri = o.lora_r;
    if (named(router + ".weight")) {
      ab.emplace_back(r * u(s.hidden), u(s.n_experts) * r);
      l.moe_pieces.push_back({s.hidden, s.n_experts, ri});
    }
    const std::string first = experts + (s.moe_ungated ? ".up_proj" : ".gate_up_proj");  // (Nemotron 3's: up alone)
    if (named(first)) l.moe_pieces.push_back({s.hidden, s.expert_gu_rows(), ri});
    if (named(experts + ".down_proj")) l.moe_pieces.push_back({s.expert_ffn, s.hidden, ri});
    for (int64_t e = 0; e < s.n_experts; ++e) {
      if (named(first)) ab.emplace_back(r * u(s.hidden), u(s.expert_gu_rows()) * r);
      if (named(experts + ".down_proj")) ab.emplace_back(r * u(s.expert_ffn), u(s.hidden) * r);
    }
    const uint64_t moe_layers = u(s.moe_layer_count());
    for (const auto& [a, b] : ab) {
      l.params += moe_layers * (a + b);
      l.optim_state += moe_layers * (optim_state_bytes(o.optim, a) + optim_state_bytes(o.optim, b));
    }
  } else if (s.moe() && o.all_linear && !s.moe_gpt_oss && !s.moe_granite) {
    std::vector<std::pair<uint64_t, uint64_t>> ab;  // (A, B) elements per layer
    const int64_t ri = o.lora_r;
    if (s.moe_gemma4) {  // (Gemma 4: its router, an nn.Linear, only)
      ab.emplace_back(r * u(s.hidden), u(s.n_experts) * r);
      l.moe_pieces.push_back({s.hidden, s.n_experts, ri});
    } else if (!s.all_linear_adapts_experts()) {  // (Qwen2-MoE: its shared-expert gate; Llama 4: nothing)
      if (s.shared_expert && s.shared_expert_gate) {
        ab.emplace_back(r * u(s.hidden), r);
        l.moe_pieces.push_back({s.hidden, 1, ri});
      }
    } else {
      ab.emplace_back(r * u(s.hidden), u(s.n_experts) * r);
      l.moe_pieces.push_back({s.hidden, s.n_experts, ri});
      l.moe_pieces.push_back({s.hidden, 2 * s.expert_ffn, 2 * ri});
      l.moe_pieces.push_back({s.expert_ffn, s.hidden, ri});
      for (int64_t e = 0; e < s.n_experts; ++e) {
        ab.emplace_back(2 * r * u(s.hidden), u(2 * s.expert_ffn) * 2 * r);
        ab.emplace_back(r * u(s.expert_ffn), u(s.hidden) * r);
      }
    }
    const uint64_t moe_layers = u(s.moe_layer_count());
    for (const auto& [a, b] : ab) {
      l.params += moe_layers * (a + b);
      l.optim_state += moe_layers * (optim_state_bytes(o.optim, a) + optim_state_bytes(o.optim, b));
    }
  }
  return l;
}

WeightBytes weight_bytes(const ModelSpec& s, const MemoryOptions& o, uint64_t dense_bytes, uint64_t norm_bytes) {
  WeightBytes w;
  const uint64_t L = u(s.n_layers);
  std::vector<std::pair<LinearShape, uint64_t>> linears;  // (shape, how many)
  for (const LinearShape& li : block_linears(s)) linears.emplace_back(li, linear_copies(s, li));
  for (const LinearShape& li : model_linears(s)) linears.emplace_back(li, 1);
  if (s.moe()) {  // each expert's fused gate/up and down, and the shared expert's gate
    const uint64_t ML = u(s.moe_layer_count());  // (the MoE layers)
    const uint64_t experts = ML * u(s.n_experts);
    linears.emplace_back(LinearShape{"experts.gate_up_proj", s.expert_gu_rows(), s.hidden, false}, experts);
    linears.emplace_back(LinearShape{"experts.down_proj", s.hidden, s.expert_ffn, false}, experts);
    if (s.shared_expert && s.shared_expert_gate) linears.emplace_back(LinearShape{"shared_expert_gate", 1, s.hidden, false}, ML);
    // the router, kept dense (GLM-4.5 / DeepSeek-V3's in float32, with its score bias)
    w.dense_linear += ML * u(s.n_experts) * u(s.hidden) * (s.moe_f32_router() ? 4 : dense_bytes);
    if (s.moe_has_score_bias()) w.dense_linear += ML * u(s.n_experts) * 4;
  }
  for (const auto& [li, count] : linears) {
    const uint64_t L = count;  // (shadows the layer count: this Linear's copies)
    const uint64_t n = u(li.out) * u(li.in);
    w.largest_linear = std::max(w.largest_linear, n);
    switch (o.weights) {
      case WeightFormat::NF4:
      case WeightFormat::FP4:
        w.packed += L * ((n + 1) / 2);
        w.constants += L * quant_constant_bytes(n, o.blocksize, o.double_quant);
        break;
      case WeightFormat::Int8:
        w.int8 += L * n;
        w.constants += L * u(li.out) * 4;  // SCB: one float32 scale per output row
        break;
      case WeightFormat::Dense: w.dense_linear += L * n * dense_bytes; break;
    }
    if (li.bias) w.bias += L * u(li.out) * norm_bytes;
  }
  // (GGUF weights kept as stored: the CPU engine's numbers; the CUDA engines upload Q4_1 / Q4_K
  // as NF4 and never keep Q8_0 linears)
  const bool cpu_engine = o.engine == MemoryEngine::Qlora;
  if ((o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4) && o.gguf_kept_values > 0 && cpu_engine) {
    // (the kept linears' own constants in place of what --blocksize / --double-quant would take)
    const uint64_t as_flags = quant_constant_bytes(o.gguf_kept_values, o.blocksize, o.double_quant);
    w.constants = w.constants - std::min(w.constants, as_flags) + o.gguf_kept_constant_bytes;
  }
  const bool q8_kept = (o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4) &&
                       o.gguf_kept_q8_values + o.gguf_kept_block_values > 0 && o.compute_dtype == ComputeDType::F32 &&
                       cpu_engine;
  if (q8_kept) {
    // (GGUF Q8_0 linears kept 8-bit: codes and a float32 scale per 32; Q6_K / Q5_K / ... the
    // file's blocks; both in place of 4-bit ones)
    const uint64_t n = o.gguf_kept_q8_values + o.gguf_kept_block_values;
    w.packed -= std::min(w.packed, n / 2);
    w.constants -= std::min(w.constants, quant_constant_bytes(n, o.blocksize, o.double_quant));
    w.int8 += o.gguf_kept_q8_values;
    w.constants += o.gguf_kept_q8_values / 32 * 4;
    w.gguf_blocks += o.gguf_kept_block_bytes;
  }
  if (o.weights == WeightFormat::Int8 && o.gguf_kept_values > 0 && cpu_engine) {
    // (4-bit as stored wins over --quant int8, as a bitsandbytes 4-bit checkpoint's weights do;
    // their rows' int8 scales, still counted above, are a few bytes per row)
    w.int8 -= std::min(w.int8, o.gguf_kept_values);
    w.packed += o.gguf_kept_values / 2;
    w.constants += o.gguf_kept_constant_bytes;
  }
  const uint64_t vc = u(s.vocab) * u(s.embed_width());
  const uint64_t q8_bytes = vc + vc / 32 * 4;  // int8 codes + a float32 scale per 32 (DenseWeight::from_q8_0)
  // (the CUDA runner widens a Q8_0 head to float32 on the device)
  const bool cpu = o.engine == MemoryEngine::Qlora;
  // (a 16-bit checkpoint's tables stay 16-bit with fp32 compute: DenseWeight::held_16bit)
  w.embed = cpu && o.embed_q8_0 ? (o.embed_block_bytes ? o.embed_block_bytes : q8_bytes)
            : cpu && o.embed_16bit ? vc * 2
                                   : vc * dense_bytes;
  // (Gemma 4's per-layer embeddings, as loaded: in the compute dtype unless the source says otherwise)
  if (s.ple()) w.embed += o.ple_bytes ? o.ple_bytes : u(s.ple_vocab) * u(s.n_layers) * u(s.ple_dim) * dense_bytes;
  w.head = s.tied_embeddings ? 0
           : cpu && o.head_q8_0 ? (o.head_block_bytes ? o.head_block_bytes : q8_bytes)
           : cpu && o.head_16bit ? vc * 2
                                : vc * dense_bytes;
  w.norms = (2 * L + (s.final_norm ? 1 : 0)) * u(s.hidden) * norm_bytes;
  if (s.head_bias) w.bias += u(s.vocab) * norm_bytes;
  return w;
}

void add(MemoryPlan& p, std::string name, uint64_t bytes, std::string note, bool evictable = false) {
  if (bytes == 0 && !evictable) return;
  p.items.push_back({std::move(name), bytes, std::move(note), evictable});
}

void add_weight_items(MemoryPlan& p, const WeightBytes& w, const MemoryOptions& o, const std::string& dense_name) {
  const std::string fmt_name = weight_format_name(o.weights);
  add(p, "4-bit weights (" + fmt_name + " packed codes)", w.packed, "n/2 bytes per Linear");
  const bool q8_label = (o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4) && o.gguf_kept_q8_values > 0 &&
                        o.compute_dtype == ComputeDType::F32 && o.engine == MemoryEngine::Qlora;
  add(p, q8_label ? "8-bit weights (GGUF Q8_0 as stored)" : "8-bit weights (LLM.int8)", w.int8, "1 byte per Linear parameter");
  add(p, "GGUF Q6_K / Q5_K / Q5_1 / Q5_0 / Q3_K / Q2_K linears (as stored)", w.gguf_blocks, "the file's bytes");
  add(p, "quantization constants", w.constants,
      o.weights == WeightFormat::Int8
          ? "fp32 row scales"
          : (o.double_quant ? "double-quantized absmax: 1 byte per " + std::to_string(o.blocksize) +
                                  " + fp32 per 256 blocks"
                            : "fp32 absmax per block of " + std::to_string(o.blocksize)) +
                (o.gguf_kept_values > 0 ? "; GGUF 4-bit linears as stored: a scale per 32 (fp16 for Q4_0 / Q4_1 / IQ4_NL, "
                                               "fp32 for MXFP4, Q4_K / IQ4_XS's 6-bit code + fp32 per 256), and a minimum "
                                               "per 32 (fp16 for Q4_1, Q4_K's 6-bit code + fp32 per 256)" : ""));
  add(p, "Linear weights (dense " + dense_name + ")", w.dense_linear, "--quant none");
  const bool cpu = o.engine == MemoryEngine::Qlora;
  auto head_form = [&](bool q8, uint64_t block_bytes, bool sixteen) {
    if (cpu && !q8 && sixteen && o.compute_dtype == ComputeDType::F32) return std::string("16-bit as stored");
    return std::string(!cpu || !q8 ? dense_name : block_bytes ? "GGUF blocks, as stored" : "GGUF Q8_0, kept 8-bit");
  };
  add(p, "embeddings (" + head_form(o.embed_q8_0, o.embed_block_bytes, o.embed_16bit) + ")", w.embed,
      o.ple_bytes ? "vocab x embedding width, and the per-layer inputs' table (" + format_gb(o.ple_bytes) + ", as loaded)"
                  : std::string("vocab x embedding width"));
  add(p, "lm_head (" + head_form(o.head_q8_0, o.head_block_bytes, o.head_16bit) + ")", w.head, "untied output head");
  add(p, "norms and biases", w.norms + w.bias, "");
}

std::string options_title(const ModelSpec& s, const MemoryOptions& o) {
  std::string t = s.family + " " + fmt("%.2f", static_cast<double>(s.num_params()) / 1e9) + "B params (" +
                  std::to_string(s.n_layers) + " layers, hidden " + std::to_string(s.hidden) + ", ffn " +
                  std::to_string(s.ffn) + ", vocab " + std::to_string(s.vocab) + "); engine " +
                  memory_engine_name(o.engine) + ", " + (o.mode == MemoryMode::Train ? "train" : "generate") +
                  "; weights " + weight_format_name(o.weights);
  if (o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4)
    t += " bs" + std::to_string(o.blocksize) + (o.double_quant ? "+dq" : "");
  t += ", compute " + std::string(o.compute_dtype == ComputeDType::F32    ? "fp32"
                                  : o.compute_dtype == ComputeDType::BF16 ? "bf16"
                                                                          : "fp16");
  if (o.mode == MemoryMode::Train || o.with_adapter) {
    std::string tg = "all-linear";
    if (!o.all_linear) {
      tg.clear();
      for (const std::string& m : o.target_modules) tg += (tg.empty() ? "" : ",") + m;
    }
    t += "; LoRA r " + std::to_string(o.lora_r) + " on " + tg;
  }
  if (o.mode == MemoryMode::Train)
    t += "; batch " + std::to_string(o.batch_size) + " x seq " + std::to_string(o.seq_len) + ", checkpointing " +
         (o.checkpointing ? "on" : "off") + ", optim " + optim_kind_name(o.optim);
  else
    t += "; prompt " + std::to_string(o.prompt_len) + " + " + std::to_string(o.new_tokens) + " new tokens" +
         (o.batch_size > 1 && o.engine == MemoryEngine::Qlora
              ? ", " + std::to_string(o.batch_size) + " sequences at once"
              : "");
  if (o.engine == MemoryEngine::PytorchCuda && o.gpus > 1) t += "; " + std::to_string(o.gpus) + " GPUs";
  return t;
}

// ---- engine "qlora" ------------------------------------------------------------------------

MemoryPlan plan_qlora(const ModelSpec& s, const MemoryOptions& o) {
  MemoryPlan p;
  const uint64_t C = u(s.hidden), L = u(s.n_layers), F = u(s.ffn), V = u(s.vocab), E = u(s.embed_width());
  const uint64_t QD = u(s.q_dim());
  // Floats per token of the rotary tables (the local rope's too) and the KV cache's widths.
  // (cos and sin: 2 x (the tables' halves); the host stages one table's cos and sin at a time)
  const uint64_t rope_tables = 2 * (u(s.rope_table_dims(false)) / 2 + (s.rope_local ? u(s.rope_table_dims(true)) / 2 : 0));
  const uint64_t rope_staging = 2 * (std::max(u(s.rope_table_dims(false)), u(s.rope_table_dims(true))) / 2);
  uint64_t kv_total = 0, kv_max = 0;
  for (int64_t d : s.kv_dims()) {
    kv_total += u(d);
    kv_max = std::max(kv_max, u(d));
  }
  const uint64_t threads = u(std::max(1, o.threads));
  const uint64_t db = dtype_bytes(o.compute_dtype);
  // Model::load: Linear weights 4-bit or dense in the compute dtype; embeddings and head in
  // the compute dtype (DenseWeight); norms and biases std::vector<float>.
  const WeightBytes w = weight_bytes(s, o, db, 4);
  // LLM.int8 forward (QuantLinear::forward_int8): the calling thread keeps its int8
  // activation codes (T, in), row scales and int32 accumulators (T, out) thread_local.
  // model/gemm_bf16_tiles.h's buffers for T tokens (thread-local, grown to the largest
  // product and kept): the calling thread's packed X (bf16, rows and K rounded up to 32) as A
  // rows, its split low half and as B panels; per thread a panel of 32 float32 rows, its bf16
  // A rows and a B panel.
  const auto bf16_tile_bytes = [&](uint64_t T) -> uint64_t {
    uint64_t max_in = u(s.embed_width());
    for (const LinearShape& li : block_linears(s)) max_in = std::max(max_in, u(li.in));
    const uint64_t Tp = (T + 31) / 32 * 32, Kp = (max_in + 31) / 32 * 32;
    return 3 * 2 * Tp * Kp + threads * (32 * max_in * 4 + 2 * 32 * Kp * 2);
  };
  const auto int8_ws = [&](uint64_t T) -> uint64_t {
    if (o.weights != WeightFormat::Int8) return 0;
    return T * std::max(C, F) + 4 * T + 4 * T * std::max(C, F);
  };
  const std::string dense_name = db == 4 ? "fp32" : (o.compute_dtype == ComputeDType::BF16 ? "bf16" : "fp16");
  const uint64_t tokenizer = u(s.vocab) * kTokenizerBytesPerToken;
  const uint64_t baseline = kQloraProcessBaselineBytes;

  // The training data is tokenized before the model loads and stays resident: per token the
  // examples' ids and train mask (4 + 1 bytes) and the sequences' inputs, targets and
  // positions (3 x 4 bytes) of train/sft_dataset.h.
  uint64_t dataset = 0;
  if (o.mode == MemoryMode::Train && (o.data_bytes || o.data_tokens)) {
    const uint64_t tokens =
        o.data_tokens ? o.data_tokens : o.data_bytes / (s.vocab > 4096 ? 3 : 1);  // bytes per token, a guess
    dataset = tokens * 17;
  }

  // --- load phase: the source file is mapped (its pages become resident as each tensor is
  // read: file bytes pro rata of the parameters read so far) and each tensor arrives as a
  // float32 vector that lives until it has been quantized / converted.
  const uint64_t total_params = u(s.num_params());
  const uint64_t file_bytes =
      o.generated_weights ? 0 : o.model_file_bytes ? o.model_file_bytes : total_params * 2;  // fp16 safetensors
  uint64_t load_peak = 0, load_required = 0;
  {
    uint64_t held = 0, read = 0;
    auto step = [&](uint64_t numel, uint64_t final_bytes, uint64_t transient) {
      read += numel;
      const double frac = total_params ? std::min(1.0, static_cast<double>(read) / static_cast<double>(total_params)) : 1.0;
      const uint64_t mapped = static_cast<uint64_t>(frac * static_cast<double>(file_bytes));
      load_peak = std::max(load_peak, held + final_bytes + transient + mapped);
      load_required = std::max(load_required, held + final_bytes + transient);
      held += final_bytes;
    };
    const uint64_t vc = V * u(s.embed_width());
    // DenseWeight takes a float32 vector without a copy for fp32, converts (both alive)
    // otherwise, unless the source reads a slab of rows at a time (DenseWeight::from_rows).
    const uint64_t table_transient = db == 4 || o.source_reads_rows ? 0 : vc * 4;
    step(vc, w.embed, table_transient);
    const uint64_t per_layer_weights =
        (w.packed + w.int8 + w.constants + w.dense_linear + w.gguf_blocks + w.bias) / std::max<uint64_t>(L, 1);
    for (uint64_t l = 0; l < L; ++l) {
      // The largest transient of a layer: one Linear's float32 source (q/k twice when the
      // rows are un-permuted), charged once at the end of the layer.
      uint64_t tr = w.largest_linear * 4;
      if (o.source_permutes_qk) tr = std::max(tr, 2 * QD * C * 4);
      if (o.weights == WeightFormat::Dense && db == 4) tr = o.source_permutes_qk ? QD * C * 4 : 0;
      // Generated 4-bit: the absmax in float32 before double quantization (one per block),
      // and each thread's chunk buffer (random_model.h).
      if (o.generated_weights && (o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4))
        tr = ceil_div(w.largest_linear, u(std::max(o.blocksize, 1))) * 4 + threads * u(kRandomChunk) * 4;
      const uint64_t layer_params = (total_params - vc * (s.tied_embeddings ? 1 : 2)) / std::max<uint64_t>(L, 1);
      step(layer_params, per_layer_weights + 2 * C * 4, tr);
    }
    if (!s.tied_embeddings) step(vc, w.head, table_transient);
    load_peak += baseline + tokenizer + dataset;
    load_required += baseline + tokenizer + dataset;
  }

  // --- run phase.
  MemoryPlan& r = p;
  add(r, "process baseline", baseline, "binary, libraries, OpenMP threads, allocator (measured constant)");
  add(r, "tokenizer", tokenizer, std::to_string(kTokenizerBytesPerToken) + " bytes per vocabulary entry");
  add_weight_items(r, w, o, dense_name);

  const LoraShape ls = lora_shape(s, o);
  if (o.mode == MemoryMode::Train) {
    if (ls.modules_per_block == 0) fail("--target", "matches no Linear layer of the model");
    const uint64_t T = u(o.seq_len), r_ = u(o.lora_r);
    const bool drop = o.lora_dropout > 0;
    add(r, "dataset (examples + sequences)", dataset,
        o.data_tokens ? std::to_string(o.data_tokens) + " tokens x 17 bytes"
                      : "tokens estimated from the file size, x 17 bytes");
    add(r, "LoRA parameters (A, B fp32)", ls.params * 4, std::to_string(ls.params) + " parameters");
    add(r, "LoRA gradients (dA, dB fp32)", ls.params * 4, "");
    const bool paged = optim_is_paged(o.optim);
    add(r, std::string("optimizer state (") + optim_kind_name(o.optim) + ")", ls.optim_state,
        optim_is_8bit(o.optim) ? "2 x uint8 moments + fp32 absmax per 256 (fp32 below 4096 elements)"
                               : "2 x fp32 moments per parameter",
        paged);
    // A micro-batch of B sequences runs as one pass (train_model.h forward_backward_batch):
    // every per-token buffer holds B x T tokens, attention probabilities B x (NH, T, T).
    const uint64_t B = u(std::max<int64_t>(1, o.batch_size)), BT = B * T;
    // TrainWorkspace::Block, one per layer without checkpointing, one with: the buffers the
    // block program's backward reads (model/block_program.h), plus the LoRA caches.
    const BlockProgram prog = BlockProgram::for_spec(s);
    const int64_t Ti = static_cast<int64_t>(T), Bi = static_cast<int64_t>(B);
    // (the CPU backend keeps each LoRA dropout mask as bits: lora/lora.h LoraCache mask_bits)
    const uint64_t block = 4 * u(prog.saved_floats(Ti, Bi)) +
                           4 * (static_cast<uint64_t>(ls.modules_per_block) * BT * r_ + (drop ? BT * ls.sum_mask_words : 0));
    // (Gemma 4: the per-layer inputs, their norm's input and their gradient, (L, B*T, P) each, and
    // the shared-KV producers' keys and values and their gradients; train/train_model.cpp)
    uint64_t shared_kv = 0;
    if (s.kv_shared_layers > 0)
      for (bool global : {false, true}) shared_kv += 4 * BT * u(s.attention_geometry(global).kv_dim());
    const uint64_t xs = 4 * (L + 1) * BT * C + 4 * (3 * L * BT * u(s.ple_dim) + L * BT) * (s.ple() ? 1 : 0) +
                        4 * shared_kv;
    // (with checkpointing an MoE layer also keeps its routing, expert products and their
    // LoRA caches for its backward: model/moe_block.h, train/train_model.cpp block_run)
    r.activations_checkpointed = xs + block + 4 * u(moe_saved_floats(s, static_cast<int64_t>(BT), 2 * o.lora_r));
    // Without checkpointing each layer keeps its own buffers and LoRA caches (a hybrid model's
    // layers only those of their kind).
    uint64_t per_layer = 0;
    for (int64_t l = 0; l < s.n_layers; ++l) {
      const auto lins = s.block_linears(l);
      uint64_t mods = 0, mask_words = 0;
      for (int w = 0; w < kBlockLinearCount; ++w) {
        const BlockLinearSpec& li = lins[static_cast<size_t>(w)];
        if (!li.module || !s.layer_has_linear(l, w) || !lora_targets(s, o, li.module)) continue;
        ++mods;
        mask_words += u(lora_mask_words(li.in));
      }
      per_layer += 4 * u(prog.saved_floats_on(l, Ti, Bi)) + 4 * (mods * BT * r_ + (drop ? BT * mask_words : 0));
    }
    r.activations_full = xs + per_layer;
    const uint64_t act = o.checkpointing ? r.activations_checkpointed : r.activations_full;
    add(r, std::string("activations (checkpointing ") + (o.checkpointing ? "on" : "off") + ")", act,
        "block inputs (L+1)*B*T*C fp32 + " + std::string(o.checkpointing ? "1" : "L") +
            " block cache(s) incl. B x (NH,T,T) attention and LoRA caches, the micro-batch's " + std::to_string(B) +
            " sequence(s) at once; with checkpointing " + format_gb(r.activations_checkpointed) + ", without " +
            format_gb(r.activations_full));
    if (s.final_softcap > 0.0f)
      add(r, "logits and dlogits (B*T x V fp32 each: soft-capped logits are kept for the backward)", 8 * BT * V, "");
    else
      add(r, "logits (B*T x V fp32, dlogits in place)", 4 * BT * V, "");
    // The block's declared scratch (model/block_scratch.h: the attention-gradient scratch of
    // one sequence, the dequantized weight tile, LoRA's temporaries), read from the same
    // declaration the training workspace allocates from.
    BlockScratchQuery sq;
    sq.tokens = static_cast<int64_t>(BT);
    sq.longest = Ti;
    sq.training = sq.backward = true;
    sq.lora = lora_scratch_shapes(s, o);
    sq.lora_dropout = drop;
    const uint64_t block_scratch = 4 * u(block_scratch_floats(prog, sq).total());
    // The output head's dequantized tile (a bf16/fp16 head, or a GGUF's kept 8-bit / block one;
    // a float32 one is read in place: dense_backward_tile_floats).
    const bool head_packed = o.engine == MemoryEngine::Qlora && (s.tied_embeddings ? o.embed_q8_0 || o.embed_16bit
                                                                                   : o.head_q8_0 || o.head_16bit);
    const uint64_t head_tile =
        db == 4 && !head_packed ? 0 : u(linear_backward_tile_floats(s.embed_width(), s.vocab));
    // TrainWorkspace::Impl besides: the program's transient buffers and its gradients, dx and
    // the final norm's gradient, rope tables (+ their host staging), the batch's tokens,
    // targets, positions and key windows (+ staging), the head's gathered inputs and their
    // gradient (hsel, dhsel: up to B*T x E each), the recomputed block output.
    const uint64_t scratch = 4 * (u(prog.transient_floats(Ti, Bi)) + u(prog.gradient_floats(Ti, Bi)) + 2 * BT * C +
                                  BT * (rope_tables + rope_staging) + 6 * BT + head_tile + 2 * BT * E +
                                  (o.checkpointing ? BT * C : 0));
    // On top, the largest transient: the lm_head input-gradient panels (64 x V + B*T x 64
    // floats per thread) of a float32 head read in place (a packed one goes through the tile).
    const uint64_t lm_panels = (db == 4 && !head_packed ? std::min<uint64_t>(threads, ceil_div(C, 64)) * 4 * (64 * V + BT * 64) : 0);
    add(r, "workspace (backward scratch, tiles, transients)", scratch + block_scratch + int8_ws(BT),
        "dx/dh/d-MLP/d-attention buffers, the block's declared scratch (dequantized weight tile, attention "
        "gradients, LoRA temporaries)");
    if (lm_panels) add(r, "lm_head gradient panels (per thread, CPU)", lm_panels, "64 x V + B*T x 64 floats per thread");
    // The recurrent layers' backward (model/delta_net.h, model/mamba2.h), over one sequence at a
    // time: per thread a state checkpoint every 16 tokens and a chunk's states, the conv's SiLU
    // gradients, and (Mamba2) each thread's and the summed dB / dC of the sequence.
    if (s.la_mamba1) {  // (model/mamba1.h: per thread a block of channels' states and decays at every token)
      Ssm1Shape sh;
      sh.D = s.la_value_dim();
      sh.N = s.la_k_dim;
      const uint64_t L = u(Ti);
      const uint64_t f = threads * u(ssm1_backward_thread_floats(sh, static_cast<int64_t>(L))) + L * 2 * u(sh.N) +
                         L * u(s.la_conv_dim());
      add(r, "recurrent backward scratch (per thread, CPU)", 4 * f,
          "a block of channels' states and decays at every token per thread, the summed dB / dC, the conv's gradients");
    } else if (s.hybrid() && !s.la_short_conv) {
      const uint64_t S = u(s.la_k_dim) * u(s.la_v_dim), L = u(Ti);
      uint64_t f = threads * (ceil_div(L, 16) + 17) * S + L * u(s.la_conv_dim());
      if (s.la_mamba2) f += (threads + 1) * L * 2 * u(s.la_key_dim()) + threads * 2 * L;  // (+ steps and their grads)
      // (the DeltaNet's per-thread head inputs -- q, k, beta, alpha, g' -- and its dq / dk)
      else f += threads * (4 * u(s.la_k_dim) + 3) * L;
      add(r, "recurrent backward scratch (per thread, CPU)", 4 * f,
          "state checkpoints every 16 tokens + a chunk's states per thread, the conv's gradients" +
              std::string(s.la_mamba2 ? ", dB / dC per thread" : ""));
    }
    if (s.moe()) {  // model/moe_block.cpp's backward: one expert's rows at a time (at most all B*T)
      const uint64_t Fe = u(s.expert_ffn), NE = u(s.n_experts);
      const uint64_t tile = u(std::max({linear_backward_tile_floats(s.hidden, s.expert_gu_rows()),
                                        linear_backward_tile_floats(s.expert_ffn, s.hidden),
                                        linear_backward_tile_floats(s.hidden, s.n_experts)}));
      // (and, with LoRA on the experts or the router, the op's own LoRA temporaries over all B*T rows:
      // moe_block.cpp moe_lora_scratch)
      LoraScratchFloats lf;
      for (const auto& [in, out, rank] : ls.moe_pieces) lf.cover(static_cast<int64_t>(BT), in, out, rank, false, true);
      add(r, "mixture-of-experts buffers (backward)",
          // (per row: gu 2F, gate, up, h, dh, dgate, dup, dgu 2F; ungated: gu, h, dh, dgu)
          4 * (BT * (4 * C + (s.moe_ungated ? 4 : 10) * Fe + 3 * NE + 2 * u(s.experts_per_token)) + tile + u(lf.total())),
          "one expert's gathered rows, its recomputed products and their gradients, the router's probabilities, "
          "the op's LoRA temporaries");
    }
    if (o.bf16_tiles && o.compute_dtype == ComputeDType::BF16)
      add(r, "bf16 GEMM packing (AMX tiles or AVX-512 BF16)", bf16_tile_bytes(BT), "kept by the threads at their largest");
  } else {
    const uint64_t P = u(std::max<int64_t>(1, o.prompt_len));
    const uint64_t cap = u(std::min<int64_t>(s.max_positions, o.prompt_len + std::max<int64_t>(o.new_tokens, 1)));
    // batch_size sequences decoded at once (`serve --parallel`): each keeps its own cache, its
    // prompt's scratch and its logits, and the batched pass has its own buffers.
    const uint64_t B = u(std::max<int64_t>(1, o.batch_size));
    const std::string each = B > 1 ? " x " + std::to_string(B) + " sequences" : "";
    const uint64_t KL = u(s.kv_layers());  // (a hybrid model's attention layers only)
    if (s.hybrid())  // (the states, and the snapshot the prompt leaves: KVCache::snapshot_states)
      add(r, "linear-attention states (fp32)" + each, B * 2 * u(s.state_layers()) * u(s.la_state_floats()) * 4,
          std::to_string(s.state_layers()) +
              (s.la_short_conv ? " short-conv layers: the conv's last inputs"
               : s.la_mamba2  ? " Mamba2 layers: conv tail + (heads, head_dim, d_state) state"
               : s.la_mamba1  ? " Mamba layers: conv tail + (channels, d_state) state"
                              : " gated DeltaNet layers: conv tail + (heads, dk, dv) state") +
              ", and its snapshot after the prompt (chat and serve keep up to " + std::to_string(KVCache::kMaxStateSnapshots) + ")");
    if (o.kv_cache_dtype == ComputeDType::F32) {
      add(r, "KV cache (fp32 keys + values)" + each, B * 2 * kv_total * cap * 4,
          std::to_string(cap) + " positions x " + std::to_string(KL) + " layers");
    } else {
      add(r, std::string("KV cache (") + (o.kv_cache_dtype == ComputeDType::BF16 ? "bf16" : "f16") +
                 " keys + values)" + each,
          B * 2 * kv_total * cap * 2, std::to_string(cap) + " positions x " + std::to_string(KL) + " layers");
      add(r, "KV cache widened for attention (one layer, fp32)", 2 * kv_max * cap * 4, "");
    }
    const BlockProgram prog = BlockProgram::for_spec(s);
    add(r, "forward scratch (prompt prefill)" + each,
        B * 4 * P * (2 * C + u(prog.inference_floats(1)) + rope_tables + rope_staging + 3 +
                     (s.ple() ? L * (2 * u(s.ple_dim) + 1) : 0)),
        "residual stream, final norm, the block's buffers (sharing slots), rope tables for the prompt's tokens"
        " (Gemma 4: and its per-layer inputs)");
    // The block's declared scratch for the prompt against the cache's keys: the attention
    // scores (no probabilities are kept at inference) and the adapter's temporaries.
    BlockScratchQuery sq;
    sq.tokens = static_cast<int64_t>(P);
    sq.keys = static_cast<int64_t>(cap);
    if (o.with_adapter) sq.lora = lora_scratch_shapes(s, o);
    add(r, "workspace (block scratch: attention scores, LoRA temporaries)" + each,
        B * 4 * u(block_scratch_floats(prog, sq).total()), "model/block_scratch.h, the same declaration forward() allocates");
    if (B > 1) {
      // The batched pass's own buffers (forward_batch's work state, up to 8 rows a pass): the
      // rows' residual stream and block buffers, and the block's scratch for them.
      const uint64_t rows = std::min<uint64_t>(B, 8);
      BlockScratchQuery bq;
      bq.tokens = static_cast<int64_t>(rows);
      bq.keys = static_cast<int64_t>(cap);
      if (o.with_adapter) bq.lora = lora_scratch_shapes(s, o);
      add(r, "workspace (the batched pass over the sequences)",
          4 * (u(block_scratch_floats(prog, bq).total()) +
               rows * (2 * C + u(prog.inference_floats(1)) + rope_tables + rope_staging + 3)),
          "forward_batch's rows (up to 8 a pass) and their block scratch");
    }
    if (s.moe())  // model/moe_block.cpp: one expert's rows of the prompt at a time
      add(r, "mixture-of-experts buffers" + each,
          B * 4 * P * (2 * C + (s.moe_ungated ? 2 : 5) * u(s.expert_ffn) + 2 * u(s.n_experts) + 2 * u(s.experts_per_token)),
          "one expert's gathered rows and products, the router's logits and probabilities");
    add(r, "logits" + each, B * V * 4, "(V) float32");
    add(r, "sampler arrays" + each, B * V * 13, "(V) index, probability and seen arrays on the host");
    add(r, "workspace (int8 activation codes + int32 accumulators)", int8_ws(P), "");
    if (o.bf16_tiles && o.compute_dtype == ComputeDType::BF16 && P > 8)
      add(r, "bf16 GEMM packing (AMX tiles or AVX-512 BF16)", bf16_tile_bytes(P), "kept by the threads at their largest");
    if (o.with_adapter && ls.modules_per_block > 0)
      add(r, "LoRA adapter (A, B fp32 + zeroed gradients)", ls.params * 16, std::to_string(ls.params) + " parameters");
  }
  uint64_t run_peak = 0, evict = 0;
  for (const MemoryItem& it : r.items) (it.evictable ? evict : run_peak) += it.bytes;
  r.run_peak_bytes = run_peak;
  r.load_peak_bytes = load_peak;
  r.evictable_bytes = evict;
  if (load_peak > run_peak)
    add(r, "load phase excess (mapped file + one fp32 tensor)", load_peak - run_peak,
        "loading peaks above the run: " + format_gb(load_peak) +
            (o.generated_weights ? std::string(" (generated weights: no file mapped)")
                                 : " incl. the mapped model file (" + format_gb(file_bytes) + ")"));
  r.peak_bytes = std::max(load_peak, run_peak);
  r.required_bytes = std::max(load_required, run_peak);
  return p;
}

// ---- engine "qlora-cuda" -------------------------------------------------------------------

// What both CUDA engines hold first: the context, our cuBLAS workspace, and the weights as
// the CPU holds them (4-bit packed + constants, dense in the compute dtype, norms and biases
// fp32), each copied once. Refuses LLM.int8 weights unless `int8_ok` (the backend engine).
WeightBytes add_cuda_context_and_weights(MemoryPlan& p, const ModelSpec& s, const MemoryOptions& o, bool int8_ok) {
  const uint64_t db = dtype_bytes(o.compute_dtype);
  if (o.weights == WeightFormat::Int8 && !int8_ok)
    fail("--quant", "int8 (LLM.int8) runs on the CUDA backend engine only (QLORA_CUDA_ENGINE=backend, the default "
                    "for such weights)");
  const std::string dense_name = db == 4 ? "fp32" : (o.compute_dtype == ComputeDType::BF16 ? "bf16" : "fp16");
  add(p, "CUDA context, kernels, cuBLAS handle", kQloraCudaContextBytes, "measured constant (595 MiB on an H200, CUDA 13)");
  add(p, "cuBLAS workspace", kQloraCudaBlasWorkspaceBytes, "cuda/blas.cpp (lets the runner's decode be a CUDA graph)");
  const WeightBytes w = weight_bytes(s, o, db, 4);
  add_weight_items(p, w, o, dense_name);
  return w;
}

MemoryPlan plan_qlora_cuda(const ModelSpec& s, const MemoryOptions& o) {
  MemoryPlan p;
  const uint64_t C = u(s.hidden), L = u(s.n_layers), NH = u(s.n_heads), F = u(s.ffn), V = u(s.vocab);
  const uint64_t QD = u(s.q_dim()), KVD = u(s.kv_dim()), HS = u(s.head_dim);
  const uint64_t db = dtype_bytes(o.compute_dtype);
  // cuda_runner.cpp: the weights as the CPU holds them.
  const WeightBytes w = add_cuda_context_and_weights(p, s, o, /*int8_ok=*/false);
  const bool q4 = o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4;
  const LoraShape ls = lora_shape(s, o);
  uint64_t max_out = 0, max_in = 0;
  for (const LinearShape& li : block_linears(s)) {
    if (!lora_targets(s, o, li.module)) continue;
    max_out = std::max(max_out, u(li.out));
    max_in = std::max(max_in, u(li.in));
  }
  if (o.mode == MemoryMode::Train) {
    if (ls.modules_per_block == 0) fail("--target", "matches no Linear layer of the model");
    // cuda_train.cpp TrainState, for one sequence of T tokens (a batch runs sequentially).
    const uint64_t T = u(o.seq_len), r_ = u(o.lora_r);
    const bool drop = o.lora_dropout > 0;
    add(p, "LoRA A, B and their gradients (fp32)", ls.params * 16, std::to_string(ls.params) + " parameters");
    const uint64_t block = 4 * (3 * T * C + 2 * T + 2 * T * QD + 2 * T * KVD + NH * T * T + 3 * T * F) +
                           4 * (static_cast<uint64_t>(ls.modules_per_block) * T * r_ + (drop ? T * ls.sum_in : 0));
    const uint64_t xs = 4 * (L + 1) * T * C;
    p.activations_checkpointed = xs + block;
    p.activations_full = xs + L * block;
    add(p, std::string("activations (checkpointing ") + (o.checkpointing ? "on" : "off") + ")",
        o.checkpointing ? p.activations_checkpointed : p.activations_full,
        "block inputs (L+1)*T*C + " + std::string(o.checkpointing ? "1" : "L") +
            " block cache(s) incl. (NH,T,T) attention probabilities and LoRA caches");
    // Backward buffers, the final norm, the selected rows, the logits, the weight tile.
    const uint64_t tile = std::max(V * C, w.largest_linear);
    const uint64_t backward = 4 * (5 * T * C + 3 * T * F + 2 * T * QD + 2 * T * KVD + NH * T * T + 2 * T +
                                   (o.checkpointing ? T * C : 0) + T * HS + 2 * T * C);
    add(p, "backward buffers", backward, "dx, dh, d-MLP, d-attention (incl. (NH,T,T)), final norm, selected rows");
    add(p, "logits (T x V fp32, dlogits in place)", 4 * T * V, "");
    add(p, "weight tile (fp32)", 4 * tile, "the largest Linear or the output head, dequantized for the input gradient");
    add(p, "LoRA transients", 4 * (T * max_out + T * r_ + max_out * r_ + (drop ? T * max_in : 0)), "");
    // The frozen Linears' forward for more than 8 tokens: the weight dequantized for cuBLAS,
    // and (16-bit compute) the activations in 16 bits.
    if (T > 8 && q4) add(p, "dequantized weight (forward)", w.largest_linear * db, "the largest Linear, for cuBLAS");
    if (T > 8 && db != 4) add(p, "16-bit activations (forward)", 2 * T * std::max({C, F, QD}), "");
  } else {
    const uint64_t P = u(std::max<int64_t>(1, o.prompt_len));
    const uint64_t cap = u(std::min<int64_t>(s.max_positions, o.prompt_len + std::max<int64_t>(o.new_tokens, 1)));
    add(p, "KV cache (fp32 keys + values)", 2 * L * KVD * cap * 4,
        std::to_string(cap) + " positions x " + std::to_string(L) + " layers");
    add(p, "forward scratch (prompt prefill)", 4 * P * (3 * C + 2 * QD + 2 * KVD + 2 * F + HS + 1),
        "x, h, q, k, v, att, o, gate, up, rope tables for the prompt's tokens");
    add(p, "logits", 4 * V, "");
    if (P > 8 && q4) add(p, "dequantized weight (prefill)", w.largest_linear * db, "the largest Linear, for cuBLAS");
    if (db != 4) add(p, "16-bit activations (prefill)", 2 * P * std::max({C, F, QD}), "");
    if (o.with_adapter && ls.modules_per_block > 0) {
      add(p, "LoRA adapter (A, B fp32)", ls.params * 4, std::to_string(ls.params) + " parameters");
      add(p, "LoRA transients", 4 * P * (u(o.lora_r) + max_out), "");
    }
  }
  for (const MemoryItem& it : p.items) p.peak_bytes += it.bytes;
  p.run_peak_bytes = p.peak_bytes;
  p.required_bytes = p.peak_bytes;
  return p;
}

// ---- engine "pytorch-cuda" -----------------------------------------------------------------

MemoryPlan plan_pytorch(const ModelSpec& s, const MemoryOptions& o) {
  MemoryPlan p;
  const uint64_t C = u(s.hidden), L = u(s.n_layers), NH = u(s.n_heads), F = u(s.ffn), V = u(s.vocab);
  const uint64_t QD = u(s.q_dim()), KVD = u(s.kv_dim());
  const uint64_t B = u(std::max<int64_t>(1, o.batch_size));
  // transformers loads everything that is not a quantized Linear in torch_dtype (fp16/bf16).
  const WeightBytes w = weight_bytes(s, o, 2, 2);
  add(p, "CUDA context + allocator overhead", kPytorchCudaOverheadBytes * u(std::max(1, o.gpus)),
      "one documented constant per GPU (kPytorchCudaOverheadBytes)");
  add_weight_items(p, w, o, "fp16");
  const LoraShape ls = lora_shape(s, o);
  const uint64_t lb = u(o.lora_param_bytes);
  if (o.mode == MemoryMode::Train) {
    if (ls.modules_per_block == 0) fail("--target", "matches no Linear layer of the model");
    const uint64_t T = u(o.seq_len), r = u(o.lora_r);
    add(p, "LoRA parameters", ls.params * lb, std::to_string(ls.params) + " parameters, " + std::to_string(lb) + " bytes each");
    add(p, "LoRA gradients", ls.params * lb, "");
    add(p, std::string("optimizer state (") + optim_kind_name(o.optim) + ")", ls.optim_state,
        "AdamW moments on the LoRA parameters", optim_is_paged(o.optim));
    // What autograd keeps per decoder layer (fp16 autocast, eager attention of transformers
    // 4.30): RMSNorm x2 (fp32 square input 4 + fp16 input 2 + fp16 output 2 = 8 bytes per
    // T*C), q/k after rotary and v (2 bytes each), the attention output (2 x T*QD),
    // scores clamped by torch.max (fp16, 2) + softmax output (fp32, 4) + probabilities cast
    // back (fp16, 2) = 8 bytes per (head, t, t'), the SwiGLU MLP (gate, silu, up, product:
    // 4 x 2 bytes per T*F), and per LoRA module the dropout mask (1) and dropped input (2)
    // per T*in and lora_A's output (2 per T*r).
    const uint64_t layer = B * (16 * T * C + 4 * T * QD + 4 * T * KVD + 8 * NH * T * T + 8 * T * F +
                                3 * T * ls.sum_in + 2 * T * r * u(ls.modules_per_block));
    // Gradient checkpointing keeps each layer's fp16 input; the backward recomputes one
    // layer at a time and needs a working set about the size of that layer's activations.
    const uint64_t ckpt = B * L * 2 * T * C;
    p.activations_checkpointed = ckpt + layer;
    p.activations_full = L * layer;
    add(p, std::string("activations (checkpointing ") + (o.checkpointing ? "on" : "off") + ")",
        o.checkpointing ? p.activations_checkpointed : p.activations_full,
        "per layer " + format_gb(layer) + "; with checkpointing " + format_gb(p.activations_checkpointed) +
            ", without " + format_gb(p.activations_full));
    add(p, "backward working set (one layer)", layer, "gradients of one layer's saved tensors");
    add(p, "logits (fp16 + fp32 upcast + fp32 gradient)", B * T * V * 10, "");
    add(p, "workspace (dequantized weight of one Linear)", w.largest_linear * 2,
        "bitsandbytes dequantizes a Linear to fp16 for each matmul");
  } else {
    const uint64_t ctx = u(std::min<int64_t>(s.max_positions, o.prompt_len + o.new_tokens));
    add(p, "KV cache (fp16)", B * 2 * L * KVD * ctx * 2, std::to_string(ctx) + " positions");
    add(p, "prefill activations (one layer)", B * u(o.prompt_len) * (4 * C + 2 * QD + 2 * KVD + 4 * F) * 2 +
                                                  B * NH * u(o.prompt_len) * u(o.prompt_len) * 6,
        "");
    add(p, "logits (fp32)", B * u(o.prompt_len) * V * 4, "");
    if (o.with_adapter) add(p, "LoRA adapter", ls.params * lb, "");
    add(p, "workspace (dequantized weight of one Linear)", w.largest_linear * 2, "");
  }
  uint64_t peak = 0, evict = 0;
  for (const MemoryItem& it : p.items) (it.evictable ? evict : peak) += it.bytes;
  p.peak_bytes = p.run_peak_bytes = p.required_bytes = peak;
  p.evictable_bytes = evict;
  p.gpus = std::max(1, o.gpus);
  return p;
}

}  // namespace

MemoryEngine memory_engine_from_string(std::string_view s) {
  if (s == "qlora" || s == "cpu") return MemoryEngine::Qlora;
  if (s == "pytorch-cuda" || s == "pytorch" || s == "torch") return MemoryEngine::PytorchCuda;
  if (s == "qlora-cuda" || s == "cuda") return MemoryEngine::QloraCuda;
  if (s == "qlora-cuda-backend") return MemoryEngine::QloraCudaBackend;
  fail("--engine", "unknown engine " + excerpt(s) + "; use qlora, qlora-cuda, qlora-cuda-backend or pytorch-cuda");
}

const char* memory_engine_name(MemoryEngine e) {
  switch (e) {
    case MemoryEngine::Qlora: return "qlora";
    case MemoryEngine::QloraCuda: return "qlora-cuda";
    case MemoryEngine::QloraCudaBackend: return "qlora-cuda-backend";
    case MemoryEngine::PytorchCuda: return "pytorch-cuda";
  }
  return "?";
}

WeightFormat weight_format_from_string(std::string_view s) {
  if (s == "nf4") return WeightFormat::NF4;
  if (s == "fp4") return WeightFormat::FP4;
  if (s == "none") return WeightFormat::Dense;
  if (s == "int8") return WeightFormat::Int8;
  fail("--quant", "unknown storage " + excerpt(s) + "; use nf4, fp4, none or int8");
}

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::Dense: return "none";
    case WeightFormat::NF4: return "nf4";
    case WeightFormat::FP4: return "fp4";
    case WeightFormat::Int8: return "int8";
  }
  return "?";
}

ModelSpec llama1_spec(std::string_view params) {
  struct Shape {
    const char* name;
    int64_t dim, layers, heads, ffn;
  };
  // LLaMA paper table 2 (dim, layers, heads); ffn = the SwiGLU hidden size of the released
  // checkpoints (intermediate_size in their config.json).
  static const Shape kShapes[] = {{"7B", 4096, 32, 32, 11008},
                                  {"13B", 5120, 40, 40, 13824},
                                  {"33B", 6656, 60, 52, 17920},
                                  {"30B", 6656, 60, 52, 17920},
                                  {"65B", 8192, 80, 64, 22016}};
  for (const Shape& sh : kShapes) {
    if (params != sh.name) continue;
    ModelSpec s;
    s.family = "llama";
    s.hidden = sh.dim;
    s.n_layers = sh.layers;
    s.n_heads = s.n_kv_heads = sh.heads;
    s.head_dim = sh.dim / sh.heads;
    s.ffn = sh.ffn;
    s.vocab = 32000;
    s.max_positions = 2048;
    s.norm_eps = 1e-6f;
    s.tied_embeddings = false;
    s.bos_id = 1;
    s.eos_ids = {2};
    return s;
  }
  fail("--params", "unknown size " + excerpt(params) + "; use 7B, 13B, 33B or 65B (LLaMA-1 shapes)");
}

// ---- engine "qlora-cuda-backend" ----------------------------------------------------------

// --device cuda through the block interpreter on the CUDA backend (cuda/cuda_backend.cpp):
// the context and cuBLAS workspace as the runner's; the weights as the CPU holds them (each
// copied once, the first time an op names it); every buffer the block interpreter allocates
// through its backend, which are the CPU plan's own items (the KV cache, activations, logits,
// the declared scratch: tests/model/test_backend.cpp holds the interpreter's allocations to
// them); and the backend's workspaces below the seam.
MemoryPlan plan_qlora_cuda_backend(const ModelSpec& s, const MemoryOptions& o) {
  MemoryPlan p;
  const uint64_t V = u(s.vocab), E = u(s.embed_width());
  const uint64_t db = dtype_bytes(o.compute_dtype);
  const WeightBytes w = add_cuda_context_and_weights(p, s, o, /*int8_ok=*/true);
  MemoryOptions co = o;
  co.engine = MemoryEngine::Qlora;
  co.embed_q8_0 = co.head_q8_0 = false;
  co.embed_16bit = co.head_16bit = false;  // (the CPU loader's forms)
  co.ple_bytes = 0;
  co.source_reads_rows = false;
  const MemoryPlan cpu = plan_qlora(s, co);
  const auto on_backend = [](const std::string& n) {
    for (const char* prefix : {"activations", "logits", "workspace", "KV cache", "forward scratch"})
      if (n.rfind(prefix, 0) == 0) return true;
    return false;
  };
  for (const MemoryItem& it : cpu.items)
    if (on_backend(it.name)) add(p, it.name, it.bytes, it.note.empty() ? "as the CPU plan" : it.note);
  if (o.mode == MemoryMode::Train) {
    p.activations_checkpointed = cpu.activations_checkpointed;
    p.activations_full = cpu.activations_full;
  }
  // The backend's own workspaces (cuda_backend.cpp), for the largest product they serve.
  const bool q4 = o.weights == WeightFormat::NF4 || o.weights == WeightFormat::FP4;
  const bool train = o.mode == MemoryMode::Train;
  const uint64_t T = train ? u(o.seq_len) * u(std::max<int64_t>(1, o.batch_size)) : u(std::max<int64_t>(1, o.prompt_len));
  uint64_t max_in = E;
  for (const LinearShape& li : block_linears(s)) max_in = std::max(max_in, u(li.in));
  // float32: a 4-bit Linear dequantized whole (the forward beyond 8 tokens in float32, every
  // input gradient), or a 16-bit dense weight (the head) widened for its input gradient.
  uint64_t f32 = 0;
  if (q4 && (train || (T > 8 && db == 4))) f32 = w.largest_linear;
  // (int8 and 16-bit dense Linears are widened whole for the backward too)
  if (train && (o.weights == WeightFormat::Int8 || db != 4)) f32 = std::max(f32, w.largest_linear);
  if (train && db != 4) f32 = std::max(f32, std::min(V * E, (uint64_t{1} << 24) / E * E));  // (64 MiB chunks)
  if (f32)
    add(p, "workspace (a weight in float32)", 4 * f32,
        "the largest 4-bit Linear dequantized, or a 16-bit head widened (64 MiB of rows at a time)");
  if (db != 4 && T > 8) {
    if (q4) add(p, "workspace (a 4-bit Linear in 16 bits)", 2 * w.largest_linear, "dequantized for cuBLAS");
    add(p, "workspace (16-bit activations)", 2 * T * std::max(max_in, E), "a product's input for cuBLAS");
  }
  const LoraShape ls = lora_shape(s, o);
  if ((train || o.with_adapter) && ls.modules_per_block > 0) {
    add(p, "LoRA A and B (device copies)", ls.params * 4, "uploaded at every call, kept per layer");
    if (train) add(p, "workspace (LoRA dA, per-row losses)", 4 * (u(o.lora_r) * max_in + T), "");
  }
  for (const MemoryItem& it : p.items) p.peak_bytes += it.bytes;
  p.run_peak_bytes = p.peak_bytes;
  p.required_bytes = p.peak_bytes;
  return p;
}

MemoryPlan plan_memory(const ModelSpec& spec, const MemoryOptions& opt) {
  spec.validate(kWhere);
  if (opt.lora_r < 1) fail("--lora-r", "must be >= 1");
  if (opt.seq_len < 1) fail("--seq-len", "must be >= 1");
  if (opt.batch_size < 1) fail("--batch-size", "must be >= 1");
  if (opt.prompt_len < 0 || opt.new_tokens < 0) fail("--prompt-len/-n", "must be >= 0");
  if (opt.mode == MemoryMode::Train && opt.seq_len > spec.max_positions)
    fail("--seq-len", std::to_string(opt.seq_len) + " exceeds the model's context of " +
                          std::to_string(spec.max_positions));
  MemoryPlan p = opt.engine == MemoryEngine::Qlora              ? plan_qlora(spec, opt)
                 : opt.engine == MemoryEngine::QloraCuda        ? plan_qlora_cuda(spec, opt)
                 : opt.engine == MemoryEngine::QloraCudaBackend ? plan_qlora_cuda_backend(spec, opt)
                                                                : plan_pytorch(spec, opt);
  p.title = options_title(spec, opt);
  return p;
}

uint64_t model_source_bytes(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(model_path);
  if (!fs::is_directory(p, ec)) {
    const auto n = fs::file_size(p, ec);
    return ec ? 0 : static_cast<uint64_t>(n);
  }
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(p, ec)) {
    if (e.path().extension() != ".safetensors") continue;
    const auto n = fs::file_size(e.path(), ec);
    if (!ec) total += static_cast<uint64_t>(n);
  }
  return total;
}

bool model_source_permutes_qk(const std::string& model_path) {
  const std::string ext = std::filesystem::path(model_path).extension().string();
  return ext == ".gguf" || ext == ".bin";
}

MemoryOptions memory_options_for_run(const std::string& model_path, const ModelLoadOptions& load, MemoryMode mode,
                                     int threads) {
  MemoryOptions o;
  o.engine = MemoryEngine::Qlora;
  o.mode = mode;
  if (!load.quant.quantize) o.weights = WeightFormat::Dense;
  else if (load.quant.int8) o.weights = WeightFormat::Int8;
  else o.weights = load.quant.type == QuantType::NF4 ? WeightFormat::NF4 : WeightFormat::FP4;
  o.blocksize = load.quant.blocksize;
  o.double_quant = load.quant.double_quant;
  o.compute_dtype = load.compute_dtype;
  o.kv_cache_dtype = load.kv_cache_dtype;
  o.bf16_tiles = load.compute_dtype == ComputeDType::BF16 && gemm_bf16_fast();
  o.threads = std::max(1, threads);
  o.generated_weights = is_random_model(model_path);
  o.model_file_bytes = o.generated_weights ? 0 : model_source_bytes(model_path);
  o.source_permutes_qk = !o.generated_weights && model_source_permutes_qk(model_path);
  if (load.quant.quantize && load.keep_gguf_weights && !o.generated_weights) {
    const Gguf4bitKept k = model_source_gguf_kept_4bit(model_path, gguf_block_types(load));
    o.gguf_kept_values = k.values;
    o.gguf_kept_constant_bytes = k.constant_bytes;
    if (load.keep_gguf_blocks && !load.quant.int8) {
      o.gguf_kept_q8_values = k.q8_values;
      o.gguf_kept_block_values = k.block_values;
      o.gguf_kept_block_bytes = k.block_bytes;
    }
  }
  if (!o.generated_weights) {
    const SourceTables t = model_source_tables(model_path, load);
    o.source_reads_rows = t.reads_rows;
    o.ple_bytes = t.ple_bytes;
    o.embed_16bit = t.embed_16bit;
    o.head_16bit = t.head_16bit;
  }
  if (load.keep_q8_0_head && load.compute_dtype == ComputeDType::F32 && !o.generated_weights) {
    const Q8HeadTensors q8 = model_source_q8_0_head(model_path, gguf_block_types(load));
    o.embed_q8_0 = q8.embed;
    o.head_q8_0 = q8.head;
    if (load.keep_gguf_weights && load.keep_gguf_blocks) {
      o.embed_block_bytes = q8.embed_block_bytes;
      o.head_block_bytes = q8.head_block_bytes;
    }
  }
  return o;
}

Gguf4bitKept model_source_gguf_kept_4bit(const std::string& model_path, GgufBlockTypes which) {
  Gguf4bitKept r;
  if (std::filesystem::path(model_path).extension() != ".gguf" || !std::filesystem::is_regular_file(model_path))
    return r;
  // The block linears the loader will take as stored: the source's own rule (its names for
  // them, its exclusions), read from the headers only.
  const ModelFiles files = open_model_files(model_path, "", /*load_tokenizer=*/false);
  const GgufFile f(model_path);
  for (const std::string& name : files.tensors->names()) {
    if (name.rfind("model.layers.", 0) != 0) continue;
    if (files.tensors->keeps_gguf_blocks(name)) {
      const GgufTensorInfo& t = f.tensor(files.tensors->stored_name(name));
      if (!gguf_type_kept_as_blocks(t.type, which)) {  // (Q8_0, and the others as Q8_0)
        r.q8_values += static_cast<uint64_t>(t.numel());
      } else {
        r.block_values += static_cast<uint64_t>(t.numel());
        r.block_bytes += static_cast<uint64_t>(ggml_nbytes(t.type, t.numel()).value_or(0));
      }
      continue;
    }
    if (!files.tensors->keeps_gguf_4bit(name)) continue;
    const GgufTensorInfo& t = f.tensor(files.tensors->stored_name(name));
    const uint64_t n = static_cast<uint64_t>(t.numel());
    r.values += n;
    r.constant_bytes += static_cast<uint64_t>(ggml_kept_constant_bytes(t.type, static_cast<int64_t>(n)));
  }
  return r;
}

SourceTables model_source_tables(const std::string& model_path, const ModelLoadOptions& load) {
  namespace fs = std::filesystem;
  SourceTables r;
  std::error_code ec;
  if (model_path.empty() || is_random_model(model_path) || !fs::exists(model_path, ec)) return r;
  std::string path = model_path;
  if (fs::path(model_path).extension() == ".json") {  // (a bare config.json: the weights beside it, if any)
    const fs::path dir = fs::path(model_path).parent_path().empty() ? fs::path(".") : fs::path(model_path).parent_path();
    bool any = false;
    for (const auto& e : fs::directory_iterator(dir, ec)) any = any || e.path().extension() == ".safetensors";
    if (!any) return r;
    path = dir.string();
  }
  // (the source as the loader sees it: its names, its rules; headers only). A path the loader
  // cannot open gives the defaults here: the run's own open says what is wrong with it, and
  // `qlora memory --model other.json` plans from that config alone.
  ModelFiles f;
  try {
    f = open_model_files(path, "", /*load_tokenizer=*/false);
  } catch (const Error&) {
    return r;
  }
  const TensorSource& src = *f.tensors;
  const std::string embed = "model.embed_tokens.weight", head = "lm_head.weight", ple = "model.embed_tokens_per_layer.weight";
  const bool has_head = !f.spec.tied_embeddings && src.has(head);
  r.reads_rows = src.has(embed) && src.reads_rows(embed) && (!has_head || src.reads_rows(head));
  const bool keep16 = load.keep_q8_0_head && load.compute_dtype == ComputeDType::F32;
  r.embed_16bit = keep16 && src.has(embed) && src.stored_16bit(embed).has_value();
  r.head_16bit = keep16 && has_head && src.stored_16bit(head).has_value();
  if (f.spec.ple() && src.has(ple)) {
    // (the stored type, as the loader's packed / plain branches see it)
    GgmlType stored = GgmlType::F32;
    if (const std::optional<ComputeDType> h = src.stored_16bit(ple)) stored = *h == ComputeDType::BF16 ? GgmlType::BF16 : GgmlType::F16;
    else if (src.get_q8_0(ple)) stored = GgmlType::Q8_0;
    else if (const auto b = src.get_stored_blocks(ple)) stored = b->type;
    r.ple_bytes = gathered_table_bytes(stored, f.spec.ple_vocab, f.spec.n_layers * f.spec.ple_dim, load);
  }
  return r;
}

Q8HeadTensors model_source_q8_0_head(const std::string& model_path, GgufBlockTypes which) {
  Q8HeadTensors r;
  if (std::filesystem::path(model_path).extension() != ".gguf" || !std::filesystem::is_regular_file(model_path))
    return r;
  const GgufFile f(model_path);
  const GgufTensorInfo* e = f.find_tensor("token_embd.weight");
  const GgufTensorInfo* h = f.find_tensor("output.weight");
  // (Q8_0 as stored; other quantized types re-quantized to it on load)
  auto eight_bit = [](const GgufTensorInfo* t) {
    return t && t->type != GgmlType::F32 && t->type != GgmlType::F16 && t->type != GgmlType::BF16;
  };
  r.embed = eight_bit(e);
  r.head = eight_bit(h);
  // (kept as the file's blocks: the loader's rule, DenseWeight::from_gguf_blocks)
  auto block_bytes = [&](const GgufTensorInfo* t) -> uint64_t {
    if (!t || t->dims.size() != 2 || !gguf_type_kept_as_blocks(t->type, which)) return 0;
    return static_cast<uint64_t>(ggml_nbytes(t->type, t->numel()).value_or(0));
  };
  r.embed_block_bytes = block_bytes(e);
  r.head_block_bytes = block_bytes(h);
  return r;
}

}  // namespace qlora
