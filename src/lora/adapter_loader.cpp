#include "lora/adapter_loader.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <utility>

#include "base/error.h"
#include "formats/hf_wrapper.h"
#include "formats/model_family.h"
#include "lora/peft_adapter.h"

namespace qlora {

LoadedAdapter load_adapter(const std::string& dir, const Model& model) {
  namespace fs = std::filesystem;
  const std::string cpath = (fs::path(dir) / kPeftConfigFile).string();
  const std::string wpath = (fs::path(dir) / kPeftWeightsFile).string();
  check(fs::is_directory(dir), dir, "--adapter: not a directory");
  PeftAdapter a = load_peft_adapter(dir);
  LoadedAdapter out;
  if (!model.spec().hf_wrapper.empty()) {
    // A vision-language model's adapter: modules under either of the wrapper's prefixes
    // ("language_model.model." from transformers < 4.52) are the language model's; the
    // vision tower's and projector's are kept aside (text-only runs never reach them).
    std::map<std::string, PeftLoraWeights> text;
    for (auto& [path, m] : a.modules) {
      if (auto t = wrapped_path_to_text(path)) text.emplace(canonical_to_hf(model.spec(), hf_to_canonical(model.spec(), path)), std::move(m));
      else out.other_part_modules.push_back(path);
    }
    a.modules = std::move(text);
    if (!out.other_part_modules.empty())
      std::fprintf(stderr,
                   "note: %s: %zu of the adapter's modules are outside the language model (%s%s): text-only "
                   "generation and training do not run them\n",
                   wpath.c_str(), out.other_part_modules.size(), out.other_part_modules[0].c_str(),
                   out.other_part_modules.size() > 1 ? ", ..." : "");
    if (a.modules.empty())
      fail(wpath, "holds no LoRA weights for the language model (only for " + out.other_part_modules[0] +
                      (out.other_part_modules.size() > 1 ? ", ...)" : ")"));
  }
  // (a family whose files spell a prefix two ways, ModelFamily::stored_alias: an adapter trained on
  // the other spelling -- Nemotron-H's backbone.*, NVIDIA's remote code -- under the module names)
  if (const ModelFamily* fam = find_family(model.spec().family); fam && !fam->stored_alias.hf.empty()) {
    std::map<std::string, PeftLoraWeights> renamed;
    for (auto& [path, m] : a.modules) renamed.emplace(canonical_to_hf(model.spec(), hf_to_canonical(model.spec(), path)), std::move(m));
    a.modules = std::move(renamed);
  }

  // module path -> the Linear, for every Linear the model has: the blocks', then those
  // outside them (project_in / project_out).
  const int64_t NL = model.spec().n_layers;
  std::map<std::string, std::pair<int64_t, int64_t>> linears;  // path -> (in, out)
  for (int64_t l = 0; l < NL; ++l)
    for (int w = 0; w < kBlockLinears; ++w)
      if (std::string p = block_linear_path(model.spec(), l, static_cast<BlockLinear>(w)); !p.empty())
        linears[p] = {model.block_linear(l, w).in_features(), model.block_linear(l, w).out_features()};
  for (int w = 0; w < kModelLinearCount; ++w)
    if (const std::string n = model_linear_name(model.spec(), static_cast<ModelLinear>(w)); !n.empty())
      linears[canonical_to_hf(model.spec(), n)] = {model.model_linear(static_cast<ModelLinear>(w)).in_features(),
                                                    model.model_linear(static_cast<ModelLinear>(w)).out_features()};
  if (model.spec().moe())  // the router, the shared-expert gate, each expert's gate_up and down
    for (int64_t l = 0; l < NL; ++l) {
      if (!model.spec().layer_moe(l)) continue;
      const LayerWeights& L = model.layers()[static_cast<size_t>(l)];
      // (the float32 sigmoid router of GLM-4.5 / DeepSeek-V3 is no QuantLinear: its shape)
      linears[moe_router_module_path(model.spec(), l)] =
          model.spec().moe_f32_router() ? std::pair{model.spec().hidden, model.spec().n_experts}
                                          : std::pair{L.router.in_features(), L.router.out_features()};
      if (model.spec().shared_expert && model.spec().shared_expert_gate)
        linears[moe_shared_gate_path(model.spec(), l)] = {L.shared_gate.in_features(), L.shared_gate.out_features()};
      for (int64_t e = 0; e < model.spec().n_experts; ++e) {
        const QuantLinear& gu = L.expert_gate_up[static_cast<size_t>(e)];
        const QuantLinear& dn = L.expert_down[static_cast<size_t>(e)];
        linears[moe_expert_path(model.spec(), l, e, 0)] = {gu.in_features(), gu.out_features()};
        linears[moe_expert_path(model.spec(), l, e, 1)] = {dn.in_features(), dn.out_features()};
      }
    }
  for (const auto& [path, m] : a.modules) {
    auto it = linears.find(path);
    check(it != linears.end(), wpath,
                 "key '" + peft_lora_key(path, 'A') + "': the model has no Linear '" + path + "' (it has " +
                     std::to_string(NL) + " layers; LoRA is supported on the block's Linear projections)");
    auto [q_in, q_out] = it->second;
    // (Llama 4's experts: PEFT's in is our out, LoraLayer::peft_swapped; apply_to swaps them)
    if (model.spec().moe_llama4 && path.find(".feed_forward.experts.") != std::string::npos) std::swap(q_in, q_out);
    check(m.in == q_in, wpath,
                 "key '" + peft_lora_key(path, 'A') + "' has shape (" + std::to_string(m.r) + ", " +
                     std::to_string(m.in) + ") but the model's '" + path + "' has in_features " +
                     std::to_string(q_in) + " (an adapter for a different model?)");
    check(m.out == q_out, wpath,
                 "key '" + peft_lora_key(path, 'B') + "' has shape (" + std::to_string(m.out) + ", " +
                     std::to_string(m.r) + ") but the model's '" + path + "' has out_features " +
                     std::to_string(q_out) + " (an adapter for a different model?)");
  }

  // transformers' Mamba mixers bypass an adapter on dt_proj (Falcon-Mamba's and Jamba's only when the
  // model is not quantized): an adapter that holds one (QLoRA's, PEFT's all-linear) keeps it here -- it
  // was trained where dt_proj ran, PEFT's merge_and_unload merges it and llama.cpp runs it --, saying
  // that PeftModel on such a base would not run it.
  a.config.skip_bypassed = false;
  if (const ModelFamily* f = find_family(model.spec().family); f && f->peft_bypassed_linear >= 0) {
    size_t bypassed = 0;
    std::string leaf;
    for (int64_t l = 0; l < NL; ++l) {
      const std::string p = block_linear_path(model.spec(), l, static_cast<BlockLinear>(f->peft_bypassed_linear));
      if (p.empty() || !a.modules.count(p)) continue;
      if (f->peft_bypass_unquantized_only && model.quant().quantize) continue;  // (the whole model's, as transformers)
      ++bypassed;
      leaf = p.substr(p.rfind('.') + 1);
    }
    if (bypassed > 0)
      std::fprintf(stderr,
                   "note: %s: the adapter's %zu %s LoRA(s) are applied; transformers' %s mixer multiplies by that "
                   "Linear's weight itself%s, so PeftModel on this base would run the adapter without them (its "
                   "merge_and_unload and llama.cpp run them)\n",
                   wpath.c_str(), bypassed, leaf.c_str(), model.spec().family.c_str(),
                   f->peft_bypass_unquantized_only ? " when the model is not quantized" : "");
  }

  try {
    out.lora = std::make_unique<LoraModel>(model, a.config);
  } catch (const Error& e) {
    fail(cpath, e.what());
  }
  a.apply_to(out.lora->layers());  // every targeted Linear has weights of rank r, nothing extra
  return out;
}

}  // namespace qlora
