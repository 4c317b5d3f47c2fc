// The memory planner: closed-form numbers for a small config, internal consistency
// (items sum to the peak), monotonicity, and the published QLoRA table's verdicts.
// Predicted-vs-measured RSS is a benchmark (bench/memory_validate.sh), not a test.
#include <gtest/gtest.h>

#include <string>

#include "base/error.h"
#include "formats/model_loader.h"
#include "lora/lora_model.h"
#include "memory/memory_plan.h"
#include "model/model.h"

namespace qlora {
namespace {

// stories260K's shape: 5 layers, hidden 64, 8 heads / 4 kv heads, ffn 172, vocab 512.
ModelSpec small_spec() {
  ModelSpec s;
  s.hidden = 64;
  s.n_layers = 5;
  s.n_heads = 8;
  s.n_kv_heads = 4;
  s.head_dim = 8;
  s.ffn = 172;
  s.vocab = 512;
  s.max_positions = 512;
  s.tied_embeddings = true;
  return s;
}

uint64_t item(const MemoryPlan& p, const std::string& prefix) {
  for (const MemoryItem& it : p.items)
    if (it.name.rfind(prefix, 0) == 0) return it.bytes;
  return 0;
}

uint64_t sum_items(const MemoryPlan& p) {
  uint64_t s = 0;
  for (const MemoryItem& it : p.items)
    if (!it.evictable) s += it.bytes;
  return s;
}

TEST(MemoryPlan, ItemsSumToPeakForEveryEngineAndMode) {
  for (MemoryEngine e : {MemoryEngine::Qlora, MemoryEngine::PytorchCuda, MemoryEngine::QloraCuda,
                         MemoryEngine::QloraCudaBackend})
    for (MemoryMode m : {MemoryMode::Train, MemoryMode::Generate})
      for (OptimKind k : {OptimKind::AdamW32, OptimKind::PagedAdamW8bit}) {
        MemoryOptions o;
        o.engine = e;
        o.mode = m;
        o.optim = k;
        o.seq_len = 128;
        const MemoryPlan p = plan_memory(small_spec(), o);
        EXPECT_EQ(sum_items(p), p.peak_bytes) << p.to_text();
        EXPECT_GT(p.peak_bytes, 0u);
      }
  // A big model whose load phase does not dominate, and one that does.
  MemoryOptions o;
  o.seq_len = 2048;
  const MemoryPlan p = plan_memory(llama1_spec("7B"), o);
  EXPECT_EQ(sum_items(p), p.peak_bytes);
  EXPECT_EQ(p.peak_bytes, std::max(p.load_peak_bytes, p.run_peak_bytes));
}

TEST(MemoryPlan, FourBitWeightsAndConstantsInClosedForm) {
  const ModelSpec s = small_spec();
  // Linear elements per layer: q 64*64, k 32*64, v 32*64, o 64*64, gate/up 172*64, down 64*172.
  const uint64_t per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3;
  MemoryOptions o;
  o.mode = MemoryMode::Generate;
  o.weights = WeightFormat::NF4;
  o.blocksize = 64;
  const MemoryPlan p = plan_memory(s, o);
  EXPECT_EQ(item(p, "4-bit weights"), 5 * per_layer / 2);
  // Every tensor here is a multiple of 64 elements: one fp32 absmax per 64.
  EXPECT_EQ(item(p, "quantization constants"), 5 * per_layer / 64 * 4);
  // Double quantization: one uint8 per block + fp32 per 256 blocks (rounded up, per tensor)
  // + the fp32 offset, per tensor.
  o.double_quant = true;
  const MemoryPlan dq = plan_memory(s, o);
  uint64_t dq_bytes = 0;
  for (uint64_t n : {64 * 64, 32 * 64, 32 * 64, 64 * 64, 172 * 64, 172 * 64, 64 * 172}) {
    const uint64_t blocks = n / 64;
    dq_bytes += blocks + (blocks + 255) / 256 * 4 + 4;
  }
  EXPECT_EQ(item(dq, "quantization constants"), 5 * dq_bytes);
  // Embeddings fp32 (tied: no head), norms (2L+1)*C fp32.
  EXPECT_EQ(item(p, "embeddings"), 512u * 64 * 4);
  EXPECT_EQ(item(p, "lm_head"), 0u);
  EXPECT_EQ(item(p, "norms"), (2 * 5 + 1) * 64u * 4);
  // bf16 compute halves the dense parts; --quant none stores Linears dense.
  o.double_quant = false;
  o.compute_dtype = ComputeDType::BF16;
  o.weights = WeightFormat::Dense;
  const MemoryPlan dense = plan_memory(s, o);
  EXPECT_EQ(item(dense, "Linear weights"), 5 * per_layer * 2);
  EXPECT_EQ(item(dense, "embeddings"), 512u * 64 * 2);
  EXPECT_EQ(item(dense, "4-bit"), 0u);
}

TEST(MemoryPlan, NF4WeightsOfLlama7BMatchBitsPerParameter) {
  // 4.5 bits/param with fp32 absmax per 64; 4.127 with double quantization (DESIGN.md).
  const ModelSpec s = llama1_spec("7B");
  const double lin = 32.0 * (4.0 * 4096 * 4096 + 3.0 * 4096 * 11008);
  MemoryOptions o;
  o.mode = MemoryMode::Generate;
  const MemoryPlan p = plan_memory(s, o);
  EXPECT_NEAR(8.0 * static_cast<double>(item(p, "4-bit weights") + item(p, "quantization constants")) / lin, 4.5, 1e-6);
  o.double_quant = true;
  const MemoryPlan dq = plan_memory(s, o);
  EXPECT_NEAR(8.0 * static_cast<double>(item(dq, "4-bit weights") + item(dq, "quantization constants")) / lin, 4.127,
              1e-3);
}

TEST(MemoryPlan, GenerateBatchPlansEverySequencesCache) {
  // batch_size sequences decoded at once (serve --parallel, generate --parallel): each keeps
  // its own KV cache, prompt scratch and logits; the weights are shared.
  MemoryOptions o;
  o.mode = MemoryMode::Generate;
  o.prompt_len = 100;
  o.new_tokens = 900;
  const MemoryPlan one = plan_memory(small_spec(), o);
  o.batch_size = 4;
  const MemoryPlan four = plan_memory(small_spec(), o);
  EXPECT_EQ(item(four, "KV cache"), 4 * item(one, "KV cache"));
  EXPECT_EQ(item(four, "logits"), 4 * item(one, "logits"));
  EXPECT_EQ(item(four, "4-bit weights"), item(one, "4-bit weights"));
  EXPECT_NE(four.title.find("4 sequences at once"), std::string::npos) << four.title;
}

TEST(MemoryPlan, Int8WeightsAreOneBytePerParameterPlusRowScales) {
  MemoryOptions o;
  o.mode = MemoryMode::Generate;
  o.weights = WeightFormat::Int8;
  const MemoryPlan p = plan_memory(small_spec(), o);
  const uint64_t per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3;
  const uint64_t rows = 64 + 32 + 32 + 64 + 172 + 172 + 64;
  EXPECT_EQ(item(p, "8-bit weights"), 5 * per_layer);
  EXPECT_EQ(item(p, "quantization constants"), 5 * rows * 4);
}

TEST(MemoryPlan, LoraAndOptimizerState) {
  const ModelSpec s = small_spec();
  MemoryOptions o;
  o.lora_r = 8;
  o.all_linear = false;
  o.target_modules = {"q_proj", "v_proj"};
  const uint64_t lora = 5 * 8 * ((64 + 64) + (64 + 32));  // r*(in+out) for q and v
  const MemoryPlan p = plan_memory(s, o);
  EXPECT_EQ(item(p, "LoRA parameters"), lora * 4);
  EXPECT_EQ(item(p, "LoRA gradients"), lora * 4);
  EXPECT_EQ(item(p, "optimizer state"), lora * 8);
  // 8-bit: tensors below 4096 elements stay fp32 (all of these: r*in = 512 ...).
  o.optim = OptimKind::AdamW8bit;
  EXPECT_EQ(item(plan_memory(s, o), "optimizer state"), lora * 8);
  // ... a big one is 2 bytes/param + 2 fp32 absmax per 256.
  o.lora_r = 64;
  o.target_modules = {"down_proj"};  // A (64, 172) = 11008, B (64, 64) = 4096 elements
  const MemoryPlan big = plan_memory(s, o);
  const uint64_t a = 64 * 172, b = 64 * 64;
  EXPECT_EQ(item(big, "optimizer state"), 5 * ((2 * a + 8 * ((a + 255) / 256)) + (2 * b + 8 * (b / 256))));
  // Paged: same bytes, evictable, outside the peak.
  o.optim = OptimKind::PagedAdamW8bit;
  const MemoryPlan paged = plan_memory(s, o);
  EXPECT_EQ(paged.evictable_bytes, item(big, "optimizer state"));
  EXPECT_EQ(paged.peak_bytes + paged.evictable_bytes, big.peak_bytes);
}

// A mixture-of-experts run with named parameters (`--target-parameters`, PEFT's target_parameters):
// the planner counts the LoRA parameters the run makes, on Granite MoE (router under transformers'
// block_sparse_moe module path) and Mixtral (the canonical mlp.gate), with and without all-linear.
TEST(MemoryPlan, MoeTargetParametersCountWhatTheRunAdapts) {
  // (Llama 4: its experts under feed_forward.experts, its router refused; llama4_text's every MoE
  // layer beside dense ones, llama4 the same inside the vision-language wrapper)
  // (Nemotron 3: ungated experts, up_proj and down_proj under mixer.experts, and its float32 router)
  for (const char* fam : {"granitemoe", "mixtral", "llama4_text", "llama4", "nemotron_h_moe"}) {
    const bool llama4 = std::string(fam).starts_with("llama4");
    const bool nemotron = std::string(fam) == "nemotron_h_moe";
    ModelFiles files = open_model_files(std::string(QLORA_FIXTURE_DIR) + "/families/" + fam);
    ModelLoadOptions lo;
    lo.quant.quantize = false;
    const Model m = Model::load(files.spec, *files.tensors, lo);
    for (bool all_linear : {true, false}) {
      LoraConfig c;
      c.r = 4;
      c.dropout = 0.0;
      c.all_linear = all_linear;
      if (!all_linear) c.target_modules = {"q_proj"};
      c.target_parameters = {nemotron ? "up_proj" : "gate_up_proj", "down_proj"};
      if (!llama4)
        c.target_parameters.push_back(std::string(fam) == "mixtral" || nemotron ? "gate.weight" : "router.weight");
      const LoraModel lm(m, c);
      uint64_t params = 0;
      for (const LoraLayer& l : lm.layers()) params += l.A.size() + l.B.size();
      MemoryOptions o;
      o.lora_r = 4;
      o.lora_dropout = 0.0;
      o.all_linear = all_linear;
      if (!all_linear) o.target_modules = {"q_proj"};
      o.target_parameters = c.target_parameters;
      o.seq_len = 16;
      EXPECT_EQ(item(plan_memory(files.spec, o), "LoRA parameters"), params * 4) << fam << " all-linear " << all_linear;
    }
  }
}

TEST(MemoryPlan, ActivationsGrowWithSequenceAndCheckpointingLowersThem) {
  for (MemoryEngine e : {MemoryEngine::Qlora, MemoryEngine::PytorchCuda, MemoryEngine::QloraCuda,
                         MemoryEngine::QloraCudaBackend}) {
    const ModelSpec s = llama1_spec("7B");
    MemoryOptions o;
    o.engine = e;
    uint64_t last = 0;
    for (int64_t T : {128, 256, 512, 1024}) {
      o.seq_len = T;
      o.checkpointing = true;
      const MemoryPlan gc = plan_memory(s, o);
      o.checkpointing = false;
      const MemoryPlan full = plan_memory(s, o);
      EXPECT_GT(gc.activations_checkpointed, last);
      EXPECT_LT(gc.activations_checkpointed, full.activations_full);
      EXPECT_EQ(gc.activations_full, full.activations_full);
      EXPECT_LT(gc.run_peak_bytes, full.run_peak_bytes);
      EXPECT_LE(gc.required_bytes, full.required_bytes);
      last = gc.activations_checkpointed;
    }
  }
}

TEST(MemoryPlan, QloraTrainActivationsInClosedForm) {
  // One block cache (checkpointing) for the small spec, T = 16, r 4 on q only, dropout on.
  const ModelSpec s = small_spec();
  MemoryOptions o;
  o.seq_len = 16;
  o.lora_r = 4;
  o.all_linear = false;
  o.target_modules = {"q_proj"};
  const uint64_t T = 16, C = 64, QD = 64, KVD = 32, NH = 8, F = 172, L = 5;
  const uint64_t block = 4 * (3 * T * C + 2 * T + 2 * T * QD + 2 * T * KVD + NH * T * T + 3 * T * F) +
                         4 * (T * 4 + T * ((C + 31) / 32));  // LoRA cache: h (T, r), the dropout mask's bits (T, in)
  const MemoryPlan p = plan_memory(s, o);
  EXPECT_EQ(p.activations_checkpointed, 4 * (L + 1) * T * C + block);
  EXPECT_EQ(p.activations_full, 4 * (L + 1) * T * C + L * block);
  EXPECT_EQ(item(p, "logits"), 4 * T * 512);
}

TEST(MemoryPlan, GenerateKvCache) {
  MemoryOptions o;
  o.mode = MemoryMode::Generate;
  o.prompt_len = 10;
  o.new_tokens = 90;
  const MemoryPlan p = plan_memory(small_spec(), o);
  EXPECT_EQ(item(p, "KV cache"), 2u * 5 * 32 * 100 * 4);
  o.new_tokens = 10000;  // capped at the context
  EXPECT_EQ(item(plan_memory(small_spec(), o), "KV cache"), 2u * 5 * 32 * 512 * 4);
  // A 16-bit cache (--kv-cache bf16 / f16): 2 bytes a value, plus one layer widened to fp32
  // while attention reads it.
  o.new_tokens = 90;
  for (ComputeDType t : {ComputeDType::BF16, ComputeDType::F16}) {
    o.kv_cache_dtype = t;
    const MemoryPlan p16 = plan_memory(small_spec(), o);
    EXPECT_EQ(item(p16, std::string("KV cache (") + (t == ComputeDType::BF16 ? "bf16" : "f16")), 2u * 5 * 32 * 100 * 2);
    EXPECT_EQ(item(p16, "KV cache widened"), 2u * 32 * 100 * 4);
    EXPECT_LT(p16.run_peak_bytes, plan_memory(small_spec(), [&] { MemoryOptions f = o; f.kv_cache_dtype = ComputeDType::F32; return f; }()).run_peak_bytes);
  }
}

// The GPU engine (--device cuda): the measured context, the weights as the CPU holds them,
// activations and the attention probabilities in closed form, and no load phase (the
// host holds the file). Its predictions against measured GPU peaks are in bench/RESULTS.md
// (within 0.2-3.2% on an H200).
TEST(MemoryPlan, QloraCudaEngine) {
  MemoryOptions o;
  o.engine = MemoryEngine::QloraCuda;
  o.double_quant = true;
  o.seq_len = 256;
  o.lora_r = 16;
  const ModelSpec s = small_spec();
  const MemoryPlan train = plan_memory(s, o);
  EXPECT_EQ(item(train, "CUDA context"), kQloraCudaContextBytes);
  EXPECT_EQ(item(train, "cuBLAS workspace"), kQloraCudaBlasWorkspaceBytes);
  MemoryOptions cpu = o;
  cpu.engine = MemoryEngine::Qlora;
  const MemoryPlan host = plan_memory(s, cpu);
  EXPECT_EQ(item(train, "4-bit weights"), item(host, "4-bit weights"));
  EXPECT_EQ(item(train, "quantization constants"), item(host, "quantization constants"));
  // Block inputs (L+1)·T·C plus one block's caches (3TC + 2T + 2T·QD + 2T·KVD + NH·T² + 3TF)
  // and LoRA caches (7 modules · T · r, dropout masks T · Σin) in fp32.
  const uint64_t T = 256, C = 64, L = 5, QD = 64, KVD = 32, NH = 8, F = 172, r = 16;
  const uint64_t sum_in = 6 * 64 + 172;  // q, k, v, o, gate, up take hidden (= q_dim) inputs; down takes ffn
  const uint64_t block = 4 * (3 * T * C + 2 * T + 2 * T * QD + 2 * T * KVD + NH * T * T + 3 * T * F) +
                         4 * (7 * T * r + T * sum_in);
  EXPECT_EQ(item(train, "activations"), 4 * (L + 1) * T * C + block);
  EXPECT_EQ(train.load_peak_bytes, 0u);
  EXPECT_EQ(train.required_bytes, train.peak_bytes);
  o.checkpointing = false;
  EXPECT_GT(plan_memory(s, o).peak_bytes, train.peak_bytes);
  o.mode = MemoryMode::Generate;
  o.prompt_len = 4;
  o.new_tokens = 60;
  const MemoryPlan gen = plan_memory(s, o);
  EXPECT_EQ(item(gen, "KV cache"), 2 * L * KVD * 64 * 4);
  EXPECT_LT(gen.peak_bytes, train.peak_bytes);
  o.weights = WeightFormat::Int8;
  EXPECT_THROW(plan_memory(s, o), Error);
  EXPECT_EQ(memory_engine_from_string("qlora-cuda"), MemoryEngine::QloraCuda);
  EXPECT_STREQ(memory_engine_name(MemoryEngine::QloraCuda), "qlora-cuda");
}

// The CUDA backend engine: the runner's context and weights, every buffer the block
// interpreter allocates through its backend as the CPU plan counts it (the same
// declarations), and the backend's workspaces: a 4-bit Linear widened to float32 for the
// input gradient, a 16-bit head widened for its own, the 16-bit operands of cuBLAS.
TEST(MemoryPlan, QloraCudaBackendEngine) {
  const ModelSpec s = llama1_spec("7B");
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16})
    for (MemoryMode m : {MemoryMode::Train, MemoryMode::Generate}) {
      MemoryOptions o;
      o.engine = MemoryEngine::QloraCudaBackend;
      o.mode = m;
      o.compute_dtype = dt;
      o.double_quant = true;
      o.seq_len = 512;
      o.batch_size = 2;
      o.prompt_len = 100;
      o.lora_r = 16;
      const MemoryPlan gpu = plan_memory(s, o);
      MemoryOptions c = o;
      c.engine = MemoryEngine::Qlora;
      const MemoryPlan cpu = plan_memory(s, c);
      MemoryOptions r = o;
      r.engine = MemoryEngine::QloraCuda;
      const MemoryPlan runner = plan_memory(s, r);
      EXPECT_EQ(item(gpu, "CUDA context"), kQloraCudaContextBytes);
      EXPECT_EQ(item(gpu, "4-bit weights"), item(runner, "4-bit weights"));
      EXPECT_EQ(item(gpu, "quantization constants"), item(runner, "quantization constants"));
      EXPECT_EQ(item(gpu, "process baseline"), 0u);  // host-only lines stay out
      EXPECT_EQ(item(gpu, "optimizer state"), 0u);
      for (const char* k : {"activations", "logits", "workspace (backward", "KV cache", "forward scratch",
                            "workspace (block scratch"})
        EXPECT_EQ(item(gpu, k), item(cpu, k)) << k;
      const uint64_t f32 = item(gpu, "workspace (a weight in float32)");
      if (m == MemoryMode::Train) {
        EXPECT_GT(item(gpu, "activations"), 0u);
        // (the 16-bit head widened 64 MiB of rows at a time: 4096 rows of 4096, smaller than
        // the largest Linear)
        const uint64_t largest = 4ull * 11008 * 4096;
        EXPECT_EQ(f32, largest);
        EXPECT_EQ(item(gpu, "LoRA A and B"), item(cpu, "LoRA parameters"));
      } else {
        EXPECT_GT(item(gpu, "KV cache"), 0u);
        EXPECT_EQ(item(gpu, "LoRA A and B"), 0u);  // no adapter asked for
      }
      EXPECT_EQ(item(gpu, "workspace (16-bit activations)") > 0, dt != ComputeDType::F32);
      EXPECT_EQ(sum_items(gpu), gpu.peak_bytes);
    }
  // LLM.int8: the backend engine plans it (its int8 weights, the backward's float32 weight);
  // the runner refuses it.
  MemoryOptions i8;
  i8.engine = MemoryEngine::QloraCudaBackend;
  i8.weights = WeightFormat::Int8;
  i8.seq_len = 256;
  const MemoryPlan p8 = plan_memory(s, i8);
  EXPECT_GT(item(p8, "8-bit weights"), 0u);
  EXPECT_EQ(item(p8, "workspace (a weight in float32)"), 4ull * 11008 * 4096);
  i8.engine = MemoryEngine::QloraCuda;
  EXPECT_THROW(plan_memory(s, i8), Error);
  EXPECT_EQ(memory_engine_from_string("qlora-cuda-backend"), MemoryEngine::QloraCudaBackend);
  EXPECT_STREQ(memory_engine_name(MemoryEngine::QloraCudaBackend), "qlora-cuda-backend");
}

// bf16 compute on AMX tiles: the tile GEMM's packing buffers (thread-local, kept at their
// largest) are a line of their own, in closed form; nothing is added without the tiles or in
// float32.
TEST(MemoryPlan, Bf16TilePackingOnAmxHosts) {
  const ModelSpec s = small_spec();
  MemoryOptions o;
  o.seq_len = 100;
  o.batch_size = 2;
  o.threads = 3;
  o.compute_dtype = ComputeDType::BF16;
  EXPECT_EQ(item(plan_memory(s, o), "bf16 GEMM packing"), 0u);
  o.bf16_tiles = true;
  const MemoryPlan p = plan_memory(s, o);
  const uint64_t Tp = 224, Kp = 192, max_in = 172;  // B*T = 200 -> 224; the down projection reads ffn = 172
  EXPECT_EQ(item(p, "bf16 GEMM packing"), 3 * 2 * Tp * Kp + 3 * (32 * max_in * 4 + 2 * 32 * Kp * 2));
  EXPECT_EQ(sum_items(p), p.peak_bytes);
  o.compute_dtype = ComputeDType::F32;
  EXPECT_EQ(item(plan_memory(s, o), "bf16 GEMM packing"), 0u);
}

TEST(MemoryPlan, Llama1Shapes) {
  EXPECT_NEAR(static_cast<double>(llama1_spec("7B").num_params()), 6.74e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(llama1_spec("13B").num_params()), 13.02e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(llama1_spec("33B").num_params()), 32.53e9, 0.01e9);
  EXPECT_NEAR(static_cast<double>(llama1_spec("65B").num_params()), 65.29e9, 0.01e9);
  EXPECT_THROW(llama1_spec("70B"), Error);
}

TEST(MemoryPlan, ParseSizes) {
  EXPECT_EQ(parse_memory_size("16GB", "x"), 16000000000ull);
  EXPECT_EQ(parse_memory_size("15GiB", "x"), 15ull << 30);
  EXPECT_EQ(parse_memory_size("1.5G", "x"), 3ull << 29);
  EXPECT_EQ(parse_memory_size("800MB", "x"), 800000000ull);
  EXPECT_EQ(parse_memory_size("512MiB", "x"), 512ull << 20);
  EXPECT_EQ(parse_memory_size("4096", "x"), 4096ull);
  EXPECT_EQ(parse_memory_size("t4", "x"), 15360ull << 20);
  EXPECT_THROW(parse_memory_size("lots", "x"), Error);
  EXPECT_THROW(parse_memory_size("16XB", "x"), Error);
  EXPECT_THROW(parse_memory_size("-1GB", "x"), Error);
}

TEST(MemoryPlan, CheckFitsRefusesWithTheBreakdown) {
  MemoryOptions o;
  const MemoryPlan p = plan_memory(llama1_spec("7B"), o);
  EXPECT_NO_THROW(check_fits(p, 0, "train"));
  EXPECT_NO_THROW(check_fits(p, p.required_bytes, "train"));
  // A 7B fp16 checkpoint is mapped while loading: RSS counts its pages, the check does not.
  EXPECT_LT(p.required_bytes, p.peak_bytes);
  try {
    check_fits(p, p.required_bytes - 1, "qlora train");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("qlora train"), std::string::npos) << m;
    EXPECT_NE(m.find("--max-memory"), std::string::npos) << m;
    EXPECT_NE(m.find("4-bit weights"), std::string::npos) << m;
    EXPECT_NE(m.find("total peak:"), std::string::npos) << m;
  }
}

TEST(MemoryPlan, TextEndsWithTotalPeakLine) {
  MemoryOptions o;
  const std::string t = plan_memory(small_spec(), o).to_text(16ull << 30, "16GiB");
  const size_t last = t.rfind("total peak: ");
  ASSERT_NE(last, std::string::npos);
  EXPECT_EQ(t.find('\n', last), t.size() - 1);
  EXPECT_NE(t.find("verdict: fits"), std::string::npos);
}

TEST(MemoryPlan, RejectsBadOptions) {
  MemoryOptions o;
  o.all_linear = false;
  o.target_modules = {"nope"};
  EXPECT_THROW(plan_memory(small_spec(), o), Error);
  o = MemoryOptions{};
  o.seq_len = 513;  // beyond the context
  EXPECT_THROW(plan_memory(small_spec(), o), Error);
}

// The published table, with the single overhead constant: the verdicts the planner
// reproduces must stay reproduced, and the two rows it cannot reproduce (explained in
// memory_plan.cpp and bench/RESULTS.md) must be exactly those, each with an explanation.
TEST(MemoryPlan, PublishedQloraTableVerdicts) {
  std::vector<PublishedRow> rows = published_table();
  ASSERT_EQ(rows.size(), 14u);
  evaluate_published_rows(rows);
  int agree = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const PublishedRow& r = rows[i];
    const bool known_disagreement = i == 1 || i == 12;  // 7B int8+GC 1024, 13B NF4+GC 1024 (no NQ)
    if (known_disagreement) {
      EXPECT_NE(r.predicted_fits, r.published_fits) << "row " << i << " now agrees: update the docs";
      EXPECT_FALSE(r.explanation.empty()) << "row " << i;
    } else {
      EXPECT_EQ(r.predicted_fits, r.published_fits) << "row " << i << ": " << r.model << " " << r.method << " seq "
                                                    << r.seq_len << " predicted " << r.predicted_peak;
      EXPECT_TRUE(r.explanation.empty());
      ++agree;
    }
  }
  EXPECT_EQ(agree, 12);
  // The pairs that matter most: checkpointing turns 7B NF4 at 1024 from OOM into fits, and
  // double quantization lowers 13B at 1024.
  EXPECT_FALSE(rows[4].predicted_fits);
  EXPECT_TRUE(rows[6].predicted_fits);
  EXPECT_LT(rows[13].predicted_peak, rows[12].predicted_peak);
}

TEST(MemoryPlan, QloraPaperHeadlineCasesFit) {
  std::vector<PublishedRow> rows = qlora_paper_headline_rows();
  evaluate_published_rows(rows);
  ASSERT_EQ(rows.size(), 2u);
  for (const PublishedRow& r : rows) {
    EXPECT_TRUE(r.predicted_fits) << r.model << " peak " << r.predicted_peak << " of " << r.gpu_bytes;
    // Not by accident: the paged optimizer state is what makes the margin.
    const MemoryPlan p = plan_memory(llama1_spec(r.model), r.options);
    EXPECT_GT(p.evictable_bytes, 0u);
  }
}

}  // namespace
}  // namespace qlora
