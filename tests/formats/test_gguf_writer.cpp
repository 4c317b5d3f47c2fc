// The GGUF writer (formats/gguf_writer.h):
//  - its Q8_0 / Q4_0 / F16 / BF16 encoders give exactly the bytes of gguf-py (llama.cpp's
//    gguf package) on awkward inputs: zero blocks, ties, a negative extreme, large values
//    (tests/fixtures/gguf/writer_quants.safetensors, tools/make_gguf_quant_fixtures.py);
//  - a written file is read back by our GGUF parser with every metadata value and tensor
//    as written, including values copied from another GGUF file;
//  - rows that do not fit a quantized type's blocks are refused, naming the tensor.
#include <gtest/gtest.h>

#include <filesystem>

#include "base/error.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/safetensors.h"
#include "model/model_test_util.h"

using namespace qlora;
using namespace qlora::test;

namespace {

std::vector<uint8_t> bytes_of(const SafeTensorsFile& f, const std::string& name) {
  const auto d = f.data(f.at(name));
  return {d.begin(), d.end()};
}

}  // namespace

TEST(GgufWriter, EncodersEqualGgufPy) {
  const SafeTensorsFile f(std::string(QLORA_FIXTURE_DIR) + "/gguf/writer_quants.safetensors");
  const std::vector<float> x = f.to_float(f.at("x"));
  const auto n = static_cast<int64_t>(x.size());
  EXPECT_EQ(quantize_q8_0(x.data(), n), bytes_of(f, "q8_0"));
  EXPECT_EQ(quantize_q4_0(x.data(), n), bytes_of(f, "q4_0"));
  EXPECT_EQ(encode_float_tensor(x, GgmlType::F16), bytes_of(f, "f16"));
  EXPECT_EQ(encode_float_tensor(x, GgmlType::BF16), bytes_of(f, "bf16"));
}

TEST(GgufWriter, WrittenFileReadsBack) {
  TempDir tmp("gguf_writer");
  const GgufFile src(std::string(QLORA_FIXTURE_DIR) + "/gguf/tiny_llama.gguf");
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 3);
  w.set_i32("test.negative", -5);
  w.set_f32("test.float", 0.25f);
  w.set_bool("test.flag", true);
  w.set_string_array("test.strings", {"a", "", "ünï"});
  for (const auto& [k, v] : src.metadata())
    if (k.rfind("tokenizer.", 0) == 0) w.copy_value(k, v);
  std::vector<float> a(2 * 64), b(3);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.01f - 0.5f;
  b = {1.5f, -2.f, 3.25f};
  w.add_tensor("a_q8", GgmlType::Q8_0, {2, 64}, [&] { return quantize_q8_0(a.data(), 128); });
  w.add_tensor("a_f16", GgmlType::F16, {2, 64}, [&] { return encode_float_tensor(a, GgmlType::F16); });
  w.add_tensor("b", GgmlType::F32, {3}, [&] { return encode_float_tensor(b, GgmlType::F32); });
  EXPECT_THROW(w.add_tensor("bad", GgmlType::Q4_0, {2, 40}, [] { return std::vector<uint8_t>(); }), Error);
  w.write(tmp.path("t.gguf"));

  const GgufFile r(tmp.path("t.gguf"));
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.get_u32("llama.block_count"), 3u);
  EXPECT_EQ(r.get_i64("test.negative"), -5);
  EXPECT_EQ(r.get_f32("test.float"), 0.25f);
  EXPECT_TRUE(r.get_bool("test.flag"));
  EXPECT_EQ(r.get_string_array("test.strings"), (std::vector<std::string>{"a", "", "ünï"}));
  EXPECT_EQ(r.get_string_array("tokenizer.ggml.tokens"), src.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(r.get_string_array("tokenizer.ggml.merges"), src.get_string_array("tokenizer.ggml.merges"));
  EXPECT_EQ(r.get_i32_array("tokenizer.ggml.token_type"), src.get_i32_array("tokenizer.ggml.token_type"));
  EXPECT_EQ(r.get_i64("tokenizer.ggml.eos_token_id"), src.get_i64("tokenizer.ggml.eos_token_id"));
  EXPECT_EQ(r.tensor("a_q8").shape(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(r.tensor_to_f32("b"), b);
  const std::vector<float> f16 = r.tensor_to_f32("a_f16"), q8 = r.tensor_to_f32("a_q8");
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(f16[i], a[i], 1e-3) << i;
    EXPECT_NEAR(q8[i], a[i], 0.01) << i;
  }
}
