#include "cli/model_flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

#include <omp.h>

#include "base/error.h"
#include "base/process_memory.h"
#include "base/progress.h"
#include "base/text_excerpt.h"
#include "cli/bool_flags.h"
#include "model/gemm_bf16.h"
#include "quant/blockwise.h"

namespace qlora::cli {

void add_model_flags(CLI::App& app, ModelFlags& f, const std::string& compute_help) {
  app.add_option("--model,-m", f.model,
                 "Model: Hugging Face directory, .safetensors, .gguf or llama2.c .bin; or random:PRESET / "
                 "random:hidden=N,layers=N,ffn=N,heads=N,vocab=N[,kv_heads,tied,max_pos,rope_theta,seed]: "
                 "random weights of that shape (speed and memory measurements only; see README)")
      ->required();
  app.add_option("--tokenizer", f.tokenizer, "Tokenizer (directory, tokenizer.json, llama2.c .bin, .gguf)");
  app.add_option("--quant", f.quant,
                 "Linear layer storage: none, nf4, fp4, int8 (LLM.int8: 8-bit rows, outlier features in full precision)")
      ->capture_default_str();
  app.add_option("--int8-threshold", f.int8_threshold,
                 "int8: activations with |x| >= this make their feature column run in full precision (0: off)")
      ->capture_default_str();
  add_bool_flag(app, "--double-quant", f.double_quant, "Quantize the absmax constants too (8-bit, blocks of 256)");
  app.add_option("--blocksize", f.blocksize, "4-bit block size (32..4096)")->capture_default_str();
  app.add_option("--compute-dtype", f.compute_dtype, compute_help)->capture_default_str();
  app.add_option("--threads,-t", f.threads, "Threads (default: all cores)");
  add_bool_flag(app, "--allow-unused-tensors", f.allow_unused_tensors,
                "Load a model file holding tensors the model does not use (a warning instead of an error)");
  add_bool_flag(app, "--dense-head", f.dense_head,
                "Widen the token embedding / output head to the compute dtype (by default, with fp32 compute, a "
                "bf16 / fp16 one stays in its 16 bits, its values exactly; a GGUF's stays as stored when Q8_0, Q3_K "
                "or Q2_K (Q6_K, Q5_K, Q5_1 and Q5_0 too when decoding on 8-bit activations or with --gguf-compact), and "
                "other types are re-quantized to Q8_0: a quarter of float32's bytes per token or less)");
  add_bool_flag(app, "--requantize-gguf", f.requantize_gguf,
                "Re-quantize a GGUF's linears (Q4_0, Q4_1, Q4_K, IQ4_NL, IQ4_XS, MXFP4, Q2_K, Q3_K, Q5_x, Q6_K, Q8_0) "
                "per --quant from their values, as transformers + bitsandbytes do with a GGUF (their numbers bit for "
                "bit); by default they are kept as stored: the 4-bit ones always, and with fp32 compute on the CPU "
                "Q3_K and Q2_K as the file's blocks, Q8_0 as 8-bit blocks (all llama.cpp's values exactly), Q6_K, "
                "Q5_K, Q5_1 and Q5_0 as the file's blocks when decoding on 8-bit activations (the GGUF default of "
                "generate / chat / serve), else as 8-bit (Q5_0 exactly, the others Q8_0 of their values; as "
                "stored: --gguf-compact)");
  add_bool_flag(app, "--gguf-compact", f.gguf_compact,
                "Keep a GGUF's Q6_K, Q5_K, Q5_1 and Q5_0 linears and head as the file's blocks (exactly "
                "llama.cpp's values, the file's size) instead of 8-bit (9 bits a value: Q5_0 exactly, the others "
                "Q8_0 of their values, within half an 8-bit step) on float activations too: 24-40% fewer bytes. Decoding on 8-bit "
                "activations (the GGUF default) keeps them so anyway, where their products are as fast or faster; "
                "on float activations (train, eval, --no-int8-activations) they ran 1.4-1.5x slower on a 2-core "
                "Zen 3 (bench/RESULTS.md)");
}

namespace {
// Whether `path` is a GGUF file (false for anything unreadable: opening the model says why).
bool is_gguf_file(const std::string& path) {
  try {
    return detect_model_format(path) == ModelFormat::Gguf;
  } catch (const Error&) {
    return false;
  }
}
}  // namespace

void check_thread_count(int threads, bool for_this_machine) {
  if (threads < 0) fail("--threads", "must be >= 0 (0: all cores)");
  const int cores = std::max(1, omp_get_num_procs());
  const int most = for_this_machine ? std::max(64, 8 * cores) : 4096;
  if (threads > most)
    fail("--threads", std::to_string(threads) + " is more than this command takes (" + std::to_string(most) +
                          (for_this_machine ? ": 8 per core of this machine's " + std::to_string(cores) + ", at least 64"
                                            : "") +
                          "); 0 uses every core");
}

ModelLoadOptions load_options(const ModelFlags& f) {
  check_thread_count(f.threads);
  if (f.threads > 0) omp_set_num_threads(f.threads);
  // --device is checked before anything is loaded (the runner is made after loading).
  if (f.int8_activations.value_or(false) && parse_device(f.device).cuda)
    fail("--int8-activations", "is a CPU decoding mode; --device cuda decodes on the GPU's own kernels");
  ModelLoadOptions load;
  load.compute_dtype = compute_dtype_from_string(f.compute_dtype);
  load.kv_cache_dtype = kv_cache_dtype_from_flag(f.kv_cache, load.compute_dtype, parse_device(f.device).cuda);
  check_device_available(parse_device(f.device));
  load.allow_unused_tensors = f.allow_unused_tensors;
  load.keep_q8_0_head = !f.dense_head;
  load.keep_gguf_weights = !f.requantize_gguf;
  load.keep_gguf_blocks = !parse_device(f.device).cuda;
  load.gguf_compact = f.gguf_compact;
  if (f.int8_activations.value_or(false) && (f.quant == "none" || f.quant == "int8"))
    fail("--int8-activations", "decodes 4-bit weights (--quant nf4 or fp4), not --quant " + f.quant);
  // Unset: a GGUF's weights kept as stored decode as llama.cpp multiplies them (8-bit
  // activations: Q8_K for the K-quants, Q8_0 for the rest), on the CPU with fp32 compute.
  load.int8_activations_gguf_only = !f.int8_activations.has_value();
  load.int8_activations = f.int8_activations.value_or(
      f.decodes && is_gguf_file(f.model) && !parse_device(f.device).cuda && !f.requantize_gguf &&
      load.compute_dtype == ComputeDType::F32 && (f.quant == "nf4" || f.quant == "NF4" || f.quant == "fp4" || f.quant == "FP4"));
  if (!(f.int8_threshold >= 0.0f)) fail("--int8-threshold", "must be >= 0");
  load.quant.int8_threshold = f.int8_threshold;
  if (f.quant == "none") {
    load.quant.quantize = false;
  } else if (f.quant == "int8") {
    // LLM.int8 has no blocks and no double quantization: say so rather than ignore them.
    if (f.double_quant) fail("--double-quant", "applies to nf4/fp4 only, not --quant int8");
    load.quant.int8 = true;
  } else {
    if (f.quant != "nf4" && f.quant != "fp4" && f.quant != "NF4" && f.quant != "FP4")
      fail("--quant", "unknown value " + excerpt(f.quant) + " (expected none, nf4, fp4 or int8)");
    load.quant.type = quant_type_from_string(f.quant, "--quant");
    check_blocksize(f.blocksize, "--blocksize");
    load.quant.blocksize = f.blocksize;
    load.quant.double_quant = f.double_quant;
  }
  return load;
}

void add_decode_flags(CLI::App& app, ModelFlags& f) {
  f.decodes = true;
  add_bool_flag_pair(
      app, "--int8-activations", "--no-int8-activations", [&f](bool on) { f.int8_activations = on; },
      "Decode on 8-bit activations with integer dot products, as llama.cpp does (faster on CPUs; not "
      "bitsandbytes' exact numbers: activations rounded to 1/127 of their block's largest, NF4/FP4 codes too). "
      "Products of up to 8 tokens (decoding, batched decoding, short prompts) use it; longer prompts run the "
      "exact product. Default: on for a GGUF file's weights kept as stored, on the CPU with fp32 compute "
      "(not with --requantize-gguf or --quant none/int8): llama.cpp's own products, Q8_K activations for the "
      "K-quants, Q8_0 for the others; off otherwise",
      "Decode on float32 activations even for a GGUF file (products of its exact values; slower on CPUs)");
  app.add_option("--kv-cache", f.kv_cache,
                 "Keys and values kept for the tokens so far: auto (the compute dtype, which the cache then holds "
                 "exactly: fp32, or bf16 / f16 at half the memory), f32, or bf16 / f16 with float32 compute, each "
                 "value rounded to 16 bits (half the memory; llama.cpp keeps f16)")
      ->capture_default_str();
}

void add_device_flag(CLI::App& app, ModelFlags& f) {
  app.add_option("--device", f.device,
                 "Where the forward pass runs: cpu, or cuda / cuda:N (NVIDIA GPU; builds with -DQLORA_CUDA=ON)")
      ->capture_default_str();
}

ComputeDType kv_cache_dtype_from_flag(const std::string& value, ComputeDType compute, bool cuda) {
  ComputeDType t;
  if (value == "auto")
    return cuda ? ComputeDType::F32 : compute;
  else if (value == "f32" || value == "fp32")
    t = ComputeDType::F32;
  else if (value == "bf16")
    t = ComputeDType::BF16;
  else if (value == "f16" || value == "fp16")
    t = ComputeDType::F16;
  else
    fail("--kv-cache", "unknown value " + excerpt(value) + " (expected auto, f32, bf16 or f16)");
  if (t != ComputeDType::F32 && cuda)
    fail("--kv-cache", "16-bit caches are a CPU option; --device cuda keeps its keys and values in float32");
  return t;
}

std::string auto_train_compute_dtype(std::string* why) {
  if (gemm_bf16_fast()) {
    *why = std::string("bf16 (auto: this CPU multiplies bf16 on ") + gemm_bf16_backend_name() +
           (gemm_bf16_split_x_fast() ? "" : ", the input gradients on the gradient rounded to bf16 as bitsandbytes does") +
           "; --compute-dtype fp32 for float32)";
    return "bf16";
  }
  *why = "fp32 (auto: no AMX tiles or AVX-512 BF16 on this CPU; --compute-dtype bf16 rounds as bitsandbytes' bf16 "
         "compute does)";
  return "fp32";
}

MemoryEngine cuda_memory_engine(const ModelSpec& spec, bool int8_weights) {
  const char* env = std::getenv("QLORA_CUDA_ENGINE");
  return choose_cuda_engine(spec, env ? env : "", int8_weights) == CudaEngine::Runner ? MemoryEngine::QloraCuda
                                                                                       : MemoryEngine::QloraCudaBackend;
}

void attach_device(Model& model, const ModelFlags& f, bool quiet) {
  const DeviceChoice d = parse_device(f.device);
  if (!d.cuda) return;
  if (model.spec().moe())  // (model/moe_block.h routes on the host)
    fail("--device " + f.device, model.spec().family +
                                     " is a mixture-of-experts model, which runs on the CPU only for now: use --device cpu");
  if (model.spec().act == Activation::Xielu)  // (no CUDA xIELU kernel yet)
    fail("--device " + f.device, model.spec().family + "'s xIELU activation runs on the CPU only for now: use --device cpu");
  const char* env = std::getenv("QLORA_CUDA_ENGINE");
  const CudaEngine engine = choose_cuda_engine(model.spec(), env ? env : "", model.quant().int8);
  if (engine == CudaEngine::Runner) {
    model.set_runner(make_cuda_runner(model, d.index));
    if (!quiet)
      std::fprintf(stderr, "device: %s (%s), %.1f MiB of weights on the GPU\n", model.runner()->describe().c_str(),
                   cuda_engine_name(engine), static_cast<double>(model.runner()->device_bytes()) / (1024.0 * 1024.0));
    return;
  }
  // The backend copies each weight to the GPU the first time an op names it.
  model.set_backend(make_cuda_backend(d.index));
  if (!quiet)
    std::fprintf(stderr, "device: %s (%s; weights go to the GPU as the first forward uses them)\n",
                 model.backend().describe().c_str(), cuda_engine_name(engine));
}

bool auto_checkpointing(const ModelSpec& spec, MemoryOptions mo, bool cuda, const std::string& max_memory,
                        std::string* why) {
  if (cuda) {
    *why = "on (auto: --device cuda)";
    return true;
  }
  const uint64_t limit = max_memory.empty() ? 0 : parse_memory_size(max_memory, "--max-memory");
  const uint64_t budget = limit ? limit : static_cast<uint64_t>(std::max<int64_t>(available_memory_bytes(), 0)) / 2;
  const std::string budget_text =
      limit ? "--max-memory " + format_gb(limit) : "half of the " + format_gb(2 * budget) + " available";
  if (budget == 0) {
    *why = "on (auto: how much memory is available is unknown; --no-gradient-checkpointing turns it off)";
    return true;
  }
  mo.checkpointing = false;
  const uint64_t without = plan_memory(spec, mo).required_bytes;
  if (without <= budget) {
    *why = "off (auto: the run needs " + format_gb(without) + " without it, within " + budget_text +
           "; --gradient-checkpointing turns it on)";
    return false;
  }
  *why = "on (auto: " + format_gb(without) + " without it would exceed " + budget_text + ")";
  return true;
}

bool wants_memory_check(const ModelFlags& f, const std::string& max_memory) {
  return !max_memory.empty() || parse_device(f.device).cuda;
}

void check_memory_fits(const ModelSpec& spec, MemoryOptions mo, const ModelFlags& f, const std::string& max_memory,
                       const std::string& what) {
  const uint64_t limit = max_memory.empty() ? 0 : parse_memory_size(max_memory, "--max-memory");
  const DeviceChoice d = parse_device(f.device);
  if (!d.cuda) {
    if (limit) return check_fits(plan_memory(spec, mo), limit, what);
    // Without --max-memory: against the memory available now, so that a run that cannot fit
    // is refused with the breakdown before minutes of loading end in swapping or the OOM
    // killer. (A plan the planner cannot make leaves the run to its own checks.)
    const int64_t avail = available_memory_bytes();
    if (avail <= 0) return;
    MemoryPlan plan;
    try {
      plan = plan_memory(spec, mo);
    } catch (const Error&) {
      return;
    }
    if (plan.required_bytes > static_cast<uint64_t>(avail))
      fail(what, "needs " + format_gb(plan.required_bytes) + " resident at its peak, more than the " +
                     format_gb(static_cast<uint64_t>(avail)) +
                     " of memory available now (refusing to start: the breakdown below says what takes it; "
                     "--max-memory SIZE checks against SIZE instead)\n" +
                     plan.to_text());
    return;
  }
  mo.engine = cuda_memory_engine(spec, mo.weights == WeightFormat::Int8);
  mo.ple_bytes = 0;  // (the CPU loader's forms: the CUDA engines' plans keep their own)
  mo.source_reads_rows = mo.embed_16bit = mo.head_16bit = false;
  const MemoryPlan plan = plan_memory(spec, mo);
  if (limit) check_fits(plan, limit, what + " --device " + d.name());
  // Asking for the free memory creates this process's CUDA context, so what is free now
  // excludes it, while the plan counts it: compare the rest.
  uint64_t free_b = 0, total_b = 0;
  const uint64_t beyond_context =
      plan.required_bytes > kQloraCudaContextBytes ? plan.required_bytes - kQloraCudaContextBytes : 0;
  if (device_free_memory(d, &free_b, &total_b) && beyond_context > free_b)
    fail(what + " --device " + d.name(),
         "needs " + format_gb(beyond_context) + " of GPU memory besides its CUDA context, more than the " +
             format_gb(free_b) + " free on " + d.name() + " (of " + format_gb(total_b) +
             "); a shorter --seq-len or --batch-size, or --quant nf4 --double-quant, needs less:\n" + plan.to_text());
}

void report_device_memory(const Model& model, bool quiet) {
  if (quiet) return;
  uint64_t context = 0, buffers = 0;
  if (const DeviceRunner* dev = model.runner()) {
    const DeviceRunner::Memory m = dev->device_memory();
    context = m.context;
    buffers = m.buffers_peak;
  } else if (!model.backend().host_addressable()) {
    const Backend::Memory m = model.backend().memory();
    context = m.context;
    buffers = m.peak;
  } else {
    return;
  }
  constexpr double kMiB = 1024.0 * 1024.0;
  std::fprintf(stderr, "GPU memory: peak %.1f MiB (CUDA context %.1f MiB + buffers %.1f MiB)\n",
               static_cast<double>(context + buffers) / kMiB, static_cast<double>(context) / kMiB,
               static_cast<double>(buffers) / kMiB);
}

void add_adapter_flag(CLI::App& app, std::string& dir) {
  app.add_option("--adapter", dir,
                 "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as written by "
                 "`qlora train` or PEFT), applied unmerged");
}

void report_model(const ModelFiles& files, bool quiet) {
  if (!quiet)
    std::fprintf(stderr, "model: %s (%s) %s\n", files.path.c_str(), model_format_name(files.format),
                 files.spec.summary().c_str());
  if (!files.notice.empty()) std::fprintf(stderr, "warning: %s\n", files.notice.c_str());
}

void add_load_progress(ModelLoadOptions& load, const ModelFiles& files, bool quiet) {
  if (quiet || files.format != ModelFormat::Random || files.spec.num_params() < 1000000000) return;
  std::shared_ptr<ProgressBar> bar;  // made on the first tensor, so its clock starts with the load
  load.progress = [bar](int64_t done, int64_t total, const std::string&) mutable {
    if (!bar) bar = std::make_shared<ProgressBar>(total, "random weights", "tensors");
    bar->update(done);
    if (done == total) bar->finish();
  };
}

std::string weights_description(const ModelFlags& f) {
  return f.quant == "none" ? "dense" : f.quant + (f.double_quant ? "+dq" : "");
}

std::string weights_description(const ModelFlags& f, const Model& m) {
  std::map<std::string, int64_t> kept;
  int64_t total = 0;
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kBlockLinearCount; ++w) {
      if (!m.spec().layer_has_linear(l, w) || m.block_linear(l, w).out_features() == 0) continue;
      ++total;
      const QuantLinear& lin = m.block_linear(l, w);
      if (const Quantized4bit* q = lin.q4(); q && !q->state.ggml_source.empty()) ++kept[q->state.ggml_source];
      if (lin.dense() && lin.dense()->q8()) ++kept["8-bit"];  // (a GGUF Q8_0 / Q5_0 Linear kept 8-bit)
      if (lin.dense() && lin.dense()->gguf_blocks()) ++kept[std::string(ggml_type_name(lin.dense()->gguf_type()))];
    }
  std::string s = weights_description(f);
  if (kept.empty()) return s;
  std::string types;
  int64_t n = 0;
  for (const auto& [t, c] : kept) {
    types += (types.empty() ? "" : "/") + t;
    n += c;
  }
  if (n == total) return types + " (GGUF, as stored: " + std::to_string(n) + " linears)";
  return s + " + " + types + " (GGUF, as stored: " + std::to_string(n) + " of " + std::to_string(total) + " linears)";
}

std::string int8_activations_note(const ModelFlags& f, const Model& m) {
  int64_t n = 0, total = 0;
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kBlockLinearCount; ++w) {
      if (!m.spec().layer_has_linear(l, w) || m.block_linear(l, w).out_features() == 0) continue;
      ++total;
      n += m.block_linear(l, w).decodes_on_int8();
    }
  if (n == 0) return "";
  const std::string count = n == total ? "" : std::to_string(n) + " of " + std::to_string(total) + " linears; ";
  if (f.int8_activations.value_or(false)) return ", decoding on 8-bit activations" + (count.empty() ? "" : " (" + count.substr(0, count.size() - 2) + ")");
  return ", decoding on 8-bit activations as llama.cpp (" + count + "the GGUF default, --no-int8-activations: float32)";
}

LoadedAdapter load_adapter_reporting(const Model& model, const std::string& dir, bool quiet) {
  LoadedAdapter adapter = load_adapter(dir, model);
  if (!quiet) {
    const LoraConfig& lc = adapter.lora->config();
    std::fprintf(stderr, "adapter: %s: LoRA r %d, alpha %g (scaling %g), %zu modules, %lld parameters\n", dir.c_str(),
                 lc.r, lc.alpha, lc.scaling(), adapter.lora->layers().size(),
                 static_cast<long long>(adapter.lora->num_trainable()));
  }
  return adapter;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace qlora::cli
