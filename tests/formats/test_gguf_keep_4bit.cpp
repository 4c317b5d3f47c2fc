// A GGUF's 4-bit weights kept as stored (formats/ggml_as_4bit.h): Q4_0, Q4_1, Q4_K, IQ4_NL,
// IQ4_XS and MXFP4 blocks become the engine's 4-bit weights with no second rounding.
//
// References: the fixtures' float32 values are ggml's own C dequantization of random blocks
// (tests/fixtures/gguf/dequant_*, tools/make_gguf_fixtures.py; also gguf-py's, bit for bit), so
// "bit-exact" here means ggml's numbers; iq_llama.gguf's linears were written by ggml's
// quantizer; SmolLM2's Q4_1 file (scripts/fetch_model.sh) is the default model.
#include <gtest/gtest.h>

#include "gguf_fixture_files.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "base/error.h"
#include "export/merge_gguf.h"
#include "formats/ggml_as_4bit.h"
#include "formats/gguf.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "model/linear_kernels.h"
#include "model/model.h"
#include "model/model_fixture_logits.h"
#include "model/model_spec.h"
#include "model/model_test_util.h"
#include "model/quant_linear.h"
#include "quant/quant_state.h"

using namespace qlora;

namespace {

std::string fixture(const std::string& name) { return test::gguf_fixture(name); }
using test::read_bytes;
using test::read_f32;


// Bit-exact, NaN equal to NaN; the count of mismatches (the first few reported).
size_t mismatches(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (!(std::isnan(got[i]) && std::isnan(want[i])) && a != b && ++bad <= 5)
      ADD_FAILURE() << what << " element " << i << ": got " << got[i] << " want " << want[i];
  }
  return bad;
}

// A Q4Matrix view of q (what QuantLinear::q4_view gives) for the kernels.
kernels::Q4Matrix view(const Quantized4bit& q) {
  return q4_matrix_view(q, q.state.shape[0], q.state.shape[1], ComputeDType::F32);
}

struct KeptType {
  const char* name;
  GgmlType type;
  bool has_min;
};

class KeptBlocks : public ::testing::TestWithParam<KeptType> {};

// The random blocks of every kept type (fp16 scales of every kind, subnormals included; MXFP4's
// every E8M0 byte): as a (rows, cols) weight, every value is ggml's, through the tensor
// dequantization and through every kernel level.
TEST_P(KeptBlocks, ValuesAreGgmlsBitForBit) {
  const KeptType k = GetParam();
  const auto raw = read_bytes(fixture(std::string("dequant_") + k.name + ".bin"));
  const auto want = read_f32(fixture(std::string("dequant_") + k.name + ".f32"));
  const int64_t bs = ggml_traits(k.type).block_size;
  const int64_t n = static_cast<int64_t>(want.size()), rows = n / bs >= 2 ? 2 : 1, cols = n / rows;
  ASSERT_EQ(rows * cols, n);
  const auto q = ggml_blocks_as_4bit(k.type, raw, rows, cols, ComputeDType::F32, "fixture");
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->state.ggml_source, k.name);
  EXPECT_EQ(q->state.blocksize, 32);
  EXPECT_EQ(q->state.has_min(), k.has_min);
  std::vector<float> got(want.size());
  dequantize_tensor_4bit(*q, got.data());
  EXPECT_EQ(mismatches(got, want, std::string(k.name) + " dequantize_tensor_4bit"), 0u);
  for (SimdLevel lv : {SimdLevel::Scalar, SimdLevel::AVX2, SimdLevel::AVX512}) {
    if (cpu_simd_level() < lv) continue;
    std::vector<float> rowsv(want.size(), -1.0f);
    kernels::linear_kernels_for(lv).dequant_rows_q4(view(*q), 0, rows, rowsv.data());
    EXPECT_EQ(mismatches(rowsv, want, std::string(k.name) + " " + std::string(simd_level_name(lv))), 0u);
  }
  // Constants: the fp16 scale (and Q4_1's fp16 minimum) per 32 as the file has them (Q4_0, Q4_1,
  // IQ4_NL); MXFP4's scale as a float32 per 32; or (Q4_K, IQ4_XS) a byte per 32, a float32 d per
  // 256 and the offset, with Q4_K's minimums the same way (a byte per 32, a float32 dmin per 256).
  // The planner's count agrees.
  const bool nested = k.type == GgmlType::Q4_K || k.type == GgmlType::IQ4_XS;
  const bool half = k.type == GgmlType::Q4_0 || k.type == GgmlType::Q4_1 || k.type == GgmlType::IQ4_NL;
  EXPECT_EQ(q->state.nested, nested);
  EXPECT_EQ(q->state.absmax_f16.size(), half ? static_cast<size_t>(n / 32) : 0u);
  const int64_t per = half ? 2 : 4;
  const int64_t want_bytes = nested ? n / 32 + n / 256 * 4 + 4 + (k.has_min ? n / 32 + n / 256 * 4 : 0)
                                    : n / 32 * per + (k.has_min ? n / 32 * per : 0);
  EXPECT_EQ(q->state.constant_bytes(), want_bytes);
  EXPECT_EQ(ggml_kept_constant_bytes(k.type, n), want_bytes);
}

INSTANTIATE_TEST_SUITE_P(Types, KeptBlocks,
                         ::testing::Values(KeptType{"Q4_0", GgmlType::Q4_0, false}, KeptType{"Q4_1", GgmlType::Q4_1, true},
                                           KeptType{"Q4_K", GgmlType::Q4_K, true},
                                           KeptType{"IQ4_NL", GgmlType::IQ4_NL, false},
                                           KeptType{"IQ4_XS", GgmlType::IQ4_XS, false},
                                           KeptType{"MXFP4", GgmlType::MXFP4, false}),
                         [](const ::testing::TestParamInfo<KeptType>& i) { return std::string(i.param.name); });

TEST(GgufKeep4bit, OtherTypesAreNotTaken) {
  for (GgmlType t : {GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::IQ2_XXS, GgmlType::Q2_K, GgmlType::F16})
    EXPECT_FALSE(ggml_type_keeps_as_4bit(t)) << ggml_type_name(t);
  std::vector<uint8_t> raw(18);
  EXPECT_FALSE(ggml_blocks_as_4bit(GgmlType::Q8_0, std::vector<uint8_t>(34), 1, 32, ComputeDType::F32, "x").has_value());
  // Rows that are not whole blocks, or bytes that do not fit the shape: errors naming the tensor.
  try {
    ggml_blocks_as_4bit(GgmlType::Q4_0, raw, 2, 16, ComputeDType::F32, "m.gguf: tensor 'w'");
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("m.gguf: tensor 'w'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ggml_blocks_as_4bit(GgmlType::Q4_0, raw, 2, 32, ComputeDType::F32, "w"), Error);
}

// A kept weight is not a bitsandbytes state: writing it as one is refused with a reason.
TEST(GgufKeep4bit, BitsandbytesWriterRefusesIt) {
  const auto raw = read_bytes(fixture("dequant_Q4_1.bin"));
  const auto q = ggml_blocks_as_4bit(GgmlType::Q4_1, raw, 1, static_cast<int64_t>(raw.size()) / 20 * 32,
                                     ComputeDType::F32, "fixture");
  ASSERT_TRUE(q.has_value());
  SafeTensorsWriter w;
  try {
    write_4bit_to_safetensors(w, "model.layers.0.mlp.up_proj.weight", *q);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bitsandbytes cannot read"), std::string::npos) << e.what();
  }
}

// iq_llama.gguf's linears in a kept type (blk.1's IQ4_NL attn_q -- rows in llama.cpp's rope
// order --, MXFP4 ffn_gate, Q4_K ffn_up) load as stored: their rows are the file's values in
// Hugging Face's order, bit for bit; its Q6_K ffn_down stays 8-bit (Q8_0 of its values: within
// half a step -- each 32-value block's largest / 127, stored as fp16 -- of them); every other
// linear (IQ1..IQ3, TQ,
// NVFP4) is NF4.
TEST(GgufKeep4bit, ModelLinearsAreTheFileValues) {
  const std::string path = fixture("iq_llama.gguf");
  ModelFiles files = open_model_files(path);
  const GgufFile g(path);
  ModelLoadOptions o;  // the default: quantize (nf4)
  const Model m = Model::load(files.spec, *files.tensors, o);
  int kept = 0;
  for (int64_t l = 0; l < m.spec().n_layers; ++l)
    for (int w = 0; w < kAttentionLinears; ++w) {
      const std::string hf = layer_tensor_name(l, kBlockLinearModules[static_cast<size_t>(w)]);
      const GgmlType t = g.tensor(files.tensors->stored_name(hf)).type;
      const QuantLinear& lin = m.block_linear(l, w);
      if (t == GgmlType::Q6_K) {
        ASSERT_TRUE(lin.dense() && lin.dense()->q8()) << hf;
        const std::vector<float> want = files.tensors->get(hf);
        std::vector<float> got(want.size());
        lin.dequantize_rows(0, lin.out_features(), got.data());
        for (size_t b = 0; b < want.size() / 32; ++b) {
          float amax = 0;
          for (size_t i = 32 * b; i < 32 * b + 32; ++i) amax = std::max(amax, std::fabs(want[i]));
          for (size_t i = 32 * b; i < 32 * b + 32; ++i)
            // (half a step, plus the fp16 scale's rounding: up to 2^-11 of the step per unit of code)
            ASSERT_LE(std::fabs(got[i] - want[i]), (0.5f + 127.0f / 2048.0f) * amax / 127.0f + 1e-12f) << hf << " " << i;
        }
        continue;
      }
      ASSERT_NE(lin.q4(), nullptr) << hf;
      if (!ggml_type_keeps_as_4bit(t)) {
        EXPECT_TRUE(lin.q4()->state.ggml_source.empty()) << hf;
        continue;
      }
      ++kept;
      EXPECT_EQ(lin.q4()->state.ggml_source, ggml_type_name(t)) << hf;
      const std::vector<float> want = files.tensors->get(hf);
      std::vector<float> got(want.size());
      lin.dequantize_rows(0, lin.out_features(), got.data());
      EXPECT_EQ(mismatches(got, want, hf), 0u);
    }
  EXPECT_EQ(kept, 3);
}

// The llama family fixture (q/k rows in llama.cpp's rope order once written) as a Q8_0, a Q5_0
// and a Q4_0 GGUF by our own writer: every block Linear loads as stored -- Q8_0 and Q5_0 8-bit
// (DenseWeight::from_q8_0), Q4_0 as kept 4-bit blocks -- with exactly the file's values in
// Hugging Face's row order; --requantize-gguf (keep_gguf_weights false) re-quantizes them.
TEST(GgufKeep4bit, Q8_0AndQ4_0LinearsOfAWrittenGgufAreTheFileValues) {
  const std::string src = std::string(QLORA_FIXTURE_DIR) + "/families/llama/model.gguf";  // (float32, with its tokenizer)
  ModelFiles files = open_model_files(src);
  ModelLoadOptions dense_opt;
  dense_opt.quant.quantize = false;
  const Model m = Model::load(files.spec, *files.tensors, dense_opt);
  test::TempDir tmp("keep_q8_q4");
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_0}) {
    const std::string out = tmp.path(std::string(ggml_type_name(type)) + ".gguf");
    GgufExportOptions eo;
    eo.type = type;
    eo.log = false;
    write_merged_gguf(m, files, {}, out, eo, false);
    ModelFiles g = open_model_files(out);
    const Model kept = Model::load(g.spec, *g.tensors, ModelLoadOptions{});
    ModelLoadOptions rq;
    rq.keep_gguf_weights = false;
    const Model requantized = Model::load(g.spec, *g.tensors, rq);
    for (int64_t l = 0; l < kept.spec().n_layers; ++l)
      for (int w = 0; w < kAttentionLinears; ++w) {
        const std::string hf = layer_tensor_name(l, kBlockLinearModules[static_cast<size_t>(w)]);
        const QuantLinear& lin = kept.block_linear(l, w);
        if (type != GgmlType::Q4_0) {
          ASSERT_NE(lin.dense(), nullptr) << hf;
          EXPECT_TRUE(lin.dense()->q8()) << hf;
        } else {
          ASSERT_NE(lin.q4(), nullptr) << hf;
          EXPECT_EQ(lin.q4()->state.ggml_source, "Q4_0") << hf;
        }
        EXPECT_TRUE(requantized.block_linear(l, w).q4() && requantized.block_linear(l, w).q4()->state.ggml_source.empty())
            << hf;
        const std::vector<float> want = g.tensors->get(hf);
        std::vector<float> got(want.size());
        lin.dequantize_rows(0, lin.out_features(), got.data());
        EXPECT_EQ(mismatches(got, want, std::string(ggml_type_name(type)) + " " + hf), 0u);
      }
  }
}

// On the loaded model the kept weights give the logits of the same weights widened to
// float32 (--quant none), to float32 summation order.
TEST(GgufKeep4bit, LogitsMatchTheUnquantizedLoadOnSmolLM2) {
  const char* dir = std::getenv("QLORA_MODELS_DIR");
  const std::string path =
      (dir && *dir ? std::string(dir) : std::string(QLORA_SOURCE_DIR) + "/models") + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::ifstream(path).good()) GTEST_SKIP() << path << " missing: run scripts/fetch_model.sh";
  ModelFiles files = open_model_files(path);
  ModelLoadOptions o;
  const Model kept = Model::load(files.spec, *files.tensors, o);
  for (int w = 0; w < kAttentionLinears; ++w)
    EXPECT_EQ(kept.block_linear(3, w).q4()->state.ggml_source, "Q4_1") << w;
  o.quant.quantize = false;
  const Model dense = Model::load(files.spec, *files.tensors, o);
  const std::vector<int> prompt = {1, 9690, 42, 7353, 28, 314, 253, 2365, 2};
  const std::vector<float> a = test::all_prompt_logits(kept, prompt), b = test::all_prompt_logits(dense, prompt);
  float scale = 0, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::fabs(b[i]));
    diff = std::max(diff, std::fabs(a[i] - b[i]));
  }
  std::printf("SmolLM2 Q4_1 kept vs widened: max |diff| %.3g (largest |logit| %.3g)\n", diff, scale);
  EXPECT_LE(diff, 1e-4f * scale);
}

}  // namespace
