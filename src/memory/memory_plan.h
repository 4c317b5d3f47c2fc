#pragma once
// The memory planner behind `qlora memory` and --max-memory: a pure function from a model's
// shape (ModelSpec: read from headers only, never from the weights) and the run's options
// to a named breakdown of the bytes a run holds at its peak, and the peak itself.
//
// Two engines are modelled:
//   * Engine::Qlora: this program on the CPU. Every item mirrors an allocation in the code
//     (model/model.cpp Model::load and weight_bytes(), model/quant_linear, lora/lora.cpp,
//     train/train_model.cpp TrainWorkspace, optim/, model/kv_cache, model/generate.cpp)
//     plus a measured process baseline. The quantity predicted is the resident set
//     high-water mark (VmHWM / ru_maxrss), so the load phase (the model file is mapped
//     and read once, one float32 tensor at a time) competes with the run phase; the peak
//     is the larger of the two.
//   * Engine::QloraCuda: this program with --device cuda, the GPU's memory: every item
//     mirrors a device allocation of src/cuda (cuda_runner.cpp, cuda_train.cpp), plus the
//     measured CUDA context (kQloraCudaContextBytes). The host keeps the model's CPU copy,
//     the LoRA parameters and the optimizer (the qlora engine's plan covers those).
//   * Engine::QloraCudaBackend: --device cuda through the block interpreter on the CUDA
//     backend (the engine of every family the llama runner does not run;
//     model/device_runner.h choose_cuda_engine): the context and weights as above, the
//     buffers the interpreter allocates (the qlora engine's activation, logits, KV-cache
//     and scratch items, the same declarations) and the backend's own workspaces.
//   * Engine::PytorchCuda: transformers + PEFT + bitsandbytes on one CUDA GPU (the stack
//     of Hugging Face's QLoRA announcement table): 16-bit activations of a Llama forward
//     as autograd keeps them for backward, LoRA in fp32, AdamW state, and ONE constant
//     for the CUDA context and caching-allocator overhead (kPytorchCudaOverheadBytes).
//
// Thread-safety: everything here is a pure function of its arguments.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "base/dtype.h"
#include "model/model.h"
#include "model/model_spec.h"
#include "optim/optimizer.h"
#include "quant/codebook.h"

namespace qlora {

enum class MemoryEngine { Qlora, PytorchCuda, QloraCuda, QloraCudaBackend };
enum class MemoryMode { Train, Generate };
// How the Linear layers inside the blocks are stored (--quant none|nf4|fp4|int8).
enum class WeightFormat { Dense, NF4, FP4, Int8 };

MemoryEngine memory_engine_from_string(std::string_view s);  // "qlora", "qlora-cuda", "qlora-cuda-backend", "pytorch-cuda"
const char* memory_engine_name(MemoryEngine e);
// "nf4", "fp4", "none" (dense), "int8"; throws Error naming --quant otherwise.
WeightFormat weight_format_from_string(std::string_view s);
const char* weight_format_name(WeightFormat f);

// Measured resident set of `qlora` before it allocates anything model-sized (binary, libc++,
// libgomp and its thread stacks, oneDNN, CLI11 parsing, malloc arenas): the peak RSS of
// `qlora generate` on stories260K (a 1 MB model; 13.7 MiB with this build, 2026-12-05)
// minus what this planner attributes to that model (1.4 MiB). `qlora version` alone holds
// 11.3 MiB. (It was 5.5 MiB before oneDNN was linked.) See bench/memory_validate.sh.
inline constexpr uint64_t kQloraProcessBaselineBytes = 49ull << 18;  // 12.25 MiB
// Resident bytes a tokenizer holds per vocabulary entry (token string, two hash-map
// entries, a merge rule): an estimate, checked against the SmolLM2 (49152 entries) rows of
// bench/memory_validate.sh, where it is ~3% of the peak.
inline constexpr uint64_t kTokenizerBytesPerToken = 200;
// The pytorch-cuda engine's one overhead constant: the CUDA context of torch + cuBLAS +
// bitsandbytes kernels (~0.5 GiB on a T4) and the caching allocator's slack (freed blocks
// it keeps reserved, rounding to 2 MiB segments, fragmentation from variable-length
// batches), taken as 1 GiB. Chosen once for the whole published table, not per row.
inline constexpr uint64_t kPytorchCudaOverheadBytes = 3ull << 29;  // 1.5 GiB

// What the CUDA context of `qlora` takes on the GPU before any buffer (driver context,
// kernel images of libqlora_cuda and cuBLAS, cuBLAS's handle): 594.8 MiB measured on an
// H200 with CUDA 13 (driver 580) by the runner itself (CudaRunner: total - free - our
// buffers right after creating the context, the stream and the cuBLAS handle);
// bench/RESULTS.md. Other GPUs and drivers differ by tens of MiB.
inline constexpr uint64_t kQloraCudaContextBytes = 595ull << 20;
// Our cuBLAS workspace (cuda/blas.cpp).
inline constexpr uint64_t kQloraCudaBlasWorkspaceBytes = 32ull << 20;

struct MemoryOptions {
  MemoryEngine engine = MemoryEngine::Qlora;
  MemoryMode mode = MemoryMode::Train;

  WeightFormat weights = WeightFormat::NF4;
  int blocksize = 64;
  bool double_quant = false;
  ComputeDType compute_dtype = ComputeDType::F32;

  // LoRA (train; in generate only when with_adapter).
  int lora_r = 64;
  bool all_linear = true;                  // PEFT's "all-linear"
  std::vector<std::string> target_modules;  // used when !all_linear (suffixes: q_proj, ...)
  // Mixture-of-experts models: parameters adapted directly (PEFT's target_parameters, `train
  // --target-parameters`: gate_up_proj, down_proj, gate.weight / router.weight); empty: what
  // all-linear adapts.
  std::vector<std::string> target_parameters;
  double lora_dropout = 0.05;
  bool with_adapter = false;               // generate: an adapter of this shape is applied

  // Train (batch_size also generate: sequences decoded at once, each with its own cache).
  int64_t batch_size = 1;
  int64_t seq_len = 256;
  bool checkpointing = true;
  OptimKind optim = OptimKind::AdamW32;
  uint64_t data_bytes = 0;   // size of the --data file (0: none counted)
  uint64_t data_tokens = 0;  // its tokens when known (the CLI tokenizes it); 0: estimated from data_bytes

  // Generate.
  int64_t prompt_len = 16;
  int64_t new_tokens = 128;
  // The KV cache's storage (ModelLoadOptions::kv_cache_dtype; the qlora CPU engine): F32, or
  // BF16 / F16 (2 bytes a value, plus one layer's keys and values widened to float32 while
  // attention reads them).
  ComputeDType kv_cache_dtype = ComputeDType::F32;

  // Process (qlora engine).
  int threads = 1;              // OpenMP threads: per-thread scratch scales with them
  uint64_t model_file_bytes = 0;  // bytes mapped and read while loading; 0: estimated
  // True when the source stores q/k rows in the GGUF / llama2.c rotary order, so loading
  // q/k holds a second float32 copy while un-permuting.
  bool source_permutes_qk = false;
  // A random: model (model/random_model.h): no file is mapped, and 4-bit Linears are
  // generated in 4-bit (only their float32 absmax is transient), not from a float32 copy.
  bool generated_weights = false;
  // bf16 compute multiplies on a bf16 unit (model/gemm_bf16.h gemm_bf16_fast(): the CLI
  // sets it for this host): their packing buffers are counted.
  bool bf16_tiles = false;
  // The source hands the embedding and head over a slab of rows at a time (TensorSource::
  // reads_rows: safetensors, GGUF), so a 16-bit compute dtype holds no float32 copy of them
  // while loading.
  bool source_reads_rows = false;
  // The embedding / untied head are stored in 16 bits (BF16 / F16) and stay so with fp32 compute
  // (ModelLoadOptions::keep_q8_0_head, DenseWeight::held_16bit): 2 bytes a value.
  bool embed_16bit = false, head_16bit = false;
  // Gemma 4's per-layer embedding table as loaded (model/model.h gathered_table_bytes: its
  // stored 16-bit format with fp32 compute, a GGUF's 8-bit / block forms); 0: in the compute dtype.
  uint64_t ple_bytes = 0;
  // The source's token embedding / output head are GGUF Q8_0 (or another quantized type,
  // re-quantized to it) and stay 8-bit (ModelLoadOptions::keep_q8_0_head, fp32 compute): 34
  // bytes per 32 values held as 36.
  bool embed_q8_0 = false, head_q8_0 = false;
  // Of those, one stored in a type kept as the file's blocks (Q6_K, Q5_K, ...: DenseWeight::
  // from_gguf_blocks): its bytes in the file, held as they are; 0 for Q8_0 and re-quantized ones.
  uint64_t embed_block_bytes = 0, head_block_bytes = 0;
  // A GGUF source's block linears kept in their 4-bit type (formats/ggml_as_4bit.h) when
  // quantizing (nf4, fp4 or int8 asked: stored 4-bit wins, as for bitsandbytes checkpoints):
  // how many values, and their constants' bytes (a float32 scale per 32, and a float32 minimum
  // per 32 for Q4_1 / Q4_K) in place of what --quant / --blocksize / --double-quant would take.
  uint64_t gguf_kept_values = 0, gguf_kept_constant_bytes = 0;
  // And its Q8_0 block linears kept 8-bit (float32 compute): their values (1 byte each plus a
  // float32 scale per 32) in place of the 4-bit ones.
  uint64_t gguf_kept_q8_values = 0;
  // (The block types not kept as blocks counted among them: Q8_0 of their values.)
  // And those kept as the file's blocks (gguf_type_kept_as_blocks: Q3_K, Q2_K; Q6_K, Q5_K, Q5_1,
  // Q5_0 when decoding on 8-bit activations or with --gguf-compact; float32 compute):
  // their values, and their bytes as stored, in place of 4-bit ones.
  uint64_t gguf_kept_block_values = 0, gguf_kept_block_bytes = 0;

  // pytorch-cuda: GPUs the model is split over (device_map="auto", layers balanced).
  int gpus = 1;
  // pytorch-cuda: bytes per LoRA parameter and gradient (PEFT creates LoRA in fp32; the
  // QLoRA repository casts them to bf16 with --bf16).
  int lora_param_bytes = 4;
};

struct MemoryItem {
  std::string name;
  uint64_t bytes = 0;
  std::string note;        // how it was computed / what it depends on
  bool evictable = false;  // paged: may be evicted under pressure, not part of the peak
};

struct MemoryPlan {
  std::string title;               // one line: model, engine, mode, main options
  std::vector<MemoryItem> items;   // the breakdown at the peak; non-evictable items sum to peak_bytes
  uint64_t peak_bytes = 0;
  uint64_t evictable_bytes = 0;    // paged optimizer state, outside the peak
  uint64_t load_peak_bytes = 0;    // qlora engine: the load phase's own peak
  // What must be resident for the run to succeed: the peak without the clean, reclaimable
  // pages of the mapped model file (the kernel drops them under pressure; RSS counts them)
  // and without paged optimizer state. The --max-memory check and the verdict use this.
  uint64_t required_bytes = 0;
  uint64_t run_peak_bytes = 0;     // the train/generate phase's peak
  // Activation bytes with and without gradient checkpointing (train), for comparison.
  uint64_t activations_checkpointed = 0, activations_full = 0;
  int gpus = 1;

  // The RSS high-water with paged state never evicted (no memory pressure): the paged
  // state exists only in the run phase.
  uint64_t resident_if_not_evicted() const {
    return load_peak_bytes ? std::max(load_peak_bytes, run_peak_bytes + evictable_bytes) : peak_bytes + evictable_bytes;
  }

  // Human-readable breakdown ending with the line "total peak: X.XX GB (Y.YY GiB)".
  // When limit > 0, a verdict line (fits / does not fit, margin) comes before it.
  std::string to_text(uint64_t limit = 0, std::string_view limit_name = {}) const;
  nlohmann::json to_json(uint64_t limit = 0) const;
};

// LLaMA-1 shapes from the LLaMA paper (Touvron et al. 2023, table 2): "7B", "13B", "33B"
// (alias "30B"), "65B"; vocab 32000, context 2048, untied head. Throws Error naming --params.
ModelSpec llama1_spec(std::string_view params);

MemoryPlan plan_memory(const ModelSpec& spec, const MemoryOptions& opt);

// Bytes loading `model_path` maps and reads (a directory: its *.safetensors; a file: its
// size; 0 when unknown), and whether its q/k rows come permuted (GGUF, llama2.c).
uint64_t model_source_bytes(const std::string& model_path);
bool model_source_permutes_qk(const std::string& model_path);
// Whether a GGUF at model_path stores token_embd / output in a quantized type, which the CPU
// engine holds 8-bit (Q8_0 as stored, or re-quantized to it) or, for the block types, as stored
// (false for other sources).
// (embed_block_bytes / head_block_bytes: the file's bytes of one stored in a type kept as blocks.)
struct Q8HeadTensors {
  bool embed = false, head = false;
  uint64_t embed_block_bytes = 0, head_block_bytes = 0;
};
// (which: the types the load keeps as blocks, model/model.h gguf_block_types.)
Q8HeadTensors model_source_q8_0_head(const std::string& model_path, GgufBlockTypes which);
// A GGUF's 2-D blk.* tensors in a type its loader keeps as 4-bit: their values and constant
// bytes (MemoryOptions::gguf_kept_*); zeros for other sources.
struct Gguf4bitKept {
  uint64_t values = 0, constant_bytes = 0;
  uint64_t q8_values = 0;  // Q8_0 block linears (kept 8-bit with float32 compute)
  uint64_t block_values = 0, block_bytes = 0;  // Q6_K / Q5_K / ... block linears (kept as stored, float32 compute)
};
Gguf4bitKept model_source_gguf_kept_4bit(const std::string& model_path, GgufBlockTypes which);
// What the qlora CPU loader with `load` makes of a model's tables -- the embedding, the output
// head, Gemma 4's per-layer table -- read from the source's headers (opened as the loader opens
// it, without the tokenizer: its names, its rules). No path, a random: model, or a bare
// config.json with no weights beside it, gives the defaults.
struct SourceTables {
  bool reads_rows = false;                       // MemoryOptions::source_reads_rows
  uint64_t ple_bytes = 0;                        // MemoryOptions::ple_bytes
  bool embed_16bit = false, head_16bit = false;  // MemoryOptions::embed_16bit / head_16bit
};
SourceTables model_source_tables(const std::string& model_path, const ModelLoadOptions& load);

// Planner options for the qlora engine describing a run that will load `model_path` with
// `load` (storage, blocksize, double quant, compute dtype) on `threads` threads. A random:
// model (model/random_spec.h) maps no file and sets generated_weights.
// The caller fills the mode-specific fields (seq_len, prompt_len, LoRA, ...).
MemoryOptions memory_options_for_run(const std::string& model_path, const ModelLoadOptions& load, MemoryMode mode,
                                     int threads);

// "16GB" (10^9), "15GiB", "800MB", "512MiB", "1.5G" (GiB), a plain number of bytes, or
// "T4" (15360 MiB, what nvidia-smi reports for a 16 GB T4). Throws Error naming `where`.
uint64_t parse_memory_size(std::string_view s, std::string_view where);
// "12.34 GB (11.49 GiB)"
std::string format_gb(uint64_t bytes);

// Throws Error("<what>: needs X GB at its peak, more than the --max-memory of Y GB", with
// the whole breakdown) when plan.required_bytes > limit. limit 0 means no limit.
void check_fits(const MemoryPlan& plan, uint64_t limit, std::string_view what);

// The rows of Hugging Face's QLoRA announcement table and the QLoRA paper's headline cases,
// with the planner's verdict (pytorch-cuda engine) next to the published one.
struct PublishedRow {
  std::string model;   // "7B", "13B", ...
  int gpus = 1;
  uint64_t gpu_bytes = 0;  // per GPU
  std::string gpu_name;
  std::string method;  // as published
  int64_t seq_len = 0;
  bool published_fits = true;
  MemoryOptions options;
  // Filled by evaluate_published_table:
  uint64_t predicted_peak = 0;
  bool predicted_fits = false;
  std::string explanation;  // why planner and published disagree (empty when they agree)
};
std::vector<PublishedRow> published_table();          // the 14 announcement rows
std::vector<PublishedRow> qlora_paper_headline_rows();  // 33B on 24 GB, 65B on 48 GB
void evaluate_published_rows(std::vector<PublishedRow>& rows);
std::string published_table_text(const std::vector<PublishedRow>& table, const std::vector<PublishedRow>& headline);

}  // namespace qlora
