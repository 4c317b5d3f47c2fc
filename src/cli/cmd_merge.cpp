// `qlora merge`: fold one or more LoRA adapters into the base model, the QLoRA way
// (W' = dequant(Wq) + weight · scaling · B·A over the same 4-bit weights the adapter was
// trained on: give the same --quant/--double-quant/--blocksize as `qlora train` had), and
// write a Hugging Face model directory that transformers (and anything that reads one)
// loads: config.json, sharded safetensors in --dtype, tokenizer and generation config; or,
// with --out FILE.gguf, a GGUF file that llama.cpp loads (--gguf-type f16|bf16|f32|q8_0|q4_0|q4_k_m).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "base/text_excerpt.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "model/random_spec.h"
#include "export/merge.h"
#include "export/merge_gguf.h"
#include "export/requantize.h"
#include "formats/tokenizer.h"
#include "quant/blockwise.h"
#include "formats/model_loader.h"
#include "memory/memory_plan.h"
#include "model/model.h"
#include "lora/adapter_loader.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  std::vector<std::string> adapters;  // DIR or DIR:WEIGHT
  std::string out, dtype = "bf16", max_shard = "5GB", gguf_type = "f16";
  std::string out_quant;  // "": keep --dtype floats; nf4, fp4, int8: a bitsandbytes checkpoint
  bool out_double_quant = false;
  int out_blocksize = 64;
  bool overwrite = false;
  bool quiet = false;
};

// "DIR" -> (DIR, 1); "DIR:0.7" -> (DIR, 0.7) when what follows the last ':' is a number.
std::pair<std::string, double> split_weight(const std::string& s) {
  const size_t colon = s.rfind(':');
  if (colon != std::string::npos && colon + 1 < s.size()) {
    const std::string w = s.substr(colon + 1);
    char* end = nullptr;
    const double v = std::strtod(w.c_str(), &end);
    if (end && *end == '\0') {
      if (!std::isfinite(v)) qlora::fail("--adapter", "weight " + qlora::excerpt(w) + " is not a finite number");
      return {s.substr(0, colon), v};
    }
  }
  return {s, 1.0};
}

int run(const Options& o) {
  if (o.adapters.empty()) qlora::fail("--adapter", "give at least one adapter directory (DIR or DIR:WEIGHT)");
  qlora::HfExportOptions ex;
  if (o.dtype == "bf16") ex.dtype = qlora::DType::BF16;
  else if (o.dtype == "fp16") ex.dtype = qlora::DType::F16;
  else if (o.dtype == "fp32") ex.dtype = qlora::DType::F32;
  else qlora::fail("--dtype", "unknown value " + qlora::excerpt(o.dtype) + " (expected bf16, fp16 or fp32)");
  ex.max_shard_bytes = qlora::parse_memory_size(o.max_shard, "--max-shard-size");
  if (ex.max_shard_bytes == 0) qlora::fail("--max-shard-size", "must be > 0");
  ex.log = !o.quiet;
  const bool to_gguf = o.out.size() > 5 && o.out.compare(o.out.size() - 5, 5, ".gguf") == 0;
  qlora::GgufExportOptions gx;
  qlora::set_gguf_export_type(gx, o.gguf_type, "--gguf-type");
  gx.log = !o.quiet;
  std::vector<std::pair<std::string, double>> specs;
  for (const std::string& a : o.adapters) specs.push_back(split_weight(a));

  qlora::refuse_random_model(o.m.model, "qlora merge");
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  if (!o.quiet)
    std::fprintf(stderr, "model: %s (%s) %s\n", o.m.model.c_str(), qlora::model_format_name(files.format),
                 files.spec.summary().c_str());
  const qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();

  std::vector<qlora::LoadedAdapter> loaded;
  loaded.reserve(specs.size());
  std::vector<qlora::WeightedAdapter> weighted;
  for (const auto& [dir, w] : specs) {
    loaded.push_back(qlora::load_adapter(dir, model));
    if (const auto& other = loaded.back().other_part_modules; !other.empty())
      qlora::fail(dir, "adapts " + std::to_string(other.size()) + " module(s) outside the language model (" + other[0] +
                           (other.size() > 1 ? ", ..." : "") +
                           "); qlora merges language-model adapters only, and a merge without them would lose "
                           "them: merge this adapter with PEFT (merge_and_unload)");
    const qlora::LoraConfig& lc = loaded.back().lora->config();
    if (!o.quiet)
      std::fprintf(stderr, "adapter: %s: LoRA r %d, alpha %g (scaling %g), %zu modules, weight %g\n", dir.c_str(),
                   lc.r, lc.alpha, lc.scaling(), loaded.back().lora->layers().size(), w);
  }
  for (size_t i = 0; i < loaded.size(); ++i) weighted.push_back({loaded[i].lora.get(), specs[i].second});

  if (!o.out_quant.empty()) {
    if (to_gguf) qlora::fail("--out-quant", "writes a Hugging Face directory, not a .gguf (use --gguf-type there)");
    qlora::QuantizeOptions q;
    if (o.out_quant == "int8") {
      q.int8 = true;
    } else {
      q.type = qlora::quant_type_from_string(o.out_quant, "--out-quant");
      qlora::check_blocksize(o.out_blocksize, "--out-blocksize");
      q.blocksize = o.out_blocksize;
      q.double_quant = o.out_double_quant;
    }
    // Probe text for the report: the tokenizer's view of a fixed English sentence.
    std::vector<int> probe;
    if (files.tokenizer) {
      const auto ids = files.tokenizer->encode(
          "Once upon a time, a little fox found a red ball in the garden and ran home to show it to her mother.");
      probe.assign(ids.begin(), ids.end());
    }
    const qlora::RequantizeReport r =
        qlora::write_merged_requantized(model, files, weighted, o.out, q, probe, o.overwrite);
    if (!o.quiet) {
      std::fprintf(stderr, "merged into %s (bitsandbytes %s%s checkpoint: %lld tensors quantized)\n", o.out.c_str(),
                   o.out_quant.c_str(), o.out_double_quant ? " + double quant" : "",
                   static_cast<long long>(r.quantize.tensors_quantized));
      if (r.positions > 0)
        std::fprintf(stderr,
                     "re-quantizing moved the logits (%lld positions, vs the fp32 merge): mean KL %.4g nats, "
                     "max |diff| %.3g, top-1 agreement %.1f%%\n",
                     static_cast<long long>(r.positions), r.mean_kl, r.max_abs_logit, 100 * r.top1_agreement);
    }
    return 0;
  }
  if (to_gguf) {
    qlora::write_merged_gguf(model, files, weighted, o.out, gx, o.overwrite);
    if (!o.quiet)
      std::fprintf(stderr, "merged into %s (GGUF, weights %s over the %s base)\n", o.out.c_str(), o.gguf_type.c_str(),
                   qlora::cli::weights_description(o.m).c_str());
    return 0;
  }
  const std::vector<std::string> written = qlora::write_merged_hf_dir(model, files, weighted, o.out, ex, o.overwrite);
  if (!o.quiet) {
    std::string list;
    for (const std::string& f : written) list += (list.empty() ? "" : ", ") + f;
    std::fprintf(stderr, "merged into %s (%s, weights %s over the %s base): %s\n", o.out.c_str(),
                 "Hugging Face directory", o.dtype.c_str(),
                 qlora::cli::weights_description(o.m).c_str(), list.c_str());
  }
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "merge", "Fold LoRA adapters into the base weights and write a Hugging Face model directory",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m,
                                  "Compute dtype the base is held in before merging (fp32 keeps every bit)");
      app.add_option("--adapter,-a", o->adapters,
                     "PEFT adapter directory, optionally DIR:WEIGHT (repeatable: several adapters are summed)")
          ->required();
      app.add_option("--out,-o", o->out, "Output: a directory (Hugging Face layout), or FILE.gguf (llama.cpp)")
          ->required();
      app.add_option("--gguf-type", o->gguf_type,
                     "GGUF output: weights as f16, bf16, f32, q8_0, q4_0, or q4_k_m (llama.cpp's Q4_K_M mixture)")
          ->capture_default_str();
      app.add_option("--dtype", o->dtype, "Weights dtype: bf16, fp16 or fp32")->capture_default_str();
      app.add_option("--max-shard-size", o->max_shard, "Largest safetensors shard (transformers' max_shard_size)")
          ->capture_default_str();
      app.add_option("--out-quant", o->out_quant,
                     "Write a bitsandbytes checkpoint again: nf4, fp4 or int8 (reports how far it moved the logits)");
      qlora::cli::add_bool_flag(app, "--out-double-quant", o->out_double_quant, "With --out-quant nf4/fp4: double quant");
      app.add_option("--out-blocksize", o->out_blocksize, "With --out-quant nf4/fp4: block size")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--overwrite", o->overwrite, "Replace a model already in --out");
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No progress or statistics on stderr");
      return [o] { return run(*o); };
    });

}  // namespace
