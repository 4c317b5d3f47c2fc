// The QLoRA paper's published memory table and its headline cases, planned with the
// pytorch-cuda engine (memory/memory_plan.h: published_table, qlora_paper_headline_rows,
// evaluate_published_rows, published_table_text); split from the planner itself.
#include <cstdio>
#include <string>
#include <vector>

#include "memory/memory_plan.h"

namespace qlora {

// ---- the published table -----------------------------------------------------------------

namespace {

MemoryOptions table_options(const std::string& quant, ComputeDType cd, bool gc, bool nq, int64_t seq) {
  MemoryOptions o;
  o.engine = MemoryEngine::PytorchCuda;
  o.mode = MemoryMode::Train;
  o.weights = weight_format_from_string(quant);
  o.double_quant = nq;
  o.compute_dtype = cd;
  o.checkpointing = gc;
  o.seq_len = seq;
  o.batch_size = 1;
  // Assumed (not published): TRL's SFT example defaults r 64, alpha 16, dropout 0.05, and
  // PEFT's default targets for llama, q_proj and v_proj; AdamW 32-bit (adamw_torch).
  o.lora_r = 64;
  o.all_linear = false;
  o.target_modules = {"q_proj", "v_proj"};
  o.lora_dropout = 0.05;
  o.optim = OptimKind::AdamW32;
  o.lora_param_bytes = 4;
  return o;
}

}  // namespace

std::vector<PublishedRow> published_table() {
  const uint64_t t4 = 15360ull << 20;
  const ComputeDType bf = ComputeDType::BF16, fp = ComputeDType::F16;
  auto row = [&](const char* model, int gpus, const char* method, int64_t seq, bool fits, MemoryOptions o) {
    PublishedRow r;
    r.model = model;
    r.gpus = gpus;
    r.gpu_bytes = t4;
    r.gpu_name = std::to_string(gpus) + "xT4 16GB";
    r.method = method;
    r.seq_len = seq;
    r.published_fits = fits;
    o.gpus = gpus;
    r.options = o;
    return r;
  };
  return {
      row("7B", 1, "LLM.int8 + GC", 512, true, table_options("int8", fp, true, false, 512)),
      row("7B", 1, "LLM.int8 + GC", 1024, false, table_options("int8", fp, true, false, 1024)),
      row("7B", 1, "4-bit NF4, bf16 CD, no GC", 512, true, table_options("nf4", bf, false, false, 512)),
      row("7B", 1, "4-bit FP4, bf16 CD, no GC", 512, true, table_options("fp4", bf, false, false, 512)),
      row("7B", 1, "4-bit NF4, bf16 CD, no GC", 1024, false, table_options("nf4", bf, false, false, 1024)),
      row("7B", 1, "4-bit FP4, bf16 CD, no GC", 1024, false, table_options("fp4", bf, false, false, 1024)),
      row("7B", 1, "4-bit NF4, bf16 CD, GC", 1024, true, table_options("nf4", bf, true, false, 1024)),
      row("13B", 2, "LLM.int8 + GC", 512, true, table_options("int8", fp, true, false, 512)),
      row("13B", 1, "LLM.int8 + GC", 512, false, table_options("int8", fp, true, false, 512)),
      row("13B", 1, "4-bit FP4, bf16 CD, no GC", 512, false, table_options("fp4", bf, false, false, 512)),
      row("13B", 1, "4-bit FP4, fp16 CD, no GC", 512, false, table_options("fp4", fp, false, false, 512)),
      row("13B", 1, "4-bit NF4, fp16 CD, GC", 512, true, table_options("nf4", fp, true, false, 512)),
      row("13B", 1, "4-bit NF4, fp16 CD, GC", 1024, false, table_options("nf4", fp, true, false, 1024)),
      row("13B", 1, "4-bit NF4, fp16 CD, GC, NQ", 1024, true, table_options("nf4", fp, true, true, 1024)),
  };
}

std::vector<PublishedRow> qlora_paper_headline_rows() {
  auto row = [](const char* model, uint64_t gpu, const char* gpu_name) {
    PublishedRow r;
    r.model = model;
    r.gpus = 1;
    r.gpu_bytes = gpu;
    r.gpu_name = gpu_name;
    r.method = "NF4+DQ, bf16 CD, LoRA r64 all linear, GC, paged AdamW";
    r.seq_len = 512;
    r.published_fits = true;
    MemoryOptions o;
    o.engine = MemoryEngine::PytorchCuda;
    o.weights = WeightFormat::NF4;
    o.double_quant = true;
    o.compute_dtype = ComputeDType::BF16;
    o.lora_r = 64;
    o.all_linear = true;
    o.checkpointing = true;
    o.optim = OptimKind::PagedAdamW32;
    o.seq_len = 512;
    o.batch_size = 1;
    // The QLoRA repository (qlora.py --bf16) casts the LoRA modules to bf16.
    o.lora_param_bytes = 2;
    r.options = o;
    return r;
  };
  return {row("33B", 24ull << 30, "1x 24 GB"), row("65B", 48ull << 30, "1x 48 GB")};
}

void evaluate_published_rows(std::vector<PublishedRow>& rows) {
  for (PublishedRow& r : rows) {
    const MemoryPlan p = plan_memory(llama1_spec(r.model), r.options);
    r.predicted_peak = p.peak_bytes;
    r.predicted_fits = p.peak_bytes <= r.gpu_bytes * static_cast<uint64_t>(r.gpus);
    r.explanation.clear();
    if (r.predicted_fits == r.published_fits) continue;
    if (r.options.weights == WeightFormat::Int8)
      r.explanation =
          "LLM.int8 training holds more than 1 byte/param + activations: the published 7B int8+GC run OOMs at 1024 "
          "while 13B NF4+DQ+GC at 1024 (0.18 GB MORE weights, more LoRA and activations) fits, so bitsandbytes' "
          "int8 matmul keeps extra state (outlier columns subB per layer, col_turing copies, int32 outputs) the "
          "planner does not model";
    else if (r.options.checkpointing)
      r.explanation =
          "the NQ pair pins this run within ~0.6 GB of the card, but 7B NF4 without GC at 512 (published: fits) "
          "keeps far more activations than 13B with GC at 1024 plus the 3.4 GB of extra weights; no single "
          "overhead constant satisfies both, so the published peak here includes allocator fragmentation from "
          "variable-length batches that a static count cannot see";
    else
      r.explanation = "activation count differs from the run's (see the breakdown)";
  }
}

std::string published_table_text(const std::vector<PublishedRow>& table, const std::vector<PublishedRow>& headline) {
  std::string out =
      "Hugging Face QLoRA announcement (TRL SFTTrainer, AdamW, batch 1, grad accum 4) vs `qlora memory --engine "
      "pytorch-cuda`\nassumed LoRA: r 64, alpha 16, dropout 0.05 on q_proj,v_proj (TRL SFT example + PEFT llama "
      "defaults), fp32 LoRA, adamw_torch;\noverhead constant (CUDA context + allocator): " +
      format_gb(kPytorchCudaOverheadBytes) + " per GPU; T4 = 15360 MiB\n\n";
  char buf[512];
  std::snprintf(buf, sizeof buf, "%-5s %-11s %-28s %5s %10s %10s %9s %s\n", "model", "GPU", "method", "seq",
                "published", "planner", "peak GB", "margin GB");
  out += buf;
  int agree = 0;
  for (const PublishedRow& r : table) {
    const double cap = static_cast<double>(r.gpu_bytes) * r.gpus / 1e9;
    const double peak = static_cast<double>(r.predicted_peak) / 1e9;
    std::snprintf(buf, sizeof buf, "%-5s %-11s %-28s %5lld %10s %10s %9.2f %+9.2f%s\n", r.model.c_str(),
                  r.gpu_name.c_str(), r.method.c_str(), static_cast<long long>(r.seq_len),
                  r.published_fits ? "fits" : "OOM", r.predicted_fits ? "fits" : "OOM", peak, cap - peak,
                  r.predicted_fits == r.published_fits ? "" : "   <-- disagrees");
    out += buf;
    if (r.predicted_fits == r.published_fits) ++agree;
  }
  out += "\n" + std::to_string(agree) + " of " + std::to_string(table.size()) + " verdicts agree.\n";
  for (const PublishedRow& r : table)
    if (!r.explanation.empty())
      out += "- " + r.model + " " + r.method + " seq " + std::to_string(r.seq_len) + ": " + r.explanation + "\n";
  out += "\nQLoRA paper headline cases (NF4 + double quant, LoRA r 64 on all linear layers in bf16, gradient "
         "checkpointing, paged AdamW 32-bit, batch 1, seq 512):\n";
  for (const PublishedRow& r : headline) {
    const double cap = static_cast<double>(r.gpu_bytes) / 1e9;
    const double peak = static_cast<double>(r.predicted_peak) / 1e9;
    std::snprintf(buf, sizeof buf, "  LLaMA-%-4s on %-9s: peak %6.2f GB of %6.2f GB -> %s, margin %+.2f GB\n",
                  r.model.c_str(), r.gpu_name.c_str(), peak, cap, r.predicted_fits ? "fits" : "DOES NOT FIT",
                  cap - peak);
    out += buf;
  }
  return out;
}

}  // namespace qlora
