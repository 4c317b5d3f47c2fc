// End-to-end tests of `qlora quantize`, `qlora dequantize` and `qlora inspect`, run as a
// user runs them. The bitsandbytes-written state dict (tests/fixtures/quant, made by
// tools/make_quant_fixtures.py from bnb's Linear4bit) is the oracle: quantizing the same
// source weights with the CLI must reproduce its tensors byte for byte.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <sys/wait.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/mapped_file.h"
#include "formats/safetensors.h"
#include "quant/quant_state.h"

using namespace qlora;
namespace fs = std::filesystem;

namespace {

struct CliRun {
  int code;
  std::string output;  // stdout + stderr
};

CliRun run_cli(const std::string& args) {
  std::string cmd = std::string(QLORA_CLI_PATH) + " " + args + " 2>&1";
  CliRun r{-1, ""};
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

fs::path scratch() {
  auto d = fs::temp_directory_path() / ("qlora_cli_test_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

const std::string kSource = std::string(QLORA_FIXTURE_DIR) + "/quant/linear4bit_source.safetensors";
const std::string kBnbState = std::string(QLORA_FIXTURE_DIR) + "/quant/linear4bit_state.safetensors";

void expect_same_tensor(const SafeTensorsFile& a, const SafeTensorsFile& b, const std::string& name) {
  const auto* ta = a.find(name);
  const auto* tb = b.find(name);
  ASSERT_NE(ta, nullptr) << name << " missing from " << a.path();
  ASSERT_NE(tb, nullptr) << name << " missing from " << b.path();
  EXPECT_EQ(ta->dtype, tb->dtype) << name;
  EXPECT_EQ(ta->shape, tb->shape) << name;
  auto da = a.data(*ta), db = b.data(*tb);
  ASSERT_EQ(da.size(), db.size()) << name;
  EXPECT_EQ(0, std::memcmp(da.data(), db.data(), da.size())) << name << " differs from bitsandbytes";
}

// Runs the CLI with one option set and checks the named layer against bnb's state dict.
void check_layer_matches_bnb(const std::string& opts, const std::string& layer, const std::string& qt,
                             bool nested) {
  auto out = (scratch() / ("q_" + qt + std::to_string(nested) + ".safetensors")).string();
  // (--overwrite: tests of one process share the scratch directory and may name the same output)
  CliRun r = run_cli("quantize --model " + kSource + " --out " + out + " --overwrite " + opts);
  ASSERT_EQ(r.code, 0) << r.output;
  SafeTensorsFile ours(out), bnb(kBnbState);
  const std::string w = layer + ".weight";
  for (const std::string& suffix :
       std::vector<std::string>{"", ".absmax", ".quant_map", ".quant_state.bitsandbytes__" + qt})
    expect_same_tensor(ours, bnb, w + suffix);
  if (nested)
    for (const char* suffix : {".nested_absmax", ".nested_quant_map"}) expect_same_tensor(ours, bnb, w + suffix);
  // Non-Linear tensors pass through untouched.
  expect_same_tensor(ours, bnb, "model.layers.0.o_proj.bias");
}

}  // namespace

TEST(CliQuantize, Nf4MatchesBitsandbytesByteForByte) {
  check_layer_matches_bnb("--quant nf4 --blocksize 64", "model.layers.0.down_proj", "nf4", false);
}

TEST(CliQuantize, Nf4DoubleQuantMatchesBitsandbytesByteForByte) {
  check_layer_matches_bnb("--quant nf4 --blocksize 64 --double-quant", "model.layers.0.q_proj", "nf4", true);
}

TEST(CliQuantize, Fp4Blocksize128MatchesBitsandbytesByteForByte) {
  check_layer_matches_bnb("--quant fp4 --blocksize 128", "model.layers.0.k_proj", "fp4", false);
}

TEST(CliQuantize, Bf16SourceWithBf16ComputeMatchesBitsandbytes) {
  check_layer_matches_bnb("--quant nf4 --blocksize 32 --double-quant --compute-dtype bf16", "model.layers.0.v_proj",
                          "nf4", true);
}

TEST(CliQuantize, DequantizeRoundTripAndInspect) {
  auto q = (scratch() / "rt_q.safetensors").string();
  auto d = (scratch() / "rt_d.safetensors").string();
  ASSERT_EQ(run_cli("quantize --model " + kSource + " --out " + q + " --quant nf4 --double-quant").code, 0);
  CliRun r = run_cli("dequantize --model " + q + " --out " + d + " --dtype fp32");
  ASSERT_EQ(r.code, 0) << r.output;
  SafeTensorsFile qf(q), df(d);
  // The dequantized weight equals the library's dequantization of the stored 4-bit tensor.
  auto q4 = read_4bit_from_safetensors(qf, "model.layers.0.up_proj.weight");
  std::vector<float> expect(static_cast<size_t>(q4.state.numel()));
  dequantize_tensor_4bit(q4, expect.data());
  const auto& t = df.at("model.layers.0.up_proj.weight");
  EXPECT_EQ(t.dtype, DType::F32);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{64, 300}));
  EXPECT_EQ(df.to_float(t), expect);
  EXPECT_EQ(df.find("model.layers.0.up_proj.weight.absmax"), nullptr);
  // ...and is close to the original weight (NF4 error, not garbage).
  SafeTensorsFile src(kSource);
  auto orig = src.to_float(src.at("model.layers.0.up_proj.weight"));
  double err = 0, mag = 0;
  for (size_t i = 0; i < orig.size(); ++i) {
    err += std::abs(orig[i] - expect[i]);
    mag += std::abs(orig[i]);
  }
  EXPECT_LT(err / mag, 0.15);

  CliRun ins = run_cli("inspect " + q);
  ASSERT_EQ(ins.code, 0) << ins.output;
  EXPECT_NE(ins.output.find("model.layers.0.up_proj.weight"), std::string::npos);
  EXPECT_NE(ins.output.find("nf4"), std::string::npos);
  EXPECT_NE(ins.output.find("double-quant"), std::string::npos);
  EXPECT_NE(ins.output.find("bits/param"), std::string::npos);
}

TEST(CliQuantize, ModelDirectoryBecomesTransformers4bitDirectory) {
  auto in = scratch() / "hf_in";
  auto out = scratch() / "hf_out";
  fs::create_directories(in);
  fs::copy_file(kSource, in / "model.safetensors", fs::copy_options::overwrite_existing);
  {
    std::ofstream(in / "config.json") << R"({"model_type": "llama", "hidden_size": 8, "torch_dtype": "float32"})";
    std::ofstream(in / "tokenizer.json") << "{}";
    std::ofstream(in / "tokenizer_config.json") << R"({"bos_token": "<s>"})";
  }
  CliRun r = run_cli("quantize --model " + in.string() + " --out " + out.string() +
                  " --quant nf4 --double-quant --compute-dtype bf16");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(out / "tokenizer_config.json"));
  auto cfg = nlohmann::json::parse(read_text_file((out / "config.json").string()));
  EXPECT_EQ(cfg["model_type"], "llama");
  const auto& qc = cfg["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "bitsandbytes");
  EXPECT_EQ(qc["load_in_4bit"], true);
  EXPECT_EQ(qc["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(qc["bnb_4bit_use_double_quant"], true);
  EXPECT_EQ(qc["bnb_4bit_compute_dtype"], "bfloat16");
  SafeTensorsFile f((out / "model.safetensors").string());
  EXPECT_TRUE(is_4bit_in_safetensors(f, "model.layers.0.q_proj.weight"));
}

TEST(CliQuantize, BadInputsGiveOneClearErrorAndNonZeroExit) {
  CliRun missing = run_cli("quantize --model /nonexistent/model.safetensors --out /tmp/x.safetensors");
  EXPECT_NE(missing.code, 0);
  EXPECT_NE(missing.output.find("/nonexistent/model.safetensors"), std::string::npos) << missing.output;

  auto bad = (scratch() / "garbage.safetensors").string();
  std::ofstream(bad) << "this is not a safetensors file at all";
  CliRun garbage = run_cli("inspect " + bad);
  EXPECT_NE(garbage.code, 0);
  EXPECT_NE(garbage.output.find("garbage.safetensors"), std::string::npos) << garbage.output;
  EXPECT_EQ(garbage.output.find("terminate"), std::string::npos) << garbage.output;

  CliRun bs = run_cli("quantize --model " + kSource + " --out /tmp/x.safetensors --blocksize 48");
  EXPECT_NE(bs.code, 0);
  EXPECT_NE(bs.output.find("blocksize"), std::string::npos) << bs.output;

  // Quantizing an already-4-bit file is refused, and the existing output is untouched.
  auto q = (scratch() / "already.safetensors").string();
  ASSERT_EQ(run_cli("quantize --model " + kSource + " --out " + q).code, 0);
  auto before = fs::file_size(q);
  const auto q2 = (scratch() / "already2.safetensors").string();
  fs::remove(q2);
  CliRun again = run_cli("quantize --model " + q + " --out " + q2);
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.output.find("already 4-bit"), std::string::npos) << again.output;
  EXPECT_FALSE(fs::exists(q2));
  // and never written over itself, --overwrite or not
  CliRun self = run_cli("quantize --model " + q + " --out " + q + " --overwrite");
  EXPECT_NE(self.code, 0);
  EXPECT_NE(self.output.find("is the input file itself"), std::string::npos) << self.output;
  EXPECT_EQ(fs::file_size(q), before);
}

TEST(CliInspect, ListsGgufMetadataAndTensors) {
  CliRun r = run_cli("inspect " + std::string(QLORA_FIXTURE_DIR) + "/gguf/tiny_llama.gguf");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("general.architecture"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("token_embd.weight"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bits/param"), std::string::npos) << r.output;
}
