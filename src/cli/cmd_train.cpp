// `qlora train`: QLoRA fine-tuning of a causal LM on a text dataset. Loads the model
// (quantized to 4-bit on the way in unless --quant none), attaches LoRA adapters to the
// chosen Linear layers, trains them with AdamW, and writes a PEFT adapter directory
// (adapter_config.json, adapter_model.safetensors) and metrics.jsonl into --out.
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "base/parallel.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/model.h"
#include "quant/blockwise.h"
#include "train/text_dataset.h"
#include "train/train_model.h"
#include "train/trainer.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  std::string data, out;
  int lora_r = 64;
  double lora_alpha = 16.0;
  double lora_dropout = 0.05;
  bool rslora = false;
  std::string target = "all-linear";
  double lr = 2e-4;
  double weight_decay = 0.0;
  std::string schedule = "constant_with_warmup";
  double warmup_ratio = 0.03;
  int64_t max_steps = 100;
  int64_t batch_size = 1;
  int64_t seq_len = 256;
  int64_t grad_accum = 1;
  float max_grad_norm = 0.3f;
  uint64_t seed = 42;
  bool no_checkpointing = false;
  bool quiet = false;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

int run(const Options& o) {
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);
  if (load.compute_dtype != qlora::ComputeDType::F32)
    qlora::fail("--compute-dtype", "training supports only fp32 compute for now");

  qlora::LoraConfig lc;
  lc.r = o.lora_r;
  lc.alpha = o.lora_alpha;
  lc.dropout = o.lora_dropout;
  lc.use_rslora = o.rslora;
  lc.seed = o.seed;
  if (o.target == "all-linear") lc.all_linear = true;
  else lc.target_modules = split_commas(o.target);
  lc.validate("--target/--lora-*");

  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  if (!files.tokenizer) qlora::fail(o.m.model, "no tokenizer found next to the model; pass --tokenizer PATH");
  if (!o.quiet)
    std::fprintf(stderr, "model: %s (%s) %s\n", o.m.model.c_str(), qlora::model_format_name(files.format),
                 files.spec.summary().c_str());
  const qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();

  const qlora::TextDataset data = qlora::TextDataset::from_file(o.data, *files.tokenizer, o.seq_len);
  if (!o.quiet)
    std::fprintf(stderr, "data: %s: %lld documents, %lld tokens, %lld chunks of %lld\n", o.data.c_str(),
                 static_cast<long long>(data.num_documents()), static_cast<long long>(data.num_tokens()),
                 static_cast<long long>(data.num_chunks()), static_cast<long long>(o.seq_len));

  qlora::LoraModel lora(model, lc);
  if (!o.quiet)
    std::fprintf(stderr, "LoRA: r %d, alpha %g, dropout %g, %zu modules, %lld trainable parameters\n", lc.r,
                 lc.alpha, lc.dropout, lora.layers().size(), static_cast<long long>(lora.num_trainable()));

  qlora::TrainerOptions t;
  t.out_dir = o.out;
  t.base_model_name = o.m.model;
  t.max_steps = o.max_steps;
  t.batch_size = o.batch_size;
  t.grad_accum = o.grad_accum;
  t.adamw.lr = o.lr;
  t.adamw.weight_decay = o.weight_decay;
  t.schedule = qlora::lr_schedule_kind_from_string(o.schedule);
  t.warmup_ratio = o.warmup_ratio;
  t.max_grad_norm = o.max_grad_norm;
  t.seed = o.seed;
  t.checkpointing = !o.no_checkpointing;
  t.progress = !o.quiet;
  const qlora::TrainResult r = qlora::train(lora, data, t);
  if (!o.quiet)
    std::fprintf(stderr, "trained %lld steps in %.2f s: loss %.4f -> %.4f, %.1f tokens/s; adapter in %s\n",
                 static_cast<long long>(r.steps.size()), r.seconds, r.steps.front().loss, r.steps.back().loss,
                 r.tokens_per_s(), o.out.c_str());
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "train", "QLoRA fine-tune: train LoRA adapters on a frozen (4-bit) model, save a PEFT adapter",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m, "Compute dtype (fp32)");
      app.add_option("--data", o->data, "Training text: plain text, .json array or .jsonl with \"text\" fields")
          ->required();
      app.add_option("--out,-o", o->out, "Output directory for the PEFT adapter and metrics.jsonl")->required();
      app.add_option("--lora-r", o->lora_r, "LoRA rank")->capture_default_str();
      app.add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (scaling = alpha / r)")->capture_default_str();
      app.add_option("--lora-dropout", o->lora_dropout, "LoRA dropout probability")->capture_default_str();
      app.add_flag("--rslora", o->rslora, "Scale by alpha / sqrt(r)");
      app.add_option("--target", o->target, "all-linear, or comma-separated module names (q_proj,v_proj)")
          ->capture_default_str();
      app.add_option("--lr", o->lr, "Peak learning rate")->capture_default_str();
      app.add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
      app.add_option("--lr-scheduler", o->schedule, "constant, constant_with_warmup, linear, cosine")
          ->capture_default_str();
      app.add_option("--warmup-ratio", o->warmup_ratio, "Warmup steps as a fraction of --max-steps")
          ->capture_default_str();
      app.add_option("--max-steps", o->max_steps, "Optimizer steps")->capture_default_str();
      app.add_option("--batch-size", o->batch_size, "Sequences per micro-batch")->capture_default_str();
      app.add_option("--seq-len", o->seq_len, "Tokens per training sequence")->capture_default_str();
      app.add_option("--grad-accum", o->grad_accum, "Micro-batches per optimizer step")->capture_default_str();
      app.add_option("--max-grad-norm", o->max_grad_norm, "Clip gradients to this global L2 norm (0 = off)")
          ->capture_default_str();
      app.add_option("--seed", o->seed, "Random seed (LoRA init, data order, dropout)")->capture_default_str();
      app.add_flag("--no-gradient-checkpointing", o->no_checkpointing,
                   "Keep every block's activations instead of recomputing them in backward");
      app.add_flag("--quiet,-q", o->quiet, "No progress or statistics on stderr");
      return [o] { return run(*o); };
    });

}  // namespace
