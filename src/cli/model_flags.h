#pragma once
// The flags every command that loads a model shares (generate, train, and later eval and
// memory), so their names, defaults and validation stay the same everywhere.
#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "formats/model_loader.h"
#include "memory/memory_plan.h"
#include "model/model.h"
#include "lora/adapter_loader.h"

namespace qlora::cli {

struct ModelFlags {
  std::string model, tokenizer;
  std::string quant = "nf4";
  bool double_quant = false;
  int blocksize = 64;
  float int8_threshold = 6.0f;  // LLM.int8's outlier threshold (--int8-threshold)
  std::string compute_dtype = "fp32";
  int threads = 0;
  bool allow_unused_tensors = false;  // tensors the model does not use: warn instead of refusing
  bool dense_head = false;            // --dense-head: a GGUF's Q8_0 embedding/head widened (ModelLoadOptions)
  bool requantize_gguf = false;       // --requantize-gguf: a GGUF's 4-bit / Q8_0 linears re-quantized (ModelLoadOptions::keep_gguf_weights)
  bool gguf_compact = false;          // --gguf-compact: a GGUF's Q6_K / Q5_K / Q5_1 as its blocks (ModelLoadOptions::gguf_compact)
  std::string device = "cpu";         // --device (commands that offer it: add_device_flag)
  // --int8-activations / --no-int8-activations (decoding commands: add_decode_flags); unset:
  // on for a GGUF file decoded on the CPU with its weights as stored and fp32 compute (llama.cpp's
  // products, what its users expect), off otherwise (bitsandbytes' numbers). load_options decides.
  std::optional<bool> int8_activations;
  bool decodes = false;               // add_decode_flags was called (the default above applies)
  std::string kv_cache = "auto";      // --kv-cache (decoding commands: add_decode_flags)
};

// Throws Error naming --threads unless `threads` is 0 (all cores) or 1 .. the most a run takes:
// 8 threads per core of this machine, at least 64 (more only contend for the cores, and thousands
// fail to start in the OpenMP runtime or crash inside a threaded GEMM). For a plan of another
// machine (`for_this_machine` false: qlora memory) the bound is 4096.
void check_thread_count(int threads, bool for_this_machine = true);

// Adds --model/-m (required), --tokenizer, --quant, --double-quant, --blocksize, --int8-threshold,
// --compute-dtype (described by `compute_help`), --threads/-t, --allow-unused-tensors and --dense-head.
void add_model_flags(CLI::App& app, ModelFlags& f, const std::string& compute_help);

// Adds --int8-activations / --no-int8-activations (ModelLoadOptions::int8_activations; unset:
// on for GGUF files, see ModelFlags) and --kv-cache (ModelLoadOptions::kv_cache_dtype) for the
// commands that decode: generate, chat, serve.
void add_decode_flags(CLI::App& app, ModelFlags& f);

// --kv-cache's value: f32/fp32, bf16, f16/fp16, or auto (the default): the compute dtype, whose
// keys and values the cache then holds exactly (a bf16 or f16 cache at half the memory), and
// float32 on a GPU (`cuda`), which keeps no other. Error naming --kv-cache for anything else,
// or for a 16-bit cache asked for on a GPU.
ComputeDType kv_cache_dtype_from_flag(const std::string& value, ComputeDType compute, bool cuda);

// "q_proj,v_proj" -> {"q_proj", "v_proj"} (empty items dropped): --target and friends.
std::vector<std::string> split_commas(const std::string& s);

// Validates the flags (throws Error naming the flag), applies --threads, and returns the
// load options they describe.
ModelLoadOptions load_options(const ModelFlags& f);

// For a random model with 1e9 parameters or more (generating them takes a while), sets
// load.progress to draw a "random weights" progress bar over its tensors, unless `quiet`.
// Models read from files load without one, as before.
void add_load_progress(ModelLoadOptions& load, const ModelFiles& files, bool quiet);

// --device cpu|cuda|cuda:N: where the forward pass runs (generate, chat).
void add_device_flag(CLI::App& app, ModelFlags& f);

// Moves the model's forward pass to --device when it is not the CPU and, unless `quiet`,
// says where it runs: the llama CUDA runner (the weights, and the adapter attached now, are
// copied to the GPU: attach the adapter first) or the block interpreter on the CUDA backend
// (model/device_runner.h choose_cuda_engine, QLORA_CUDA_ENGINE). Throws Error for an unknown
// device or one the build lacks.
void attach_device(Model& model, const ModelFlags& f, bool quiet);

// `qlora train`'s compute dtype when --compute-dtype is not given (on the CPU): "bf16" where
// the bf16 products run on a bf16 unit, AMX tiles or AVX-512 BF16 dot products (model/gemm_bf16.h
// gemm_bf16_fast), else "fp32";
// `why` gets the line the command prints ("bf16 (auto: ...)").
std::string auto_train_compute_dtype(std::string* why);

// The memory planner's engine for --device cuda runs of `spec` (with LLM.int8 weights or not):
// the one attach_device takes.
MemoryEngine cuda_memory_engine(const ModelSpec& spec, bool int8_weights = false);

// Before loading: does the run described by `mo` fit? On the CPU against --max-memory
// (`max_memory`) when given, else against the memory available now (MemAvailable; skipped
// where the planner cannot plan the model); with --device cuda on the GPU (the engine the run
// takes: cuda_memory_engine) against the card's free memory and --max-memory, whichever is
// less.
// Throws Error with the plan's breakdown when it does not fit. `what`: "qlora train".
void check_memory_fits(const ModelSpec& spec, MemoryOptions mo, const ModelFlags& f, const std::string& max_memory,
                       const std::string& what);
// Gradient checkpointing when the command line asked for none (`train` and `memory --mode
// train`): off when the run fits without it — in --max-memory when given (`max_memory`),
// else in half of the memory available now — since recomputing every block's forward costs
// about a quarter of a step; on otherwise, and always on with --device cuda (the card's
// memory is the scarce thing QLoRA is for). `why` gets the reason, for the user.
bool auto_checkpointing(const ModelSpec& spec, MemoryOptions mo, bool cuda, const std::string& max_memory,
                        std::string* why);
// True when `qlora chat` and `qlora serve` check their plans (sized for a whole context or
// --parallel answers of --max-tokens, which the KV cache, grown on demand, rarely reaches):
// --max-memory given or a GPU device. generate and train always do.
bool wants_memory_check(const ModelFlags& f, const std::string& max_memory);

// After a run on a device: "GPU memory: peak X MiB (CUDA context Y MiB + buffers Z MiB)"
// on stderr (nothing on the CPU or when quiet).
void report_device_memory(const Model& model, bool quiet);

// --adapter DIR: a PEFT LoRA adapter applied unmerged (generate, chat, eval).
void add_adapter_flag(CLI::App& app, std::string& dir);

// Says what was opened: "model: PATH (FORMAT) SUMMARY" on stderr unless `quiet`, and for a
// random model (random:...) its notice, "warning: random weights (...): NOT a trained model
// — for speed and memory measurements only", even when quiet: nothing measured or trained
// on one may pass for a real model's.
void report_model(const ModelFiles& files, bool quiet);

// "nf4+dq", "int8", "dense": how the flags store the Linear weights, for log lines.
std::string weights_description(const ModelFlags& f);
// The same for a loaded model, naming the GGUF 4-bit types its block linears keep as stored
// (formats/ggml_as_4bit.h) and the other types it keeps as stored: "Q4_1 (GGUF, as
// stored: 210 linears)", "8-bit/Q4_K/Q6_K (GGUF, ...)", or "nf4 + IQ4_NL/IQ4_XS (GGUF, as stored:
// 207 of 210 linears)" when some are re-quantized.
std::string weights_description(const ModelFlags& f, const Model& m);
// ", decoding on 8-bit activations ..." when block linears of `m` decode so (how many, if not
// all), saying whether by default (a GGUF file) and how to turn it off; "" otherwise. For the
// "loaded in" line.
std::string int8_activations_note(const ModelFlags& f, const Model& m);

// Loads the PEFT adapter in `dir` against `model` (lora/adapter_loader.h) and, unless
// `quiet`, prints its summary line. The caller attaches it where it will keep it:
// model.set_adapter(adapter.lora.get()) (the pointer must not outlive `adapter`).
LoadedAdapter load_adapter_reporting(const Model& model, const std::string& dir, bool quiet);

}  // namespace qlora::cli
