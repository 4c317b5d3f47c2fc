// A GGUF whose tensors are in GGML's i-quants, ternary and FP4 types loads and runs:
// tests/fixtures/gguf/iq_llama.gguf (tools/make_gguf_fixtures.py) is a 2-layer llama whose
// weights ggml's own quantizer (ggml_quantize_chunk) wrote one type per tensor -- IQ1_S,
// IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS (the embedding), TQ1_0,
// TQ2_0, NVFP4, MXFP4, Q4_K, Q6_K.
//
// References: transformers' logits on the same file (its GGUF loader dequantizes with
// gguf-py, then runs float32): ours, on the weights as stored, must agree to float32
// rounding -- 1e-5 of the largest logit (measured: see the test's output). llama.cpp's
// logits on the file are further off because its products round the activations to 8 bits
// (the script measured 0.20 against a largest logit of 4.7 between llama.cpp and
// transformers); ours must be as close to them as transformers' are, with the same top token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/gguf_logits_reference.h"
#include "formats/model_loader.h"
#include "model/model.h"
#include "model/model_fixture_logits.h"

using namespace qlora;
using json = nlohmann::json;

namespace {

const std::string kFile = std::string(QLORA_FIXTURE_DIR) + "/gguf/iq_llama.gguf";

json reference() { return test::gguf_logits_reference("iq_llama"); }
using test::argmax_row;
using test::max_abs;
using test::max_diff;
const auto flat = test::flat_rows;

// The weights as stored (dequantized to float32, no NF4 re-quantization).
Model load_as_stored() {
  ModelFiles files = open_model_files(kFile);
  ModelLoadOptions o;
  o.quant.quantize = false;
  o.keep_q8_0_head = false;  // the IQ4_XS embedding as float32, not re-quantized to Q8_0
  return Model::load(files.spec, *files.tensors, o);
}

TEST(GgufIQuantModel, FileHoldsEveryTypeTheFixtureNames) {
  const GgufFile g(kFile);
  const json ref = reference();
  for (const auto& [name, type] : ref.at("types").items())
    EXPECT_EQ(std::string(ggml_type_name(g.tensor(name).type)), type.get<std::string>()) << name;
}

TEST(GgufIQuantModel, LogitsMatchTransformersOnTheSameFile) {
  const json ref = reference();
  const auto prompt = ref.at("prompt").get<std::vector<int>>();
  const std::vector<float> hf = flat(ref.at("transformers_logits"));
  const Model m = load_as_stored();
  const std::vector<float> got = test::all_prompt_logits(m, prompt);
  ASSERT_EQ(got.size(), hf.size());
  const float scale = max_abs(hf), d = max_diff(got, hf);
  std::printf("iq_llama: max |ours - transformers| %.3g (largest |logit| %.3g)\n", d, scale);
  EXPECT_LE(d, 1e-5f * scale);
}

TEST(GgufIQuantModel, LogitsAsCloseToLlamaCppAsTransformersAre) {
  const json ref = reference();
  const auto prompt = ref.at("prompt").get<std::vector<int>>();
  const std::vector<float> lc = flat(ref.at("llama_cpp_logits"));
  const Model m = load_as_stored();
  const std::vector<float> got = test::all_prompt_logits(m, prompt);
  const float d = max_diff(got, lc), hf_d = ref.at("llama_cpp_vs_transformers_max_abs").get<float>();
  std::printf("iq_llama: max |ours - llama.cpp| %.3g (transformers - llama.cpp: %.3g)\n", d, hf_d);
  EXPECT_LE(d, hf_d * 1.01f + 1e-4f);
  for (size_t t = 0; t < prompt.size(); ++t)
    EXPECT_EQ(argmax_row(got, t, m.spec().vocab), argmax_row(lc, t, m.spec().vocab)) << "position " << t;
}

}  // namespace
