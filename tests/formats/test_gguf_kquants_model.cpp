// A GGUF whose tensors are in the types qlora can keep as the file's blocks (Q2_K, Q3_K always;
// Q5_K, Q6_K, Q5_1, Q5_0 on 8-bit activations or with --gguf-compact: DenseWeight::from_gguf_blocks,
// model/block_row_kernels.h) loads them as stored and runs on them (on float activations without
// --gguf-compact the Q5_0 ones become 8-bit blocks of the same values, DenseWeight::from_q8_0):
// tests/fixtures/gguf/kq_llama.gguf (tools/make_gguf_fixtures.py) is
// a 2-layer llama whose weights ggml's own quantizer (ggml_quantize_chunk) wrote in those
// types, each on two or more Linears (rope-permuted q / k among them), with a Q5_K embedding
// and a Q6_K output head.
//
// References: transformers' logits on the same file (its GGUF loader dequantizes with gguf-py,
// then runs float32). The kept blocks hold exactly those values, so ours agree to float32
// summation order -- 1e-5 of the largest logit -- both over the whole prompt at once (rows
// widened a panel at a time into the GEMM) and token by token (the block GEMV). llama.cpp's
// logits are further off (its products round activations to 8 bits): ours must be as close
// to them as transformers' are.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/cpu_features.h"
#include "formats/gguf.h"
#include "formats/gguf_logits_reference.h"
#include "formats/model_loader.h"
#include "memory/memory_plan.h"
#include "model/lora_step_compare.h"
#include "model/model.h"
#include "model/model_fixture_logits.h"
#include "model/model_spec.h"
#include "model/model_test_util.h"
#include "lora/lora_model.h"
#include "train/train_model.h"

using namespace qlora;
using json = nlohmann::json;

namespace {

const std::string kFile = std::string(QLORA_FIXTURE_DIR) + "/gguf/kq_llama.gguf";

json reference() { return test::gguf_logits_reference("kq_llama"); }
using test::argmax_row;
using test::max_abs;
using test::max_diff;
const auto flat = test::flat_rows;

// --gguf-compact: every type the fixture holds stays the file's blocks.
ModelLoadOptions compact() {
  ModelLoadOptions o;
  o.gguf_compact = true;
  return o;
}

Model load(const ModelLoadOptions& o = compact()) {
  ModelFiles files = open_model_files(kFile);
  return Model::load(files.spec, *files.tensors, o);
}

// The prompt's logits fed one token at a time (the KV cache; every product a GEMV).
std::vector<float> stepwise_logits(const Model& m, const std::vector<int>& prompt) {
  InferenceState st(m.spec(), static_cast<int64_t>(prompt.size()));
  const size_t V = static_cast<size_t>(m.spec().vocab);
  std::vector<float> out(prompt.size() * V);
  for (size_t t = 0; t < prompt.size(); ++t) forward(m, st, std::span<const int>(&prompt[t], 1), out.data() + t * V, false);
  return out;
}

TEST(GgufKQuantModel, FileHoldsEveryTypeTheFixtureNames) {
  const GgufFile g(kFile);
  const json ref = reference();  // (kept alive: items() refers into it)
  for (const auto& [name, type] : ref.at("types").items())
    EXPECT_EQ(std::string(ggml_type_name(g.tensor(name).type)), type.get<std::string>()) << name;
}

// Every Linear, the embedding and the head are the file's blocks: its bytes, and exactly its
// values (in Hugging Face's row order), which the model holds at the file's size.
TEST(GgufKQuantModel, WeightsAreKeptAsTheFileBlocks) {
  ModelFiles files = open_model_files(kFile);
  const GgufFile g(kFile);
  const Model m = Model::load(files.spec, *files.tensors, compact());
  int q5_0 = 0;
  auto check = [&](const DenseWeight& d, const std::string& hf) {
    const GgmlType t = g.tensor(files.tensors->stored_name(hf)).type;
    q5_0 += t == GgmlType::Q5_0;
    ASSERT_TRUE(d.gguf_blocks()) << hf;
    EXPECT_EQ(d.gguf_type(), t) << hf;
    EXPECT_EQ(static_cast<int64_t>(d.bytes()), *ggml_nbytes(t, d.rows() * d.cols())) << hf;
    const std::vector<float> want = files.tensors->get(hf);
    std::vector<float> got(want.size());
    d.rows_to_f32(0, d.rows(), got.data());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << hf;
  };
  int linears = 0;
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kAttentionLinears; ++w) {
      const std::string hf = layer_tensor_name(l, kBlockLinearModules[static_cast<size_t>(w)]);
      const QuantLinear& lin = m.block_linear(l, w);
      ASSERT_NE(lin.dense(), nullptr) << hf;
      check(*lin.dense(), hf);
      std::vector<float> via_linear(static_cast<size_t>(lin.out_features() * lin.in_features()));
      lin.dequantize_rows(0, lin.out_features(), via_linear.data());
      EXPECT_EQ(via_linear, files.tensors->get(hf)) << hf;
      ++linears;
    }
  EXPECT_EQ(linears, 14);
  EXPECT_EQ(q5_0, 2);
  check(m.embed_tokens(), "model.embed_tokens.weight");
  check(m.lm_head(), "lm_head.weight");
}

TEST(GgufKQuantModel, LogitsMatchTransformersOnTheSameFile) {
  const json ref = reference();
  const auto prompt = ref.at("prompt").get<std::vector<int>>();
  const std::vector<float> hf = flat(ref.at("transformers_logits"));
  const Model m = load();
  const float scale = max_abs(hf);
  const std::vector<float> whole = test::all_prompt_logits(m, prompt), steps = stepwise_logits(m, prompt);
  ASSERT_EQ(whole.size(), hf.size());
  std::printf("kq_llama: max |ours - transformers| %.3g over the prompt, %.3g token by token (largest |logit| %.3g)\n",
              max_diff(whole, hf), max_diff(steps, hf), scale);
  EXPECT_LE(max_diff(whole, hf), 1e-5f * scale);
  EXPECT_LE(max_diff(steps, hf), 1e-5f * scale);
}

TEST(GgufKQuantModel, LogitsAsCloseToLlamaCppAsTransformersAre) {
  const json ref = reference();
  const auto prompt = ref.at("prompt").get<std::vector<int>>();
  const std::vector<float> lc = flat(ref.at("llama_cpp_logits")), hf = flat(ref.at("transformers_logits"));
  const Model m = load();
  const std::vector<float> got = stepwise_logits(m, prompt);
  const float d = max_diff(got, lc), hf_d = ref.at("llama_cpp_vs_transformers_max_abs").get<float>();
  std::printf("kq_llama: max |ours - llama.cpp| %.3g (transformers - llama.cpp: %.3g)\n", d, hf_d);
  EXPECT_LE(d, hf_d * 1.01f + 1e-4f);
  int ours = 0, theirs = 0;  // top-1 agreement with llama.cpp
  for (size_t t = 0; t < prompt.size(); ++t) {
    ours += argmax_row(got, t, m.spec().vocab) == argmax_row(lc, t, m.spec().vocab);
    theirs += argmax_row(hf, t, m.spec().vocab) == argmax_row(lc, t, m.spec().vocab);
  }
  EXPECT_GE(ours, theirs);
}

// On 8-bit activations (--int8-activations, the CLI's default for a GGUF on the CPU; llama.cpp's
// Q8_K / Q8_0 products, which test_q8k_gemv checks against libggml's own) the decoded logits
// stay near the exact ones: the activations' rounding, not a wrong scale or sign. (They come
// no closer to the fixture's llama.cpp logits than the exact ones: its f16 attention and KV
// cache perturb every product's input by as much, so its roundings of them differ.)
TEST(GgufKQuantModel, Int8ActivationDecodingStaysNearTheExactLogits) {
  const json ref = reference();
  const auto prompt = ref.at("prompt").get<std::vector<int>>();
  for (bool compact_mode : {true, false}) {
    ModelLoadOptions o;
    o.gguf_compact = compact_mode;
    const std::vector<float> exact = stepwise_logits(load(o), prompt);
    o.int8_activations = true;
    const Model m = load(o);
    const std::vector<float> got = stepwise_logits(m, prompt);
    const float d = max_diff(got, exact), scale = max_abs(exact);
    std::printf("kq_llama%s: max |8-bit activations - exact| %.3g (largest |logit| %.3g)\n",
                compact_mode ? " (compact)" : "", d, scale);
    EXPECT_GT(d, 0.0f) << "the 8-bit path was not taken";
    EXPECT_LE(d, 0.05f * scale) << (compact_mode ? "compact" : "default");
    int agree = 0;
    for (size_t t = 0; t < prompt.size(); ++t)
      agree += argmax_row(got, t, m.spec().vocab) == argmax_row(exact, t, m.spec().vocab);
    EXPECT_GE(agree, static_cast<int>(prompt.size()) - 1);
  }
}

// --requantize-gguf (keep_gguf_weights false) and the CUDA runs (keep_gguf_blocks false)
// quantize the Linears per --quant instead; bf16 compute too (the blocks run in float32).
TEST(GgufKQuantModel, OtherwiseTheLinearsAreQuantizedPerTheFlags) {
  ModelLoadOptions requant;
  requant.keep_gguf_weights = false;
  ModelLoadOptions cuda;
  cuda.keep_gguf_blocks = false;
  ModelLoadOptions bf16;
  bf16.compute_dtype = ComputeDType::BF16;
  for (const ModelLoadOptions& o : {requant, cuda, bf16}) {
    const Model m = load(o);
    for (int64_t l = 0; l < m.spec().n_layers; ++l)
      for (int w = 0; w < kAttentionLinears; ++w) {
        const QuantLinear& lin = m.block_linear(l, w);
        ASSERT_NE(lin.q4(), nullptr);
        EXPECT_TRUE(lin.q4()->state.ggml_source.empty());
      }
  }
}

// By default Q6_K, Q5_K and Q5_1 Linears and heads become Q8_0 of their values (within half a
// step of each 32-value block's largest, plus the fp16 scale's rounding) while Q2_K / Q3_K stay
// the file's blocks, and the planner counts them so.
TEST(GgufKQuantModel, ByDefaultFiveAndSixBitTypesAreQ8_0OfTheirValues) {
  ModelFiles files = open_model_files(kFile);
  const GgufFile g(kFile);
  const Model m = Model::load(files.spec, *files.tensors, ModelLoadOptions{});
  uint64_t q8_values = 0, block_values = 0;
  auto check = [&](const DenseWeight& d, const std::string& hf) {
    const GgmlType t = g.tensor(files.tensors->stored_name(hf)).type;
    const std::vector<float> want = files.tensors->get(hf);
    std::vector<float> got(want.size());
    d.rows_to_f32(0, d.rows(), got.data());
    if (t == GgmlType::Q2_K || t == GgmlType::Q3_K) {
      ASSERT_TRUE(d.gguf_blocks()) << hf;
      EXPECT_EQ(got, want) << hf;
      block_values += static_cast<uint64_t>(want.size());
      return;
    }
    ASSERT_TRUE(d.q8()) << hf;
    q8_values += static_cast<uint64_t>(want.size());
    for (size_t b = 0; b < want.size() / 32; ++b) {
      float amax = 0;
      for (size_t i = 32 * b; i < 32 * b + 32; ++i) amax = std::max(amax, std::fabs(want[i]));
      for (size_t i = 32 * b; i < 32 * b + 32; ++i)
        ASSERT_LE(std::fabs(got[i] - want[i]), (0.5f + 127.0f / 2048.0f) * amax / 127.0f + 1e-12f) << hf << " " << i;
    }
  };
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kAttentionLinears; ++w)
      check(*m.block_linear(l, w).dense(), layer_tensor_name(l, kBlockLinearModules[static_cast<size_t>(w)]));
  EXPECT_GT(block_values, 0u);
  const MemoryOptions mo = memory_options_for_run(kFile, ModelLoadOptions{}, MemoryMode::Generate, 1);
  EXPECT_EQ(mo.gguf_kept_block_values, block_values);
  EXPECT_EQ(mo.gguf_kept_q8_values, q8_values);
  check(m.lm_head(), "lm_head.weight");  // (Q6_K)
  check(m.embed_tokens(), "model.embed_tokens.weight");  // (Q5_K)
  EXPECT_EQ(mo.head_block_bytes, 0u);
  EXPECT_EQ(mo.embed_block_bytes, 0u);
  // (re-quantized a slab of rows at a time from the file's blocks: the same bytes as from a
  // float32 copy of the whole tensor)
  for (const char* hf : {"lm_head.weight", "model.embed_tokens.weight"}) {
    const DenseWeight& d = std::string(hf) == "lm_head.weight" ? m.lm_head() : m.embed_tokens();
    ASSERT_TRUE(files.tensors->get_stored_blocks(hf).has_value()) << hf;
    const DenseWeight whole = DenseWeight::to_q8_0(files.tensors->get(hf), d.rows(), d.cols(), hf);
    std::vector<float> a(static_cast<size_t>(d.rows() * d.cols())), b(a.size());
    d.rows_to_f32(0, d.rows(), a.data());
    whole.rows_to_f32(0, d.rows(), b.data());
    EXPECT_EQ(a, b) << hf;
  }
}

// Decoding on 8-bit activations (the decoding commands' GGUF default) keeps every block type
// (Q6_K, Q5_K, Q5_1, Q5_0 too) as the file's blocks, exactly its values, where their integer
// products beat or match the Q8_0 copy's at fewer bytes; the planner counts the same.
TEST(GgufKQuantModel, OnEightBitActivationsEveryBlockTypeStaysTheFileBlocks) {
  ModelFiles files = open_model_files(kFile);
  const GgufFile g(kFile);
  if (simd_level() < SimdLevel::AVX2) GTEST_SKIP() << "the blocks on 8-bit activations need the AVX2 integer kernels (QLORA_SIMD caps them off)";
  ModelLoadOptions o;
  o.int8_activations = true;
  o.int8_activations_gguf_only = true;
  EXPECT_EQ(gguf_block_types(o), GgufBlockTypes::All);
  const Model m = Model::load(files.spec, *files.tensors, o);
  uint64_t block_values = 0, block_bytes = 0;
  int seen_q5 = 0, seen_k = 0;
  auto check = [&](const DenseWeight& d, const std::string& hf) {
    const GgmlType t = g.tensor(files.tensors->stored_name(hf)).type;
    const std::vector<float> want = files.tensors->get(hf);
    seen_q5 += t == GgmlType::Q5_1 || t == GgmlType::Q5_0;
    ASSERT_TRUE(d.gguf_blocks()) << hf << " (" << ggml_type_name(t) << ")";
    EXPECT_EQ(d.gguf_type(), t) << hf;
    seen_k += t == GgmlType::Q5_K || t == GgmlType::Q6_K;
    std::vector<float> got(want.size());
    d.rows_to_f32(0, d.rows(), got.data());
    EXPECT_EQ(got, want) << hf;
    block_values += static_cast<uint64_t>(want.size());
    block_bytes += static_cast<uint64_t>(*ggml_nbytes(t, static_cast<int64_t>(want.size())));
  };
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kAttentionLinears; ++w)
      check(*m.block_linear(l, w).dense(), layer_tensor_name(l, kBlockLinearModules[static_cast<size_t>(w)]));
  EXPECT_GT(seen_q5, 0);
  EXPECT_GT(seen_k, 0);
  const MemoryOptions mo = memory_options_for_run(kFile, o, MemoryMode::Generate, 1);
  EXPECT_EQ(mo.gguf_kept_block_values, block_values);
  EXPECT_EQ(mo.gguf_kept_block_bytes, block_bytes);
  EXPECT_EQ(mo.gguf_kept_q8_values, 0u);
  check(m.lm_head(), "lm_head.weight");                  // (Q6_K)
  check(m.embed_tokens(), "model.embed_tokens.weight");  // (Q5_K)
  EXPECT_EQ(mo.head_block_bytes, m.lm_head().bytes());
  EXPECT_EQ(mo.embed_block_bytes, m.embed_tokens().bytes());
}

TEST(GgufKQuantModel, WhichTypesEachChoiceKeepsAsBlocks) {
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K})
    for (GgufBlockTypes w : {GgufBlockTypes::Smallest, GgufBlockTypes::All})
      EXPECT_TRUE(gguf_type_kept_as_blocks(t, w)) << ggml_type_name(t);
  for (GgmlType t : {GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_1, GgmlType::Q5_0}) {
    EXPECT_FALSE(gguf_type_kept_as_blocks(t, GgufBlockTypes::Smallest)) << ggml_type_name(t);
    EXPECT_TRUE(gguf_type_kept_as_blocks(t, GgufBlockTypes::All)) << ggml_type_name(t);
  }
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::F16})
    EXPECT_FALSE(gguf_type_kept_as_blocks(t, GgufBlockTypes::All)) << ggml_type_name(t);
  ModelLoadOptions o;
  EXPECT_EQ(gguf_block_types(o), GgufBlockTypes::Smallest);
  o.int8_activations = true;  // (the scalar integer kernels widen each row: Q8_0 is the faster there)
  EXPECT_EQ(gguf_block_types(o), simd_level() >= SimdLevel::AVX2 ? GgufBlockTypes::All : GgufBlockTypes::Smallest);
  o.gguf_compact = true;
  EXPECT_EQ(gguf_block_types(o), GgufBlockTypes::All);
}

std::vector<float> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// Each kept Linear's products for 1..17 tokens (one GEMV, a few tokens at once as batched
// decoding runs them, the panel GEMM beyond) equal those of a float32 copy of its values to
// summation order; a token among a few gets the bits it gets alone.
TEST(GgufKQuantModel, ProductsOfEveryTokenCountMatchTheFloat32Copy) {
  const Model m = load();
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kAttentionLinears; ++w) {
      const DenseWeight& d = *m.block_linear(l, w).dense();
      ASSERT_TRUE(d.gguf_blocks()) << "layer " << l << " linear " << w;
      std::vector<float> values(static_cast<size_t>(d.rows() * d.cols()));
      d.rows_to_f32(0, d.rows(), values.data());
      const DenseWeight f32(values.data(), d.rows(), d.cols(), ComputeDType::F32);
      const std::string what = std::string(ggml_type_name(d.gguf_type())) + " layer " + std::to_string(l);
      for (int64_t T : {1, 2, 5, 8, 9, 17}) {
        const std::vector<float> x = randn(T * d.cols(), 11 + static_cast<uint32_t>(T));
        std::vector<float> a(static_cast<size_t>(T * d.rows())), b(a.size()), one(static_cast<size_t>(d.rows()));
        d.matmul(a.data(), x.data(), T);
        f32.matmul(b.data(), x.data(), T);
        for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4 * (1 + std::fabs(b[i]))) << what << " T " << T;
        if (T > kernels::kBlockGemvMaxTokens) continue;
        for (int64_t t = 0; t < T; ++t) {
          d.matmul(one.data(), x.data() + t * d.cols(), 1);
          ASSERT_EQ(std::memcmp(one.data(), a.data() + t * d.rows(), one.size() * sizeof(float)), 0)
              << what << " token " << t << " of " << T;
        }
      }
    }
}

// A training step through the kept weights (the Linears' input gradients and the Q6_K head's,
// rows widened a tile at a time) matches one through float32 copies of the same values.
TEST(GgufKQuantModel, TrainingStepMatchesTheFloat32Copy) {
  ModelLoadOptions widened;
  widened.quant.quantize = false;
  widened.keep_q8_0_head = false;
  const Model kept = load(), f32 = load(widened);
  ASSERT_TRUE(kept.lm_head().gguf_blocks());
  ASSERT_FALSE(f32.lm_head().packed());
  const json ref = reference();
  const auto prompt = ref.at("prompt").get<std::vector<int>>();
  test::expect_same_lora_step(kept, f32, prompt);
}

// The memory planner counts them at the file's bytes.
TEST(GgufKQuantModel, PlannerCountsTheFileBytes) {
  const GgufFile g(kFile);
  uint64_t values = 0, bytes = 0, q5_0_values = 0;
  const json ref = reference();
  for (const auto& [name, type] : ref.at("types").items()) {
    if (name.rfind("blk.", 0) != 0) continue;
    const GgufTensorInfo& t = g.tensor(name);
    q5_0_values += t.type == GgmlType::Q5_0 ? static_cast<uint64_t>(t.numel()) : 0;
    values += static_cast<uint64_t>(t.numel());
    bytes += static_cast<uint64_t>(*ggml_nbytes(t.type, t.numel()));
  }
  ASSERT_GT(q5_0_values, 0u);
  const Gguf4bitKept k = model_source_gguf_kept_4bit(kFile, GgufBlockTypes::All);
  EXPECT_EQ(k.block_values, values);
  EXPECT_EQ(k.block_bytes, bytes);
  EXPECT_EQ(k.q8_values, 0u);
  EXPECT_EQ(k.values, 0u);
  const Q8HeadTensors h = model_source_q8_0_head(kFile, GgufBlockTypes::All);
  EXPECT_EQ(h.embed_block_bytes, static_cast<uint64_t>(*ggml_nbytes(GgmlType::Q5_K, g.tensor("token_embd.weight").numel())));
  EXPECT_EQ(h.head_block_bytes, static_cast<uint64_t>(*ggml_nbytes(GgmlType::Q6_K, g.tensor("output.weight").numel())));
  const Model m = load();
  size_t held = m.embed_tokens().bytes() + m.lm_head().bytes();
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kAttentionLinears; ++w) held += m.block_linear(l, w).dense()->bytes();
  EXPECT_EQ(held, bytes + h.embed_block_bytes + h.head_block_bytes);
  // The plan of a generate run: the kept linears as one item of the file's bytes, and the load
  // phase holding all of the weights.
  ModelFiles files = open_model_files(kFile);
  MemoryOptions o = memory_options_for_run(kFile, compact(), MemoryMode::Generate, 1);
  o.prompt_len = 8;
  o.new_tokens = 8;
  const MemoryPlan plan = plan_memory(files.spec, o);
  uint64_t item = 0;
  for (const MemoryItem& i : plan.items)
    if (i.name.find("as stored") != std::string::npos && i.name.find("Q6_K") != std::string::npos) item = i.bytes;
  EXPECT_EQ(item, bytes);
  EXPECT_GE(plan.load_peak_bytes, m.weight_bytes());
  // The load phase counts them as it counts every other weight: a gigabyte more of them is a
  // gigabyte more at its peak.
  MemoryOptions more = o;
  more.gguf_kept_block_bytes += 1'000'000'000;
  const MemoryPlan bigger = plan_memory(files.spec, more);
  EXPECT_GE(bigger.load_peak_bytes, plan.load_peak_bytes + 999'000'000);
}

}  // namespace
