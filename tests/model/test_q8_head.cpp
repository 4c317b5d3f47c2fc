// A GGUF's Q8_0 token embedding / output head kept in 8 bits (DenseWeight::from_q8_0): the
// values are exactly the file's, so everything computed from them matches the float32
// copy up to summation order; with the real SmolLM2 GGUF (CI fetches it), the model's
// logits, greedy text and training step match --dense-head's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/float_formats.h"
#include "export/merge_gguf.h"
#include "formats/ggml_quantize.h"
#include "formats/model_loader.h"
#include "lora/lora_model.h"
#include "model/lora_step_compare.h"
#include "model/model.h"
#include "model/quant_linear.h"
#include "train/train_model.h"

using namespace qlora;

namespace {

std::vector<float> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// The values a Q8_0 tensor holds: d * q per block, as llama.cpp dequantizes them.
std::vector<float> q8_0_values(const std::vector<uint8_t>& blocks, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t b = 0; b < n / 32; ++b) {
    const uint8_t* p = blocks.data() + b * 34;
    uint16_t d;
    std::memcpy(&d, p, 2);
    for (int i = 0; i < 32; ++i) v[static_cast<size_t>(b * 32 + i)] = fp16_to_f32(d) * static_cast<int8_t>(p[2 + i]);
  }
  return v;
}

TEST(DenseWeightQ8, ValuesAndProductsMatchTheFloat32Copy) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{37, 96}, {5, 32}, {130, 576}}) {
    const std::vector<float> w = randn(rows * cols, 3);
    const std::vector<uint8_t> blocks = quantize_ggml(GgmlType::Q8_0, w.data(), rows * cols);
    const std::vector<float> values = q8_0_values(blocks, rows * cols);
    const DenseWeight q8 = DenseWeight::from_q8_0(blocks, rows, cols, "test");
    const DenseWeight f32(values.data(), rows, cols, ComputeDType::F32);
    ASSERT_TRUE(q8.q8());
    EXPECT_LT(q8.bytes(), f32.bytes() / 3);
    std::vector<float> back(values.size());
    q8.rows_to_f32(0, rows, back.data());
    ASSERT_EQ(back, values);  // exactly the file's values
    std::vector<float> part(static_cast<size_t>(2 * cols));
    q8.rows_to_f32(rows - 2, rows, part.data());
    ASSERT_TRUE(std::equal(part.begin(), part.end(), values.end() - 2 * cols));
    for (int64_t T : {1, 2, 5, 17}) {
      const std::vector<float> x = randn(T * cols, 7 + static_cast<uint32_t>(T));
      std::vector<float> a(static_cast<size_t>(T * rows)), b(a.size());
      q8.matmul(a.data(), x.data(), T);
      f32.matmul(b.data(), x.data(), T);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4 * (1 + std::fabs(b[i]))) << T << " " << i;
    }
  }
}

TEST(DenseWeightQ8, RejectsDataThatDoesNotFitTheShape) {
  const std::vector<float> w = randn(64, 1);
  const std::vector<uint8_t> blocks = quantize_ggml(GgmlType::Q8_0, w.data(), 64);
  EXPECT_THROW(DenseWeight::from_q8_0(blocks, 2, 48, "token_embd.weight"), Error);  // 48 is not whole blocks
  EXPECT_THROW(DenseWeight::from_q8_0(blocks, 3, 32, "token_embd.weight"), Error);  // 96 values, 64 stored
  try {
    DenseWeight::from_q8_0(std::span(blocks).first(60), 2, 32, "token_embd.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_embd.weight"), std::string::npos) << e.what();
  }
}

std::string smollm2_path() {
  const char* dir = std::getenv("QLORA_MODELS_DIR");
  return (dir && *dir ? std::string(dir) : std::string(QLORA_SOURCE_DIR) + "/models") +
         "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

Model load_smollm2(bool keep_q8) {
  ModelFiles files = open_model_files(smollm2_path());
  ModelLoadOptions o;
  o.quant.quantize = true;
  o.quant.type = QuantType::NF4;
  o.quant.blocksize = 64;
  o.keep_q8_0_head = keep_q8;
  return Model::load(files.spec, *files.tensors, o);
}

TEST(SmolLM2Q8Head, KeptHeadMatchesTheWidenedOne) {
  if (!std::filesystem::exists(smollm2_path()))
    GTEST_SKIP() << smollm2_path() << " missing: run scripts/fetch_model.sh";
  const Model q8 = load_smollm2(true), f32 = load_smollm2(false);
  ASSERT_TRUE(q8.embed_tokens().q8());  // token_embd is Q8_0 in this file (and tied to the head)
  ASSERT_FALSE(f32.embed_tokens().q8());
  EXPECT_LT(q8.weight_bytes() + 70'000'000, f32.weight_bytes());  // 113 MB of fp32 -> 32 MB
  const ModelSpec& s = q8.spec();
  const std::vector<int> prompt = {1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411};
  // Prompt logits (the head's T > 1 path) and 24 greedy decode steps (its gemv_q8 path).
  InferenceState a(s, 64), b(s, 64);
  std::vector<float> la(prompt.size() * static_cast<size_t>(s.vocab)), lb(la.size());
  forward(q8, a, prompt, la.data(), true);
  forward(f32, b, prompt, lb.data(), true);
  double peak = 0, worst = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    peak = std::max(peak, std::fabs(static_cast<double>(lb[i])));
    worst = std::max(worst, std::fabs(static_cast<double>(la[i]) - lb[i]));
  }
  EXPECT_LT(worst, 1e-5 * peak) << "prompt logits";
  std::vector<float> da(static_cast<size_t>(s.vocab)), db(da.size());
  int ta = static_cast<int>(std::max_element(la.end() - s.vocab, la.end()) - (la.end() - s.vocab)), tb = ta;
  for (int step = 0; step < 24; ++step) {
    forward(q8, a, std::vector<int>{ta}, da.data());
    forward(f32, b, std::vector<int>{tb}, db.data());
    ta = static_cast<int>(std::max_element(da.begin(), da.end()) - da.begin());
    tb = static_cast<int>(std::max_element(db.begin(), db.end()) - db.begin());
    ASSERT_EQ(ta, tb) << "greedy step " << step;
  }
  // A training step: the head's input gradient goes through rows widened a tile at a time.
  test::expect_same_lora_step(q8, f32, prompt);
}

}  // namespace

namespace {
// All of a weight's values, row after row.
std::vector<float> values_of(const DenseWeight& d) {
  std::vector<float> v(static_cast<size_t>(d.rows() * d.cols()));
  d.rows_to_f32(0, d.rows(), v.data());
  return v;
}
}  // namespace

// Floats quantized to Q8_0 here are ggml's reference quantizer's bytes (llama.cpp's
// quantize_ggml, formats/ggml_quantize.h): the same codes and fp16 scales.
TEST(DenseWeightQ8, ToQ8MatchesGgmlsQuantizer) {
  const int64_t rows = 7, cols = 96;
  std::vector<float> w = randn(rows * cols, 11);
  w[5] = 0.0f;
  for (int i = 0; i < 32; ++i) w[static_cast<size_t>(64 + i)] = 0.0f;  // (an all-zero block)
  const DenseWeight d = DenseWeight::to_q8_0(w, rows, cols, "test");
  const std::vector<uint8_t> ref = quantize_ggml(GgmlType::Q8_0, w.data(), rows * cols);
  const DenseWeight r = DenseWeight::from_q8_0(ref, rows, cols, "ggml");
  EXPECT_EQ(values_of(d), values_of(r));
  EXPECT_THROW(DenseWeight::to_q8_0(w, rows, 95, "test"), Error);
}

// The same bytes when the rows come a slab at a time (the loader's path for a GGUF's quantized
// embedding / head): several slabs and a short last one, each row where it belongs; the filler's
// errors pass through.
TEST(DenseWeightQ8, ToQ8BySlabsMatchesGgmlsQuantizer) {
  const int64_t rows = 40000, cols = 64;  // (slabs of 16384 rows: two whole and a short one)
  const std::vector<float> w = randn(rows * cols, 12);
  int calls = 0;
  const DenseWeight d = DenseWeight::to_q8_0(
      rows, cols,
      [&](int64_t r0, int64_t r1, float* out) {
        ++calls;
        std::copy(w.begin() + r0 * cols, w.begin() + r1 * cols, out);
      },
      "test");
  EXPECT_EQ(calls, 3);
  const std::vector<uint8_t> ref = quantize_ggml(GgmlType::Q8_0, w.data(), rows * cols);
  const DenseWeight r = DenseWeight::from_q8_0(ref, rows, cols, "ggml");
  EXPECT_EQ(values_of(d), values_of(r));
  EXPECT_THROW(DenseWeight::to_q8_0(
                   rows, cols, [](int64_t, int64_t, float*) { throw Error("file.gguf: truncated"); }, "test"),
               Error);
  EXPECT_THROW(DenseWeight::to_q8_0(rows, 95, [](int64_t, int64_t, float*) {}, "test"), Error);
}

// From a quantized type's blocks (the loader's path for a GGUF's Q4_0 / Q4_K / ... embedding or
// head): the Q8_0 of their values, each slab's rows from their own bytes; bytes that do not
// hold the shape are an error naming the tensor.
TEST(DenseWeightQ8, FromBlocksBySlabsMatchesTheWholeTensor) {
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_K}) {
    const int64_t cols = t == GgmlType::Q4_0 ? 64 : 256, rows = 2560000 / cols;  // (three slabs)
    const std::vector<float> w = randn(rows * cols, 13);
    const std::vector<uint8_t> blocks = quantize_ggml(t, w.data(), rows * cols);
    std::vector<float> values(w.size());
    dequantize(t, blocks, values);
    const DenseWeight d = DenseWeight::q8_0_from_blocks(t, blocks, rows, cols, "emb");
    const DenseWeight whole = DenseWeight::to_q8_0(values, rows, cols, "emb");
    EXPECT_EQ(values_of(d), values_of(whole)) << ggml_type_name(t);
    try {
      (void)DenseWeight::q8_0_from_blocks(t, std::span<const uint8_t>(blocks).first(blocks.size() - 1), rows, cols,
                                          "m.gguf: token_embd.weight");
      ADD_FAILURE() << "short data accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("m.gguf: token_embd.weight"), std::string::npos) << e.what();
    }
  }
}

// A GGUF whose embedding and head are stored in another quantized type (here Q4_0, as a
// --gguf-type q4_0 merge writes them) keeps them in 8 bits too (re-quantized to Q8_0): a
// quarter of float32's bytes, logits within Q8_0's step of --dense-head's.
TEST(DenseWeightQ8, OtherQuantizedHeadsStayEightBit) {
  const std::string dir = std::string(QLORA_FIXTURE_DIR) + "/families/llama";
  ModelFiles src = open_model_files(dir + "/model.gguf");
  ModelLoadOptions o;
  o.quant.quantize = false;
  const Model base = Model::load(src.spec, *src.tensors, o);
  char tmpl[] = "/tmp/qlora_q4head_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/m.gguf";
  GgufExportOptions eo;
  eo.type = GgmlType::Q4_0;
  eo.log = false;
  write_merged_gguf(base, src, {}, path, eo, false);
  ModelFiles f = open_model_files(path);
  const Model q8 = Model::load(f.spec, *f.tensors, o);
  ModelLoadOptions wide = o;
  wide.keep_q8_0_head = false;
  const Model f32 = Model::load(f.spec, *f.tensors, wide);
  EXPECT_TRUE(q8.embed_tokens().q8());
  EXPECT_TRUE(q8.lm_head().q8());
  EXPECT_FALSE(f32.embed_tokens().q8());
  EXPECT_LT(q8.embed_tokens().bytes() * 3, f32.embed_tokens().bytes());
  const std::vector<int> prompt = {1, 17, 42, 99, 3, 77, 18};
  auto logits = [&](const Model& m) {
    InferenceState st(m, 16);
    std::vector<float> out(prompt.size() * static_cast<size_t>(m.spec().vocab));
    forward(m, st, prompt, out.data(), true);
    return out;
  };
  const std::vector<float> a = logits(q8), b = logits(f32);
  double worst = 0, peak = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    peak = std::max(peak, double(std::fabs(b[i])));
  }
  EXPECT_LT(worst, 2e-2 * peak) << "Q8_0 of the Q4_0 values moves the logits by about its step";
  EXPECT_GT(worst, 0.0) << "the head was not re-quantized";
  std::filesystem::remove_all(tmpl);
}
