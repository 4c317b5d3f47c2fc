// A PEFT LoRA adapter at inference, unmerged (`qlora generate --adapter DIR`), on
// stories260K (llama2.c, 5 layers, hidden 64, vocab 512):
//  (1) an adapter with random non-zero B (r = 4, all-linear) saved with save_peft_adapter
//      and loaded back gives, through the inference forward, the loss the training path
//      (forward_loss of the same LoraModel) computes; the KV-cached one-token decode path
//      gives the same logits as the whole-sequence forward;
//  (2) a zero-B adapter leaves the logits bit-identical;
//  (3) `qlora generate --adapter` runs and its text differs from the plain model's;
//  (4) mismatched or broken adapters are clean errors naming the file, non-zero exit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/model_loader.h"
#include "lora/lora.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "train/train_model.h"

using namespace qlora;
using namespace qlora::test;

namespace {

Model load_stories(bool nf4, ComputeDType dt = ComputeDType::F32) {
  ModelFiles f = open_model_files(stories_bin());
  ModelLoadOptions o;
  o.quant.quantize = nf4;
  o.quant.double_quant = nf4;
  o.compute_dtype = dt;
  return Model::load(f.spec, *f.tensors, o);
}

LoraConfig adapter_config() {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8.0;     // scaling 2
  c.dropout = 0.05;  // must not matter at inference
  c.all_linear = true;
  c.seed = 11;
  return c;
}

// Random B (PEFT starts it at zero, which would make the adapter a no-op).
void randomize_b(LoraModel& lm, float amplitude, uint64_t seed) {
  LoraRng rng(seed);
  for (LoraLayer& l : lm.layers())
    for (float& b : l.B) b = amplitude * (2.f * rng.next_float() - 1.f);
}

// A loaded adapter in the form Model::set_adapter takes.
struct Loaded {
  std::unique_ptr<LoraModel> lora;
};

Loaded load_back(const Model& model, const std::string& dir) {
  const PeftAdapter a = load_peft_adapter(dir);
  Loaded out;
  out.lora = std::make_unique<LoraModel>(model, a.config);
  a.apply_to(out.lora->layers());
  return out;
}

std::vector<int> test_tokens(int n) {
  std::vector<int> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = 1 + (i * 37 + 11) % 500;
  return t;
}

std::vector<float> all_logits(const Model& m, const std::vector<int>& tokens) {
  InferenceState st(m.spec(), static_cast<int64_t>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, tokens, logits.data(), /*all_logits=*/true);
  return logits;
}

// Mean cross-entropy (in double) of logits (T, V) against targets (-100 = ignored).
double cross_entropy(const std::vector<float>& logits, const std::vector<int>& targets, int64_t V) {
  double sum = 0;
  int n = 0;
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] < 0) continue;
    const float* row = logits.data() + t * static_cast<size_t>(V);
    const float mx = *std::max_element(row, row + V);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
    sum += std::log(z) + mx - row[targets[t]];
    ++n;
  }
  return sum / n;
}

void check_matches_training_path(bool nf4, ComputeDType dt = ComputeDType::F32, double tol = 1e-4) {
  Model model = load_stories(nf4, dt);
  LoraModel trained(model, adapter_config());
  randomize_b(trained, 0.2f, 5);
  TempDir dir("adapter");
  save_peft_adapter(dir.path(), trained.config(), "stories260K", trained.layers());

  Loaded ad = load_back(model, dir.path());
  ASSERT_EQ(ad.lora->layers().size(), trained.layers().size());
  model.set_adapter(ad.lora.get());

  const int T = 48;
  const std::vector<int> seq = test_tokens(T + 1);
  const std::vector<int> inputs(seq.begin(), seq.end() - 1), targets(seq.begin() + 1, seq.end());
  const std::vector<float> logits = all_logits(model, inputs);
  const int64_t V = model.spec().vocab;

  TrainWorkspace ws;
  const double want = forward_loss(trained, ws, inputs, targets);
  const double got = cross_entropy(logits, targets, V);
  EXPECT_NEAR(got, want, tol) << (nf4 ? "nf4" : "dense");

  // Per position too: only target t counts.
  for (int t : {0, 7, T / 2, T - 1}) {
    std::vector<int> one(targets.size(), -100);
    one[static_cast<size_t>(t)] = targets[static_cast<size_t>(t)];
    EXPECT_NEAR(cross_entropy(logits, one, V), forward_loss(trained, ws, inputs, one), tol) << "position " << t;
  }

  // The adapter changes the loss clearly (it is really applied).
  model.set_adapter(nullptr);
  const double plain = cross_entropy(all_logits(model, inputs), targets, V);
  EXPECT_GT(std::abs(plain - got), 1e-2);
  model.set_adapter(ad.lora.get());

  // The KV-cached decode path (prompt, then one token at a time) applies the adapter too.
  InferenceState st(model.spec(), T);
  const int P = 10;
  std::vector<float> row(static_cast<size_t>(V));
  forward(model, st, std::span<const int>(inputs.data(), P), row.data());
  float max_diff = 0;
  for (int t = P - 1; t < T; ++t) {
    if (t >= P) forward(model, st, std::span<const int>(&inputs[static_cast<size_t>(t)], 1), row.data());
    for (int64_t v = 0; v < V; ++v)
      max_diff = std::max(max_diff, std::abs(row[static_cast<size_t>(v)] - logits[static_cast<size_t>(t * V + v)]));
  }
  // In bf16 the one-token GEMV and the 48-token GEMM sum in different orders and each op
  // rounds to bf16: a few bf16 steps of logits around 10-20 (one step is 0.0625 there).
  EXPECT_LT(max_diff, dt == ComputeDType::F32 ? 1e-4f : 0.25f);
  model.set_adapter(nullptr);
}

TEST(GenerateAdapter, InferenceLossEqualsTrainingPathDense) { check_matches_training_path(false); }

TEST(GenerateAdapter, InferenceLossEqualsTrainingPathNf4) { check_matches_training_path(true); }

// In bf16 both paths round each Linear's output after its LoRA is added (PEFT adds the
// LoRA product to the bf16 base output, which rounds): the same numbers, so the same loss
// up to float32 summation order in the loss itself.
TEST(GenerateAdapter, InferenceLossEqualsTrainingPathNf4Bf16) {
  check_matches_training_path(true, ComputeDType::BF16, 2e-4);
}

TEST(GenerateAdapter, ZeroBAdapterLeavesLogitsUnchanged) {
  Model model = load_stories(true);
  const std::vector<int> tokens = test_tokens(40);
  const std::vector<float> plain = all_logits(model, tokens);

  LoraModel fresh(model, adapter_config());  // B = 0 as PEFT initialises it
  TempDir dir("zero");
  save_peft_adapter(dir.path(), fresh.config(), "stories260K", fresh.layers());
  Loaded ad = load_back(model, dir.path());
  model.set_adapter(ad.lora.get());
  const std::vector<float> with = all_logits(model, tokens);
  model.set_adapter(nullptr);
  ASSERT_EQ(with.size(), plain.size());
  for (size_t i = 0; i < plain.size(); ++i) ASSERT_EQ(with[i], plain[i]) << "logit " << i;
  EXPECT_EQ(all_logits(model, tokens), plain);  // detached again
}

TEST(GenerateAdapter, SetAdapterRejectsMismatchedShapes) {
  Model model = load_stories(false);
  LoraConfig c = adapter_config();
  LoraModel ad(model, c);
  ad.layers()[0] = LoraLayer("model.layers.0.self_attn.q_proj", 32, 64, c);  // q_proj is (64, 64)
  try {
    model.set_adapter(&ad);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model.adapter(), nullptr);
}

std::vector<std::string> generate_args(const std::string& adapter) {
  std::vector<std::string> a = {"generate", "--model", stories_bin(), "--tokenizer", stories_tok(), "--quant", "nf4",
                                "--prompt", "Once upon a time", "-n", "24", "--temperature", "0", "-q"};
  if (!adapter.empty()) {
    a.push_back("--adapter");
    a.push_back(adapter);
  }
  return a;
}

TEST(GenerateAdapter, CliGenerateWithAdapterDiffers) {
  Model model = load_stories(true);
  LoraModel trained(model, adapter_config());
  randomize_b(trained, 0.5f, 9);
  TempDir dir("cli_adapter");
  save_peft_adapter(dir.path(), trained.config(), "stories260K", trained.layers());

  const CliResult plain = run_cli(generate_args(""));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const CliResult adapted = run_cli(generate_args(dir.path()));
  ASSERT_EQ(adapted.exit_code, 0) << adapted.err;
  EXPECT_EQ(plain.out.rfind("Once upon a time", 0), 0u) << plain.out;
  EXPECT_EQ(adapted.out.rfind("Once upon a time", 0), 0u) << adapted.out;
  EXPECT_NE(plain.out, adapted.out);

  // A zero-B adapter generates exactly the plain text.
  LoraModel fresh(model, adapter_config());
  TempDir zero("cli_zero");
  save_peft_adapter(zero.path(), fresh.config(), "stories260K", fresh.layers());
  const CliResult same = run_cli(generate_args(zero.path()));
  ASSERT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(same.out, plain.out);
}

// Runs generate with `dir` as adapter: expects a non-zero exit and an error mentioning `needle`.
void expect_cli_error(const std::string& dir, const std::string& needle) {
  const CliResult r = run_cli(generate_args(dir));
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
  EXPECT_EQ(r.err.find("terminate"), std::string::npos) << r.err;
}

TEST(GenerateAdapter, CliRejectsBrokenOrMismatchedAdapters) {
  namespace fs = std::filesystem;
  Model model = load_stories(false);
  LoraConfig c = adapter_config();
  c.all_linear = false;
  c.target_modules = {"q_proj"};

  {  // no such directory
    TempDir dir("missing");
    expect_cli_error(dir.path("nope"), dir.path("nope"));
  }
  {  // config present, weights file missing
    TempDir dir("noweights");
    LoraModel lm(model, c);
    save_peft_adapter(dir.path(), c, "stories260K", lm.layers());
    fs::remove(dir.path("adapter_model.safetensors"));
    expect_cli_error(dir.path(), "adapter_model.safetensors");
  }
  {  // no config
    TempDir dir("noconfig");
    LoraModel lm(model, c);
    save_peft_adapter(dir.path(), c, "stories260K", lm.layers());
    fs::remove(dir.path("adapter_config.json"));
    expect_cli_error(dir.path(), "adapter_config.json");
  }
  {  // wrong in_features: an adapter for a wider model
    TempDir dir("shape");
    std::vector<LoraLayer> layers;
    for (int l = 0; l < 5; ++l)
      layers.emplace_back("model.layers." + std::to_string(l) + ".self_attn.q_proj", 96, 64, c);
    save_peft_adapter(dir.path(), c, "other", layers);
    expect_cli_error(dir.path(), "adapter_model.safetensors");
    expect_cli_error(dir.path(), "in_features 64");
  }
  {  // a module the model does not have (layer 9 of a 5-layer model)
    TempDir dir("module");
    std::vector<LoraLayer> layers;
    for (int l = 0; l < 10; ++l)
      layers.emplace_back("model.layers." + std::to_string(l) + ".self_attn.q_proj", 64, 64, c);
    save_peft_adapter(dir.path(), c, "other", layers);
    expect_cli_error(dir.path(), "the model has no Linear");
  }
  {  // the config's r disagrees with the weights' rank
    TempDir dir("rank");
    LoraModel lm(model, c);
    save_peft_adapter(dir.path(), c, "stories260K", lm.layers());
    nlohmann::json j = nlohmann::json::parse(read_file(dir.path("adapter_config.json")));
    j["r"] = 8;
    write_file(dir.path("adapter_config.json"), j.dump());
    expect_cli_error(dir.path(), "adapter_model.safetensors");
  }
  {  // the config targets a Linear the weights do not cover
    TempDir dir("partial");
    LoraModel lm(model, c);
    std::vector<LoraLayer> first(lm.layers().begin(), lm.layers().begin() + 1);  // layer 0 only
    save_peft_adapter(dir.path(), c, "stories260K", first);
    expect_cli_error(dir.path(), "model.layers.1.self_attn.q_proj");
  }
  {  // target modules matching nothing in the model
    TempDir dir("targets");
    LoraModel lm(model, c);
    save_peft_adapter(dir.path(), c, "stories260K", lm.layers());
    nlohmann::json j = nlohmann::json::parse(read_file(dir.path("adapter_config.json")));
    j["target_modules"] = {"c_attn"};
    write_file(dir.path("adapter_config.json"), j.dump());
    const CliResult r = run_cli(generate_args(dir.path()));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(dir.path()), std::string::npos) << r.err;
  }
}

}  // namespace
