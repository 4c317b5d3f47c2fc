// `qlora memory`: will it fit? Prints the memory a `qlora train` / `qlora generate` run (or,
// with --engine pytorch-cuda, the transformers + PEFT + bitsandbytes equivalent on a GPU)
// needs at its peak, item by item, from the model's headers alone (config.json, GGUF or
// safetensors headers, llama2.c header, or --params 7B|13B|33B|65B), never its weights.
// The flags are named as in `qlora train` / `qlora generate`.
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/dtype.h"
#include "base/error.h"
#include "base/text_excerpt.h"
#include "cli/bool_flags.h"
#include "cli/command.h"
#include "cli/model_flags.h"
#include "model/gemm_bf16.h"
#include "formats/hf_config.h"
#include "base/mapped_file.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "memory/memory_plan.h"
#include "model/device_runner.h"
#include "optim/optimizer.h"
#include "quant/blockwise.h"

namespace {

namespace fs = std::filesystem;

struct Options {
  std::string model, params, tokenizer;
  std::string quant = "nf4";
  bool double_quant = false;
  int blocksize = 64;
  std::string compute_dtype;  // "": as the planned command would choose (train: auto)
  int threads = 0;
  std::string mode = "train";
  std::string engine = "qlora";
  std::string device;
  int lora_r = 64;
  std::string target = "all-linear";
  std::string target_parameters;  // comma-separated, as train's
  double lora_dropout = 0.05;
  bool lora_dropout_given = false;
  std::string lora_dtype;  // pytorch-cuda: fp32 (PEFT) or bf16
  bool with_adapter = false;
  int64_t batch_size = 1;
  int64_t seq_len = 256;
  std::optional<bool> grad_checkpointing;  // unset: as train, auto_checkpointing decides
  std::string optim = "adamw_torch";
  std::string data;
  int64_t prompt_len = 16;
  int64_t n = 128;
  std::string gpu_memory;
  int gpus = 1;
  bool json = false;
  bool table = false;
  bool dense_head = false;  // --dense-head, as train/generate's
  bool requantize_gguf = false;  // --requantize-gguf, as train/generate's
  bool gguf_compact = false;     // --gguf-compact, as train/generate's
  std::optional<bool> int8_activations;  // --[no-]int8-activations, as generate's (unset: its default)
  std::string kv_cache = "auto";  // --kv-cache, as generate's
};

uint64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  const auto n = fs::file_size(p, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

// The model's spec and the bytes loading it maps and reads, from headers only.
struct ResolvedModel {
  qlora::ModelSpec spec;
  uint64_t file_bytes = 0;  // 0: estimate (fp16 checkpoint)
  bool permutes_qk = false;
  std::string name;
  std::unique_ptr<qlora::Tokenizer> tokenizer;  // when the model came with one
  bool generated = false;  // a random: model (no file; weights generated in 4-bit)
  std::string notice;      // its "random weights ...: NOT a trained model" line
};

ResolvedModel resolve_model(const Options& o) {
  ResolvedModel r;
  if (!o.params.empty()) {
    if (!o.model.empty()) qlora::fail("--params", "give either --model or --params, not both");
    r.spec = qlora::llama1_spec(o.params);
    r.name = "LLaMA-" + o.params;
    return r;
  }
  if (o.model.empty()) qlora::fail("qlora memory", "give --model PATH (directory, .gguf, .safetensors, .bin, config.json) or --params 7B|13B|33B|65B");
  r.name = o.model;
  const fs::path p(o.model);
  if (p.extension() == ".json") {
    // A bare config.json: the checkpoint next to it, if any, is what loading would map.
    r.spec = qlora::read_hf_config(o.model);
    for (const auto& e : fs::directory_iterator(p.parent_path().empty() ? fs::path(".") : p.parent_path()))
      if (e.path().extension() == ".safetensors") r.file_bytes += file_size_or_zero(e.path());
    return r;
  }
  // open_model_files parses headers and maps the file; no tensor data is read or converted
  // (a random: model's shape is parsed, nothing generated).
  qlora::ModelFiles files = qlora::open_model_files(o.model, o.tokenizer);
  r.spec = files.spec;
  r.tokenizer = std::move(files.tokenizer);
  if (files.format == qlora::ModelFormat::Random) {
    r.name = files.path;
    r.generated = true;
    r.notice = files.notice;
    return r;
  }
  r.file_bytes = qlora::model_source_bytes(o.model);
  // GGUF and llama2.c store q/k rows in the rotary-interleaved order.
  r.permutes_qk = files.format == qlora::ModelFormat::Gguf || files.format == qlora::ModelFormat::Llama2c;
  return r;
}

qlora::MemoryOptions memory_options(const Options& o, const ResolvedModel& m) {
  qlora::MemoryOptions mo;
  mo.engine = qlora::memory_engine_from_string(o.engine);
  // --device cuda: this program's GPU memory, for the engine a run would take
  // (model/device_runner.h choose_cuda_engine: the llama runner or the CUDA backend).
  if (!o.device.empty()) {
    const qlora::DeviceChoice d = qlora::parse_device(o.device);
    if (d.cuda) {
      if (o.engine != "qlora") qlora::fail("--device", "plans this program on a GPU; leave --engine out");
      mo.engine = qlora::cli::cuda_memory_engine(m.spec, o.quant == "int8");
    }
  }
  if (o.mode == "train") mo.mode = qlora::MemoryMode::Train;
  else if (o.mode == "generate") mo.mode = qlora::MemoryMode::Generate;
  else qlora::fail("--mode", "unknown mode " + qlora::excerpt(o.mode) + "; use train or generate");
  mo.weights = qlora::weight_format_from_string(o.quant);
  if (mo.weights == qlora::WeightFormat::NF4 || mo.weights == qlora::WeightFormat::FP4)
    qlora::check_blocksize(o.blocksize, "--blocksize");
  mo.blocksize = o.blocksize;
  mo.double_quant = o.double_quant;
  std::string dtype = o.compute_dtype;
  if (dtype.empty()) {  // as `qlora train` on this CPU would pick it; fp32 elsewhere
    std::string why;
    dtype = mo.mode == qlora::MemoryMode::Train && mo.engine == qlora::MemoryEngine::Qlora
                ? qlora::cli::auto_train_compute_dtype(&why)
                : "fp32";
  }
  mo.compute_dtype = qlora::compute_dtype_from_string(dtype);
  // (this host's AMX tiles: their packing buffers are part of a bf16 run here)
  mo.bf16_tiles = mo.engine == qlora::MemoryEngine::Qlora && mo.compute_dtype == qlora::ComputeDType::BF16 &&
                  qlora::gemm_bf16_fast();
  mo.lora_r = o.lora_r;
  if (o.target == "all-linear") {
    mo.all_linear = true;
  } else {
    mo.all_linear = false;
    mo.target_modules = qlora::cli::split_commas(o.target);
    if (mo.target_modules.empty()) qlora::fail("--target", "names no module");
  }
  mo.lora_dropout = o.lora_dropout;
  // (as `qlora train`: all-linear on an MoE model whose experts it adapts runs without dropout
  // unless --lora-dropout is given, which train then refuses, as PEFT does)
  if (!o.target_parameters.empty()) mo.target_parameters = qlora::cli::split_commas(o.target_parameters);
  if (!mo.target_parameters.empty() && !m.spec.moe())
    qlora::fail("--target-parameters", "names a mixture-of-experts model's parameters; this model has no experts");
  if (((m.spec.all_linear_adapts_experts() && mo.all_linear) || !mo.target_parameters.empty()) && !o.lora_dropout_given)
    mo.lora_dropout = 0.0;
  mo.with_adapter = o.with_adapter;
  mo.batch_size = o.batch_size;
  mo.seq_len = o.seq_len;
  mo.checkpointing = o.grad_checkpointing.value_or(true);
  mo.optim = qlora::optim_kind_from_string(o.optim);
  if (!o.data.empty()) {
    if (!fs::exists(o.data)) qlora::fail(o.data, "--data: no such file");
    mo.data_bytes = file_size_or_zero(o.data);
    // The data is text, not weights: tokenizing it gives the token buffers exactly (JSON
    // syntax of .json/.jsonl files is counted too, an upper bound).
    if (m.tokenizer && mo.mode == qlora::MemoryMode::Train)
      mo.data_tokens = m.tokenizer->encode(qlora::read_text_file(o.data)).size();
  }
  if (o.prompt_len < 0) qlora::fail("--prompt-len", "must be >= 0 (got " + std::to_string(o.prompt_len) + ")");
  if (o.n < 0) qlora::fail("-n/--n-predict", "must be >= 0 (got " + std::to_string(o.n) + ")");
  mo.prompt_len = o.prompt_len;
  mo.new_tokens = o.n;
  if (mo.engine == qlora::MemoryEngine::Qlora)
    mo.kv_cache_dtype = qlora::cli::kv_cache_dtype_from_flag(o.kv_cache, mo.compute_dtype, false);
  else if (o.kv_cache != "auto" && o.kv_cache != "f32" && o.kv_cache != "fp32")
    qlora::fail("--kv-cache", "plans the qlora CPU engine's cache; the " + o.engine +
                                  (o.device.empty() ? "" : " (--device " + o.device + ")") +
                                  " engine keeps its keys and values in its own dtype");
  qlora::cli::check_thread_count(o.threads, /*for_this_machine=*/false);
  mo.threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  mo.model_file_bytes = m.file_bytes;
  mo.source_permutes_qk = m.permutes_qk;
  // The GGUF types kept as the file's blocks, as the command would load them (model/model.h
  // gguf_block_types): generate decodes a GGUF on 8-bit activations by default (cli/model_flags.cpp).
  const bool four_bit = mo.weights == qlora::WeightFormat::NF4 || mo.weights == qlora::WeightFormat::FP4;
  if (o.int8_activations.value_or(false)) {  // (refused where generate refuses it, or never uses it)
    if (mo.mode != qlora::MemoryMode::Generate) qlora::fail("--int8-activations", "is a decoding mode: plan it with --mode generate");
    if (mo.engine != qlora::MemoryEngine::Qlora) qlora::fail("--int8-activations", "is a CPU decoding mode of the qlora engine");
    if (!four_bit) qlora::fail("--int8-activations", "decodes 4-bit weights (--quant nf4 or fp4), not --quant " + o.quant);
  }
  qlora::ModelLoadOptions as_loaded;
  as_loaded.gguf_compact = o.gguf_compact;
  as_loaded.int8_activations = o.int8_activations.value_or(mo.mode == qlora::MemoryMode::Generate &&
                                                           mo.engine == qlora::MemoryEngine::Qlora &&
                                                           !o.requantize_gguf && four_bit);
  as_loaded.compute_dtype = mo.compute_dtype;
  as_loaded.keep_q8_0_head = !o.dense_head;
  as_loaded.keep_gguf_weights = !o.requantize_gguf;
  as_loaded.keep_gguf_blocks = mo.engine == qlora::MemoryEngine::Qlora;  // (as load_options: not with --device cuda)
  const qlora::GgufBlockTypes block_types = qlora::gguf_block_types(as_loaded);
  if (!m.generated && !o.model.empty() && mo.engine == qlora::MemoryEngine::Qlora) {  // (the qlora CPU loader's rules)
    const qlora::SourceTables t = qlora::model_source_tables(o.model, as_loaded);
    mo.source_reads_rows = t.reads_rows;
    mo.ple_bytes = t.ple_bytes;
    mo.embed_16bit = t.embed_16bit;
    mo.head_16bit = t.head_16bit;
  }
  if (mo.compute_dtype == qlora::ComputeDType::F32 && !o.dense_head && !m.generated) {
    const qlora::Q8HeadTensors q8 = qlora::model_source_q8_0_head(o.model, block_types);
    mo.embed_q8_0 = q8.embed;
    mo.head_q8_0 = q8.head;
    if (!o.requantize_gguf) {
      mo.embed_block_bytes = q8.embed_block_bytes;
      mo.head_block_bytes = q8.head_block_bytes;
    }
  }
  mo.generated_weights = m.generated;
  if (mo.engine == qlora::MemoryEngine::Qlora && o.quant != "none" && !o.requantize_gguf && !m.generated) {
    // (a GGUF's 4-bit linears are kept as stored: formats/ggml_as_4bit.h)
    const qlora::Gguf4bitKept k = qlora::model_source_gguf_kept_4bit(o.model, block_types);
    mo.gguf_kept_values = k.values;
    mo.gguf_kept_constant_bytes = k.constant_bytes;
    mo.gguf_kept_q8_values = k.q8_values;
    mo.gguf_kept_block_values = k.block_values;
    mo.gguf_kept_block_bytes = k.block_bytes;
  }
  if (o.gpus < 1) qlora::fail("--gpus", "must be >= 1");
  mo.gpus = o.gpus;
  if (!o.lora_dtype.empty()) {
    if (o.lora_dtype == "fp32") mo.lora_param_bytes = 4;
    else if (o.lora_dtype == "bf16" || o.lora_dtype == "fp16") mo.lora_param_bytes = 2;
    else qlora::fail("--lora-dtype", "use fp32, bf16 or fp16");
  }
  return mo;
}

int run(const Options& o) {
  if (o.table) {
    std::vector<qlora::PublishedRow> table = qlora::published_table();
    std::vector<qlora::PublishedRow> head = qlora::qlora_paper_headline_rows();
    qlora::evaluate_published_rows(table);
    qlora::evaluate_published_rows(head);
    if (o.json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto* rows : {&table, &head})
        for (const qlora::PublishedRow& r : *rows)
          j.push_back({{"model", r.model},
                       {"gpu", r.gpu_name},
                       {"gpu_bytes", r.gpu_bytes * static_cast<uint64_t>(r.gpus)},
                       {"method", r.method},
                       {"seq_len", r.seq_len},
                       {"published_fits", r.published_fits},
                       {"predicted_fits", r.predicted_fits},
                       {"predicted_peak_bytes", r.predicted_peak},
                       {"explanation", r.explanation}});
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      std::fputs(qlora::published_table_text(table, head).c_str(), stdout);
    }
    return 0;
  }
  const ResolvedModel m = resolve_model(o);
  qlora::MemoryOptions mo = memory_options(o, m);
  // No checkpointing flag: what `qlora train` would choose here (this program on this
  // machine's CPU; other engines keep it on, as their own recipes do).
  std::string auto_why;
  if (!o.grad_checkpointing && mo.mode == qlora::MemoryMode::Train) {
    if (mo.engine == qlora::MemoryEngine::Qlora)
      mo.checkpointing = qlora::cli::auto_checkpointing(m.spec, mo, false, o.gpu_memory, &auto_why);
    else
      auto_why = "on (the default for this engine)";
  }
  const qlora::MemoryPlan plan = qlora::plan_memory(m.spec, mo);
  const uint64_t limit = o.gpu_memory.empty() ? 0 : qlora::parse_memory_size(o.gpu_memory, "--gpu-memory");
  if (o.json) {
    nlohmann::json j = plan.to_json(limit);
    j["model"] = m.name;
    if (!auto_why.empty()) j["gradient_checkpointing_auto"] = auto_why;
    if (!m.notice.empty()) j["model_notice"] = m.notice;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("model: %s\n", m.name.c_str());
    if (!m.notice.empty()) std::printf("warning: %s\n", m.notice.c_str());
    if (!auto_why.empty()) std::printf("gradient checkpointing: %s\n", auto_why.c_str());
    std::fputs(plan.to_text(limit, o.gpu_memory).c_str(), stdout);
  }
  return 0;
}

const bool kRegistered = qlora::cli::register_command(
    "memory", "Predict the peak memory of a train/generate run from the model's headers (will it fit?)",
    [](CLI::App& app) -> qlora::cli::Action {
      auto o = std::make_shared<Options>();
      app.add_option("--model,-m", o->model,
                     "Model: Hugging Face directory, config.json, .safetensors, .gguf, llama2.c .bin (headers "
                     "only), or random:PRESET / random:key=value,... (a shape; nothing generated)");
      app.add_option("--params", o->params, "LLaMA-1 shapes instead of a model: 7B, 13B, 33B, 65B");
      app.add_option("--tokenizer", o->tokenizer, "Tokenizer, as for train/generate (only to open the model)");
      app.add_option("--quant", o->quant, "Linear layer storage: none, nf4, fp4 (int8: pytorch-cuda engine)")
          ->capture_default_str();
      qlora::cli::add_bool_flag(app, "--double-quant", o->double_quant,
                                "Quantize the absmax constants too (8-bit, blocks of 256)");
      qlora::cli::add_bool_flag(app, "--dense-head", o->dense_head,
                                "As train/generate: the embedding / output head widened to the compute dtype (not kept 16-bit, 8-bit or as a GGUF's blocks)");
      qlora::cli::add_bool_flag(app, "--requantize-gguf", o->requantize_gguf,
                                "As train/generate: a GGUF's 4-bit and Q8_0 linears re-quantized per --quant instead of kept as stored");
      qlora::cli::add_bool_flag(app, "--gguf-compact", o->gguf_compact,
                                "As train/generate: a GGUF's Q6_K / Q5_K / Q5_1 / Q5_0 linears and head kept as the file's "
                                "blocks instead of 8-bit");
      qlora::cli::add_bool_flag_pair(
          app, "--int8-activations", "--no-int8-activations", [o](bool on) { o->int8_activations = on; },
          "As generate's (its default for a GGUF with --mode generate: on, which keeps Q6_K / Q5_K as the file's blocks)",
          "As generate's: float32 activations (a GGUF's Q6_K / Q5_K become Q8_0 of their values)");
      app.add_option("--blocksize", o->blocksize, "4-bit block size (32..4096)")->capture_default_str();
      app.add_option("--compute-dtype", o->compute_dtype,
                     "fp32, bf16 or fp16 (default: what the command would use: fp32, or for train on the CPU bf16 "
                     "where AMX tiles multiply it)");
      app.add_option("--threads,-t", o->threads, "Threads the run will use (default: all cores)");
      app.add_option("--mode", o->mode, "train or generate")->capture_default_str();
      app.add_option("--engine", o->engine,
                     "qlora (this program, CPU RAM), qlora-cuda (this program's GPU memory, as --device cuda) or "
                     "pytorch-cuda (transformers+PEFT+bitsandbytes on a GPU)")
          ->capture_default_str();
      app.add_option("--device", o->device, "cuda: plan this program's GPU memory (= --engine qlora-cuda)");
      app.add_option("--lora-r", o->lora_r, "LoRA rank")->capture_default_str();
      app.add_option("--target", o->target, "all-linear, or comma-separated module names (q_proj,v_proj)")
          ->capture_default_str();
      app.add_option("--target-parameters", o->target_parameters,
                     "Mixture-of-experts models: parameters adapted directly, as train's (gate_up_proj,down_proj: "
                     "the experts -- up_proj,down_proj for Nemotron 3's; gate.weight / router.weight: the router)");
      app.add_option("--lora-dropout", o->lora_dropout, "LoRA dropout (> 0 keeps dropout masks)")
          ->capture_default_str();
      app.add_option("--lora-dtype", o->lora_dtype, "pytorch-cuda: LoRA parameter dtype, fp32 (PEFT) or bf16");
      qlora::cli::add_bool_flag(app, "--with-adapter", o->with_adapter,
                                "generate: count a LoRA adapter of --lora-r/--target");
      app.add_option("--batch-size", o->batch_size, "Sequences per micro-batch (train); sequences decoded at once (--mode generate: serve --parallel)")->capture_default_str();
      app.add_option("--seq-len", o->seq_len, "Tokens per training sequence")->capture_default_str();
      qlora::cli::add_bool_flag_pair(app, "--gradient-checkpointing,--grad-checkpointing",
                                     "--no-gradient-checkpointing", [o](bool on) { o->grad_checkpointing = on; },
                                     "As `qlora train`: gradient checkpointing (default: as train, auto for this "
                                     "program on the CPU, on for the GPU engines)",
                                     "As `qlora train`: gradient checkpointing off");
      app.add_option("--optim", o->optim, "adamw_torch, adamw_8bit, paged_adamw_32bit, paged_adamw_8bit")
          ->capture_default_str();
      app.add_option("--data", o->data, "Training data file (its size bounds the token buffer)");
      app.add_option("--prompt-len", o->prompt_len, "generate: prompt tokens")->capture_default_str();
      app.add_option("--kv-cache", o->kv_cache, "generate: the KV cache's storage, auto, f32, bf16 or f16 (as generate's)")
          ->capture_default_str();
      app.add_option("-n,--n-predict", o->n, "generate: new tokens")->capture_default_str();
      app.add_option("--gpu-memory,--max-memory", o->gpu_memory,
                     "Memory available (per GPU): 16GB, 15GiB, T4, ...; prints a verdict with the margin");
      app.add_option("--gpus", o->gpus, "pytorch-cuda: GPUs the model is split over")->capture_default_str();
      qlora::cli::add_bool_flag(app, "--json", o->json, "Machine-readable output");
      qlora::cli::add_bool_flag(app, "--table", o->table,
                                "Print Hugging Face's published QLoRA memory table with the planner's verdict per row");
      CLI::Option* dropout = app.get_option("--lora-dropout");
      return [o, dropout] {
        o->lora_dropout_given = dropout->count() > 0;
        return run(*o);
      };
    });

}  // namespace
