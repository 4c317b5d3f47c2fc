// FP8 block-scaled checkpoints (formats/fp8_checkpoint.h) against transformers: the deepseek_v3
// fixture's Linears stored as e4m3 codes with per-block float32 scales
// (tests/fixtures/fp8/, tools/make_fp8_fixture.py).
//   * blocks of 8 x 8: the float32 logits transformers computes loading that directory itself
//     (its CPU path dequantizes FP8), within float32 rounding;
//   * blocks of 16 x 16 (weights ending in partial blocks): the dequantized weights torch
//     computes, exactly;
//   * FP8 weights whose scales are not read here, and quantization methods not read at all,
//     are refused with the file and the reason, never loaded as the raw codes.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "formats/fp8_checkpoint.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string fp8_dir(const std::string& d) { return std::string(QLORA_FIXTURE_DIR) + "/fp8/" + d; }

std::vector<float> prompt_logits(const Model& m, const std::vector<int>& prompt) {
  InferenceState st(m.spec(), static_cast<int64_t>(prompt.size()));
  std::vector<float> out(prompt.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, prompt, out.data(), /*all_logits=*/true);
  return out;
}

Model load_f32(const std::string& path) {
  ModelFiles files = open_model_files(path);
  ModelLoadOptions o;
  o.quant.quantize = false;
  return Model::load(files.spec, *files.tensors, o);
}

// The b8 fixture copied to a temporary directory with config.json edited by `edit`.
std::string edited_copy(TempDir& tmp, const std::function<void(json&)>& edit) {
  const fs::path dst = tmp.path("m");
  fs::create_directories(dst);
  fs::copy_file(fp8_dir("deepseek_v3_b8") + "/model.safetensors", dst / "model.safetensors");
  json c = json::parse(read_file(fp8_dir("deepseek_v3_b8") + "/config.json"));
  edit(c);
  std::ofstream(dst / "config.json") << c.dump(2);
  return dst.string();
}

std::string load_error(const std::string& path) {
  try {
    (void)load_f32(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Fp8Checkpoint, LogitsMatchTransformersDequantizing) {
  const Model m = load_f32(fp8_dir("deepseek_v3_b8"));
  const json ref = json::parse(read_file(std::string(QLORA_FIXTURE_DIR) + "/families/deepseek_v3/reference.json"));
  const std::vector<float> got = prompt_logits(m, ref.at("prompt").get<std::vector<int>>());
  SafeTensorsFile want_file(fp8_dir("deepseek_v3_b8") + "/logits.safetensors");
  const std::vector<float> want = want_file.to_float(want_file.at("logits"));
  ASSERT_EQ(got.size(), want.size());
  double worst = 0, peak = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    peak = std::max(peak, std::fabs(double(want[i])));
  }
  // (float32 rounding between two forwards, as the family fixtures: 4e-6 of the largest logit)
  EXPECT_LE(worst, 4e-6 * peak) << "largest logit " << peak;
  // and differ from the float32 model the codes were made from (the scales are applied, not skipped)
  SafeTensorsFile base(std::string(QLORA_FIXTURE_DIR) + "/families/deepseek_v3/logits.safetensors");
  const std::vector<float> b = base.to_float(base.at("logits"));
  double shift = 0;
  for (size_t i = 0; i < b.size(); ++i) shift = std::max(shift, std::fabs(double(b[i]) - want[i]));
  EXPECT_GT(shift, 1e-2);
}

TEST(Fp8Checkpoint, PartialBlocksDequantizeAsTorch) {
  ModelFiles files = open_model_files(fp8_dir("deepseek_v3_b16"));
  SafeTensorsFile want(fp8_dir("deepseek_v3_b16") + "/dequantized.safetensors");
  for (const SafeTensorInfo& t : want.tensors()) {
    const std::vector<float> got = files.tensors->get(t.name), ref = want.to_float(t);
    ASSERT_EQ(got.size(), ref.size()) << t.name;
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(got[i], ref[i]) << t.name << " element " << i;
  }
  // The scales are part of their weights, not tensors of their own.
  for (const std::string& n : files.tensors->names()) EXPECT_EQ(n.find("_scale_inv"), std::string::npos) << n;
  // NF4 on load, as from any other checkpoint.
  ModelLoadOptions o;
  o.quant.quantize = true;
  const Model m = Model::load(files.spec, *files.tensors, o);
  EXPECT_EQ(prompt_logits(m, {5, 7, 9}).size(), 3u * 160u);
}

TEST(Fp8Checkpoint, RefusesWhatItCannotRead) {
  {  // codes with block scales, but no FP8 quantization_config
    TempDir tmp("fp8_noconfig");
    const std::string e = load_error(edited_copy(tmp, [](json& c) { c.erase("quantization_config"); }));
    EXPECT_NE(e.find("_scale_inv"), std::string::npos) << e;
    EXPECT_NE(e.find("quant_method fp8"), std::string::npos) << e;
  }
  {  // a block size the scale grids do not fit
    TempDir tmp("fp8_block");
    const std::string e =
        load_error(edited_copy(tmp, [](json& c) { c["quantization_config"]["weight_block_size"] = {16, 16}; }));
    EXPECT_NE(e.find("blocks of 16 x 16"), std::string::npos) << e;
  }
  {  // a quantization method not read here
    TempDir tmp("fp8_gptq");
    const std::string e = load_error(edited_copy(tmp, [](json& c) { c["quantization_config"] = {{"quant_method", "gptq"}}; }));
    EXPECT_NE(e.find("quant_method 'gptq' is not supported"), std::string::npos) << e;
  }
  {  // e5m2 in the config
    TempDir tmp("fp8_fmt");
    const std::string e = load_error(edited_copy(tmp, [](json& c) { c["quantization_config"]["fmt"] = "e5m2"; }));
    EXPECT_NE(e.find("e4m3"), std::string::npos) << e;
  }
}

TEST(Fp8Checkpoint, BlockScalesOnAwkwardSizes) {
  // 5 x 7 in blocks of 2 x 3: a 3 x 3 grid, the last row and column of blocks partial.
  std::vector<float> w(35, 1.0f), s(9);
  for (int i = 0; i < 9; ++i) s[static_cast<size_t>(i)] = static_cast<float>(i + 1);
  apply_fp8_block_scales(w.data(), 5, 7, s.data(), 3, 3, Fp8BlockScheme{2, 3}, "t", "w");
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 7; ++c) EXPECT_EQ(w[static_cast<size_t>(r * 7 + c)], s[static_cast<size_t>((r / 2) * 3 + c / 3)]);
  // Without a configured block size the grid must divide the weight (transformers' rule).
  std::vector<float> v(35, 1.0f);
  EXPECT_THROW(apply_fp8_block_scales(v.data(), 5, 7, s.data(), 3, 3, Fp8BlockScheme{}, "t", "w"), Error);
  std::vector<float> u(12, 2.0f), one = {0.5f};
  apply_fp8_block_scales(u.data(), 3, 4, one.data(), 1, 1, Fp8BlockScheme{}, "t", "w");
  for (float x : u) EXPECT_EQ(x, 1.0f);
}
