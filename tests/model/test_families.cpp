// Every supported family against transformers, PEFT and bitsandbytes on a tiny random model
// of that architecture (tests/fixtures/families/<family>/, tools/make_family_fixtures.py):
//   * the float32 logits of a 20-token prompt, within float32 rounding of transformers;
//   * 32 greedy tokens with the KV cache, identical to transformers' generate;
//   * the logits with every block Linear in NF4 (quantized on load, blocksize 64), within
//     float32 rounding of transformers with bitsandbytes' NF4 round trip of the same Linears
//     (so the right tensors are quantized, and nothing else);
//   * a PEFT adapter (all-linear, B non-zero) loaded here gives PeftModel's logits;
//   * one LoRA training step's gradients equal PEFT's within float32 rounding;
//   * (llama, qwen2, qwen3, gemma) the GGUF llama.cpp's converter writes gives the same logits;
//   * in bf16 and fp16 with an adapter, the inference and the training forward agree.
// The fixture models have peaked logits, random norm weights and biases, and the shapes
// that make the family differ from Llama (see the script), so a wrong norm, scale, mask or
// rotary shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <tuple>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "export/merge.h"
#include "export/lora_gguf.h"
#include "export/merge_gguf.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/hf_config.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "lora/adapter_loader.h"
#include "lora/lora.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "optim/adamw.h"
#include "quant/quantize_checkpoint.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

std::string family_dir(const std::string& f) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + f; }

// The families with fixtures. A new family adds its fixture (tools/make_family_fixtures.py)
// and its name here.
const std::vector<std::string> kFamilies = {
    "llama",        "llama_bias",        "mistral",          "qwen2",           "qwen2_swa",    "qwen3",
    "gemma",        "gemma2",            "gemma3_text",      "gemma3_text_gguf", "phi3",        "phi4_mini",
    "phi",          "gpt_neox",          "gpt_neox_seq",     "gpt2",            "opt",          "opt_350m",
    "bloom",        "falcon",            "falcon_mq",        "falcon_seq",      "falcon_alibi", "stablelm",
    "stablelm_par", "starcoder2",        "starcoder2_swa",   "granite",         "olmo2",        "gptj",
    "cohere",       "cohere2",           "smollm3",          "smollm3_swa",     "olmo",         "arcee",
    "nemotron",     "llama_rope_llama3", "llama_rope_linear", "llama_rope_dynamic", "qwen2_rope_yarn",
    "mixtral",      "qwen2_moe",         "qwen3_moe",        "olmoe",           "olmo3",        "exaone4",
    "exaone4_nowin", "glm4", "cohere_qk", "stablelm_qk", "gemma3", "mistral3", "llava", "gpt_oss", "gpt_oss_gguf", "ministral", "ministral3", "qwen2_5_vl", "qwen3_vl", "ernie4_5", "hunyuan_v1_dense", "qwen3_5_text", "qwen3_5", "qwen3_5_gguf", "qwen3_5_moe", "qwen3_5_moe_gguf", "qwen3_next", "qwen3_next_gguf", "gemma4_text", "gemma4", "gemma4_moe", "gemma4_e", "glm4_moe", "ernie4_5_moe", "seed_oss", "deepseek_v3", "deepseek_v2", "granitemoe", "dots1", "minimax_m2", "hunyuan_v1_moe", "llama4_text", "llama4", "llama4_gguf", "lfm2", "lfm2_moe", "lfm2_vl", "granitemoehybrid", "granitemoehybrid_moe", "bamba", "mamba2", "nemotron_h", "nemotron_h_moe", "gpt_bigcode", "gpt_bigcode_mha", "mpt", "mpt_6h", "apertus", "mamba", "falcon_mamba", "jamba"};

// float32 rounding between two implementations of the same forward (other summation
// orders): measured up to 2e-6 of the largest logit here (llama's logits are within ±7,
// gemma's within ±16: its embeddings are scaled by sqrt(hidden)). 4e-6 of the largest
// logit leaves room, while a wrong scale, norm, mask or rotary moves logits by 1e-2 of it
// or more.
constexpr double kLogitRel = 4e-6;
// Gated DeltaNet hybrids (qwen3_5*): the fixture's model is much more sensitive to float32
// rounding (its NF4 round trip moves the logits by more than their largest, where the other
// fixtures' move by half of it), and transformers computes the rule chunked while we run it
// token by token. Measured against the same model in float64: transformers' float32 logits
// 1.1-1.5e-5 away (2.6e-6 of the largest), ours 2.3-2.6e-5 (4.5e-6), so the two float32
// results differ by up to 6.4e-6 of the largest logit. On an AVX2 CPU (Zen 3: our AVX2 kernels,
// oneDNN's AVX2 sgemm) ours measured 1.52e-5 of the largest from transformers' (qwen3_5_gguf;
// 1.3e-5 qwen3_5_moe_gguf's NF4), where the scalar kernels with our own gemm_rows stay under
// 1.2e-5 on the same CPU: the spread of float32 summation orders on these models. 2e-5; a
// wrong conv tap, decay, norm or gate moves them by 1e-2 or more.
constexpr double kHybridLogitRel = 2e-5;
// The gated DeltaNet hybrids' fixtures (Qwen3.5, Qwen3-Next), by the name of a comparison
// ("<fixture> ...") or a fixture.
// Mamba (1)'s fixtures likewise (a recurrence transformers computes as a whole-sequence exp(A dt),
// then a loop, we a block of channels at a time): with the NF4 round trip, transformers' float32
// logits are 2.5e-6 of the largest from its float64 ones, ours 4.1e-6 from its float32 ones; Jamba's
// (the same scan beside experts and attention): transformers' float32 logits 6.6e-6 of the largest from
// its float64 ones (4.7e-6 with PEFT's adapter).
bool hybrid_fixture(const std::string& what) {
  auto fixture_is = [&](const char* f) {  // ("mamba" itself or "mamba <comparison>", not "mamba2 ...")
    const std::string p(f);
    return what == p || what.rfind(p + " ", 0) == 0;
  };
  return what.rfind("qwen3_5", 0) == 0 || what.rfind("qwen3_next", 0) == 0 || fixture_is("mamba") ||
         fixture_is("falcon_mamba") || fixture_is("jamba");
}
// Gemma 4's fixtures are as sensitive: its scores are not scaled down (q and k are RMS-normed
// per head, then multiplied as they are), so its softmaxes are peaked. Against the same model
// in float64 (tools/make_family_fixtures.py's model, transformers float64): transformers'
// float32 logits 1.23e-5 away, ours 1.25e-5 (3.9e-6 of the largest logit, 3.17) -- and 1.6e-5
// (5.1e-6) from each other. They take the hybrids' tolerance.
bool gemma4_fixture(const std::string& what) { return what.rfind("gemma4", 0) == 0; }
// Gemma 4 E2B / E4B's form (gemma4_e: per-layer inputs, shared keys and values over 6 layers) is
// more sensitive still. Against the same model in float64: transformers' float32 logits are
// 2.7e-5 of the largest away (ours 2.4e-5), with PEFT's adapter 8.3e-5 (ours 3.4e-5), its
// float32 LoRA gradients 2.7e-4. Twice the largest of those; its loss curve is held to the
// float64 one (curve_float64).
bool gemma4_e_fixture(const std::string& what) { return what.rfind("gemma4_e", 0) == 0; }
constexpr double kGemma4ELogitRel = 1.7e-4, kGemma4EGradRel = 5.4e-4;
// The tolerance for a comparison named `what`: kLogitRel, or the hybrids' (and Gemma 4's).
double logit_rel_for(const std::string& what) {
  if (gemma4_e_fixture(what)) return kGemma4ELogitRel;
  return hybrid_fixture(what) || gemma4_fixture(what) ? kHybridLogitRel : kLogitRel;
}
// LoRA gradients: max |Δ| / max |ref| per tensor; measured up to 2.5e-5 (gemma), 1e-5
// (the others). A wrong backward is off by O(1).
constexpr double kGradRel = 5e-5;
// The gated DeltaNet fixtures (qwen3_5*, qwen3_next): transformers' own float32 LoRA gradients
// are up to 8.7e-5 (qwen3_next), 6.8e-5 (qwen3_5_moe), 5.8e-5 (qwen3_5_text) and 1.3e-5
// (qwen3_5) of the largest away from the same model's float64 ones (measured); about twice the
// largest of those.
constexpr double kHybridGradRel = 1.8e-4;

struct Fixture {
  json ref;
  std::unique_ptr<SafeTensorsFile> logits;
};

Fixture read_fixture(const std::string& f) {
  Fixture x;
  x.ref = json::parse(read_file(family_dir(f) + "/reference.json"));
  x.logits = std::make_unique<SafeTensorsFile>(family_dir(f) + "/logits.safetensors");
  return x;
}

// The model at `path` (a directory or a .gguf), float32 or NF4 (blocksize 64, no double
// quantization: what the bitsandbytes reference used).
Model load_path(const std::string& path, bool nf4 = false) {
  ModelFiles files = open_model_files(path);
  ModelLoadOptions o;
  o.quant.quantize = nf4;
  o.quant.type = QuantType::NF4;
  o.quant.blocksize = 64;
  o.quant.double_quant = false;
  return Model::load(files.spec, *files.tensors, o);
}

std::unique_ptr<Model> load(const std::string& f, bool nf4) { return std::make_unique<Model>(load_path(family_dir(f), nf4)); }

std::vector<float> prompt_logits(const Model& m, const std::vector<int>& prompt) {
  InferenceState st(m.spec(), static_cast<int64_t>(prompt.size()));
  std::vector<float> out(prompt.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, prompt, out.data(), /*all_logits=*/true);
  return out;
}

void expect_logits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what,
                   double rel = kLogitRel) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (rel == kLogitRel) rel = logit_rel_for(what);
  double worst = 0, peak = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(double(got[i]) - want[i]);
    peak = std::max(peak, std::fabs(double(want[i])));
    if (!(d <= worst)) worst = d, at = i;
  }
  EXPECT_LE(worst, rel * peak) << what << ": max |Δlogit| at " << at << " (ours " << got[at]
                                     << ", reference " << want[at] << "; largest logit " << peak << ")";
}

class Families : public ::testing::TestWithParam<std::string> {};

TEST_P(Families, LogitsMatchTransformers) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  // (a vision-language model's: the outer model_type, its language model's family inside)
  EXPECT_EQ(m->spec().hf_wrapper.empty() ? m->spec().family : m->spec().hf_wrapper,
            x.ref.at("model_type").get<std::string>());
  if (GetParam().find("_rope_") != std::string::npos) {
    EXPECT_EQ(std::string(m->spec().rope_scaling.name()), GetParam().substr(GetParam().rfind('_') + 1));
  }
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(*m, prompt), x.logits->to_float(x.logits->at("logits")), GetParam() + " float32");
}

// Where the fixture has one (falcon_alibi): the last logits of a prompt longer than 256
// tokens, past which Falcon's bf16 ALiBi bias rounds the key positions.
TEST_P(Families, LongPromptLastLogitsMatchTransformers) {
  const Fixture x = read_fixture(GetParam());
  if (!x.logits->find("long_prompt")) GTEST_SKIP() << "no long prompt in this fixture";
  const auto m = load(GetParam(), false);
  const std::vector<float> ids = x.logits->to_float(x.logits->at("long_prompt"));
  const std::vector<int> prompt(ids.begin(), ids.end());
  InferenceState st(m->spec(), static_cast<int64_t>(prompt.size()));
  std::vector<float> last(static_cast<size_t>(m->spec().vocab));
  forward(*m, st, prompt, last.data());
  expect_logits(last, x.logits->to_float(x.logits->at("long_last_logits")), GetParam() + " long prompt");
}

TEST_P(Families, GreedyTokensMatchTransformers) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  const int n_prompt = x.ref.at("greedy_prompt_len").get<int>();
  const auto want = x.ref.at("greedy").get<std::vector<int>>();
  InferenceState st(m->spec(), n_prompt + static_cast<int64_t>(want.size()));
  std::vector<float> logits(static_cast<size_t>(m->spec().vocab));
  std::vector<int> step(prompt.begin(), prompt.begin() + n_prompt), got;
  for (size_t k = 0; k < want.size(); ++k) {
    forward(*m, st, step, logits.data());
    const int next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    got.push_back(next);
    step = {next};
  }
  EXPECT_EQ(got, want) << GetParam();
}

TEST_P(Families, Nf4LogitsMatchBitsandbytes) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), true);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(*m, prompt), x.logits->to_float(x.logits->at("nf4_logits")), GetParam() + " nf4");
}

TEST_P(Families, PeftAdapterGivesPeftLogits) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  const PeftAdapter a = load_peft_adapter(family_dir(GetParam()) + "/initial_adapter");
  LoraModel lm(*m, a.config);
  a.apply_to(lm.layers());
  m->set_adapter(&lm);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(*m, prompt), x.logits->to_float(x.logits->at("peft_logits")), GetParam() + " peft");
  m->set_adapter(nullptr);
}

// A checkpoint transformers + bitsandbytes saved pre-quantized (NF4 with double quantization;
// LLM.int8) loads as it is stored and computes what transformers computes with it. For
// Conv1D families (gpt2) bitsandbytes quantized the transposed (out, in) weight, so the
// stored weight is not transposed again.
class FamiliesBnb : public ::testing::TestWithParam<std::string> {};

TEST_P(FamiliesBnb, FourBitCheckpointGivesBitsandbytesLogits) {
  const Fixture x = read_fixture(GetParam());
  ModelFiles files = open_model_files(family_dir(GetParam()) + "/bnb4");
  // (MoE checkpoints: transformers 5 saves the experts dense; they are quantized on load as
  // the fixture's reference quantized them, NF4 with double quantization)
  ModelLoadOptions o;
  o.quant.double_quant = true;
  const Model m = Model::load(files.spec, *files.tensors, o);
  const auto lins = m.spec().block_linears();
  for (int64_t l = 0; l < m.spec().n_layers; ++l) {
    for (int w = 0; w < kBlockLinearCount; ++w) {
      if (!lins[w].module || !m.spec().layer_has_linear(l, w)) continue;  // fused, or another kind of layer's
      const QuantLinear& q = m.block_linear(l, w);
      ASSERT_NE(q.q4(), nullptr) << GetParam() << " layer " << l << " " << lins[w].module << " was not kept 4-bit";
      EXPECT_TRUE(q.q4()->state.nested) << GetParam() << " layer " << l;
    }
  }
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("bnb4_logits")), GetParam() + " bnb4");
}

TEST_P(FamiliesBnb, EightBitCheckpointGivesBitsandbytesLogits) {
  if (!std::filesystem::exists(family_dir(GetParam()) + "/bnb8"))
    GTEST_SKIP() << "no 8-bit checkpoint (MoE: bitsandbytes has no LLM.int8 reference for the experts)";
  const Fixture x = read_fixture(GetParam());
  ModelFiles files = open_model_files(family_dir(GetParam()) + "/bnb8");
  const Model m = Model::load(files.spec, *files.tensors, ModelLoadOptions{});
  const auto lins = m.spec().block_linears();
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kBlockLinearCount; ++w) {
      if (!lins[w].module || !m.spec().layer_has_linear(l, w)) continue;
      ASSERT_TRUE(m.block_linear(l, w).is_int8()) << GetParam() << " layer " << l << " " << lins[w].module;
    }
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  // LLM.int8 rounds each activation to a code: a value within float32 rounding of a code
  // boundary flips with the last bit of the input, and which ones sit that close depends on
  // the float32 rounding before it (the CPU's kernels). Measured with bitsandbytes itself
  // (1e-6 relative noise on the input of every Linear8bitLt, 20 trials): phi's logits move by
  // up to 0.033 (5.9e-3 of the largest; 1 trial in 20 already at 1e-7), llama's by 0.057
  // (9.1e-3). On a Zen 4 CPU starcoder2 and olmo3 differed from bitsandbytes by one such flip
  // (2.9e-3, 2.7e-3) and the rest by under 1e-6; on a Zen 3 CPU phi too (5.1e-3). Our int8
  // products equal bitsandbytes' on the same input bit for bit (tests/quant). The fixtures seen to
  // flip on some CPU are held to bitsandbytes' own spread, 1.2e-2 of the largest logit; the
  // others (under 6e-7 on both CPUs) stay at kLogitRel, where a model-level wiring slip (a
  // rounding or threshold rule) would show.
  const std::string f = GetParam();
  const double rel = f == "starcoder2" || f == "olmo3" || f == "phi" ? 1.2e-2 : kLogitRel;
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("bnb8_logits")), GetParam() + " bnb8", rel);
}

// Merging a pre-quantized checkpoint writes its dequantized weights in the family's own
// layout (gpt2's Conv1D transposed back to (in, out)): the export computes what the 4-bit
// model did.
TEST_P(FamiliesBnb, MergedFourBitCheckpointGivesItsLogits) {
  const Fixture x = read_fixture(GetParam());
  ModelFiles files = open_model_files(family_dir(GetParam()) + "/bnb4");
  ModelLoadOptions o;
  o.quant.double_quant = true;  // (as above)
  const Model m = Model::load(files.spec, *files.tensors, o);
  TempDir tmp("merge_bnb4_" + GetParam());
  HfExportOptions eo;
  eo.dtype = DType::F32;
  eo.log = false;
  write_merged_hf_dir(m, files, {}, tmp.path("hf"), eo, false);
  const Model back = load_path(tmp.path("hf"));
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(back, prompt), x.logits->to_float(x.logits->at("bnb4_logits")), GetParam() + " bnb4 merged");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FamiliesBnb,
                         ::testing::Values("llama", "qwen3", "gemma2", "phi3", "phi", "stablelm", "starcoder2", "granite",
                                           "olmo2", "gptj", "cohere", "cohere2", "smollm3", "olmo", "arcee", "nemotron",
                                           "gpt2", "gpt_neox", "opt", "opt_350m", "bloom", "falcon", "falcon_mq",
                                           "falcon_alibi", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "olmo3",
                                           "exaone4", "glm4", "cohere_qk", "stablelm_qk", "gemma3", "gpt_oss", "ministral3",
                                           "qwen3_5_text", "gemma4_text", "gemma4_moe", "gemma4_e", "glm4_moe", "ernie4_5_moe",
                                           "seed_oss", "deepseek_v3", "deepseek_v2", "granitemoe", "dots1", "minimax_m2", "llama4_text", "lfm2", "lfm2_moe",
                                           "granitemoehybrid", "granitemoehybrid_moe", "bamba", "mamba2", "nemotron_h",
                                           "nemotron_h_moe", "gpt_bigcode", "mpt", "apertus", "falcon_mamba", "jamba"),
                         [](const auto& info) { return std::string(info.param); });

// An adapter trained here is saved under PEFT's names for the family (the same keys and
// shapes as PEFT's own save of that model), reads back to the same logits, and, handed to
// tools/check_family_merges.py through QLORA_PEFT_EXPORT_DIR, loads in PeftModel with the
// logits computed here.
TEST_P(Families, OurAdapterSavesUnderPeftNames) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  const PeftAdapter theirs = load_peft_adapter(family_dir(GetParam()) + "/initial_adapter");
  LoraModel lm(*m, theirs.config);
  LoraRng rng(17);
  for (LoraLayer& l : lm.layers())
    for (float& b : l.B) b = 0.1f * (rng.next_float() - 0.5f);
  TempDir tmp("ours_" + GetParam());
  save_peft_adapter(tmp.path("a"), lm.config(), "base", lm.layers());
  const SafeTensorsFile ours(tmp.path("a") + "/adapter_model.safetensors");
  const SafeTensorsFile ref(family_dir(GetParam()) + "/initial_adapter/adapter_model.safetensors");
  ASSERT_EQ(ours.tensors().size(), ref.tensors().size());
  for (const auto& t : ref.tensors()) {
    ASSERT_NE(ours.find(t.name), nullptr) << GetParam() << ": PEFT's key " << t.name << " is not in ours";
    EXPECT_EQ(ours.at(t.name).shape, t.shape) << t.name;
  }
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  m->set_adapter(&lm);
  const std::vector<float> want = prompt_logits(*m, prompt);
  m->set_adapter(nullptr);
  LoadedAdapter back = load_adapter(tmp.path("a"), *m);
  m->set_adapter(back.lora.get());
  EXPECT_EQ(prompt_logits(*m, prompt), want) << GetParam();
  m->set_adapter(nullptr);
  if (const char* out = std::getenv("QLORA_PEFT_EXPORT_DIR")) {
    const std::string dir = std::string(out) + "/" + GetParam();
    save_peft_adapter(dir, lm.config(), "base", lm.layers());
    SafeTensorsWriter w;
    w.add_vector("logits", DType::F32, {static_cast<int64_t>(prompt.size()), m->spec().vocab}, want);
    w.write(dir + "/ours_logits.safetensors");
    // and on PEFT's default target modules for the family, where the fixture has them
    if (std::filesystem::exists(family_dir(GetParam()) + "/default_adapter")) {
      LoraModel dl(*m, load_peft_adapter(family_dir(GetParam()) + "/default_adapter").config);
      for (LoraLayer& l : dl.layers())
        for (float& b : l.B) b = 0.1f * (rng.next_float() - 0.5f);
      save_peft_adapter(dir + "_default", dl.config(), "base", dl.layers());
      m->set_adapter(&dl);
      const std::vector<float> dwant = prompt_logits(*m, prompt);
      m->set_adapter(nullptr);
      SafeTensorsWriter dw;
      dw.add_vector("logits", DType::F32, {static_cast<int64_t>(prompt.size()), m->spec().vocab}, dwant);
      dw.write(dir + "_default/ours_logits.safetensors");
    }
  }
}

// An adapter on PEFT's default target modules for the model type (what LoraConfig without
// target_modules picks: gpt2's c_attn, query_key_value for gpt_neox/bloom/falcon, q_proj and
// v_proj for llama/opt) gives PeftModel's logits here too.
TEST_P(Families, PeftDefaultTargetsAdapterGivesPeftLogits) {
  const std::string dir = family_dir(GetParam()) + "/default_adapter";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no default-target adapter in this fixture";
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  const PeftAdapter a = load_peft_adapter(dir);
  LoraModel lm(*m, a.config);
  a.apply_to(lm.layers());
  size_t all_linear = 0;  // (what all-linear would adapt)
  for (const BlockLinearSpec& b : m->spec().block_linears()) all_linear += b.module ? 1 : 0;
  EXPECT_LT(lm.layers().size(), static_cast<size_t>(m->spec().n_layers) * all_linear) << "not PEFT's short default list?";
  m->set_adapter(&lm);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(*m, prompt), x.logits->to_float(x.logits->at("peft_default_logits")),
                GetParam() + " peft default targets");
  m->set_adapter(nullptr);
}

// fan_in_fan_out is what PEFT writes for Conv1D (gpt2) targets, where it changes nothing
// but the merge; on a model whose Linears are (out, in) it means the adapter belongs to
// another model, and attaching it says so. Our own adapters say what PEFT would.
TEST(FamiliesPeft, FanInFanOutFollowsTheModelsLinears) {
  const auto llama = load("llama", false);
  PeftAdapter a = load_peft_adapter(family_dir("gpt2") + "/initial_adapter");
  EXPECT_TRUE(a.config.fan_in_fan_out);
  try {
    LoraModel lm(*llama, a.config);
    ADD_FAILURE() << "a fan_in_fan_out adapter attached to llama";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fan_in_fan_out"), std::string::npos) << e.what();
  }
  const auto gpt2 = load("gpt2", false);
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  const LoraModel lm(*gpt2, c);
  EXPECT_TRUE(lm.config().fan_in_fan_out);
  EXPECT_EQ(peft_adapter_config_json(lm.config(), "x", lm.layers())["fan_in_fan_out"], true);
  EXPECT_EQ(lm.layers()[0].module_path, "transformer.h.0.attn.c_attn");
}

// PEFT refuses LoRA on a Mamba2 model's out_proj (its fused kernel bypasses adapters), at
// creation and at load: all-linear leaves it out here (in_proj only), and naming it is refused,
// so every adapter we save loads in PEFT. (Granite 4.0-H's mamba.out_proj PEFT adapts.)
TEST(FamiliesPeft, Mamba2LeavesOutProjToPeftsRule) {
  const auto m = load("mamba2", false);
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  const LoraModel lm(*m, c);
  ASSERT_EQ(lm.layers().size(), 3u);
  for (const auto& l : lm.layers()) EXPECT_TRUE(l.module_path.ends_with(".mixer.in_proj")) << l.module_path;
  for (std::vector<std::string> targets : {std::vector<std::string>{"in_proj", "out_proj"}, {"in_proj", "conv1d"}}) {
    LoraConfig o;
    o.r = 2;
    o.target_modules = targets;
    try {
      LoraModel bad(*m, o);
      ADD_FAILURE() << "LoRA on a Mamba2 " << targets[1] << " was built";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("PEFT refuses"), std::string::npos) << e.what();
    }
  }
  LoraConfig rx;
  rx.r = 2;
  rx.target_regex = R"(.*mixer\.(in_proj|conv1d))";
  EXPECT_THROW(LoraModel(*m, rx), Error);
  const auto g = load("granitemoehybrid", false);
  const LoraModel lg(*g, c);
  bool out_proj = false;
  for (const auto& l : lg.layers()) out_proj = out_proj || l.module_path.ends_with(".mamba.out_proj");
  EXPECT_TRUE(out_proj);
}

// Mamba (1) and Falcon-Mamba: PEFT refuses out_proj and conv1d as for Mamba2. transformers' MambaMixer
// multiplies by dt_proj.weight itself (an adapter there does nothing under PEFT): mamba's all-linear
// adapts in_proj and x_proj, and naming dt_proj is refused. FalconMambaMixer does the same unquantized
// but runs dt_proj as a module when quantized (QLoRA): falcon_mamba's all-linear adapts it there.
TEST(FamiliesPeft, MambaLeavesDtProjAndOutProjOut) {
  for (const std::string f : {"mamba", "falcon_mamba", "falcon_mamba nf4"}) {
    const bool falcon = f != "mamba", nf4 = f == "falcon_mamba nf4";
    const auto m = load(falcon ? "falcon_mamba" : "mamba", nf4);
    LoraConfig c;
    c.r = 2;
    c.all_linear = true;
    const LoraModel lm(*m, c);
    ASSERT_EQ(lm.layers().size(), (nf4 ? 3 : 2) * static_cast<size_t>(m->spec().n_layers)) << f;
    for (const auto& l : lm.layers())
      EXPECT_TRUE(l.module_path.ends_with(".mixer.in_proj") || l.module_path.ends_with(".mixer.x_proj") ||
                  (nf4 && l.module_path.ends_with(".mixer.dt_proj")))
          << l.module_path;
    for (const char* bad : {"dt_proj", "out_proj"}) {
      if (nf4 && std::string(bad) == "dt_proj") continue;
      LoraConfig o;
      o.r = 2;
      o.target_modules = {"in_proj", bad};
      try {
        LoraModel lo(*m, o);
        ADD_FAILURE() << "LoRA on a " << f << " " << bad << " was built";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
      }
    }
  }
}

// Falcon-Mamba's dt_proj adapter where it is live in transformers: over the bnb4/ checkpoint (the
// quantized model's path calls dt_proj as a module), PEFT's adapter on in_proj, x_proj and dt_proj
// gives PeftModel's logits.
TEST(FamiliesPeft, FalconMambaDtProjAdapterOnBnb4GivesPeftLogits) {
  const Fixture x = read_fixture("falcon_mamba");
  ModelFiles files = open_model_files(family_dir("falcon_mamba") + "/bnb4");
  ModelLoadOptions o;
  o.quant.double_quant = true;
  Model m = Model::load(files.spec, *files.tensors, o);
  const PeftAdapter a = load_peft_adapter(family_dir("falcon_mamba") + "/bnb4_adapter");
  LoraModel lm(m, a.config);
  a.apply_to(lm.layers());
  bool dt = false;
  for (const auto& l : lm.layers()) dt = dt || l.module_path.ends_with(".mixer.dt_proj");
  EXPECT_TRUE(dt);
  m.set_adapter(&lm);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("bnb4_adapter_logits")),
                "falcon_mamba bnb4 adapter");
  m.set_adapter(nullptr);
}

// PEFT's all-linear adapters and QLoRA-trained ones name dt_proj, which transformers' Falcon-Mamba /
// Jamba mixer bypasses on an unquantized model: a new adapter there leaves it out, but one being
// loaded keeps it (it was trained where dt_proj ran; PEFT's merge_and_unload and llama.cpp run it)
// on either base, so that merging a QLoRA adapter onto the dense model keeps all of it.
TEST(FamiliesPeft, BypassedDtProjAdapterLoadsWithIt) {
  for (const bool nf4 : {false, true}) {
    const auto m = load("falcon_mamba", nf4);
    const LoadedAdapter a = load_adapter(family_dir("falcon_mamba") + "/bnb4_adapter", *m);
    size_t dt = 0;
    for (const auto& l : a.lora->layers()) dt += l.module_path.ends_with(".mixer.dt_proj");
    EXPECT_EQ(dt, static_cast<size_t>(m->spec().n_layers)) << (nf4 ? "nf4" : "f32");
    EXPECT_EQ(a.lora->layers().size(), 3 * static_cast<size_t>(m->spec().n_layers));
  }
}

// Jamba's MoE modules in transformers 5's tree: feed_forward.router and feed_forward.experts (what
// PEFT's target_parameters name), not the canonical mlp.gate / mlp.experts.
TEST(FamiliesPeft, JambaMoeModulePaths) {
  const auto m = load("jamba", false);
  EXPECT_EQ(moe_router_module_path(m->spec(), 1), "model.layers.1.feed_forward.router");
  EXPECT_EQ(moe_experts_module(m->spec(), 3), "model.layers.3.feed_forward.experts");
}

// Nemotron-H is under PEFT's Mamba rule too: all-linear adapts each layer's own Linears (the Mamba
// layers' in_proj, the attention's q/k/v/o, the MLP layers' up/down) and never the mixer's
// out_proj, which naming is refused.
TEST(FamiliesPeft, NemotronHLeavesOutProjToPeftsRule) {
  const auto m = load("nemotron_h", false);
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  const LoraModel lm(*m, c);
  std::vector<std::string> got;
  for (const auto& l : lm.layers()) got.push_back(l.module_path);
  const std::vector<std::string> want = {
      "model.layers.0.mixer.in_proj", "model.layers.1.mixer.up_proj", "model.layers.1.mixer.down_proj",
      "model.layers.2.mixer.q_proj",  "model.layers.2.mixer.k_proj",  "model.layers.2.mixer.v_proj",
      "model.layers.2.mixer.o_proj",  "model.layers.3.mixer.up_proj", "model.layers.3.mixer.down_proj",
      "model.layers.4.mixer.in_proj"};
  std::sort(got.begin(), got.end());
  std::vector<std::string> sorted_want = want;
  std::sort(sorted_want.begin(), sorted_want.end());
  EXPECT_EQ(got, sorted_want);
  LoraConfig o;
  o.r = 2;
  o.target_modules = {"in_proj", "out_proj"};
  EXPECT_THROW(LoraModel(*m, o), Error);
}

// What NVIDIA's own Nemotron-H files look like, where the fixture (transformers 5's save) differs:
// an adapter trained on the remote-code model (modules under backbone.*) applies as PEFT + transformers 5
// apply it (their backbone. -> model. renaming); a config.json of transformers 4 (a bare Infinity in
// time_step_limit) reads, and quantizes with `qlora quantize`; tie_word_embeddings true is ignored as
// NemotronHForCausalLM ignores it (it keeps its lm_head).
TEST(NemotronH, NvidiaFilesReadAsTransformersReadsThem) {
  const Fixture x = read_fixture("nemotron_h");
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  TempDir tmp("nemotron_h_nvidia");
  const std::string ad = tmp.path("adapter");
  std::filesystem::create_directories(ad);
  std::filesystem::copy_file(family_dir("nemotron_h") + "/initial_adapter/adapter_config.json", ad + "/adapter_config.json");
  {
    const SafeTensorsFile in(family_dir("nemotron_h") + "/initial_adapter/adapter_model.safetensors");
    SafeTensorsWriter w;
    for (const SafeTensorInfo& t : in.tensors()) {
      std::string n = t.name;
      const std::string from = "base_model.model.model.";
      ASSERT_EQ(n.rfind(from, 0), 0u) << n;
      n = "base_model.model.backbone." + n.substr(from.size());
      w.add(n, t.dtype, t.shape, in.data(t));
    }
    w.write(ad + "/adapter_model.safetensors");
  }
  {
    auto m = load("nemotron_h", false);
    const LoadedAdapter a = load_adapter(ad, *m);
    m->set_adapter(a.lora.get());
    expect_logits(prompt_logits(*m, prompt), x.logits->to_float(x.logits->at("peft_logits")), "nemotron_h backbone adapter");
    m->set_adapter(nullptr);
  }
  const std::string dir = tmp.path("hf");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(family_dir("nemotron_h") + "/model.safetensors", dir + "/model.safetensors");
  std::string cfg = json::parse(read_file(family_dir("nemotron_h") + "/config.json")).dump();
  json c = json::parse(cfg);
  c["tie_word_embeddings"] = true;
  c["time_step_limit"] = "@";
  cfg = c.dump();
  cfg.replace(cfg.find("\"@\""), 3, "[0.0, Infinity]");
  std::ofstream(dir + "/config.json") << cfg;
  const Model m = load_path(dir);
  EXPECT_FALSE(m.spec().tied_embeddings);
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("logits")), "nemotron_h transformers 4 config");
  QuantizeOptions q;
  (void)quantize_checkpoint(dir, tmp.path("nf4"), q);
  EXPECT_TRUE(std::filesystem::exists(tmp.path("nf4") + "/config.json"));
  EXPECT_EQ(open_model_files(tmp.path("nf4")).spec.family, "nemotron_h");
}

// The variants not built yet are refused, naming what is missing, rather than run as a
// different model.
TEST(FamiliesConfig, UnsupportedVariantsSayWhy) {
  auto refused = [](nlohmann::json j, const std::string& what) {
    try {
      spec_from_hf_config(j, "config.json");
      ADD_FAILURE() << "accepted: " << j.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const nlohmann::json opt = {{"model_type", "opt"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                              {"num_attention_heads", 4}, {"ffn_dim", 96}, {"vocab_size", 160},
                              {"max_position_embeddings", 128}};
  EXPECT_NO_THROW(spec_from_hf_config(opt, "config.json"));
  // opt-350m's two differences are read (its fixture runs them), OPT's norms without weights
  // are refused.
  nlohmann::json opt350 = opt;
  opt350["do_layer_norm_before"] = false;
  opt350["word_embed_proj_dim"] = 32;
  const ModelSpec s350 = spec_from_hf_config(opt350, "config.json");
  EXPECT_TRUE(s350.post_norm);
  EXPECT_FALSE(s350.final_norm);
  EXPECT_EQ(s350.embed_width(), 32);
  nlohmann::json noaffine = opt;
  noaffine["layer_norm_elementwise_affine"] = false;
  refused(noaffine, "layer_norm_elementwise_affine");
  const nlohmann::json gpt2 = {{"model_type", "gpt2"}, {"n_embd", 64}, {"n_layer", 2}, {"n_head", 4},
                               {"vocab_size", 160}, {"scale_attn_by_inverse_layer_idx", true}};
  refused(gpt2, "scale_attn_by_inverse_layer_idx");
  nlohmann::json neox = {{"model_type", "gpt_neox"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                         {"num_attention_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 160},
                         {"hidden_act", "swish"}};
  refused(neox, "hidden_act");
  neox["hidden_act"] = "gelu";
  EXPECT_EQ(spec_from_hf_config(neox, "config.json").rotary_dim, 4);  // rotary_pct's default 0.25 of 16
  // phi: PhiConfig's default partial_rotary_factor is 0.5; an explicit one wins; qk_layernorm
  // and other activations are refused by name.
  nlohmann::json phi = {{"model_type", "phi"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                        {"num_attention_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 160}};
  const ModelSpec sphi = spec_from_hf_config(phi, "config.json");
  EXPECT_EQ(sphi.rotary_dim, 8);
  EXPECT_TRUE(sphi.head_bias && sphi.parallel_residual && sphi.shared_branch_norm && sphi.qkv_bias);
  EXPECT_EQ(sphi.act, Activation::GeluTanh);
  EXPECT_EQ(sphi.max_positions, 2048);
  phi["partial_rotary_factor"] = 0.25;
  EXPECT_EQ(spec_from_hf_config(phi, "config.json").rotary_dim, 4);
  nlohmann::json qkln = phi;
  qkln["qk_layernorm"] = true;
  refused(qkln, "qk_layernorm");
  phi["hidden_act"] = "relu";
  refused(phi, "hidden_act");
  // stablelm: StableLmConfig's default partial_rotary_factor 0.25, the sequential block
  // unless use_parallel_residual; StableLM 2 12B's qk_layernorm: per-head norms, one tensor
  // per head (the stablelm_qk fixture runs them).
  nlohmann::json slm = {{"model_type", "stablelm"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                        {"num_attention_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 160}};
  const ModelSpec sslm = spec_from_hf_config(slm, "config.json");
  EXPECT_EQ(sslm.rotary_dim, 4);
  EXPECT_EQ(sslm.norm, NormKind::LayerNorm);
  EXPECT_EQ(sslm.mlp, MlpKind::SwiGLU);
  EXPECT_FALSE(sslm.parallel_residual || sslm.qkv_bias || sslm.o_bias || sslm.head_bias);
  slm["qk_layernorm"] = true;
  const ModelSpec sslm_qk = spec_from_hf_config(slm, "config.json");
  EXPECT_TRUE(sslm_qk.qk_norm_head_weights && sslm_qk.qk_norm_tensor_per_head);
  size_t per_head = 0;
  for (const TensorSpec& t : sslm_qk.tensors()) per_head += t.name.find("_layernorm.norms.") != std::string::npos;
  EXPECT_EQ(per_head, 2u * (4 + 4));  // (2 layers x (q heads + k heads))
  // starcoder2: a tied head, the tanh GELU and biases by default.
  const nlohmann::json sc2 = {{"model_type", "starcoder2"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                              {"num_attention_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 160}};
  const ModelSpec ssc2 = spec_from_hf_config(sc2, "config.json");
  EXPECT_TRUE(ssc2.tied_embeddings && ssc2.qkv_bias && ssc2.o_bias && ssc2.mlp_bias);
  EXPECT_EQ(ssc2.act, Activation::GeluTanh);
  EXPECT_EQ(ssc2.sliding_window, 0);
  // granite: the four multipliers default to 1 (a plain llama block); a non-positive one is refused.
  nlohmann::json gr = {{"model_type", "granite"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                       {"num_attention_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 160}};
  const ModelSpec sgr = spec_from_hf_config(gr, "config.json");
  EXPECT_EQ(sgr.embed_multiplier, 1.0f);
  EXPECT_EQ(sgr.residual_multiplier, 1.0f);
  EXPECT_EQ(sgr.logit_divisor, 1.0f);
  gr["logits_scaling"] = 0.0;
  refused(gr, "logits_scaling");
  // cohere: CohereConfig's logit_scale 0.0625 and tied head by default, LayerNorms without
  // biases (none expected in the checkpoint); Command R+'s use_qk_norm: per-head q/k norms with
  // (heads, head_dim) weights (the cohere_qk fixture runs them).
  nlohmann::json co = {{"model_type", "cohere"}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                       {"num_attention_heads", 4}, {"intermediate_size", 96}, {"vocab_size", 160}};
  const ModelSpec sco = spec_from_hf_config(co, "config.json");
  EXPECT_EQ(sco.logit_factor(), 0.0625f);
  EXPECT_TRUE(sco.tied_embeddings && sco.rope_interleaved && !sco.norm_bias);
  for (const TensorSpec& t : sco.tensors()) EXPECT_FALSE(t.name.ends_with("norm.bias")) << t.name;
  co["use_qk_norm"] = true;
  const ModelSpec sqk = spec_from_hf_config(co, "config.json");
  EXPECT_TRUE(sqk.qk_norm && sqk.qk_norm_head_weights);
  bool has_q_norm = false;
  for (const TensorSpec& t : sqk.tensors())
    if (t.name == "model.layers.0.self_attn.q_norm.weight") {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{4, 16}));
      has_q_norm = true;
    }
  EXPECT_TRUE(has_q_norm);
}

// Phi-2 GGUFs made from the original checkpoint hold one attn_qkv (its Wqkv); the fixture
// script checked llama.cpp reads this file as it reads the three-tensor one. It loads as a
// fused Linear with the same logits, takes an adapter on the fused module, and refuses a
// Hugging Face merge (PhiForCausalLM has no fused form) while a GGUF merge works.
// A family llama.cpp cannot run (GPT-J) merges to a Hugging Face directory; a GGUF is refused
// by name, before anything is written.
// A quantized MoE GGUF: each expert is read as its slice of llama.cpp's 3-D tensor, the same
// values as that part of the whole tensor dequantized, and lands in that expert's Linear
// (gate and up rows of ffn_gate_exps / ffn_up_exps, down of ffn_down_exps). (Logits are not
// compared: on these random tiny models Q8_0's rounding flips the routing of a few tokens.)
TEST(FamiliesGguf, QuantizedExpertTensorsReadPerExpert) {
  const Model m = load_path(family_dir("mixtral") + "/model.gguf");
  ModelFiles files = open_model_files(family_dir("mixtral") + "/model.gguf");
  TempDir tmp("moe_q8_gguf");
  GgufExportOptions eo;
  eo.type = GgmlType::Q8_0;
  eo.log = false;
  write_merged_gguf(m, files, {}, tmp.path("q8.gguf"), eo, false);
  const GgufFile g(tmp.path("q8.gguf"));
  const GgufTensorInfo& t = g.tensor("blk.1.ffn_down_exps.weight");
  ASSERT_EQ(t.type, GgmlType::Q8_0);
  ASSERT_EQ(t.shape(), (std::vector<int64_t>{m.spec().n_experts, m.spec().hidden, m.spec().expert_ffn}));
  const std::vector<float> all = g.tensor_to_f32(t);
  const size_t per = all.size() / static_cast<size_t>(m.spec().n_experts);
  for (int64_t e = 0; e < m.spec().n_experts; ++e) {
    const std::vector<float> one = g.tensor_slice_to_f32(t, e);
    ASSERT_EQ(one.size(), per);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + static_cast<std::ptrdiff_t>(e * per))) << e;
  }
  EXPECT_THROW(g.tensor_slice_to_f32(t, m.spec().n_experts), Error);
  const Model q = load_path(tmp.path("q8.gguf"));  // (dense float32: the values as read)
  const int64_t F = q.spec().expert_ffn, C = q.spec().hidden;
  const std::vector<float> gate = g.tensor_to_f32(g.tensor("blk.1.ffn_gate_exps.weight"));
  const std::vector<float> up = g.tensor_to_f32(g.tensor("blk.1.ffn_up_exps.weight"));
  for (int64_t e = 0; e < q.spec().n_experts; ++e) {
    const LayerWeights& L = q.layers()[1];
    std::vector<float> gu(static_cast<size_t>(2 * F * C)), d(static_cast<size_t>(C * F));
    L.expert_gate_up[static_cast<size_t>(e)].dequantize_rows(0, 2 * F, gu.data());
    L.expert_down[static_cast<size_t>(e)].dequantize_rows(0, C, d.data());
    EXPECT_TRUE(std::equal(gu.begin(), gu.begin() + F * C, gate.begin() + e * F * C)) << "gate of expert " << e;
    EXPECT_TRUE(std::equal(gu.begin() + F * C, gu.end(), up.begin() + e * F * C)) << "up of expert " << e;
    EXPECT_TRUE(std::equal(d.begin(), d.end(), all.begin() + static_cast<std::ptrdiff_t>(e * per))) << "down of " << e;
  }
}

// The fixture `f` (with `tokenizer_from`'s tokenizer) merged to GGUF is refused with a message
// containing `what`: llama.cpp would load it as another model, or not at all.
void expect_gguf_merge_refused(const std::string& f, const std::string& tokenizer_from, const std::string& what) {
  const Model m = load_path(family_dir(f));
  ModelFiles files = open_model_files(family_dir(f), family_dir(tokenizer_from) + "/model.gguf");
  TempDir tmp(f + "_refused_gguf");
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  try {
    write_merged_gguf(m, files, {}, tmp.path("m.gguf"), eo, false);
    ADD_FAILURE() << f << ": wrote a GGUF llama.cpp would not run as this model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

// llama.cpp decides some variants by the layer count: exaone4's windows (the 64-layer 32B
// only; the exaone4 fixture has 4 layers, three sliding) and command-r's per-head q/k norms
// (Command R+'s 64 layers only). Other sizes have no GGUF form, and say so.
TEST(FamiliesGguf, VariantsLlamaCppKeysOnTheLayerCountAreRefusedElsewhere) {
  expect_gguf_merge_refused("exaone4", "exaone4_nowin", "64-layer");
  expect_gguf_merge_refused("cohere_qk", "cohere", "64-layer");
}

// llama.cpp's mistral3 GGUF of Ministral 3 (the fixture's, written as convert_hf_to_gguf.py's
// Ministral3Model does: llama's q/k rows, yarn with its log multiplier, the attention
// temperature; llama.cpp ran it within 1.6e-5 of transformers) gives transformers' logits,
// the temperature's periods crossed (merges written back: FamiliesGguf; llama.cpp on them:
// tools/check_family_merges.py).
TEST(FamiliesGguf, Ministral3GgufGivesTransformersLogits) {
  const Fixture x = read_fixture("ministral3");
  const Model m = load_path(family_dir("ministral3") + "/model.gguf");
  EXPECT_EQ(m.spec().family, "ministral3");
  EXPECT_EQ(m.spec().q_pos_scale_beta, 0.5f);
  EXPECT_EQ(m.spec().q_pos_scale_period, 8);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("logits")), "ministral3 gguf");
}

TEST(FamiliesGguf, GptjMergeToGgufSaysLlamaCppHasNoGraph) {
  ModelFiles files = open_model_files(family_dir("gptj"));
  const Model m = load_path(family_dir("gptj"));
  TempDir tmp("gptj_gguf");
  GgufExportOptions go;
  go.type = GgmlType::F32;
  go.log = false;
  try {
    write_merged_gguf(m, files, {}, tmp.path("m.gguf"), go, false);
    ADD_FAILURE() << "a gptj GGUF was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama.cpp has no architecture for model_type 'gptj'"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.path("m.gguf")));
}

TEST(FamiliesGgufPhi, FusedQkvGgufGivesTheSameLogits) {
  const Fixture x = read_fixture("phi");
  const std::string path = family_dir("phi") + "/model_fused_qkv.gguf";
  const Model m = load_path(path);
  EXPECT_TRUE(m.spec().fused_qkv);
  EXPECT_TRUE(m.spec().head_bias);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("logits")), "phi fused-qkv gguf");
  ModelFiles files = open_model_files(path);
  TempDir tmp("phi_fused");
  HfExportOptions eo;
  eo.dtype = DType::F32;
  eo.log = false;
  try {
    write_merged_hf_dir(m, files, {}, tmp.path("hf"), eo, false);
    ADD_FAILURE() << "a fused-qkv phi merged to a Hugging Face directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fused attn_qkv"), std::string::npos) << e.what();
  }
  GgufExportOptions go;
  go.type = GgmlType::F32;
  go.log = false;
  write_merged_gguf(m, files, {}, tmp.path("m.gguf"), go, false);
  expect_logits(prompt_logits(load_path(tmp.path("m.gguf")), prompt), x.logits->to_float(x.logits->at("logits")),
                "phi fused-qkv merged gguf");
}

// GPT-2's original checkpoints were saved from the base model: "h.0.attn.c_attn.weight",
// "wte.weight", no "transformer." prefix. They load as the same model.
TEST(FamiliesPeft, Gpt2WithoutTheBaseModelPrefixLoads) {
  const Fixture x = read_fixture("gpt2");
  const Model m = load_path(family_dir("gpt2") + "/base_names");
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("logits")), "gpt2 base names");
}

// An adapter on `m` with `c` is refused, naming query_key_value (a GGUF's fused q/k/v in
// an order PEFT's B rows do not follow: `how`).
void expect_qkv_lora_refused(const Model& m, const LoraConfig& c, const char* how) {
  try {
    LoraModel lm(m, c);
    ADD_FAILURE() << "LoRA on a " << how << " query_key_value was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("query_key_value"), std::string::npos) << e.what();
  }
}

// llama.cpp's gptneox GGUF reorders query_key_value (all q, all k, all v): it runs as the
// same model (FamiliesGguf above), but a LoRA on that Linear would put PEFT's per-head B rows
// in the wrong places, so it is refused; the other Linears are fine.
TEST(FamiliesPeft, GptNeoXGgufRefusesLoraOnItsReorderedQkv) {
  const Model m = load_path(family_dir("gpt_neox") + "/model.gguf");
  EXPECT_FALSE(m.spec().qkv_per_head);
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  expect_qkv_lora_refused(m, c, "reordered");
  c.all_linear = false;
  c.target_modules = {"dense", "dense_h_to_4h", "dense_4h_to_h"};
  EXPECT_EQ(LoraModel(m, c).layers().size(), 6u);
  const auto hf = load("gpt_neox", false);
  // (the HF fixture has no tokenizer of its own: the GGUF's)
  ModelFiles files = open_model_files(family_dir("gpt_neox"), family_dir("gpt_neox") + "/model.gguf");
  TempDir tmp("neox_gguf_export");
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  // The Hugging Face checkpoint goes to GGUF with its rows reordered as llama.cpp's converter
  // does, and reads back as the same model.
  write_merged_gguf(*hf, files, {}, tmp.path("m.gguf"), eo, false);
  const Model back = load_path(tmp.path("m.gguf"));
  EXPECT_FALSE(back.spec().qkv_per_head);
  const Fixture x = read_fixture("gpt_neox");
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(back, prompt), x.logits->to_float(x.logits->at("logits")), "gpt_neox hf -> gguf");
}

// llama.cpp's falcon GGUF regroups the new architecture's query_key_value (all q, k, v):
// read back as that layout with its two norms, a LoRA on it refused as for gpt_neox (PEFT's
// B rows are per group), while falcon-7b's multi-query layout is one group, unchanged, and
// takes one. Falcons llama.cpp cannot run are not exported.
TEST(FamiliesPeft, FalconGgufLayoutsAndWhatTheyRefuse) {
  const Model m = load_path(family_dir("falcon") + "/model.gguf");
  EXPECT_FALSE(m.spec().qkv_grouped);
  EXPECT_FALSE(m.spec().shared_branch_norm);
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  expect_qkv_lora_refused(m, c, "regrouped");
  const Model mq = load_path(family_dir("falcon_mq") + "/model.gguf");
  EXPECT_TRUE(mq.spec().shared_branch_norm);
  EXPECT_EQ(LoraModel(mq, c).layers().size(), 8u);
  // (the GGUF-read new architecture does not go back to a Hugging Face directory)
  ModelFiles files = open_model_files(family_dir("falcon") + "/model.gguf");
  TempDir tmp("falcon_gguf_refusals");
  HfExportOptions ho;
  ho.log = false;
  EXPECT_THROW(write_merged_hf_dir(m, files, {}, tmp.path("hf"), ho, false), Error);
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  for (const char* f : {"falcon_seq", "falcon_alibi"}) {
    ModelFiles hf = open_model_files(family_dir(f), family_dir("falcon") + "/model.gguf");
    const Model x = load_path(family_dir(f));
    try {
      write_merged_gguf(x, hf, {}, tmp.path(std::string(f) + ".gguf"), eo, false);
      ADD_FAILURE() << f << " went to a GGUF llama.cpp cannot run";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("llama.cpp"), std::string::npos) << e.what();
    }
  }
}

TEST_P(Families, LoraGradientsMatchPeft) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  const PeftAdapter a = load_peft_adapter(family_dir(GetParam()) + "/initial_adapter");
  LoraModel lm(*m, a.config);
  a.apply_to(lm.layers());
  const auto ids = x.ref.at("ids").get<std::vector<std::vector<int>>>();
  const auto labels = x.ref.at("labels").get<std::vector<std::vector<int>>>();
  // transformers' loss: the mean over all non-ignored shifted targets of the batch.
  std::vector<std::vector<int>> targets;
  int64_t total = 0;
  std::vector<int64_t> counts;
  for (const auto& l : labels) {
    std::vector<int> t(l.begin() + 1, l.end());
    t.push_back(-100);
    counts.push_back(std::count_if(t.begin(), t.end(), [](int v) { return v != -100; }));
    total += counts.back();
    targets.push_back(std::move(t));
  }
  lm.zero_grad();
  TrainWorkspace ws;
  double loss = 0;
  for (size_t s = 0; s < ids.size(); ++s) {
    TrainStepOptions opt;
    opt.training = true;
    opt.checkpointing = s == 1;  // both paths: recompute must give the same gradients
    opt.grad_scale = static_cast<float>(double(counts[s]) / double(total));
    loss += opt.grad_scale * forward_backward(lm, ws, ids[s], targets[s], opt, nullptr);
  }
  EXPECT_NEAR(loss, x.ref.at("loss").get<double>(), 2e-6 * x.ref.at("loss").get<double>()) << GetParam();
  const SafeTensorsFile grads(family_dir(GetParam()) + "/grads.safetensors");
  // Our gradients under PEFT's keys: saved as an adapter whose A and B are dA and dB (MoE
  // experts' per-expert LoRAs are stacked per layer as PEFT keeps them).
  std::vector<LoraLayer> as_grads = lm.layers();
  for (LoraLayer& l : as_grads) l.A = l.dA, l.B = l.dB;
  TempDir tmp("grads_" + GetParam());
  save_peft_adapter(tmp.path("g"), lm.config(), "x", as_grads);
  const SafeTensorsFile ours(tmp.path("g") + "/adapter_model.safetensors");
  ASSERT_EQ(grads.tensors().size(), ours.tensors().size()) << "the fixture's LoRA modules differ from ours";
  for (const auto& t : ours.tensors()) {
    {
      const std::string& key = t.name;
      ASSERT_NE(grads.find(key), nullptr) << key << " is not among PEFT's gradients";
      const std::vector<float> want = grads.to_float(grads.at(key));
      const std::vector<float> got = ours.to_float(t);
      ASSERT_EQ(got.size(), want.size()) << key;
      double num = 0, den = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        num = std::max(num, std::fabs(double(got[i]) - want[i]));
        den = std::max(den, std::fabs(double(want[i])));
      }
      // (Gemma 4's fixtures take the hybrids' bound: transformers' own float32 gradients are 1.7e-5
      // (gemma4) to 2.5e-5 (gemma4_text) from float64, ours up to 5.3e-5 from transformers')
      EXPECT_LE(num / den, gemma4_e_fixture(GetParam())                               ? kGemma4EGradRel
                           : hybrid_fixture(GetParam()) || gemma4_fixture(GetParam()) ? kHybridGradRel
                                                                                      : kGradRel)
          << GetParam() << " " << key;
    }
  }
}

// Ten AdamW steps (torch.optim.AdamW's update: lr 1e-3, no weight decay) on the fixture's
// batch from PEFT's initial adapter: the loss before each step follows transformers + PEFT's
// curve. (The two float32 computations drift apart slowly as steps compound: measured up
// to 1.1e-5 relative over the 10 steps here, 3e-7 for most families.)
TEST_P(Families, TenStepLossCurveMatchesPeft) {
  const Fixture x = read_fixture(GetParam());
  const auto m = load(GetParam(), false);
  const PeftAdapter a = load_peft_adapter(family_dir(GetParam()) + "/initial_adapter");
  LoraModel lm(*m, a.config);
  a.apply_to(lm.layers());
  const auto ids = x.ref.at("ids").get<std::vector<std::vector<int>>>();
  const auto labels = x.ref.at("labels").get<std::vector<std::vector<int>>>();
  std::vector<std::vector<int>> targets;
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const auto& l : labels) {
    std::vector<int> t(l.begin() + 1, l.end());
    t.push_back(-100);
    counts.push_back(std::count_if(t.begin(), t.end(), [](int v) { return v != -100; }));
    total += counts.back();
    targets.push_back(std::move(t));
  }
  const json& hp = x.ref.at("curve_adamw");
  AdamWConfig ac;
  ac.lr = hp.at("lr").get<double>();
  ac.beta1 = hp.at("betas")[0].get<double>();
  ac.beta2 = hp.at("betas")[1].get<double>();
  ac.eps = hp.at("eps").get<double>();
  ac.weight_decay = hp.at("weight_decay").get<double>();
  std::vector<AdamWParam> params;
  for (LoraLayer& l : lm.layers()) {
    params.push_back({peft_lora_key(l.module_path, 'A'), l.A, l.dA});
    params.push_back({peft_lora_key(l.module_path, 'B'), l.B, l.dB});
  }
  AdamW opt(std::move(params), ac);
  // The gated DeltaNet fixtures' curves drift with float32 rounding: transformers' own float32
  // curve parts from its float64 one (curve_float64) by up to 1.5e-3 at step 10, and ours (which
  // computes the rule token by token, not chunked) drifts as much, in its own direction. There
  // the float64 curve is the target, within twice transformers' float32 drift so far.
  const bool f64 = x.ref.contains("curve_float64");
  const auto want = x.ref.at(f64 ? "curve_float64" : "curve").get<std::vector<double>>();
  const auto f32_curve = x.ref.at("curve").get<std::vector<double>>();
  double drift = 0;  // transformers' float32 |curve - curve_float64| up to this step
  TrainWorkspace ws;
  double worst = 0;
  for (size_t step = 0; step < want.size(); ++step) {
    lm.zero_grad();
    double loss = 0;
    for (size_t s = 0; s < ids.size(); ++s) {
      TrainStepOptions o;
      o.training = true;
      o.grad_scale = static_cast<float>(double(counts[s]) / double(total));
      loss += o.grad_scale * forward_backward(lm, ws, ids[s], targets[s], o, nullptr);
    }
    opt.step();
    worst = std::max(worst, std::fabs(loss - want[step]) / want[step]);
    if (f64) drift = std::max(drift, std::fabs(f32_curve[step] - want[step]));
    // (gemma4_e: its float32 curves are chaotic -- transformers' parts from float64 by 1.6e-4 at
    // step 5 and 1.7e-2 at step 10: AdamW moves each parameter by about lr whatever its
    // gradient's size, so the parameters whose gradients are at the rounding level take a
    // direction rounding picks, and a 3-ulp change in our tanh moved our step 8 by 5e-2. Ours is
    // held to the float64 curve for the first three steps (the first two updates); after that
    // only to keep falling below the start.)
    if (gemma4_e_fixture(GetParam()) && step >= 3) {
      EXPECT_LT(loss, want.front()) << GetParam() << " step " << step + 1;
      continue;
    }
    // (gemma4_moe: its later steps are chaotic too -- a router's top-2 choice among near-equal
    // experts. transformers' own float32 curve, from the initial adapter times (1 + 1e-7 noise),
    // gave 4.42653 at step 9 where the fixture says 4.45055 (5.4e-3) and parted by 1.2e-4 from
    // step 6 (one trial of three); ours lands on either branch with the CPU's kernels. From step
    // 6 on, held to 1e-2 of the curve.)
    if (GetParam() == "gemma4_moe" && step >= 5) {
      EXPECT_NEAR(loss, want[step], 1e-2 * want[step]) << GetParam() << " step " << step + 1;
      continue;
    }
    EXPECT_NEAR(loss, want[step], std::max(1e-4 * want[step], 2 * drift)) << GetParam() << " step " << step + 1;
  }
  EXPECT_LT(want.back(), want.front()) << "the reference curve should fall";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", worst);
  RecordProperty("curve_max_rel", buf);
}

// In bf16 and fp16 with an adapter attached, the inference forward (KV cache) and the
// training forward compute the same thing: the mean cross-entropy of a sequence from the
// inference logits equals forward_loss's. The two forwards are separate code; this keeps
// their rounding points (each op's output in the compute dtype, the LoRA sum rounded after
// the base Linear) the same.
TEST_P(Families, HalfPrecisionInferenceEqualsTrainingForward) {
  const Fixture x = read_fixture(GetParam());
  for (const ComputeDType dt : {ComputeDType::BF16, ComputeDType::F16}) {
    ModelFiles files = open_model_files(family_dir(GetParam()));
    ModelLoadOptions o;
    o.quant.quantize = true;
    o.quant.type = QuantType::NF4;
    o.quant.blocksize = 64;
    o.compute_dtype = dt;
    Model m = Model::load(files.spec, *files.tensors, o);
    const PeftAdapter a = load_peft_adapter(family_dir(GetParam()) + "/initial_adapter");
    LoraModel lm(m, a.config);
    a.apply_to(lm.layers());
    m.set_adapter(&lm);
    const auto ids = x.ref.at("ids").get<std::vector<std::vector<int>>>()[0];
    std::vector<int> targets(ids.begin() + 1, ids.end());
    targets.push_back(-100);
    TrainWorkspace ws;
    const double train_loss = forward_loss(lm, ws, ids, targets);
    const int64_t V = m.spec().vocab;
    const std::vector<float> logits = prompt_logits(m, ids);
    double sum = 0;
    for (size_t t = 0; t + 1 < ids.size(); ++t) {
      const float* l = logits.data() + t * V;
      const double mx = *std::max_element(l, l + V);
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      sum += mx + std::log(z) - l[targets[t]];
    }
    const double infer_loss = sum / double(ids.size() - 1);
    EXPECT_NEAR(infer_loss, train_loss, 1e-5 * train_loss)
        << GetParam() << (dt == ComputeDType::BF16 ? " bf16" : " fp16");
    m.set_adapter(nullptr);
  }
}

// The GGUF of the same weights, as llama.cpp's converter writes that architecture (the
// fixture script checked llama.cpp itself reproduces transformers' logits from it).
class FamiliesGguf : public ::testing::TestWithParam<std::string> {};

TEST_P(FamiliesGguf, GgufLogitsMatchTransformers) {
  const Fixture x = read_fixture(GetParam());
  const Model m = load_path(family_dir(GetParam()) + "/model.gguf");
  EXPECT_EQ(m.spec().family, x.ref.at("model_type").get<std::string>());
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("logits")), GetParam() + " gguf");
}

// Merging (no adapter) writes what the family needs to be read back the same way: the
// Hugging Face export's config.json (biases, norms, head_dim, sliding window, rope scaling)
// and, from the GGUF, a GGUF (rope scaling keys, rope_freqs, gemma's norms).
TEST_P(Families, MergedHfDirectoryGivesTheSameLogits) {
  const Fixture x = read_fixture(GetParam());
  ModelFiles files = open_model_files(family_dir(GetParam()));
  const Model m = load_path(family_dir(GetParam()));
  TempDir tmp("merge_" + GetParam());
  HfExportOptions eo;
  eo.dtype = DType::F32;
  eo.log = false;
  write_merged_hf_dir(m, files, {}, tmp.path("hf"), eo, false);
  const Model m2 = load_path(tmp.path("hf"));
  EXPECT_EQ(m2.spec().family, files.spec.family);
  EXPECT_EQ(m2.spec().sliding_window, files.spec.sliding_window);
  EXPECT_EQ(m2.spec().rope_scaling.type, files.spec.rope_scaling.type);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m2, prompt), x.logits->to_float(x.logits->at("logits")), GetParam() + " merged hf");
}

// Merging PEFT's adapter into the weights (every adapted Linear and parameter: experts, routers)
// gives PeftModel's logits when the merge is read back: within 3e-5 of the largest logit (W + ΔW
// rounds otherwise than PEFT's unmerged W x + B A x: measured up to 1.9e-5, qwen3_5_moe), or the
// fixture's own tolerance where larger (gemma4_e).
TEST_P(Families, MergedWithPeftAdapterGivesPeftLogits) {
  const Fixture x = read_fixture(GetParam());
  ModelFiles files = open_model_files(family_dir(GetParam()));
  const Model m = load_path(family_dir(GetParam()));
  const PeftAdapter a = load_peft_adapter(family_dir(GetParam()) + "/initial_adapter");
  LoraModel lm(m, a.config);
  a.apply_to(lm.layers());
  TempDir tmp("merge_peft_" + GetParam());
  HfExportOptions eo;
  eo.dtype = DType::F32;
  eo.log = false;
  write_merged_hf_dir(m, files, {{&lm, 1.0}}, tmp.path("hf"), eo, false);
  const Model m2 = load_path(tmp.path("hf"));
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m2, prompt), x.logits->to_float(x.logits->at("peft_logits")), GetParam() + " merged peft",
                std::max(3e-5, logit_rel_for(GetParam())));
}

TEST_P(FamiliesGguf, MergedGgufGivesTheSameLogits) {
  const Fixture x = read_fixture(GetParam());
  ModelFiles files = open_model_files(family_dir(GetParam()) + "/model.gguf");
  const Model m = load_path(family_dir(GetParam()) + "/model.gguf");
  TempDir tmp("mergegguf_" + GetParam());
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  write_merged_gguf(m, files, {}, tmp.path("m.gguf"), eo, false);
  const Model m2 = load_path(tmp.path("m.gguf"));
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m2, prompt), x.logits->to_float(x.logits->at("logits")), GetParam() + " merged gguf");
}

// What llama.cpp's starcoder / mpt graphs cannot run is refused rather than written: an attention scale
// other than 1/sqrt(head_dim) (GPT-BigCode's scale_attn_weights false, MPT's softmax_scale: measured 5.8 and
// 0.34 off in llama.cpp when written anyway) and a ReLU MLP (0.61 off). MPT's 6 heads are fine: its slopes
// are llama.cpp's series.
TEST(GptBigCodeGguf, WhatLlamaCppCannotRunIsRefused) {
  auto export_of = [](const std::string& fam, const std::function<void(json&)>& change) -> std::string {
    TempDir tmp("gguf_refused_" + fam);
    const std::string dir = tmp.path("hf");
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(family_dir(fam) + "/model.safetensors", dir + "/model.safetensors");
    json c = json::parse(read_file(family_dir(fam) + "/config.json"));
    change(c);
    std::ofstream(dir + "/config.json") << c.dump();
    ModelFiles files = open_model_files(dir);
    files.tokenizer = open_model_files(family_dir("gpt_bigcode") + "/model.gguf").tokenizer;
    const Model m = load_path(dir);
    GgufExportOptions eo;
    eo.type = GgmlType::F32;
    eo.log = false;
    try {
      write_merged_gguf(m, files, {}, tmp.path("m.gguf"), eo, false);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(export_of("gpt_bigcode", [](json& c) { c["scale_attn_weights"] = false; }).find("1/sqrt(head_dim)"), std::string::npos);
  EXPECT_NE(export_of("gpt_bigcode", [](json& c) { c["activation_function"] = "relu"; }).find("ReLU"), std::string::npos);
  EXPECT_NE(export_of("mpt", [](json& c) { c["attn_config"]["softmax_scale"] = 0.3; }).find("1/sqrt(head_dim)"), std::string::npos);
  EXPECT_EQ(export_of("mpt_6h", [](json& c) { c["attn_config"]["softmax_scale"] = nullptr; }), "");
}

// GPT-BigCode without multi_query (c_attn per head q | k | v) goes to a starcoder GGUF as the contiguous
// q | k | v llama.cpp's graph splits, head_count_kv the heads, and reads back to the same model. (llama.cpp
// on such a merge: 3.9e-4 of PeftModel, its float16 GELU table; measured with the fixture's adapter.)
TEST(GptBigCodeGguf, MultiHeadAttentionMergesToAStarcoderGguf) {
  const Fixture x = read_fixture("gpt_bigcode_mha");
  ModelFiles files = open_model_files(family_dir("gpt_bigcode_mha"));
  files.tokenizer = open_model_files(family_dir("gpt_bigcode") + "/model.gguf").tokenizer;  // (the same test vocabulary)
  const Model m = load_path(family_dir("gpt_bigcode_mha"));
  TempDir tmp("gpt_bigcode_mha_gguf");
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  write_merged_gguf(m, files, {}, tmp.path("m.gguf"), eo, false);
  EXPECT_EQ(GgufFile(tmp.path("m.gguf")).get_string("general.architecture"), "starcoder");
  const Model m2 = load_path(tmp.path("m.gguf"));
  EXPECT_EQ(m2.spec().n_kv_heads, m2.spec().n_heads);
  EXPECT_FALSE(m2.spec().qkv_per_head);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m2, prompt), x.logits->to_float(x.logits->at("logits")), "gpt_bigcode_mha merged gguf");
}

// A copy of `src` with metadata keys replaced (`keys`: key -> writer of its new value; a null
// writer drops the key) and tensors' float32 values changed by `tensor` (name, values).
void rewrite_gguf(const std::string& src, const std::string& dst,
                  const std::map<std::string, std::function<void(GgufWriter&, const std::string&)>>& keys,
                  const std::function<void(const std::string&, std::vector<float>&)>& tensor = {}) {
  auto f = std::make_shared<GgufFile>(src);
  GgufWriter w;
  for (const auto& [k, v] : f->metadata()) {
    auto it = keys.find(k);
    if (it == keys.end()) w.copy_value(k, v);
    else if (it->second) it->second(w, k);
  }
  for (const auto& [k, fn] : keys)
    if (fn && !f->find(k)) fn(w, k);
  for (const GgufTensorInfo& t : f->tensors()) {
    const GgufTensorInfo* tp = &t;
    w.add_tensor(t.name, t.type, t.shape(), [f, tp, tensor] {
      if (tp->type != GgmlType::F32 || !tensor) {
        const auto d = f->tensor_data(*tp);
        return std::vector<uint8_t>(d.begin(), d.end());
      }
      std::vector<float> v = f->tensor_to_f32(*tp);
      tensor(tp->name, v);
      return encode_float_tensor(v, GgmlType::F32);
    });
  }
  w.write(dst);
}

void expect_load_error(const std::string& path, const std::string& says) {
  try {
    load_path(path);
    ADD_FAILURE() << path << " loaded; expected an error saying " << says;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// A gemma4 GGUF's per-layer forms that llama.cpp's graph and Gemma 4 do not have are refused
// with the key or tensor named, never read into another model.
TEST(Gemma4Gguf, MalformedFilesAreRefusedByName) {
  const std::string src = family_dir("gemma4_e") + "/model.gguf";  // 6 layers, sliding / full, 2 shared
  TempDir tmp("gemma4_gguf_bad");
  auto arr = [](std::vector<int32_t> v) { return [v](GgufWriter& w, const std::string& k) { w.set_i32_array(k, v); }; };
  rewrite_gguf(src, tmp.path("kv.gguf"), {{"gemma4.attention.head_count_kv", arr({2, 2, 1, 2, 2, 2})}});
  expect_load_error(tmp.path("kv.gguf"), "head_count_kv");
  rewrite_gguf(src, tmp.path("ffn.gguf"), {{"gemma4.feed_forward_length", arr({96, 192, 96, 96, 192, 192})}});
  expect_load_error(tmp.path("ffn.gguf"), "feed_forward_length");
  rewrite_gguf(src, tmp.path("ffn_len.gguf"), {{"gemma4.feed_forward_length", arr({96, 96, 96, 96, 192})}});
  expect_load_error(tmp.path("ffn_len.gguf"), "feed_forward_length");
  rewrite_gguf(src, tmp.path("shared.gguf"),
               {{"gemma4.attention.shared_kv_layers", [](GgufWriter& w, const std::string& k) { w.set_u32(k, 3); }}});
  expect_load_error(tmp.path("shared.gguf"), "shared_kv_layers");
  rewrite_gguf(src, tmp.path("swa.gguf"), {{"gemma4.attention.key_length_swa", nullptr}});
  expect_load_error(tmp.path("swa.gguf"), "key_length_swa");
  rewrite_gguf(src, tmp.path("rope.gguf"), {}, [](const std::string& name, std::vector<float>& v) {
    if (name == "rope_freqs.weight") v.back() = 2.0f;
  });
  expect_load_error(tmp.path("rope.gguf"), "rope_freqs");
}

// The full layers' rope_freqs: all ones is a whole-head rotary (and goes back out as all ones);
// the converter's 1 / 1e30 pattern is the proportional rope over that many pairs.
TEST(Gemma4Gguf, RopeFreqsAreTheProportionalRope) {
  const Model m = load_path(family_dir("gemma4_text") + "/model.gguf");
  EXPECT_EQ(m.spec().rope_scaling.type, RopeScaling::Type::Proportional);
  EXPECT_EQ(m.spec().rope_scaling.rotated_fraction, 0.25f);
  EXPECT_TRUE(m.spec().global_k_eq_v);
  EXPECT_EQ(m.spec().attention_geometry(true).kv_heads, 1);
  TempDir tmp("gemma4_gguf_rope");
  rewrite_gguf(family_dir("gemma4_text") + "/model.gguf", tmp.path("full.gguf"), {},
               [](const std::string& name, std::vector<float>& v) {
                 if (name == "rope_freqs.weight") std::fill(v.begin(), v.end(), 1.0f);
               });
  const Model full = load_path(tmp.path("full.gguf"));
  EXPECT_EQ(full.spec().rope_scaling.type, RopeScaling::Type::None);
  ModelFiles files = open_model_files(tmp.path("full.gguf"));
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  write_merged_gguf(full, files, {}, tmp.path("back.gguf"), eo, false);
  const GgufFile back(tmp.path("back.gguf"));
  for (float x : back.tensor_to_f32("rope_freqs.weight")) EXPECT_EQ(x, 1.0f);
}

// GLM-4.5's checkpoints hold its multi-token-prediction layer after the last
// (model.layers.<num_hidden_layers>.*: eh_proj, enorm, ...), which transformers does not load:
// read past, while a layer beyond it is still an unused tensor named in an error; and configs
// whose router cannot pick its experts are refused by name.
TEST(Glm4Moe, MtpLayersAreSkippedAndBadRoutersRefused) {
  TempDir tmp("glm4_moe_mtp");
  const std::string src = family_dir("glm4_moe");
  std::filesystem::create_directories(tmp.path("m"));
  std::filesystem::copy_file(src + "/config.json", tmp.path("m") + "/config.json");
  const SafeTensorsFile f(src + "/model.safetensors");
  SafeTensorsWriter w;
  for (const SafeTensorInfo& t : f.tensors()) w.add(t.name, t.dtype, t.shape, f.data(t));
  w.add_vector("model.layers.3.eh_proj.weight", DType::F32, {64, 128}, std::vector<float>(64 * 128, 0.5f));
  w.add_vector("model.layers.3.enorm.weight", DType::F32, {64}, std::vector<float>(64, 1.0f));
  w.write(tmp.path("m") + "/model.safetensors");
  const Fixture x = read_fixture("glm4_moe");
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(load_path(tmp.path("m")), prompt), x.logits->to_float(x.logits->at("logits")), "glm4_moe mtp");
  // (num_nextn_predict_layers 0: the same tensors are not the model's)
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  cfg["num_nextn_predict_layers"] = 0;
  std::ofstream(tmp.path("m") + "/config.json") << cfg.dump();
  try {
    load_path(tmp.path("m"));
    ADD_FAILURE() << "the unused layer-3 tensors were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.eh_proj.weight"), std::string::npos) << e.what();
  }
  for (auto [key, value, says] : {std::tuple{"n_group", 3, "n_group"}, std::tuple{"topk_group", 4, "topk_group"},
                                  std::tuple{"num_experts_per_tok", 5, "num_experts_per_tok"},
                                  std::tuple{"n_shared_experts", 0, "shared experts"}}) {
    nlohmann::json bad = nlohmann::json::parse(std::ifstream(src + "/config.json"));
    bad[key] = value;
    std::ofstream(tmp.path("m") + "/config.json") << bad.dump();
    try {
      load_path(tmp.path("m"));
      ADD_FAILURE() << key << " " << value << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  }
}

// llama.cpp's gemma4 multiplies per_layer_model_proj without adapters: a LoRA GGUF of an adapter
// on it would be silently ignored there, so it is refused by name (merging carries it).
TEST(Gemma4Gguf, LoraGgufRefusesThePerLayerProjection) {
  const Model m = load_path(family_dir("gemma4_e") + "/model.gguf");
  const LoadedAdapter a = load_adapter(family_dir("gemma4_e") + "/initial_adapter", m);
  TempDir tmp("gemma4_lora_gguf");
  try {
    write_lora_gguf(a, m.spec(), tmp.path("a.gguf"), GgmlType::F32, false);
    ADD_FAILURE() << "an adapter on per_layer_model_projection was written to a LoRA GGUF";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("per_layer_model_projection"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.path("a.gguf")));
}

// Nemotron-H's LoRA GGUF: its attention's q/k B rows in llama.cpp's rotary order like the weights'
// (its converter permutes them though nothing rotates), found by the canonical name (the files say
// mixer.q_proj); llama.cpp applying the file: tools/check_family_merges.py (8.9e-7 of PeftModel).
TEST(NemotronHGguf, LoraGgufPermutesTheAttentionsQueryAndKeyRows) {
  const Model m = load_path(family_dir("nemotron_h") + "/model.gguf");
  const LoadedAdapter a = load_adapter(family_dir("nemotron_h") + "/initial_adapter", m);
  TempDir tmp("nemotron_h_lora_gguf");
  write_lora_gguf(a, m.spec(), tmp.path("a.gguf"), GgmlType::F32, false);
  const GgufFile g(tmp.path("a.gguf"));
  EXPECT_EQ(g.get_string("general.architecture"), "nemotron_h");
  int checked = 0;
  for (const LoraLayer& L : a.lora->layers()) {
    const bool q = L.module_path.ends_with(".q_proj"), k = L.module_path.ends_with(".k_proj");
    if (!q && !k) continue;
    const std::vector<float> b = g.tensor_to_f32(g.tensor(std::string("blk.2.") + (q ? "attn_q" : "attn_k") + ".weight.lora_b"));
    std::vector<float> hf(b.size());
    unpermute_rope_rows(b, hf, L.out, L.r, q ? m.spec().n_heads : m.spec().n_kv_heads);
    EXPECT_NE(b, L.B) << L.module_path;
    EXPECT_EQ(hf, L.B) << L.module_path;
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

// llama.cpp's deepseek2 multiplies the latent attention's projections (q_a, q_b, kv_a_mqa, and
// kv_b split into attn_k_b / attn_v_b) without adapters: measured with tools/check_family_merges.py,
// a LoRA GGUF on them leaves llama.cpp's logits 0.48-0.71 (relative) from PeftModel's. Refused by
// name; merges carry them, and a LoRA GGUF of the other modules is written.
// Granite 4.0 without Mamba layers (granite-4.0-micro's form: every layer attends, with the rotary)
// goes to GGUF as llama.cpp's converter writes it, a granite GGUF (shared_mlp split into ffn_gate /
// ffn_up), and comes back with the same logits; with experts it has no GGUF form here.
TEST(Granite4Gguf, WithoutMambaLayersMergesToAGraniteGguf) {
  json c = json::parse(read_file(family_dir("granitemoehybrid") + "/config.json"));
  for (json& e : c["layer_types"]) e = "attention";
  c["position_embedding_type"] = "rope";
  ModelFiles files;
  files.path = family_dir("granitemoehybrid") + "/model.gguf";  // (the tokenizer metadata the GGUF copies)
  files.format = ModelFormat::Gguf;
  files.spec = spec_from_hf_config(c, "config.json");
  ASSERT_FALSE(files.spec.hybrid());
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.2f);
  auto random_source = [&](const ModelSpec& s) {
    auto src = std::make_unique<MemoryTensorSource>("random granite-4.0-micro form");
    for (const TensorSpec& t : s.tensors()) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      std::vector<float> v(static_cast<size_t>(n));
      for (float& x : v) x = (t.name.find("norm") != std::string::npos ? 1.0f : 0.0f) + nd(rng);
      src->add(t.name, t.shape, v);
    }
    return src;
  };
  files.tensors = random_source(files.spec);
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model m = Model::load(files.spec, *files.tensors, o);
  TempDir tmp("granite4_micro_gguf");
  GgufExportOptions eo;
  eo.type = GgmlType::F32;
  eo.log = false;
  write_merged_gguf(m, files, {}, tmp.path("m.gguf"), eo, false);
  EXPECT_EQ(GgufFile(tmp.path("m.gguf")).get_string("general.architecture"), "granite");
  const Model m2 = load_path(tmp.path("m.gguf"));
  EXPECT_EQ(m2.spec().family, "granite");
  const std::vector<int> prompt = {1, 17, 42, 99, 5, 150, 3, 77};
  expect_logits(prompt_logits(m2, prompt), prompt_logits(m, prompt), "granite-4.0-micro form via a granite GGUF", 1e-5);

  c["num_local_experts"] = 4;
  c["num_experts_per_tok"] = 2;
  ModelFiles moe;
  moe.path = files.path;
  moe.format = ModelFormat::Gguf;
  moe.spec = spec_from_hf_config(c, "config.json");
  moe.tensors = random_source(moe.spec);
  try {
    write_merged_gguf(Model::load(moe.spec, *moe.tensors, o), moe, {}, tmp.path("e.gguf"), eo, false);
    ADD_FAILURE() << "an all-attention Granite 4.0 with experts was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("granitemoe with a shared expert"), std::string::npos) << e.what();
  }
}

// The deepseek2 GGUFs written before llama.cpp's MLA split (early 2025): kv_b_proj whole
// (attn_kv_b), head_count_kv the heads, key_length / value_length the per-head sizes. llama.cpp
// still runs them (the fixture script checks: 8.9e-6 of transformers); so do we.
TEST(DeepseekGguf, LegacyFormGivesTransformersLogits) {
  const Fixture x = read_fixture("deepseek_v3");
  const Model m = load_path(family_dir("deepseek_v3") + "/model_legacy.gguf");
  EXPECT_EQ(m.spec().n_kv_heads, m.spec().n_heads);
  EXPECT_EQ(m.spec().mla_v_dim, 16);
  const auto prompt = x.ref.at("prompt").get<std::vector<int>>();
  expect_logits(prompt_logits(m, prompt), x.logits->to_float(x.logits->at("logits")), "deepseek_v3 legacy gguf");
}

TEST(DeepseekGguf, LoraGgufRefusesTheLatentProjections) {
  const Model m = load_path(family_dir("deepseek_v3") + "/model.gguf");
  const LoadedAdapter a = load_adapter(family_dir("deepseek_v3") + "/initial_adapter", m);
  TempDir tmp("deepseek_lora_gguf");
  try {
    write_lora_gguf(a, m.spec(), tmp.path("a.gguf"), GgmlType::F32, false);
    ADD_FAILURE() << "an adapter on the latent projections was written to a LoRA GGUF";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama.cpp's deepseek2 multiplies without adapters"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.path("a.gguf")));
  EXPECT_EQ(m.spec().family, "deepseek_v3");  // (read back from the GGUF's sigmoid router)
  EXPECT_TRUE(m.spec().mla());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FamiliesGguf,
                         ::testing::Values("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text_gguf",
                                           "llama_rope_llama3", "llama_rope_linear", "qwen2_rope_yarn", "phi3",
                                           "phi4_mini", "gpt2", "gpt_neox", "bloom", "falcon", "falcon_mq", "phi",
                                           "stablelm", "stablelm_par", "starcoder2", "granite", "olmo2", "cohere",
                                           "cohere2", "smollm3", "olmo", "arcee", "nemotron", "mixtral", "qwen2_moe", "olmo3", "exaone4_nowin", "glm4",
                                           "stablelm_qk",
                                           "qwen3_moe", "olmoe", "gpt_oss_gguf", "ministral3", "ernie4_5",
                                           "hunyuan_v1_dense", "qwen3_5_gguf", "qwen3_5_moe_gguf", "qwen3_next_gguf",
                                           "gemma4_text", "gemma4_moe", "gemma4_e", "glm4_moe", "ernie4_5_moe",
                                           "seed_oss", "deepseek_v3", "granitemoe", "dots1", "minimax_m2", "hunyuan_v1_moe", "llama4_gguf", "lfm2", "lfm2_moe",
                                           "granitemoehybrid", "granitemoehybrid_moe", "bamba", "nemotron_h", "nemotron_h_moe", "mamba2",
                                           "gpt_bigcode", "mpt", "apertus", "mamba", "falcon_mamba", "jamba"),
                         [](const auto& info) { return std::string(info.param); });

INSTANTIATE_TEST_SUITE_P(Fixtures, Families, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return info.param; });

}  // namespace
