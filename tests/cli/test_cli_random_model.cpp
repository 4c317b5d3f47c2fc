// `--model random:...` end to end, as a user runs it: train 2 steps and generate 8 tokens
// on a tiny random shape (the adapter and metrics name the random model, every command
// says the weights are random), `qlora memory` on random:llama-65b at once, and the
// commands that must refuse a random model, or a bad description of one.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_test_util.h"

using namespace qlora::test;

namespace {

const std::string kTiny = "random:hidden=64,layers=2,ffn=128,heads=4,kv_heads=2,vocab=300";

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b < s.size()) {
    size_t e = s.find('\n', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

}  // namespace

TEST(CliRandomModel, TrainTwoStepsThenGenerateWithTheAdapter) {
  TempDir tmp("random");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "First Citizen: before we proceed any further, hear me speak.\n";
  write_file(tmp.path("data.txt"), text);
  const CliResult t = run_cli({"train", "--model", kTiny, "--data", tmp.path("data.txt"), "--out", tmp.path("out"),
                               "--max-steps", "2", "--seq-len", "32", "--lora-r", "4", "--double-quant",
                               "--optim", "paged_adamw_8bit"});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_HAS(t.err, "random weights (hidden=64,layers=2,ffn=128,heads=4,kv_heads=2,vocab=300 shape, seed 0): NOT a "
                    "trained model");
  EXPECT_HAS(t.err, "trained steps 1-2");
  // The adapter and every metrics line name the random model.
  const auto cfg = nlohmann::json::parse(read_file(tmp.path("out/adapter_config.json")));
  EXPECT_EQ(cfg["base_model_name_or_path"], kTiny);
  const std::vector<std::string> metrics = lines_of(read_file(tmp.path("out/metrics.jsonl")));
  ASSERT_EQ(metrics.size(), 2u);
  for (const std::string& line : metrics) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["model"], kTiny) << line;
    EXPECT_TRUE(j["loss"].get<double>() > 0) << line;
  }

  const CliResult g = run_cli({"generate", "--model", kTiny, "--prompt", "Hello", "-n", "8", "--adapter",
                               tmp.path("out"), "--double-quant", "--temperature", "0"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out.rfind("Hello", 0), 0u) << g.out;
  EXPECT_HAS(g.err, "NOT a trained model");
  // Exactly -n tokens: a random model's eos is drawn by chance and does not stop it.
  EXPECT_HAS(g.err, "generation: 8 tokens");
  EXPECT_HAS(g.err, "stop: length");
  // Even --quiet says the weights are random (on stderr; stdout stays the text).
  const CliResult q = run_cli({"generate", "--model", kTiny, "--prompt", "Hi", "-n", "2", "-q"});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_HAS(q.err, "NOT a trained model");
}

TEST(CliRandomModel, MemoryPlansLlama65bWithoutGeneratingIt) {
  const auto t0 = std::chrono::steady_clock::now();
  const CliResult r = run_cli({"memory", "--model", "random:llama-65b", "--mode", "train", "--seq-len", "512",
                               "--optim", "paged_adamw_8bit", "--double-quant", "--max-memory", "48GB"});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_HAS(r.out, "model: random:llama-65b");
  EXPECT_HAS(r.out, "random weights (llama-65b shape, seed 0): NOT a trained model");
  EXPECT_HAS(r.out, "80 layers, hidden 8192, ffn 22016");
  EXPECT_HAS(r.out, "total peak:");
  EXPECT_EQ(r.out.find("mapped model file"), std::string::npos) << "no file to map:\n" << r.out;
  EXPECT_LT(s, 5.0) << "65B parameters must not be generated to plan them";
}

TEST(CliRandomModel, CommandsThatNeedRealWeightsRefuse) {
  TempDir tmp("random_refuse");
  const std::vector<std::vector<std::string>> cmds = {
      {"merge", "--model", "random:llama-7b", "--adapter", tmp.path("a"), "--out", tmp.path("m")},
      {"export-adapter", tmp.path("a"), "--model", "random:llama-7b", "--out", tmp.path("a.gguf")},
      {"quantize", "--model", "random:llama-7b", "--out", tmp.path("q")},
      {"dequantize", "--model", "random:llama-7b", "--out", tmp.path("d")},
  };
  for (const auto& args : cmds) {
    const CliResult r = run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.err;
    EXPECT_HAS(r.err, "random:llama-7b");
    EXPECT_HAS(r.err, "needs a real model's weights");
  }
}

TEST(CliRandomModel, BadDescriptionsAreNamed) {
  CliResult r = run_cli({"generate", "--model", "random:llama-8b", "--prompt", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_HAS(r.err, "unknown preset 'llama-8b'");
  EXPECT_HAS(r.err, "llama3-8b");
  r = run_cli({"train", "--model", "random:hidden=64,layers=2,ffn=128,heads=4,vocab=200", "--data",
               "/nonexistent.txt", "--out", TempDir("random_bad").path("o")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_HAS(r.err, "too small for the built-in byte tokenizer");
  r = run_cli({"memory", "--model", "random:hidden=64,layers=2,ffn=128,heads=4,vocab=300,width=3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_HAS(r.err, "unknown key 'width'");
}
