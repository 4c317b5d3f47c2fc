// `qlora train`: QLoRA fine-tuning of a causal LM. Reads the dataset (text, Alpaca or chat
// records; prompt masking, packing, an eval split), loads the model (quantized to 4-bit on
// the way in unless --quant none), attaches LoRA adapters to the chosen Linear layers,
// trains them (train/trainer.h: epochs or steps, eval, resumable checkpoints) and writes a
// PEFT adapter directory, metrics.jsonl and loss.svg into --out.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "base/parallel.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "cli/sampling_flags.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/model.h"
#include "quant/blockwise.h"
#include "base/process_memory.h"
#include "base/progress.h"
#include "cli/data_flags.h"
#include "memory/memory_plan.h"
#include "optim/optimizer.h"
#include "train/sft_dataset.h"
#include "train/train_model.h"
#include "train/output_dir.h"
#include "train/trainer.h"

namespace {

struct Options {
  qlora::cli::ModelFlags m;
  qlora::cli::DataFlags d;
  std::string data, eval_data, out;
  double eval_split = 0.0;
  int lora_r = 64;
  double lora_alpha = 16.0;
  double lora_dropout = 0.05;
  bool rslora = false;
  std::string target = "all-linear";
  std::string target_parameters;  // PEFT's target_parameters (MoE experts / router), comma-separated
  bool lora_dropout_given = false;
  double lr = 2e-4;
  double weight_decay = 0.0;
  std::string schedule = "constant_with_warmup";
  double warmup_ratio = 0.03;
  int64_t max_steps = -1;
  double epochs = 1.0;
  int64_t batch_size = 1;
  int64_t grad_accum = 1;
  float max_grad_norm = 0.3f;
  uint64_t seed = 42;
  std::string optim = "adamw_torch";
  std::string paged_dir;
  int64_t eval_every = 0;
  int64_t save_every = 0;
  int64_t save_total_limit = 2;
  bool resume = false;
  bool overwrite_output_dir = false;
  std::string max_memory;  // refuse up front (with the planner's breakdown) when the run cannot fit
  std::optional<bool> checkpointing;  // unset: auto_checkpointing decides
  bool quiet = false;
  bool compute_dtype_given = false;  // else auto (model_flags.h auto_train_compute_dtype)
};

int run(Options o) {
  // An empty --out would train for nothing (no adapter, no metrics): refuse it.
  if (o.out.find_first_not_of(" \t") == std::string::npos)
    qlora::fail("--out", "is empty: give the directory for the adapter, metrics.jsonl and checkpoints");
  if (!o.compute_dtype_given && !qlora::parse_device(o.m.device).cuda) {
    std::string why;
    o.m.compute_dtype = qlora::cli::auto_train_compute_dtype(&why);
    if (!o.quiet) std::fprintf(stderr, "compute dtype: %s\n", why.c_str());
  }
  qlora::ModelLoadOptions load = qlora::cli::load_options(o.m);
  const qlora::DatasetOptions dopt = qlora::cli::dataset_options(o.d);
  if (o.eval_split < 0 || o.eval_split >= 1) qlora::fail("--eval-split", "must be in [0, 1)");
  if (o.eval_split > 0 && !o.eval_data.empty()) qlora::fail("--eval-split", "give --eval-split or --eval-data, not both");

  qlora::LoraConfig lc;
  lc.r = o.lora_r;
  lc.alpha = o.lora_alpha;
  lc.dropout = o.lora_dropout;
  lc.use_rslora = o.rslora;
  lc.seed = o.seed;
  if (o.target == "all-linear") lc.all_linear = true;
  else if (!o.target.empty()) lc.target_modules = qlora::cli::split_commas(o.target);
  if (!o.target_parameters.empty()) {
    lc.target_parameters = qlora::cli::split_commas(o.target_parameters);
    if (!o.lora_dropout_given) lc.dropout = 0.0;  // (PEFT refuses dropout on them; below for all-linear)
  }
  lc.validate("--target/--lora-*");

  qlora::TrainerOptions t;
  t.out_dir = o.out;
  t.base_model_name = o.m.model;
  if (o.max_steps == 0 || o.max_steps < -1)
    qlora::fail("--max-steps", "must be a positive number of optimizer steps, not " + std::to_string(o.max_steps) +
                                   " (leave it out to train for --epochs)");
  t.max_steps = o.max_steps;
  t.epochs = o.epochs;
  t.batch_size = o.batch_size;
  t.grad_accum = o.grad_accum;
  t.adamw.lr = o.lr;
  t.adamw.weight_decay = o.weight_decay;
  t.optim = qlora::optim_kind_from_string(o.optim);
  t.paged_dir = o.paged_dir;
  t.schedule = qlora::lr_schedule_kind_from_string(o.schedule);
  t.warmup_ratio = o.warmup_ratio;
  t.max_grad_norm = o.max_grad_norm;
  t.seed = o.seed;
  t.checkpointing = o.checkpointing.value_or(true);  // settled below when unset
  t.eval_every = o.eval_every;
  t.save_every = o.save_every;
  t.save_total_limit = o.save_total_limit;
  t.resume = o.resume;
  t.overwrite_output_dir = o.overwrite_output_dir;
  t.progress = !o.quiet;

  // The output directory is this run's from here on: a second run into it, or an earlier
  // run's output there (without --resume / --overwrite-output-dir), fails now, before any
  // loading. The trainer takes the same lock again (shared within the process).
  const qlora::OutputDirLock out_lock(o.out);
  qlora::check_output_dir(o.out, o.resume, o.overwrite_output_dir);

  // Data first: a bad dataset should fail before minutes of model loading.
  qlora::ModelFiles files = qlora::open_model_files(o.m.model, o.m.tokenizer);
  // PEFT refuses dropout on adapted parameters, which its all-linear adds on mixture-of-experts
  // models (the experts and the router): without an explicit --lora-dropout, use none.
  // (GLM-4.5's shared experts notwithstanding: lora/lora_model.cpp add_moe_layers)
  if (files.spec.all_linear_adapts_experts() && lc.all_linear &&
      lc.target_parameters.empty() &&
      lc.dropout > 0 && !o.lora_dropout_given) {
    lc.dropout = 0.0;
    if (!o.quiet)
      std::fprintf(stderr, "LoRA: dropout 0 (the experts' and router's adapters cannot have dropout, as in PEFT; "
                           "--lora-dropout is the flag)\n");
  }
  if (!files.tokenizer) qlora::fail(o.m.model, "no tokenizer found next to the model; pass --tokenizer PATH");
  if (files.format == qlora::ModelFormat::Random) {
    // The adapter, checkpoints, loss plot and every metrics line name the random model, in
    // its canonical form, so that nobody takes the adapter for a real model's.
    t.base_model_name = files.path;
    t.metrics_model = files.path;
  }
  qlora::LoadedExamples train_ex = qlora::cli::load_dataset_reporting(o.data, *files.tokenizer, dopt, o.quiet);
  std::vector<qlora::Example> eval_ex;
  if (!o.eval_data.empty()) eval_ex = qlora::cli::load_dataset_reporting(o.eval_data, *files.tokenizer, dopt, o.quiet).examples;
  else if (o.eval_split > 0) qlora::split_eval(train_ex.examples, eval_ex, o.eval_split);
  const std::vector<qlora::TrainSequence> train_seqs = qlora::build_sequences(train_ex.examples, dopt);
  const std::vector<qlora::TrainSequence> eval_seqs = qlora::build_sequences(eval_ex, dopt);
  qlora::cli::report_sequences("train", train_seqs, o.quiet);
  if (!eval_seqs.empty()) qlora::cli::report_sequences("eval", eval_seqs, o.quiet);
  if (train_seqs.empty()) qlora::fail(o.data, "no training sequence has a target token");
  // A micro-batch or step larger than the data would repeat sequences inside one step and
  // plan thousands of "epochs": clamp to the data, and say so.
  const auto n_train = static_cast<int64_t>(train_seqs.size());
  if (t.batch_size > n_train) {
    std::fprintf(stderr, "warning: --batch-size %lld is more than the %lld training sequences; using %lld\n",
                 static_cast<long long>(t.batch_size), static_cast<long long>(n_train), static_cast<long long>(n_train));
    t.batch_size = n_train;
  }
  if (t.batch_size * t.grad_accum > n_train) {
    const int64_t accum = std::max<int64_t>(1, n_train / t.batch_size);
    std::fprintf(stderr, "warning: --grad-accum %lld makes a step of more than the %lld training sequences; using %lld\n",
                 static_cast<long long>(t.grad_accum), static_cast<long long>(n_train), static_cast<long long>(accum));
    t.grad_accum = accum;
  }

  {
    // From the headers and the dataset only, before anything model-sized is allocated.
    qlora::MemoryOptions mo =
        qlora::memory_options_for_run(o.m.model, load, qlora::MemoryMode::Train, qlora::max_threads());
    mo.lora_r = lc.r;
    mo.all_linear = lc.all_linear;
    mo.target_modules = lc.target_modules;
    mo.lora_dropout = lc.dropout;
    mo.batch_size = t.batch_size;
    mo.seq_len = o.d.seq_len;
    mo.optim = t.optim;
    mo.data_tokens = static_cast<uint64_t>(qlora::dataset_stats(train_seqs).tokens +
                                           qlora::dataset_stats(eval_seqs).tokens);
    if (!o.checkpointing) {
      std::string why;
      t.checkpointing = qlora::cli::auto_checkpointing(files.spec, mo, qlora::parse_device(o.m.device).cuda, o.max_memory,
                                                      &why);
      if (!o.quiet) std::fprintf(stderr, "gradient checkpointing: %s\n", why.c_str());
    }
    mo.checkpointing = t.checkpointing;
    qlora::cli::check_memory_fits(files.spec, mo, o.m, o.max_memory, "qlora train");
  }
  qlora::cli::report_model(files, o.quiet);
  qlora::cli::add_load_progress(load, files, o.quiet);
  qlora::Model model = qlora::Model::load(files.spec, *files.tensors, load);
  files.tensors.reset();
  // --device cuda: the forward and backward run on the GPU; the LoRA parameters, the
  // optimizer and the checkpoints stay on the host.
  qlora::cli::attach_device(model, o.m, o.quiet);

  qlora::LoraModel lora(model, lc);
  const int64_t steps = qlora::planned_steps(t, static_cast<int64_t>(train_seqs.size()));
  if (!o.quiet) {
    std::fprintf(stderr, "LoRA: r %d, alpha %g, dropout %g, %zu modules, %lld trainable parameters\n", lc.r,
                 lc.alpha, lc.dropout, lora.layers().size(), static_cast<long long>(lora.num_trainable()));
    if (model.spec().moe()) {
      const int64_t l0 = model.spec().first_moe_layer();  // (the first MoE layer)
      std::fprintf(stderr, "LoRA: %s is a mixture-of-experts model: %s\n", model.spec().family.c_str(),
                   lora.find_expert(l0, 0, 0) || lora.find_expert(l0, 0, 1)
                       ? "its experts are adapted too, one LoRA per expert (PEFT's target_parameters)"
                       : model.spec().moe_ungated
                           ? "its experts are not adapted (--target-parameters up_proj,down_proj adds them)"
                           : "its experts are not adapted (--target-parameters gate_up_proj,down_proj adds them)");
    }
    std::fprintf(stderr, "plan: %lld steps of %lld x %lld sequences (%.2f epochs), %s, lr %g (%s)\n",
                 static_cast<long long>(steps), static_cast<long long>(t.batch_size),
                 static_cast<long long>(t.grad_accum),
                 static_cast<double>(steps * t.batch_size * t.grad_accum) / static_cast<double>(train_seqs.size()),
                 qlora::optim_kind_name(t.optim), o.lr, o.schedule.c_str());
  }
  const qlora::TrainResult r = qlora::train(lora, train_seqs, eval_seqs, t);
  if (!o.quiet) {
    if (!r.steps.empty())
      std::fprintf(stderr, "trained steps %lld-%lld in %.2f s: loss %.4f -> %.4f, %.1f tokens/s\n",
                   static_cast<long long>(r.first_step), static_cast<long long>(r.steps.back().step), r.seconds,
                   r.steps.front().loss, r.steps.back().loss, r.tokens_per_s());
    if (!r.evals.empty())
      std::fprintf(stderr, "eval loss %.4f (step %lld) -> %.4f (step %lld)\n", r.evals.front().second.loss,
                   static_cast<long long>(r.evals.front().first), r.evals.back().second.loss,
                   static_cast<long long>(r.evals.back().first));
    std::fprintf(stderr, "peak memory (RSS): %s\n", qlora::human_bytes(static_cast<double>(qlora::peak_rss_bytes())).c_str());
    qlora::cli::report_device_memory(model, o.quiet);
    if (!o.out.empty())
      std::fprintf(stderr, "adapter: %s/adapter_model.safetensors; metrics: %s/metrics.jsonl; plot: %s/loss.svg\n",
                   o.out.c_str(), o.out.c_str(), o.out.c_str());
  }
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "train", "QLoRA fine-tune: train LoRA adapters on a frozen (4-bit) model, save a PEFT adapter",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      qlora::cli::add_model_flags(app, o->m,
                                  "Compute dtype: fp32, bf16 or fp16 (activations rounded as torch does); default: "
                                  "bf16 on CPUs that multiply it on AMX tiles, else fp32");
      qlora::cli::add_device_flag(app, o->m);
      qlora::cli::add_data_flags(app, o->d);
      app.add_option("--data", o->data,
                     "Training data: .json array or .jsonl of text/alpaca/chat records, or a plain text file")
          ->required();
      app.add_option("--eval-data", o->eval_data, "Held-out data (same forms as --data)");
      app.add_option("--eval-split", o->eval_split, "Hold out this fraction of --data (its last records) for eval")
          ->capture_default_str();
      app.add_option("--out,-o", o->out,
                     "Output directory: PEFT adapter, metrics.jsonl, loss.svg, checkpoint-N/")
          ->required();
      app.add_option("--lora-r", o->lora_r, "LoRA rank")->capture_default_str();
      app.add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (scaling = alpha / r)")->capture_default_str();
      app.add_option("--lora-dropout", o->lora_dropout, "LoRA dropout probability")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--rslora", o->rslora, "Scale by alpha / sqrt(r)");
      app.add_option("--target", o->target, "all-linear, or comma-separated module names (q_proj,v_proj)")
          ->capture_default_str();
      app.add_option("--target-parameters", o->target_parameters,
                     "Mixture-of-experts models: parameters to adapt directly, as PEFT's target_parameters "
                     "(gate_up_proj,down_proj: the experts -- up_proj,down_proj for Nemotron 3's ungated ones; "
                     "gate.weight: the router); all-linear includes them where PEFT's does");
      app.add_option("--lr", o->lr, "Peak learning rate")->capture_default_str();
      app.add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
      app.add_option("--optim", o->optim, "adamw_torch, adamw_8bit, paged_adamw_32bit or paged_adamw_8bit")
          ->capture_default_str();
      app.add_option("--paged-dir", o->paged_dir, "Directory for the paged optimizers' state file (default: --out)");
      app.add_option("--lr-scheduler", o->schedule, "constant, constant_with_warmup, linear, cosine")
          ->capture_default_str();
      app.add_option("--warmup-ratio", o->warmup_ratio, "Warmup steps as a fraction of all steps")
          ->capture_default_str();
      app.add_option("--max-steps", o->max_steps, "Optimizer steps (overrides --epochs when > 0)")
          ->capture_default_str();
      app.add_option("--epochs", o->epochs, "Passes over the training data (may be fractional)")
          ->capture_default_str();
      app.add_option("--batch-size", o->batch_size, "Sequences per micro-batch")->capture_default_str();
      app.add_option("--grad-accum", o->grad_accum, "Micro-batches per optimizer step")->capture_default_str();
      app.add_option("--max-grad-norm", o->max_grad_norm, "Clip gradients to this global L2 norm (0 = off)")
          ->capture_default_str();
      app.add_option("--seed", o->seed, "Random seed (LoRA init, data order, dropout)")
          ->capture_default_str()
          ->check(qlora::cli::seed_check());
      app.add_option("--eval-every", o->eval_every, "Evaluate every N steps (0: only before and after)")
          ->capture_default_str();
      app.add_option("--save-every", o->save_every, "Write a resumable checkpoint every N steps (0: none)")
          ->capture_default_str();
      app.add_option("--save-total-limit", o->save_total_limit, "Checkpoints kept (0: all)")->capture_default_str();
      app.add_option("--max-memory", o->max_memory,
                     "Refuse to start (with the planner's breakdown) when the run needs more than this (e.g. 8GB)");
      qlora::cli::add_bool_flag(app, "--resume", o->resume,
                                "Continue from the newest checkpoint in --out (same command line)");
      qlora::cli::add_bool_flag(
          app, "--overwrite-output-dir", o->overwrite_output_dir,
          "Replace an earlier run's adapter, metrics and checkpoints in --out (refused otherwise)");
      qlora::cli::add_bool_flag_pair(
          app, "--gradient-checkpointing,--grad-checkpointing", "--no-gradient-checkpointing",
          [o](bool on) { o->checkpointing = on; },
          "Recompute each block's activations in backward instead of keeping them (default: auto, "
          "off when the run fits without it in --max-memory or half the available memory)",
          "Keep every block's activations instead of recomputing them in backward");
      qlora::cli::add_bool_flag(app, "--quiet,-q", o->quiet, "No progress or statistics on stderr");
      CLI::Option* compute = app.get_option("--compute-dtype");
      CLI::Option* dropout = app.get_option("--lora-dropout");
      return [o, compute, dropout] {
        o->compute_dtype_given = compute->count() > 0;
        o->lora_dropout_given = dropout->count() > 0;
        return run(*o);
      };
    });

}  // namespace
