// `qlora eval`: loss and perplexity of a model (optionally with a LoRA adapter, applied
// unmerged) on a dataset, computed over the same target tokens training uses (responses
// only unless --train-on-prompt). With --generate it also answers every example's prompt
// greedily and scores exact matches against the reference response (the first response
// of each example), which is how the README's main job shows what fine-tuning changed.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/progress.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/data_flags.h"
#include "cli/model_flags.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/generate.h"
#include "model/model.h"
#include "lora/adapter_loader.h"
#include "train/sft_dataset.h"
#include "train/trainer.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  qlora::cli::DataFlags d;
  std::string data, adapter;
  double eval_split = 0.0;
  bool generate = false;
  int64_t max_new_tokens = 64;
  int64_t show = 3;
  bool json = false;
  bool quiet = false;
};

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// The prompt of an example (tokens before its first response token) and that response
// (the run of response tokens that follows, without a trailing end-of-generation token).
struct PromptAndAnswer {
  std::vector<int> prompt, answer;
};

PromptAndAnswer split_example(const qlora::Example& ex, const qlora::Tokenizer& tok) {
  PromptAndAnswer pa;
  size_t i = 0;
  while (i < ex.tokens.size() && !ex.train_mask[i]) pa.prompt.push_back(ex.tokens[i++]);
  while (i < ex.tokens.size() && ex.train_mask[i]) pa.answer.push_back(ex.tokens[i++]);
  while (!pa.answer.empty() && tok.is_end_of_generation(pa.answer.back())) pa.answer.pop_back();
  return pa;
}

struct Score {
  int64_t n = 0, correct = 0;
};

// Greedy answers, 8 examples at a time decoded together (generate_batch: each answer is
// the one generated alone, up to the products' summation order; bit for bit with a 4-bit
// model and a GGUF's 8-bit head).
Score score_by_generation(const qlora::Model& model, const qlora::Tokenizer& tok,
                          const std::vector<qlora::Example>& examples, const Options& o) {
  Score s;
  std::unique_ptr<qlora::ProgressBar> bar;
  if (!o.quiet) bar = std::make_unique<qlora::ProgressBar>(static_cast<int64_t>(examples.size()), "answer", "ex");
  int64_t shown = 0;
  qlora::GenerationOptions g;
  g.max_new_tokens = o.max_new_tokens;
  constexpr size_t kGroup = static_cast<size_t>(qlora::kMaxBatchRows);
  for (size_t i0 = 0; i0 < examples.size(); i0 += kGroup) {
    const size_t i1 = std::min(examples.size(), i0 + kGroup);
    std::vector<PromptAndAnswer> group;
    std::vector<std::vector<int>> prompts;
    for (size_t i = i0; i < i1; ++i) {
      PromptAndAnswer pa = split_example(examples[i], tok);
      if (pa.prompt.empty() || pa.answer.empty()) continue;  // nothing to answer (a text record)
      prompts.push_back(pa.prompt);
      group.push_back(std::move(pa));
    }
    const qlora::BatchGenerationResult b =
        qlora::generate_batch(model, &tok, prompts, std::vector<qlora::GenerationOptions>(prompts.size(), g));
    for (size_t k = 0; k < group.size(); ++k) {
      const PromptAndAnswer& pa = group[k];
      const std::string want = trim(tok.decode(pa.answer));
      const std::string got = trim(b.results[k].text);
      ++s.n;
      const bool ok = got == want;
      s.correct += ok ? 1 : 0;
      if (shown < o.show && !o.quiet) {
        ++shown;
        std::fprintf(stderr, "\n[%s] prompt: %s\n  expected: %s\n  answer:   %s\n", ok ? "right" : "wrong",
                     trim(tok.decode(pa.prompt)).c_str(), want.c_str(), got.c_str());
      }
    }
    if (bar) bar->update(static_cast<int64_t>(i1), std::to_string(s.correct) + "/" + std::to_string(s.n) + " right");
  }
  if (bar) bar->finish();
  return s;
}

int run(const Options& o) {
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);
  const qlora::DatasetOptions dopt = qlora::cli::dataset_options(o.d);
  if (o.eval_split < 0 || o.eval_split >= 1) qlora::fail("--eval-split", "must be in [0, 1)");
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  if (!files.tokenizer) qlora::fail(o.m.model, "no tokenizer found next to the model; pass --tokenizer PATH");
  qlora::cli::report_model(files, o.quiet);
  qlora::cli::add_load_progress(load, files, o.quiet);
  qlora::LoadedExamples ex = qlora::cli::load_dataset_reporting(o.data, *files.tokenizer, dopt, o.quiet);
  std::vector<qlora::Example> examples = std::move(ex.examples);
  if (o.eval_split > 0) {
    std::vector<qlora::Example> held;
    qlora::split_eval(examples, held, o.eval_split);
    examples = std::move(held);
  }
  const std::vector<qlora::TrainSequence> seqs = qlora::build_sequences(examples, dopt);
  qlora::cli::report_sequences("eval", seqs, o.quiet);
  if (seqs.empty()) qlora::fail(o.data, "no sequence has a target token to evaluate");

  qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();
  qlora::LoadedAdapter adapter;
  qlora::LoraConfig none;  // an empty LoRA for the base model: evaluate() needs a LoraModel
  if (!o.adapter.empty()) {
    adapter = qlora::load_adapter(o.adapter, model);
    model.set_adapter(adapter.lora.get());
  }
  qlora::cli::attach_device(model, o.m, o.quiet);
  // With no adapter, a LoRA whose B is zero computes the base model exactly.
  std::unique_ptr<qlora::LoraModel> base;
  const qlora::LoraModel* lm = adapter.lora.get();
  if (!lm) {
    none.r = 1;
    none.target_modules = {"q_proj"};
    none.dropout = 0;
    base = std::make_unique<qlora::LoraModel>(model, none);
    lm = base.get();
  }
  const qlora::EvalResult e = qlora::evaluate(*lm, seqs, !o.quiet);
  if (!std::isfinite(e.loss))
    qlora::fail("eval", std::string("the loss over ") + std::to_string(e.tokens) + " target tokens of " + o.data + " is " +
                            (std::isnan(e.loss) ? "NaN" : "infinite") +
                            ": the model's (or adapter's) weights hold NaN / infinite values, or its activations "
                            "overflow (try --compute-dtype fp32)");
  Score s;
  if (o.generate) s = score_by_generation(model, *files.tokenizer, examples, o);

  nlohmann::json j = {{"data", o.data}, {"adapter", o.adapter}, {"loss", e.loss}, {"ppl", e.ppl()},
                      {"target_tokens", e.tokens}, {"sequences", seqs.size()}};
  if (o.generate)
    j.update({{"answered", s.n},
              {"exact_match", s.correct},
              {"accuracy", s.n > 0 ? static_cast<double>(s.correct) / static_cast<double>(s.n) : 0.0}});
  if (o.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("eval loss %.4f, perplexity %.3f over %lld target tokens\n", e.loss, e.ppl(),
                static_cast<long long>(e.tokens));
    if (o.generate)
      std::printf("exact-match score: %lld / %lld (%.1f%%)\n", static_cast<long long>(s.correct),
                  static_cast<long long>(s.n), s.n > 0 ? 100.0 * static_cast<double>(s.correct) / static_cast<double>(s.n) : 0.0);
  }
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "eval", "Loss/perplexity (and optionally exact-match answers) of a model or model + adapter on a dataset",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m, "Compute dtype: fp32, bf16 or fp16");
      qlora::cli::add_device_flag(app, o->m);
      qlora::cli::add_data_flags(app, o->d);
      app.add_option("--data", o->data, "Dataset: .json/.jsonl of text/alpaca/chat records, or plain text")
          ->required();
      qlora::cli::add_adapter_flag(app, o->adapter);
      app.add_option("--eval-split", o->eval_split,
                     "Evaluate only the last fraction of the records (the split `qlora train --eval-split` holds out)")
          ->capture_default_str();
      qlora::cli::add_bool_flag(app, "--generate", o->generate,
                                "Also answer each example's prompt greedily and count exact matches with its response");
      app.add_option("--max-new-tokens", o->max_new_tokens, "Answer length limit for --generate")
          ->capture_default_str();
      app.add_option("--show", o->show, "Print this many answers next to the expected ones")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--json", o->json, "Print the result as one JSON line");
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No progress or statistics on stderr");
      return [o] { return run(*o); };
    });

}  // namespace
