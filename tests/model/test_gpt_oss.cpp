// gpt-oss (model_type gpt_oss): what is particular to it beyond test_families.cpp's suite
// (which runs the fixture's logits, greedy decoding, NF4 experts, bnb 4-bit checkpoint, PEFT
// adapters, gradients, loss curve and merge against transformers / PEFT): its MXFP4 files,
// attention sinks on every attention path, and the LoRA it refuses.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/float_formats.h"
#include "export/merge_gguf.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "lora/lora.h"
#include "lora/lora_model.h"
#include "model/model.h"
#include "model/model_fixture_logits.h"
#include "model/model_test_util.h"
#include "model/ops.h"

using namespace qlora;
using namespace qlora::test;
using nlohmann::json;

namespace {

std::string dir() { return std::string(QLORA_FIXTURE_DIR) + "/families/gpt_oss"; }



// OpenAI's checkpoints keep the experts in MXFP4: the fixture's mxfp4/ (packed by the fixture
// script; transformers loading those files gave mxfp4_logits, equal to its own dequantizer's).
TEST(GptOss, Mxfp4FilesGiveTransformersLogits) {
  const ModelFiles files = open_model_files(dir() + "/mxfp4");
  const std::string gu = "model.layers.0.mlp.experts.gate_up_proj";
  ASSERT_TRUE(files.tensors->has(gu));
  EXPECT_TRUE(files.tensors->is_mxfp4(gu));
  for (const std::string& n : files.tensors->names()) EXPECT_FALSE(n.ends_with("_blocks") || n.ends_with("_scales")) << n;
  const std::vector<int64_t> shape = files.tensors->shape(gu);  // (experts, in, out) as transformers dequantizes it
  ASSERT_EQ(shape, (std::vector<int64_t>{files.spec.n_experts, files.spec.hidden, 2 * files.spec.expert_ffn}));
  const std::vector<float> all = files.tensors->get(gu), e2 = files.tensors->get_slice(gu, 2);
  const size_t per = static_cast<size_t>(shape[1] * shape[2]);
  EXPECT_EQ(e2, std::vector<float>(all.begin() + 2 * static_cast<std::ptrdiff_t>(per), all.begin() + 3 * static_cast<std::ptrdiff_t>(per)));
  EXPECT_THROW(files.tensors->get_slice(gu, shape[0]), Error);

  const Model m = load_unquantized(dir() + "/mxfp4");
  const auto prompt = json::parse(read_file(dir() + "/reference.json")).at("prompt").get<std::vector<int>>();
  const SafeTensorsFile ref(dir() + "/logits.safetensors");
  const std::vector<float> want = ref.to_float(ref.at("mxfp4_logits")), got = all_prompt_logits(m, prompt);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0, peak = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    peak = std::max(peak, std::fabs(double(want[i])));
  }
  EXPECT_LE(worst, 4e-6 * peak);
}

// The sinks on each attention path (per-head GEMMs for a block of queries, the row kernels for
// decoding, a 16-bit cache, batched decoding) against a plain softmax over [scores, sink].
TEST(GptOss, AttentionSinksOnEveryPath) {
  const int64_t NH = 6, NKV = 2, HS = 24, Tk = 37;
  LoraRng rng(5);
  auto fill = [&](std::vector<float>& v, float s) {
    for (float& x : v) x = s * (rng.next_float() - 0.5f);
  };
  std::vector<float> k(static_cast<size_t>(Tk * NKV * HS)), v(k.size()), q(static_cast<size_t>(Tk * NH * HS)), sinks(NH);
  fill(k, 2.0f);
  fill(v, 2.0f);
  fill(q, 2.0f);
  fill(sinks, 6.0f);
  // bf16 copies of k and v, and the float32 values they hold (the 16-bit cache's contract)
  std::vector<uint16_t> k16(k.size()), v16(v.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k16[i] = f32_to_bf16(k[i]);
    v16[i] = f32_to_bf16(v[i]);
    k[i] = bf16_to_f32(k16[i]);
    v[i] = bf16_to_f32(v16[i]);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  auto reference = [&](int64_t t, int64_t h, int64_t j0, float* o) {  // query t (position t), keys j0..t
    const int64_t kh = h / (NH / NKV);
    std::vector<double> s;
    double mx = sinks[static_cast<size_t>(h)];
    for (int64_t j = j0; j <= t; ++j) {
      double d = 0;
      for (int64_t c = 0; c < HS; ++c) d += double(q[static_cast<size_t>((t * NH + h) * HS + c)]) * k[static_cast<size_t>((j * NKV + kh) * HS + c)];
      s.push_back(d * scale);
      mx = std::max(mx, s.back());
    }
    double z = std::exp(double(sinks[static_cast<size_t>(h)]) - mx);
    for (double& x : s) z += (x = std::exp(x - mx));
    for (int64_t c = 0; c < HS; ++c) {
      double acc = 0;
      for (int64_t j = j0; j <= t; ++j) acc += s[static_cast<size_t>(j - j0)] / z * v[static_cast<size_t>((j * NKV + kh) * HS + c)];
      o[c] = static_cast<float>(acc);
    }
  };
  auto expect_near_ref = [&](const std::vector<float>& out, int64_t t0, int64_t T, const int32_t* key_start, const char* what) {
    std::vector<float> want(static_cast<size_t>(NH * HS));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < NH; ++h) {
        reference(t0 + t, h, key_start ? key_start[t] : 0, want.data() + h * HS);
        for (int64_t c = 0; c < HS; ++c)
          EXPECT_NEAR(out[static_cast<size_t>((t * NH + h) * HS + c)], want[static_cast<size_t>(h * HS + c)], 2e-5)
              << what << " t " << t0 + t << " h " << h;
      }
  };
  // a block of 37 queries (the GEMM path), with windows
  std::vector<int32_t> ks(static_cast<size_t>(Tk));
  for (int64_t t = 0; t < Tk; ++t) ks[static_cast<size_t>(t)] = static_cast<int32_t>(std::max<int64_t>(0, t - 9));
  std::vector<float> out(q.size()), att(static_cast<size_t>(NH * Tk * Tk));
  attention_forward(out.data(), att.data(), nullptr, q.data(), k.data(), v.data(), Tk, Tk, 0, NH, NKV, HS, ks.data(),
                    0.0f, 0.0f, nullptr, sinks.data());
  expect_near_ref(out, 0, Tk, ks.data(), "prompt block");
  // each probability row sums to less than 1 by the sink's share
  for (int64_t h = 0; h < NH; ++h) {
    double sum = 0;
    for (int64_t j = 0; j < Tk; ++j) sum += att[static_cast<size_t>((h * Tk + 3) * Tk + j)];
    EXPECT_LT(sum, 1.0 - 1e-4) << h;
  }
  // decoding the last query over the cache: float32 rows, bf16 rows, and batched
  const int64_t t = Tk - 1;
  const float* qt = q.data() + t * NH * HS;
  std::vector<float> o1(static_cast<size_t>(NH * HS)), scratch(static_cast<size_t>(attention_scratch_floats(1, Tk, NH)));
  attention_forward(o1.data(), nullptr, scratch.data(), qt, k.data(), v.data(), 1, Tk, t, NH, NKV, HS, nullptr, 0.0f, 0.0f,
                    nullptr, sinks.data());
  expect_near_ref(o1, t, 1, nullptr, "decode f32");
  std::vector<float> o2(o1.size());
  attention_forward_kv16(o2.data(), nullptr, scratch.data(), qt, k16.data(), v16.data(), ComputeDType::BF16, 1, Tk, Tk, t,
                         NH, NKV, HS, nullptr, 0.0f, 0.0f, nullptr, sinks.data());
  EXPECT_EQ(o2, o1) << "a bf16 cache attends as its float32 values";
  std::vector<float> o3(o1.size());
  const void* kp = k.data();
  const void* vp = v.data();
  const ComputeDType dt = ComputeDType::F32;
  const int64_t pos = t;
  attention_decode_rows(o3.data(), qt, 1, &kp, &vp, &dt, &pos, nullptr, NH, NKV, HS, 0.0f, 0.0f, nullptr, sinks.data());
  EXPECT_EQ(o3, o1) << "batched decoding";
}

// llama.cpp's gpt-oss GGUF (gpt_oss_gguf: swiglu_limit 7, which llama.cpp hard-codes, and yarn
// truncated, as ggml's rope always is): transformers' logits from the float-expert GGUF, and
// llama.cpp's own logits from the one with llama.cpp's MXFP4 experts (gguf-py's quantizer);
// writing one back gives the same logits.
TEST(GptOss, LlamaCppGgufsGiveItsLogits) {
  const std::string d = std::string(QLORA_FIXTURE_DIR) + "/families/gpt_oss_gguf";
  const auto prompt = json::parse(read_file(d + "/reference.json")).at("prompt").get<std::vector<int>>();
  auto expect_close = [](const std::vector<float>& got, const std::vector<float>& want, double rel, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    double worst = 0, peak = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
      peak = std::max(peak, std::fabs(double(want[i])));
    }
    EXPECT_LE(worst, rel * peak) << what << ": max |dlogit| " << worst << " of " << peak;
  };
  const ModelFiles files = open_model_files(d + "/model.gguf");
  EXPECT_EQ(files.spec.family, "gpt_oss");
  EXPECT_TRUE(files.spec.attn_sinks && files.spec.moe_gpt_oss);
  EXPECT_EQ(files.spec.swiglu_limit, 7.0f);
  const SafeTensorsFile ref(d + "/logits.safetensors");
  expect_close(all_prompt_logits(load_unquantized(d + "/model.gguf"), prompt), ref.to_float(ref.at("logits")), 4e-6, "model.gguf");
  const Model mx = load_unquantized(d + "/model_mxfp4.gguf");
  const SafeTensorsFile ll(d + "/gguf_mxfp4_llama_cpp_logits.safetensors");
  const std::vector<float> got = all_prompt_logits(mx, prompt);
  // Exactly what gguf-py's own dequantization of the file gives in transformers...
  expect_close(got, ll.to_float(ll.at("transformers_gguf_dequantized_logits")), 4e-6, "model_mxfp4.gguf");
  // ...and llama.cpp's logits on it within what its CPU MXFP4 products cost: they quantize the
  // activations to Q8_0 (measured 0.118 of 5.9, the same from transformers; 2%).
  expect_close(got, ll.to_float(ll.at("logits")), 3e-2, "model_mxfp4.gguf vs llama.cpp");
  // Written back (float32): the same logits; llama.cpp's own run of our merges is in
  // tools/check_family_merges.py. A model llama.cpp's graph cannot run (swiglu_limit 1.5) is refused.
  GgufExportOptions o;
  o.log = false;
  o.type = GgmlType::F32;
  TempDir tmp("gptoss_gguf");
  {
    ModelFiles f = open_model_files(d + "/model.gguf");
    const Model m = load_unquantized(d + "/model.gguf");
    write_merged_gguf(m, f, {}, tmp.path("m.gguf"), o, false);
    expect_close(all_prompt_logits(load_unquantized(tmp.path("m.gguf")), prompt), ref.to_float(ref.at("logits")), 4e-6, "written back");
  }
  try {
    ModelFiles f = open_model_files(dir());
    write_merged_gguf(load_unquantized(dir()), f, {}, tmp.path("limit.gguf"), o, false);
    ADD_FAILURE() << "a gpt-oss GGUF with swiglu_limit 1.5 was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("clamps its experts at 7"), std::string::npos) << e.what();
  }
}

// PEFT's all-linear on gpt-oss adapts the attention only; its experts and its router take LoRA
// when named (target_parameters, OpenAI's recipe: the fixture's adapter, run through
// test_families.cpp), the router under PEFT's module path mlp.router.
TEST(GptOss, AllLinearIsTheAttentionExpertsAndRouterWhenNamed) {
  const Model m = load_unquantized(dir());
  LoraConfig c;
  c.r = 4;
  c.dropout = 0.0;
  c.all_linear = true;
  const LoraModel lm(m, c);
  EXPECT_EQ(lm.layers().size(), 4u * static_cast<size_t>(m.spec().n_layers));
  for (const LoraLayer& l : lm.layers()) EXPECT_NE(l.module_path.find(".self_attn."), std::string::npos) << l.module_path;
  c.target_parameters = {"1.mlp.experts.gate_up_proj"};  // (one layer, as OpenAI's recipe names them)
  const LoraModel ex(m, c);
  EXPECT_EQ(ex.layers().size(), 4u * static_cast<size_t>(m.spec().n_layers) + static_cast<size_t>(m.spec().n_experts));
  EXPECT_EQ(ex.find_expert(0, 0, 0), nullptr);
  ASSERT_NE(ex.find_expert(1, 2, 0), nullptr);
  EXPECT_EQ(ex.find_expert(1, 2, 0)->out, 2 * m.spec().expert_ffn);
  c.target_parameters = {"router.weight"};
  const LoraModel rt(m, c);
  ASSERT_NE(rt.find_router(1), nullptr);
  EXPECT_EQ(rt.find_router(1)->module_path, "model.layers.1.mlp.router");
  EXPECT_EQ(rt.find_router(1)->out, m.spec().n_experts);
}

}  // namespace
