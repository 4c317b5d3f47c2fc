// The CUDA inference forward (cuda/cuda_runner.h) end to end against the CPU backend:
//  - stories260K float32, greedy, through the library and the `qlora generate --device
//    cuda` binary, prints exactly llama2.c's known text;
//  - NF4 (double quant) logits, fp32 and bf16 compute, decode (GEMV) and prefill (GEMM)
//    paths, with a LoRA adapter attached, within rounding of the CPU's;
//  - the KV cache grows and a PromptCache-style shortened sequence continues correctly.
// Without a GPU every test skips, saying so.
#include <gtest/gtest.h>
#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>

#include "cuda/cuda_error.h"
#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "lora/lora.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/device_runner.h"
#include "model/model_test_util.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;

namespace {

std::vector<int> test_tokens(int n) {
  std::vector<int> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = 1 + (i * 37 + 11) % 500;
  return t;
}

// Logits of `tokens` run as a prompt of `prefill` tokens and then one token at a time.
std::vector<float> run(const Model& m, const std::vector<int>& tokens, int64_t prefill) {
  const int64_t V = m.spec().vocab, T = static_cast<int64_t>(tokens.size());
  InferenceState st(m.spec(), 4);  // small on purpose: the cache must grow
  std::vector<float> logits(static_cast<size_t>(T * V));
  forward(m, st, std::span<const int>(tokens).first(static_cast<size_t>(prefill)), logits.data(), true);
  for (int64_t t = prefill; t < T; ++t)
    forward(m, st, std::span<const int>(tokens).subspan(static_cast<size_t>(t), 1), logits.data() + t * V);
  return logits;
}

// max |a - b| relative to max |b|.
double rel_max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
    m = std::max(m, std::fabs(static_cast<double>(b[i])));
  }
  return d / m;
}

void compare_backends(bool nf4, ComputeDType dt, bool adapter, double tol) {
  Model m = load_stories(nf4, dt);
  std::unique_ptr<LoraModel> lora;
  if (adapter) {
    LoraConfig c;
    c.r = 4;
    c.alpha = 8.0;
    c.all_linear = true;
    c.seed = 3;
    lora = std::make_unique<LoraModel>(m, c);
    LoraRng rng(9);
    for (LoraLayer& l : lora->layers())
      for (float& b : l.B) b = 0.2f * (2.f * rng.next_float() - 1.f);
    m.set_adapter(lora.get());
  }
  const std::vector<int> tokens = test_tokens(40);
  for (int64_t prefill : {int64_t{1}, int64_t{5}, int64_t{30}}) {  // GEMV, fused multi-token GEMV, GEMM
    m.set_runner(nullptr);
    const std::vector<float> cpu = run(m, tokens, prefill);
    m.set_runner(make_cuda_runner(m, 0));
    const std::vector<float> gpu = run(m, tokens, prefill);
    const double d = rel_max_diff(gpu, cpu);
    EXPECT_LE(d, tol) << "nf4 " << nf4 << " dt " << static_cast<int>(dt) << " adapter " << adapter << " prefill "
                      << prefill;
    std::printf("[ cuda vs cpu ] nf4 %d dt %d adapter %d prefill %lld: max |dlogit| / max |logit| = %.3g\n", nf4,
                static_cast<int>(dt), adapter, static_cast<long long>(prefill), d);
  }
}

TEST(CudaRunner, GreedyStoriesFloat32MatchesLlama2c) {
  REQUIRE_GPU();
  ModelFiles f = open_model_files(stories_bin(), stories_tok());
  ModelLoadOptions o;
  o.quant.quantize = false;
  Model m = Model::load(f.spec, *f.tensors, o);
  m.set_runner(make_cuda_runner(m, 0));
  std::printf("[ cuda ] %s\n", m.runner()->describe().c_str());
  const auto ids = f.tokenizer->encode("Once upon a time");
  std::vector<int> prompt(ids.begin(), ids.end());
  GenerationOptions g;
  g.max_new_tokens = kStoriesNewTokens;
  g.sampling.temperature = 0;
  g.echo_prompt = true;
  std::string text;
  generate(m, f.tokenizer.get(), prompt, g, [&](std::string_view s) { text += s; });
  EXPECT_EQ(text, kStoriesGreedy);
}

TEST(CudaRunner, CliGenerateOnCuda) {
  REQUIRE_GPU();
  const CliResult r = run_cli({"generate", "--model", stories_bin(), "--tokenizer", stories_tok(), "--prompt",
                               "Once upon a time", "-n", std::to_string(kStoriesNewTokens), "--temperature", "0",
                               "--quant", "none", "--device", "cuda"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, std::string(kStoriesGreedy) + "\n");
  EXPECT_NE(r.err.find("cuda:0"), std::string::npos) << r.err;
}

// The same through the block interpreter on the CUDA backend (QLORA_CUDA_ENGINE=backend):
// llama2.c's text again, and the engine named on stderr.
TEST(CudaRunner, CliGenerateOnTheBackendEngine) {
  REQUIRE_GPU();
  setenv("QLORA_CUDA_ENGINE", "backend", 1);
  const CliResult r = run_cli({"generate", "--model", stories_bin(), "--tokenizer", stories_tok(), "--prompt",
                               "Once upon a time", "-n", std::to_string(kStoriesNewTokens), "--temperature", "0",
                               "--quant", "none", "--device", "cuda"});
  unsetenv("QLORA_CUDA_ENGINE");  // (run_cli does not throw: nothing returns before this)
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, std::string(kStoriesGreedy) + "\n");
  EXPECT_NE(r.err.find("block interpreter on the CUDA backend"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GPU memory"), std::string::npos) << r.err;
}

// serve with named adapters: the llama runner (one fixed adapter) refuses, naming the way out.
TEST(CudaRunner, ServeRefusesNamedAdaptersOnTheRunner) {
  REQUIRE_GPU();
  const CliResult r = run_cli({"serve", "--model", stories_bin(), "--tokenizer", stories_tok(), "--port", "0",
                               "--device", "cuda", "--adapter", "tuned=/nonexistent/adapter"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("QLORA_CUDA_ENGINE=backend"), std::string::npos) << r.err;
}

TEST(CudaRunner, Nf4Fp32LogitsMatchCpu) {
  REQUIRE_GPU();
  compare_backends(true, ComputeDType::F32, false, 1e-4);
}

TEST(CudaRunner, DenseAndAdapterLogitsMatchCpu) {
  REQUIRE_GPU();
  compare_backends(false, ComputeDType::F32, true, 1e-4);
  compare_backends(true, ComputeDType::F32, true, 1e-4);
}

// bf16/fp16: each op rounds to the compute dtype, so a one-ulp difference early can move
// later values by a few bf16 steps: tolerance a few bf16 ulps of the largest logit.
TEST(CudaRunner, Nf4HalfPrecisionLogitsMatchCpuWithinRounding) {
  REQUIRE_GPU();
  compare_backends(true, ComputeDType::BF16, false, 4.0 / 128);
  compare_backends(true, ComputeDType::F16, true, 4.0 / 1024);
}

// Decoding replays a captured CUDA graph of the whole step after its first eager run: the
// replay computes exactly what the eager step computes (the same kernels), through the
// KV cache growing (a new graph) and across positions.
TEST(CudaRunner, GraphReplayEqualsEagerDecode) {
  REQUIRE_GPU();
  Model m = load_stories(true, ComputeDType::BF16);
  const std::vector<int> tokens = test_tokens(40);
  setenv("QLORA_CUDA_GRAPHS", "0", 1);
  m.set_runner(make_cuda_runner(m, 0));
  const std::vector<float> eager = run(m, tokens, 1);
  unsetenv("QLORA_CUDA_GRAPHS");
  m.set_runner(make_cuda_runner(m, 0));
  const std::vector<float> graphed = run(m, tokens, 1);
  EXPECT_EQ(graphed, eager);
}

// The logits of the last token of each chunk, running `tokens` in chunks of the given sizes.
std::vector<float> run_chunks(const Model& m, const std::vector<int>& tokens, const std::vector<int>& chunks) {
  const int64_t V = m.spec().vocab;
  InferenceState st(m.spec(), 4);
  std::vector<float> out, logits(static_cast<size_t>(V));
  size_t at = 0;
  for (int c : chunks) {
    forward(m, st, std::span<const int>(tokens).subspan(at, static_cast<size_t>(c)), logits.data());
    out.insert(out.end(), logits.begin(), logits.end());
    at += static_cast<size_t>(c);
  }
  return out;
}

// A chat-like sequence: decoding (a graph is captured), then a longer prompt chunk (the
// scratch buffers are reallocated and the KV cache grows), then decoding again: the graph
// must be recaptured for the new buffers, never replayed on the old ones.
TEST(CudaRunner, GraphIsRecapturedWhenBuffersChange) {
  REQUIRE_GPU();
  Model m = load_stories(true, ComputeDType::F32);
  const std::vector<int> tokens = test_tokens(80);
  const std::vector<int> chunks = {3, 1, 1, 1, 1, 1, 30, 1, 1, 1, 1, 12, 1, 1, 1};
  m.set_runner(nullptr);
  const std::vector<float> cpu = run_chunks(m, tokens, chunks);
  m.set_runner(make_cuda_runner(m, 0));
  const std::vector<float> gpu = run_chunks(m, tokens, chunks);
  EXPECT_LE(rel_max_diff(gpu, cpu), 1e-4);
}

TEST(CudaRunner, AdapterCannotChangeOnceOnTheDevice) {
  REQUIRE_GPU();
  Model m = load_stories(true, ComputeDType::F32);
  m.set_runner(make_cuda_runner(m, 0));
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  LoraModel ad(m, c);
  EXPECT_THROW(m.set_adapter(&ad), Error);
}

TEST(CudaRunner, MissingDeviceIsACleanError) {
  REQUIRE_GPU();
  Model m = load_stories(true, ComputeDType::F32);
  try {
    make_cuda_runner(m, 99);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:99 does not exist"), std::string::npos) << e.what();
  }
}

}  // namespace

// A Hugging Face directory named by QLORA_CUDA_HF_MODEL (scripts/device_check.sh makes a
// SmolLM2-shaped one with random weights on the GPU machine: GQA 9/3, head 64, tied
// embeddings, a 49152 vocabulary): NF4 logits within rounding of the CPU's.
TEST(CudaRunner, HfModelLogitsMatchCpu) {
  REQUIRE_GPU();
  const char* dir = std::getenv("QLORA_CUDA_HF_MODEL");
  if (!dir || !*dir) GTEST_SKIP() << "QLORA_CUDA_HF_MODEL not set";
  for (ComputeDType dt : {ComputeDType::F32, ComputeDType::BF16}) {
    ModelFiles f = open_model_files(dir);
    ModelLoadOptions o;
    o.quant.double_quant = true;
    o.compute_dtype = dt;
    Model m = Model::load(f.spec, *f.tensors, o);
    const std::vector<int> tokens = test_tokens(40);
    for (int64_t prefill : {int64_t{1}, int64_t{30}}) {
      m.set_runner(nullptr);
      const std::vector<float> cpu = run(m, tokens, prefill);
      m.set_runner(make_cuda_runner(m, 0));
      const std::vector<float> gpu = run(m, tokens, prefill);
      const double d = rel_max_diff(gpu, cpu);
      std::printf("[ cuda vs cpu ] %s dt %d prefill %lld: max |dlogit| / max |logit| = %.3g\n", dir,
                  static_cast<int>(dt), static_cast<long long>(prefill), d);
      EXPECT_LE(d, dt == ComputeDType::F32 ? 1e-4 : 4.0 / 128);
    }
  }
}

namespace {

std::string family_dir(const std::string& f) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + f; }

Model load_family(const std::string& f, bool nf4) {
  ModelFiles files = open_model_files(family_dir(f));
  ModelLoadOptions o;
  o.quant.quantize = nf4;
  o.quant.type = QuantType::NF4;
  o.quant.double_quant = true;
  return Model::load(files.spec, *files.tensors, o);
}

}  // namespace

// The family fixtures (tests/fixtures/families, tools/make_family_fixtures.py) on the GPU:
// q/k/v and MLP biases, tied heads, rotary scaling (llama3, linear, yarn) against the CPU
// backend, prefill then decode; mistral within its window (and refused past it); the
// families the CUDA backend does not implement yet refused before anything runs.
TEST(CudaRunner, FamilyFixturesMatchCpuOrAreRefused) {
  REQUIRE_GPU();
  for (const char* f : {"llama", "llama_bias", "qwen2", "llama_rope_llama3", "llama_rope_linear", "qwen2_rope_yarn"}) {
    for (bool nf4 : {false, true}) {
      Model m = load_family(f, nf4);
      const std::vector<int> tokens = {5, 17, 29, 31, 44, 58, 61, 77, 80, 99, 101, 120, 133, 140, 151, 3};
      const std::vector<float> cpu = run(m, tokens, 6);
      m.set_runner(make_cuda_runner(m, 0));
      const std::vector<float> gpu = run(m, tokens, 6);
      const double d = rel_max_diff(gpu, cpu);
      EXPECT_LE(d, 2e-5) << f << " nf4 " << nf4;
      std::printf("[ cuda vs cpu ] family %s nf4 %d: max |dlogit| / max |logit| = %.3g\n", f, nf4, d);
    }
  }
  {
    Model m = load_family("mistral", true);  // sliding window 8
    m.set_runner(make_cuda_runner(m, 0));
    const std::vector<int> inside = {5, 17, 29, 31, 44, 58, 61, 77};
    EXPECT_NO_THROW(run(m, inside, 3));
    const std::vector<int> past = {5, 17, 29, 31, 44, 58, 61, 77, 80, 99};
    EXPECT_THROW(run(m, past, 3), Error);
  }
  for (const char* f : {"qwen3", "gemma", "gemma2", "gemma3_text"}) {
    Model m = load_family(f, true);
    EXPECT_THROW(m.set_runner(make_cuda_runner(m, 0)), Error) << f;
  }
}
