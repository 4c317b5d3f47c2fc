// Mixture-of-experts models given what they cannot run, or adapters they cannot take: each
// an Error naming the file and the problem (src/formats/families/moe.cpp, src/model/moe_block.h,
// src/lora/peft_adapter.cpp), never a crash or a different model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/hf_config.h"
#include "formats/model_loader.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "lora/peft_adapter.h"
#include "model/model.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

std::string family_dir(const std::string& f) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + f; }

json read_json(const std::string& path) { return json::parse(std::ifstream(path)); }

void expect_error(const std::function<void()>& fn, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << "accepted; expected an error saying: " << what;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(MoeConfig, ReadsEachFamilysRoutingAndRefusesWhatItCannotRun) {
  const json mixtral = read_json(family_dir("mixtral") + "/config.json");
  const ModelSpec m = spec_from_hf_config(mixtral, "config.json");
  EXPECT_EQ(m.n_experts, 4);
  EXPECT_EQ(m.experts_per_token, 2);
  EXPECT_TRUE(m.norm_topk);
  EXPECT_FALSE(m.moe_round_weights);  // (Mixtral keeps its routing weights in float32)
  const ModelSpec q2 = spec_from_hf_config(read_json(family_dir("qwen2_moe") + "/config.json"), "config.json");
  EXPECT_TRUE(q2.shared_expert);
  EXPECT_FALSE(q2.norm_topk);
  EXPECT_EQ(q2.expert_ffn, 32);
  EXPECT_EQ(q2.ffn, 48);  // (the shared expert's width)

  json j = mixtral;
  j["num_experts_per_tok"] = 5;
  expect_error([&] { spec_from_hf_config(j, "config.json"); }, "experts per token must be between 1 and the number");
  j = mixtral;
  j["router_jitter_noise"] = 0.1;
  expect_error([&] { spec_from_hf_config(j, "config.json"); }, "router_jitter_noise");
  json q = read_json(family_dir("qwen3_moe") + "/config.json");
  q["mlp_only_layers"] = {0};
  expect_error([&] { spec_from_hf_config(q, "config.json"); }, "mlp_only_layers");
  q = read_json(family_dir("qwen3_moe") + "/config.json");
  q["decoder_sparse_step"] = 2;
  expect_error([&] { spec_from_hf_config(q, "config.json"); }, "decoder_sparse_step");
  json o = read_json(family_dir("olmoe") + "/config.json");
  o.erase("num_experts");
  o.erase("num_local_experts");
  expect_error([&] { spec_from_hf_config(o, "config.json"); }, "number of experts");
}

// A config that says more experts than the checkpoint holds names the tensor, as the file
// spells it (Mixtral's block_sparse_moe).
TEST(MoeConfig, ExpertCountBeyondTheCheckpointNamesTheTensor) {
  TempDir tmp("moe_missing");
  const json cfg = read_json(family_dir("mixtral") + "/config.json");
  json more = cfg;
  more["num_local_experts"] = 5;  // (the file has 4)
  std::ofstream(tmp.path("config.json")) << more.dump();
  std::filesystem::copy_file(family_dir("mixtral") + "/model.safetensors", tmp.path("model.safetensors"));
  expect_error(
      [&] {
        ModelFiles f = open_model_files(tmp.path());
        Model::load(f.spec, *f.tensors, {});
      },
      "'model.layers.0.block_sparse_moe.gate.weight' has shape [4, 64] but the config needs [5, 64]");
}

// PEFT refuses dropout on adapted parameters (its ParamWrapper); so does the adapter config.
TEST(MoeLora, DropoutOnExpertsIsRefusedAsPeftRefusesIt) {
  ModelFiles f = open_model_files(family_dir("mixtral"));
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model m = Model::load(f.spec, *f.tensors, o);
  LoraConfig c;
  c.r = 2;
  c.all_linear = true;
  c.dropout = 0.05;
  expect_error([&] { LoraModel lm(m, c); }, "cannot use dropout");
  c.dropout = 0.0;
  const LoraModel lm(m, c);
  // all-linear: per layer the four attention Linears, the router, four experts' gate_up and down
  EXPECT_EQ(lm.layers().size(), static_cast<size_t>(m.spec().n_layers * (4 + 1 + 2 * 4)));
  EXPECT_EQ(lm.find_expert(1, 3, 0)->r, 4);  // (gate_up at twice the rank, as PEFT's rank_pattern)
  EXPECT_EQ(lm.find_expert(1, 3, 1)->r, 2);
  EXPECT_EQ(lm.find_router(0)->out, 4);

  json cfg = read_json(family_dir("mixtral") + "/initial_adapter/adapter_config.json");
  cfg["lora_dropout"] = 0.1;
  expect_error([&] { parse_peft_adapter_config(cfg, "adapter_config.json"); }, "cannot use dropout");
  cfg = read_json(family_dir("mixtral") + "/initial_adapter/adapter_config.json");
  cfg["rank_pattern"] = {{"q_proj", 8}};
  expect_error([&] { parse_peft_adapter_config(cfg, "adapter_config.json"); }, "rank_pattern is not supported");
}

// A stacked experts adapter whose rows are not rank x experts names the key.
TEST(MoeLora, StackedExpertsOfTheWrongRankNameTheKey) {
  TempDir tmp("moe_badrank");
  const std::string src = family_dir("mixtral") + "/initial_adapter";
  json cfg = read_json(src + "/adapter_config.json");
  cfg["rank_pattern"][".*\\.gate_up_proj"] = 3;  // (the file holds 8 x 4 rows)
  std::filesystem::create_directories(tmp.path("a"));
  std::ofstream(tmp.path("a/adapter_config.json")) << cfg.dump();
  std::filesystem::copy_file(src + "/adapter_model.safetensors", tmp.path("a/adapter_model.safetensors"));
  expect_error([&] { load_peft_adapter(tmp.path("a")); }, "experts.base_layer.lora_A.weight");
}

}  // namespace
