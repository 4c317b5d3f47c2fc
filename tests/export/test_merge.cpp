// `qlora merge` (export/merge.h): LoRA folded into the base weights and written as a
// Hugging Face directory.
//  - stories260K in NF4 + PEFT's own adapter (tests/fixtures/train_parity, made by
//    tools/make_train_parity_fixtures.py with PEFT 0.21 over bitsandbytes' NF4 weights),
//    merged to fp32 and loaded back dense, gives PEFT's logits (computed unmerged by PEFT)
//    within fp32 rounding: the merge is W' = dequant(Wq) + scaling·B·A;
//  - bf16 output is exactly the fp32 merge rounded to bf16; small --max-shard-size gives
//    shards and an index that load the same; adapter weights add up;
//  - the base model's directory and an existing model are never overwritten.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/float_formats.h"
#include "export/merge.h"
#include "export/merge_gguf.h"
#include "export/tokenizer_json_writer.h"
#include "formats/gguf.h"
#include "formats/tokenizer.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "lora/adapter_loader.h"

using namespace qlora;
using namespace qlora::test;
namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& rel) { return std::string(QLORA_FIXTURE_DIR) + "/train_parity/" + rel; }

// As the parity fixtures were made: bitsandbytes NF4, blocksize 64, no double quant.
Model load_nf4(const ModelFiles& f) {
  ModelLoadOptions o;
  o.quant.quantize = true;
  o.quant.type = QuantType::NF4;
  o.quant.blocksize = 64;
  return Model::load(f.spec, *f.tensors, o);
}

Model load_dense(const std::string& dir) {
  ModelFiles f = open_model_files(dir);
  ModelLoadOptions o;
  o.quant.quantize = false;
  return Model::load(f.spec, *f.tensors, o);
}

std::vector<float> logits_of(const Model& m, const std::vector<int>& ids) {
  InferenceState st(m.spec(), static_cast<int64_t>(ids.size()));
  std::vector<float> out(ids.size() * static_cast<size_t>(m.spec().vocab));
  forward(m, st, ids, out.data(), /*all_logits=*/true);
  return out;
}

struct Stories {
  ModelFiles files = open_model_files(stories_bin());
  Model model = load_nf4(files);
  LoadedAdapter adapter = load_adapter(fixture("stories260k/initial_adapter"), model);
};

}  // namespace

TEST(Merge, MergedStoriesGivesPeftLogits) {
  Stories s;
  TempDir tmp("merge_fp32");
  HfExportOptions ex;
  ex.dtype = DType::F32;
  ex.log = false;
  const auto written = write_merged_hf_dir(s.model, s.files, {{s.adapter.lora.get(), 1.0}}, tmp.path("out"), ex, false);
  EXPECT_EQ(written.front(), "model.safetensors");
  const Model merged = load_dense(tmp.path("out"));

  const SafeTensorsFile f(fixture("stories260k/peft_logits.safetensors"));
  const auto ids = nlohmann::json::parse(f.metadata().at("ids")).get<std::vector<int>>();
  const std::vector<float> want = f.to_float(f.at("logits"));
  const std::vector<float> base = f.to_float(f.at("base_logits"));
  const std::vector<float> got = logits_of(merged, ids);
  ASSERT_EQ(got.size(), want.size());
  double d = 0, moved = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    d = std::max(d, std::fabs(double(got[i]) - want[i]));
    moved = std::max(moved, std::fabs(double(want[i]) - base[i]));
  }
  std::printf("merged (fp32) vs PEFT unmerged: max |diff| %.2e; the adapter moves logits by %.3f\n", d, moved);
  EXPECT_LE(d, 1e-4);
  EXPECT_GT(moved, 0.1);  // the adapter really acts
}

TEST(Merge, Bf16IsTheFp32MergeRoundedAndShardsLoadTheSame) {
  Stories s;
  TempDir tmp("merge_bf16");
  HfExportOptions ex;
  ex.log = false;
  ex.dtype = DType::F32;
  write_merged_hf_dir(s.model, s.files, {{s.adapter.lora.get(), 1.0}}, tmp.path("f32"), ex, false);
  ex.dtype = DType::BF16;
  ex.max_shard_bytes = 100'000;
  const auto written = write_merged_hf_dir(s.model, s.files, {{s.adapter.lora.get(), 1.0}}, tmp.path("bf16"), ex, false);
  EXPECT_TRUE(fs::exists(tmp.path("bf16/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(tmp.path("bf16/model.safetensors")));
  const auto index = nlohmann::json::parse(read_file(tmp.path("bf16/model.safetensors.index.json")));
  const size_t n_shards = std::count_if(written.begin(), written.end(),
                                        [](const std::string& w) { return w.starts_with("model-"); });
  EXPECT_GT(n_shards, 2u);
  EXPECT_EQ(nlohmann::json::parse(read_file(tmp.path("bf16/config.json"))).at("torch_dtype"), "bfloat16");

  const ModelFiles f32 = open_model_files(tmp.path("f32"));
  const ModelFiles b16 = open_model_files(tmp.path("bf16"));
  size_t n = 0;
  for (const std::string& name : f32.tensors->names()) {
    ASSERT_TRUE(index.at("weight_map").contains(name)) << name;
    const std::vector<float> a = f32.tensors->get(name), b = b16.tensors->get(name);
    ASSERT_EQ(a.size(), b.size()) << name;
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(bf16_to_f32(f32_to_bf16(a[i])), b[i]) << name << " [" << i << "]";
    ++n;
  }
  EXPECT_EQ(n, s.model.spec().tensors().size());
  // The sharded bf16 model loads and runs (logits close to the fp32 merge's, within bf16 noise).
  const Model m16 = load_dense(tmp.path("bf16")), m32 = load_dense(tmp.path("f32"));
  const std::vector<int> ids = {1, 403, 407, 261, 378};
  const auto l16 = logits_of(m16, ids), l32 = logits_of(m32, ids);
  double d = 0;
  for (size_t i = 0; i < l16.size(); ++i) d = std::max(d, std::fabs(double(l16[i]) - l32[i]));
  EXPECT_LT(d, 0.5);
}

TEST(Merge, AdapterWeightsAddUp) {
  Stories s;
  // Weight 0: the base weight, dequantized, exactly.
  for (int which = 0; which < 7; ++which) {
    const QuantLinear& q = s.model.block_linear(2, which);
    std::vector<float> base(static_cast<size_t>(q.out_features() * q.in_features()));
    q.dequantize_rows(0, q.out_features(), base.data());
    EXPECT_EQ(merged_linear_weight(s.model, 2, which, {{s.adapter.lora.get(), 0.0}}), base);
    // 0.5 + 0.5 of the same adapter = 1 of it (within float rounding of the two sums).
    const auto one = merged_linear_weight(s.model, 2, which, {{s.adapter.lora.get(), 1.0}});
    const auto halves =
        merged_linear_weight(s.model, 2, which, {{s.adapter.lora.get(), 0.5}, {s.adapter.lora.get(), 0.5}});
    double d = 0, delta = 0;
    for (size_t i = 0; i < one.size(); ++i) {
      d = std::max(d, std::fabs(double(one[i]) - halves[i]));
      delta = std::max(delta, std::fabs(double(one[i]) - base[i]));
    }
    EXPECT_LT(d, 1e-6) << which;
    EXPECT_GT(delta, 1e-4) << which;  // the adapter changes every targeted Linear
  }
}

TEST(Merge, NeverOverwritesTheBaseOrAnExistingModel) {
  Stories s;
  TempDir tmp("merge_refuse");
  HfExportOptions ex;
  ex.log = false;
  write_merged_hf_dir(s.model, s.files, {{s.adapter.lora.get(), 1.0}}, tmp.path("out"), ex, false);
  const std::string before = read_file(tmp.path("out/model.safetensors"));
  try {
    write_merged_hf_dir(s.model, s.files, {{s.adapter.lora.get(), 0.5}}, tmp.path("out"), ex, false);
    ADD_FAILURE() << "overwrote an existing model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(tmp.path("out/model.safetensors")), before);
  // Merging a model loaded from that directory back into the same directory: refused even
  // with overwrite (it is the base).
  const ModelFiles again = open_model_files(tmp.path("out"));
  try {
    write_merged_hf_dir(s.model, again, {}, tmp.path("out"), ex, true);
    ADD_FAILURE() << "wrote into the base model's directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("base model's own directory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(tmp.path("out/model.safetensors")), before);
}

// A GGUF source's tokenizer (SmolLM2: byte-level BPE with merges, chat template) is written
// as tokenizer.json; read back, it encodes exactly as the GGUF tokenizer does.
TEST(Merge, GgufTokenizerIsWrittenAsTokenizerJsonThatEncodesTheSame) {
  if (!fs::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent: run scripts/fetch_model.sh";
  const ModelFiles gguf = open_model_files(smollm2_gguf());
  ASSERT_TRUE(gguf.tokenizer);
  TempDir tmp("merge_tok");
  write_file(tmp.path("tokenizer.json"), tokenizer_json_text(gguf.tokenizer->spec()));
  write_file(tmp.path("tokenizer_config.json"), tokenizer_config_json_text(gguf.tokenizer->spec(), 8192));
  const Tokenizer back = Tokenizer::from_file(tmp.path("tokenizer.json"));
  EXPECT_EQ(back.vocab_size(), gguf.tokenizer->vocab_size());
  EXPECT_EQ(back.chat_template(), gguf.tokenizer->chat_template());
  std::string text = read_file(data_dir() + "/text/tinyshakespeare.txt").substr(0, 200000);
  text += "\n<|im_start|>user\nHi! ünïcödé 🙂 1234567 tabs\tand   spaces<|im_end|>\n";
  EXPECT_EQ(back.encode(text), gguf.tokenizer->encode(text));
  const auto cfg = nlohmann::json::parse(read_file(tmp.path("tokenizer_config.json")));
  EXPECT_EQ(cfg.at("eos_token"), gguf.tokenizer->spec().vocab[static_cast<size_t>(gguf.tokenizer->spec().eos_id)]);
}

// GGUF output of a GGUF source: a float32 GGUF read back by our loader (which undoes
// llama.cpp's q/k row order) holds exactly the float32 Hugging Face merge; the tokenizer
// metadata is the source's. (Byte equality of every --gguf-type with gguf-py's own
// conversion, and llama.cpp loading the files: tools/check_merge_gguf.py.)
TEST(Merge, GgufOutputHoldsTheMergeInLlamaCppLayout) {
  if (!fs::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent: run scripts/fetch_model.sh";
  const ModelFiles src = open_model_files(smollm2_gguf());
  const Model model = load_nf4(src);
  const LoadedAdapter ad = load_adapter(fixture("smollm2/initial_adapter"), model);
  TempDir tmp("merge_gguf");
  HfExportOptions hx;
  hx.dtype = DType::F32;
  hx.log = false;
  write_merged_hf_dir(model, src, {{ad.lora.get(), 1.0}}, tmp.path("hf"), hx, false);
  GgufExportOptions gx;
  gx.type = GgmlType::F32;
  gx.log = false;
  write_merged_gguf(model, src, {{ad.lora.get(), 1.0}}, tmp.path("m.gguf"), gx, false);
  const ModelFiles hf = open_model_files(tmp.path("hf")), gg = open_model_files(tmp.path("m.gguf"));
  EXPECT_EQ(gg.spec.n_layers, model.spec().n_layers);
  for (const TensorSpec& t : model.spec().tensors()) ASSERT_EQ(gg.tensors->get(t.name), hf.tensors->get(t.name)) << t.name;
  const std::string text = "Hello! <|im_start|>user\nünïcödé 123<|im_end|>";
  EXPECT_EQ(gg.tokenizer->encode(text), src.tokenizer->encode(text));
  EXPECT_EQ(gg.chat_template, src.chat_template);
  // Refusal: an existing file.
  EXPECT_THROW(write_merged_gguf(model, src, {}, tmp.path("m.gguf"), gx, false), Error);
}

// GGUF from a llama2.c source (a vocabulary with its own scores and literal spaces): read
// back, it tokenizes as llama2.c does and generates llama2.c's known greedy text.
// (llama.cpp on the same file generates that text too: tools/check_merge_gguf.py.)
TEST(Merge, GgufFromLlama2cGeneratesLlama2csText) {
  const ModelFiles src = open_model_files(stories_bin());
  ModelLoadOptions dense;
  dense.quant.quantize = false;
  const Model m = Model::load(src.spec, *src.tensors, dense);
  TempDir tmp("merge_l2c_gguf");
  GgufExportOptions gx;
  gx.type = GgmlType::F32;
  gx.log = false;
  write_merged_gguf(m, src, {}, tmp.path("s.gguf"), gx, false);
  const GgufFile g(tmp.path("s.gguf"));
  EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "llama");
  const ModelFiles back = open_model_files(tmp.path("s.gguf"));
  const std::string text = "Once upon a time, there was a little girl.";
  EXPECT_EQ(back.tokenizer->encode(text), src.tokenizer->encode(text));
  const Model bm = Model::load(back.spec, *back.tensors, dense);
  const auto ids = back.tokenizer->encode("Once upon a time");
  GenerationOptions go;
  go.max_new_tokens = kStoriesNewTokens;
  go.sampling.temperature = 0;
  go.echo_prompt = true;
  std::string out;
  generate(bm, back.tokenizer.get(), std::vector<int>(ids.begin(), ids.end()), go, [&](std::string_view p) { out += p; });
  EXPECT_EQ(out, kStoriesGreedy);
}

// llama.cpp's Q4_K_M mixture, rule by rule (llama-quant.cpp without an importance matrix);
// the whole file's bytes against llama_model_quantize are tools/check_merge_gguf.py's.
TEST(Merge, Q4KMMixtureFollowsLlamaCpp) {
  const int64_t n = 32;  // use_more_bits: layers < 4, >= 28, and (l - 4) % 3 == 2
  for (int64_t l : {0, 3, 6, 9, 28, 31})
    EXPECT_EQ(gguf_q4_k_m_type("blk." + std::to_string(l) + ".attn_v.weight", 2, 4096, n, false, false), GgmlType::Q6_K)
        << l;
  for (int64_t l : {4, 5, 7, 8, 26})
    EXPECT_EQ(gguf_q4_k_m_type("blk." + std::to_string(l) + ".attn_v.weight", 2, 4096, n, false, false), GgmlType::Q4_K)
        << l;
  EXPECT_EQ(gguf_q4_k_m_type("blk.6.ffn_down.weight", 2, 11008 + 256, n, false, false), GgmlType::Q6_K);
  EXPECT_EQ(gguf_q4_k_m_type("blk.5.ffn_down.weight", 2, 11008 + 256, n, false, false), GgmlType::Q4_K);
  EXPECT_EQ(gguf_q4_k_m_type("blk.5.attn_q.weight", 2, 4096, n, false, false), GgmlType::Q4_K);
  EXPECT_EQ(gguf_q4_k_m_type("output.weight", 2, 4096, n, false, false), GgmlType::Q6_K);
  EXPECT_EQ(gguf_q4_k_m_type("token_embd.weight", 2, 4096, n, false, false), GgmlType::Q4_K);
  EXPECT_EQ(gguf_q4_k_m_type("token_embd.weight", 2, 4096, n, true, false), GgmlType::Q6_K);  // tied: the head
  EXPECT_EQ(gguf_q4_k_m_type("blk.0.attn_norm.weight", 1, 4096, n, false, false), GgmlType::F32);
  // Rows that are not a multiple of 256: Q4_K -> Q5_0, Q6_K -> Q8_0, the head Q8_0, and F16
  // when not even a multiple of 32.
  EXPECT_EQ(gguf_q4_k_m_type("blk.5.attn_q.weight", 2, 576, 30, true, false), GgmlType::Q5_0);
  EXPECT_EQ(gguf_q4_k_m_type("blk.0.attn_v.weight", 2, 576, 30, true, false), GgmlType::Q8_0);
  EXPECT_EQ(gguf_q4_k_m_type("token_embd.weight", 2, 576, 30, true, false), GgmlType::Q8_0);
  EXPECT_EQ(gguf_q4_k_m_type("blk.5.attn_q.weight", 2, 100, 30, true, false), GgmlType::F16);
  // llama.cpp's 70B type gives attn_v Q5_K, which is not written here: a clear refusal.
  EXPECT_THROW(gguf_q4_k_m_type("blk.11.attn_v.weight", 2, 8192, 80, false, true), Error);
  GgufExportOptions o;
  set_gguf_export_type(o, "q4_k_m", "--gguf-type");
  EXPECT_TRUE(o.q4_k_m);
  EXPECT_THROW(set_gguf_export_type(o, "q4_k_s", "--gguf-type"), Error);
}

// A Q4_K_M GGUF of the merge reads back through our own dequantizers (Q4_K, Q6_K, Q5_0,
// Q8_0) close to the float32 merge: relative RMS error per tensor below 8%.
TEST(Merge, Q4KMGgufReadsBackCloseToTheMerge) {
  if (!fs::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent: run scripts/fetch_model.sh";
  const ModelFiles src = open_model_files(smollm2_gguf());
  const Model model = load_nf4(src);
  TempDir tmp("merge_q4km");
  GgufExportOptions gx;
  gx.log = false;
  gx.type = GgmlType::F32;
  write_merged_gguf(model, src, {}, tmp.path("f32.gguf"), gx, false);
  set_gguf_export_type(gx, "q4_k_m", "--gguf-type");
  write_merged_gguf(model, src, {}, tmp.path("q.gguf"), gx, false);
  const ModelFiles f = open_model_files(tmp.path("f32.gguf")), q = open_model_files(tmp.path("q.gguf"));
  for (const TensorSpec& t : model.spec().tensors()) {
    const std::vector<float> a = f.tensors->get(t.name), b = q.tensors->get(t.name);
    ASSERT_EQ(a.size(), b.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
      den += static_cast<double>(a[i]) * a[i];
    }
    EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 0.08) << t.name;
  }
}

// GGUF from a Hugging Face directory: SmolLM2's GGUF -> our HF directory (tokenizer.json
// written by us) -> GGUF again. The tokenizer metadata written from tokenizer.json equals what
// llama.cpp's own converter wrote into the original GGUF (pre "smollm", tokens, token types,
// merges, special ids, chat template), and the weights read back equal.
TEST(Merge, GgufFromAHuggingFaceDirectoryHasLlamaCppsTokenizerMetadata) {
  if (!fs::exists(smollm2_gguf())) GTEST_SKIP() << smollm2_gguf() << " is absent: run scripts/fetch_model.sh";
  const ModelFiles src = open_model_files(smollm2_gguf());
  const Model model = load_nf4(src);
  TempDir tmp("merge_hf_gguf");
  HfExportOptions hx;
  hx.dtype = DType::F32;
  hx.log = false;
  write_merged_hf_dir(model, src, {}, tmp.path("hf"), hx, false);
  const ModelFiles hf = open_model_files(tmp.path("hf"));
  ModelLoadOptions dense;
  dense.quant.quantize = false;
  const Model hm = Model::load(hf.spec, *hf.tensors, dense);
  GgufExportOptions gx;
  gx.type = GgmlType::F32;
  gx.log = false;
  write_merged_gguf(hm, hf, {}, tmp.path("m.gguf"), gx, false);
  const GgufFile orig(smollm2_gguf()), ours(tmp.path("m.gguf"));
  EXPECT_EQ(ours.get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(ours.get_string("tokenizer.ggml.model"), orig.get_string("tokenizer.ggml.model"));
  EXPECT_EQ(ours.get_string_array("tokenizer.ggml.tokens"), orig.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(ours.get_i32_array("tokenizer.ggml.token_type"), orig.get_i32_array("tokenizer.ggml.token_type"));
  EXPECT_EQ(ours.get_string_array("tokenizer.ggml.merges"), orig.get_string_array("tokenizer.ggml.merges"));
  for (const char* k : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    EXPECT_EQ(ours.get_u32(k), orig.get_u32(k)) << k;
  EXPECT_EQ(ours.get_string("tokenizer.chat_template"), orig.get_string("tokenizer.chat_template"));
  const ModelFiles back = open_model_files(tmp.path("m.gguf"));
  const std::string text = "Hello! <|im_start|>user\nünïcödé 123<|im_end|>";
  EXPECT_EQ(back.tokenizer->encode(text), src.tokenizer->encode(text));
  for (const TensorSpec& t : hm.spec().tensors()) ASSERT_EQ(back.tensors->get(t.name), hf.tensors->get(t.name)) << t.name;
}

// GGUF from a Hugging Face directory with a SentencePiece tokenizer (tests/fixtures/spm_llama,
// tools/make_spm_fixture.py: sentencepiece-trained tokenizer.model, transformers' tokenizer.json,
// random Llama weights): the "llama" metadata read back by our GGUF tokenizer encodes texts
// exactly as sentencepiece itself did (reference.json), with the model's pieces and scores.
TEST(Merge, GgufFromASentencePieceDirectoryTokenizesAsSentencePiece) {
  const std::string dir = std::string(QLORA_FIXTURE_DIR) + "/spm_llama";
  const ModelFiles hf = open_model_files(dir);
  ModelLoadOptions dense;
  dense.quant.quantize = false;
  const Model m = Model::load(hf.spec, *hf.tensors, dense);
  TempDir tmp("merge_spm_gguf");
  GgufExportOptions gx;
  gx.type = GgmlType::F32;
  gx.log = false;
  write_merged_gguf(m, hf, {}, tmp.path("m.gguf"), gx, false);
  const GgufFile g(tmp.path("m.gguf"));
  EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens").size(), static_cast<size_t>(m.spec().vocab));
  const ModelFiles back = open_model_files(tmp.path("m.gguf"));
  std::ifstream f(dir + "/reference.json");
  const auto ref = nlohmann::json::parse(f);
  for (const auto& t : ref["texts"]) {
    const auto ids = back.tokenizer->encode(t["text"].get<std::string>());
    EXPECT_EQ(std::vector<int>(ids.begin(), ids.end()), t["ids"].get<std::vector<int>>()) << t["text"];
  }
  for (const TensorSpec& t : m.spec().tensors()) ASSERT_EQ(back.tensors->get(t.name), hf.tensors->get(t.name)) << t.name;
}

// llama2.c's scored vocabulary written as a merge-list tokenizer.json (transformers'
// conversion of SentencePiece models): read back, it encodes llama2.c's reference cases and
// Tiny Shakespeare exactly as llama2.c's own encoder does (its port, formats/llama2c_tokenizer).
TEST(Merge, Llama2cTokenizerIsWrittenAsTokenizerJsonThatEncodesTheSame) {
  const ModelFiles src = open_model_files(stories_bin());
  TempDir tmp("l2c_tok");
  write_file(tmp.path("tokenizer.json"), tokenizer_json_text(src.tokenizer->spec()));
  const Tokenizer hf = Tokenizer::from_file(tmp.path("tokenizer.json"));
  std::ifstream f(std::string(QLORA_FIXTURE_DIR) + "/tokenizer/llama2c_reference.json");
  const auto ref = nlohmann::json::parse(f);
  int compared = 0;
  for (const auto& c : ref["cases"]) {
    const std::string t = c["text"].get<std::string>();
    // A literal "▁" in the text: llama2.c spells spaces ' ' and byte-encodes "▁", while a
    // Llama-style tokenizer.json (like every Hugging Face Llama tokenizer) reads it as a space.
    if (t.find("\xE2\x96\x81") != std::string::npos) continue;
    const auto ids = hf.encode(t);
    EXPECT_EQ(std::vector<int>(ids.begin(), ids.end()), c["ids"].get<std::vector<int>>()) << t;
    ++compared;
  }
  EXPECT_GE(compared, 10);
  const std::string text = read_file(data_dir() + "/text/tinyshakespeare.txt").substr(0, 100000);
  EXPECT_EQ(hf.encode(text), src.tokenizer->encode(text));
  EXPECT_EQ(hf.decode(hf.encode(text)), text);
}
