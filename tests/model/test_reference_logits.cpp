// The forward pass against transformers' LlamaForCausalLM (tests/fixtures/model/, made by
// tools/make_model_reference.py): stories260K in float32 and with bitsandbytes NF4
// weights (plain and double-quantized), and SmolLM2-135M-Instruct from its GGUF file
// (skipped when scripts/fetch_model.sh has not been run).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "formats/model_loader.h"
#include "formats/tokenizer.h"
#include "model/generate.h"
#include "model/model.h"
#include "model_test_util.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

json load_json(const std::string& name) {
  return json::parse(read_file(std::string(QLORA_FIXTURE_DIR) + "/model/" + name));
}

std::vector<float> all_logits(const Model& m, const std::vector<int>& ids) {
  InferenceState st(m.spec(), static_cast<int64_t>(ids.size()));
  std::vector<float> out(ids.size() * m.spec().vocab);
  forward(m, st, ids, out.data(), true);
  return out;
}

}  // namespace

TEST(ReferenceLogits, Stories260KMatchesTransformers) {
  const json ref = load_json("stories260k_reference.json");
  const std::vector<int> ids = ref["ids"].get<std::vector<int>>();
  ModelFiles f = open_model_files(stories_bin());
  struct Case {
    const char* key;
    bool quantize, dq;
    double tol;
  };
  for (const Case& c : {Case{"fp32", false, false, 2e-4}, Case{"nf4", true, false, 2e-4},
                        Case{"nf4_dq", true, true, 2e-4}}) {
    ModelLoadOptions opt;
    opt.quant.quantize = c.quantize;
    opt.quant.double_quant = c.dq;
    const Model m = Model::load(f.spec, *f.tensors, opt);
    const std::vector<float> logits = all_logits(m, ids);
    double max_err = 0;
    for (const auto& [pos, values] : ref[c.key].items()) {
      const int p = std::stoi(pos);
      const auto v = values.get<std::vector<float>>();
      ASSERT_EQ(v.size(), 512u);
      for (int i = 0; i < 512; ++i) {
        const double err = std::fabs(logits[p * 512 + i] - v[i]);
        max_err = std::max(max_err, err);
        ASSERT_LT(err, c.tol * (1 + std::fabs(v[i]))) << c.key << " position " << p << " token " << i;
      }
    }
    std::printf("[ stories260K %s ] max |logit - transformers| = %.2e\n", c.key, max_err);
  }
}

TEST(ReferenceLogits, SmolLM2MatchesTransformers) {
  const std::string path = smollm2_gguf();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " missing: run scripts/fetch_model.sh";
  const json ref = load_json("smollm2_reference_logits.json");
  const std::vector<int> ids = ref["ids"].get<std::vector<int>>();
  ModelFiles f = open_model_files(path);
  ASSERT_TRUE(f.tokenizer);
  // Our tokenizer gives transformers' ids for the prompt.
  const auto enc = f.tokenizer->encode(ref["prompt"].get<std::string>());
  EXPECT_EQ(std::vector<int>(enc.begin(), enc.end()), ids);

  ModelLoadOptions dense;
  dense.quant.quantize = false;
  {
    const Model m = Model::load(f.spec, *f.tensors, dense);
    const int64_t V = m.spec().vocab;
    const std::vector<float> logits = all_logits(m, ids);
    double max_err = 0;
    for (size_t p = 0; p < ids.size(); ++p) {
      const json& pos = ref["positions"][p];
      const auto top_ids = pos["top_ids"].get<std::vector<int>>();
      const auto top = pos["top_logits"].get<std::vector<double>>();
      for (size_t i = 0; i < top_ids.size(); ++i) {
        const double err = std::fabs(logits[p * V + top_ids[i]] - top[i]);
        max_err = std::max(max_err, err);
        EXPECT_LT(err, 2e-3 * (1 + std::fabs(top[i]))) << "position " << p << " rank " << i;
      }
      double mx = -1e30, sum = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(logits[p * V + v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[p * V + v] - mx);
      EXPECT_NEAR(mx + std::log(sum), pos["logsumexp"].get<double>(), 2e-3 * (1 + std::fabs(mx)));
    }
    std::printf("[ SmolLM2 fp32 ] max |logit - transformers| over the top-10 = %.2e\n", max_err);
    GenerationOptions g;
    g.max_new_tokens = static_cast<int64_t>(ref["greedy"].size());
    g.sampling.temperature = 0;
    g.stop_ids = {-1};  // transformers' greedy list runs through eos-free text; do not stop
    const GenerationResult r = generate(m, f.tokenizer.get(), ids, g);
    EXPECT_EQ(r.output_ids, ref["greedy"].get<std::vector<int>>()) << r.text;
  }
  // NF4 (double quantization, bf16 compute as in the QLoRA paper) still answers "Paris".
  ModelLoadOptions q;
  q.quant.double_quant = true;
  q.compute_dtype = ComputeDType::BF16;
  const Model m = Model::load(f.spec, *f.tensors, q);
  GenerationOptions g;
  g.max_new_tokens = 3;
  g.sampling.temperature = 0;
  const GenerationResult r = generate(m, f.tokenizer.get(), ids, g);
  ASSERT_FALSE(r.output_ids.empty());
  EXPECT_EQ(r.output_ids[0], ref["greedy"][0].get<int>()) << r.text;
  EXPECT_EQ(r.text.rfind(" Paris", 0), 0u) << r.text;
}
