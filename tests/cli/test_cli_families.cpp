// Every family end to end through the command line, as a user runs it on a Hugging Face
// directory (the tiny fixtures of tests/fixtures/families, with the 160-token test
// vocabulary of their GGUFs as the tokenizer): `qlora train` with chat records and a chat
// template, the loss on the responses only, packing, micro-batches of 2, gradient
// accumulation, a held-out split, 8-bit paged AdamW, double quantization and a checkpoint
// it resumes from to the same adapter bytes; then `qlora eval` and `qlora generate` with
// the adapter it wrote, and `qlora merge` of it. The numbers themselves are checked against
// transformers/PEFT in tests/model/test_families.cpp; this shows every option reaches them.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_test_util.h"

using namespace qlora::test;

namespace {

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

std::string family_dir(const std::string& f) { return std::string(QLORA_FIXTURE_DIR) + "/families/" + f; }
// (any fixture GGUF: they share the test vocabulary)
std::string test_tokenizer() { return family_dir("gpt2") + "/model.gguf"; }

std::string chat_records() {
  nlohmann::json a = nlohmann::json::array();
  for (int i = 0; i < 24; ++i)
    a.push_back({{"messages",
                  {{{"role", "user"}, {"content", "Add " + std::to_string(i) + " and " + std::to_string(i + 1) + "."}},
                   {{"role", "assistant"}, {"content", std::to_string(2 * i + 1)}}}}});
  return a.dump();
}

class CliFamilies : public ::testing::TestWithParam<std::string> {};

TEST_P(CliFamilies, TrainEvalGenerateMerge) {
  const std::string f = GetParam();
  TempDir tmp("cli_" + f);
  write_file(tmp.path("data.json"), chat_records());
  const std::vector<std::string> model = {"--model", family_dir(f), "--tokenizer", test_tokenizer()};
  std::vector<std::string> train = {"train"};
  train.insert(train.end(), model.begin(), model.end());
  for (const char* a : {"--seq-len", "64", "--packing", "--batch-size", "2", "--grad-accum", "2", "--max-steps", "3",
                        "--eval-split", "0.2", "--optim", "paged_adamw_8bit", "--double-quant", "--lora-r", "4",
                        "--save-every", "2", "--chat-template"})
    train.push_back(a);
  write_file(tmp.path("t.jinja"),
             "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
             "{% if add_generation_prompt %}assistant: {% endif %}");
  train.push_back(tmp.path("t.jinja"));
  for (const std::string& a : {std::string("--data"), tmp.path("data.json"), std::string("--out"), tmp.path("out")})
    train.push_back(a);
  const CliResult t = run_cli(train);
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_TRUE(std::filesystem::exists(tmp.path("out/adapter_model.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(tmp.path("out/checkpoint-2")));
  const auto cfg = nlohmann::json::parse(read_file(tmp.path("out/adapter_config.json")));
  EXPECT_EQ(cfg["r"], 4);
  // (the family's own module names, as PEFT writes them)
  EXPECT_FALSE(cfg["target_modules"].empty());
  const std::string metrics = read_file(tmp.path("out/metrics.jsonl"));
  EXPECT_HAS(metrics, "\"loss\"");
  EXPECT_HAS(metrics, "eval_loss");
  // Resumed from checkpoint-2, the run ends with the same adapter, byte for byte.
  const std::string adapter = read_file(tmp.path("out/adapter_model.safetensors"));
  train.push_back("--resume");
  const CliResult r = run_cli(train);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_file(tmp.path("out/adapter_model.safetensors")) == adapter) << f << ": resume changed the adapter";

  std::vector<std::string> eval = {"eval"};
  eval.insert(eval.end(), model.begin(), model.end());
  for (const std::string& a : {std::string("--data"), tmp.path("data.json"), std::string("--adapter"),
                               tmp.path("out"), std::string("--seq-len"), std::string("64"),
                               std::string("--chat-template"), tmp.path("t.jinja"), std::string("--json")})
    eval.push_back(a);
  const CliResult e = run_cli(eval);
  ASSERT_EQ(e.exit_code, 0) << e.err;
  const auto ej = nlohmann::json::parse(e.out);
  EXPECT_GT(ej["loss"].get<double>(), 0.0) << e.out;

  std::vector<std::string> gen = {"generate"};
  gen.insert(gen.end(), model.begin(), model.end());
  for (const std::string& a : {std::string("--adapter"), tmp.path("out"), std::string("--prompt"),
                               std::string("Add 1 and 2."), std::string("-n"), std::string("6"),
                               std::string("--temperature"), std::string("0"), std::string("--ignore-eos")})
    gen.push_back(a);
  const CliResult g = run_cli(gen);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  // (the test vocabulary has no space token: the prompt echoes as "Add1and2."; end of text is
  // ignored: a random model may well pick it among the first six)
  EXPECT_EQ(g.out.rfind("Add", 0), 0u) << g.out;
  EXPECT_HAS(g.err, "generation: 6 tokens");

  std::vector<std::string> merge = {"merge"};
  merge.insert(merge.end(), model.begin(), model.end());
  for (const std::string& a : {std::string("--adapter"), tmp.path("out"), std::string("--out"), tmp.path("merged"),
                               std::string("-q")})
    merge.push_back(a);
  const CliResult m = run_cli(merge);
  ASSERT_EQ(m.exit_code, 0) << m.err;
  EXPECT_TRUE(std::filesystem::exists(tmp.path("merged/config.json")));
}

// A vision-language model's adapter from PEFT's all-linear (tools/make_family_fixtures.py's
// vision_adapter: its vision tower adapted too) generates on text, saying what it leaves
// out, and a merge refuses it rather than write a model without those modules.
TEST(CliVisionLanguage, AdapterOnTheVisionTowerGeneratesAndIsNotMerged) {
  TempDir tmp("cli_vl");
  const std::string f = family_dir("gemma3");
  const CliResult g = run_cli({"generate", "--model", f, "--tokenizer", test_tokenizer(), "--adapter",
                               f + "/vision_adapter", "--prompt", "Add 1 and 2.", "-n", "4", "--temperature", "0"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  EXPECT_HAS(g.err, "outside the language model");
  const CliResult m = run_cli({"merge", "--model", f, "--adapter", f + "/vision_adapter", "--out", tmp.path("m"), "-q"});
  EXPECT_NE(m.exit_code, 0);
  EXPECT_HAS(m.err, "outside the language model");
  EXPECT_HAS(m.err, "vision_adapter");
  EXPECT_FALSE(std::filesystem::exists(tmp.path("m/config.json")));
}

INSTANTIATE_TEST_SUITE_P(Families, CliFamilies,
                         ::testing::Values("llama", "qwen3", "gemma2", "gemma3_text", "phi3", "phi", "stablelm", "starcoder2_swa", "granite", "olmo2", "gptj", "cohere2", "smollm3_swa", "olmo", "arcee", "nemotron",
                                           "mixtral", "qwen2_moe", "olmo3", "exaone4", "glm4", "gpt2", "gpt_neox", "opt",
                                           "opt_350m", "bloom", "falcon", "falcon_mq", "falcon_alibi", "gemma3", "llava", "gpt_oss", "ministral3", "qwen3_5_text", "qwen3_5", "qwen3_5_moe", "qwen3_next", "gemma4_text", "gemma4", "gemma4_moe", "gemma4_e", "glm4_moe", "ernie4_5_moe", "seed_oss", "deepseek_v3", "deepseek_v2", "granitemoe", "dots1", "minimax_m2", "hunyuan_v1_moe", "llama4_text", "llama4", "lfm2", "lfm2_moe", "lfm2_vl",
                                           "granitemoehybrid", "granitemoehybrid_moe", "bamba", "mamba2", "nemotron_h", "nemotron_h_moe", "gpt_bigcode", "mpt", "apertus", "mamba", "falcon_mamba", "jamba"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
