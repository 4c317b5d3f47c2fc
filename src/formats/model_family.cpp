// The registry of model families (formats/model_family.h).
#include "formats/model_family.h"

#include <array>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "formats/hf_wrapper.h"

namespace qlora {

namespace {

// The one list. A new family adds its file under formats/families/ and its entry here.
const std::array<const ModelFamily*, 63>& all_families() {
  static const std::array<const ModelFamily*, 63> all = {&families::kLlama, &families::kMistral, &families::kQwen2,
                                                        &families::kQwen3, &families::kGemma,   &families::kGemma2,
                                                        &families::kGemma3Text, &families::kPhi3, &families::kPhi, &families::kGptNeoX,
                                                        &families::kGpt2, &families::kOpt,
                                                        &families::kBloom, &families::kFalcon,
                                                        &families::kStableLm, &families::kStarcoder2, &families::kGranite,
                                                        &families::kOlmo2, &families::kGptj,
                                                        &families::kCohere, &families::kSmolLm3,
                                                        &families::kCohere2, &families::kOlmo,
                                                        &families::kArcee, &families::kNemotron,
                                                        &families::kMixtral, &families::kQwen2Moe,
                                                        &families::kQwen3Moe, &families::kOlmoe, &families::kOlmo3, &families::kExaone4, &families::kGlm4, &families::kGlm4Moe, &families::kErnie45Moe, &families::kSeedOss, &families::kDeepseekV2, &families::kDeepseekV3, &families::kGraniteMoe, &families::kDots1, &families::kMiniMaxM2, &families::kHunyuanMoe,
                                                        &families::kGptOss, &families::kMinistral,
                                                        &families::kMinistral3, &families::kErnie45,
                                                        &families::kHunyuanDense, &families::kQwen3_5Text, &families::kQwen3_5MoeText, &families::kQwen3Next, &families::kGemma4Text, &families::kLlama4Text, &families::kLfm2, &families::kLfm2Moe, &families::kGraniteMoeHybrid, &families::kBamba, &families::kMamba2,
                                                        &families::kNemotronH, &families::kGptBigCode,
                                                        &families::kMpt, &families::kApertus,
                                                        &families::kMamba, &families::kFalconMamba, &families::kJamba};
  return all;
}

}  // namespace

namespace {

// Replaces every occurrence of `from` in s (with a '.' appended while matching, so that a
// module path without a suffix matches fragments that end with '.').
std::string rename(std::string s, std::string_view from, std::string_view to) {
  s += '.';
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
  s.pop_back();
  return s;
}

}  // namespace

std::string hf_to_canonical(std::span<const HfRename> renames, const std::string& name) {
  std::string s = name;
  for (const HfRename& r : renames) s = rename(s, r.hf, r.canonical);
  return s;
}

std::string canonical_to_hf(std::span<const HfRename> renames, const std::string& name) {
  std::string s = name;
  for (auto it = renames.rbegin(); it != renames.rend(); ++it) s = rename(s, it->canonical, it->hf);
  return s;
}

std::string canonical_to_hf(const ModelSpec& spec, const std::string& name) {
  const ModelFamily* f = find_family(spec.family);
  const std::string h = f ? canonical_to_hf(f->renames(spec), name) : name;
  return spec.hf_wrapper.empty() ? h : text_to_wrapped_path(h, spec.hf_wrapper);
}

std::string hf_to_canonical(const ModelSpec& spec, const std::string& name) {
  std::string h = name;
  if (!spec.hf_wrapper.empty())
    if (auto t = wrapped_path_to_text(name)) h = *t;
  const ModelFamily* f = find_family(spec.family);
  if (f && !f->stored_alias.hf.empty()) h = rename(h, f->stored_alias.hf, f->stored_alias.canonical);
  return f ? hf_to_canonical(f->renames(spec), h) : h;
}

bool is_block_linear_weight(const std::string& n) {
  return n.rfind("model.layers.", 0) == 0 && n.ends_with(".weight") &&
         (n.find(".self_attn.") != std::string::npos || n.find(".mlp.") != std::string::npos) &&
         n.find("_norm.") == std::string::npos;
}

const ModelFamily* find_family(std::string_view model_type) {
  for (const ModelFamily* f : all_families())
    if (f->model_type == model_type) return f;
  return nullptr;
}

const ModelFamily* find_family_by_gguf_arch(std::string_view arch) {
  if (arch.empty()) return nullptr;
  for (const ModelFamily* f : all_families())
    if (f->gguf_arch == arch || f->gguf_arch_alias == arch) return f;
  return nullptr;
}

std::string supported_model_types() {
  std::string s;
  for (const ModelFamily* f : all_families()) s += (s.empty() ? "" : ", ") + std::string(f->model_type);
  return s;
}

std::string gguf_supported_architectures() {
  std::string s;
  for (const ModelFamily* f : all_families())
    for (std::string_view a : {f->gguf_arch, f->gguf_arch_alias})
      if (!a.empty()) s += (s.empty() ? "" : ", ") + std::string(a);
  return s;
}

const ModelFamily& family_or_fail(std::string_view model_type, const std::string& where) {
  if (const ModelFamily* f = find_family(model_type)) return *f;
  fail(where, "model_type " + excerpt(std::string(model_type)) + " is not supported (supported: " +
                  supported_model_types() + "; and the language models of " + hf_wrapper_types() + ")");
}

}  // namespace qlora
