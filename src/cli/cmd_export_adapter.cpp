// `qlora export-adapter`: a PEFT adapter as llama.cpp's LoRA GGUF (export/lora_gguf.h), to
// apply with `llama-cli -m BASE.gguf --lora FILE.gguf` without merging.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "base/error.h"
#include "base/text_excerpt.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "model/random_spec.h"
#include "export/lora_gguf.h"
#include "formats/model_loader.h"
#include "model/model.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  std::string adapter, out, type = "f16";
  bool overwrite = false, quiet = false;
};

int run(const Options& o) {
  qlora::GgmlType type;
  if (o.type == "f16") type = qlora::GgmlType::F16;
  else if (o.type == "f32") type = qlora::GgmlType::F32;
  else qlora::fail("--type", "unknown value " + qlora::excerpt(o.type) + " (expected f16 or f32)");
  if (o.out.size() < 6 || o.out.compare(o.out.size() - 5, 5, ".gguf") != 0)
    qlora::fail("--out", "name the output FILE.gguf");
  // (--overwrite replaces an earlier export, never the model the adapter is checked against)
  std::error_code ec;
  for (const std::string& in : {o.m.model, o.m.tokenizer})
    if (!in.empty() && std::filesystem::exists(o.out, ec) && std::filesystem::exists(in, ec) &&
        std::filesystem::equivalent(o.out, in, ec))
      qlora::fail(o.out, "is " + std::string(in == o.m.model ? "the base model's own file" : "the tokenizer file") +
                             " (an input): write the LoRA GGUF somewhere else");
  qlora::refuse_random_model(o.m.model, "qlora export-adapter");
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  // The base model is loaded to check the adapter against its shapes (and for the q/k
  // layout); its weights are not written.
  const qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();
  const qlora::LoadedAdapter a = qlora::load_adapter(o.adapter, model);
  qlora::write_lora_gguf(a, files.spec, o.out, type, o.overwrite);
  if (!o.quiet)
    std::fprintf(stderr, "wrote %s: %zu LoRA modules (r %d, alpha %g), %s; apply with: llama-cli -m BASE.gguf --lora %s\n",
                 o.out.c_str(), a.lora->layers().size(), a.lora->config().r, a.lora->config().alpha, o.type.c_str(),
                 o.out.c_str());
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "export-adapter", "Write a PEFT LoRA adapter as llama.cpp's LoRA GGUF (llama-cli --lora)",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m, "Compute dtype (only used to check the adapter against the base)");
      app.add_option("adapter", o->adapter, "PEFT adapter directory")->required();
      app.add_option("--out,-o", o->out, "Output FILE.gguf")->required();
      app.add_option("--type", o->type, "Tensor type: f16 or f32")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--overwrite", o->overwrite, "Replace an existing --out");
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No summary on stderr");
      return [o] { return run(*o); };
    });

}  // namespace
