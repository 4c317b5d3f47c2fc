#include "export/lora_gguf.h"

#include <cmath>
#include <filesystem>

#include "base/error.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/model_family.h"
#include "lora/lora.h"

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
                       supported_model_types() + ")");
  const std::string arch(fam->export_arch());
  const LoraConfig& cfg = adapter.lora->config();
  // llama.cpp: scale = alpha / r. rsLoRA's alpha / sqrt(r) is the same with alpha·sqrt(r).
  const double alpha = cfg.use_rslora ? cfg.alpha * std::sqrt(static_cast<double>(cfg.r)) : cfg.alpha;

  if (spec.qkv_per_head && arch != "gptneox" && arch != "bloom" && arch != "falcon")
    fail(out_path, "a LoRA GGUF for a per-head fused query_key_value (" + spec.family + ") is not supported yet");
  GgufWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.type", "adapter");
  w.set_string("general.name", std::filesystem::path(out_path).stem().string());
  w.set_string("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", static_cast<float>(alpha));
  const bool permute_qk = arch == "llama" || arch == "granite" || arch == "smollm3" || arch == "olmo" ||
                          arch == "arcee";
  size_t n = 0;
  for (const LoraLayer& L : adapter.lora->layers()) {
    // (module paths are the family's Hugging Face names; GGUF names come from the canonical ones)
    const ModelFamily* fam = find_family(spec.family);
    const std::string canonical = fam ? hf_to_canonical(fam->renames(spec), L.module_path) : L.module_path;
    const auto gname = hf_to_gguf_tensor_name(canonical + ".weight", arch, arch == "falcon" && !spec.shared_branch_norm);
    if (!gname) fail(out_path, "no GGUF name for module '" + L.module_path + "'");
    int64_t heads = 0;
    if (permute_qk && L.module_path.ends_with("self_attn.q_proj")) heads = spec.n_heads;
    if (permute_qk && L.module_path.ends_with("self_attn.k_proj")) heads = spec.n_kv_heads;
    const LoraLayer* lp = &L;
    w.add_tensor(*gname + ".lora_a", type, {L.r, L.in}, [lp, type] { return encode_float_tensor(lp->A, type); });
    // gptneox: B's rows follow the weight's, which llama.cpp holds reordered (all q, k, v).
    const bool is_qkv = canonical.ends_with("self_attn.qkv_proj");
    const int64_t qkv_heads = spec.qkv_per_head && is_qkv ? spec.n_heads : 0;
    // (falcon's new architecture: regrouped per key/value group as its weight is)
    const int64_t qkv_groups = spec.qkv_grouped && is_qkv ? spec.n_kv_heads : 0, q_per_kv = spec.n_heads / spec.n_kv_heads;
    const int64_t head_dim = spec.head_dim;
    w.add_tensor(*gname + ".lora_b", type, {L.out, L.r}, [lp, type, heads, qkv_heads, qkv_groups, q_per_kv, head_dim] {
      if (qkv_heads > 0) {
        std::vector<float> p(lp->B.size());
        qkv_per_head_to_contiguous(lp->B, p, qkv_heads, head_dim, lp->r);
        return encode_float_tensor(p, type);
      }
      if (qkv_groups > 0) {
        std::vector<float> p(lp->B.size());
        qkv_grouped_to_contiguous(lp->B, p, qkv_groups, q_per_kv, head_dim, lp->r);
        return encode_float_tensor(p, type);
      }
      if (heads == 0) return encode_float_tensor(lp->B, type);
      std::vector<float> p(lp->B.size());
      permute_rope_rows(lp->B, p, lp->out, lp->r, heads);  // B's rows are the weight's rows
      return encode_float_tensor(p, type);
    });
    ++n;
  }
  if (n == 0) fail(out_path, "the adapter holds no LoRA layers");
  w.write(out_path);
}

}  // namespace qlora
