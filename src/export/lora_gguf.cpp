#include "export/lora_gguf.h"

#include <cmath>
#include <filesystem>

#include "base/error.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/model_family.h"
#include "lora/lora.h"
#include "lora/lora_model.h"

namespace qlora {

void write_lora_gguf(const LoadedAdapter& adapter, const ModelSpec& spec, const std::string& out_path, GgmlType type,
                     bool overwrite) {
  std::error_code ec;
  if (!overwrite && std::filesystem::exists(out_path, ec))
    fail(out_path, "already exists; pass --overwrite to replace it, or choose another --out");
  if (type != GgmlType::F32 && type != GgmlType::F16) fail("--type", "a LoRA GGUF is written as f32 or f16");
  const ModelFamily* fam = find_family(spec.family);
  if (!fam || fam->export_arch().empty())
    fail(out_path, "llama.cpp LoRA export of model_type '" + spec.family + "' is not supported (" +
                       (fam && !fam->no_gguf_reason.empty() ? std::string(fam->no_gguf_reason)
                                                            : "llama.cpp has no architecture for it") +
                       "; use the PEFT adapter directory)");
  if (!fam->no_gguf_reason.empty())  // (read, not written: ministral3)
    fail(out_path, "llama.cpp LoRA export of model_type '" + spec.family + "' is not supported (" +
                       std::string(fam->no_gguf_reason) + "; use the PEFT adapter directory)");
  const std::string arch(fam->export_arch(spec));
  if (arch.empty())
    fail(out_path, "this " + spec.family + " model has no llama.cpp architecture (" + std::string(fam->no_gguf_form) +
                       "; use the PEFT adapter directory)");
  const LoraConfig& cfg = adapter.lora->config();
  // llama.cpp: scale = alpha / r. rsLoRA's alpha / sqrt(r) is the same with alpha·sqrt(r).
  const double alpha = cfg.use_rslora ? cfg.alpha * std::sqrt(static_cast<double>(cfg.r)) : cfg.alpha;

  if (spec.qkv_per_head && arch != "gptneox" && arch != "bloom" && arch != "falcon" && arch != "starcoder")
    fail(out_path, "a LoRA GGUF for a per-head fused query_key_value (" + spec.family + ") is not supported yet");
  GgufWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.type", "adapter");
  w.set_string("general.name", std::filesystem::path(out_path).stem().string());
  w.set_string("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", static_cast<float>(alpha));
  const bool permute_qk = arch == "llama" || arch == "granite" || arch == "granitemoe" || arch == "granitehybrid" || is_nemotron_h_arch(arch) ||
                          arch == "smollm3" || arch == "olmo" || arch == "arcee" || arch == "mistral3";
  // llama.cpp scales every adapted tensor by alpha / (its lora_a's rank): a layer of another
  // rank or alpha (the experts' gate_up_proj under PEFT's all-linear: 2r, 2 alpha) gets the
  // difference folded into its B.
  auto b_factor = [&](const LoraLayer& L) { return L.scaling / static_cast<float>(alpha / static_cast<double>(L.r)); };
  size_t n = 0;
  // MoE experts: llama.cpp's 3-D ffn_{gate,up,down}_exps take 3-D LoRA pairs, lora_a
  // (experts, r, in) and lora_b (experts, out, r); the fused gate_up's A serves gate and up,
  // its B's rows split between them.
  if (spec.moe()) {
    const LoraModel& lm = *adapter.lora;
    const int64_t E = spec.n_experts, F = spec.expert_ffn, C = spec.hidden;
    for (int64_t l = 0; l < spec.n_layers; ++l)
      for (int part = 0; part < 2; ++part) {
        if (!lm.find_expert(l, 0, part)) continue;
        if (spec.moe_gemma4)  // (its experts are one fused ffn_gate_up_exps, which llama.cpp adapts no other way)
          fail(out_path, "the adapter has LoRA on Gemma 4's experts (layer " + std::to_string(l) +
                             "), which a llama.cpp gemma4 LoRA GGUF cannot carry: merge it into a GGUF instead "
                             "(qlora merge --out FILE.gguf)");
        std::vector<const LoraLayer*> ex;
        for (int64_t e = 0; e < E; ++e) ex.push_back(lm.find_expert(l, e, part));
        const int64_t r = ex[0]->r, in = ex[0]->in;
        const float factor = b_factor(*ex[0]);
        // gate_up: the gate rows [0, F) and the up rows [F, 2F) of each B (ungated: the up rows alone)
        const int first_out = part == 1 ? 2 : spec.moe_ungated ? 1 : 0;
        for (int out_part = first_out; out_part < (part == 0 ? 2 : 3); ++out_part) {
          static constexpr const char* kExps[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
          const std::string g = "blk." + std::to_string(l) + "." + kExps[out_part] + ".weight";
          const int64_t rows = out_part == 2 ? C : F, row0 = out_part == 1 && !spec.moe_ungated ? F : 0;
          w.add_tensor(g + ".lora_a", type, {E, r, in}, [ex, type] {
            std::vector<float> a;
            for (const LoraLayer* x : ex) a.insert(a.end(), x->A.begin(), x->A.end());
            return encode_float_tensor(a, type);
          });
          // (gpt-oss keeps gate and up rows interleaved, as its checkpoints: gate 2f, up 2f + 1)
          const bool interleaved = spec.moe_gpt_oss && part == 0;
          w.add_tensor(g + ".lora_b", type, {E, rows, r}, [ex, type, rows, row0, r, factor, interleaved, out_part] {
            std::vector<float> b;
            for (const LoraLayer* x : ex)
              for (int64_t i = 0; i < rows; ++i) {
                const int64_t o = interleaved ? 2 * i + out_part : row0 + i;
                for (int64_t k = 0; k < r; ++k) b.push_back(x->B[static_cast<size_t>(o * r + k)] * factor);
              }
            return encode_float_tensor(b, type);
          });
        }
        n += static_cast<size_t>(E);
      }
  }
  for (const LoraLayer& L : adapter.lora->layers()) {
    if (L.module_path.find(".mlp.experts.") != std::string::npos ||
        L.module_path.find(".block_sparse_moe.experts.") != std::string::npos ||
        L.module_path.find(".feed_forward.experts.") != std::string::npos ||  // (Llama 4's)
        L.module_path.find(".mixer.experts.") != std::string::npos)            // (Nemotron 3's)
      continue;  // (above)
    // (module paths are the family's Hugging Face names; GGUF names come from the canonical ones;
    // Granite MoE's router module, block_sparse_moe.router, is the canonical mlp.gate)
    std::string canonical = hf_to_canonical(spec, L.module_path);
    if (spec.moe_granite && canonical.ends_with(".block_sparse_moe.router"))
      canonical = canonical.substr(0, canonical.size() - std::string_view(".block_sparse_moe.router").size()) + ".mlp.gate";
    if (arch == "qwen3next" && canonical.ends_with(".linear_attn.in_proj_qkvz")) {
      // Qwen3-Next's fused projection goes to llama.cpp as attn_qkv and attn_gate (merge_gguf.cpp):
      // the same A for both, B's per-key-head rows split between them.
      const std::string blk = "blk." + canonical.substr(std::string("model.layers.").size(),
                                                        canonical.find(".linear_attn.") - std::string("model.layers.").size());
      DeltaNetHeads dh;
      dh.key_heads = spec.la_k_heads;
      dh.value_heads = spec.la_v_heads;
      dh.key_dim = spec.la_k_dim;
      dh.value_dim = spec.la_v_dim;
      const LoraLayer* lp = &L;
      const float f = b_factor(L);
      for (int gate = 0; gate < 2; ++gate) {
        const std::string g = blk + (gate ? ".attn_gate.weight" : ".attn_qkv.weight");
        w.add_tensor(g + ".lora_a", type, {L.r, L.in}, [lp, type] { return encode_float_tensor(lp->A, type); });
        const int64_t rows = gate ? spec.la_value_dim() : spec.la_conv_dim();
        const std::vector<int64_t> pick = qwen3next_split_rows(dh, gate);
        w.add_tensor(g + ".lora_b", type, {rows, L.r}, [lp, type, pick, f] {
          std::vector<float> b;
          for (int64_t r : pick)
            for (int64_t i = r * lp->r; i < (r + 1) * lp->r; ++i) b.push_back(lp->B[static_cast<size_t>(i)] * f);
          return encode_float_tensor(b, type);
        });
      }
      ++n;
      continue;
    }
    if (spec.family == "granitemoehybrid" && (canonical.ends_with(".mlp.gate_up_proj") ||
                                    canonical.ends_with(".mlp.shared_expert.gate_up_proj"))) {
      // Granite 4.0's shared_mlp.input_linear goes to llama.cpp as ffn_gate and ffn_up (_shexp beside
      // experts; merge_gguf.cpp): the same A for both, B's gate rows [0, F) and up rows [F, 2F).
      const std::string blk = "blk." + canonical.substr(std::string("model.layers.").size(),
                                                        canonical.find(".mlp.") - std::string("model.layers.").size());
      const std::string sfx = spec.moe() ? "_shexp" : "";
      const LoraLayer* lp = &L;
      const float f = b_factor(L);
      const int64_t F = L.out / 2;
      for (int half = 0; half < 2; ++half) {
        const std::string g = blk + (half ? ".ffn_up" : ".ffn_gate") + sfx + ".weight";
        w.add_tensor(g + ".lora_a", type, {L.r, L.in}, [lp, type] { return encode_float_tensor(lp->A, type); });
        w.add_tensor(g + ".lora_b", type, {F, L.r}, [lp, type, half, F, f] {
          std::vector<float> b(lp->B.begin() + half * F * lp->r, lp->B.begin() + (half + 1) * F * lp->r);
          for (float& v : b) v *= f;
          return encode_float_tensor(b, type);
        });
      }
      ++n;
      continue;
    }
    if (arch == "gemma4" && canonical == "model.per_layer_model_projection")
      fail(out_path, "the adapter has LoRA on per_layer_model_projection, which llama.cpp's gemma4 multiplies without "
                     "adapters: merge it into a GGUF instead (qlora merge --out FILE.gguf), or train without that module");
    // llama.cpp's deepseek2 multiplies the latent attention's input projections with plain ggml_mul_mat (no
    // adapters: measured, a LoRA GGUF on them leaves its logits those of the base model there), and splits
    // kv_b_proj into attn_k_b / attn_v_b; only o_proj, the MLPs, the experts and the router take adapters.
    if (arch == "deepseek2")
      for (const char* m : {".self_attn.q_proj", ".self_attn.q_a_proj", ".self_attn.q_b_proj",
                            ".self_attn.kv_a_proj_with_mqa", ".self_attn.kv_b_proj"})
        if (canonical.ends_with(m))
          fail(out_path, "the adapter has LoRA on " + std::string(m + 11) + ", which llama.cpp's deepseek2 multiplies "
                         "without adapters (of the attention it adapts o_proj only): merge it into a GGUF instead (qlora "
                         "merge --out FILE.gguf), or train with --target o_proj (and --target-parameters for the experts and router)");
    const auto gname = hf_to_gguf_tensor_name(canonical + ".weight", arch, arch == "falcon" && !spec.shared_branch_norm);
    if (!gname) fail(out_path, "no GGUF name for module '" + L.module_path + "'");
    int64_t heads = 0;
    // (by the canonical name: Nemotron-H's files call the attention mixer)
    if (permute_qk && canonical.ends_with("self_attn.q_proj")) heads = spec.n_heads;
    if (permute_qk && canonical.ends_with("self_attn.k_proj")) heads = spec.n_kv_heads;
    const LoraLayer* lp = &L;
    // qwen35: the gated DeltaNet's value heads tiled over its key heads, as the weights are
    // (merge_gguf.cpp): B's rows of in_proj_qkv's values, z, b and a; A's columns of out_proj.
    int64_t tile_offset = -1, tile_block = 0;  // (in B; for out_proj: in each row of A)
    const bool tile_a = (arch == "qwen35" || arch == "qwen35moe") && canonical.ends_with(".linear_attn.out_proj");
    if ((arch == "qwen35" || arch == "qwen35moe") && spec.la_k_heads != spec.la_v_heads) {
      if (canonical.ends_with(".linear_attn.in_proj_qkv")) tile_offset = 2 * spec.la_key_dim() * L.r, tile_block = spec.la_v_dim * L.r;
      if (canonical.ends_with(".linear_attn.in_proj_z")) tile_offset = 0, tile_block = spec.la_v_dim * L.r;
      if (canonical.ends_with(".linear_attn.in_proj_b") || canonical.ends_with(".linear_attn.in_proj_a"))
        tile_offset = 0, tile_block = L.r;
    }
    const int64_t Hk = spec.la_k_heads, Hv = spec.la_v_heads, dv = spec.la_v_dim;
    auto tile = [Hk, Hv](std::vector<float>& v, int64_t offset, int64_t block) {
      const std::span<const float> in(v.data() + offset, static_cast<size_t>(Hv * block));
      std::vector<float> out(in.size());
      delta_net_heads_to_tiled(in, out, Hk, Hv, block);
      std::copy(out.begin(), out.end(), v.begin() + offset);
    };
    w.add_tensor(*gname + ".lora_a", type, {L.r, L.in}, [lp, type, tile_a, tile, Hk, Hv, dv] {
      if (!tile_a || Hk == Hv) return encode_float_tensor(lp->A, type);
      std::vector<float> a = lp->A;
      for (int64_t k = 0; k < lp->r; ++k) tile(a, k * Hv * dv, dv);
      return encode_float_tensor(a, type);
    });
    // gptneox: B's rows follow the weight's, which llama.cpp holds reordered (all q, k, v).
    const bool is_qkv = canonical.ends_with("self_attn.qkv_proj");
    const int64_t qkv_heads = spec.qkv_per_head && is_qkv ? spec.n_heads : 0;
    // (falcon's new architecture: regrouped per key/value group as its weight is)
    const int64_t qkv_groups = spec.qkv_grouped && is_qkv ? spec.n_kv_heads : 0, q_per_kv = spec.n_heads / spec.n_kv_heads;
    const int64_t head_dim = spec.head_dim;
    const float f = b_factor(L);  // (1 but for a layer of its own rank / alpha)
    w.add_tensor(*gname + ".lora_b", type, {L.out, L.r}, [lp, type, heads, qkv_heads, qkv_groups, q_per_kv, head_dim, f,
                                                          tile, tile_offset, tile_block] {
      std::vector<float> scaled;
      if (std::fabs(f - 1.0f) > 1e-6f || tile_offset >= 0) {
        scaled = lp->B;
        for (float& v : scaled) v *= f;
        if (tile_offset >= 0) tile(scaled, tile_offset, tile_block);
      }
      const std::vector<float>& B = scaled.empty() ? lp->B : scaled;
      if (qkv_heads > 0) {
        std::vector<float> p(B.size());
        qkv_per_head_to_contiguous(B, p, qkv_heads, head_dim, lp->r);
        return encode_float_tensor(p, type);
      }
      if (qkv_groups > 0) {
        std::vector<float> p(B.size());
        qkv_grouped_to_contiguous(B, p, qkv_groups, q_per_kv, head_dim, lp->r);
        return encode_float_tensor(p, type);
      }
      if (heads == 0) return encode_float_tensor(B, type);
      std::vector<float> p(B.size());
      permute_rope_rows(B, p, lp->out, lp->r, heads);  // B's rows are the weight's rows
      return encode_float_tensor(p, type);
    });
    ++n;
  }
  if (n == 0) fail(out_path, "the adapter holds no LoRA layers");
  w.write(out_path);
}

}  // namespace qlora
